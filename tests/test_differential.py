"""Property-based differential tests: the Cython engine against the plain-Python reference model.

Random configurations and random sequences of mmap, munmap, mremap, mprotect, madvise (every
modelled advice), mlock and munlock, accesses, fork and exit, khugepaged scans and drop_caches
run through both;
each step runs in one process of the machine (the parent or a forked child). After every step
the outcomes (return value or exception and errno) and everything observable must be identical:
per process the page states, RssAnon, VmPTE, faults, the VMAs and each VMA's smaps; per machine
/proc/vmstat, the per-size THP stats and khugepaged's counters.

Shared memory is drawn too: MAP_SHARED|MAP_ANONYMOUS and memfd mappings over the window (in
prologues and steps), memfds made, truncated, fallocated, punched and closed, MADV_REMOVE,
mremap of shared mappings (old size 0 makes a second mapping), every shmem_enabled mode and
kernels before and after 6.15 (how a hole splits a shmem THP); compared with the rest: page
states SHMEM and SHMEM_THP, RssShmem, ShmemPmdMapped, nr_shmem*, thp_file_*, the per-size
shmem_* stats, each memfd's size and whether it is closed, and SIGBUS as an outcome of its own.

Runs 2,000 examples (MMEMU_EXAMPLES=N changes that for a quick local run; hypothesis's "ci" profile, taken automatically when CI is set, makes them
derandomized).

Issue 5 (mTHP, the buddy allocator and compaction, the memory cgroup) is drawn and compared:
configurations with mTHP sizes, small RAM that the buddy allocator runs out of, every defrag
mode and a memory.max; the steps fragment_memory, release_fragmentation and setting
memory_max; and the observables buddyinfo, memory_current, memory_max, contpte_blocks, each
window page's PFN and THP/compound kpageflags bits, the compaction counters and the stats of
all eight sizes.
"""
import os

import numpy as np
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from mmemu import MM, Config, PageState
from mmemu.config import DEFRAG_MODES, HUGEPAGE_SIZES_KB, SHMEM_ENABLED
from mmemu.errors import BusError, OutOfMemory, SegmentationFault, SyscallError
from mmemu.reference import ReferenceMM

MB = 1 << 20
PAGE = 4096
WINDOW = 0x500000000000          # 2 MiB-aligned (and 1 GiB-, 512 GiB-aligned) work area
WINDOW_PAGES = 8 * MB // PAGE
PLACED = 0x7ffff7000000          # where mmaps without an address land (below mmap_base)
PLACED_PAGES = 16 * MB // PAGE

#: configurations: mTHP sizes (up to three besides 2048 kB, each "always", "inherit", "madvise"
#: or "never"), RAM small enough for the buddy allocator to run out, and every defrag mode
_modes = st.sampled_from(["inherit", "always", "madvise", "never"])
_mthp_modes = st.lists(st.sampled_from(["always", "always", "inherit", "madvise", "never"]), min_size=3, max_size=3)
_sizes = st.lists(st.sampled_from(HUGEPAGE_SIZES_KB[:-1]), min_size=1, max_size=3, unique=True)
configs = st.builds(
    Config,
    kernel=st.sampled_from(["6.18", "6.18", "6.12"]),      # a hole splits shmem THPs 6.15+ / 4K
    shmem_enabled=st.sampled_from(SHMEM_ENABLED),
    thp=st.sampled_from(["always", "madvise", "never"]),
    defrag=st.sampled_from(DEFRAG_MODES),
    hugepages=st.tuples(_modes, _sizes, _mthp_modes).map(lambda t: {2048: t[0], **dict(zip(t[1], t[2]))}),
    use_zero_page=st.booleans(),
    zero_page=st.booleans(),
    huge_zero_write=st.sampled_from(["thp", "split"]),
    pt_reclaim=st.booleans(),
    mmap_thp_align=st.sampled_from(["none", "any", "pmd_multiple"]),
    arch=st.sampled_from(["x86_64", "arm64"]),
    atomic_write_fault=st.booleans(),
    khugepaged_max_ptes_none=st.sampled_from([511, 511, 510, 256, 64, 0]),
    khugepaged_max_ptes_swap=st.just(64),
    khugepaged_max_ptes_shared=st.sampled_from([256, 256, 511, 10, 0]),
    khugepaged_pages_to_scan=st.sampled_from([4096, 4096, 512, 1025, 8]),
    shrink_underused=st.booleans(),
    remap_zero_subpages=st.booleans(),
    reuse_large_folios=st.booleans(),
    memory=st.sampled_from([2 * MB, 4 * MB, 6 * MB, 8 * MB, 8 * MB, 12 * MB, 16 * MB, 32 * MB, 64 * MB]),
)


#: memory.max values near what a script uses (a few pages over a size, too)
memory_max_values = st.one_of(
    st.none(),
    st.sampled_from([1, 2, 3, 4, 6, 8, 16]).map(lambda n: n * MB),
    st.tuples(st.sampled_from([1, 2, 4]), st.integers(0, 20)).map(lambda t: t[0] * MB + t[1] * PAGE),
    st.integers(0, 64).map(lambda n: n * PAGE))


memory_maxes = st.one_of(st.none(), st.none(), memory_max_values)

# page offsets and lengths biased to the places where the kernel's behaviour changes
page_offsets = st.one_of(
    st.integers(0, WINDOW_PAGES // 512 - 1).flatmap(
        lambda k: st.sampled_from([512 * k, 512 * k + 1, 512 * k + 255, 512 * k + 256, 512 * k + 511])),
    st.integers(0, WINDOW_PAGES - 1))
page_counts = st.one_of(st.sampled_from([1, 2, 255, 256, 511, 512, 513, 1024, 1536]), st.integers(1, 2048))
prots = st.sampled_from(["rw", "r", "none", "w", "rwx", "r-x", ""])
advices = st.sampled_from(["hugepage", "nohugepage", "dontneed", "populate_read", "populate_write",
                           "willneed", "free", "cold", "pageout", "collapse", "remove", "remove",
                           "hugepage", "dontneed", "populate_write", "free", "collapse",
                           "dontfork", "wipeonfork", "random", "normal", "dontneed_locked"])

accesses = st.tuples(st.sampled_from(["read", "write", "atomic"]), page_offsets, st.integers(0, PAGE - 1))
traces = st.tuples(st.just("trace"), st.lists(st.tuples(page_offsets, st.integers(0, 2)), min_size=1, max_size=40))
# where an mremap goes: in place (no maymove), anywhere (maymove), or to a fixed page of the window
mremap_targets = st.one_of(st.just(None), st.just("maymove"), page_offsets)
# old sizes of an mremap: 0 makes a second mapping of a shared one (with maymove)
mremap_old_counts = st.one_of(page_counts, st.just(0))
#: memfd file sizes and offsets in pages (i_size is kept in whole pages)
file_pages = st.one_of(st.sampled_from([0, 1, 16, 511, 512, 513, 768, 1024, 2048]), st.integers(0, 2048))
common_actions = (
    accesses, traces, accesses, traces,        # accesses twice as likely as each syscall
    st.tuples(st.just("mmap_fixed"), page_offsets, page_counts, prots),
    st.tuples(st.just("mmap"), st.sampled_from([1, 3, 256, 512, 513, 1024]), prots),
    st.tuples(st.just("munmap"), page_offsets, page_counts),
    st.tuples(st.just("prctl"), st.integers(0, 1), st.sampled_from([0, 0, 2])),
    st.tuples(st.just("mprotect"), page_offsets, page_counts, prots),
    st.tuples(st.just("madvise"), page_offsets, page_counts, advices),
    st.tuples(st.just("madvise"), page_offsets, page_counts, advices),
    st.tuples(st.just("mremap"), page_offsets, mremap_old_counts, page_counts, mremap_targets),
    st.tuples(st.just("fork")),
    st.tuples(st.just("exit")),
    st.tuples(st.just("khugepaged"), st.sampled_from([1, 512, 513, 1024, 2000, None])),
    st.tuples(st.just("khugepaged_full"), st.integers(1, 2)),
    st.tuples(st.just("drop_caches"), st.sampled_from([2, 2, 3, 1])),
    st.tuples(st.sampled_from(["mlock", "munlock"]), page_offsets, page_counts),
)
pressure_actions = (
    # DONTNEED of every stride-th page of a range, in one step: order-0 pages spread over RAM
    st.tuples(st.just("punch"), page_offsets, page_counts, st.integers(2, 8)),
    st.tuples(st.just("fragment"), st.sampled_from([0.5, 0.5, 0.25, 0.75, 0.0, 0.9, 1.0]),
              st.sampled_from([9, 9, 4, 2, 0, 3, 10]), st.booleans()),
    st.tuples(st.just("release_fragmentation")),
    st.tuples(st.just("memory_max"), memory_max_values),
)


#: shared memory: MAP_SHARED|MAP_ANONYMOUS and memfd mappings in the window, memfds made, sized,
#: allocated, punched and closed (k picks one of the machine's memfds)
shmem_actions = (
    st.tuples(st.just("mmap_shared"), page_offsets, page_counts, prots),
    st.tuples(st.just("memfd_create")),
    st.tuples(st.just("ftruncate"), st.integers(0, 3), file_pages),
    st.tuples(st.just("mmap_fd"), st.integers(0, 3), page_offsets, page_counts,
              st.one_of(st.just(0), st.sampled_from([0, 1, 256, 512, 1024]), st.integers(0, 2048)), prots),
    st.tuples(st.just("mmap_fd"), st.integers(0, 3), page_offsets, page_counts, st.just(0), st.just("rw")),
    st.tuples(st.just("fallocate"), st.integers(0, 3), file_pages, page_counts, st.booleans(), st.booleans()),
    st.tuples(st.just("fallocate"), st.integers(0, 3), file_pages, page_counts, st.just(True), st.just(True)),
    st.tuples(st.just("close_fd"), st.integers(0, 3)),
)


# each step runs in one of the machine's processes (index modulo how many are alive)
steps = st.tuples(st.integers(0, 3), st.one_of(*common_actions, *pressure_actions, *shmem_actions))
MAX_PROCESSES = 3


def outcome(fn, *args):
    """What a call did, comparable across engines."""
    try:
        result = fn(*args)
    except SyscallError as e:
        return ("errno", e.errno)
    except BusError as e:
        return ("sigbus", e.address, e.index)
    except SegmentationFault as e:
        return ("segv", e.address, e.index)
    except OutOfMemory as e:
        return ("oom", e.address, e.index)
    except NotImplementedError:
        return ("notimpl",)
    if isinstance(result, np.ndarray):
        return ("ok", result.dtype.str, result.tolist())
    return ("ok", result)


def set_memory_max(mm, value):
    """mm.memory_max = value; a value below memory_current is refused (ValueError)."""
    try:
        mm.memory_max = value
    except ValueError:
        return "refused"


class Machine(list):
    """The processes of one emulated machine (the parent first) and the memfds made on it."""

    def __init__(self, procs):
        super().__init__(procs)
        self.memfds = []


def apply(procs, who, action):
    """Run action in process procs[who % len(procs)]; fork and exit change procs (the first
    process, the parent, never exits: there is always one to observe the machine through)."""
    mm = procs[who % len(procs)]
    kind = action[0]
    if kind == "memfd_create":
        fd = mm.memfd_create("differential")
        procs.memfds.append(fd)
        return ("ok", "memfd")
    if kind in ("ftruncate", "fallocate", "close_fd", "mmap_fd"):
        if not procs.memfds:
            return ("skipped", "no memfd yet")
        fd = procs.memfds[action[1] % len(procs.memfds)]
        if kind == "ftruncate":
            return outcome(fd.ftruncate, action[2] * PAGE)
        if kind == "fallocate":
            _, _, off, n, punch, keep = action
            return outcome(fd.fallocate, off * PAGE, n * PAGE, punch, keep)
        if kind == "close_fd":
            return outcome(fd.close)
        _, _, off, n, file_off, prot = action
        return outcome(lambda: mm.mmap(n * PAGE, prot, WINDOW + off * PAGE, True, fd=fd, offset=file_off * PAGE))
    if kind == "mmap_shared":
        _, off, n, prot = action
        return outcome(lambda: mm.mmap(n * PAGE, prot, WINDOW + off * PAGE, True, shared=True))
    if kind == "fork":                        # run() forks; here only when there are enough
        return ("skipped",)
    if kind == "exit":
        if len(procs) == 1:
            return ("skipped",)
        child = procs.pop(1 + who % (len(procs) - 1))
        return outcome(child.close)
    if kind == "mmap_fixed":
        _, off, n, prot = action
        return outcome(mm.mmap, n * PAGE, prot, WINDOW + off * PAGE, True)
    if kind == "mmap":
        return outcome(mm.mmap, action[1] * PAGE, action[2])
    if kind == "prctl":
        return outcome(mm.prctl, "PR_SET_THP_DISABLE", action[1], action[2])
    if kind == "munmap":
        return outcome(mm.munmap, WINDOW + action[1] * PAGE, action[2] * PAGE)
    if kind == "mprotect":
        return outcome(mm.mprotect, WINDOW + action[1] * PAGE, action[2] * PAGE, action[3])
    if kind == "madvise":
        return outcome(mm.madvise, WINDOW + action[1] * PAGE, action[2] * PAGE, action[3])
    if kind == "mremap":
        _, off, old_n, new_n, target = action
        if target is None:
            return outcome(mm.mremap, WINDOW + off * PAGE, old_n * PAGE, new_n * PAGE)
        if target == "maymove":
            return outcome(mm.mremap, WINDOW + off * PAGE, old_n * PAGE, new_n * PAGE, True)
        return outcome(mm.mremap, WINDOW + off * PAGE, old_n * PAGE, new_n * PAGE, True, WINDOW + target * PAGE)
    if kind == "khugepaged":
        return outcome(mm.khugepaged_scan, action[1])
    if kind == "khugepaged_full":
        return outcome(mm.khugepaged_scan, None, action[1])
    if kind == "drop_caches":
        return outcome(mm.drop_caches, action[1])
    if kind in ("mlock", "munlock"):
        return outcome(getattr(mm, kind), WINDOW + action[1] * PAGE, action[2] * PAGE)
    if kind == "fragment":
        return outcome(mm.fragment_memory, action[1], action[2], action[3])
    if kind == "punch":
        _, off, n, stride = action
        return tuple(outcome(mm.madvise, WINDOW + i * PAGE, PAGE, "dontneed") for i in range(off, off + n, stride))
    if kind == "release_fragmentation":
        return outcome(mm.release_fragmentation)
    if kind == "memory_max":
        return outcome(set_memory_max, mm, action[1])
    if kind in ("read", "write", "atomic"):
        return outcome(getattr(mm, kind), WINDOW + action[1] * PAGE + action[2])
    addrs = np.array([WINDOW + off * PAGE for off, _ in action[1]], np.uint64)
    ops = np.array([op for _, op in action[1]], np.uint8)
    return outcome(mm.access, addrs, ops)


def run(procs, who, action):
    """apply, keeping the forked child (outcome() only reports that there is one)."""
    if action[0] == "fork" and len(procs) < MAX_PROCESSES:
        mm = procs[who % len(procs)]
        try:
            child = mm.fork()
        except NotImplementedError:
            return ("notimpl",)
        except OutOfMemory as e:
            return ("oom", e.address, e.index)
        procs.append(child)
        return ("ok", "process")
    return apply(procs, who, action)


def observe_process(mm):
    maps = mm.maps()
    out = {
        "window": mm.page_states(WINDOW, WINDOW_PAGES * PAGE).tolist(),
        "placed": mm.page_states(PLACED, PLACED_PAGES * PAGE).tolist(),
        "status": mm.status,
        "rusage": mm.rusage,
        "maps": maps,
        "smaps": [mm.smaps(start) for start, *_ in maps],
        "contpte": mm.contpte_blocks(WINDOW, 2 * WINDOW_PAGES * PAGE),
        "frames": frames(mm, WINDOW, 2 * WINDOW_PAGES * PAGE),
    }
    return out


PFN_MASK = (1 << 55) - 1
COMPOUND = (1 << 22) | (1 << 15) | (1 << 16)        # KPF_THP, KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL


def frames(mm, addr, length):
    """Each page's PFN (where the buddy allocator and compaction put it) and its THP/compound
    kpageflags bits (any large folio shows THP)."""
    if isinstance(mm, ReferenceMM):
        pfns, flags = mm._frames(addr, length)
    else:
        pagemap, _, kflags = mm.pagemap(addr, length)
        pfns, flags = pagemap & PFN_MASK, kflags & COMPOUND
    return (pfns.tolist(), flags.tolist())


def observe(procs):
    mm = procs[0]
    out = {"vmstat": mm.vmstat, "mthp": mm.mthp_stats, "khugepaged": mm.khugepaged,
           "buddyinfo": mm.buddyinfo().tolist(), "memory_current": mm.memory_current,
           "memory_max": mm.memory_max}
    for i, p in enumerate(procs):
        out.update({f"{k}[{i}]": v for k, v in observe_process(p).items()})
    out["memfds"] = [(fd.size, fd.closed) for fd in getattr(procs, "memfds", ())]
    return out


def new_machine(engine, config, memory_max):
    if memory_max is None:
        return engine(config)
    return engine(config, memory_max=memory_max)


def machine(engine, config, memory_max):
    return Machine([new_machine(engine, config, memory_max)])


def diff(a, b):
    states = [k for k in a if k.startswith(("window", "placed", "frames"))]
    return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in states} | {
        k: "differs" for k in states if a[k] != b[k]}


# Most scripts start by mapping the whole window (often MADV_HUGEPAGE), so that the steps after
# it land on memory rather than on holes.
mapped = st.sampled_from(["rw", "rw", "rw", "r", "none"]).map(lambda p: [(0, ("mmap_fixed", 0, WINDOW_PAGES, p))])
mapped_hp = st.sampled_from(["rw", "rw", "r"]).map(lambda p: [(0, ("mmap_fixed", 0, WINDOW_PAGES, p)),
                                                            (0, ("madvise", 0, WINDOW_PAGES, "hugepage"))])
prologues_private = st.one_of(st.just([]), mapped, mapped, mapped_hp, mapped_hp, mapped_hp)
# shared memory over the window: a MAP_SHARED|MAP_ANONYMOUS object, or a memfd of some size
# mapped from offset 0 (the window's pages past i_size are SIGBUS); sometimes MADV_HUGEPAGE
mapped_shared = st.tuples(st.sampled_from(["rw", "rw", "rw", "r"]), st.booleans()).map(
    lambda t: [(0, ("mmap_shared", 0, WINDOW_PAGES, t[0]))]
    + ([(0, ("madvise", 0, WINDOW_PAGES, "hugepage"))] if t[1] else []))
mapped_memfd = st.tuples(st.sampled_from([WINDOW_PAGES, WINDOW_PAGES, 1024, 768, 100]), st.booleans(),
                         st.booleans()).map(
    lambda t: [(0, ("memfd_create",)), (0, ("ftruncate", 0, t[0])), (0, ("mmap_fd", 0, 0, WINDOW_PAGES, 0, "rw"))]
    + ([(0, ("madvise", 0, WINDOW_PAGES, "hugepage"))] if t[1] else [])
    + ([(0, ("close_fd", 0))] if t[2] else []))
prologues_shared = st.one_of(mapped_shared, mapped_memfd)
# the mapping is often followed by order-0 pages spread over RAM (a populated
# range with holes punched) and held fragmentation, so that THP/mTHP allocations need compaction
spread = st.tuples(st.integers(0, 3), st.integers(2, 5)).map(
    lambda t: [(0, ("madvise", 512 * t[0], 512, "populate_write")), (0, ("punch", 512 * t[0], 512, t[1]))])
fragmented = st.tuples(st.sampled_from([0.5, 0.5, 0.25, 0.75, 0.9, 1.0]), st.sampled_from([9, 9, 10, 4, 2]),
                       st.booleans()).map(lambda t: [(0, ("fragment", *t))])
writes = st.lists(page_offsets, min_size=1, max_size=8).map(lambda offs: [(0, ("trace", [(o, 1) for o in offs]))])
prologues = st.tuples(st.one_of(prologues_private, prologues_shared), st.sampled_from([False, True]), spread,
                      st.one_of(st.just([]), fragmented, fragmented),
                      st.one_of(st.just([]), writes)).map(
    lambda t: t[0] + (t[2] if t[1] and t[0] else []) + t[3] + (t[4] if t[0] else []))


#: in CI a failing script is reported as found, not shrunk: shrinking a 25-step script can take
#: longer than CI allows, and the unshrunk script reproduces the failure just as well
PHASES = [p for p in Phase if p is not Phase.shrink] if os.environ.get("CI") else list(Phase)


@settings(max_examples=int(os.environ.get("MMEMU_EXAMPLES", 2000)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow], phases=PHASES)
@given(config=configs, memory_max=memory_maxes, prologue=prologues, body=st.lists(steps, min_size=1, max_size=25))
def test_engine_matches_reference_model(config, memory_max, prologue, body):
    engines, refs = machine(MM, config, memory_max), machine(ReferenceMM, config, memory_max)
    script = prologue + body
    for i, (who, action) in enumerate(script):
        got, want = run(engines, who, action), run(refs, who, action)
        assert got == want, f"step {i} {(who, action)}: engine {got} != reference {want}"
        event(f"{action[0]} -> {got[0]}" + (f" {got[1]}" if got[0] == "errno" else ""))
        seen, expected = observe(engines), observe(refs)
        assert seen == expected, f"step {i} {(who, action)}: {diff(seen, expected)}"
        for p in engines:                           # each checks the whole shared machine
            if not p.closed:
                p.check()
    final = observe_process(engines[0])["window"]
    event("window ended with " + (", ".join(PageState(v).name for v in sorted(set(final)) if v) or "nothing"))
    event(f"{len(engines)} processes at the end")
    for mm in reversed(engines):
        mm.close()
    for mm in reversed(refs):
        mm.close()
    assert engines[0].vmstat == refs[0].vmstat
    for fd in engines.memfds + refs.memfds:         # the last references to the shmem files
        fd.close()
    assert engines[0].vmstat == refs[0].vmstat
    engines[0].check()                              # every process gone: nothing left behind


@settings(max_examples=int(os.environ.get("MMEMU_EXAMPLES", 2000)) // 4, deadline=None,
          suppress_health_check=[HealthCheck.too_slow], phases=PHASES)
@given(config=configs, memory_max=memory_maxes, prologue=prologues, body=st.lists(steps, min_size=1, max_size=25))
def test_reference_model_keeps_its_invariants(config, memory_max, prologue, body):
    """The reference alone: the mapcounts,
    MM_ID slots, queue, buddy free lists and memcg charges it keeps agree with its page tables
    and frames after every step (independently of the engine); an OOM leaves the machine as it
    found it except for what the kernel keeps (pgfault, the tables of an out-of-RAM fault)."""
    refs = machine(ReferenceMM, config, memory_max)
    for who, action in prologue + body:
        got = run(refs, who, action)
        event(f"{action[0]} -> {got[0]}")
        refs[0]._check_invariants()
        vs = refs[0].vmstat
        assert vs["nr_anon_pages"] >= 0 and vs["nr_page_table_pages"] >= 0
        if refs[0].memory_max is not None:     # page tables may pass the limit, folios never
            assert refs[0].memory_current - refs[0].vmstat["nr_page_table_pages"] * 4096 <= refs[0].memory_max
    for mm in reversed(refs):
        mm.close()
    for fd in refs.memfds:
        fd.close()
    vs = refs[0].vmstat
    assert vs["nr_shmem"] == vs["nr_shmem_hugepages"] == vs["nr_shmem_pmdmapped"] == 0
    assert vs["nr_anon_pages"] == vs["nr_page_table_pages"] == vs["nr_anon_transparent_hugepages"] == 0
    assert all(d["nr_anon"] == 0 for d in refs[0].mthp_stats.values())
    assert refs[0].memory_current == 0
