"""Hostile input (issue 7): every public call, handed wrong types, wrong dtypes, odd arrays,
negative, huge, unaligned and overflowing addresses and lengths, unknown advice and protections,
or made on a closed MM, a child whose parent exited or a closed memfd, either succeeds or raises
an exception the API documents -- and a call that raises changes nothing.

Each example builds a machine with some state (mappings, THPs, shmem, a memfd, a forked child,
some of them closed), snapshots everything observable about it plus ``pickle.dumps`` of the whole
machine (byte-exact: the same objects pickle to the same bytes), makes one hostile call, and on an
exception compares the snapshot. The documented partial effects are allowed narrowly:

* an access that raises SegmentationFault/BusError/OutOfMemory leaves the accesses before it and
  the failing access itself (errors.py); checked by replaying exactly that on an unpickled copy
  of the machine and comparing what is observable;
* mprotect, madvise, mlock and munlock over a range that holds mappings and a hole (or an
  mlocked VMA, or memory running out) act on the part before and then fail, as the kernel's do
  (tests/test_syscalls.py pins each); a SyscallError of theirs may change state only when the
  range meets a mapping of the process.

Runs 5,000 examples (MMEMU_FUZZ_EXAMPLES=N for another count); with CI set hypothesis's "ci"
profile derandomizes them, as for tests/test_differential.py.
"""
import decimal
import errno
import fractions
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from mmemu import ATOMIC, MM, READ, WRITE, Config
from mmemu.constants import TASK_SIZE
from mmemu.errors import BusError, ClosedError, MMError, OutOfMemory, SegmentationFault, SyscallError

MB = 1 << 20
PAGE = 4096
WINDOW = 0x500000000000
WINDOW_LEN = 8 * MB
U64 = 1 << 64

#: the exceptions the API documents: its own (MMError and SyscallError), the built-ins for bad
#: arguments (TypeError, ValueError and its OverflowError cousin), for what mmemu does not model
#: (NotImplementedError) and for what the host cannot hold (MemoryError: a shmem file's page
#: cache is a dense array, so a memfd or MAP_SHARED object of tens of TiB is beyond the host;
#: errors.py keeps it apart from the emulated machine's OutOfMemory)
DOCUMENTED = (MMError, SyscallError, TypeError, ValueError, OverflowError, NotImplementedError, MemoryError)

# ---- the machine under attack -----------------------------------------------------------------


class Target:
    """The processes (open or closed) and memfds of one emulated machine, by role."""

    def __init__(self):
        self.procs = {}
        self.memfds = {}

    def everything(self):
        return (self.procs, self.memfds)


def build(config_kind, hugepage, writes, shmem, memfd, fork, closes, mlock):
    """A machine with some state: the window mapped (maybe MADV_HUGEPAGE, written), shared
    memory, a memfd mapping, a forked child, some of them closed or locked."""
    config = Config(memory=64 * MB, **config_kind)
    t = Target()
    mm = t.procs["parent"] = MM(config)
    mm.mmap(WINDOW_LEN, "rw", WINDOW, True)
    if hugepage:
        mm.madvise(WINDOW, WINDOW_LEN, "hugepage")
    for off in writes:
        mm.write(WINDOW + off * PAGE)
    mm.mprotect(WINDOW + 6 * MB, 64 * 1024, "r")
    if mlock:
        mm.mlock(WINDOW + 7 * MB, 16 * PAGE)
    if shmem:
        s = mm.mmap(2 * MB, "rw", WINDOW + 16 * MB, True, shared=True)
        mm.write(s)
    fd = t.memfds["memfd"] = mm.memfd_create("fuzz")
    if memfd:
        fd.ftruncate(2 * MB)
        f = mm.mmap(2 * MB, "rw", WINDOW + 20 * MB, True, fd=fd)
        mm.read(f + 5 * PAGE)
    gone = t.memfds["closed memfd"] = mm.memfd_create("gone")
    gone.ftruncate(PAGE)
    gone.close()
    if fork:
        child = t.procs["child"] = mm.fork()
        child.write(WINDOW + PAGE)
        if closes == "child":
            child.close()
        elif closes == "parent":
            mm.close()
    dead = t.procs["exited"] = MM(config)
    dead.close()
    if closes == "memfd":
        fd.close()
    return t


configs = st.sampled_from([{}, {"thp": "always"}, {"arch": "arm64", "hugepages": {64: "always"}},
                           {"arch": "arm64", "thp": "always", "kernel": "6.6"}])
machines = st.builds(build, configs, st.booleans(),
                     st.lists(st.integers(0, WINDOW_LEN // PAGE - 1), max_size=4),
                     st.booleans(), st.booleans(), st.booleans(),
                     st.sampled_from([None, None, "child", "parent", "memfd"]), st.booleans())


# ---- the snapshot -------------------------------------------------------------------------------

def observe_process(mm):
    if mm.closed:
        return ("closed", repr(mm))
    maps = mm.maps()
    out = {"maps": maps, "status": mm.status, "rusage": mm.rusage, "page_tables": mm.page_tables,
           "smaps": [mm.smaps(s) for s, *_ in maps], "pmd_mapped_kb": mm.pmd_mapped_kb()}
    for s, e, *_ in maps:
        if e <= 1 << 47 and e - s <= 64 * MB:
            pagemap, kcount, kflags = mm.pagemap(s, e - s)
            out[f"{s:#x}"] = (mm.page_states(s, e - s).tolist(), pagemap.tolist(), kcount.tolist(),
                              kflags.tolist(), mm.contpte_blocks(s, e - s))
    return out


def observe(t):
    """Everything observable about the machine, through the public API."""
    mm = t.procs["parent"]
    out = {"vmstat": mm.vmstat, "mthp": mm.mthp_stats, "khugepaged": mm.khugepaged,
           "buddyinfo": mm.buddyinfo().tolist(), "memory_current": mm.memory_current,
           "memory_max": mm.memory_max}
    for role, p in t.procs.items():
        out[role] = observe_process(p)
    out["memfds"] = {role: (fd.size, fd.closed, repr(fd)) for role, fd in t.memfds.items()}
    return out


def _core_state(core):
    state = core._getstate()
    del state["vmas"]["cache"]         # which VMA the last lookup found: a cache, not state
    return state


def exact_state(t):
    """The whole machine's internal state as bytes: what ``pickle.dumps`` of it holds (the
    machine with every process, each process, each memfd), less the VMA lookup cache, which
    any lookup (an observer's too) moves. Taken through the core's own state export, so that
    it is byte-exact: pickling the objects themselves memoizes strings by identity."""
    machine = t.procs["parent"]._machine
    state = machine._getstate()
    for core in state["mms"] + state["khugepaged_exited"]:
        del core["vmas"]["cache"]
    procs = {role: (mm._closed, mm._config, _core_state(mm._core)) for role, mm in t.procs.items()}
    fds = {role: (fd.name, fd._fid, fd._mm is t.procs["parent"]) for role, fd in t.memfds.items()}
    return pickle.dumps((state, procs, fds))


def snapshot(t):
    """(the exact internal state, the observables). The state comes first, so that an
    observer that changed it would show too."""
    return exact_state(t), observe(t)


def diff(a, b):
    return {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}


# ---- hostile arguments ------------------------------------------------------------------------

class Weird:
    """An object that is nothing the API takes."""

    def __index__(self):            # even one that claims to be an integer is not an int
        return 4096


bad_ints = st.sampled_from([
    -1, -PAGE, -(1 << 63), -(1 << 64), 0, 1, PAGE - 1, PAGE + 1, PAGE, 2 * MB,
    1 << 47, (1 << 47) - 1, (1 << 47) + 1, (1 << 47) - PAGE, (1 << 47) + PAGE, TASK_SIZE, TASK_SIZE + PAGE,
    TASK_SIZE - PAGE, 1 << 63, (1 << 63) - 1, (1 << 63) + PAGE, U64 - 1, U64 - PAGE, U64 - 2 * MB, U64,
    U64 + PAGE, 1 << 128, 1 << 46, (1 << 40) + 1, 0xFFFFFFFF, 1 << 32])
numpy_scalars = st.sampled_from([np.int8(-1), np.int64(-PAGE), np.uint64(U64 - 1), np.uint32(PAGE),
                                 np.int64(WINDOW), np.uint64(WINDOW), np.bool_(True), np.float64(PAGE),
                                 np.float32(1), np.float16(0), np.complex64(1), np.str_("4096"),
                                 np.datetime64(0, "s"), np.timedelta64(4096, "s"), np.uint8(255)])
wrong_types = st.one_of(
    st.sampled_from([None, "4096", "", "0x1000", 4096.0, 0.5, float("nan"), float("inf"), -0.0, True,
                     False, b"\x00\x10", bytearray(b"x"), complex(1, 1), [4096], (4096,), {4096: 1}, {},
                     set(), frozenset(), range(3), decimal.Decimal(4096), fractions.Fraction(4096, 1),
                     np.array(4096), np.array([4096]), np.zeros(0), slice(1), Ellipsis, NotImplemented,
                     type, int, object()]),
    st.builds(Weird), numpy_scalars)
# an address in or near the window, sometimes off by a little; or hostile
window_addrs = st.tuples(st.integers(-2, WINDOW_LEN // PAGE + 2), st.sampled_from([0, 0, 0, 1, PAGE - 1])).map(
    lambda t: WINDOW + t[0] * PAGE + t[1])
# each argument is plausible about half the time, so that the hostile one is often a later one
addrs = st.one_of(window_addrs, window_addrs, window_addrs, bad_ints, wrong_types, st.integers(-(1 << 65), 1 << 65),
                  bad_ints.map(lambda n: WINDOW + n), bad_ints.map(lambda n: U64 - n))
lengths = st.one_of(st.sampled_from([0, 1, PAGE, 2 * MB, WINDOW_LEN]), st.integers(0, 4 * MB), bad_ints,
                    st.sampled_from([0, 1, PAGE, 2 * MB, WINDOW_LEN]), wrong_types,
                    st.integers(-(1 << 65), 1 << 65), bad_ints.map(lambda n: U64 - WINDOW - n))
flags = st.one_of(st.booleans(), st.booleans(), wrong_types)
prots = st.one_of(st.sampled_from(["rw", "r", "none", "", "---", "rwx", "r-x", "RW", "rr", "rwxs", "q", "r w",
                                   "PROT_READ", "\x00", "rw\n", "é", 0, 1, 3, 7, 8, 0xF, 0x10, 1 << 31,
                                   0xFFFFFFFF, 1 << 32, -1, U64 - 1]), wrong_types, bad_ints)
advices = st.one_of(st.sampled_from(["dontneed", "hugepage", "nohugepage", "free", "cold", "pageout", "collapse",
                                     "populate_read", "populate_write", "willneed", "remove", "dontfork",
                                     "wipeonfork", "random", "normal", "dontneed_locked", "MADV_DONTNEED",
                                     "madv_hugepage", "HUGEPAGE", "", "madv_", "hwpoison", "soft_offline",
                                     "mergeable", "guard_install", "guard_remove", "dontneed\x00", " dontneed",
                                     "4", "MADV_MADV_DONTNEED"]),
                      wrong_types, bad_ints)
ops_scalars = st.one_of(st.sampled_from([READ, WRITE, ATOMIC, 3, -1, 255, 256, np.uint8(3), np.int8(-1),
                                         np.uint8(WRITE), np.int64(ATOMIC), True, np.bool_(False)]), wrong_types)

_DTYPES = [np.uint64, np.int64, np.uint32, np.int32, np.int8, np.uint8, np.float64, np.float32, np.bool_,
           object, np.complex128, "m8[s]", "M8[s]", [("a", np.uint64)], [("a", np.uint32), ("b", np.uint32)],
           ">u8", "<u8", ">i8", "U8", "S8", "V8"]


def _array_of(values, dtype):
    try:
        return np.array(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        return np.array(values, dtype=object)


@st.composite
def arrays(draw, n=None, values=None):
    """A trace array: any dtype, maybe strided, read-only, empty, 2-D or a plain list."""
    if n is None:
        n = draw(st.sampled_from([0, 1, 2, 5, 16]))
    if values is None:
        values = st.one_of(window_addrs, bad_ints.filter(lambda v: -(1 << 63) <= v < U64))
    vals = draw(st.lists(values, min_size=n, max_size=n))
    shape = draw(st.sampled_from(["plain", "plain", "strided", "reversed", "2d", "list", "tuple", "readonly",
                                  "fortran2d", "0d", "unaligned"]))
    if shape == "list":
        return vals
    if shape == "tuple":
        return tuple(vals)
    a = _array_of(vals, draw(st.sampled_from(_DTYPES)))
    if shape == "strided":
        b = np.repeat(a, 2)
        return b[::2]
    if shape == "reversed":
        return a[::-1]
    if shape == "2d":
        return a.reshape(1, -1) if draw(st.booleans()) else np.stack([a, a])
    if shape == "fortran2d":
        return np.asfortranarray(np.stack([a, a]))
    if shape == "0d":
        return a[0] if a.size else np.zeros((), a.dtype)
    if shape == "unaligned" and a.dtype.itemsize > 1 and a.dtype != object:
        raw = np.zeros(a.nbytes + 1, np.uint8)[1:]
        try:
            b = raw.view(a.dtype) if a.size else a
            if a.size:
                b[:] = a
        except (TypeError, ValueError):       # dtypes numpy will not lay over raw bytes
            return a
        return b
    if shape == "readonly":
        a.setflags(write=False)
    return a


@st.composite
def access_args(draw):
    a = draw(st.one_of(arrays(), wrong_types))
    n = np.shape(a)[0] if np.ndim(a) >= 1 else 0
    ops = draw(st.one_of(ops_scalars, arrays(n=n, values=st.sampled_from([READ, WRITE, ATOMIC])),
                         arrays(n=n, values=st.sampled_from([READ, WRITE, ATOMIC, 3, -1, 255, 7])),
                         arrays(values=st.sampled_from([READ, WRITE]))))
    return (a, ops), {}


class FdRef:
    """One of the machine's memfds, by role, for ``mmap(fd=)`` (the machine is built later)."""

    def __init__(self, role):
        self.role = role

    def __repr__(self):
        return f"FdRef({self.role!r})"


def call(method, *strategies, **kw_strategies):
    """(method, args, kwargs) with each argument drawn from its strategy."""
    return st.tuples(st.just(method), st.tuples(*strategies), st.fixed_dictionaries(kw_strategies))


counts = st.one_of(st.none(), st.sampled_from([1, 8, 512]), bad_ints, wrong_types)
#: full_scans: a valid count is a request to run khugepaged that many passes (a huge one runs for
#: ages, legitimately), so only small valid ones are drawn
full_scan_counts = st.one_of(st.none(), st.sampled_from([1, 2]), wrong_types,
                             bad_ints.filter(lambda n: not 0 <= n < U64))
mm_calls = st.one_of(
    call("read", addrs), call("write", addrs), call("atomic", addrs),
    access_args().map(lambda t: ("access", *t)),
    call("mmap", lengths, prots, st.one_of(st.none(), addrs), flags, flags),
    call("mmap", lengths, prots, st.one_of(st.none(), addrs), flags, flags,
         st.sampled_from([FdRef("memfd"), FdRef("closed memfd")]),
         st.one_of(st.just(0), bad_ints, wrong_types)),
    call("mmap", lengths, prots, st.one_of(st.none(), addrs), flags, flags, wrong_types, st.one_of(st.just(0), bad_ints)),
    call("munmap", addrs, lengths),
    call("mprotect", addrs, lengths, prots),
    call("madvise", addrs, lengths, advices),
    call("mlock", addrs, lengths), call("munlock", addrs, lengths),
    call("mremap", addrs, lengths, lengths, flags, st.one_of(st.none(), addrs)),
    call("mremap", addrs, lengths, lengths), call("mremap", addrs, lengths, lengths, st.just(True)),
    call("prctl", st.one_of(st.sampled_from(["PR_SET_THP_DISABLE", "PR_GET_THP_DISABLE", "PR_SET_THP", "", 41, 42, 0,
                                             -41, U64 + 41]), wrong_types, bad_ints),
         st.one_of(st.sampled_from([0, 1, 2]), bad_ints, wrong_types),
         st.one_of(st.sampled_from([0, 2, 1, 3]), bad_ints, wrong_types), st.one_of(st.just(0), bad_ints, wrong_types),
         st.one_of(st.just(0), bad_ints, wrong_types)),
    call("fork"), call("close"),
    call("memfd_create", st.one_of(st.sampled_from(["x", "", "\x00", "a" * 300]), wrong_types)),
    call("fragment_memory", st.one_of(st.sampled_from([0.5, 0, 1, 1.0, -0.1, 1.5, 2, float("nan"), float("inf")]),
                                      wrong_types),
         st.one_of(st.sampled_from([0, 9, 10, 11, -1]), bad_ints, wrong_types), flags),
    call("release_fragmentation"),
    call("set_memory_max", st.one_of(st.none(), bad_ints, wrong_types, st.sampled_from([MB, 64 * MB, PAGE - 1]))),
    call("page_states", addrs, lengths), call("pagemap", addrs, lengths), call("contpte_blocks", addrs, lengths),
    call("smaps", addrs), call("pmd_mapped_kb"),
    call("khugepaged_scan", counts, full_scan_counts), call("khugepaged_scan", counts),
    call("khugepaged_scan", full_scans=full_scan_counts),
    call("drop_caches", st.one_of(st.sampled_from([0, 1, 2, 3, 4, -1, 2.0, "2"]), wrong_types)),
    call("maps"), call("buddyinfo"),
    call("getattr", st.sampled_from(["vmstat", "mthp_stats", "khugepaged", "memory_current", "memory_max",
                                     "rusage", "status", "page_tables", "closed", "config"])),
)
fd_offsets = st.one_of(st.sampled_from([0, PAGE, 2 * MB]), bad_ints, wrong_types)
memfd_calls = st.one_of(
    call("ftruncate", st.one_of(fd_offsets, lengths)),
    call("fallocate", fd_offsets, lengths, flags, flags),
    call("fallocate", fd_offsets, lengths),
    call("close"),
)
attacks = st.one_of(
    st.tuples(st.sampled_from(["parent", "parent", "child", "exited"]), mm_calls),
    st.tuples(st.sampled_from(["parent", "child"]), access_args().map(lambda t: ("access", *t))),
    st.tuples(st.sampled_from(["parent", "parent", "child", "exited"]), mm_calls),
    st.tuples(st.sampled_from(["memfd", "closed memfd"]), memfd_calls),
)

#: calls that only look: they must change nothing even when they succeed
QUERIES = {"page_states", "pagemap", "contpte_blocks", "smaps", "pmd_mapped_kb", "maps", "buddyinfo", "getattr"}
#: system calls that the kernel lets act on the part of a range before a hole (or an mlocked
#: VMA, or memory running out) and then fail
PARTIAL = {"mprotect", "madvise", "mlock", "munlock"}


def note(what):
    """hypothesis.event, also when check_attack runs outside a test (a regression test)."""
    try:
        event(what)
    except Exception:
        pass


def perform(t, role, method, args, kwargs):
    """Make the call on the object in the role (the child role falls back to the parent)."""
    obj = t.memfds[role] if role in t.memfds else t.procs.get(role, t.procs["parent"])
    if method == "mmap" and len(args) >= 6 and isinstance(args[5], FdRef):
        args = args[:5] + (t.memfds[args[5].role],) + args[6:]
    if method == "set_memory_max":
        obj.memory_max = args[0]
        return None
    if method == "getattr":
        return getattr(obj, args[0])
    return getattr(obj, method)(*args, **kwargs)


def meets_a_mapping(mm, addr, length):
    """Whether [addr, addr+length) (as ints, clamped to 64 bits) meets a VMA of the process."""
    if mm.closed or not all(isinstance(v, (int, np.integer)) for v in (addr, length)):
        return False
    try:
        lo, hi = int(addr) & ~(PAGE - 1), int(addr) + int(length) + PAGE
    except (TypeError, ValueError):           # a timedelta64 is a numpy integer, but no int
        return False
    return any(s < hi and lo < e for s, e, *_ in mm.maps())


def replay_access(objects, role, method, args, exc):
    """The machine as the documented partial effect of a failing access leaves it: the accesses
    before the failing one, then the failing one (which must fail alike) on an unpickled copy."""
    procs, memfds = pickle.loads(objects)
    t = Target()
    t.procs, t.memfds = procs, memfds
    mm = procs[role] if role in procs else procs["parent"]
    if method == "access":
        a = np.asarray(args[0]).astype(np.uint64)
        o = args[1]
        if np.ndim(o):
            o = np.asarray(o)
        i = exc.index
        mm.access(a[:i], o[:i] if np.ndim(o) else o)
        single = (a[i:i + 1], o[i:i + 1] if np.ndim(o) else o)
        again = pytest.raises(type(exc), mm.access, *single)
    else:
        again = pytest.raises(type(exc), getattr(mm, method), *args)
    assert again.value.address == exc.address
    return observe(t)


def check_attack(t, role, method, args, kwargs):
    before, seen = snapshot(t)
    accessing = method in ("read", "write", "atomic", "access")
    objects = pickle.dumps(t.everything()) if accessing else None
    target = t.memfds.get(role) or t.procs.get(role, t.procs["parent"])
    meets = method in PARTIAL and len(args) >= 2 and meets_a_mapping(target, args[0], args[1])
    try:
        perform(t, role, method, args, kwargs)
    except DOCUMENTED as exc:
        note(f"{method}: {type(exc).__name__}" + (f" {exc.errno}" if isinstance(exc, OSError) else ""))
        if accessing and isinstance(exc, (SegmentationFault, OutOfMemory)):
            expected = replay_access(objects, role, method, args, exc)
            assert observe(t) == expected, diff(observe(t), expected)
            return
        if isinstance(exc, SyscallError) and meets:
            return                                  # the kernel's partial effect (see above)
        after, now = snapshot(t)
        assert now == seen, f"{method}{args!r} raised {exc!r} and changed {diff(now, seen)}"
        assert after == before, f"{method}{args!r} raised {exc!r} and changed the pickled state"
        return
    note(f"{method}: ok")
    if method in QUERIES:
        after, now = snapshot(t)
        assert now == seen and after == before, f"{method}{args!r} changed the state"


#: in CI a failure is reported as found, not shrunk (as in tests/test_differential.py)
PHASES = [p for p in Phase if p is not Phase.shrink] if os.environ.get("CI") else list(Phase)


@settings(max_examples=int(os.environ.get("MMEMU_FUZZ_EXAMPLES", 5000)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], phases=PHASES)
@given(t=machines, attack=attacks)
def test_hostile_calls_raise_documented_errors_and_change_nothing(t, attack):
    role, (method, args, kwargs) = attack
    check_attack(t, role, method, args, kwargs)


# ---- what the fuzzing found, pinned -----------------------------------------------------------

def rich_machine():
    return build({}, True, [0, 600], True, True, True, None, True)


def test_a_shared_mapping_the_host_cannot_hold_leaves_no_file_behind():
    """mmap(shared=True) of 64 TiB: the shmem object's page cache (a dense array) is beyond the
    host. It used to be created before its page cache was allocated, so the MemoryError left a
    file (and a used file id) on the machine."""
    t = rich_machine()
    before = exact_state(t)
    with pytest.raises(MemoryError):
        t.procs["parent"].mmap(1 << 46, shared=True)
    assert exact_state(t) == before
    check_attack(t, "parent", "mmap", (1 << 46, "rw", None, False, True), {})


@pytest.mark.parametrize("role,method,args", [
    ("memfd", "ftruncate", (TASK_SIZE - PAGE,)),             # 128 TiB of page cache
    ("memfd", "fallocate", (0, 1 << 46)),
    ("parent", "access", (np.array([WINDOW, 1 << 63], dtype=object), WRITE)),
    ("parent", "access", ([WINDOW, U64], WRITE)),
    ("parent", "access", (np.array([WINDOW], ">u8"), WRITE)),
    ("parent", "access", (np.array([WINDOW, WINDOW]), np.array([WRITE, 3]))),
    ("parent", "access", (np.array([WINDOW]), np.array([True]))),
    ("parent", "access", (np.array([WINDOW, U64 - 1], np.uint64), WRITE)),     # SIGSEGV part-way
    ("parent", "mremap", (WINDOW, PAGE, U64 - PAGE, True)),
    ("parent", "fragment_memory", (float("nan"),)),
    ("parent", "khugepaged_scan", (None, U64)),
    ("parent", "khugepaged_scan", (None, np.uint64(U64 - 1))),     # ran "until" 2**64-1 passes
    ("parent", "khugepaged_scan", (1 << 32, None)),
    ("exited", "madvise", (WINDOW, PAGE, "dontneed")),
    ("closed memfd", "fallocate", (0, PAGE)),
])
def test_hostile_calls_found_so_far(role, method, args):
    check_attack(rich_machine(), role, method, args, {})
