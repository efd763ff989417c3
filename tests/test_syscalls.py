"""mmap, munmap, mprotect, madvise: placement, VMA edits and the kernel's errno, as measured on
the 6.18 host (docs/model.md records each decision)."""
import errno

import pytest

from mmemu import MM, ClosedError, Config, PageState, SyscallError

KB, MB = 1 << 10, 1 << 20
PAGE = 4096
X = 0x500000000000
PS = PageState


def errno_of(fn, *args):
    with pytest.raises(SyscallError) as info:
        fn(*args)
    assert isinstance(info.value, OSError)
    return info.value.errno


# ---- mmap ----------------------------------------------------------------------------------

def test_mmap_returns_distinct_page_aligned_addresses_below_mmap_base():
    mm = MM()
    addrs = [mm.mmap(n) for n in (1, PAGE, 3 * MB, 2 * MB)]
    assert all(a % PAGE == 0 and a + PAGE <= 0x7ffff7fff000 for a in addrs)
    assert len(set(addrs)) == 4


def test_mmap_rounds_length_up_to_a_page():
    mm = MM()
    a = mm.mmap(1)
    assert mm.smaps(a)["Size"] == 4


def test_mmap_of_length_0_is_einval():
    assert errno_of(MM().mmap, 0) == errno.EINVAL


def test_mmap_beyond_the_address_space_is_enomem():
    assert errno_of(MM().mmap, 1 << 48) == errno.ENOMEM


def test_mmap_uses_a_free_hint_rounding_it_down_and_up_to_mmap_min_addr():
    mm = MM()
    assert mm.mmap(PAGE, addr=X) == X
    assert mm.mmap(PAGE, addr=X + 2 * PAGE + 5) == X + 2 * PAGE
    assert mm.mmap(PAGE, addr=0x1000) == 0x10000


def test_mmap_ignores_a_hint_that_overlaps_a_mapping():
    mm = MM()
    mm.mmap(2 * MB, addr=X, fixed=True)
    b = mm.mmap(PAGE, addr=X + PAGE)
    assert not X <= b < X + 2 * MB


def test_mmap_fixed_needs_an_aligned_address():
    assert errno_of(MM().mmap, PAGE, "rw", X + 1, True) == errno.EINVAL


def test_mmap_fixed_below_mmap_min_addr_is_eperm():
    assert errno_of(MM().mmap, PAGE, "rw", 0x1000, True) == errno.EPERM


def test_mmap_fixed_replaces_what_was_mapped():
    mm = MM()
    mm.mmap(2 * MB, addr=X, fixed=True)
    mm.write(X)
    mm.mmap(PAGE, "r", addr=X, fixed=True)
    assert mm.page_states(X, PAGE)[0] == PS.NONE
    assert [m[2] for m in mm.maps()] == ["r--p", "rw-p"] and mm.status["RssAnon"] == 0


def test_mmap_merges_with_a_compatible_neighbour_only():
    mm = MM()
    mm.mmap(PAGE, addr=X, fixed=True)
    mm.mmap(PAGE, addr=X + PAGE, fixed=True)
    mm.mmap(PAGE, "r", addr=X + 2 * PAGE, fixed=True)
    assert [(s - X, e - X) for s, e, _, _ in mm.maps()] == [(0, 2 * PAGE), (2 * PAGE, 3 * PAGE)]


def test_mmap_over_max_map_count_is_enomem():
    mm = MM(Config(max_map_count=3))
    for i in range(4):                              # the count may reach max + 1 (do_mmap checks >)
        mm.mmap(PAGE, "r" if i % 2 else "rw", addr=X + i * PAGE, fixed=True)
    assert errno_of(mm.mmap, PAGE, "rw", X + 10 * PAGE, True) == errno.ENOMEM


def test_mmap_checks_argument_types():
    mm = MM()
    with pytest.raises(TypeError, match="length"):
        mm.mmap("4096")
    with pytest.raises(ValueError, match="length"):
        mm.mmap(-1)
    with pytest.raises(ValueError, match="prot"):
        mm.mmap(PAGE, "rz")
    with pytest.raises(TypeError, match="prot"):
        mm.mmap(PAGE, 1.5)
    with pytest.raises(ValueError, match="addr"):
        mm.mmap(PAGE, fixed=True)
    assert mm.maps() == []


def test_mmap_ignores_prot_bits_it_does_not_know_as_do_mmap_does():
    mm = MM()
    a = mm.mmap(PAGE, 0x100 | 0x1)
    assert mm.maps()[0][2] == "r--p" and mm.maps()[0][0] == a


def test_mmap_hint_inside_the_first_page_is_no_hint():
    mm = MM()
    assert mm.mmap(2 * MB, addr=100) == 0x7ffff7c00000      # placed and aligned as without one


# ---- munmap ------------------------------------------------------------------------------

def test_munmap_errors():
    mm = MM()
    assert errno_of(mm.munmap, X + 1, PAGE) == errno.EINVAL
    assert errno_of(mm.munmap, X, 0) == errno.EINVAL
    mm.munmap(X, PAGE)                              # nothing mapped: fine


def test_munmap_of_part_of_a_mapping_trims_it():
    mm = MM()
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    mm.munmap(X + PAGE, PAGE)
    assert [(s - X, e - X) for s, e, _, _ in mm.maps()] == [(0, PAGE), (2 * PAGE, 4 * PAGE)]


def test_munmap_splitting_a_vma_at_max_map_count_is_enomem():
    mm = MM(Config(max_map_count=1))
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    assert errno_of(mm.munmap, X + PAGE, PAGE) == errno.ENOMEM
    mm.munmap(X, PAGE)                              # trimming an end needs no new VMA
    assert len(mm.maps()) == 1


def test_access_after_munmap_is_sigsegv():
    from mmemu import SegmentationFault
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.munmap(a, 2 * MB)
    with pytest.raises(SegmentationFault):
        mm.read(a)


# ---- mprotect ----------------------------------------------------------------------------

def test_mprotect_errors():
    mm = MM()
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    assert errno_of(mm.mprotect, X + 1, PAGE, "r") == errno.EINVAL
    assert errno_of(mm.mprotect, X, PAGE, 0x100) == errno.EINVAL
    assert errno_of(mm.mprotect, X - PAGE, 2 * PAGE, "r") == errno.ENOMEM
    mm.mprotect(X, 0, "r")                          # length 0: nothing
    mm.mprotect(X, 0, 0x100)                        # ... not even the PROT check (arch_validate_prot)
    mm.mprotect(X, 4 * PAGE, 0xB)                   # PROT_SEM is accepted
    assert len(mm.maps()) == 1


def test_mprotect_over_a_hole_changes_the_part_before_it_then_fails():
    mm = MM()
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    mm.mmap(4 * PAGE, addr=X + 5 * PAGE, fixed=True)
    assert errno_of(mm.mprotect, X, 9 * PAGE, "r") == errno.ENOMEM
    assert [p for _, _, p, _ in mm.maps()] == ["r--p", "rw-p"]


def test_mprotect_to_the_same_protection_splits_nothing():
    mm = MM()
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    mm.mprotect(X + PAGE, PAGE, "rw")
    assert len(mm.maps()) == 1


def test_prot_none_keeps_the_pages_and_faults_on_access():
    from mmemu import SegmentationFault
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.mprotect(a, 2 * MB, "none")
    assert mm.page_states(a, PAGE)[0] == PS.ANON and mm.smaps(a)["Rss"] == 4
    with pytest.raises(SegmentationFault):
        mm.read(a)
    mm.mprotect(a, 2 * MB, "rw")
    assert mm.read(a) == 0 and mm.write(a) == 0


# ---- madvise -----------------------------------------------------------------------------

def test_madvise_errors():
    mm = MM()
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    assert errno_of(mm.madvise, X + 1, PAGE, "dontneed") == errno.EINVAL
    mm.madvise(X, 0, "dontneed")
    with pytest.raises(ValueError, match="advice"):
        mm.madvise(X, PAGE, "sometimes")
    with pytest.raises(TypeError, match="advice"):
        mm.madvise(X, PAGE, 4)


def test_madvise_dontneed_over_a_hole_zaps_both_sides_then_fails():
    mm = MM()
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    mm.mmap(4 * PAGE, addr=X + 5 * PAGE, fixed=True)
    mm.write(X)
    mm.write(X + 5 * PAGE)
    assert errno_of(mm.madvise, X, 9 * PAGE, "dontneed") == errno.ENOMEM
    assert mm.status["RssAnon"] == 0


def test_madvise_hugepage_over_a_hole_flags_both_sides_then_fails():
    mm = MM()
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    mm.mmap(4 * PAGE, addr=X + 5 * PAGE, fixed=True)
    assert errno_of(mm.madvise, X, 9 * PAGE, "hugepage") == errno.ENOMEM
    assert [mm.smaps(a)["VmFlags"].endswith("hg") for a in (X, X + 5 * PAGE)] == [True, True]


def test_madvise_hugepage_on_a_hugepage_vma_splits_nothing():
    mm = MM()
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    mm.madvise(X, 4 * PAGE, "hugepage")
    mm.madvise(X + PAGE, PAGE, "hugepage")
    assert len(mm.maps()) == 1


def test_madvise_split_over_max_map_count_is_eagain():
    mm = MM(Config(max_map_count=1))
    mm.mmap(4 * PAGE, addr=X, fixed=True)
    assert errno_of(mm.madvise, X + PAGE, PAGE, "hugepage") == errno.EAGAIN


@pytest.mark.parametrize("prot,advice", [("none", "populate_read"), ("none", "populate_write"),
                                         ("r", "populate_write"), ("w", "populate_read")])
def test_populate_on_a_mapping_that_does_not_permit_it_is_einval(prot, advice):
    mm = MM()
    mm.mmap(4 * PAGE, prot, addr=X, fixed=True)
    assert errno_of(mm.madvise, X, 4 * PAGE, advice) == errno.EINVAL
    assert mm.rusage["min_flt"] == 0


def test_populate_over_a_hole_populates_up_to_it_then_enomem():
    mm = MM()
    mm.mmap(3 * PAGE, addr=X, fixed=True)
    mm.mmap(4 * PAGE, addr=X + 4 * PAGE, fixed=True)
    assert errno_of(mm.madvise, X, 8 * PAGE, "populate_write") == errno.ENOMEM
    assert mm.rusage["min_flt"] == 3
    assert mm.page_states(X, 8 * PAGE).tolist() == [PS.ANON] * 3 + [PS.NONE] * 5
    assert errno_of(mm.madvise, X + 3 * PAGE, 2 * PAGE, "populate_read") == errno.ENOMEM
    assert mm.rusage["min_flt"] == 3


def test_populate_skips_pages_already_present_with_enough_permission():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.write(a)
    mm.read(a + PAGE)
    mm.madvise(a, 2 * MB, "populate_read")
    assert mm.rusage["min_flt"] == 2 + 510
    mm.madvise(a, 2 * MB, "populate_write")        # the 511 zeropages are written
    assert mm.rusage["min_flt"] == 2 + 510 + 511


def test_populate_past_the_top_of_user_space_populates_below_then_enomem():
    mm = MM()
    a = mm.mmap(2 * PAGE, addr=0x7fffffffd000, fixed=True)
    assert errno_of(mm.madvise, a, 4 * PAGE, "populate_write") == errno.ENOMEM
    assert mm.status["RssAnon"] == 8
    assert errno_of(mm.madvise, 1 << 47, PAGE, "populate_read") == errno.ENOMEM


def test_madvise_of_length_0_succeeds_whatever_the_advice():
    mm = MM()
    for advice in ("free", "collapse", "dontneed", "populate_write"):
        mm.madvise(X, 0, advice)


# ---- smaps VmFlags, as the host shows them -------------------------------------------------

def test_vmflags_match_the_host():
    mm = MM()
    rw, ro, none = mm.mmap(2 * MB), mm.mmap(2 * MB, "r"), mm.mmap(2 * MB, "none")
    assert mm.smaps(rw)["VmFlags"] == "rd wr mr mw me ac"
    assert mm.smaps(ro)["VmFlags"] == "rd mr mw me"
    assert mm.smaps(none)["VmFlags"] == "mr mw me"
    mm.madvise(none, 2 * MB, "hugepage")
    assert mm.smaps(none)["VmFlags"] == "mr mw me hg" and mm.smaps(none)["THPeligible"] == 1
    mm.madvise(none, 2 * MB, "nohugepage")
    assert mm.smaps(none)["VmFlags"] == "mr mw me nh"


def test_smaps_of_an_unmapped_address_is_a_value_error():
    with pytest.raises(ValueError, match="no mapping"):
        MM().smaps(X)


# ---- life ----------------------------------------------------------------------------------

def test_close_unmaps_everything_and_later_calls_fail():
    mm = MM()
    a = mm.mmap(4 * MB)
    mm.madvise(a, 4 * MB, "hugepage")
    mm.write(a)
    mm.read(a + 2 * MB)
    mm.close()
    vm = mm.vmstat
    assert (vm["nr_anon_pages"], vm["nr_page_table_pages"], vm["nr_anon_transparent_hugepages"]) == (0, 0, 0)
    with pytest.raises(ClosedError):
        mm.read(a)
    mm.close()                                      # idempotent


def test_context_manager_closes():
    with MM() as mm:
        mm.write(mm.mmap(PAGE))
    assert mm.closed


def test_errors_survive_pickling():
    import pickle
    from mmemu import OutOfMemory, SegmentationFault
    for exc in (SyscallError(errno.ENOMEM, "mmap", "no room"), SegmentationFault(0x1000, 3),
                OutOfMemory(0x2000, 1)):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
