"""Multi-size THP (spec R8, R19-R21, R36, R40, R50, R51, R58, R60, R61, R69): one test (or a few)
per rule, named after what it pins down."""
import numpy as np
import pytest
from helpers import counters, delta, hp_mapping

from mmemu import MM, Config, PageState

MB = 1 << 20
PAGE = 4096
PS = PageState


def runs(*pairs):
    return np.concatenate([np.full(n, s, np.uint8) for s, n in pairs])


def mthp_mm(**sizes):
    """An MM with the given per-size modes, e.g. mthp_mm(k64="always")."""
    return MM(Config(hugepages={int(k[1:]): v for k, v in sizes.items()}))


# ---- R19-R21, R36: which order a write fault gets ---------------------------------------------

def test_R36_a_write_maps_the_whole_aligned_block_of_the_enabled_size():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    before = counters(mm)
    assert mm.write(a + 5 * PAGE) == 1
    assert (mm.page_states(a, 32 * PAGE) == runs((PS.LARGE, 16), (PS.NONE, 16))).all()
    assert mm.status["RssAnon"] == 64
    assert delta(before, counters(mm)) == {
        "nr_anon_pages": 16, "nr_page_table_pages": 3, "pgfault": 1,
        "64kB/anon_fault_alloc": 1, "64kB/nr_anon": 1}
    assert mm.smaps(a)["AnonHugePages"] == 0 and mm.smaps(a)["Anonymous"] == 64


def test_R36_every_page_of_the_mthp_is_mapped_writable_so_the_next_writes_take_no_fault():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.write(a)
    assert mm.access(np.arange(a, a + 16 * PAGE, PAGE, dtype=np.uint64), 1).sum() == 0


def test_R36_a_zeropage_in_the_block_makes_the_write_fall_back_to_4k():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.read(a)
    mm.write(a + PAGE)
    assert (mm.page_states(a, 16 * PAGE) == runs((PS.ZERO, 1), (PS.ANON, 1), (PS.NONE, 14))).all()
    assert mm.mthp_stats[64]["anon_fault_alloc"] == 0
    assert mm.mthp_stats[64]["anon_fault_fallback"] == 0      # not tried: the block is not none


def test_R36_the_highest_order_whose_block_is_all_none_wins():
    mm = mthp_mm(k16="always", k64="always")
    a = mm.mmap(2 * MB)
    mm.read(a + 16 * PAGE)                    # blocks both 64 kB and 16 kB blocks of page 17
    mm.write(a + 17 * PAGE)
    mm.write(a + 20 * PAGE)                   # 64 kB block taken by the ZP, 16 kB block free
    mm.write(a + 40 * PAGE)                   # a clean 64 kB block
    got = mm.page_states(a, 48 * PAGE)
    assert (got[16:24] == runs((PS.ZERO, 1), (PS.ANON, 1), (PS.NONE, 2), (PS.LARGE, 4))).all()
    assert (got[32:48] == PS.LARGE).all()
    stats = mm.mthp_stats
    assert stats[16]["anon_fault_alloc"] == 1 and stats[64]["anon_fault_alloc"] == 1


def test_R21_a_block_that_does_not_fit_in_the_vma_is_skipped():
    mm = mthp_mm(k64="always")
    base = mm.mmap(4 * MB)
    mm.munmap(base, 4 * MB)
    a = mm.mmap(64 * 1024, addr=base + PAGE, fixed=True)    # 4 KiB past a 64 KiB boundary
    mm.write(a)
    assert mm.page_states(a, PAGE)[0] == PS.ANON


def test_R30_a_read_fault_maps_the_zeropage_even_with_mthp_enabled():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.read(a)
    assert mm.page_states(a, PAGE)[0] == PS.ZERO and mm.mthp_stats[64]["anon_fault_alloc"] == 0


def test_R85_with_zero_pages_forbidden_a_read_fault_allocates_an_mthp():
    mm = MM(Config(hugepages={64: "always"}, zero_page=False))
    a = mm.mmap(2 * MB)
    mm.read(a)
    assert (mm.page_states(a, 16 * PAGE) == PS.LARGE).all()


@pytest.mark.parametrize("mode, hp, expect", [
    ("madvise", False, PS.ANON), ("madvise", True, PS.LARGE),
    ("inherit", False, PS.ANON), ("inherit", True, PS.LARGE),     # top-level "madvise"
    ("never", True, PS.ANON), ("always", False, PS.LARGE)])
def test_R19_per_size_modes_decide_with_the_vmas_hugepage_advice(mode, hp, expect):
    mm = MM(Config(hugepages={64: mode, 2048: "never"}))
    a = mm.mmap(2 * MB)
    if hp:
        mm.madvise(a, 2 * MB, "hugepage")
    mm.write(a)
    assert mm.page_states(a, PAGE)[0] == expect


def test_R20_nohugepage_and_prctl_veto_mthp():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.madvise(a, 2 * MB, "nohugepage")
    mm.write(a)
    assert mm.page_states(a, PAGE)[0] == PS.ANON
    mm2 = mthp_mm(k64="always")
    mm2.prctl("PR_SET_THP_DISABLE", 1)
    b = mm2.mmap(2 * MB)
    mm2.write(b)
    assert mm2.page_states(b, PAGE)[0] == PS.ANON


def test_R38_a_pmd_fault_that_falls_back_tries_the_mthp_sizes_in_the_same_fault():
    mm = MM(Config(hugepages={64: "always"}, memory=4 * MB))
    mm.write(mm.mmap(PAGE))                   # a 4K page breaks the first of the two free blocks
    a = hp_mapping(mm, 4 * MB)
    mm.write(a)                               # takes the other one
    before = counters(mm)
    assert mm.write(a + 2 * MB) == 1          # no THP left: a 64 kB mTHP instead
    d = delta(before, counters(mm))
    assert d["thp_fault_fallback"] == 1 and d["2048kB/anon_fault_fallback"] == 1
    assert d["64kB/anon_fault_alloc"] == 1
    assert (mm.page_states(a + 2 * MB, 16 * PAGE) == PS.LARGE).all()


# ---- R50, R58: partial unmapping ---------------------------------------------------------------

def test_R58_dontneed_of_part_of_an_mthp_queues_it_as_partially_mapped():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.write(a)
    before = counters(mm)
    mm.madvise(a, 2 * PAGE, "dontneed")
    assert delta(before, counters(mm)) == {
        "nr_anon_pages": -2, "64kB/split_deferred": 1, "64kB/nr_anon_partially_mapped": 1}
    assert mm.status["RssAnon"] == 56
    mm.madvise(a + 2 * PAGE, PAGE, "dontneed")        # counted once
    assert mm.mthp_stats[64]["split_deferred"] == 1


def test_R57_unmapping_a_whole_mthp_frees_it():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    free_before = mm.buddyinfo().copy()
    mm.write(a)
    assert (mm.buddyinfo() != free_before).any()
    mm.munmap(a, 64 * 1024)
    assert mm.mthp_stats[64]["nr_anon"] == 0 and mm.vmstat["nr_anon_pages"] == 0
    assert mm.mthp_stats[64]["split_deferred"] == 0
    assert (mm.buddyinfo() == free_before).all()              # merged back whole


def test_R54_the_shrinker_splits_a_partially_mapped_mthp_and_remaps_its_zero_subpages():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.write(a + 5 * PAGE)
    mm.madvise(a, 2 * PAGE, "dontneed")
    before = counters(mm)
    mm.drop_caches(2)
    d = delta(before, counters(mm))
    assert d["64kB/split"] == 1 and d["64kB/nr_anon"] == -1 and d["64kB/nr_anon_partially_mapped"] == -1
    assert "thp_split_page" not in d                          # PMD order only
    assert (mm.page_states(a, 16 * PAGE) == runs(
        (PS.NONE, 2), (PS.ZERO, 3), (PS.ANON, 1), (PS.ZERO, 10))).all()
    assert mm.status["RssAnon"] == 4


# ---- R40, R75: fork -----------------------------------------------------------------------------

def test_R75_fork_shares_the_mthp_and_a_write_copies_4k():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.write(a)
    child = mm.fork()
    assert (child.page_states(a, 16 * PAGE) == PS.LARGE).all()
    assert child.status["RssAnon"] == 64
    assert mm.write(a + PAGE) == 1
    assert mm.page_states(a, 2 * PAGE).tolist() == [PS.LARGE, PS.ANON]
    child.close()


def test_R40_after_the_child_exits_a_write_reuses_the_mthp_page_from_6_15():
    for kernel, expect in (("6.18", PS.LARGE), ("6.12", PS.ANON)):
        mm = MM(Config.for_kernel(kernel, hugepages={64: "always"}))
        a = mm.mmap(2 * MB)
        mm.write(a)
        mm.fork().close()
        assert mm.write(a + PAGE) == 1
        assert mm.page_states(a + PAGE, PAGE)[0] == expect, kernel


# ---- R60, R61: madvise free / pageout -------------------------------------------------------------

def test_R60_free_of_a_whole_mthp_marks_it_lazyfree_without_a_split():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 64 * 1024, "free")
    assert mm.smaps(a)["LazyFree"] == 64 and mm.mthp_stats[64]["split"] == 0
    mm.madvise(a, 64 * 1024, "pageout")                       # clean lazy-free: discarded
    assert (mm.page_states(a, 16 * PAGE) == PS.NONE).all() and mm.mthp_stats[64]["nr_anon"] == 0


def test_R60_free_of_part_of_an_mthp_splits_it_first():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.write(a + 8 * PAGE)
    mm.madvise(a, 4 * PAGE, "free")
    assert mm.mthp_stats[64]["split"] == 1
    got = mm.page_states(a, 16 * PAGE)
    assert got[0] == PS.ANON and got[8] == PS.ANON and got[1] == PS.ZERO      # zero remap
    assert mm.smaps(a)["LazyFree"] == 4


def test_R61_pageout_of_a_whole_mthp_without_swap_splits_it():
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 64 * 1024, "pageout")
    assert mm.mthp_stats[64]["split"] == 1
    assert mm.page_states(a, 2 * PAGE).tolist() == [PS.ANON, PS.ZERO]


# ---- R69, R70: khugepaged over mTHPs ------------------------------------------------------------

def test_R70_collapse_copies_mthps_into_a_new_thp_and_frees_them():
    mm = MM(Config(hugepages={64: "always", 2048: "never"}))
    a = hp_mapping(mm)
    mm.write(a)
    mm.write(a + MB)
    mm.madvise(a, 2 * MB, "collapse")
    assert (mm.page_states(a, 2 * MB) == PS.THP).all()
    assert mm.mthp_stats[64]["nr_anon"] == 0 and mm.mthp_stats[2048]["nr_anon"] == 1
    assert mm.status["RssAnon"] == 2048


# ---- R9, contpte ---------------------------------------------------------------------------------

def test_R9_pagemap_shows_an_mthp_as_a_compound_thp():
    mm = mthp_mm(k16="always")
    a = mm.mmap(2 * MB)
    mm.write(a)
    _, kcount, kflags = mm.pagemap(a, 4 * PAGE)
    thp, head, tail = 1 << 22, 1 << 15, 1 << 16
    assert (kflags & thp).all() and kflags[0] & head and (kflags[1:] & tail).all()
    assert (kcount == 1).all()


def test_contpte_counts_the_64k_blocks_arm64_would_fold():
    mm = MM(Config(arch="arm64", hugepages={64: "always", 128: "always"}))
    a = mm.mmap(2 * MB)
    mm.write(a)                               # 128 kB: two contiguous blocks
    assert mm.contpte_blocks(a, 2 * MB) == 2
    mm.mprotect(a, PAGE, "r")                 # one PTE differs: that block no longer folds
    assert mm.contpte_blocks(a, 2 * MB) == 1
    mm2 = mthp_mm(k16="always")
    b = mm2.mmap(2 * MB)
    mm2.access(np.arange(b, b + 16 * PAGE, 4 * PAGE, dtype=np.uint64), 1)
    assert mm2.contpte_blocks(b, 2 * MB) == 0                 # four 16 kB folios: no fold


def test_R51_splitting_a_pte_mapped_folio_passes_through_partially_mapped():
    """try_to_migrate unmaps PTEs one at a time: the host counts the folio as partially mapped
    before it splits (64 kB: MT22; 2 MiB: a PTE-mapped THP split by MADV_FREE)."""
    mm = mthp_mm(k64="always")
    a = mm.mmap(2 * MB)
    mm.write(a)
    before = counters(mm)
    mm.madvise(a, 8 * PAGE, "free")
    d = delta(before, counters(mm))
    assert d["64kB/split"] == 1 and d["64kB/split_deferred"] == 1
    assert "64kB/nr_anon_partially_mapped" not in d            # back to 0 once split
    mm2 = MM()
    b = hp_mapping(mm2)
    mm2.write(b)
    mm2.mprotect(b + 4 * PAGE, 4 * PAGE, "r")                 # PTE-mapped now
    before = counters(mm2)
    mm2.madvise(b + 100 * PAGE, 8 * PAGE, "free")
    d = delta(before, counters(mm2))
    assert d["thp_split_page"] == 1 and d["thp_deferred_split_page"] == 1
    mm3 = MM()
    c = hp_mapping(mm3)
    mm3.write(c)                                              # PMD-mapped: frozen whole
    mm3.madvise(c + 100 * PAGE, 8 * PAGE, "free")
    assert mm3.vmstat["thp_split_page"] == 1 and mm3.vmstat["thp_deferred_split_page"] == 0


def test_R60_a_rewritten_lazyfree_mthp_is_restored_whole_and_dirty_by_pageout():
    """try_to_unmap_one clears the folio's PTEs as a batch, gathering their dirty bits; a folio
    dirty again gets every PTE back, dirty (host: Y8)."""
    mm = MM(Config(hugepages={64: "madvise", 2048: "never"}))
    a = hp_mapping(mm)
    mm.write(a)
    mm.madvise(a, 64 * 1024, "free")
    mm.write(a + 3 * PAGE)
    mm.madvise(a, 64 * 1024, "pageout")
    s = mm.smaps(a)
    assert (s["Rss"], s["Private_Dirty"], s["LazyFree"]) == (64, 64, 0)
    assert (mm.page_states(a, 16 * PAGE) == PS.LARGE).all()
