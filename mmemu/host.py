"""HostMM: the API of :class:`mmemu.MM` carried out on real memory of this process (Linux).

The oracle the emulator is held to.  Accesses and the system calls whose faults count are made
by compiled code (:mod:`mmemu._host`) between two reads of this thread's fault counter, so the
faults reported are exactly those of the accesses.  Page states come from the PAGEMAP_SCAN
ioctl and /proc/kpageflags (root), as docs/host-oracle.md describes.

What is per process and exact: faults (``rusage``), page states, ``smaps`` of its mappings.
What is measured as a change since the HostMM was made, and may be disturbed by the rest of
the process (the interpreter's own allocations): ``status`` (RssAnon, VmPTE).  What is
system-wide and may be disturbed by every other process and by khugepaged: ``vmstat`` and
``mthp_stats`` (changes since the HostMM was made).

Issue 5: shared anonymous mappings and memfds (``mmap(shared=True)``, ``memfd_create``), shmem
page states (SHMEM 6, SHMEM_THP 7), the per-size stats of all eight THP sizes, shmem_enabled in
``host_settings``, and a memory cgroup (``HostMM(memory_max=...)``: :class:`MemcgHostMM`, a
worker process of its own in a child memory cgroup).  docs/host-oracle.md has the details.

HostMM only ever touches memory it mapped itself: an access or a system call on an address
outside its own mappings is refused (as SIGSEGV for an access, ValueError for a call) before it
reaches the kernel, so it can never write into the interpreter's memory.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import os
import signal
import threading
import time

import numpy as np

from . import _host
from .config import Config
from .constants import (ADVICE, ATOMIC, KHUGEPAGED_STAT_NAMES, MTHP_STAT_NAMES, PAGE_SIZE, PMD_SIZE, READ,
                        VMSTAT_NAMES, WRITE,
                        PageState)
from .errors import ClosedError, OutOfMemory, SegmentationFault, SyscallError
from .mm import _PRCTL, _prot_bits, _trace_addrs, _trace_ops, _uint

__all__ = ["HostMM", "HostChild", "HostFile", "MemcgHostMM", "host_supported", "host_settings", "host_lock", "SETTABLE",
           "MTHP_SIZES_KB", "HOST_VMSTAT_NAMES", "HOST_MTHP_STAT_NAMES"]

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
# PAGEMAP_SCAN categories (include/uapi/linux/fs.h)
PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_PFNZERO, PAGE_IS_HUGE = 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6
KPF_ANON, KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 1 << 12, 1 << 15, 1 << 16
PFN_MASK = (1 << 55) - 1
SMAPS_KB_FIELDS = ("Size", "KernelPageSize", "MMUPageSize", "Rss", "Pss", "Pss_Dirty",
                   "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Referenced",
                   "Anonymous", "KSM", "LazyFree", "AnonHugePages", "ShmemPmdMapped",
                   "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss",
                   "Locked")
#: page states of shared memory (issue 5): PageState.SHMEM / SHMEM_THP once constants has them
SHMEM_STATE = int(getattr(PageState, "SHMEM", 6))          # a PTE to a shmem page
SHMEM_THP_STATE = int(getattr(PageState, "SHMEM_THP", 7))  # part of a PMD-mapped shmem THP
#: the per-size THP directories with anonymous stats (hugepages-<kB>kB/stats)
MTHP_SIZES_KB = (16, 32, 64, 128, 256, 512, 1024, 2048)
#: the per-size stats the host reports: the anonymous ones mmemu keeps, and shmem's
HOST_MTHP_STAT_NAMES = MTHP_STAT_NAMES + tuple(
    n for n in ("shmem_alloc", "shmem_fallback", "shmem_fallback_charge") if n not in MTHP_STAT_NAMES)
#: the /proc/vmstat names the host reports: mmemu's, and those of shmem and compaction (issue 5)
HOST_VMSTAT_NAMES = VMSTAT_NAMES + tuple(n for n in (
    "nr_shmem", "nr_shmem_hugepages", "nr_shmem_pmdmapped", "nr_file_hugepages", "nr_file_pmdmapped",
    "thp_file_alloc", "thp_file_fallback", "thp_file_fallback_charge", "thp_file_mapped",
    "compact_stall", "compact_fail", "compact_success", "pgmigrate_success") if n not in VMSTAT_NAMES)
#: /proc/self/status fields the host reports (kB)
STATUS_NAMES = ("VmRSS", "RssAnon", "RssShmem", "VmPTE")
MFD_CLOEXEC = 1
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def host_supported():
    """(True, "") when this machine can run HostMM with page states, else (False, why)."""
    if not _host.LINUX:
        return False, "not Linux"
    if not os.path.exists("/proc/self/pagemap"):
        return False, "no /proc/self/pagemap"
    if not os.access("/proc/kpageflags", os.R_OK):
        return False, "/proc/kpageflags is not readable (not root)"
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            _host.scan(fd, 0, 0, PAGE_IS_PRESENT)
        finally:
            os.close(fd)
    except OSError as exc:
        return False, f"no PAGEMAP_SCAN ioctl (Linux 6.7+): {exc}"
    return True, ""


#: the Config fields host_settings can apply, and their sysfs files (under THP_SYSFS)
SETTABLE = {"thp": "enabled", "defrag": "defrag", "use_zero_page": "use_zero_page",
            "shrink_underused": "shrink_underused",
            "khugepaged_max_ptes_none": "khugepaged/max_ptes_none",
            "khugepaged_max_ptes_swap": "khugepaged/max_ptes_swap",
            "khugepaged_max_ptes_shared": "khugepaged/max_ptes_shared",
            "khugepaged_pages_to_scan": "khugepaged/pages_to_scan"}
#: Config fields of issue 5 host_settings applies when the Config has them (else the default)
SETTABLE_ISSUE5 = {"shmem_enabled": ("shmem_enabled", "never")}
KHUGEPAGED_SYSFS = f"{THP_SYSFS}/khugepaged"
#: khugepaged's pause while host_settings holds it off (ms): longer than any scenario, so it
#: collapses nothing between two steps; khugepaged_scan() shortens it for the scan it waits for
HOLD_SLEEP_MS = 3_600_000
#: khugepaged's pause while HostMM.khugepaged_scan waits for full passes (ms)
SCAN_SLEEP_MS = 1
#: how long khugepaged_scan waits for its passes before giving up (s)
SCAN_TIMEOUT = 120.0
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
#: one process at a time changes THP settings or measures system-wide counters (flock)
LOCK_PATH = "/tmp/mmemu-host.lock"


def _sysfs_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _sysfs_files(config):
    """{path: value} that give the host these settings of config (files this kernel has)."""
    out = {}
    for field, name in SETTABLE.items():
        path = f"{THP_SYSFS}/{name}"
        if os.path.exists(path):
            out[path] = _sysfs_value(getattr(config, field))
    for field, (name, default) in SETTABLE_ISSUE5.items():
        path = f"{THP_SYSFS}/{name}"
        if os.path.exists(path):
            out[path] = _sysfs_value(getattr(config, field, default))
    for kb, mode in config.hugepages.items():
        path = f"{THP_SYSFS}/hugepages-{kb}kB/enabled"
        if os.path.exists(path):
            out[path] = mode
    return out


def with_settings(config, **fields):
    """``config`` with fields it may not have yet (issue 5's ``shmem_enabled``): known fields
    through Config.replace, the others set on the frozen instance, for host_settings to read."""
    known = {k: v for k, v in fields.items() if hasattr(config, k) and k in Config.__dataclass_fields__}
    out = config.replace(**known) if known else config.replace()
    for k, v in fields.items():
        if k not in known:
            if k not in SETTABLE_ISSUE5:
                raise ValueError(f"unknown setting {k!r}")
            object.__setattr__(out, k, v)
    return out


def _current(path):
    with open(path) as f:
        text = f.read().strip()
    words = text.split()
    return next((w[1:-1] for w in words if w.startswith("[")), text)


def _write(path, value):
    with open(path, "w") as f:
        f.write(value)


_lock_state = {"fd": None, "depth": 0}


@contextlib.contextmanager
def host_lock(timeout=600.0):
    """Hold the machine-wide mmemu lock (flock on LOCK_PATH; reentrant within a process), so
    that two runs do not change THP settings or move system-wide counters under each other."""
    import fcntl
    state = _lock_state
    if state["depth"] == 0:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(f"another process holds {LOCK_PATH}") from None
                time.sleep(0.05)
        state["fd"] = fd
    state["depth"] += 1
    try:
        yield
    finally:
        state["depth"] -= 1
        if state["depth"] == 0:
            os.close(state["fd"])       # releases the flock
            state["fd"] = None


@contextlib.contextmanager
def _terminated_as_exit():
    """Inside the block, SIGTERM and SIGHUP (a CI job's timeout, a kill, a closed terminal) raise
    SystemExit in this process, so that the finally clauses that put the host's settings back
    run: by default the signal ends the process on the spot and leaves the machine changed.
    Forked workers that inherit the handler leave at once, as the default would."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def leave(signum, frame):
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def host_settings(config, hold_khugepaged=True):
    """Give the running kernel the THP settings of ``config`` (root only) for the duration of
    the block, and put back what was there, whatever happens inside: the THP modes,
    use_zero_page, shrink_underused and khugepaged's max_ptes_none/_swap/_shared and
    pages_to_scan.  With ``hold_khugepaged`` khugepaged also sleeps HOLD_SLEEP_MS between
    scans inside the block (its scan_sleep_millisecs), so that it collapses nothing between two
    steps of a scenario; :meth:`HostMM.khugepaged_scan` runs it on demand.

    Issue 5: also the top-level ``shmem_enabled`` (``getattr(config, "shmem_enabled", "never")``
    while Config lacks the field; :func:`with_settings` gives a Config one)."""
    if os.geteuid() != 0:
        raise PermissionError("changing /sys/kernel/mm/transparent_hugepage needs root")
    wanted = _sysfs_files(config)
    if hold_khugepaged:
        wanted[f"{KHUGEPAGED_SYSFS}/scan_sleep_millisecs"] = str(HOLD_SLEEP_MS)
    with host_lock(), _terminated_as_exit():
        saved = {path: _current(path) for path in wanted}
        try:
            for path, value in wanted.items():
                if saved[path] != value:
                    _write(path, value)
            yield
        finally:
            for path, value in saved.items():
                if _current(path) != value:
                    _write(path, value)


def _read_kv(path):
    """{name: first value} of a /proc file of "name value" or "name: value" lines."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0].rstrip(":")] = parts[1]
    return out


def _numpy_hugepage(enabled):
    """Whether numpy madvises its large allocations MADV_HUGEPAGE; sets it, returns the old."""
    try:
        from numpy._core import multiarray
    except ImportError:                                   # numpy < 2
        from numpy.core import multiarray
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    return setter(enabled) if setter else enabled


def _khugepaged_stats():
    out = {}
    for name in KHUGEPAGED_STAT_NAMES:
        with open(f"{KHUGEPAGED_SYSFS}/{name}") as f:
            out[name] = int(f.read())
    return out


def _mthp_stats():
    """{size in kB: {stat: value}} for the eight anonymous THP sizes."""
    out = {}
    for kb in MTHP_SIZES_KB:
        base = f"{THP_SYSFS}/hugepages-{kb}kB/stats"
        stats = out[kb] = {}
        for name in HOST_MTHP_STAT_NAMES:
            try:
                with open(f"{base}/{name}") as f:
                    stats[name] = int(f.read())
            except OSError:
                stats[name] = 0
    return out


class HostFile:
    """A memfd of a HostMM (memfd_create(2)): ``ftruncate``, ``fallocate``, ``close``, ``size``;
    map it with ``HostMM.mmap(length, prot, fd=file, offset=0)`` (MAP_SHARED).  Pickled as its
    descriptor number, so a forked HostChild (which inherits the descriptor) can map it too."""

    def __init__(self, fd, name="mmemu"):
        self.fd = fd
        self.name = name
        self.closed = False

    def __reduce__(self):
        return (HostFile, (self.fd, self.name))

    def _ensure_open(self):
        if self.closed:
            raise ClosedError("this memfd is closed")

    @property
    def size(self) -> int:
        self._ensure_open()
        return os.fstat(self.fd).st_size

    def ftruncate(self, size) -> None:
        self._ensure_open()
        try:
            os.ftruncate(self.fd, _uint(size, "size"))
        except OSError as exc:
            raise SyscallError(exc.errno, "ftruncate") from None

    def fallocate(self, offset, length, punch_hole=False, keep_size=False) -> None:
        """fallocate(2): ``punch_hole`` FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE (frees the
        pages, unmaps them from every mapping), else allocates the range (mode 0, or
        FALLOC_FL_KEEP_SIZE with ``keep_size``) -- as :meth:`mmemu.Memfd.fallocate`."""
        self._ensure_open()
        if punch_hole:
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        else:
            mode = FALLOC_FL_KEEP_SIZE if keep_size else 0
        err, _ = _host.fallocate(self.fd, mode, _uint(offset, "offset"), _uint(length, "length"))
        if err:
            raise SyscallError(err, "fallocate")

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            self.closed = True



# ---- the memory cgroup (issue 5) ------------------------------------------------------------

def _mounts():
    """[(mount point, fstype, super options)] of /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 3:
                out.append((fields[4], rest[0], rest[2]))
    return out


class _Memcg:
    """A memory cgroup of its own, a child of this process's memory cgroup: cgroup v2
    (memory.max, memory.current, memory.events) where the memory controller is on the unified
    hierarchy, else the v1 memory controller (memory.limit_in_bytes, memory.usage_in_bytes,
    memory.failcnt, memory.oom_control).  Nothing is ever moved into it but the process
    :class:`HostMM` forks for itself (and that process's own children)."""

    _serial = 0

    def __init__(self):
        if os.geteuid() != 0:
            raise PermissionError("a memory cgroup needs root")
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        mounts = _mounts()
        v2 = next((m for m, fstype, _ in mounts if fstype == "cgroup2"
                   and "memory" in _read_text(f"{m}/cgroup.controllers").split()), None)
        v1 = next((m for m, fstype, opts in mounts if fstype == "cgroup" and "memory" in opts.split(",")), None)
        _Memcg._serial += 1
        name = f"mmemu-{os.getpid()}-{_Memcg._serial}"
        if v2 is not None:
            self.version = 2
            rel = next((p for h, c, p in lines if h == "0" and c == ""), "/")
            parent = os.path.join(v2, rel.lstrip("/"))
            if "memory" not in _read_text(f"{parent}/cgroup.subtree_control").split():
                try:
                    _write(f"{parent}/cgroup.subtree_control", "+memory")
                except OSError:                  # a non-root cgroup with processes: no controllers
                    parent = v2                  # for its children (the no-internal-process rule)
                    _write(f"{parent}/cgroup.subtree_control", "+memory")
            self.files = {"max": "memory.max", "current": "memory.current"}
        elif v1 is not None:
            self.version = 1
            rel = next((p for h, c, p in lines if "memory" in c.split(",")), "/")
            parent = os.path.join(v1, rel.lstrip("/"))
            self.files = {"max": "memory.limit_in_bytes", "current": "memory.usage_in_bytes"}
        else:
            raise OSError(errno.ENOSYS, "no memory cgroup controller is mounted")
        self.path = os.path.join(parent, name)
        os.mkdir(self.path)

    def _file(self, key):
        return os.path.join(self.path, self.files.get(key, key))

    def attach(self, pid):
        _write(self._file("cgroup.procs"), str(pid))

    def current(self):
        return int(_read_text(self._file("current")))

    def limit(self):
        text = _read_text(self._file("max")).strip()
        value = None if text == "max" else int(text)
        return None if value is None or value >= (1 << 62) else value

    def set_limit(self, value):
        """memory.max (v2) / memory.limit_in_bytes (v1) in bytes; None: no limit."""
        if value is None:
            _write(self._file("max"), "max" if self.version == 2 else "-1")
        else:
            _write(self._file("max"), str(int(value)))

    def events(self):
        """{"max": charges that hit the limit, "oom": memcg OOMs, "oom_kill": processes the memcg
        OOM killer killed}.  v1 has no "oom" count (0) and counts in "max" its failcnt: every
        failed try of the page counter, a per-CPU batch of 64 pages that did not fit included."""
        if self.version == 2:
            ev = _read_kv(self._file("memory.events"))
            return {k: int(ev.get(k, 0)) for k in ("max", "oom", "oom_kill")}
        oom = _read_kv(self._file("memory.oom_control"))
        return {"max": int(_read_text(self._file("memory.failcnt"))), "oom": 0,
                "oom_kill": int(oom.get("oom_kill", 0))}

    def pids(self):
        return [int(p) for p in _read_text(self._file("cgroup.procs")).split()]

    def remove(self, timeout=5.0):
        """rmdir the cgroup once its processes (this HostMM's own) have exited; any still there
        after ``timeout`` are killed first (by pid: they are processes HostMM forked)."""
        import signal
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    for pid in self.pids():
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + timeout
                time.sleep(0.02)


def _read_text(path):
    with open(path) as f:
        return f.read()


class HostMM:
    """The real kernel, through the API of :class:`mmemu.MM` (see the module docstring).

    ``HostMM(memory_max=bytes)`` or ``HostMM(memcg=True)``: the HostMM runs in a process of its
    own, forked for it and moved into a memory cgroup of its own (see :class:`MemcgHostMM`), so
    that the limit applies to the accesses and never to the calling process."""

    def __new__(cls, memory_max=None, memcg=False):
        if cls is HostMM and (memory_max is not None or memcg):
            return MemcgHostMM(memory_max)
        return super().__new__(cls)

    def __init__(self, memory_max=None, memcg=False):
        ok, why = host_supported()
        if not ok:
            raise OSError(errno.ENOSYS, f"HostMM needs Linux with pagemap, root and PAGEMAP_SCAN: {why}")
        self._lock = host_lock()
        self._lock.__enter__()
        self._config = Config.from_host()
        self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
        self._kpageflags = os.open("/proc/kpageflags", os.O_RDONLY)
        self._ranges = []                # [start, end) of the mappings this HostMM made
        self._files = []                 # the memfds this HostMM made (closed on close)
        self._min_flt = 0
        self._closed = False
        self._is_child = False
        # prctl(PR_SET_THP_DISABLE) is a property of the whole process: put it back on close
        self._thp_disable_before = _host.prctl(_PRCTL["PR_GET_THP_DISABLE"], 0, 0)[1]
        # MADV_FREE moves order-0 folios to the lazy-free LRU through a per-CPU batch, and smaps
        # counts them in LazyFree only once it is drained: stay on one CPU, and drain that CPU's
        # batches (MADV_COLD on a page of our own calls lru_add_drain) before reading smaps
        self._affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(self._affinity)})
        err, self._drain_page = _host.mmap(0, PAGE_SIZE, 3, False)
        if err:
            self._drain_page = None
        # THPs of the interpreter's own (numpy madvises large arrays MADV_HUGEPAGE) are split
        # copy-on-write after a fork and queued as partially mapped: none while a HostMM is
        # open, the old ones freed (gc) and the deferred-split queue emptied before the baseline
        self._numpy_hugepage = _numpy_hugepage(False)
        gc.collect()
        self._tame_interpreter()
        if os.geteuid() == 0:
            _write("/proc/sys/vm/drop_caches", "2")
        self._wake_khugepaged()
        self._warm_up()
        self._base_vmstat = self._vmstat_now()
        self._base_mthp = _mthp_stats()
        self._base_status = self._status_now()
        self._base_khugepaged = _khugepaged_stats()

    def _tame_interpreter(self):
        """No THPs in the interpreter's own memory: MADV_NOHUGEPAGE on its VM_HUGEPAGE VMAs
        (numpy's large arrays; glibc may have put them in the heap, which then keeps the flag),
        and its PMD-mapped THPs split (MADV_COLD of their first page splits the folio, contents
        kept).  Else a fork's copy-on-write splits them, khugepaged collapses them, and the
        system-wide THP counters of a scenario count them."""
        vmas, cur = [], None
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    cur = [lo, hi, 0, False]
                    vmas.append(cur)
                elif head == "AnonHugePages:":
                    cur[2] = int(line.split()[1])
                elif head == "VmFlags:":
                    cur[3] = " hg" in line or line.split()[1:2] == ["hg"]
        for lo, hi, ahp, hg in vmas:
            if self._owned(lo, hi) or lo >= (1 << 47):
                continue
            if hg:
                _host.madvise(lo, hi - lo, ADVICE["nohugepage"])
            if ahp:
                for block in range((lo + PMD_SIZE - 1) & ~(PMD_SIZE - 1), hi - PMD_SIZE + 1, PMD_SIZE):
                    _host.madvise(block, PAGE_SIZE, ADVICE["cold"])

    def _warm_up(self):
        # VmPTE and RssAnon are per process: let the interpreter make the allocations a step
        # makes (numpy arrays, /proc readers) before the baseline is taken, not during a step.
        err, addr = _host.mmap(0, 4 << 20, 3, False)
        if err:
            return
        self._ranges.append((addr, addr + (4 << 20)))
        for _ in range(2):
            self.access(np.arange(addr, addr + (4 << 20), 4096, dtype=np.uint64), WRITE)
            self.page_states(addr, 4 << 20)
            self.smaps(addr)
            self.maps()
            self._status_now()
            self._vmstat_now()
        _host.munmap(addr, 4 << 20)
        self._ranges.remove((addr, addr + (4 << 20)))
        self._min_flt = 0

    def _wake_khugepaged(self):
        # The first MADV_HUGEPAGE of a process wakes khugepaged at once; done here, on a range
        # of our own, so that it does not collapse a scenario's range right after its first step.
        err, addr = _host.mmap(0, 2 << 20, 3, False)
        if not err:
            _host.madvise(addr, 2 << 20, ADVICE["hugepage"])
            time.sleep(0.1)
            _host.munmap(addr, 2 << 20)

    def _become_child(self):
        """In a forked child: this object now describes the child process."""
        self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
        self._kpageflags = os.open("/proc/kpageflags", os.O_RDONLY)
        self._min_flt = 0
        self._is_child = True
        self._base_status = self._status_now()

    @property
    def config(self) -> Config:
        """The running kernel's settings (Config.from_host())."""
        return self._config

    @property
    def memory_max(self):
        """None: a plain HostMM runs in no memory cgroup of its own (see MemcgHostMM)."""
        return None

    @memory_max.setter
    def memory_max(self, value):
        raise NotImplementedError("a memory limit needs HostMM(memcg=True) or HostMM(memory_max=...)")

    @property
    def memory_current(self):
        """None: a plain HostMM runs in no memory cgroup of its own (see MemcgHostMM)."""
        return None

    def close(self):
        if self._closed:
            return
        for start, end in self._ranges:
            _host.munmap(start, end - start)
        self._ranges = []
        for f in self._files:
            f.close()
        self._files = []
        if self._drain_page is not None:
            _host.munmap(self._drain_page, PAGE_SIZE)
        if not self._is_child:
            os.sched_setaffinity(0, self._affinity)
            _numpy_hugepage(self._numpy_hugepage)
        before = self._thp_disable_before
        _host.prctl(_PRCTL["PR_SET_THP_DISABLE"], 1 if before else 0, before & ~1)
        os.close(self._pagemap)
        os.close(self._kpageflags)
        self._closed = True
        if not self._is_child:
            self._lock.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _ensure_open(self):
        if self._closed:
            raise ClosedError("this HostMM is closed")

    def fork(self) -> "HostChild":
        """fork(2): a child process that shares every mapping copy-on-write.  The child runs a
        small command loop; the returned :class:`HostChild` makes it access memory and report
        what its kernel view shows.  ``close()`` makes it exit."""
        self._ensure_open()
        return HostChild(self)

    # ---- our own address ranges -------------------------------------------------------------

    def _owned(self, start, end):
        """Whether [start, end) lies inside the mappings this HostMM made."""
        at = start
        for s, e in sorted(self._ranges):
            if s <= at < e:
                at = e
                if at >= end:
                    return True
        return start >= end

    def _add_range(self, start, end):
        self._remove_range(start, end)
        self._ranges.append((start, end))

    def _remove_range(self, start, end):
        kept = []
        for s, e in self._ranges:
            if e <= start or s >= end:
                kept.append((s, e))
                continue
            if s < start:
                kept.append((s, start))
            if e > end:
                kept.append((end, e))
        self._ranges = kept

    def _require_owned(self, start, end, what):
        if not self._owned(start, end):
            raise ValueError(f"{what}: [{start:#x}, {end:#x}) is not inside this HostMM's mappings")

    # ---- system calls --------------------------------------------------------------------------

    def mmap(self, length, prot="rw", addr=None, fixed=False, shared=False, fd=None, offset=0) -> int:
        """mmap(2): private anonymous; ``shared``: MAP_SHARED|MAP_ANONYMOUS (shmem); ``fd`` (a
        HostFile from memfd_create, or a descriptor): MAP_SHARED of it at ``offset``."""
        length = _uint(length, "length")
        bits = _prot_bits(prot) & 7
        self._ensure_open()
        size = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if fixed:
            if addr is None:
                raise ValueError("fixed=True needs addr")
            addr = _uint(addr, "addr")
            if self._foreign_overlap(addr, addr + size):
                raise ValueError(f"mmap: [{addr:#x}, {addr + size:#x}) overlaps memory HostMM did not map")
        fdno = -1
        if fd is not None:
            fdno = fd.fd if isinstance(fd, HostFile) else int(fd)
            if isinstance(fd, HostFile):
                fd._ensure_open()
        err, start = _host.mmap(addr or 0, length, bits, fixed, bool(shared), fdno, _uint(offset, "offset"))
        if err:
            raise SyscallError(err, "mmap")
        self._add_range(start, start + size)
        return start

    def memfd_create(self, name="mmemu") -> HostFile:
        """memfd_create(2) (MFD_CLOEXEC): a shmem file of size 0; see HostFile."""
        self._ensure_open()
        try:
            fd = os.memfd_create(str(name), MFD_CLOEXEC)
        except OSError as exc:
            raise SyscallError(exc.errno, "memfd_create") from None
        f = HostFile(fd, str(name))
        self._files.append(f)
        return f

    def _foreign_overlap(self, start, end):
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo < end and hi > start and not self._owned(max(lo, start), min(hi, end)):
                    return True
        return False

    def munmap(self, addr, length) -> None:
        addr, length = _uint(addr, "addr"), _uint(length, "length")
        self._ensure_open()
        size = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if self._foreign_overlap(addr, addr + size):
            raise ValueError("munmap: the range overlaps memory HostMM did not map")
        err = _host.munmap(addr, length)
        if err:
            raise SyscallError(err, "munmap")
        self._remove_range(addr, addr + size)

    def mremap(self, addr, old_size, new_size, maymove=False, new_addr=None) -> int:
        """mremap(2) of a range inside this HostMM's mappings: MREMAP_MAYMOVE with ``maymove``,
        MREMAP_FIXED to ``new_addr`` (which needs maymove, as in the kernel: else EINVAL).
        Returns the new address; the ranges HostMM owns follow the mapping."""
        addr, old_size, new_size = _uint(addr, "addr"), _uint(old_size, "old_size"), _uint(new_size, "new_size")
        self._ensure_open()
        old_end = addr + ((old_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        if not self._owned(addr, old_end) or self._foreign_overlap(addr, old_end):
            raise ValueError("mremap: the old range is not inside this HostMM's mappings")
        flags = MREMAP_MAYMOVE if maymove else 0
        target = 0
        size = (new_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if new_addr is not None:
            target = _uint(new_addr, "new_addr")
            flags |= MREMAP_FIXED
            if self._foreign_overlap(target, target + size):
                raise ValueError("mremap: the new range overlaps memory HostMM did not map")
        err, new, faults = _host.mremap(addr, old_size, new_size, flags, target)
        self._min_flt += faults
        if err:
            raise SyscallError(err, "mremap")
        if new == addr:
            if size < old_end - addr:
                self._remove_range(addr + size, old_end)
            else:
                self._add_range(addr, addr + size)
        else:
            self._remove_range(addr, old_end)
            self._add_range(new, new + size)
        return new

    def mprotect(self, addr, length, prot) -> None:
        addr, length = _uint(addr, "addr"), _uint(length, "length")
        bits = _prot_bits(prot)
        self._ensure_open()
        if self._foreign_overlap(addr, addr + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))):
            raise ValueError("mprotect: the range overlaps memory HostMM did not map")
        err = _host.mprotect(addr, length, bits)
        if err:
            raise SyscallError(err, "mprotect")

    def madvise(self, addr, length, advice) -> None:
        addr, length = _uint(addr, "addr"), _uint(length, "length")
        name = str(advice).lower().removeprefix("madv_")
        if name not in ADVICE:
            raise ValueError(f"advice must be one of {', '.join(ADVICE)}, not {advice!r}")
        self._ensure_open()
        if self._foreign_overlap(addr, addr + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))):
            raise ValueError("madvise: the range overlaps memory HostMM did not map")
        err, faults = _host.madvise(addr, length, ADVICE[name])
        self._min_flt += faults
        for _ in range(5):
            # MADV_COLLAPSE's EAGAIN is transient (a page briefly off the LRU or locked by
            # someone else, e.g. DAMON on this host): the kernel's documentation says to retry.
            # The emulator models the outcome once nothing else holds the pages.
            if not (name == "collapse" and err == errno.EAGAIN):
                break
            time.sleep(0.05)
            err, faults = _host.madvise(addr, length, ADVICE[name])
            self._min_flt += faults
        if err:
            raise SyscallError(err, "madvise")

    def mlock(self, addr, length) -> None:
        self._lock_call(addr, length, True)

    def munlock(self, addr, length) -> None:
        self._lock_call(addr, length, False)

    def _lock_call(self, addr, length, lock):
        addr, length = _uint(addr, "addr"), _uint(length, "length")
        self._ensure_open()
        start = addr & ~(PAGE_SIZE - 1)
        if self._foreign_overlap(start, (addr + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)):
            raise ValueError("mlock: the range overlaps memory HostMM did not map")
        err, faults = _host.mlock(addr, length, lock)
        self._min_flt += faults
        if err:
            raise SyscallError(err, "mlock" if lock else "munlock")

    def prctl(self, option, arg2=0, arg3=0, arg4=0, arg5=0) -> int:
        number = _PRCTL.get(option, option) if isinstance(option, str) else option
        if number not in _PRCTL.values() or arg4 or arg5:
            raise ValueError(f"HostMM.prctl takes {', '.join(_PRCTL)}")
        self._ensure_open()
        err, result = _host.prctl(number, _uint(arg2, "arg2"), _uint(arg3, "arg3"))
        if err:
            raise SyscallError(err, "prctl")
        return result

    # ---- the machine: shrinkers and khugepaged ------------------------------------------------

    def drop_caches(self, mode=2) -> None:
        """``echo mode > /proc/sys/vm/drop_caches`` (root): 2 runs the slab shrinkers, among
        them the deferred-split shrinker (R54) and the huge-zeropage shrinker (R56)."""
        if mode not in (1, 2, 3):
            raise ValueError(f"drop_caches mode must be 1, 2 or 3, not {mode!r}")
        self._ensure_open()
        _write("/proc/sys/vm/drop_caches", str(mode))

    def khugepaged_scan(self, pages=None, full_scans=None) -> None:
        """Wait until khugepaged has made ``full_scans`` complete passes over every registered
        mm, all of them begun after this call.

        khugepaged is a kernel thread: it cannot be driven a number of pages at a time
        (``pages`` raises NotImplementedError).  Its ``scan_sleep_millisecs`` is set to
        SCAN_SLEEP_MS for the wait (a write to it also wakes khugepaged at once) and put back
        after.  A pass counts in ``khugepaged/full_scans`` when it ends; the pass under way at
        the call may have gone past this mm already, so the wait is for ``full_scans + 1``
        increments.  Putting the sleep back wakes khugepaged once more (one more batch of
        ``pages_to_scan``), so khugepaged may have looked at a range more often than asked:
        compare states, not the number of thp_scan_exceed_* events."""
        if pages is not None:
            raise NotImplementedError("HostMM.khugepaged_scan: the kernel's khugepaged cannot be "
                                      "run a number of pages at a time; pass full_scans")
        if full_scans is None:
            raise NotImplementedError("HostMM.khugepaged_scan needs full_scans (one wake-up cannot "
                                      "be waited for on the host)")
        full_scans = _uint(full_scans, "full_scans")
        self._ensure_open()
        if full_scans == 0:
            return
        path = f"{KHUGEPAGED_SYSFS}/scan_sleep_millisecs"
        with host_lock():
            saved = _current(path)
            target = _khugepaged_stats()["full_scans"] + full_scans + 1
            _write(path, str(SCAN_SLEEP_MS))
            try:
                deadline = time.monotonic() + SCAN_TIMEOUT
                while _khugepaged_stats()["full_scans"] < target:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"khugepaged did not make {full_scans} full scans in {SCAN_TIMEOUT} s")
                    time.sleep(0.002)
            finally:
                _write(path, saved)

    @property
    def khugepaged(self) -> dict:
        """khugepaged's pages_collapsed and full_scans: changes since this HostMM was made
        (system-wide: every process's collapses count)."""
        now = _khugepaged_stats()
        return {k: now[k] - self._base_khugepaged[k] for k in now}

    # ---- accesses --------------------------------------------------------------------------

    def read(self, addr) -> int:
        return int(self.access(np.array([_uint(addr, "addr")], np.uint64), READ)[0])

    def write(self, addr) -> int:
        return int(self.access(np.array([_uint(addr, "addr")], np.uint64), WRITE)[0])

    def atomic(self, addr) -> int:
        return int(self.access(np.array([_uint(addr, "addr")], np.uint64), ATOMIC)[0])

    def access(self, addrs, ops=READ) -> np.ndarray:
        self._ensure_open()
        a = _trace_addrs(addrs)
        o, op0 = _trace_ops(ops, a.shape)
        faults = np.zeros(a.shape[0], np.uint8)
        # Never touch memory that is not ours: the first foreign address ends the trace as the
        # emulator would end it (no VMA there: SIGSEGV), without the access being made.
        starts = np.array(sorted(s for s, _ in self._ranges), np.uint64)
        ends = np.array([e for _, e in sorted(self._ranges)], np.uint64)
        idx = np.searchsorted(starts, a, side="right") - 1
        ours = (idx >= 0) & (a < ends[np.maximum(idx, 0)]) if len(starts) else np.zeros(a.shape, bool)
        limit = int(np.argmin(ours)) if not ours.all() else a.shape[0]
        done = _host.replay(a[:limit].copy(), None if o is None else o[:limit].copy(), op0, faults[:limit])
        self._min_flt += int(faults[:limit].sum())
        if done < a.shape[0]:
            exc = SegmentationFault(int(a[done]), done)
            exc.faults = faults[:done + 1]
            raise exc
        return faults

    # ---- what the kernel shows -------------------------------------------------------------

    @staticmethod
    def _vmstat_now():
        raw = _read_kv("/proc/vmstat")
        return {name: int(raw.get(name, 0)) for name in HOST_VMSTAT_NAMES}

    @staticmethod
    def _status_now():
        raw = _read_kv("/proc/self/status")
        return {name: int(raw.get(name, 0)) for name in STATUS_NAMES}

    @property
    def vmstat(self) -> dict:
        """System-wide /proc/vmstat changes since this HostMM was made."""
        now = self._vmstat_now()
        return {k: now[k] - self._base_vmstat[k] for k in now}

    @property
    def mthp_stats(self) -> dict:
        """{size in kB: per-size stats} for the eight sizes 16..2048 kB: changes since this HostMM
        was made (system-wide).  Besides MTHP_STAT_NAMES, shmem_alloc/_fallback/_fallback_charge."""
        now = _mthp_stats()
        return {kb: {k: now[kb][k] - self._base_mthp[kb][k] for k in now[kb]} for kb in now}

    @property
    def rusage(self) -> dict:
        """Faults taken by this HostMM's accesses and system calls (measured in C)."""
        return {"min_flt": self._min_flt, "maj_flt": 0}

    @property
    def status(self) -> dict:
        """/proc/self/status memory fields in kB, as changes since this HostMM was made."""
        now = self._status_now()
        return {k: now[k] - self._base_status[k] for k in now}

    def maps(self) -> list:
        """This HostMM's VMAs as (start, end, perms, 0), like /proc/pid/maps."""
        out = []
        with open("/proc/self/maps") as f:
            for line in f:
                rng, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in rng.split("-"))
                if self._owned(lo, hi):
                    out.append((lo, hi, perms, 0))
        return out

    def smaps(self, addr) -> dict:
        addr = _uint(addr, "addr")
        self._ensure_open()
        if self._drain_page is not None:
            _host.madvise(self._drain_page, PAGE_SIZE, ADVICE["cold"])
        with open("/proc/self/smaps") as f:
            block = None
            for line in f:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    block = {} if lo <= addr < hi else None
                    if block is not None:
                        block["Size"] = (hi - lo) // 1024
                    continue
                if block is None:
                    continue
                key, _, value = line.partition(":")
                if key == "VmFlags":
                    block[key] = value.strip()
                    break
                if key in SMAPS_KB_FIELDS or key == "THPeligible":
                    block[key] = int(value.split()[0])
        if block is None:
            raise ValueError(f"no mapping contains {addr:#x}")
        out = {k: block.get(k, 0) for k in SMAPS_KB_FIELDS}
        out["THPeligible"] = block.get("THPeligible", 0)
        out["VmFlags"] = block.get("VmFlags", "")
        return out

    def page_states(self, addr, length) -> np.ndarray:
        """One PageState per 4K page, from PAGEMAP_SCAN and /proc/kpageflags."""
        addr, length = _uint(addr, "addr"), _uint(length, "length")
        if addr % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError("addr and length must be multiples of 4096")
        self._ensure_open()
        cats = _host.scan(self._pagemap, addr, addr + length,
                          PAGE_IS_FILE | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE)
        states = np.full(cats.shape, PageState.NONE, np.uint8)
        present = (cats & PAGE_IS_PRESENT) != 0
        zero = present & ((cats & PAGE_IS_PFNZERO) != 0)
        huge = present & ((cats & PAGE_IS_HUGE) != 0)
        # PAGE_IS_FILE: a page that is not anonymous (vm_normal_page && !PageAnon): shmem here
        shared = present & ~zero & ((cats & PAGE_IS_FILE) != 0)
        states[zero & huge] = PageState.HUGE_ZERO
        states[zero & ~huge] = PageState.ZERO
        states[huge & ~zero & ~shared] = PageState.THP
        states[huge & shared] = SHMEM_THP_STATE
        states[~huge & shared] = SHMEM_STATE
        for i in np.flatnonzero(present & ~zero & ~huge & ~shared):
            entry = int.from_bytes(os.pread(self._pagemap, 8, ((addr >> 12) + int(i)) * 8), "little")
            flags = int.from_bytes(os.pread(self._kpageflags, 8, (entry & PFN_MASK) * 8), "little")
            states[i] = PageState.LARGE if flags & (KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL) else PageState.ANON
        return states


class HostChild:
    """The child of :meth:`HostMM.fork`, driven over a pipe: the accesses, the system calls
    (mmap, munmap, mprotect, madvise, mremap, prctl), drop_caches and khugepaged_scan, the
    views (page_states, smaps, maps, rusage, status, vmstat, mthp_stats, khugepaged) and close
    (the process exits).  Its ``rusage`` and ``status`` count from the fork."""

    _CALLS = ("read", "write", "atomic", "access", "page_states", "smaps", "maps", "mmap", "munmap",
              "mprotect", "madvise", "mremap", "prctl", "drop_caches", "khugepaged_scan")
    #: properties of the child's HostMM read over the pipe
    _VIEWS = ("rusage", "status", "vmstat", "mthp_stats", "khugepaged")

    def __init__(self, parent):
        import pickle
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:                                    # the child: serve, then exit
            os.close(up_r)
            os.close(down_w)
            status = 0
            try:
                parent._become_child()
                with os.fdopen(down_r, "rb") as inbox, os.fdopen(up_w, "wb") as outbox:
                    while True:
                        try:
                            request = pickle.load(inbox)
                        except EOFError:
                            break
                        if request is None:
                            break
                        name, args, kwargs = (request + ({},))[:3]
                        try:
                            value = getattr(parent, name)
                            reply = ("ok", value(*args, **kwargs) if callable(value) else value)
                        except Exception as exc:        # sent back to the parent, raised there
                            reply = ("error", exc)
                        pickle.dump(reply, outbox)
                        outbox.flush()
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(up_w)
        os.close(down_r)
        self._pid = pid
        self._inbox = os.fdopen(up_r, "rb")
        self._outbox = os.fdopen(down_w, "wb")
        self._pickle = pickle

    def _call(self, name, *args, **kwargs):
        if self._pid is None:
            raise ClosedError("this child has exited")
        self._pickle.dump((name, args, kwargs), self._outbox)
        self._outbox.flush()
        kind, value = self._pickle.load(self._inbox)
        if kind == "error":
            raise value
        return value

    def __getattr__(self, name):
        if name in self._CALLS:
            return lambda *args, **kwargs: self._call(name, *args, **kwargs)
        raise AttributeError(name)

    @property
    def rusage(self):
        return self._call("rusage")

    @property
    def status(self):
        return self._call("status")

    @property
    def vmstat(self):
        return self._call("vmstat")

    @property
    def mthp_stats(self):
        return self._call("mthp_stats")

    @property
    def khugepaged(self):
        return self._call("khugepaged")

    @property
    def closed(self):
        return self._pid is None

    def close(self):
        """The child exits (its mappings go, as at exit)."""
        if self._pid is None:
            return
        try:
            self._pickle.dump(None, self._outbox)
            self._outbox.flush()
        except OSError:
            pass
        self._outbox.close()
        self._inbox.close()
        os.waitpid(self._pid, 0)
        self._pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MemcgHostMM:
    """A HostMM in a memory cgroup of its own (``HostMM(memory_max=...)``/``HostMM(memcg=True)``).

    The HostMM lives in a worker process forked for it, which moves itself into a new child of
    this process's memory cgroup before it maps anything (cgroup v2 where the memory controller
    is there, else v1); every call goes to it over a pipe, as to a HostChild.  Its forks are its
    children, in the same cgroup.  The calling process never joins the cgroup.

    ``memory_current`` and ``memory_max`` are in bytes above the cgroup's usage when the worker
    was ready (the interpreter's own pages in it: ``memcg["base"]``), as the emulator counts
    only its MM.  The usage the kernel shows includes the per-CPU charge stock (charges are
    taken from the page counter 64 pages at a time and handed out from a per-CPU stock), so
    ``memory_current`` is exact only to that batch.  Setting ``memory_max`` below
    ``memory_current`` raises OutOfMemory and keeps the old limit (as the emulator does).

    A charge the kernel cannot make for an order-0 page (or a page table) with no swap is the
    memcg OOM: the kernel kills the worker.  The call raises OutOfMemory (``exc.signal`` is the
    signal that ended the worker) and the HostMM is closed; ``memcg`` still shows the events.
    """

    _METHODS = ("read", "write", "atomic", "access", "page_states", "smaps", "maps", "mmap", "munmap",
                "mprotect", "madvise", "mremap", "prctl", "drop_caches", "khugepaged_scan", "mlock",
                "munlock")
    _VIEWS = ("rusage", "status", "vmstat", "mthp_stats", "khugepaged", "config")

    def __init__(self, memory_max=None):
        import pickle
        self._pickle = pickle
        self._pid = None
        self._closed = False
        self._lock = host_lock()
        self._lock.__enter__()
        try:
            self._cg = _Memcg()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        self._dead = None
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(up_r)
            os.close(down_w)
            status = 0
            try:
                with os.fdopen(down_r, "rb") as inbox, os.fdopen(up_w, "wb") as outbox:
                    _memcg_serve(self._cg, inbox, outbox, pickle)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(up_w)
        os.close(down_r)
        self._pid = pid
        self._inbox = os.fdopen(up_r, "rb")
        self._outbox = os.fdopen(down_w, "wb")
        try:
            kind, value = self._pickle.load(self._inbox)
            if kind == "error":
                raise value
            self._base = self._cg.current()
            self._max = None
            if memory_max is not None:
                self.memory_max = memory_max
        except BaseException:
            self.close()
            raise

    # ---- the pipe -----------------------------------------------------------------------------

    def _send(self, request, address=0):
        if self._closed or self._pid is None:
            raise ClosedError("this HostMM is closed" + (f" ({self._dead})" if self._dead else ""))
        try:
            self._pickle.dump(request, self._outbox)
            self._outbox.flush()
            kind, value = self._pickle.load(self._inbox)
        except (EOFError, BrokenPipeError, ConnectionResetError, self._pickle.UnpicklingError):
            self._worker_died(address)
        if kind == "error":
            raise value
        return self._wrap(value)

    def _worker_died(self, address):
        import signal
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        self._dead = f"the worker was killed by {signal.Signals(sig).name}" if sig else "the worker exited"
        exc = OutOfMemory(address)
        exc.signal = sig
        exc.events = self._cg.events()
        self.close()
        raise exc

    def _wrap(self, value):
        if isinstance(value, tuple) and len(value) == 3 and value[0] == "__child__":
            return _MemcgChild(self, value[1])
        if isinstance(value, tuple) and len(value) == 3 and value[0] == "__file__":
            return _MemcgFile(self, value[1], value[2])
        return value

    def _call(self, name, *args, **kwargs):
        address = 0
        if args and name in ("read", "write", "atomic"):
            address = int(args[0])
        elif args and name == "access":
            with contextlib.suppress(Exception):
                address = int(np.asarray(args[0]).reshape(-1)[0])
        return self._send(("call", name, args, kwargs), address)

    def __getattr__(self, name):
        if name in self._METHODS:
            return lambda *args, **kwargs: self._call(name, *args, **kwargs)
        if name in self._VIEWS:
            return self._call(name)
        raise AttributeError(name)

    def fork(self):
        return self._call("fork")

    def memfd_create(self, name="mmemu"):
        return self._call("memfd_create", name)

    # ---- the cgroup -----------------------------------------------------------------------------

    @property
    def memory_current(self) -> int:
        """Bytes charged to the cgroup above its usage when the worker was ready (memory.current
        or memory.usage_in_bytes, minus ``memcg["base"]``; includes the per-CPU charge stock)."""
        return self._cg.current() - self._base

    @property
    def memory_max(self):
        """The limit in bytes above the base (None: no limit).  Set: memory.max (v2) or
        memory.limit_in_bytes (v1) = base + value."""
        return self._max

    @memory_max.setter
    def memory_max(self, value):
        if value is not None:
            value = _uint(value, "memory_max")
            if value < self.memory_current:
                raise OutOfMemory(0)
        self._cg.set_limit(None if value is None else self._base + value)
        self._max = value

    @property
    def memcg(self) -> dict:
        """The cgroup as the kernel shows it: version, path, current and limit (bytes, raw),
        base, and events (see _Memcg.events)."""
        return {"version": self._cg.version, "path": self._cg.path, "current": self._cg.current(),
                "limit": self._cg.limit(), "base": self._base, **self._cg.events()}

    @property
    def closed(self):
        return self._closed

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._pid is not None:
            with contextlib.suppress(OSError):
                self._pickle.dump(None, self._outbox)
                self._outbox.flush()
        for f in (self._outbox, self._inbox):
            with contextlib.suppress(OSError):
                f.close()
        if self._pid is not None:
            os.waitpid(self._pid, 0)
            self._pid = None
        self._cg.remove()
        self._lock.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _MemcgChild:
    """A HostChild of a MemcgHostMM's worker, driven through the worker."""

    def __init__(self, owner, cid):
        self._owner, self._cid, self._closed = owner, cid, False

    def _call(self, name, *args, **kwargs):
        if self._closed:
            raise ClosedError("this child has exited")
        return self._owner._send(("child", self._cid, name, args, kwargs))

    def __getattr__(self, name):
        if name in HostChild._CALLS:
            return lambda *args, **kwargs: self._call(name, *args, **kwargs)
        if name in HostChild._VIEWS:
            return self._call(name)
        raise AttributeError(name)

    @property
    def closed(self):
        return self._closed

    def close(self):
        if not self._closed and not self._owner.closed:
            self._owner._send(("child_close", self._cid))
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _MemcgFile:
    """A memfd of a MemcgHostMM's worker (the descriptor is the worker's)."""

    def __init__(self, owner, fd, name):
        self._owner, self.fd, self.name, self.closed = owner, fd, name, False

    def __reduce__(self):                  # the worker gets its own HostFile of that descriptor
        return (HostFile, (self.fd, self.name))

    def _call(self, name, *args, **kwargs):
        return self._owner._send(("file", self.fd, name, args, kwargs))

    @property
    def size(self):
        return self._call("size")

    def ftruncate(self, size):
        self._call("ftruncate", size)

    def fallocate(self, offset, length, punch_hole=False, keep_size=False):
        self._call("fallocate", offset, length, punch_hole, keep_size)

    def close(self):
        if not self.closed:
            self._call("close")
            self.closed = True


def _memcg_serve(cg, inbox, outbox, pickle):
    """The worker of a MemcgHostMM: join the cgroup, make a HostMM, serve calls until told to
    stop (None) or the pipe closes."""
    def reply(kind, value):
        pickle.dump((kind, value), outbox)
        outbox.flush()

    try:
        cg.attach(os.getpid())
        mm = HostMM()
    except Exception as exc:
        reply("error", exc)
        return
    children, serial = {}, 0
    try:
        reply("ok", None)
        while True:
            try:
                request = pickle.load(inbox)
            except EOFError:
                break
            if request is None:
                break
            try:
                kind = request[0]
                if kind == "call":
                    _, name, args, kwargs = request
                    value = getattr(mm, name)
                    value = value(*args, **kwargs) if callable(value) else value
                elif kind == "child":
                    _, cid, name, args, kwargs = request
                    child = children[cid]
                    value = getattr(child, name)
                    value = value(*args, **kwargs) if callable(value) else value
                elif kind == "child_close":
                    children.pop(request[1]).close()
                    value = None
                elif kind == "file":
                    _, fd, name, args, kwargs = request
                    f = next(f for f in mm._files if f.fd == fd and not f.closed)
                    value = getattr(f, name)
                    value = value(*args, **kwargs) if callable(value) else value
                else:
                    raise ValueError(f"unknown request {kind!r}")
                if isinstance(value, HostChild):
                    serial += 1
                    children[serial] = value
                    value = ("__child__", serial, None)
                elif isinstance(value, HostFile):
                    value = ("__file__", value.fd, value.name)
                reply("ok", value)
            except Exception as exc:               # sent back, raised in the caller
                reply("error", exc)
    finally:
        for child in children.values():
            child.close()
        mm.close()
