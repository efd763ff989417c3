"""One test (or a few) per rule of spec sections 1-8, named after the rule it pins down."""
import errno

import numpy as np
import pytest
from helpers import hp_mapping

from mmemu import (
    ATOMIC,
    MM,
    READ,
    WRITE,
    Config,
    OutOfMemory,
    PageState,
    SegmentationFault,
    SyscallError,
)

KB, MB, GB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4096
PS = PageState


# ---- section 1: counters -------------------------------------------------------------------

def test_R1_every_handled_fault_counts_once_in_pgfault_and_min_flt():
    mm = MM()
    a = mm.mmap(2 * MB)
    before = mm.vmstat
    assert [mm.read(a), mm.write(a), mm.write(a + PAGE)] == [1, 1, 1]
    assert mm.vmstat["pgfault"] - before["pgfault"] == 3
    assert mm.rusage == {"min_flt": 3, "maj_flt": 0}


def test_R1_a_fault_rejected_before_the_handler_counts_nothing():
    mm = MM()
    a = mm.mmap(2 * MB, "r")
    with pytest.raises(SegmentationFault) as info:
        mm.write(a)
    assert info.value.address == a
    with pytest.raises(SegmentationFault):
        mm.read(a + 4 * MB)            # no VMA
    assert mm.vmstat["pgfault"] == 0 and mm.rusage["min_flt"] == 0


def test_R1_populate_faults_count_in_pgfault_and_min_flt():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.madvise(a, 2 * MB, "populate_write")
    assert mm.rusage["min_flt"] == 512 and mm.vmstat["pgfault"] == 512


def test_R2_a_thp_fault_maps_2M_and_counts_one():
    mm = MM()
    a = hp_mapping(mm)
    assert mm.write(a + 100 * PAGE) == 1
    assert mm.vmstat["pgfault"] == 1
    assert (mm.page_states(a, 2 * MB) == PS.THP).all()


def test_R2_writing_a_present_writable_page_does_not_fault():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    assert mm.write(a + 8) == 0 and mm.read(a + 16) == 0 and mm.atomic(a + 24) == 0


def test_R3_anonymous_faults_are_never_major():
    mm = MM(Config(thp="always"))
    a = mm.mmap(8 * MB)
    mm.access(a + np.arange(0, 8 * MB, PAGE, dtype=np.uint64), READ)
    mm.access(a + np.arange(0, 8 * MB, PAGE, dtype=np.uint64), WRITE)
    assert mm.vmstat["pgmajfault"] == 0 and mm.rusage["maj_flt"] == 0


def test_R4_zeropage_and_huge_zeropage_never_count_in_rss():
    mm = MM()
    a = mm.mmap(2 * MB)
    b = hp_mapping(mm)
    mm.madvise(a, 2 * MB, "populate_read")
    mm.read(b)
    for addr in (a, b):
        s = mm.smaps(addr)
        assert (s["Rss"], s["Anonymous"], s["AnonHugePages"]) == (0, 0, 0)
    assert (mm.page_states(a, 2 * MB) == PS.ZERO).all()
    assert (mm.page_states(b, 2 * MB) == PS.HUGE_ZERO).all()


def test_R4_a_pmd_mapped_thp_adds_2048kB_to_rss_anonymous_and_anonhugepages():
    mm = MM()
    a = hp_mapping(mm)
    mm.write(a)
    s = mm.smaps(a)
    assert (s["Rss"], s["Anonymous"], s["AnonHugePages"], s["Private_Dirty"]) == (2048,) * 4
    assert s["Pss"] == 2048 and s["Referenced"] == 2048


def test_R4_smaps_has_the_kernel_field_names_in_order():
    mm = MM()
    a = mm.mmap(PAGE)
    assert list(mm.smaps(a)) == [
        "Size", "KernelPageSize", "MMUPageSize", "Rss", "Pss", "Pss_Dirty", "Shared_Clean",
        "Shared_Dirty", "Private_Clean", "Private_Dirty", "Referenced", "Anonymous", "KSM",
        "LazyFree", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb",
        "Private_Hugetlb", "Swap", "SwapPss", "Locked", "THPeligible", "VmFlags"]


def test_R4_a_page_faulted_into_a_read_only_vma_without_zeropage_is_clean():
    mm = MM(Config(zero_page=False))
    a = mm.mmap(2 * MB, "r")
    mm.read(a)
    s = mm.smaps(a)
    assert (s["Rss"], s["Private_Clean"], s["Private_Dirty"]) == (4, 4, 0)


def test_R5_rssanon_and_vmpte_follow_faults():
    mm = MM()
    a = hp_mapping(mm, 4 * MB)
    assert mm.status == {"VmRSS": 0, "RssAnon": 0, "VmPTE": 0}
    mm.write(a)                                   # PUD + PMD tables + deposit
    assert mm.status["RssAnon"] == 2048 and mm.status["VmPTE"] == 12
    mm.madvise(a + 2 * MB, 2 * MB, "nohugepage")
    mm.write(a + 2 * MB)                          # a PTE table
    assert mm.status["RssAnon"] == 2052 and mm.status["VmPTE"] == 16
    assert mm.vmstat["nr_page_table_pages"] == 4


def test_R6_nr_anon_transparent_hugepages_counts_pmd_mapped_thps():
    mm = MM()
    a = hp_mapping(mm, 8 * MB)
    for i in range(4):
        mm.write(a + i * 2 * MB)
    assert mm.vmstat["nr_anon_transparent_hugepages"] == 4
    assert mm.vmstat["nr_anon_pages"] == 4 * 512
    mm.munmap(a, 4 * MB)
    assert mm.vmstat["nr_anon_transparent_hugepages"] == 2
    assert mm.mthp_stats[2048]["nr_anon"] == 2


def test_R7_thp_zero_page_alloc_counts_the_first_allocation_only():
    mm = MM()
    for _ in range(3):
        mm.read(hp_mapping(mm))
    assert mm.vmstat["thp_zero_page_alloc"] == 1


def test_R7_thp_fault_fallback_when_no_2M_block_is_free():
    mm = MM(Config(memory=4 * MB))
    a = hp_mapping(mm, 2 * MB)
    b = mm.mmap(4 * KB)
    mm.write(b)                                   # breaks one of the two blocks
    mm.write(a)                                   # takes the other as a THP
    c = hp_mapping(mm, 2 * MB)
    assert mm.write(c) == 1                       # no block left: 4K fallback
    assert mm.page_states(c, 2 * PAGE).tolist() == [PS.ANON, PS.NONE]
    vm = mm.vmstat
    assert (vm["thp_fault_alloc"], vm["thp_fault_fallback"]) == (1, 1)
    assert mm.mthp_stats[2048]["anon_fault_fallback"] == 1
    assert vm["thp_fault_fallback_charge"] == 0


def test_R7_huge_zeropage_allocation_failure_falls_back_to_the_4K_zeropage():
    mm = MM(Config(memory=2 * MB))
    b = mm.mmap(PAGE)
    mm.write(b)                                   # the only block is now partly used
    a = hp_mapping(mm)
    assert mm.read(a) == 1
    assert mm.page_states(a, 2 * PAGE).tolist() == [PS.ZERO, PS.NONE]
    vm = mm.vmstat
    assert vm["thp_zero_page_alloc_failed"] == 1 and vm["thp_fault_fallback"] == 1
    assert vm["thp_zero_page_alloc"] == 0


def test_R8_per_size_stats_move_with_thp_fault_alloc():
    mm = MM()
    a = hp_mapping(mm, 4 * MB)
    mm.write(a)
    mm.read(a + 2 * MB)
    mm.write(a + 2 * MB)
    st = mm.mthp_stats[2048]
    assert st["anon_fault_alloc"] == mm.vmstat["thp_fault_alloc"] == 2
    assert st["nr_anon"] == 2


# ---- section 2: page tables -----------------------------------------------------------------

def test_R10_first_fault_in_an_empty_512G_region_costs_pud_pmd_and_pte_tables():
    mm = MM()
    x = 0x500000000000
    mm.mmap(GB, addr=x, fixed=True)
    mm.read(x)
    assert mm.status["VmPTE"] == 12
    mm.read(x + PAGE)
    assert mm.status["VmPTE"] == 12               # same PMD range: +0
    mm.read(x + 2 * MB)
    assert mm.status["VmPTE"] == 16               # new PMD range, same 1 GiB: +4


def test_R10_page_tables_by_kind_add_up_to_vmpte():
    mm = MM()
    a = hp_mapping(mm, 4 * MB)
    mm.read(a)
    mm.madvise(a + 2 * MB, 2 * MB, "nohugepage")
    mm.read(a + 2 * MB)
    assert mm.page_tables == {"pte": 1, "pmd": 1, "pud": 1, "deposited": 1}
    assert sum(mm.page_tables.values()) * 4 == mm.status["VmPTE"]


def test_R11_a_pmd_mapping_deposits_a_table_and_the_hzp_write_keeps_it():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    assert mm.status["VmPTE"] == 12               # PUD + PMD + deposit
    mm.write(a)
    assert mm.status["VmPTE"] == 12               # R41: same deposit
    mm.madvise(a, 2 * MB, "dontneed")
    assert mm.status["VmPTE"] == 8                # zap frees the deposit


def test_R11_splitting_the_huge_zeropage_pmd_turns_the_deposit_into_the_table():
    mm = MM(Config(huge_zero_write="split"))
    a = hp_mapping(mm)
    mm.read(a)
    before = mm.status["VmPTE"]
    mm.write(a)
    assert mm.status["VmPTE"] == before
    assert mm.vmstat["thp_split_pmd"] == 1


def test_R12_munmap_frees_tables_no_vma_covers_any_more():
    mm = MM()
    x = 0x500000000000
    mm.mmap(4 * MB, addr=x, fixed=True)
    mm.write(x)
    mm.write(x + 2 * MB)
    assert mm.status["VmPTE"] == 16
    mm.munmap(x + 2 * MB, 2 * MB)
    assert mm.status["VmPTE"] == 12
    mm.munmap(x, 2 * MB)
    assert mm.status["VmPTE"] == 0                # the whole 512 GiB region is empty again


def test_R12_munmap_keeps_a_table_a_neighbouring_vma_still_uses():
    mm = MM()
    x = 0x500000000000
    mm.mmap(2 * MB, addr=x, fixed=True)
    mm.mmap(2 * MB, "r", addr=x + 2 * MB, fixed=True)
    mm.write(x)
    mm.read(x + 2 * MB)
    assert mm.status["VmPTE"] == 16
    mm.munmap(x + 2 * MB, 2 * MB)
    assert mm.status["VmPTE"] == 12


def test_R12_munmap_of_part_of_a_table_keeps_it_and_frees_the_next():
    mm = MM()
    x = 0x500000000000
    mm.mmap(3 * MB, addr=x, fixed=True)
    mm.write(x + 1 * MB)
    mm.write(x + 2 * MB + PAGE)
    assert mm.status["VmPTE"] == 16
    mm.munmap(x + 1 * MB, 2 * MB)
    assert mm.status["VmPTE"] == 12               # [x, x+2M) still has [x, x+1M) mapped


def test_R13_dontneed_frees_a_fully_covered_empty_pte_table():
    mm = MM()
    a = mm.mmap(4 * MB)
    mm.madvise(a, 2 * MB, "populate_write")
    before = mm.status["VmPTE"]
    mm.madvise(a, 2 * MB, "dontneed")
    assert mm.status["VmPTE"] == before - 4


def test_R13_dontneed_of_part_of_a_table_frees_nothing():
    mm = MM()
    a = mm.mmap(4 * MB)
    mm.madvise(a + 1 * MB, 2 * MB, "populate_write")
    before = mm.status["VmPTE"]
    mm.madvise(a + 1 * MB, 2 * MB, "dontneed")
    assert mm.status["VmPTE"] == before
    assert (mm.page_states(a, 4 * MB) == PS.NONE).all()


def test_R13_before_6_14_dontneed_never_frees_tables():
    mm = MM(Config.for_kernel("6.13"))
    a = mm.mmap(4 * MB)
    mm.madvise(a, 2 * MB, "populate_write")
    before = mm.status["VmPTE"]
    mm.madvise(a, 2 * MB, "dontneed")
    assert mm.status["VmPTE"] == before


def test_R13_dontneed_spanning_two_vmas_frees_no_table_shared_by_them():
    mm = MM()
    x = 0x500000000000
    mm.mmap(1 * MB, addr=x, fixed=True)
    mm.mmap(1 * MB, "r", addr=x + 1 * MB, fixed=True)
    mm.write(x)
    mm.read(x + 1 * MB)
    before = mm.status["VmPTE"]
    mm.madvise(x, 2 * MB, "dontneed")             # each VMA's zap covers only half the table
    assert mm.status["VmPTE"] == before


# ---- section 3: VMAs ----------------------------------------------------------------------

def test_R15_lengths_that_are_2M_multiples_are_placed_2M_aligned():
    mm = MM()
    for length in (2 * MB, 4 * MB, 6 * MB):
        assert mm.mmap(length) % (2 * MB) == 0
    addrs = [mm.mmap(length) for length in (3 * MB, 2100 * KB, 4100 * KB)]
    assert [a % (2 * MB) == 0 for a in addrs] == [False, False, False]


def test_R15_placement_is_top_down_below_mmap_base():
    mm = MM()
    a = mm.mmap(PAGE)
    assert a == 0x7ffff7fff000 - PAGE
    b = mm.mmap(2 * PAGE)
    assert b == a - 2 * PAGE
    assert len(mm.maps()) == 1                    # adjacent anonymous mappings merge
    c = mm.mmap(4 * MB)                           # ends at the 2 MiB boundary below b
    assert c + 4 * MB == b & ~(2 * MB - 1)


def test_R15_kernels_before_6_7_do_not_align_and_6_7_to_6_11_align_any_length_from_2M():
    assert MM(Config.for_kernel("6.6")).mmap(2 * MB) % (2 * MB) != 0
    assert MM(Config.for_kernel("6.8")).mmap(3 * MB) % (2 * MB) == 0
    assert MM(Config.for_kernel("6.12")).mmap(3 * MB) % (2 * MB) != 0


def test_R16_mprotect_splits_a_vma_in_three_and_merges_it_back():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.mprotect(a + PAGE, PAGE, "r")
    assert [m[2] for m in mm.maps()] == ["rw-p", "r--p", "rw-p"]
    mm.mprotect(a + PAGE, PAGE, "rw")
    assert len(mm.maps()) == 1


def test_R16_splitting_a_vma_inside_a_huge_zeropage_pmd_splits_the_pmd():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    mm.mprotect(a + 256 * PAGE, PAGE, "r")        # S25
    assert (mm.page_states(a, 2 * MB) == PS.ZERO).all()
    assert mm.vmstat["thp_split_pmd"] == 1 and len(mm.maps()) == 3


def test_R17_a_4K_zeropage_read_creates_no_anon_vma_but_a_huge_zeropage_read_does():
    # Visible through mprotect: RW->RO drops VM_ACCOUNT ("ac") only from a VMA without anon_vma.
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.read(a)                                     # 4K zeropage
    mm.mprotect(a, 2 * MB, "r")
    assert "ac" not in mm.smaps(a)["VmFlags"].split()
    b = hp_mapping(mm)
    mm.read(b)                                     # huge zeropage
    mm.mprotect(b, 2 * MB, "r")
    assert "ac" in mm.smaps(b)["VmFlags"].split()


def test_R17_a_split_vma_keeps_its_anon_vma_so_the_pieces_merge_back():
    mm = MM()
    x = 0x500000000000
    mm.mmap(2 * MB, addr=x, fixed=True)
    mm.mmap(2 * MB, "r", addr=x + 2 * MB, fixed=True)
    mm.write(x)                                    # anon_vma A on the first VMA
    mm.mprotect(x + 2 * MB, 2 * MB, "rw")          # the second has none: merges with A
    assert len(mm.maps()) == 1
    mm.mprotect(x + MB, 2 * MB, "r")
    assert len(mm.maps()) == 3
    mm.mprotect(x + MB, 2 * MB, "rw")
    assert len(mm.maps()) == 1


def test_R17_anon_vma_lets_a_mprotect_dropped_account_flag_stay():
    # mprotect RW->RO drops VM_ACCOUNT only while the VMA has no anon_vma.
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.mprotect(a, 2 * MB, "r")
    assert mm.smaps(a)["VmFlags"] == "rd mr mw me"
    b = mm.mmap(2 * MB)
    mm.write(b)
    mm.mprotect(b, 2 * MB, "r")
    assert mm.smaps(b)["VmFlags"] == "rd mr mw me ac"


# ---- section 4: THP eligibility ---------------------------------------------------------------

@pytest.mark.parametrize("thp,size_mode,hp,eligible", [
    ("madvise", "inherit", False, False), ("madvise", "inherit", True, True),
    ("always", "inherit", False, True), ("never", "inherit", True, False),
    ("never", "always", False, True), ("never", "madvise", True, True),
    ("always", "never", True, False), ("always", "madvise", False, False),
])
def test_R19_the_per_size_knob_and_top_level_mode_decide_order_9(thp, size_mode, hp, eligible):
    mm = MM(Config(thp=thp, hugepages={2048: size_mode}))
    a = mm.mmap(2 * MB)
    if hp:
        mm.madvise(a, 2 * MB, "hugepage")
    mm.write(a)
    assert (mm.page_states(a, PAGE)[0] == PS.THP) == eligible
    assert mm.smaps(a)["THPeligible"] == int(eligible)


def test_R20_vm_nohugepage_vetoes_even_thp_always():
    mm = MM(Config(thp="always"))
    a = mm.mmap(2 * MB)
    mm.madvise(a, 2 * MB, "nohugepage")
    mm.write(a)
    assert mm.page_states(a, PAGE)[0] == PS.ANON
    assert mm.smaps(a)["THPeligible"] == 0 and "nh" in mm.smaps(a)["VmFlags"]


def test_R20_prctl_thp_disable_vetoes_thp_for_every_vma_and_reads_back():
    mm = MM(Config(thp="always"))
    assert mm.prctl("PR_GET_THP_DISABLE") == 0
    mm.prctl("PR_SET_THP_DISABLE", 1)
    assert mm.prctl("PR_GET_THP_DISABLE") == 1
    a = hp_mapping(mm)
    mm.write(a)
    assert mm.page_states(a, PAGE)[0] == PS.ANON and mm.smaps(a)["THPeligible"] == 0
    mm.prctl(41, 0)
    b = mm.mmap(2 * MB)
    mm.write(b)
    assert mm.page_states(b, PAGE)[0] == PS.THP


def test_R20_prctl_except_advised_keeps_thp_for_madvised_vmas_only():
    mm = MM(Config(thp="always"))
    mm.prctl("PR_SET_THP_DISABLE", 1, 2)
    assert mm.prctl("PR_GET_THP_DISABLE") == 3
    plain, advised = mm.mmap(2 * MB), hp_mapping(mm)
    mm.write(plain)
    mm.write(advised)
    assert mm.page_states(plain, PAGE)[0] == PS.ANON and mm.page_states(advised, PAGE)[0] == PS.THP


def test_R20_prctl_errors_and_except_advised_before_6_18():
    mm = MM()
    for args in ((0, 2), (1, 4), (1, 0, 1)):
        with pytest.raises(SyscallError) as info:
            mm.prctl("PR_SET_THP_DISABLE", *args)
        assert info.value.errno == errno.EINVAL
    with pytest.raises(SyscallError):
        MM(Config.for_kernel("6.12")).prctl("PR_SET_THP_DISABLE", 1, 2)
    with pytest.raises(ValueError, match="option"):
        mm.prctl("PR_SET_SOMETHING")


def test_R21_only_the_aligned_2M_inside_the_vma_gets_a_thp():
    mm = MM()                                       # S50
    x = 0x500000000000 + PAGE
    mm.mmap(4 * MB, addr=x, fixed=True)
    mm.madvise(x, 4 * MB, "hugepage")
    faults = mm.access(x + np.arange(0, 4 * MB, PAGE, dtype=np.uint64), WRITE)
    assert faults.sum() == 513
    states = mm.page_states(x, 4 * MB)
    assert (states[:511] == PS.ANON).all() and (states[511:1023] == PS.THP).all() and states[1023] == PS.ANON


def test_R21_a_1M_vma_is_not_thp_eligible():
    mm = MM()
    a = mm.mmap(1 * MB)
    mm.madvise(a, 1 * MB, "hugepage")
    assert mm.smaps(a)["THPeligible"] == 0


def test_R22_use_zero_page_0_still_maps_the_4K_zeropage_at_pte_level():
    mm = MM(Config(use_zero_page=False))
    a = mm.mmap(2 * MB)
    mm.read(a)
    assert mm.page_states(a, PAGE)[0] == PS.ZERO


def test_R23_defrag_does_not_change_the_path_when_memory_is_plentiful():
    for defrag in ("always", "defer", "defer+madvise", "madvise", "never"):
        mm = MM(Config(defrag=defrag))
        a = hp_mapping(mm)
        mm.write(a)
        assert mm.page_states(a, PAGE)[0] == PS.THP


def test_R24_settings_never_change_existing_mappings():
    mm = MM()
    a = hp_mapping(mm, 4 * MB)
    mm.write(a)
    mm.madvise(a, 4 * MB, "nohugepage")
    assert mm.smaps(a)["AnonHugePages"] == 2048
    mm.write(a + 2 * MB)
    assert mm.page_states(a + 2 * MB, PAGE)[0] == PS.ANON


# ---- section 5: dispatch ----------------------------------------------------------------------

def test_R25_x86_atomics_fault_once_as_a_write():
    mm = MM()
    a = mm.mmap(2 * MB)
    assert mm.atomic(a) == 1
    assert mm.page_states(a, PAGE)[0] == PS.ANON


def test_R25_x86_atomic_on_the_huge_zeropage_range_gives_a_thp_in_one_fault():
    mm = MM()
    a = hp_mapping(mm)
    assert mm.atomic(a) == 1
    assert mm.page_states(a, PAGE)[0] == PS.THP


def test_R25_a_write_to_a_read_only_vma_or_any_access_to_prot_none_is_sigsegv():
    mm = MM()
    a = mm.mmap(2 * MB, "r")
    b = mm.mmap(2 * MB, "none")
    for fn, addr in ((mm.write, a), (mm.atomic, a), (mm.read, b), (mm.write, b)):
        with pytest.raises(SegmentationFault):
            fn(addr)
    assert mm.vmstat["pgfault"] == 0


def test_R25_a_write_only_vma_is_readable():
    mm = MM()
    a = mm.mmap(PAGE, "w")
    assert mm.read(a) == 1


def test_R26_arm64_atomic_faults_read_then_write():
    mm = MM(Config(arch="arm64"))
    a = mm.mmap(2 * MB)
    assert mm.atomic(a) == 2
    assert mm.page_states(a, PAGE)[0] == PS.ANON
    assert mm.atomic(a + PAGE) == 2
    mm.read(a + 2 * PAGE)
    assert mm.atomic(a + 2 * PAGE) == 1            # present read-only: one write fault


def test_R26_arm64_atomic_on_a_read_only_vma_maps_the_zeropage_then_gets_sigsegv():
    mm = MM(Config(arch="arm64"))
    a = mm.mmap(2 * MB, "r")
    with pytest.raises(SegmentationFault):
        mm.atomic(a)
    assert mm.page_states(a, PAGE)[0] == PS.ZERO
    assert mm.vmstat["pgfault"] == 1


def test_R28_once_a_pte_table_exists_faults_there_never_make_a_thp():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.read(a)                                     # PTE table with one ZP
    mm.madvise(a, 2 * MB, "hugepage")
    mm.write(a + PAGE)
    assert mm.page_states(a, 2 * PAGE).tolist() == [PS.ZERO, PS.ANON]
    assert mm.vmstat["thp_fault_alloc"] == 0


def test_R28_a_read_of_a_present_pmd_mapping_does_not_fault():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    assert mm.read(a + MB) == 0


def test_R29_a_write_to_a_present_zeropage_pte_goes_to_do_wp_page():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.read(a)
    assert mm.write(a) == 1
    assert mm.page_states(a, PAGE)[0] == PS.ANON


# ---- sections 6-8: read faults, write faults, write faults on read-only mappings ----------------

def test_R30_a_read_maps_the_zeropage_without_rss_or_anon_vma():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.read(a)
    assert mm.page_states(a, PAGE)[0] == PS.ZERO and mm.status["RssAnon"] == 0


def test_R30_with_zero_pages_forbidden_a_read_allocates_a_writable_page():
    mm = MM(Config(zero_page=False))
    a = mm.mmap(2 * MB)
    assert mm.read(a) == 1
    assert mm.page_states(a, PAGE)[0] == PS.ANON
    assert mm.write(a) == 0                        # already writable and dirty


def test_R30_with_zero_pages_forbidden_a_hp_read_allocates_a_thp():
    mm = MM(Config(zero_page=False))
    a = hp_mapping(mm)
    mm.read(a)
    assert mm.page_states(a, PAGE)[0] == PS.THP and mm.vmstat["thp_zero_page_alloc"] == 0


def test_R31_reading_every_page_of_a_2M_range_faults_512_times():
    mm = MM()
    a = mm.mmap(2 * MB)
    assert mm.access(a + np.arange(0, 2 * MB, PAGE, dtype=np.uint64), READ).sum() == 512


def test_R32_reads_of_any_present_mapping_do_not_fault():
    mm = MM()
    a = hp_mapping(mm, 4 * MB)
    mm.read(a)
    mm.write(a + 2 * MB)
    assert mm.access(a + np.arange(0, 4 * MB, PAGE, dtype=np.uint64), READ).sum() == 0


def test_R33_a_pmd_level_read_maps_the_huge_zeropage():
    mm = MM()
    a = hp_mapping(mm)
    before = mm.status["VmPTE"]
    mm.read(a + 7)
    assert (mm.page_states(a, 2 * MB) == PS.HUGE_ZERO).all()
    assert mm.status["VmPTE"] - before == 12 and mm.status["RssAnon"] == 0


def test_R34_use_zero_page_0_makes_a_pmd_read_allocate_a_thp():
    mm = MM(Config(use_zero_page=False))
    a = hp_mapping(mm)
    mm.madvise(a, 2 * MB, "populate_read")
    assert (mm.page_states(a, 2 * MB) == PS.THP).all()
    assert mm.vmstat["thp_fault_alloc"] == 1 and mm.rusage["min_flt"] == 1


def test_R35_a_write_allocates_one_dirty_exclusive_page():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    s = mm.smaps(a)
    assert (s["Rss"], s["Private_Dirty"], s["Shared_Dirty"]) == (4, 4, 0)


def test_R38_a_pmd_write_allocates_a_thp_with_its_counters():
    mm = MM()
    a = hp_mapping(mm)
    mm.write(a)
    vm, st = mm.vmstat, mm.mthp_stats[2048]
    assert (vm["thp_fault_alloc"], st["anon_fault_alloc"], st["nr_anon"], vm["nr_anon_transparent_hugepages"]) == (1, 1, 1, 1)
    assert mm.status["RssAnon"] == 2048


def test_R39_a_write_to_the_zeropage_allocates_a_4K_page_even_in_a_hp_vma():
    mm = MM(Config(thp="always"))
    a = mm.mmap(2 * MB)
    mm.madvise(a, 2 * MB, "nohugepage")
    mm.read(a)
    mm.madvise(a, 2 * MB, "hugepage")
    assert mm.write(a) == 1
    assert mm.page_states(a, PAGE)[0] == PS.ANON and mm.status["RssAnon"] == 4


def test_R40_an_exclusive_page_made_read_only_and_back_is_writable_without_a_fault():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.mprotect(a, 2 * MB, "r")
    mm.mprotect(a, 2 * MB, "rw")
    assert mm.write(a) == 0


def test_R40_a_zeropage_made_read_only_and_back_still_faults_on_write():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.read(a)
    mm.mprotect(a, 2 * MB, "r")
    mm.mprotect(a, 2 * MB, "rw")
    assert mm.write(a) == 1


def test_R41_a_write_to_the_huge_zeropage_allocates_a_thp_without_an_eligibility_check():
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    mm.madvise(a, 2 * MB, "nohugepage")
    assert mm.write(a + PAGE) == 1
    assert (mm.page_states(a, 2 * MB) == PS.THP).all()
    assert mm.vmstat["thp_split_pmd"] == 0 and mm.vmstat["thp_fault_alloc"] == 1


def test_R42_a_huge_zeropage_write_without_a_free_block_splits_and_maps_4K():
    mm = MM(Config(memory=4 * MB))
    a = hp_mapping(mm)
    mm.read(a)                                     # the HZP takes one block
    b = mm.mmap(PAGE)
    mm.write(b)                                    # the other block is now partly used
    assert mm.write(a + 5 * PAGE) == 1
    states = mm.page_states(a, 2 * MB)
    assert states[5] == PS.ANON and (np.delete(states, 5) == PS.ZERO).all()
    vm = mm.vmstat
    assert (vm["thp_fault_fallback"], vm["thp_split_pmd"], vm["thp_fault_alloc"]) == (1, 1, 0)
    assert mm.mthp_stats[2048]["anon_fault_fallback"] == 1 and mm.smaps(a)["Rss"] == 4


def test_R43_before_6_13_a_huge_zeropage_write_splits_and_each_page_faults():
    mm = MM(Config.for_kernel("6.12"))
    a = hp_mapping(mm)
    mm.read(a)
    assert mm.write(a) == 1 and mm.write(a + PAGE) == 1
    vm = mm.vmstat
    assert (vm["thp_split_pmd"], vm["thp_fault_fallback"], vm["thp_fault_alloc"]) == (1, 0, 0)


def test_R44_a_write_protected_exclusive_thp_is_reused_without_a_split():
    mm = MM()
    a = hp_mapping(mm)
    mm.write(a)
    mm.mprotect(a, 2 * MB, "r")
    mm.mprotect(a, 2 * MB, "rw")
    assert mm.write(a + PAGE) == 0                 # made writable again by mprotect
    assert mm.smaps(a)["AnonHugePages"] == 2048 and mm.vmstat["thp_split_pmd"] == 0


def test_R45_atomics_on_x86_behave_exactly_as_writes():
    trace = np.arange(0, 4 * MB, 12 * KB, dtype=np.uint64)
    results = []
    for op in (WRITE, ATOMIC):
        mm = MM()
        a = hp_mapping(mm, 4 * MB)
        mm.read(a)
        results.append((mm.access(a + trace, op).tolist(), mm.vmstat, mm.page_states(a, 4 * MB).tolist()))
    assert results[0] == results[1]


# ---- out of memory ---------------------------------------------------------------------------

def test_oom_raises_outofmemory_and_leaves_earlier_accesses_in_place():
    mm = MM(Config(memory=2 * MB))
    a = mm.mmap(4 * MB)
    trace = a + np.arange(0, 4 * MB, PAGE, dtype=np.uint64)
    with pytest.raises(OutOfMemory) as info:
        mm.access(trace, WRITE)
    assert info.value.index == 512
    assert mm.status["RssAnon"] == 2048 and mm.rusage["min_flt"] == 512
    assert mm.vmstat["pgfault"] == 513             # the failed fault counts in pgfault only
    mm.munmap(a, 2 * MB)
    assert mm.write(a + 2 * MB) == 1                # memory came back


def test_populate_out_of_memory_is_enomem():
    mm = MM(Config(memory=2 * MB))
    a = mm.mmap(4 * MB)
    with pytest.raises(SyscallError) as info:
        mm.madvise(a, 4 * MB, "populate_write")
    assert info.value.errno == errno.ENOMEM
    assert mm.status["RssAnon"] == 2048


# ---- frames as the rmap sees them (R37, R38, R57) --------------------------------------------

def leaf_pfn(mm, addr):
    level, entry = mm._core.entry(addr)
    return level, (entry >> 12) & ((1 << 40) - 1)


def test_R37_a_fresh_page_is_mapped_once_exclusive_and_freed_when_unmapped():
    mm = MM()
    m = mm._machine
    free = m.nr_free_pages
    a = mm.mmap(2 * MB)
    mm.write(a)
    level, pfn = leaf_pfn(mm, a)
    assert level == 0
    refcount, mapcount, flags = m.frame_info(pfn)
    # PG_ANON | PG_ANON_EXCLUSIVE, and PG_WRITTEN: the store put data in it
    assert (refcount, mapcount) == (1, 1) and flags == 0b1011
    assert m.nr_free_pages == free - 1
    mm.munmap(a, 2 * MB)
    assert m.frame_info(pfn) == (0, 0, 0) and m.nr_free_pages == free


def test_R38_a_thp_is_one_folio_of_a_whole_block_mapped_once_by_its_pmd():
    mm = MM(Config(memory=8 * MB))
    m = mm._machine
    a = hp_mapping(mm)
    mm.write(a)
    level, pfn = leaf_pfn(mm, a)
    assert level == 1 and pfn % 512 == 0
    refcount, entire_mapcount, flags = m.pmd_folio_info(pfn // 512)
    # ANON | EXCLUSIVE | HEAD, and on the deferred-split queue, uncounted (R55)
    assert (refcount, entire_mapcount) == (1, 1) and flags == 0b10000111
    assert m.free_blocks_count == 3
    mm.madvise(a, 2 * MB, "dontneed")
    assert m.pmd_folio_info(pfn // 512) == (0, 0, 0) and m.free_blocks_count == 4


def test_R56_the_huge_zeropage_is_held_by_each_mm_until_it_exits():
    mm = MM()
    m = mm._machine
    a = hp_mapping(mm, 4 * MB)
    mm.read(a)
    mm.read(a + 2 * MB)
    assert m.huge_zero_users == 1 and m.huge_zero_pfn >= 0
    mm.munmap(a, 4 * MB)
    assert m.huge_zero_users == 1                  # a flag on the mm, not per mapping
    mm.close()
    assert m.huge_zero_users == 0


# ---- R9: the pagemap / kpageflags view, as measured on the 6.18 host -------------------------

@pytest.mark.parametrize("state,setup,present_file_excl,count,flags", [
    ("ZP", lambda mm, a: mm.read(a), (1, 0, 0), 0, 0x101000004),
    ("anon 4K", lambda mm, a: mm.write(a), (1, 0, 1), 1, 0x400005808),
    ("HZP head", lambda mm, a: (mm.madvise(a, 2 * MB, "hugepage"), mm.read(a)), (1, 1, 0), 0, 0x1408000),
    ("THP head", lambda mm, a: (mm.madvise(a, 2 * MB, "hugepage"), mm.write(a)), (1, 0, 1), 1, 0x40040D828),
])
def test_R9_pagemap_kpagecount_kpageflags_match_the_host(state, setup, present_file_excl, count, flags):
    mm = MM()
    a = mm.mmap(2 * MB)
    setup(mm, a)
    pagemap, kpagecount, kpageflags = mm.pagemap(a, 2 * PAGE)
    e = int(pagemap[0])
    assert (e >> 63, (e >> 61) & 1, (e >> 56) & 1) == present_file_excl
    assert (kpagecount[0], int(kpageflags[0])) == (count, flags)
    if state.endswith("head"):                      # the next page is a compound tail
        assert int(kpageflags[1]) == flags & ~(1 << 15) | (1 << 16)


def test_R9_pagemap_shows_nothing_for_unmapped_pages():
    mm = MM()
    a = mm.mmap(2 * MB)
    pagemap, kpagecount, kpageflags = mm.pagemap(a, 4 * PAGE)
    assert not pagemap.any() and not kpagecount.any() and not kpageflags.any()


def test_R65_the_huge_zeropage_stays_read_only_through_prot_none_and_back():
    # measured on the 6.18 host: read (1 fault), mprotect NONE then RW, write: 1 fault, a THP
    mm = MM()
    a = hp_mapping(mm)
    mm.read(a)
    mm.mprotect(a, 2 * MB, "none")
    mm.mprotect(a, 2 * MB, "rw")
    assert mm.write(a + PAGE) == 1
    assert mm.smaps(a)["AnonHugePages"] == 2048


def test_R30_a_write_only_vma_reads_the_zeropage_then_copies_on_write():
    # measured on the 6.18 host: read 1 fault, write 1 fault, Rss 4 kB
    mm = MM()
    a = mm.mmap(2 * MB, "w")
    assert (mm.read(a), mm.write(a)) == (1, 1)
    assert mm.smaps(a)["Rss"] == 4
