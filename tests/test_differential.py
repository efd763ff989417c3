"""Property-based differential tests: the Cython engine against the plain-Python reference model.

Random configurations and random sequences of mmap, munmap, mprotect, madvise and accesses run
through both; after every step the outcomes (return value or exception and errno) and everything
observable must be identical: page states, /proc/vmstat, per-size THP stats, RssAnon, VmPTE,
faults, the VMAs and each VMA's smaps.

Runs 2,000 examples (MMEMU_EXAMPLES=N changes that for a quick local run; hypothesis's "ci" profile, taken automatically when CI is set, makes them
derandomized).
"""
import os

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mmemu import MM, Config, PageState
from mmemu.errors import OutOfMemory, SegmentationFault, SyscallError
from mmemu.reference import ReferenceMM

MB = 1 << 20
PAGE = 4096
WINDOW = 0x500000000000          # 2 MiB-aligned (and 1 GiB-, 512 GiB-aligned) work area
WINDOW_PAGES = 8 * MB // PAGE
PLACED = 0x7ffff7000000          # where mmaps without an address land (below mmap_base)
PLACED_PAGES = 16 * MB // PAGE

configs = st.builds(
    Config,
    thp=st.sampled_from(["always", "madvise", "never"]),
    hugepages=st.sampled_from([{2048: m} for m in ("inherit", "always", "madvise", "never")]),
    use_zero_page=st.booleans(),
    zero_page=st.booleans(),
    huge_zero_write=st.sampled_from(["thp", "split"]),
    pt_reclaim=st.booleans(),
    mmap_thp_align=st.sampled_from(["none", "any", "pmd_multiple"]),
    arch=st.sampled_from(["x86_64", "arm64"]),
    atomic_write_fault=st.booleans(),
    memory=st.sampled_from([4 * MB, 6 * MB, 64 * MB]),
)

# page offsets and lengths biased to the places where the kernel's behaviour changes
page_offsets = st.one_of(
    st.integers(0, WINDOW_PAGES // 512 - 1).flatmap(
        lambda k: st.sampled_from([512 * k, 512 * k + 1, 512 * k + 255, 512 * k + 256, 512 * k + 511])),
    st.integers(0, WINDOW_PAGES - 1))
page_counts = st.one_of(st.sampled_from([1, 2, 255, 256, 511, 512, 513, 1024, 1536]), st.integers(1, 2048))
prots = st.sampled_from(["rw", "r", "none", "w", "rwx", "r-x", ""])
advices = st.sampled_from(["hugepage", "nohugepage", "dontneed", "populate_read", "populate_write",
                           "willneed"])

accesses = st.tuples(st.sampled_from(["read", "write", "atomic"]), page_offsets, st.integers(0, PAGE - 1))
traces = st.tuples(st.just("trace"), st.lists(st.tuples(page_offsets, st.integers(0, 2)), min_size=1, max_size=40))
steps = st.one_of(
    accesses, traces, accesses, traces,        # accesses twice as likely as each syscall
    st.tuples(st.just("mmap_fixed"), page_offsets, page_counts, prots),
    st.tuples(st.just("mmap"), st.sampled_from([1, 3, 256, 512, 513, 1024]), prots),
    st.tuples(st.just("munmap"), page_offsets, page_counts),
    st.tuples(st.just("prctl"), st.integers(0, 1), st.sampled_from([0, 0, 2])),
    st.tuples(st.just("mprotect"), page_offsets, page_counts, prots),
    st.tuples(st.just("madvise"), page_offsets, page_counts, advices),
)


def outcome(fn, *args):
    """What a call did, comparable across engines."""
    try:
        result = fn(*args)
    except SyscallError as e:
        return ("errno", e.errno)
    except SegmentationFault as e:
        return ("segv", e.address, e.index)
    except OutOfMemory as e:
        return ("oom", e.address, e.index)
    except NotImplementedError:
        return ("notimpl",)
    if isinstance(result, np.ndarray):
        return ("ok", result.dtype.str, result.tolist())
    return ("ok", result)


def apply(mm, step):
    kind = step[0]
    if kind == "mmap_fixed":
        _, off, n, prot = step
        return outcome(mm.mmap, n * PAGE, prot, WINDOW + off * PAGE, True)
    if kind == "mmap":
        return outcome(mm.mmap, step[1] * PAGE, step[2])
    if kind == "prctl":
        return outcome(mm.prctl, "PR_SET_THP_DISABLE", step[1], step[2])
    if kind == "munmap":
        return outcome(mm.munmap, WINDOW + step[1] * PAGE, step[2] * PAGE)
    if kind == "mprotect":
        return outcome(mm.mprotect, WINDOW + step[1] * PAGE, step[2] * PAGE, step[3])
    if kind == "madvise":
        return outcome(mm.madvise, WINDOW + step[1] * PAGE, step[2] * PAGE, step[3])
    if kind in ("read", "write", "atomic"):
        return outcome(getattr(mm, kind), WINDOW + step[1] * PAGE + step[2])
    addrs = np.array([WINDOW + off * PAGE for off, _ in step[1]], np.uint64)
    ops = np.array([op for _, op in step[1]], np.uint8)
    return outcome(mm.access, addrs, ops)


def observe(mm):
    maps = mm.maps()
    return {
        "window": mm.page_states(WINDOW, WINDOW_PAGES * PAGE).tolist(),
        "placed": mm.page_states(PLACED, PLACED_PAGES * PAGE).tolist(),
        "vmstat": mm.vmstat,
        "mthp": mm.mthp_stats,
        "status": mm.status,
        "rusage": mm.rusage,
        "maps": maps,
        "smaps": [mm.smaps(start) for start, *_ in maps],
    }


def diff(a, b):
    return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in ("window", "placed")} | {
        k: "differs" for k in ("window", "placed") if a[k] != b[k]}


# Most scripts start by mapping the whole window (often MADV_HUGEPAGE), so that the steps after
# it land on memory rather than on holes.
mapped = st.sampled_from(["rw", "rw", "rw", "r", "none"]).map(lambda p: [("mmap_fixed", 0, WINDOW_PAGES, p)])
mapped_hp = st.sampled_from(["rw", "rw", "r"]).map(lambda p: [("mmap_fixed", 0, WINDOW_PAGES, p),
                                                            ("madvise", 0, WINDOW_PAGES, "hugepage")])
prologues = st.one_of(st.just([]), mapped, mapped, mapped_hp, mapped_hp, mapped_hp)


@settings(max_examples=int(os.environ.get("MMEMU_EXAMPLES", 2000)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, prologue=prologues, body=st.lists(steps, min_size=1, max_size=25))
def test_engine_matches_reference_model(config, prologue, body):
    engine, ref = MM(config), ReferenceMM(config)
    script = prologue + body
    for i, step in enumerate(script):
        got, want = apply(engine, step), apply(ref, step)
        assert got == want, f"step {i} {step}: engine {got} != reference {want}"
        event(f"{step[0]} -> {got[0]}" + (f" {got[1]}" if got[0] == "errno" else ""))
        seen, expected = observe(engine), observe(ref)
        assert seen == expected, f"step {i} {step}: {diff(seen, expected)}"
    final = observe(engine)["window"]
    event("window ended with " + (", ".join(PageState(v).name for v in sorted(set(final)) if v) or "nothing"))
    engine.close()
    ref.close()
    assert engine.vmstat == ref.vmstat
