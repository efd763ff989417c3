"""Atomic pretouch: a heap pre-faulted by atomic adds of zero, one per page, as the JVM's
``-XX:+AlwaysPreTouch`` does (an atomic add rather than a store, so that it cannot lose a
concurrent write).

On x86_64 a locked read-modify-write faults once, as a write. On arm64 an LDADD/CAS/SWP on an
untouched page faults twice: first as a read, which maps the zeropage (the huge zeropage in a
THP-eligible range), then as a write, which copies it; ``Config.atomic_write_fault`` models
the proposed patch that decodes the instruction and takes one write fault. What the write
on the huge zeropage does is ``huge_zero_write``: allocate a THP (6.13+) or split the PMD into
zeropage PTEs plus one 4K page, after which every following page of the range takes a write
fault of its own and the range is no THP until khugepaged collapses it.

The result counts the faults, the THPs at the end, the PMD splits, and what khugepaged would
have to repair: the 2 MiB ranges of the heap not mapped by a THP, and, when asked to run it,
how many it collapses.
"""
from __future__ import annotations

import numpy as np

from ..config import Config
from ..constants import ATOMIC, PageState
from ..mm import MM
from .result import Timeline, WorkloadResult, rollup, vmstat_delta

PAGE = 4096
PMD = 2 << 20


def atomic_pretouch(heap: int = 1 << 30, config: Config | None = None, *, stride: int = PAGE,
                    hugepage: bool = True, chunk_pages: int = 1 << 16, khugepaged_scans: int = 0,
                    progress=None) -> WorkloadResult:
    """Pretouch ``heap`` bytes (a multiple of 2 MiB) by one atomic access per ``stride`` bytes.

    ``hugepage``: the heap is MADV_HUGEPAGE (the JVM's -XX:+UseTransparentHugePages).
    ``khugepaged_scans``: full khugepaged passes to run after the pretouch (0: none), to see
    what it repairs. ``progress(done, total)`` is called after each chunk of
    ``chunk_pages`` touches."""
    config = config or Config()
    _check(heap, stride, chunk_pages, khugepaged_scans)
    mm = MM(config)
    try:
        base = mm.mmap(heap)
        if hugepage:
            mm.madvise(base, heap, "hugepage")
        before = mm.vmstat
        timeline = Timeline(mm)
        timeline.sample(0)
        addrs = np.arange(base, base + heap, stride, dtype=np.uint64)
        for start in range(0, addrs.shape[0], chunk_pages):
            mm.access(addrs[start:start + chunk_pages], ATOMIC)
            done = min(start + chunk_pages, addrs.shape[0])
            timeline.sample(done)
            if progress:
                progress(done, addrs.shape[0])
        final = _figures(mm, base, heap, before)
        if khugepaged_scans:
            mm.khugepaged_scan(full_scans=khugepaged_scans)
            after = _thp_ranges(mm, base, heap)
            final.update(thp_ranges_after_khugepaged=after,
                         collapsed_by_khugepaged=after - final["thp_ranges"],
                         faults_with_khugepaged=mm.rusage["min_flt"] - timeline.base_faults)
        params = {"heap": heap, "stride": stride, "hugepage": hugepage, "khugepaged_scans": khugepaged_scans,
                  "unit": "pages touched"}
        return WorkloadResult("atomic_pretouch", params, config.as_dict(), timeline.columns(), final)
    finally:
        mm.close()


def _check(heap, stride, chunk_pages, scans):
    for name, value in (("heap", heap), ("stride", stride), ("chunk_pages", chunk_pages),
                        ("khugepaged_scans", scans)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    if heap == 0 or heap % PMD:
        raise ValueError(f"heap must be a positive multiple of 2 MiB, not {heap}")
    if stride == 0 or stride % 8 or stride > heap:
        raise ValueError(f"stride must be a multiple of 8 bytes up to the heap's size, not {stride}")
    if chunk_pages == 0:
        raise ValueError("chunk_pages must be at least 1")


def _thp_ranges(mm, base, heap):
    states = mm.page_states(base, heap).reshape(-1, PMD // PAGE)
    return int((states == PageState.THP).all(axis=1).sum())


def _figures(mm, base, heap, before):
    states = mm.page_states(base, heap)
    thp = _thp_ranges(mm, base, heap)
    smaps = rollup(mm)
    delta = vmstat_delta(before, mm.vmstat)
    return {
        "faults": mm.rusage["min_flt"],
        "touches": heap // PAGE,
        "thp_ranges": thp,
        "ranges_to_repair": heap // PMD - thp,
        "thp_split_pmd": delta["thp_split_pmd"],
        "thp_fault_alloc": delta["thp_fault_alloc"],
        "thp_zero_page_alloc": delta["thp_zero_page_alloc"],
        "zero_pages": int((states == PageState.ZERO).sum()),
        "rss_kb": mm.status["VmRSS"],
        "anon_huge_kb": smaps.get("AnonHugePages", 0),
        "pte_kb": mm.status["VmPTE"],
    }


#: the settings the arm64-atomics thread compares, by a short name: (kernel, Config fields)
PRETOUCH_CASES = {
    "x86_64": ("6.18", {"arch": "x86_64"}),
    "arm64": ("6.18", {"arch": "arm64"}),
    "arm64 + atomic_write_fault": ("6.18", {"arch": "arm64", "atomic_write_fault": True}),
    "arm64, 6.12 (huge zeropage split)": ("6.12", {"arch": "arm64"}),
    "arm64 + atomic_write_fault, 6.12": ("6.12", {"arch": "arm64", "atomic_write_fault": True}),
}


def compare_pretouch(heap: int = 256 << 20, cases: dict | None = None, **kwargs) -> dict:
    """atomic_pretouch under each of ``cases`` (name -> (kernel version, Config fields); the
    version's behaviour comes from Config.for_kernel): name -> WorkloadResult."""
    return {name: atomic_pretouch(heap, Config.for_kernel(kernel, **fields), **kwargs)
            for name, (kernel, fields) in (cases or PRETOUCH_CASES).items()}
