"""The Cython core checks what it is handed: no range, index or array can make it touch memory
outside its tables, even when called directly (mm._core)."""
import numpy as np
import pytest

from mmemu import MM, PageState, _core

TOP = 1 << 47


@pytest.fixture
def core():
    mm = MM()
    mm.mmap(4096)
    return mm._core


@pytest.mark.parametrize("start,end", [(8192, 4096), (0, TOP + 4096), (1, 4096), (0, 4097),
                                       ((1 << 64) - 4096, (1 << 64) - 4096)])
def test_every_range_method_refuses_a_bad_range(core, start, end):
    for call in (lambda: core.page_states(start, end), lambda: core.smaps_counts(start, end),
                 lambda: core.zap(start, end, False), lambda: core.populate(start, end, False),
                 lambda: core.change_protection(start, end, 3),
                 lambda: core.free_pgtables(start, end, 0, TOP),
                 lambda: core.vma_insert(start, end, 3),
                 lambda: core.madvise_free(start, end, True),
                 lambda: core.madvise_cold(start, end, True, True),
                 lambda: core.madvise_collapse(start, end),
                 lambda: core.move_page_tables(start, 1 << 40, (end - start) % (1 << 64)),
                 lambda: core.move_page_tables(1 << 40, start, (end - start) % (1 << 64)),
                 lambda: core.contpte_blocks(start, end), lambda: core.madvise_cold_file(start, end),
                 lambda: core.file_collapse_refused(start, end)):
        with pytest.raises(ValueError):
            call()


def test_vma_index_methods_check_their_indices(core):
    for call in (lambda: core.vma_delete(0, 5), lambda: core.vma_delete(1, 0),
                 lambda: core.vma_set_flags(3, 0)):
        with pytest.raises(IndexError):
            call()
    assert core.vma_try_merge(99) is False


def test_access_refuses_arrays_of_the_wrong_kind(core):
    good = np.zeros(4, np.uint64)
    out = np.zeros(4, np.uint8)
    for args in ((good.astype(np.int64), None, 0, out), (good, None, 0, np.zeros(3, np.uint8)),
                 (good, np.zeros(4, np.int8), 0, out), (good, None, 7, out),
                 (good, np.full(4, 9, np.uint8), 0, out), (good[::2], None, 0, out[:2]),
                 (good, None, 0, np.zeros(4, np.uint8)[::-1])):
        with pytest.raises(ValueError):
            core.access(*args)


def test_frame_info_is_bounds_checked():
    m = _core.Machine(2 << 20)
    with pytest.raises(IndexError):
        m.frame_info(-1)
    with pytest.raises(IndexError):
        m.frame_info(m.nr_frames)


def test_core_constants_match_the_public_ones():
    from mmemu import ATOMIC, READ, WRITE
    assert _core.OP_VALUES == (READ, WRITE, ATOMIC)
    assert _core.PAGE_STATE_VALUES == tuple(PageState)


def test_issue4_entry_points_check_indices_blocks_and_processes(core):
    with pytest.raises(IndexError):
        core.khugepaged_vma_range(5)
    with pytest.raises(IndexError):
        core.khugepaged_scan_pmd(-1, 0, 511, 256)
    with pytest.raises(ValueError):
        core.khugepaged_scan_pmd(0, 4096, 511, 256)          # not an aligned block of the VMA
    for head in (-1, 0, 512, 1 << 40):                   # 0: reserved; 512: no large folio
        with pytest.raises(ValueError):
            core.rmap_split_pmds(head)
        with pytest.raises(ValueError):
            core.rmap_remap_zero(head)
    stranger = MM()
    with pytest.raises(ValueError):
        core.fork_into(stranger._core)                        # another machine
    with pytest.raises(ValueError):
        core.fork_into(core)
    with pytest.raises(AttributeError):
        core.machine.register_mm(core)                        # C-level only


def test_issue5_entry_points_check_their_arguments(core):
    m = core.machine
    with pytest.raises(ValueError):
        core.rmap_migrate(0, np.zeros(4, np.int32))           # wrong dtype
    with pytest.raises(ValueError):
        core.rmap_migrate(m.nr_frames - 2, np.full(4, -1, np.int64))     # beyond RAM
    with pytest.raises(ValueError):
        core.rmap_migrate(512, np.full(4, m.nr_frames, np.int64))        # targets beyond RAM
    with pytest.raises(ValueError):
        core.collapse_file(0, 0)                              # not a shared mapping
    with pytest.raises(ValueError):
        core.collapse_file(99, 0)
    with pytest.raises(ValueError):
        core.vma_insert(1 << 40, (1 << 40) + 4096, 3 | 0x8)   # VM_SHARED without its file
    with pytest.raises(ValueError):
        core.vma_insert(1 << 40, (1 << 40) + 4096, 3, 0, None, 77)       # no such file
    for bad in ((0.5, 11, False), (-0.1, 9, False), (1.5, 9, False)):
        with pytest.raises(ValueError):
            m.fragment(*bad)
    with pytest.raises(ValueError):
        m.set_memory_max(-1)
    fid = m.new_file(False)
    with pytest.raises(ValueError):
        m.file_set_size(fid, -1)
    m.file_set_size(fid, 8)
    for first, last in ((4, 2), (-1, 2), (0, 513)):     # the cache holds a whole 2 MiB
        with pytest.raises(ValueError):
            m.file_free_range(fid, first, last)
    for first, last in ((4, 2), (-1, 2), (0, 9)):       # fallocate stays within i_size
        with pytest.raises(ValueError):
            m.file_fallocate(fid, first, last)
    with pytest.raises(KeyError):
        m.file_set_size(fid + 1, 8)
    with pytest.raises(ValueError):
        _core.MMCore(m, thp_always=False, thp_madvise=True, use_zero_page=True, zero_page=True,
                     huge_zero_write_thp=True, pt_reclaim=True, arm64=False, atomic_write_fault=False,
                     mthp_always=1 << 9)                      # mTHP orders are 2..8
    with pytest.raises(ValueError):
        _core.MMCore(m, thp_always=False, thp_madvise=True, use_zero_page=True, zero_page=True,
                     huge_zero_write_thp=True, pt_reclaim=True, arm64=False, atomic_write_fault=False,
                     defrag=9)
    for head in (-1, 0, 512, 1 << 40):
        with pytest.raises(ValueError):
            core.rmap_maps_locked(head)
