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
                 lambda: core.move_page_tables(1 << 40, start, (end - start) % (1 << 64))):
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
