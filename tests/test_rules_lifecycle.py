"""One test (or a few) per rule of spec sections 2, 3 and 9-14 that issue 4 brought in: PMD and
folio splits, the deferred-split queue and shrinkers, madvise free/cold/pageout/collapse,
mremap, khugepaged and fork.  Named after the rule each pins down."""
import errno

import numpy as np
import pytest
from helpers import delta, hp_mapping

from mmemu import MM, Config, PageState, SegmentationFault, SyscallError

MB = 1 << 20
PAGE = 4096
PS = PageState


def counters(mm):
    out = dict(mm.vmstat)
    out.update({f"2048kB/{k}": v for k, v in mm.mthp_stats[2048].items()})
    return out


def states(mm, a, length=2 * MB):
    return mm.page_states(a, length)


def runs(*pairs):
    """Expected page states from (state, count) pairs."""
    return np.concatenate([np.full(n, s, np.uint8) for s, n in pairs])


def thp_with_one_written_page(mm=None):
    mm = mm or MM()
    a = hp_mapping(mm)
    mm.write(a)
    return mm, a


# ---- section 2: page tables ------------------------------------------------------------------

def test_R11_a_pmd_split_turns_the_deposit_into_the_live_table():
    mm, a = thp_with_one_written_page()
    vmpte = mm.status["VmPTE"]
    mm.madvise(a + 256 * PAGE, PAGE, "dontneed")
    assert mm.status["VmPTE"] == vmpte
    assert mm.page_tables["deposited"] == 0 and mm.page_tables["pte"] == 1


def test_R11_a_collapse_turns_the_old_table_into_the_deposit():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    vmpte = mm.status["VmPTE"]
    mm.madvise(a, 2 * MB, "collapse")
    assert mm.status["VmPTE"] == vmpte
    assert mm.page_tables["deposited"] == 1 and mm.page_tables["pte"] == 0


def test_R11_fork_gives_the_child_its_own_deposit():
    mm, _ = thp_with_one_written_page()
    child = mm.fork()
    assert child.page_tables["deposited"] == 1
    assert child.status["VmPTE"] == mm.status["VmPTE"]


def test_R13_madv_free_frees_no_page_table():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    vmpte = mm.status["VmPTE"]
    mm.madvise(a, 2 * MB, "free")
    assert mm.status["VmPTE"] == vmpte


# ---- section 3: VMAs, anon_vma, khugepaged registration -------------------------------------

def test_R16_a_vma_split_inside_a_thp_splits_its_pmd():
    mm, a = thp_with_one_written_page()
    before = counters(mm)
    mm.madvise(a + 256 * PAGE, PAGE, "nohugepage")
    assert len(mm.maps()) == 3
    assert (states(mm, a) == PS.LARGE).all()
    assert delta(before, counters(mm)) == {"thp_split_pmd": 1, "nr_anon_transparent_hugepages": -1}


def test_R17_fork_gives_the_child_an_anon_vma_so_it_can_collapse():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    child = mm.fork()
    child.madvise(a, 2 * MB, "collapse")
    assert (states(child, a) == PS.THP).all()


def test_R18_madv_hugepage_registers_only_a_vma_with_an_anon_vma():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.madvise(a, 2 * MB, "hugepage")
    assert not mm._core.khugepaged_seq           # no anon_vma yet: not eligible for khugepaged
    b = mm.mmap(2 * MB)
    mm.write(b)
    mm.madvise(b, 2 * MB, "hugepage")
    assert mm._core.khugepaged_seq


def test_R18_a_pmd_fault_and_fork_register_with_khugepaged():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    assert mm._core.khugepaged_seq
    child = mm.fork()
    assert child._core.khugepaged_seq > mm._core.khugepaged_seq
    child.close()
    assert not child._core.khugepaged_seq


# ---- section 9: splits, deferred split, shrinkers ---------------------------------------------

def test_R47_a_pmd_split_keeps_rss_and_the_folio_and_drops_anon_huge_pages():
    mm, a = thp_with_one_written_page()
    before = counters(mm)
    mm.mprotect(a + 256 * PAGE, PAGE, "r")
    assert (states(mm, a) == PS.LARGE).all()
    assert mm.smaps(a)["Rss"] == 1024 and mm.status["RssAnon"] == 2048
    assert delta(before, counters(mm)) == {"thp_split_pmd": 1, "nr_anon_transparent_hugepages": -1}
    assert mm.mthp_stats[2048]["nr_anon"] == 1


def test_R47_subpages_keep_the_pmds_write_and_dirty_bits():
    mm, a = thp_with_one_written_page()
    mm.mprotect(a + 256 * PAGE, PAGE, "r")
    assert mm.write(a + 5 * PAGE) == 0          # writable, dirty PTE: no fault
    assert mm.smaps(a)["Private_Dirty"] == 1024 and mm.smaps(a)["Referenced"] == 1024


def test_R48_splitting_the_huge_zeropage_pmd_gives_512_zeropage_ptes_and_counts():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    before = counters(mm)
    mm.madvise(a + 256 * PAGE, PAGE, "dontneed")
    assert (states(mm, a) == runs((PS.ZERO, 256), (PS.NONE, 1), (PS.ZERO, 255))).all()
    assert delta(before, counters(mm)) == {"thp_split_pmd": 1}


def test_R49_an_operation_covering_the_whole_2M_acts_on_the_pmd_without_a_split():
    mm, a = thp_with_one_written_page(MM())
    b = mm.mmap(2 * MB)
    mm.madvise(b, 2 * MB, "hugepage")
    mm.write(b)
    before = counters(mm)
    mm.mprotect(a, 2 * MB, "r")
    mm.madvise(b, 2 * MB, "free")
    assert (states(mm, a) == PS.THP).all() and (states(mm, b) == PS.THP).all()
    assert counters(mm)["thp_split_pmd"] == before["thp_split_pmd"]


def test_R50_a_partial_unmap_queues_the_folio_once_and_keeps_its_pages():
    mm, a = thp_with_one_written_page()
    before = counters(mm)
    mm.madvise(a + 256 * PAGE, PAGE, "dontneed")
    mm.madvise(a + 300 * PAGE, PAGE, "dontneed")
    assert delta(before, counters(mm)) == {
        "thp_split_pmd": 1, "thp_deferred_split_page": 1, "2048kB/split_deferred": 1,
        "2048kB/nr_anon_partially_mapped": 1, "nr_anon_transparent_hugepages": -1,
        "nr_anon_pages": -2}
    assert mm.status["RssAnon"] == 2040


def test_R50_a_cow_copy_does_not_make_the_folio_partially_mapped():
    mm, a = thp_with_one_written_page()
    child = mm.fork()
    before = counters(mm)
    mm.write(a + PAGE)                           # split the parent's PMD, copy one 4K page
    assert delta(before, counters(mm)).get("thp_deferred_split_page", 0) == 0
    assert (states(child, a) == PS.THP).all()


def test_R50_unmapping_every_pte_of_the_folio_frees_it_without_queueing():
    mm, a = thp_with_one_written_page()
    mm.mprotect(a + 256 * PAGE, PAGE, "r")       # PTE-mapped, and one VMA again
    mm.mprotect(a + 256 * PAGE, PAGE, "rw")
    before = counters(mm)
    mm.munmap(a, 2 * MB)
    d = delta(before, counters(mm))
    assert d["2048kB/nr_anon"] == -1 and "thp_deferred_split_page" not in d


def test_R51_R52_a_folio_split_maps_zero_subpages_to_the_zeropage():
    mm, a = thp_with_one_written_page()
    before = counters(mm)
    mm.madvise(a, MB, "free")
    assert (states(mm, a) == runs((PS.ANON, 1), (PS.ZERO, 511))).all()
    assert mm.smaps(a)["Rss"] == 4
    assert delta(before, counters(mm)) == {
        "thp_split_pmd": 1, "thp_split_page": 1, "2048kB/split": 1, "2048kB/nr_anon": -1,
        "nr_anon_transparent_hugepages": -1, "nr_anon_pages": -511}


def test_R52_before_6_12_a_folio_split_keeps_every_subpage():
    mm, a = thp_with_one_written_page(MM(Config.for_kernel("6.8")))
    mm.madvise(a, MB, "free")
    assert (states(mm, a) == PS.ANON).all() and mm.smaps(a)["Rss"] == 2048


def test_R52_zero_pages_forbidden_keep_every_subpage():
    mm, a = thp_with_one_written_page(MM(Config(zero_page=False)))
    mm.madvise(a, MB, "free")
    assert (states(mm, a) == PS.ANON).all()


def test_R53_dontneed_munmap_mprotect_and_mremap_never_split_the_folio():
    mm, a = thp_with_one_written_page()
    mm.madvise(a + PAGE, PAGE, "dontneed")
    mm.mprotect(a + 8 * PAGE, PAGE, "r")
    mm.munmap(a + 16 * PAGE, PAGE)
    b = hp_mapping(mm)
    mm.write(b)
    mm.mremap(b, 2 * MB, MB)
    assert mm.vmstat["thp_split_page"] == 0 and mm.mthp_stats[2048]["nr_anon"] == 2


def test_R54_the_shrinker_splits_a_partially_mapped_thp():
    mm, a = thp_with_one_written_page()
    mm.madvise(a + 256 * PAGE, PAGE, "dontneed")
    before = counters(mm)
    mm.drop_caches(2)
    assert (states(mm, a) == runs((PS.ANON, 1), (PS.ZERO, 255), (PS.NONE, 1), (PS.ZERO, 255))).all()
    d = delta(before, counters(mm))
    assert d["thp_split_page"] == 1 and d["2048kB/split"] == 1
    assert d["2048kB/nr_anon_partially_mapped"] == -1 and d["2048kB/nr_anon"] == -1


def test_R54_a_written_partially_mapped_thp_splits_into_4K_pages():
    mm = MM()
    a = hp_mapping(mm)
    mm.access(a + PAGE * np.arange(512, dtype=np.uint64), 1)
    mm.madvise(a + 256 * PAGE, PAGE, "dontneed")
    mm.drop_caches(2)
    assert (states(mm, a) == runs((PS.ANON, 256), (PS.NONE, 1), (PS.ANON, 255))).all()
    assert mm.smaps(a)["Rss"] == 2044


def test_R54_underused_check_is_off_at_max_ptes_none_511():
    mm, a = thp_with_one_written_page()
    mm.drop_caches(2)
    assert (states(mm, a) == PS.THP).all() and mm.vmstat["thp_underused_split_page"] == 0


def test_R54_an_underused_thp_splits_when_max_ptes_none_is_lower():
    mm, a = thp_with_one_written_page(MM(Config(khugepaged_max_ptes_none=100)))
    mm.drop_caches(2)
    assert (states(mm, a) == runs((PS.ANON, 1), (PS.ZERO, 511))).all()
    assert mm.vmstat["thp_underused_split_page"] == 1 and mm.vmstat["thp_split_page"] == 1


def test_R54_a_well_used_thp_is_only_taken_off_the_queue():
    mm = MM(Config(khugepaged_max_ptes_none=100))
    a = hp_mapping(mm)
    mm.access(a + PAGE * np.arange(450, dtype=np.uint64), 1)
    mm.drop_caches(2)
    assert (states(mm, a) == PS.THP).all()


def test_R54_shrink_underused_off_disables_the_underused_split():
    mm, a = thp_with_one_written_page(MM(Config(khugepaged_max_ptes_none=100, shrink_underused=False)))
    mm.drop_caches(2)
    assert (states(mm, a) == PS.THP).all()


def test_R55_a_thp_from_a_fault_is_queued_uncounted():
    mm, a = thp_with_one_written_page()
    assert mm.vmstat["thp_deferred_split_page"] == 0
    pfn = int(mm.pagemap(a, PAGE)[0][0]) & ((1 << 55) - 1)
    assert mm._machine.pmd_folio_info(pfn >> 9)[2] & 0x80       # PG_DEFERRED


def test_R56_the_huge_zeropage_is_freed_by_the_shrinker_once_no_mm_holds_it():
    mm = MM()
    machine = mm._machine
    a = hp_mapping(mm)
    mm.read(a)
    child = mm.fork()                            # maps it too: a second reference
    mm.munmap(a, 2 * MB)
    mm.drop_caches(2)
    assert machine.huge_zero_pfn >= 0            # held until the mm exits, mapped or not
    mm.close()
    child.drop_caches(2)
    assert machine.huge_zero_pfn >= 0            # the child still holds it
    child.munmap(a, 2 * MB)
    b = hp_mapping(child)
    survivor = child.fork()                      # never mapped it: holds no reference
    child.close()
    survivor.drop_caches(2)
    assert machine.huge_zero_pfn == -1
    survivor.read(b)
    assert survivor.vmstat["thp_zero_page_alloc"] == 2


# ---- section 10: madvise ---------------------------------------------------------------------

def test_R57_dontneed_of_a_whole_thp_frees_it_and_its_deposit():
    mm, a = thp_with_one_written_page()
    before = counters(mm)
    mm.madvise(a, 2 * MB, "dontneed")
    assert (states(mm, a) == PS.NONE).all()
    d = delta(before, counters(mm))
    assert d["2048kB/nr_anon"] == -1 and d["nr_anon_transparent_hugepages"] == -1
    assert "thp_split_pmd" not in d and mm.status["VmPTE"] == 8


def test_R57_later_accesses_fault_as_on_fresh_memory():
    mm, a = thp_with_one_written_page()
    mm.madvise(a + 256 * PAGE, PAGE, "dontneed")
    assert mm.read(a + 256 * PAGE) == 1
    assert states(mm, a + 256 * PAGE, PAGE)[0] == PS.ZERO


def test_R60_free_of_a_whole_thp_marks_it_lazy_free_without_a_split():
    mm, a = thp_with_one_written_page()
    mm.madvise(a, 2 * MB, "free")
    s = mm.smaps(a)
    assert (states(mm, a) == PS.THP).all()
    assert s["LazyFree"] == 2048 and s["Private_Clean"] == 2048 and s["Private_Dirty"] == 0
    assert s["AnonHugePages"] == 2048


def test_R60_a_write_after_free_cancels_it_without_a_fault():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 2 * MB, "free")
    assert mm.smaps(a)["LazyFree"] == 4
    assert mm.write(a) == 0
    assert mm.smaps(a)["LazyFree"] == 0 and mm.smaps(a)["Private_Dirty"] == 4


def test_R60_free_skips_zeropage_and_none_entries():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.read(a)
    mm.madvise(a, 2 * MB, "free")
    assert states(mm, a)[0] == PS.ZERO and mm.smaps(a)["LazyFree"] == 0


def test_R61_cold_of_part_of_a_thp_splits_it():
    mm, a = thp_with_one_written_page()
    mm.madvise(a, MB, "cold")
    assert mm.vmstat["thp_split_page"] == 1
    assert (states(mm, a) == runs((PS.ANON, 1), (PS.ZERO, 511))).all()


def test_R61_cold_leaves_a_thp_another_process_maps():
    mm, a = thp_with_one_written_page()
    child = mm.fork()
    mm.madvise(a, MB, "cold")
    assert mm.vmstat["thp_split_page"] == 0 and (states(mm, a) == PS.THP).all()
    assert child.closed is False


def test_R61_pageout_discards_clean_lazy_free_pages_and_keeps_others():
    mm = MM()
    a = mm.mmap(2 * MB)
    for i in range(3):
        mm.write(a + i * PAGE)
    mm.madvise(a, 2 * PAGE, "free")
    mm.write(a + PAGE)                           # redirtied: no longer discardable
    mm.madvise(a, 2 * MB, "pageout")
    assert list(states(mm, a, 3 * PAGE)) == [PS.NONE, PS.ANON, PS.ANON]
    assert mm.status["RssAnon"] == 8
    assert mm.read(a) == 1 and states(mm, a, PAGE)[0] == PS.ZERO


def test_R61_pageout_without_swap_keeps_4K_pages_and_splits_a_thp_it_cannot_swap():
    mm, a = thp_with_one_written_page()
    b = mm.mmap(2 * MB)
    mm.write(b)
    before = counters(mm)
    mm.madvise(a, 2 * MB, "pageout")
    mm.madvise(b, 2 * MB, "pageout")
    assert (states(mm, a) == runs((PS.ANON, 1), (PS.ZERO, 511))).all()   # measured on 6.18
    assert states(mm, b, PAGE)[0] == PS.ANON
    d = delta(before, counters(mm))
    assert (d["thp_split_pmd"], d["thp_split_page"], d["2048kB/split"]) == (1, 1, 1)


def test_R61_pageout_splits_a_clean_lazy_free_thps_pmd_and_discards_it():
    mm, a = thp_with_one_written_page()
    mm.madvise(a, 2 * MB, "free")
    vmpte = mm.status["VmPTE"]
    mm.madvise(a, 2 * MB, "pageout")
    assert (states(mm, a) == PS.NONE).all() and mm.mthp_stats[2048]["nr_anon"] == 0
    assert mm.vmstat["thp_split_pmd"] == 1 and mm.vmstat["thp_split_page"] == 0
    assert mm.status["VmPTE"] == vmpte           # the deposit became the table, and stays


def test_R61_pageout_keeps_a_rewritten_lazy_free_thp_whole_but_pte_mapped():
    mm, a = thp_with_one_written_page()
    mm.madvise(a, 2 * MB, "free")
    mm.write(a + PAGE)
    mm.madvise(a, 2 * MB, "pageout")
    assert (states(mm, a) == PS.LARGE).all() and mm.smaps(a)["LazyFree"] == 0


def test_R62_hugepage_leaves_existing_mappings_and_tables_alone():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 2 * MB, "hugepage")
    assert mm.write(a + PAGE) == 1 and states(mm, a, 2 * PAGE).tolist() == [PS.ANON, PS.ANON]


def test_R64_collapse_of_a_pte_table_builds_a_thp_without_counting_faults():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    before = counters(mm)
    mm.madvise(a, 2 * MB, "collapse")
    assert (states(mm, a) == PS.THP).all()
    d = delta(before, counters(mm))
    assert d == {"thp_collapse_alloc": 1, "nr_anon_transparent_hugepages": 1, "2048kB/nr_anon": 1,
                 "nr_anon_pages": 511}
    assert mm.smaps(a)["THPeligible"] == 0 and mm.khugepaged["pages_collapsed"] == 0


def test_R64_collapse_keeps_the_data_written_before():
    mm = MM(Config(khugepaged_max_ptes_none=0))
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 2 * MB, "collapse")
    mm.madvise(a + PAGE, PAGE, "dontneed")
    mm.drop_caches(2)                            # partially mapped: split, zero pages remapped
    assert (states(mm, a) == runs((PS.ANON, 1), (PS.NONE, 1), (PS.ZERO, 510))).all()


@pytest.mark.parametrize("prepare", ["untouched", "zeropages_only", "nohugepage"])
def test_R64_collapse_refuses_with_einval(prepare):
    mm = MM()
    a = mm.mmap(2 * MB)
    if prepare == "zeropages_only":
        mm.access(a + PAGE * np.arange(512, dtype=np.uint64), 0)
    if prepare == "nohugepage":
        mm.madvise(a, 2 * MB, "nohugepage")
        mm.write(a)
    before = states(mm, a).copy()
    with pytest.raises(SyscallError) as info:
        mm.madvise(a, 2 * MB, "collapse")
    assert info.value.errno == errno.EINVAL
    assert (states(mm, a) == before).all()


def test_R64_collapse_of_a_pmd_mapping_changes_nothing():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    before = counters(mm)
    mm.madvise(a, 2 * MB, "collapse")
    assert (states(mm, a) == PS.HUGE_ZERO).all() and counters(mm) == before


def test_R64_collapse_without_a_free_2M_block_is_enomem():
    mm = MM(Config(memory=2 * MB))
    a = mm.mmap(2 * MB)
    mm.write(a)
    with pytest.raises(SyscallError) as info:
        mm.madvise(a, 2 * MB, "collapse")
    assert info.value.errno == errno.ENOMEM and mm.vmstat["thp_collapse_alloc_failed"] == 1


def test_R64_collapse_respects_prctl_but_not_the_except_advised_mode():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.prctl("PR_SET_THP_DISABLE", 1, 2)
    mm.madvise(a, 2 * MB, "collapse")
    assert (states(mm, a) == PS.THP).all()
    b = mm.mmap(2 * MB)
    mm.write(b)
    mm.prctl("PR_SET_THP_DISABLE", 1, 0)
    with pytest.raises(SyscallError):
        mm.madvise(b, 2 * MB, "collapse")


# ---- section 11: mprotect, munmap, mremap ------------------------------------------------------

def test_R65_mprotect_of_part_of_a_thp_splits_its_pmd():
    mm, a = thp_with_one_written_page()
    mm.mprotect(a, MB, "r")
    assert (states(mm, a) == PS.LARGE).all() and mm.vmstat["thp_split_pmd"] == 1
    with pytest.raises(SegmentationFault):
        mm.write(a)
    assert mm.write(a + MB) == 0


def test_R66_munmap_of_part_of_a_thp_queues_it_and_frees_the_rest_at_exit():
    mm, a = thp_with_one_written_page()
    free = mm._machine.nr_free_pages
    mm.munmap(a + 256 * PAGE, PAGE)
    assert mm.vmstat["thp_deferred_split_page"] == 1
    assert mm._machine.nr_free_pages == free      # the unmapped page stays allocated
    mm.close()
    assert mm._machine.nr_free_pages == free + 512


def test_R67_mremap_moves_a_thp_by_its_pmd():
    mm, a = thp_with_one_written_page()
    mm.mmap(PAGE, addr=a + 2 * MB, fixed=True)   # no room to grow in place
    b = mm.mremap(a, 2 * MB, 4 * MB, maymove=True)
    assert b != a and b % (2 * MB) == 0
    assert (states(mm, b, 4 * MB) == runs((PS.THP, 512), (PS.NONE, 512))).all()
    assert mm.vmstat["thp_split_pmd"] == 0 and mm.smaps(b)["AnonHugePages"] == 2048
    assert mm.page_states(a, PAGE)[0] == PS.NONE and mm._core.vma_index(a) < 0


def test_R67_mremap_shrinking_into_a_thp_splits_and_queues_it():
    mm, a = thp_with_one_written_page()
    before = counters(mm)
    assert mm.mremap(a, 2 * MB, MB) == a
    assert (states(mm, a, MB) == PS.LARGE).all() and mm.smaps(a)["Rss"] == 1024
    d = delta(before, counters(mm))
    assert d["thp_split_pmd"] == 1 and d["thp_deferred_split_page"] == 1


def test_R67_mremap_to_a_fixed_address_moves_ptes_one_by_one():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.write(a + 5 * PAGE)
    dest = mm.mmap(8 * MB)
    b = mm.mremap(a, 2 * MB, 2 * MB, maymove=True, new_addr=dest + PAGE)
    assert b == dest + PAGE
    st = states(mm, b, 6 * PAGE).tolist()
    assert st == [PS.ANON, PS.NONE, PS.NONE, PS.NONE, PS.NONE, PS.ANON]
    assert mm.write(b) == 0 and mm.status["RssAnon"] == 8


def test_R67_mremap_errors():
    mm = MM()
    a = mm.mmap(2 * MB)
    with pytest.raises(SyscallError) as info:
        mm.mremap(a + 1, PAGE, PAGE)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(SyscallError) as info:
        mm.mremap(a, 4 * MB, 8 * MB, maymove=True)
    assert info.value.errno == errno.EFAULT
    with pytest.raises(SyscallError) as info:
        mm.mremap(a, PAGE, PAGE, new_addr=a + MB)
    assert info.value.errno == errno.EINVAL
    mm.mmap(PAGE, addr=a + 2 * MB, fixed=True)
    with pytest.raises(SyscallError) as info:
        mm.mremap(a, 2 * MB, 4 * MB)
    assert info.value.errno == errno.ENOMEM


# ---- section 12: khugepaged -------------------------------------------------------------------

def test_R68_khugepaged_collapses_a_registered_range_and_counts():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 2 * MB, "hugepage")
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) == PS.THP).all()
    assert mm.khugepaged == {"pages_collapsed": 1, "full_scans": 1}
    assert mm.vmstat["thp_collapse_alloc"] == 1


def test_R68_a_scan_covers_pages_to_scan_slots_and_resumes():
    mm = MM(Config(khugepaged_pages_to_scan=512))
    a = mm.mmap(4 * MB)
    for i in (0, 512):
        mm.write(a + i * PAGE)
    mm.madvise(a, 4 * MB, "hugepage")
    mm.khugepaged_scan()
    assert states(mm, a, 4 * MB).tolist().count(PS.THP) == 512
    mm.khugepaged_scan()
    assert (states(mm, a, 4 * MB) == PS.THP).all()


def test_R68_khugepaged_only_scans_vmas_thp_is_enabled_for():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    b = hp_mapping(mm)
    mm.read(b)                                   # registers the mm
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) != PS.THP).all()       # thp=madvise and a is not VM_HUGEPAGE


def test_R69_max_ptes_none_limits_what_khugepaged_collapses():
    mm = MM(Config(khugepaged_max_ptes_none=510))
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 2 * MB, "hugepage")
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) != PS.THP).all() and mm.vmstat["thp_scan_exceed_none_pte"] == 1
    mm.write(a + PAGE)
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) == PS.THP).all()


def test_R69_max_ptes_shared_limits_collapse_after_fork():
    mm = MM(Config(khugepaged_max_ptes_shared=1))
    a = mm.mmap(2 * MB)
    mm.access(a + PAGE * np.arange(3, dtype=np.uint64), 1)
    mm.madvise(a, 2 * MB, "hugepage")
    child = mm.fork()
    mm.khugepaged_scan(full_scans=1)
    assert mm.vmstat["thp_scan_exceed_share_pte"] >= 1 and (states(mm, a) != PS.THP).all()
    child.close()
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) == PS.THP).all()


def test_R69_khugepaged_needs_a_young_pte():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 2 * MB, "cold")                # clears the accessed bit
    mm.madvise(a, 2 * MB, "hugepage")
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) != PS.THP).all()
    mm.read(a)
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) == PS.THP).all()


def test_R70_a_pte_mapped_thp_collapses_into_a_new_folio():
    mm, a = thp_with_one_written_page()
    mm.mprotect(a + 256 * PAGE, PAGE, "r")
    mm.mprotect(a + 256 * PAGE, PAGE, "rw")
    old = mm.pagemap(a, PAGE)[0][0] & ((1 << 55) - 1)
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) == PS.THP).all()
    assert mm.pagemap(a, PAGE)[0][0] & ((1 << 55) - 1) != old
    assert mm.mthp_stats[2048]["nr_anon"] == 1


def test_R71_a_vma_only_ever_read_is_never_scanned():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.access(a + PAGE * np.arange(512, dtype=np.uint64), 0)
    mm.madvise(a, 2 * MB, "hugepage")
    mm.khugepaged_scan(full_scans=3)
    assert (states(mm, a) == PS.ZERO).all() and mm.vmstat["thp_scan_exceed_none_pte"] == 0


def test_R73_zeropage_ptes_count_as_none():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    mm.madvise(a + 256 * PAGE, PAGE, "dontneed")
    mm.khugepaged_scan(full_scans=1)
    assert mm.vmstat["thp_scan_exceed_none_pte"] == 1
    mm.write(a)
    mm.khugepaged_scan(full_scans=1)
    assert (states(mm, a) == PS.THP).all()


# ---- section 13: fork ---------------------------------------------------------------------------

def test_R74_a_vma_without_anon_vma_is_not_copied():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.read(a)
    child = mm.fork()
    assert states(child, a)[0] == PS.NONE and child.status["VmPTE"] == 0
    assert child.maps() == mm.maps()


def test_R75_small_pages_are_shared_write_protected_and_not_exclusive():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.read(a + PAGE)
    child = mm.fork()
    pm, count, flags = child.pagemap(a, 2 * PAGE)
    assert count[0] == 2 and not pm[0] >> 56 & 1 and not flags[0] >> 34 & 1
    assert states(child, a, 2 * PAGE).tolist() == [PS.ANON, PS.ZERO]
    assert child.status["RssAnon"] == 4 and child.rusage["min_flt"] == 0
    assert mm.smaps(a)["Shared_Dirty"] == 4 and mm.smaps(a)["Pss"] == 2
    assert mm.write(a) == 1 and child.write(a) == 1    # the copy, then reuse of the last mapping
    assert mm.status["RssAnon"] == 4 and mm._machine.nr_free_pages == child._machine.nr_free_pages


def test_R75_a_page_the_child_unmaps_stays_mapped_in_the_parent():
    mm = MM()
    a = hp_mapping(mm)
    mm.write(a)
    child = mm.fork()
    child.write(a + PAGE)
    child.madvise(a + 2 * PAGE, PAGE, "dontneed")
    child.drop_caches(2)                          # not partially mapped: the parent maps it all
    assert (states(mm, a) == PS.THP).all() and mm.vmstat["thp_deferred_split_page"] == 0


def test_R76_a_thp_is_shared_by_pmd_and_counted_once():
    mm, a = thp_with_one_written_page()
    before = counters(mm)
    child = mm.fork()
    assert (states(child, a) == PS.THP).all()
    assert delta(before, counters(mm)) == {"nr_page_table_pages": 3}   # the child's PUD, PMD, deposit
    assert child.smaps(a)["AnonHugePages"] == 2048 and child.smaps(a)["Shared_Dirty"] == 2048


def test_R76_the_child_maps_the_huge_zeropage_and_holds_it():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    child = mm.fork()
    assert (states(child, a) == PS.HUGE_ZERO).all()
    mm.close()
    child.drop_caches(2)
    assert child._machine.huge_zero_pfn >= 0
    assert child.write(a) == 1 and (states(child, a) == PS.THP).all()


def test_R78_the_first_writer_splits_its_own_pmd_and_copies_4K():
    mm, a = thp_with_one_written_page()
    child = mm.fork()
    before = counters(mm)
    assert mm.write(a + PAGE) == 1
    assert states(mm, a, 3 * PAGE).tolist() == [PS.LARGE, PS.ANON, PS.LARGE]
    assert (states(child, a) == PS.THP).all()
    assert delta(before, counters(mm)) == {"thp_split_pmd": 1, "nr_anon_pages": 1, "pgfault": 1}
    s = mm.smaps(a)
    assert (s["Private_Dirty"], s["Shared_Dirty"], s["AnonHugePages"]) == (4, 2044, 0)


def test_R78_after_the_other_process_exits_the_thp_is_reused_by_pmd():
    mm, a = thp_with_one_written_page()
    child = mm.fork()
    child.write(a + PAGE)
    child.close()
    before = counters(mm)
    assert mm.write(a + PAGE) == 1
    assert (states(mm, a) == PS.THP).all() and counters(mm)["thp_split_pmd"] == before["thp_split_pmd"]


def test_R40_a_pte_mapped_thp_mapped_by_this_process_only_is_reused_from_6_15():
    for kernel, state in (("6.18", PS.LARGE), ("6.12", PS.ANON)):
        mm, a = thp_with_one_written_page(MM(Config.for_kernel(kernel)))
        mm.mprotect(a + 256 * PAGE, PAGE, "r")
        mm.mprotect(a + 256 * PAGE, PAGE, "rw")
        child = mm.fork()
        child.close()
        assert mm.write(a + PAGE) == 1
        assert states(mm, a + PAGE, PAGE)[0] == state, kernel


# ---- section 14: population by get_user_pages -------------------------------------------------

def test_R79_populate_write_allocates_without_writing_data():
    mm = MM()
    a = hp_mapping(mm)
    mm.madvise(a, 2 * MB, "populate_write")
    mm.madvise(a, MB, "free")                    # a folio split: every page is still zero
    assert (states(mm, a) == PS.ZERO).all()


def test_R74_dontfork_vmas_are_absent_in_the_child_and_wipeonfork_ones_empty():
    mm = MM()
    keep, gone, wiped = mm.mmap(2 * MB), mm.mmap(2 * MB), mm.mmap(2 * MB)
    for a in (keep, gone, wiped):
        mm.write(a)
    mm.madvise(gone, 2 * MB, "dontfork")
    mm.madvise(wiped, 2 * MB, "wipeonfork")
    assert mm.smaps(gone)["VmFlags"].split()[-2:] == ["dc", "ac"]
    assert mm.smaps(wiped)["VmFlags"].endswith("ac wf")
    child = mm.fork()
    starts = [s for s, _, _, _ in child.maps()]
    assert gone not in starts and keep in starts and wiped in starts
    assert states(child, keep)[0] == PS.ANON and states(child, wiped)[0] == PS.NONE
    assert child.read(wiped) == 1 and states(child, wiped)[0] == PS.ZERO
    assert child.status["RssAnon"] == 4


def test_R74_dofork_and_keeponfork_undo_them_and_the_vmas_merge_back():
    mm = MM()
    a = mm.mmap(4 * MB)
    mm.madvise(a + 2 * MB, PAGE, "dontfork")
    assert len(mm.maps()) == 3
    mm.madvise(a + 2 * MB, PAGE, "dofork")
    assert len(mm.maps()) == 1
    mm.madvise(a, PAGE, "wipeonfork")
    mm.madvise(a, PAGE, "keeponfork")
    mm.madvise(a, MB, "random")
    assert mm.smaps(a)["VmFlags"] == "rd wr mr mw me rr ac"
    mm.madvise(a, MB, "sequential")
    assert mm.smaps(a)["VmFlags"] == "rd wr mr mw me sr ac"
    mm.madvise(a, MB, "normal")
    assert len(mm.maps()) == 1


def test_R59_dontneed_locked_zaps_like_dontneed():
    mm, a = thp_with_one_written_page()
    mm.madvise(a, 2 * MB, "dontneed_locked")
    assert (states(mm, a) == PS.NONE).all()


def test_a_forked_child_shares_its_parents_machine_and_lock():
    mm = MM()
    child = mm.fork()
    assert child._machine is mm._machine and child._lock is mm._lock
    assert child.config == mm.config


def test_R64_collapse_stops_at_a_block_with_a_none_pmd():
    mm = MM()
    a = mm.mmap(6 * MB)
    mm.write(a)
    mm.write(a + 4 * MB)                          # [2M, 4M) has no PTE table: PMD none
    with pytest.raises(SyscallError) as info:
        mm.madvise(a, 6 * MB, "collapse")
    assert info.value.errno == errno.EINVAL
    assert states(mm, a, PAGE)[0] == PS.THP and states(mm, a + 4 * MB, PAGE)[0] == PS.ANON


def test_R64_a_collapsed_thp_is_queued_for_the_underused_shrinker():
    mm = MM(Config(khugepaged_max_ptes_none=100))
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.madvise(a, 2 * MB, "collapse")
    mm.drop_caches(2)
    assert mm.vmstat["thp_underused_split_page"] == 1
    assert (states(mm, a) == runs((PS.ANON, 1), (PS.ZERO, 511))).all()


def test_R18_mmap_of_an_anonymous_vma_does_not_register_with_khugepaged():
    mm = MM(Config(thp="always"))
    mm.mmap(4 * MB)
    assert not mm._core.khugepaged_seq


def test_R67_mremap_of_a_whole_gigabyte_moves_its_pmd_table():
    mm = MM()
    src, dst = 1 << 40, 2 << 40
    mm.mmap(1 << 30, addr=src, fixed=True)
    mm.write(src)
    tables = mm.page_tables
    assert mm.mremap(src, 1 << 30, 1 << 30, maymove=True, new_addr=dst) == dst
    assert mm.page_tables == tables and states(mm, dst, PAGE)[0] == PS.ANON
    assert mm.write(dst) == 0


# ---- mlock (R79, and the madvise calls an mlocked mapping refuses) -----------------------------

def test_R79_mlock_of_a_hp_mapping_takes_one_fault_for_a_thp():      # S78
    mm = MM()
    a = hp_mapping(mm)
    mm.mlock(a, 2 * MB)
    assert (states(mm, a) == PS.THP).all() and mm.rusage["min_flt"] == 1
    s = mm.smaps(a)
    assert s["Locked"] == 2048 and "lo" in s["VmFlags"].split()


def test_R52_a_thp_locked_in_part_is_not_mlocked_and_its_split_keeps_only_the_locked_pages():
    # host (random scenario R3-4): an mlock of 16 pages of a THP splits its PMD; the folio is
    # not mlocked (the locked range does not hold all of it), so the underused shrinker splits
    # it, and try_to_map_unused_to_zeropage remaps the zero subpages outside the locked VMA
    mm = MM(Config(khugepaged_max_ptes_none=255))
    a = hp_mapping(mm)
    mm.atomic(a + 264 * PAGE)
    mm.mlock(a + 37 * PAGE, 16 * PAGE)
    mm.drop_caches(2)
    want = [PS.ZERO] * 512
    want[37:53] = [PS.ANON] * 16
    want[264] = PS.ANON
    assert states(mm, a).tolist() == want
    assert mm.vmstat["thp_underused_split_page"] == 1


def test_R54_a_thp_locked_whole_is_mlocked_though_its_vma_is_split():
    # both halves VM_LOCKED: the folio stays mlocked and the underused shrinker leaves it alone
    mm = MM(Config(khugepaged_max_ptes_none=255))
    a = hp_mapping(mm)
    mm.write(a)
    mm.mlock(a, 2 * MB)
    mm.mprotect(a, MB, "r")                   # splits the VMA and the PMD mapping
    mm.drop_caches(2)
    assert mm.vmstat["thp_underused_split_page"] == 0
    assert not (states(mm, a) == PS.ZERO).any()


def test_R79_mlock_writes_writable_pages_and_reads_read_only_ones():
    mm = MM()
    rw, ro = mm.mmap(2 * MB), mm.mmap(2 * MB, "r")
    mm.mlock(rw, 2 * MB)
    mm.mlock(ro, 2 * MB)
    assert (states(mm, rw) == PS.ANON).all() and mm.smaps(rw)["Locked"] == 2048
    assert (states(mm, ro) == PS.ZERO).all() and mm.smaps(ro)["Locked"] == 0
    assert mm.smaps(rw)["VmFlags"] == "rd wr mr mw me lo ac"     # as the 6.18 host shows it
    assert mm.rusage["min_flt"] == 1024


def test_R79_mlock_of_prot_none_or_a_hole_is_enomem():
    mm = MM()
    a = mm.mmap(2 * MB, "none")
    with pytest.raises(SyscallError) as info:
        mm.mlock(a, 2 * MB)
    assert info.value.errno == errno.ENOMEM and "lo" in mm.smaps(a)["VmFlags"]
    b = mm.mmap(6 * MB)
    mm.munmap(b + 2 * MB, 2 * MB)
    with pytest.raises(SyscallError) as info:
        mm.mlock(b, 6 * MB)
    assert info.value.errno == errno.ENOMEM


def test_R79_mlock_splits_the_vma_and_munlock_merges_it_back():
    mm = MM()
    a = mm.mmap(4 * MB)
    mm.mlock(a + MB, MB)
    assert len(mm.maps()) == 3 and mm.smaps(a + MB)["Locked"] == 1024
    mm.munlock(a + MB, MB)
    assert len(mm.maps()) == 1 and mm.smaps(a)["Locked"] == 0 and mm.smaps(a)["Rss"] == 1024


@pytest.mark.parametrize("advice", ["dontneed", "free", "cold", "pageout"])
def test_R59_an_mlocked_mapping_refuses_dontneed_free_cold_and_pageout(advice):
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.mlock(a, PAGE)
    with pytest.raises(SyscallError) as info:
        mm.madvise(a, PAGE, advice)
    assert info.value.errno == errno.EINVAL and states(mm, a, PAGE)[0] == PS.ANON
    mm.madvise(a, PAGE, "dontneed_locked")
    assert states(mm, a, PAGE)[0] == PS.NONE


def test_R74_a_forked_child_does_not_inherit_mlock():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.mlock(a, 2 * MB)
    child = mm.fork()
    assert child.smaps(a)["Locked"] == 0 and "lo" not in child.smaps(a)["VmFlags"]
    assert child.smaps(a)["Rss"] == 2048


def test_R67_mremap_growing_an_mlocked_mapping_faults_in_the_new_part():
    mm = MM()
    a = mm.mmap(PAGE)
    mm.mlock(a, PAGE)
    b = mm.mremap(a, PAGE, 3 * PAGE, maymove=True)
    assert (states(mm, b, 3 * PAGE) == PS.ANON).all()


def test_R52_an_mlocked_thp_keeps_its_zero_subpages_mapped_when_split():
    mm, a = thp_with_one_written_page()
    mm.mlock(a, 2 * MB)
    mm.munmap(a + 256 * PAGE, PAGE)             # partially mapped, still mlocked
    mm.drop_caches(2)
    assert mm.vmstat["thp_split_page"] == 1
    assert (states(mm, a, 256 * PAGE) == PS.ANON).all() and mm.status["RssAnon"] == 2044


def test_R54_the_underused_shrinker_leaves_an_mlocked_thp_alone():
    mm, a = thp_with_one_written_page(MM(Config(khugepaged_max_ptes_none=100)))
    mm.mlock(a, 2 * MB)
    mm.drop_caches(2)
    assert (states(mm, a) == PS.THP).all() and mm.vmstat["thp_underused_split_page"] == 0
    mm.munlock(a, 2 * MB)
    mm.drop_caches(2)                            # taken off the queue the first time
    assert (states(mm, a) == PS.THP).all()
