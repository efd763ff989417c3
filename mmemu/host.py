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

HostMM only ever touches memory it mapped itself: an access or a system call on an address
outside its own mappings is refused (as SIGSEGV for an access, ValueError for a call) before it
reaches the kernel, so it can never write into the interpreter's memory.
"""
from __future__ import annotations

import contextlib
import errno
import os
import time

import numpy as np

from . import _host
from .config import Config
from .constants import (ADVICE, ATOMIC, MTHP_STAT_NAMES, PAGE_SIZE, READ, VMSTAT_NAMES, WRITE,
                        PageState)
from .errors import ClosedError, SegmentationFault, SyscallError
from .mm import _PRCTL, _prot_bits, _trace_addrs, _trace_ops, _uint

__all__ = ["HostMM", "host_supported", "host_settings", "SETTABLE"]

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
# PAGEMAP_SCAN categories (include/uapi/linux/fs.h)
PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_PFNZERO, PAGE_IS_HUGE = 1 << 3, 1 << 4, 1 << 5, 1 << 6
KPF_ANON, KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 1 << 12, 1 << 15, 1 << 16
PFN_MASK = (1 << 55) - 1
SMAPS_KB_FIELDS = ("Size", "KernelPageSize", "MMUPageSize", "Rss", "Pss", "Pss_Dirty",
                   "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Referenced",
                   "Anonymous", "KSM", "LazyFree", "AnonHugePages", "ShmemPmdMapped",
                   "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss",
                   "Locked")


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
SETTABLE = {"thp": "enabled", "defrag": "defrag", "use_zero_page": "use_zero_page"}


def _sysfs_files(config):
    """{path: value} that give the host these settings of config."""
    out = {f"{THP_SYSFS}/{name}": getattr(config, field) for field, name in SETTABLE.items()}
    out[f"{THP_SYSFS}/use_zero_page"] = "1" if config.use_zero_page else "0"
    for kb, mode in config.hugepages.items():
        path = f"{THP_SYSFS}/hugepages-{kb}kB/enabled"
        if os.path.exists(path):
            out[path] = mode
    return out


def _current(path):
    with open(path) as f:
        text = f.read().strip()
    words = text.split()
    return next((w[1:-1] for w in words if w.startswith("[")), text)


@contextlib.contextmanager
def host_settings(config):
    """Give the running kernel the THP settings of ``config`` (root only) for the duration of
    the block, and put back what was there, whatever happens inside."""
    if os.geteuid() != 0:
        raise PermissionError("changing /sys/kernel/mm/transparent_hugepage needs root")
    wanted = _sysfs_files(config)
    saved = {path: _current(path) for path in wanted}
    try:
        for path, value in wanted.items():
            if saved[path] != value:
                with open(path, "w") as f:
                    f.write(value)
        yield
    finally:
        for path, value in saved.items():
            if _current(path) != value:
                with open(path, "w") as f:
                    f.write(value)


def _read_kv(path):
    """{name: first value} of a /proc file of "name value" or "name: value" lines."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0].rstrip(":")] = parts[1]
    return out


def _mthp_stats():
    base = f"{THP_SYSFS}/hugepages-2048kB/stats"
    out = {}
    for name in MTHP_STAT_NAMES:
        try:
            with open(f"{base}/{name}") as f:
                out[name] = int(f.read())
        except OSError:
            out[name] = 0
    return out


class HostMM:
    """The real kernel, through the API of :class:`mmemu.MM` (see the module docstring)."""

    def __init__(self):
        ok, why = host_supported()
        if not ok:
            raise OSError(errno.ENOSYS, f"HostMM needs Linux with pagemap, root and PAGEMAP_SCAN: {why}")
        self._config = Config.from_host()
        self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
        self._kpageflags = os.open("/proc/kpageflags", os.O_RDONLY)
        self._ranges = []                # [start, end) of the mappings this HostMM made
        self._min_flt = 0
        self._closed = False
        # prctl(PR_SET_THP_DISABLE) is a property of the whole process: put it back on close
        self._thp_disable_before = _host.prctl(_PRCTL["PR_GET_THP_DISABLE"], 0, 0)[1]
        self._wake_khugepaged()
        self._warm_up()
        self._base_vmstat = self._vmstat_now()
        self._base_mthp = _mthp_stats()
        self._base_status = self._status_now()

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
        self._base_status = self._status_now()

    @property
    def config(self) -> Config:
        """The running kernel's settings (Config.from_host())."""
        return self._config

    def close(self):
        if self._closed:
            return
        for start, end in self._ranges:
            _host.munmap(start, end - start)
        self._ranges = []
        before = self._thp_disable_before
        _host.prctl(_PRCTL["PR_SET_THP_DISABLE"], 1 if before else 0, before & ~1)
        os.close(self._pagemap)
        os.close(self._kpageflags)
        self._closed = True

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

    def mmap(self, length, prot="rw", addr=None, fixed=False) -> int:
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
        err, start = _host.mmap(addr or 0, length, bits, fixed)
        if err:
            raise SyscallError(err, "mmap")
        self._add_range(start, start + size)
        return start

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
        if err:
            raise SyscallError(err, "madvise")

    def prctl(self, option, arg2=0, arg3=0, arg4=0, arg5=0) -> int:
        number = _PRCTL.get(option, option) if isinstance(option, str) else option
        if number not in _PRCTL.values() or arg4 or arg5:
            raise ValueError(f"HostMM.prctl takes {', '.join(_PRCTL)}")
        self._ensure_open()
        err, result = _host.prctl(number, _uint(arg2, "arg2"), _uint(arg3, "arg3"))
        if err:
            raise SyscallError(err, "prctl")
        return result

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
        return {name: int(raw.get(name, 0)) for name in VMSTAT_NAMES}

    @staticmethod
    def _status_now():
        raw = _read_kv("/proc/self/status")
        return {name: int(raw.get(name, 0)) for name in ("VmRSS", "RssAnon", "VmPTE")}

    @property
    def vmstat(self) -> dict:
        """System-wide /proc/vmstat changes since this HostMM was made."""
        now = self._vmstat_now()
        return {k: now[k] - self._base_vmstat[k] for k in now}

    @property
    def mthp_stats(self) -> dict:
        now = _mthp_stats()
        return {2048: {k: now[k] - self._base_mthp[k] for k in now}}

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
                          PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE)
        states = np.full(cats.shape, PageState.NONE, np.uint8)
        present = (cats & PAGE_IS_PRESENT) != 0
        zero = present & ((cats & PAGE_IS_PFNZERO) != 0)
        huge = present & ((cats & PAGE_IS_HUGE) != 0)
        states[zero & huge] = PageState.HUGE_ZERO
        states[zero & ~huge] = PageState.ZERO
        states[huge & ~zero] = PageState.THP
        for i in np.flatnonzero(present & ~zero & ~huge):
            entry = int.from_bytes(os.pread(self._pagemap, 8, ((addr >> 12) + int(i)) * 8), "little")
            flags = int.from_bytes(os.pread(self._kpageflags, 8, (entry & PFN_MASK) * 8), "little")
            states[i] = PageState.LARGE if flags & (KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL) else PageState.ANON
        return states


class HostChild:
    """The child of :meth:`HostMM.fork`, driven over a pipe: read/write/atomic/access,
    page_states, smaps, rusage and close (the process exits)."""

    _CALLS = ("read", "write", "atomic", "access", "page_states", "smaps", "rusage")

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
                        name, args = request
                        try:
                            value = getattr(parent, name)
                            reply = ("ok", value(*args) if callable(value) else value)
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

    def _call(self, name, *args):
        if self._pid is None:
            raise ClosedError("this child has exited")
        self._pickle.dump((name, args), self._outbox)
        self._outbox.flush()
        kind, value = self._pickle.load(self._inbox)
        if kind == "error":
            raise value
        return value

    def __getattr__(self, name):
        if name in self._CALLS:
            return lambda *args: self._call(name, *args)
        raise AttributeError(name)

    @property
    def rusage(self):
        return self._call("rusage")

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
