"""Assertions on memory behaviour, for a project's own tests and benchmarks.

    from mmemu.testing import expect_faults, expect_counters, assert_pages

    def test_my_arena_touches_one_thp(mm):                    # the mm fixture: mmemu's pytest plugin
        a = mm.mmap(2 << 20)
        mm.madvise(a, 2 << 20, "hugepage")
        with expect_faults(mm, 1), expect_counters(mm, thp_fault_alloc=1, thp_split_pmd=0):
            my_arena_fill(mm, a)
        assert_pages(mm, a, 2 << 20, THP=512)

Failures say what the kernel would have done instead (the page states run-length encoded, the
counters that moved).
"""
from __future__ import annotations

import contextlib

import numpy as np

from .constants import PageState


def page_counts(mm, addr: int, length: int) -> dict:
    """Pages of [addr, addr+length) by PageState name (states with no page left out)."""
    counts = np.bincount(mm.page_states(addr, length), minlength=len(PageState))
    return {PageState(i).name: int(n) for i, n in enumerate(counts) if n}


def assert_pages(mm, addr: int, length: int, **expected: int) -> None:
    """The range holds exactly these pages by state (``THP=512``, ``ZERO=511, ANON=1``); pages
    of a state not named must be NONE."""
    unknown = set(expected) - set(PageState.__members__)
    if unknown:
        raise ValueError(f"unknown page state {sorted(unknown)[0]!r}: one of {', '.join(PageState.__members__)}")
    got = page_counts(mm, addr, length)
    want = {k: v for k, v in expected.items() if v}
    total = length // 4096
    want.setdefault("NONE", total - sum(want.values()))
    want = {k: v for k, v in want.items() if v}
    if got != want:
        from .scenarios import describe
        raise AssertionError(f"pages of {addr:#x}+{length:#x}: expected {want}, got {got} "
                             f"({describe(mm.page_states(addr, length))})")


class Counting:
    """What moved while a ``with counting(mm)`` block ran: faults (this process's min_flt),
    /proc/vmstat changes, the per-size stats' changes and the status (kB) changes."""

    def __init__(self, mm):
        self.mm = mm
        self._flt, self._vm, self._st = mm.rusage["min_flt"], mm.vmstat, mm.status
        self._mthp = {kb: dict(v) for kb, v in mm.mthp_stats.items()}
        self.faults = self.vmstat = self.status = self.mthp = None

    def finish(self):
        mm = self.mm
        self.faults = mm.rusage["min_flt"] - self._flt
        vm, st = mm.vmstat, mm.status
        self.vmstat = {k: vm[k] - self._vm[k] for k in vm if vm[k] != self._vm[k]}
        self.status = {k: st[k] - self._st[k] for k in st if st[k] != self._st[k]}
        self.mthp = {f"{kb}kB/{k}": v[k] - self._mthp[kb][k] for kb, v in mm.mthp_stats.items() for k in v
                     if v[k] != self._mthp[kb][k]}

    def delta(self, name: str) -> int:
        """The change of a vmstat counter, a status field or a '<size>kB/<stat>' per-size stat."""
        for table in (self.vmstat, self.status, self.mthp):
            if name in table:
                return table[name]
        return 0


@contextlib.contextmanager
def counting(mm):
    """Measure a block: ``with counting(mm) as c: ...``, then ``c.faults``, ``c.delta(name)``."""
    c = Counting(mm)
    try:
        yield c
    finally:
        c.finish()


@contextlib.contextmanager
def expect_faults(mm, n: int):
    """The block takes exactly ``n`` page faults in ``mm``."""
    with counting(mm) as c:
        yield c
    if c.faults != n:
        raise AssertionError(f"expected {n} page fault{'s' * (n != 1)}, took {c.faults}"
                             + (f" (vmstat moved: {c.vmstat})" if c.vmstat else ""))


@contextlib.contextmanager
def expect_counters(mm, **expected: int):
    """The block changes these counters by exactly these amounts (vmstat names, status fields
    in kB, per-size stats as ``**{"64kB/anon_fault_alloc": 1}``); others may move."""
    with counting(mm) as c:
        yield c
    wrong = {k: (v, c.delta(k)) for k, v in expected.items() if c.delta(k) != v}
    if wrong:
        text = ", ".join(f"{k}: expected {want:+d}, got {got:+d}" for k, (want, got) in wrong.items())
        raise AssertionError(f"counters: {text}")
