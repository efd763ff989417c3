"""Shared memory: MAP_SHARED|MAP_ANONYMOUS and memfd mappings over shmem files (issue 5; the
6.18 host's behaviour is in docs/shmem-host-findings.md and the SH/ST rows of
mmemu.scenarios).  One test per behaviour, named after it."""
import errno

import numpy as np
import pytest
from helpers import counters, delta

from mmemu import BusError, Config, Memfd, MM, OutOfMemory, PageState, SegmentationFault, SyscallError

MB = 1 << 20
PAGE = 4096
BASE = 0x500000000000          # 2 MiB aligned
PS = PageState


def test_a_read_fault_allocates_a_shmem_page_mapped_writable():
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    before = counters(mm)
    assert mm.read(a) == 1
    assert mm.page_states(a, PAGE)[0] == PS.SHMEM
    assert mm.write(a) == 0                       # no write-notify on shmem: already writable
    assert mm.status["RssShmem"] == 4 and mm.status["RssAnon"] == 0
    d = delta(before, counters(mm))
    assert d["nr_shmem"] == 1 and "nr_anon_pages" not in d
    s = mm.smaps(a)
    assert (s["Rss"], s["Anonymous"], s["Private_Dirty"]) == (4, 0, 4)
    assert mm.maps()[-1][2] == "rw-s" and "sh" in s["VmFlags"].split()


def test_fault_around_maps_the_cached_pages_of_the_64k_window_on_a_read():
    mm = MM()
    f = mm.memfd_create()
    f.ftruncate(2 * MB)
    writer = mm.mmap(2 * MB, fd=f)
    mm.access(np.arange(writer, writer + 32 * PAGE, PAGE, dtype=np.uint64), 1)   # 32 pages cached
    reader = mm.mmap(2 * MB, fd=f, addr=BASE, fixed=True)
    assert mm.read(reader + 20 * PAGE) == 1
    states = mm.page_states(reader, 32 * PAGE)
    assert (states[16:32] == PS.SHMEM).all() and (states[:16] == PS.NONE).all()
    assert mm.write(reader + 23 * PAGE) == 0             # mapped by fault-around, writable
    assert mm.read(reader + 3 * PAGE) == 1               # the next window


def test_write_faults_map_only_their_page():
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    mm.write(a)
    mm.madvise(a, PAGE, "dontneed")
    mm.write(a + PAGE)
    assert (mm.page_states(a, 16 * PAGE) != PS.NONE).sum() == 1


def test_dontneed_only_unmaps_and_the_data_comes_back():
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    mm.write(a)
    mm.madvise(a, 2 * MB, "dontneed")
    assert mm.page_states(a, PAGE)[0] == PS.NONE and mm.vmstat["nr_shmem"] == 1
    mm.read(a)
    assert mm.smaps(a)["Private_Dirty"] == 4             # the written page, still dirty


def test_fork_shares_the_object_and_the_childs_tables_start_empty():
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    mm.write(a)
    child = mm.fork()
    assert child.page_states(a, PAGE)[0] == PS.NONE and child.status["VmPTE"] < mm.status["VmPTE"]
    assert child.read(a) == 1 and child.page_states(a, PAGE)[0] == PS.SHMEM
    assert child.vmstat["nr_shmem"] == 1                 # the same page, not a copy
    assert child.write(a) == 0 and mm.smaps(a)["Shared_Dirty"] == 4
    child.close()


def test_madv_remove_frees_the_page_from_every_process():
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    mm.write(a)
    child = mm.fork()
    child.read(a)
    mm.madvise(a, PAGE, "remove")
    assert mm.page_states(a, PAGE)[0] == PS.NONE and child.page_states(a, PAGE)[0] == PS.NONE
    assert mm.vmstat["nr_shmem"] == 0 and child.status["RssShmem"] == 0
    child.close()


def test_madv_remove_asks_for_the_right_to_write_not_for_write_permission():
    # vma_is_shared_maywrite: an mprotect to read-only (or none) keeps VM_MAYWRITE (host: R2-4)
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    mm.write(a)
    mm.mprotect(a, 2 * MB, "r")
    mm.madvise(a, 2 * MB, "remove")
    assert mm.vmstat["nr_shmem"] == 0


def test_madv_remove_punches_vma_by_vma_until_one_refuses():
    # madvise_walk_vmas: the first VMA's pages go before the mlocked second one fails the call
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    mm.write(a), mm.write(a + MB)
    mm.mlock(a + MB, PAGE)
    with pytest.raises(SyscallError) as exc:
        mm.madvise(a, 2 * MB, "remove")
    assert exc.value.errno == errno.EINVAL
    assert mm.page_states(a, PAGE)[0] == PS.NONE and mm.page_states(a + MB, PAGE)[0] == PS.SHMEM


@pytest.mark.parametrize("advice, err", [("remove", errno.EINVAL)])
def test_madv_remove_needs_a_shared_mapping(advice, err):
    mm = MM()
    a = mm.mmap(2 * MB)
    with pytest.raises(SyscallError) as exc:
        mm.madvise(a, PAGE, advice)
    assert exc.value.errno == err


@pytest.mark.parametrize("advice", ["free", "wipeonfork"])
def test_private_only_advice_on_shared_memory_is_einval(advice):
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    with pytest.raises(SyscallError) as exc:
        mm.madvise(a, PAGE, advice)
    assert exc.value.errno == errno.EINVAL


def test_a_shared_anonymous_object_goes_with_its_last_mapping():
    mm = MM()
    a = mm.mmap(4 * MB, shared=True)
    mm.access(np.arange(a, a + 4 * MB, PAGE, dtype=np.uint64), 1)
    child = mm.fork()
    mm.munmap(a, 4 * MB)
    assert mm.vmstat["nr_shmem"] == 1024                 # the child still maps it
    child.close()
    assert mm.vmstat["nr_shmem"] == 0 and mm.memory_current < 4 * MB


def test_a_memfd_keeps_its_pages_while_the_fd_is_open():
    mm = MM()
    with mm.memfd_create("guest-ram") as f:
        assert isinstance(f, Memfd) and f.size == 0
        f.ftruncate(2 * MB)
        a = mm.mmap(2 * MB, fd=f)
        mm.write(a + 3 * PAGE)
        mm.munmap(a, 2 * MB)
        assert mm.vmstat["nr_shmem"] == 1
        b = mm.mmap(2 * MB, fd=f)
        mm.read(b + 3 * PAGE)
        assert mm.smaps(b)["Private_Dirty"] == 4          # the same page, written before
    assert mm.vmstat["nr_shmem"] == 1                     # closed, but still mapped
    mm.munmap(b, 2 * MB)
    assert mm.vmstat["nr_shmem"] == 0


def test_punch_hole_and_ftruncate_unmap_and_free():
    mm = MM()
    f = mm.memfd_create()
    f.ftruncate(64 * PAGE)
    a = mm.mmap(64 * PAGE, fd=f)
    mm.access(np.arange(a, a + 64 * PAGE, PAGE, dtype=np.uint64), 1)
    f.fallocate(4 * PAGE, 4 * PAGE, punch_hole=True)
    assert (mm.page_states(a, 16 * PAGE)[4:8] == PS.NONE).all() and mm.vmstat["nr_shmem"] == 60
    f.ftruncate(32 * PAGE)
    assert mm.vmstat["nr_shmem"] == 28
    with pytest.raises(BusError) as exc:
        mm.read(a + 40 * PAGE)                            # beyond i_size: SIGBUS
    assert isinstance(exc.value, SegmentationFault) and "SIGBUS" in str(exc.value)


def test_fallocated_pages_are_skipped_by_fault_around():
    mm = MM()
    f = mm.memfd_create()
    f.ftruncate(2 * MB)
    f.fallocate(0, 16 * PAGE)
    a = mm.mmap(2 * MB, fd=f)
    assert mm.vmstat["nr_shmem"] == 16
    mm.read(a + 5 * PAGE)
    assert (mm.page_states(a, 16 * PAGE) == PS.SHMEM).sum() == 1


@pytest.mark.parametrize("mode, hp, thp", [("always", False, True), ("within_size", False, True),
                                           ("advise", False, False), ("advise", True, True),
                                           ("never", True, False)])
def test_shmem_enabled_decides_whether_a_fault_gets_a_pmd_mapped_thp(mode, hp, thp):
    mm = MM(Config(shmem_enabled=mode))
    a = mm.mmap(2 * MB, shared=True)
    assert a % (2 * MB) == 0 or mode == "never"
    if hp:
        mm.madvise(a, 2 * MB, "hugepage")
    before = counters(mm)
    mm.read(a)
    d = delta(before, counters(mm))
    if thp:
        assert (mm.page_states(a, 2 * MB) == PS.SHMEM_THP).all()
        assert d["thp_file_alloc"] == 1 and d["thp_file_mapped"] == 1 and d["nr_shmem_pmdmapped"] == 1
        assert d["2048kB/shmem_alloc"] == 1 and mm.smaps(a)["ShmemPmdMapped"] == 2048
        assert mm.smaps(a)["AnonHugePages"] == 0 and mm.smaps(a)["THPeligible"] == 1
    else:
        assert mm.page_states(a, PAGE)[0] == PS.SHMEM and "thp_file_alloc" not in d


def test_a_shmem_pmd_has_no_deposited_table_and_a_partial_dontneed_clears_it():
    mm = MM(Config(shmem_enabled="always"))
    a = mm.mmap(2 * MB, shared=True)
    mm.write(mm.mmap(PAGE))                               # upper tables in place
    pte_before = mm.status["VmPTE"]
    mm.read(a)
    assert mm.status["VmPTE"] == pte_before
    before = counters(mm)
    mm.madvise(a, PAGE, "dontneed")
    assert (mm.page_states(a, 2 * MB) == PS.NONE).all()
    d = delta(before, counters(mm))
    assert d == {"thp_split_pmd": 1, "nr_shmem_pmdmapped": -1}
    assert mm.read(a + PAGE) == 1 and (mm.page_states(a, 2 * MB) == PS.SHMEM_THP).all()


def test_punching_a_hole_in_a_shmem_thp_splits_it_around_the_hole():
    mm = MM(Config(shmem_enabled="always"))
    f = mm.memfd_create()
    f.ftruncate(2 * MB)
    a = mm.mmap(2 * MB, fd=f)
    mm.write(a)
    before = counters(mm)
    f.fallocate(256 * PAGE, 256 * PAGE, punch_hole=True)
    d = delta(before, counters(mm))
    assert d["thp_split_page"] == 1 and d["2048kB/split"] == 1 and d["nr_shmem"] == -256
    assert mm.read(a + 100 * PAGE) == 1                   # the 1 MiB folio left is mapped whole
    assert (mm.page_states(a, 2 * MB) == PS.SHMEM).sum() == 256


def test_before_6_15_a_hole_splits_a_shmem_thp_into_4k_pages():
    mm = MM(Config.for_kernel("6.12", shmem_enabled="always"))
    f = mm.memfd_create()
    f.ftruncate(2 * MB)
    a = mm.mmap(2 * MB, fd=f)
    mm.write(a)
    f.fallocate(256 * PAGE, 256 * PAGE, punch_hole=True)
    assert mm.read(a + 100 * PAGE) == 1
    assert (mm.page_states(a, 2 * MB) == PS.SHMEM).sum() == 16      # fault-around's window only


def test_a_shmem_thp_that_cannot_be_charged_falls_back_to_4k():
    mm = MM(Config(shmem_enabled="always"))
    a = mm.mmap(2 * MB, shared=True)
    mm.write(mm.mmap(PAGE))
    mm.memory_max = mm.memory_current + 1 * MB
    before = counters(mm)
    mm.read(a)
    d = delta(before, counters(mm))
    assert d["thp_file_fallback"] == 1 and d["thp_file_fallback_charge"] == 1
    assert d["2048kB/shmem_fallback"] == 1 and d["2048kB/shmem_fallback_charge"] == 1
    assert mm.page_states(a, PAGE)[0] == PS.SHMEM


def test_a_shmem_page_that_cannot_be_charged_is_out_of_memory():
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    mm.read(a)
    mm.memory_max = mm.memory_current
    with pytest.raises(OutOfMemory):
        mm.read(a + 100 * PAGE)
    assert mm.vmstat["nr_shmem"] == 1


def test_madv_collapse_makes_a_shmem_thp_whatever_shmem_enabled_says():
    mm = MM()
    b = mm.mmap(2 * MB, shared=True, addr=BASE, fixed=True)
    for i in range(8):
        mm.write(b + i * PAGE)
    mm.madvise(b, 2 * MB, "collapse")
    assert (mm.page_states(b, 2 * MB) == PS.SHMEM_THP).all()
    assert mm.vmstat["thp_collapse_alloc"] == 1 and mm.vmstat["nr_shmem_hugepages"] == 1


def test_mremap_of_a_shared_mapping_keeps_its_file_pages():
    mm = MM()
    a = mm.mmap(2 * MB, shared=True)
    mm.write(a + 5 * PAGE)
    b = mm.mremap(a, 2 * MB, 4 * MB, maymove=True)
    assert mm.page_states(b, 8 * PAGE)[5] in (PS.SHMEM, PS.NONE)
    mm.read(b + 5 * PAGE)
    assert mm.smaps(b)["Private_Dirty"] == 4
    with pytest.raises(BusError):
        mm.read(b + 3 * MB)                               # the object stays 2 MiB
    c = mm.mremap(b, 0, 2 * MB, maymove=True)             # a second mapping of the same pages
    mm.read(c + 5 * PAGE)
    assert mm.smaps(c)["Shared_Dirty"] == 4


def test_mmap_checks_its_shared_arguments():
    mm = MM()
    with pytest.raises(TypeError):
        mm.mmap(PAGE, shared=1)
    with pytest.raises(TypeError):
        mm.mmap(PAGE, fd=3)
    with pytest.raises(ValueError):
        mm.mmap(PAGE, offset=PAGE)
    f = MM().memfd_create()
    with pytest.raises(ValueError):
        mm.mmap(PAGE, fd=f)                               # another machine's file
    g = mm.memfd_create()
    with pytest.raises(SyscallError):
        mm.mmap(PAGE, fd=g, offset=100)
    g.close()
    with pytest.raises(SyscallError) as exc:
        mm.mmap(PAGE, fd=g)
    assert exc.value.errno == errno.EBADF
    with pytest.raises(SyscallError):
        g.ftruncate(PAGE)


def test_a_fault_makes_a_whole_fallocated_folio_uptodate():
    mm = MM(Config(shmem_enabled="always"))
    f = mm.memfd_create()
    f.ftruncate(2 * MB)
    f.fallocate(0, 2 * MB)                               # one THP, not uptodate
    a = mm.mmap(2 * MB, fd=f, addr=BASE, fixed=True)
    mm.read(a + 5 * PAGE)                                # mapped by its PMD, uptodate now
    mm.madvise(a, PAGE, "dontneed")                      # the PMD is cleared
    mm.mprotect(a, PAGE, "r")                            # the 2 MiB no longer fits one VMA
    assert mm.read(a + 20 * PAGE) == 1
    assert (mm.page_states(a, 32 * PAGE)[16:32] == PS.SHMEM).all()   # fault-around sees them


def _memfd_at_base(mm, pages, length=2 * MB):
    f = mm.memfd_create()
    f.ftruncate(pages * PAGE)
    return f, mm.mmap(length, fd=f, addr=BASE, fixed=True)


def test_madv_collapse_ignores_i_size_and_the_thp_runs_past_it():
    """khugepaged.c never reads i_size: a block with one page before i_size is collapsed whole,
    and the PMD maps pages past i_size (no SIGBUS there until the PMD goes)."""
    mm = MM()
    f, a = _memfd_at_base(mm, 100)
    mm.write(a + 5 * PAGE)
    mm.madvise(a, 2 * MB, "collapse")
    assert (mm.page_states(a, 2 * MB) == PS.SHMEM_THP).all()
    assert mm.read(a + 300 * PAGE) == 0
    mm.madvise(a, 2 * MB, "dontneed")
    with pytest.raises(BusError):
        mm.read(a + 300 * PAGE)


def test_madv_collapse_of_a_block_wholly_past_the_page_cache_is_einval():
    mm = MM()
    f, a = _memfd_at_base(mm, 100, 4 * MB)
    mm.write(a)
    with pytest.raises(SyscallError) as exc:
        mm.madvise(a + 2 * MB, 2 * MB, "collapse")
    assert exc.value.errno == errno.EINVAL
    assert mm.vmstat["nr_shmem"] == 1


def test_fallocate_takes_the_whole_aligned_thp_around_its_range():
    """shmem_fallocate asks for a folio per page not cached; with shmem_enabled=always it gets
    the THP of the naturally aligned 2 MiB, though that starts before the range."""
    mm = MM(Config(shmem_enabled="always"))
    f = mm.memfd_create()
    f.ftruncate(4 * MB)
    before = counters(mm)
    f.fallocate(300 * PAGE, 10 * PAGE)
    d = delta(before, counters(mm))
    assert d["thp_file_alloc"] == 1 and d["nr_shmem"] == 512 and d["nr_shmem_hugepages"] == 1
    a = mm.mmap(4 * MB, fd=f, addr=BASE, fixed=True)
    mm.read(a)
    mm.read(a + 2 * MB)
    assert mm.smaps(a)["ShmemPmdMapped"] == 4096 and counters(mm)["thp_file_alloc"] == 2


def test_fallocate_next_to_a_cached_page_falls_back_to_4k_pages():
    mm = MM(Config(shmem_enabled="always"))
    f, a = _memfd_at_base(mm, 1024, 4 * MB)
    mm.madvise(a, 2 * MB, "nohugepage")
    mm.write(a)                                           # one 4K page in the first block
    before = counters(mm)
    f.fallocate(500 * PAGE, 30 * PAGE)
    d = delta(before, counters(mm))
    assert d["nr_shmem"] == 12 + 512 and d["nr_shmem_hugepages"] == 1


def test_fallocate_thps_compact_only_with_defrag_always():
    """No VMA, so no MADV_HUGEPAGE: vma_thp_gfp_mask(NULL) compacts directly only for
    defrag=always."""
    stalls = {}
    for defrag in ("always", "madvise"):
        mm = MM(Config(shmem_enabled="always", defrag=defrag, memory=64 * MB))
        f = mm.memfd_create()
        f.ftruncate(2 * MB)
        mm.fragment_memory(0.5, 9, movable=True)          # no free 2 MiB block, all movable
        before = counters(mm)
        f.fallocate(0, 2 * MB)
        d = delta(before, counters(mm))
        stalls[defrag] = (d.get("compact_stall", 0), d.get("nr_shmem_hugepages", 0))
    assert stalls == {"always": (1, 1), "madvise": (0, 0)}


def test_fallocate_that_runs_out_is_the_oom_killer_and_frees_what_it_added():
    mm = MM()
    f = mm.memfd_create()
    f.ftruncate(4 * MB)
    f.fallocate(0, 4 * PAGE)
    mm.memory_max = mm.memory_current + 100 * PAGE
    with pytest.raises(OutOfMemory) as exc:
        f.fallocate(0, 4 * MB)
    assert exc.value.address is None
    assert mm.vmstat["nr_shmem"] == 0                 # not uptodate: the earlier call's too
    assert f.size == 4 * MB


def test_a_cached_thp_is_mapped_by_ptes_under_madv_nohugepage():
    mm = MM(Config(shmem_enabled="always"))
    f, a = _memfd_at_base(mm, 512)
    f.fallocate(0, 2 * MB)
    mm.madvise(a, 2 * MB, "nohugepage")
    mm.read(a + 3 * PAGE)
    assert mm.smaps(a)["ShmemPmdMapped"] == 0 and mm.vmstat["thp_file_mapped"] == 0


@pytest.mark.parametrize("except_advised, pmd_mapped, eligible", [(0, 0, 0), (1, 2048, 0)])
def test_the_prctl_veto_and_a_cached_thp(except_advised, pmd_mapped, eligible):
    """do_set_pmd refuses a PMD as for a forced collapse ("as we already have a THP"): the full
    PR_SET_THP_DISABLE does, the except-advised flavour does not; THPeligible is 0 under both
    (vma_thp_disabled without MADV_HUGEPAGE)."""
    mm = MM(Config(shmem_enabled="always"))
    mm.prctl("PR_SET_THP_DISABLE", 1, 2 if except_advised else 0)
    f, a = _memfd_at_base(mm, 512)
    f.fallocate(0, 2 * MB)
    mm.read(a + 3 * PAGE)
    s = mm.smaps(a)
    assert (s["ShmemPmdMapped"], s["THPeligible"]) == (pmd_mapped, eligible)
    assert s["Rss"] == 2048


def test_a_write_fault_on_a_large_folio_below_pmd_order_maps_ptes():
    """finish_fault maps by a PMD only a folio of PMD order: after a hole split a THP, the
    order-8 half is mapped by PTEs though the PMD is none."""
    mm = MM(Config(shmem_enabled="always"))
    f, a = _memfd_at_base(mm, 512)
    mm.write(a)
    f.fallocate(0, PAGE, punch_hole=True)
    mm.madvise(a, 2 * MB, "dontneed")
    mm.write(a + 300 * PAGE)
    assert mm.smaps(a)["ShmemPmdMapped"] == 0
    assert (mm.page_states(a + 256 * PAGE, 256 * PAGE) == PS.SHMEM).all()


def test_a_failed_fallocate_splits_a_thp_it_added_before_its_range_and_keeps_i_size():
    """shmem_undo_range(unfalloc) splits a new THP that begins before the range at the range's
    first page (truncate_inode_partial_folio) and frees the pieces inside; the page before
    the range stays, past an i_size that never moved."""
    mm = MM(Config(shmem_enabled="always"))
    f = mm.memfd_create()
    mm.memory_max = mm.memory_current + 2 * MB
    before = counters(mm)
    with pytest.raises(OutOfMemory):
        f.fallocate(PAGE, 2 * MB)               # pages 1..512: a THP for 0..511, then nothing
    d = delta(before, counters(mm))
    assert d["thp_file_alloc"] == 1 and d["thp_split_page"] == 1 and d["2048kB/split"] == 1
    assert d["nr_shmem"] == 1 and f.size == 0 and mm.memory_current == PAGE


def _thp_across_eof(mm, pte_mapped=False):
    """A memfd of 768 pages mapped 4 MiB with a THP over pages 512..1023 (past i_size)."""
    f, a = _memfd_at_base(mm, 768, 4 * MB)
    f.fallocate(512 * PAGE, 256 * PAGE)
    if pte_mapped:
        mm.madvise(a, 4 * MB, "nohugepage")
        mm.write(a + 700 * PAGE)                       # the whole folio mapped by PTEs
    return f, a


def test_a_split_drops_the_pieces_that_begin_past_eof():
    """__folio_split removes from the page cache the new folios at or past EOF; the hole's
    end would have split the order-8 piece at 768, but it is gone already."""
    mm = MM(Config(shmem_enabled="always"))
    f, a = _thp_across_eof(mm)
    before = counters(mm)
    f.fallocate(0, 768 * PAGE, punch_hole=True)
    d = delta(before, counters(mm))
    assert d["2048kB/split"] == 1 and "1024kB/split" not in d
    assert d["nr_shmem"] == -512 and mm.memory_current == 0


def test_a_split_of_a_shmem_folio_unmaps_all_of_it():
    """remap_page maps anonymous folios again, not file folios: after a hole splits a
    PTE-mapped shmem folio, none of its pages is mapped."""
    mm = MM(Config(shmem_enabled="always"))
    f, a = _thp_across_eof(mm, pte_mapped=True)
    assert (mm.page_states(a + 512 * PAGE, 512 * PAGE) == PS.SHMEM).all()
    f.fallocate(600 * PAGE, 10 * PAGE, punch_hole=True)
    assert (mm.page_states(a, 4 * MB) == PS.NONE).all()
    assert mm.vmstat["nr_shmem"] == 256 - 10           # the pieces past EOF went with the split
    assert mm.read(a + 700 * PAGE) == 1


def test_fallocate_keep_size_keeps_a_split_from_dropping_what_it_reserved():
    """fallocend: pages fallocate reserved past i_size (FALLOC_FL_KEEP_SIZE) count as inside
    EOF for a split."""
    mm = MM(Config(shmem_enabled="always"))
    f, a = _thp_across_eof(mm)
    f.fallocate(0, 4 * MB, keep_size=True)            # fallocend = 1024 pages
    f.fallocate(600 * PAGE, 10 * PAGE, punch_hole=True)
    assert mm.vmstat["nr_shmem"] == 512 + 512 - 10


def test_mlock_past_the_end_of_a_memfd_is_enomem_with_the_pages_before_it_in():
    # GUP's EFAULT on the SIGBUS, made ENOMEM by __mlock_posix_error_return (host: R2-634)
    mm = MM()
    fd = mm.memfd_create("m")
    fd.ftruncate(2 * PAGE)
    a = mm.mmap(4 * PAGE, fd=fd)
    with pytest.raises(SyscallError) as exc:
        mm.mlock(a, 4 * PAGE)
    assert exc.value.errno == errno.ENOMEM
    assert mm.page_states(a, 4 * PAGE).tolist() == [PS.SHMEM, PS.SHMEM, PS.NONE, PS.NONE]
    assert "lo" in mm.smaps(a)["VmFlags"].split()


def test_madv_cold_of_part_of_a_shmem_thp_splits_it_and_unmaps_it():
    # madvise_cold_or_pageout_pte_range: split_folio of a PMD-mapped folio the range covers in
    # part; a file folio is not mapped again after a split (host: random scenario R2-696)
    mm = MM(Config(shmem_enabled="always"))
    a = mm.mmap(2 * MB, shared=True)
    mm.read(a)
    before = counters(mm)
    mm.madvise(a + 16 * PAGE, PAGE, "cold")
    assert (mm.page_states(a, 2 * MB) == PS.NONE).all()
    d = delta(before, counters(mm))
    assert d["thp_split_page"] == d["thp_split_pmd"] == 1 and d["nr_shmem_hugepages"] == -1
    assert "nr_shmem" not in d
    assert mm.read(a + 100 * PAGE) == 1                  # the pages are still in the cache
    assert mm.page_states(a + 100 * PAGE, PAGE)[0] == PS.SHMEM


def test_madv_cold_of_a_whole_shmem_thp_only_makes_it_old():
    mm = MM(Config(shmem_enabled="always"))
    a = mm.mmap(2 * MB, shared=True)
    mm.read(a)
    mm.madvise(a, 2 * MB, "cold")
    assert (mm.page_states(a, 2 * MB) == PS.SHMEM_THP).all() and mm.smaps(a)["Referenced"] == 0


def test_madv_cold_leaves_a_shmem_thp_another_process_maps():
    mm = MM(Config(shmem_enabled="always"))
    a = mm.mmap(2 * MB, shared=True)
    mm.read(a)
    with mm.fork() as child:
        child.read(a)                                    # the child maps it too
        mm.madvise(a, PAGE, "cold")
        assert (mm.page_states(a, 2 * MB) == PS.SHMEM_THP).all()
        assert (child.page_states(a, 2 * MB) == PS.SHMEM_THP).all()


def test_a_fault_at_an_unaligned_address_maps_the_whole_shmem_folio_too():
    # finish_fault works from vmf->address, the page's address: the byte offset plays no part
    for offset in (0, 1, PAGE - 1):
        mm = MM(Config(shmem_enabled="always"))
        fd = mm.memfd_create("m")
        fd.ftruncate(4 * MB)
        a = mm.mmap(4 * MB, fd=fd)
        mm.read(a)                                           # a shmem THP
        fd.fallocate(0, PAGE, punch_hole=True, keep_size=True)   # split: 256..511 one folio
        assert mm.write(a + 256 * PAGE + offset) == 1
        assert mm.status["RssShmem"] == 1024
