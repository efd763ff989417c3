"""Physical memory and its limits (spec R23, R38, R42, R64; issue 5): the buddy allocator,
fragmentation, direct compaction as defrag allows it, and the memory cgroup."""
import numpy as np
import pytest
from helpers import counters, delta, hp_mapping

from mmemu import MM, Config, OutOfMemory, PageState, SyscallError

MB = 1 << 20
PAGE = 4096
PS = PageState


# ---- the buddy allocator ---------------------------------------------------------------------

def test_buddyinfo_shows_free_ram_as_maximal_aligned_blocks():
    mm = MM(Config(memory=64 * MB))
    info = mm.buddyinfo()
    assert info.dtype == np.int64 and info.shape == (11,)
    # frames 512..16895: one order-9 block (512), then 4 MiB blocks
    assert (info * (1 << np.arange(11))).sum() == 64 * MB // PAGE
    assert info[9] == 2 and info[10] == 15 and info[:9].sum() == 0     # 512..1023, 16384..16895


def test_a_4k_fault_splits_the_smallest_block_and_a_free_merges_it_back():
    mm = MM(Config(memory=64 * MB))
    before = mm.buddyinfo().copy()
    a = mm.mmap(PAGE)
    mm.write(a)
    after = mm.buddyinfo()
    assert after[9] == before[9] - 1 and (after[:9] == 1).all()      # 512 = 1+1+2+...+256 + the page
    mm.munmap(a, PAGE)
    assert (mm.buddyinfo() == before).all()


# ---- fragmentation and THP fallback ---------------------------------------------------------------

def test_fragmented_memory_makes_a_thp_fault_fall_back_while_4k_pages_still_succeed():
    mm = MM(Config(memory=64 * MB, defrag="never"))
    held = mm.fragment_memory(free_fraction=0.5)
    assert held > 0 and mm.buddyinfo()[9:].sum() == 0
    a = hp_mapping(mm)
    before = counters(mm)
    assert mm.write(a) == 1
    d = delta(before, counters(mm))
    assert d["thp_fault_fallback"] == 1 and d["2048kB/anon_fault_fallback"] == 1
    assert "thp_fault_alloc" not in d and "compact_stall" not in d          # defrag=never
    assert mm.page_states(a, PAGE)[0] == PS.ANON
    mm.release_fragmentation()
    b = hp_mapping(mm)
    mm.write(b)
    assert mm.page_states(b, PAGE)[0] == PS.THP


def test_R23_defrag_decides_whether_a_thp_fault_compacts_movable_fragmentation():
    outcomes = {}
    for defrag in ("always", "madvise", "defer", "never"):
        mm = MM(Config(memory=64 * MB, defrag=defrag))
        mm.fragment_memory(free_fraction=0.9, movable=True)
        a = hp_mapping(mm)
        mm.write(a)
        outcomes[defrag] = (mm.page_states(a, PAGE)[0], mm.vmstat["compact_stall"],
                            mm.vmstat["compact_success"], mm.vmstat["pgmigrate_success"] > 0)
    assert outcomes["always"] == (PS.THP, 1, 1, True)
    assert outcomes["madvise"] == (PS.THP, 1, 1, True)          # an MADV_HUGEPAGE VMA
    assert outcomes["defer"] == (PS.ANON, 0, 0, False)
    assert outcomes["never"] == (PS.ANON, 0, 0, False)


def test_R23_with_defrag_madvise_a_vma_without_hugepage_advice_does_not_compact():
    mm = MM(Config(thp="always", memory=64 * MB))
    mm.fragment_memory(free_fraction=0.9, movable=True)
    a = mm.mmap(2 * MB)
    mm.write(a)
    assert mm.vmstat["compact_stall"] == 0 and mm.page_states(a, PAGE)[0] == PS.ANON


def test_compaction_migrates_mapped_pages_and_their_mappings_follow_in_every_process():
    mm = MM(Config(memory=8 * MB, defrag="always"))
    small = mm.mmap(2 * MB)
    mm.access(np.arange(small, small + 2 * MB, 8 * PAGE, dtype=np.uint64), 1)   # 64 pages
    child = mm.fork()
    mm.fragment_memory(free_fraction=1.0, movable=False)          # pin every other free 2 MiB
    a = hp_mapping(mm)
    before = counters(mm)
    mm.write(a)
    d = delta(before, counters(mm))
    assert d["compact_stall"] == 1 and d["compact_success"] == 1 and d["pgmigrate_success"] == 64
    assert mm.page_states(a, PAGE)[0] == PS.THP
    for proc in (mm, child):                      # the moved pages are still mapped, shared
        states = proc.page_states(small, 2 * MB)
        assert (states[::8] == PS.ANON).all() and (states != PS.ANON).sum() == 512 - 64
    assert mm.write(small) == 1 and child.write(small + 8 * PAGE) == 1      # still COW-shared
    child.close()


def test_compaction_moves_pages_out_of_a_pageblock_no_foreign_page_pins():
    mm = MM(Config(memory=64 * MB, defrag="always"))
    a = mm.mmap(2 * MB)
    mm.write(a)                                   # breaks the lowest free 2 MiB block
    mm.fragment_memory(free_fraction=0.99)        # pins every wholly free one
    b = hp_mapping(mm)
    mm.write(b)
    assert mm.vmstat["compact_success"] == 1 and mm.vmstat["pgmigrate_success"] == 1
    assert mm.page_states(b, PAGE)[0] == PS.THP and mm.page_states(a, PAGE)[0] == PS.ANON


def test_compaction_fails_when_every_pageblock_holds_an_unmovable_page():
    mm = MM(Config(memory=64 * MB, defrag="always"))
    mm.fragment_memory(free_fraction=0.99)
    a = hp_mapping(mm)
    mm.write(a)
    assert mm.vmstat["compact_stall"] == 1 and mm.vmstat["compact_fail"] == 1
    assert mm.page_states(a, PAGE)[0] == PS.ANON


def test_failed_compaction_is_deferred_for_the_next_tries():
    mm = MM(Config(memory=64 * MB, defrag="always"))
    mm.fragment_memory(free_fraction=0.99)
    a = hp_mapping(mm, 16 * MB)
    mm.access(np.arange(a, a + 16 * MB, 2 * MB, dtype=np.uint64), 1)      # 8 THP faults
    # compaction_deferred: 1 try, skip 1, try, skip 3, try: 3 stalls in 8 faults
    assert mm.vmstat["compact_stall"] == 3 and mm.vmstat["thp_fault_fallback"] == 8


def test_a_collapse_that_cannot_get_a_thp_fails_with_enomem():
    mm = MM(Config(memory=64 * MB))
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.write(a + PAGE)                            # 4K pages in a PTE table
    mm.madvise(a, 2 * MB, "hugepage")
    mm.fragment_memory(free_fraction=0.0, order=0)          # every free page held, unmovable
    assert mm.buddyinfo().sum() == 0
    with pytest.raises(SyscallError) as exc:
        mm.madvise(a, 2 * MB, "collapse")
    assert exc.value.errno == 12 and mm.vmstat["thp_collapse_alloc_failed"] == 1


def test_fragment_memory_checks_its_arguments():
    mm = MM()
    for bad in (-0.1, 1.5, "x", True):
        with pytest.raises((TypeError, ValueError)):
            mm.fragment_memory(free_fraction=bad)
    with pytest.raises(ValueError):
        mm.fragment_memory(order=11)
    with pytest.raises(TypeError):
        mm.fragment_memory(movable=1)


# ---- the memory cgroup --------------------------------------------------------------------------

def test_memory_current_counts_anonymous_pages_and_page_tables_not_the_zeropages():
    mm = MM()
    a = hp_mapping(mm, 4 * MB)
    assert mm.memory_current == 0
    mm.read(a)                                    # HZP: only the deposited table is charged
    assert mm.memory_current == 3 * PAGE          # PUD, PMD tables and the deposit
    mm.write(a + 2 * MB)
    assert mm.memory_current == (3 + 1 + 512) * PAGE
    mm.munmap(a, 4 * MB)
    assert mm.memory_current == 0                 # nothing else mapped: every table is freed


def test_R38_a_thp_that_cannot_be_charged_falls_back_to_4k_with_the_charge_counters():
    mm = MM()
    a = hp_mapping(mm)
    mm.memory_max = mm.memory_current + 1 * MB
    before = counters(mm)
    assert mm.write(a) == 1
    d = delta(before, counters(mm))
    assert d["thp_fault_fallback"] == 1 and d["thp_fault_fallback_charge"] == 1
    assert d["2048kB/anon_fault_fallback"] == 1 and d["2048kB/anon_fault_fallback_charge"] == 1
    assert mm.page_states(a, PAGE)[0] == PS.ANON


def test_R36_an_mthp_that_cannot_be_charged_falls_back_order_by_order():
    mm = MM(Config(hugepages={16: "always", 64: "always"}))
    a = mm.mmap(2 * MB)
    mm.write(mm.mmap(PAGE))                       # the page tables are in place
    mm.memory_max = mm.memory_current + 2 * PAGE + 8 * PAGE     # the PTE table, then 8 pages
    mm.write(a)
    stats = mm.mthp_stats
    assert stats[64]["anon_fault_fallback_charge"] == 1 and stats[64]["anon_fault_fallback"] == 1
    assert stats[16]["anon_fault_alloc"] == 1


def test_a_4k_charge_failure_is_out_of_memory_and_maps_nothing():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.memory_max = mm.memory_current
    states = mm.page_states(a, 2 * MB).copy()
    with pytest.raises(OutOfMemory):
        mm.write(a + PAGE)
    assert (mm.page_states(a, 2 * MB) == states).all() and mm.status["RssAnon"] == 4
    mm.read(a + PAGE)                             # a zeropage costs nothing
    mm.memory_max = None
    assert mm.write(a + 2 * PAGE) == 1


def test_memory_max_below_usage_is_refused_and_fork_children_share_the_cgroup():
    mm = MM(memory_max=64 * MB)
    a = mm.mmap(2 * MB)
    mm.write(a)
    with pytest.raises(ValueError, match="below memory_current"):
        mm.memory_max = PAGE
    assert mm.memory_max == 64 * MB
    child = mm.fork()
    assert child.memory_max == 64 * MB and child.memory_current == mm.memory_current
    child.write(a)                                # the COW copy is charged to the same cgroup
    assert mm.memory_current == child.memory_current
    child.close()
    with pytest.raises(TypeError):
        mm.memory_max = "1G"
    with pytest.raises(ValueError):
        MM(memory_max=-1)
