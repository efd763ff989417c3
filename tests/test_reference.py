"""Tests of the plain-Python reference model against the spec's scenario table (section 19).

Unless a test says otherwise: a fresh machine with the validation host's defaults; a 4 KiB
page is mapped and written first ("warm") so that the PUD and PMD tables of the region exist,
as they do in a real process, and the VmPTE deltas read as in the table (+4 kB per PTE table).
"""
import errno
import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest

try:
    from mmemu.reference import ReferenceMM
    from mmemu.config import Config
    from mmemu.constants import PageState as S
    from mmemu.errors import BusError, SegmentationFault, SyscallError, OutOfMemory
except ImportError:     # mmemu/__init__.py needs the compiled core: load the pure-Python modules alone
    for name in [n for n in sys.modules if n == "mmemu" or n.startswith("mmemu.")]:
        del sys.modules[name]
    pkg = types.ModuleType("mmemu")
    pkg.__path__ = [str(Path(__file__).resolve().parent.parent / "mmemu")]
    sys.modules["mmemu"] = pkg
    ReferenceMM = importlib.import_module("mmemu.reference").ReferenceMM
    Config = importlib.import_module("mmemu.config").Config
    S = importlib.import_module("mmemu.constants").PageState
    _errors = importlib.import_module("mmemu.errors")
    SegmentationFault, SyscallError, OutOfMemory = (_errors.SegmentationFault, _errors.SyscallError,
                                                    _errors.OutOfMemory)
    BusError = _errors.BusError
    pkg.PageState = S           # what mmemu.scenarios takes from the package
scenarios = importlib.import_module("mmemu.scenarios")

MiB = 1 << 20
P = 4096
HP_BASE = 0x7F0000000000        # a 2 MiB-aligned address for fixed mappings


def snap(mm):
    out = dict(mm.vmstat)
    out.update({"2048kB/" + k: v for k, v in mm.mthp_stats[2048].items()})
    out.update(mm.rusage)
    out.update({k: v for k, v in mm.status.items() if k != "VmRSS"})
    return out


def delta(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def setup(length=2 * MiB, hp=False, warm=True, **config):
    mm = ReferenceMM(Config(**config))
    if warm:
        mm.write(mm.mmap(P))
    a = mm.mmap(length)
    if length % (2 * MiB) == 0:
        assert a % (2 * MiB) == 0
    if hp:
        mm.madvise(a, length, "hugepage")
    return mm, a


def states(mm, a, length=2 * MiB):
    return list(mm.page_states(a, length))


def rss_ahp(mm, a):
    sm = mm.smaps(a)
    return sm["Rss"], sm["AnonHugePages"]


def pte(n=1):
    """The deltas of n new PTE tables."""
    return {"VmPTE": 4 * n, "nr_page_table_pages": n}


def fault(n=1):
    return {"pgfault": n, "min_flt": n}


def anon(pages):
    return {"nr_anon_pages": pages, "RssAnon": 4 * pages}


THP = {"thp_fault_alloc": 1, "nr_anon_transparent_hugepages": 1, "2048kB/anon_fault_alloc": 1,
       "2048kB/nr_anon": 1, **anon(512)}

# ---------------------------------------------------------------- S1-S8: 4 KiB pages


def test_s1_read_maps_zeropage():
    mm, a = setup()
    s0 = snap(mm)
    assert mm.read(a) == 1
    assert states(mm, a) == [S.ZERO] + [S.NONE] * 511
    assert rss_ahp(mm, a) == (0, 0)
    assert delta(s0, snap(mm)) == {**fault(), **pte()}


def test_s1_fresh_process_allocates_pud_pmd_pte_tables():
    mm, a = setup(warm=False)
    mm.read(a)
    assert mm.status["VmPTE"] == 12 and mm.vmstat["nr_page_table_pages"] == 3


def test_s2_write():
    mm, a = setup()
    s0 = snap(mm)
    assert mm.write(a) == 1
    assert states(mm, a)[:2] == [S.ANON, S.NONE]
    assert rss_ahp(mm, a) == (4, 0)
    assert delta(s0, snap(mm)) == {**fault(), **pte(), **anon(1)}
    sm = mm.smaps(a)
    assert sm["Private_Dirty"] == sm["Referenced"] == sm["Anonymous"] == sm["Pss"] == 4


def test_s3_read_then_write():
    mm, a = setup()
    s0 = snap(mm)
    assert mm.read(a) == 1 and mm.write(a) == 1
    assert states(mm, a)[0] == S.ANON
    assert delta(s0, snap(mm)) == {**fault(2), **pte(), **anon(1)}


def test_s4_read_all():
    mm, a = setup()
    s0 = snap(mm)
    faults = mm.access(np.arange(a, a + 2 * MiB, P, dtype=np.uint64), 0)
    assert faults.dtype == np.uint8 and faults.tolist() == [1] * 512
    assert states(mm, a) == [S.ZERO] * 512
    assert rss_ahp(mm, a) == (0, 0)
    assert delta(s0, snap(mm)) == {**fault(512), **pte()}


@pytest.mark.parametrize("scenario", ["S5 lock xadd", "S6 failing lock cmpxchg"])
def test_s5_s6_x86_atomic_is_one_write_fault(scenario):
    mm, a = setup()
    s0 = snap(mm)
    assert mm.atomic(a) == 1
    assert states(mm, a)[0] == S.ANON
    assert delta(s0, snap(mm)) == {**fault(), **pte(), **anon(1)}


def test_s7_populate_read():
    mm, a = setup()
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "populate_read")
    assert states(mm, a) == [S.ZERO] * 512
    assert delta(s0, snap(mm)) == {**fault(512), **pte()}


def test_s8_populate_write():
    mm, a = setup()
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "populate_write")
    assert states(mm, a) == [S.ANON] * 512
    assert rss_ahp(mm, a) == (2048, 0)
    assert delta(s0, snap(mm)) == {**fault(512), **pte(), **anon(512)}   # no thp_*

# ---------------------------------------------------------------- S9-S12: MADV_DONTNEED


def test_s9_dontneed_whole_table_frees_it():
    mm, a = setup(4 * MiB)
    mm.access(np.arange(a, a + 2 * MiB, P), 1)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "dontneed")
    assert states(mm, a, 4 * MiB) == [S.NONE] * 1024
    assert delta(s0, snap(mm)) == {**pte(-1), **anon(-512)}


def test_s9_without_pt_reclaim_keeps_the_table():
    mm, a = setup(4 * MiB, pt_reclaim=False)
    mm.access(np.arange(a, a + 2 * MiB, P), 1)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "dontneed")
    assert delta(s0, snap(mm)) == anon(-512)


def test_s10_dontneed_half_a_table():
    mm, a = setup(4 * MiB)
    mm.access(np.arange(a, a + 2 * MiB, P), 1)
    s0 = snap(mm)
    mm.madvise(a, MiB, "dontneed")
    assert states(mm, a) == [S.NONE] * 256 + [S.ANON] * 256
    assert rss_ahp(mm, a) == (1024, 0)
    assert delta(s0, snap(mm)) == anon(-256)


def test_s11_dontneed_straddling_two_tables_frees_none():
    mm, a = setup(4 * MiB)
    mm.access(np.arange(a + MiB, a + 3 * MiB, P), 1)
    s0 = snap(mm)
    mm.madvise(a + MiB, 2 * MiB, "dontneed")
    assert states(mm, a, 4 * MiB) == [S.NONE] * 1024
    assert delta(s0, snap(mm)) == anon(-512)


def test_s12_dontneed_zeropages():
    mm, a = setup()
    mm.madvise(a, 2 * MiB, "populate_read")
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "dontneed")
    assert states(mm, a) == [S.NONE] * 512
    assert delta(s0, snap(mm)) == pte(-1)

# ---------------------------------------------------------------- S13-S18: HP faults


def test_s13_hp_read_maps_huge_zeropage():
    mm, a = setup(hp=True)
    s0 = snap(mm)
    assert mm.read(a + P) == 1
    assert states(mm, a) == [S.HUGE_ZERO] * 512
    assert rss_ahp(mm, a) == (0, 0)
    # a fresh machine allocates the huge zeropage on first need
    assert delta(s0, snap(mm)) == {**fault(), **pte(), "thp_zero_page_alloc": 1}
    # a second mapping reuses it
    b = mm.mmap(2 * MiB)
    mm.madvise(b, 2 * MiB, "hugepage")
    s1 = snap(mm)
    assert mm.read(b) == 1
    assert delta(s1, snap(mm)) == {**fault(), **pte()}


def test_s14_hp_write_allocates_thp():
    mm, a = setup(hp=True)
    s0 = snap(mm)
    assert mm.write(a) == 1
    assert states(mm, a) == [S.THP] * 512
    assert rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == {**fault(), **pte(), **THP}
    sm = mm.smaps(a)
    assert sm["Private_Dirty"] == 2048 and sm["THPeligible"] == 1


def test_s15_hzp_then_write_gives_thp_618():
    mm, a = setup(hp=True)
    mm.read(a)
    s0 = snap(mm)
    assert mm.write(a + 5 * P) == 1
    assert states(mm, a) == [S.THP] * 512
    assert rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == {**fault(), **THP}        # VmPTE +0, no thp_split_pmd


def test_s15_hzp_then_write_splits_before_613():
    mm = ReferenceMM(Config.for_kernel("6.6"))
    a = mm.mmap(2 * MiB, addr=HP_BASE, fixed=True)
    mm.madvise(a, 2 * MiB, "hugepage")
    assert mm.read(a) == 1
    s0 = snap(mm)
    assert mm.write(a + 5 * P) == 1
    assert states(mm, a) == [S.ZERO] * 5 + [S.ANON] + [S.ZERO] * 506
    assert rss_ahp(mm, a) == (4, 0)
    assert delta(s0, snap(mm)) == {**fault(), "thp_split_pmd": 1, **anon(1)}
    assert mm.write(a + 6 * P) == 1                        # each further page: one more fault


def test_s16_hp_populate_read():
    mm, a = setup(hp=True)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "populate_read")
    assert states(mm, a) == [S.HUGE_ZERO] * 512
    assert delta(s0, snap(mm)) == {**fault(), **pte(), "thp_zero_page_alloc": 1}


def test_s17_hp_populate_write():
    mm, a = setup(hp=True)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "populate_write")
    assert states(mm, a) == [S.THP] * 512
    assert rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == {**fault(), **pte(), **THP}


def test_s18_hp_populate_read_then_write():
    mm, a = setup(hp=True)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "populate_read")
    assert delta(s0, snap(mm))["min_flt"] == 1
    s1 = snap(mm)
    mm.madvise(a, 2 * MiB, "populate_write")
    assert states(mm, a) == [S.THP] * 512
    assert rss_ahp(mm, a) == (2048, 2048)
    assert delta(s1, snap(mm)) == {**fault(), **THP}

# ---------------------------------------------------------------- unmapping THPs / the HZP


def test_s24_munmap_whole_thp():
    mm, a = setup(4 * MiB, hp=True)
    mm.write(a)
    mm.write(a + 512 * P)
    s0 = snap(mm)
    mm.munmap(a, 2 * MiB)
    assert states(mm, a + 2 * MiB) == [S.THP] * 512
    assert states(mm, a) == [S.NONE] * 512
    assert rss_ahp(mm, a + 2 * MiB) == (2048, 2048)
    assert delta(s0, snap(mm)) == {"nr_anon_transparent_hugepages": -1, "2048kB/nr_anon": -1,
                                   **pte(-1), **anon(-512)}
    assert len(mm.maps()) == 2 and mm.maps()[0][0] == a + 2 * MiB


def test_s27_dontneed_whole_hzp():
    mm, a = setup(hp=True)
    mm.read(a)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "dontneed")
    assert states(mm, a) == [S.NONE] * 512
    assert delta(s0, snap(mm)) == pte(-1)


def test_s26_s28_dontneed_part_of_hzp_splits_it():
    mm, a = setup(hp=True)
    mm.read(a)
    s0 = snap(mm)
    mm.madvise(a + 256 * P, P, "dontneed")
    assert states(mm, a) == [S.ZERO] * 256 + [S.NONE] + [S.ZERO] * 255
    assert delta(s0, snap(mm)) == {"thp_split_pmd": 1}
    s1 = snap(mm)
    assert mm.write(a) == 1 and mm.write(a + 256 * P) == 1      # no THP: the table exists
    assert delta(s1, snap(mm)) == {**fault(2), **anon(2)}


def test_s25_mprotect_part_of_hzp_splits_it():
    mm, a = setup(hp=True)
    mm.read(a)
    s0 = snap(mm)
    mm.mprotect(a + 256 * P, P, "r")
    assert states(mm, a) == [S.ZERO] * 512
    assert len(mm.maps()) == 4     # warm page + 3 pieces
    assert delta(s0, snap(mm)) == {"thp_split_pmd": 1}


def test_s23_mprotect_whole_thp_in_place():
    mm, a = setup(4 * MiB, hp=True)
    mm.write(a)
    s0 = snap(mm)
    mm.mprotect(a, 2 * MiB, "r")
    assert states(mm, a) == [S.THP] * 512
    assert len(mm.maps()) == 3
    assert delta(s0, snap(mm)) == {}
    with pytest.raises(SegmentationFault):
        mm.write(a)
    mm.mprotect(a, 2 * MiB, "rw")           # merges back; the exclusive THP is writable again
    assert len(mm.maps()) == 2
    assert mm.write(a) == 0

# ---------------------------------------------------------------- eligibility


def test_s50_unaligned_hp_mapping_gets_one_thp():
    mm = ReferenceMM()
    a = mm.mmap(4 * MiB, addr=HP_BASE + P, fixed=True)
    mm.madvise(a, 4 * MiB, "hugepage")
    s0 = snap(mm)
    faults = mm.access(np.arange(a, a + 4 * MiB, P), 1)
    assert int(faults.sum()) == 513
    assert states(mm, a, 4 * MiB) == [S.ANON] * 511 + [S.THP] * 512 + [S.ANON]
    assert rss_ahp(mm, a) == (4096, 2048)
    d = delta(s0, snap(mm))
    assert d["thp_fault_alloc"] == 1 and d["min_flt"] == 513 and d["RssAnon"] == 4096


def test_s51_small_hp_mapping():
    mm, a = setup(MiB, hp=True)
    assert mm.write(a) == 1
    assert mm.page_states(a, 2 * P).tolist() == [S.ANON, S.NONE]
    assert rss_ahp(mm, a) == (4, 0)
    assert mm.smaps(a)["THPeligible"] == 0


def test_s52_nohugepage_keeps_existing_thp():
    mm, a = setup(4 * MiB, hp=True)
    mm.write(a)
    mm.madvise(a, 4 * MiB, "nohugepage")
    s0 = snap(mm)
    assert mm.write(a + 512 * P) == 1
    assert states(mm, a, 4 * MiB)[:513] == [S.THP] * 512 + [S.ANON]
    assert rss_ahp(mm, a) == (2052, 2048)
    assert delta(s0, snap(mm))["min_flt"] == 1
    sm = mm.smaps(a)
    assert sm["THPeligible"] == 0 and sm["VmFlags"] == "rd wr mr mw me ac nh"


def test_s57_no_huge_zero_page_read_allocates_thp():
    mm, a = setup(hp=True, use_zero_page=False)
    s0 = snap(mm)
    assert mm.read(a) == 1
    assert states(mm, a) == [S.THP] * 512
    assert rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == {**fault(), **pte(), **THP}


def test_s58_thp_never():
    mm, a = setup(hp=True, thp="never")
    assert mm.write(a) == 1
    assert states(mm, a)[:2] == [S.ANON, S.NONE]
    assert rss_ahp(mm, a) == (4, 0)
    assert mm.smaps(a)["THPeligible"] == 0


def test_s59_2048kb_never():
    mm, a = setup(hp=True, hugepages={2048: "never"})
    assert mm.write(a) == 1 and mm.read(a + 256 * P) == 1
    st = states(mm, a)
    assert st[0] == S.ANON and st[256] == S.ZERO and st.count(S.NONE) == 510
    assert rss_ahp(mm, a) == (4, 0)


def test_s60_2048kb_always_without_madvise():
    mm, a = setup(hugepages={2048: "always"})
    s0 = snap(mm)
    assert mm.write(a) == 1
    assert states(mm, a) == [S.THP] * 512
    assert rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm))["thp_fault_alloc"] == 1
    assert mm.smaps(a)["THPeligible"] == 1


def test_s61_top_never_size_madvise():
    mm, a = setup(hp=True, thp="never", hugepages={2048: "madvise"})
    s0 = snap(mm)
    assert mm.write(a) == 1
    assert states(mm, a) == [S.THP] * 512
    assert delta(s0, snap(mm))["thp_fault_alloc"] == 1


def test_s81_page_tables_of_an_empty_512g_region():
    mm = ReferenceMM()
    a = mm.mmap(1 << 30, addr=1 << 40, fixed=True)
    s0 = snap(mm)
    assert mm.read(a) == 1
    assert delta(s0, snap(mm)) == {**fault(), **pte(3)}
    mm.munmap(a, 1 << 30)
    assert mm.status["VmPTE"] == 0 and mm.vmstat["nr_page_table_pages"] == 0

# ---------------------------------------------------------------- arm64 atomics


def test_arm64_atomic_on_untouched_page_reads_then_writes():
    mm, a = setup(arch="arm64")
    s0 = snap(mm)
    assert mm.atomic(a) == 2
    assert states(mm, a)[0] == S.ANON
    assert delta(s0, snap(mm)) == {**fault(2), **pte(), **anon(1)}
    assert mm.atomic(a) == 0


def test_arm64_atomic_on_present_readonly_entry_is_one_fault():
    mm, a = setup(arch="arm64")
    mm.read(a)
    assert mm.atomic(a) == 1
    assert mm.access([a + P, a + P], [2, 2]).tolist() == [2, 0]


def test_arm64_atomic_write_fault_patch():
    mm, a = setup(arch="arm64", atomic_write_fault=True)
    assert mm.atomic(a) == 1
    assert states(mm, a)[0] == S.ANON


def test_arm64_atomic_on_read_only_mapping_maps_zeropage_then_segv():
    mm, _ = setup(arch="arm64", atomic_write_fault=True)
    b = mm.mmap(P, "r")
    s0 = snap(mm)
    with pytest.raises(SegmentationFault) as info:
        mm.access([b], 2)
    assert info.value.index == 0 and info.value.address == b
    assert mm.page_states(b, P).tolist() == [S.ZERO]
    assert delta(s0, snap(mm))["min_flt"] == 1


def test_arm64_atomic_on_hp_range_618():
    mm, a = setup(hp=True, arch="arm64")
    s0 = snap(mm)
    assert mm.atomic(a + P) == 2
    assert states(mm, a) == [S.THP] * 512
    assert delta(s0, snap(mm)) == {**fault(2), **pte(), **THP, "thp_zero_page_alloc": 1}


def test_arm64_atomic_on_hp_range_66():
    mm = ReferenceMM(Config.for_kernel("6.6", arch="arm64"))
    a = mm.mmap(2 * MiB, addr=HP_BASE, fixed=True)
    mm.madvise(a, 2 * MiB, "hugepage")
    s0 = snap(mm)
    assert mm.atomic(a + P) == 2
    assert states(mm, a) == [S.ZERO] + [S.ANON] + [S.ZERO] * 510
    d = delta(s0, snap(mm))
    assert d["thp_split_pmd"] == 1 and d["thp_zero_page_alloc"] == 1 and d["min_flt"] == 2
    assert "thp_fault_alloc" not in d and d["RssAnon"] == 4

# ---------------------------------------------------------------- VMAs, errors, memory


def test_placement_and_merging():
    mm = ReferenceMM()
    a = mm.mmap(2 * MiB)
    assert a == 0x7FFFF7C00000
    b = mm.mmap(3 * MiB)                     # not a 2 MiB multiple: not aligned
    assert b == a - 3 * MiB
    assert [m[:3] for m in mm.maps()] == [(b, a + 2 * MiB, "rw-p")]   # merged
    mm.mprotect(a, P, "r")
    assert len(mm.maps()) == 3
    mm.mprotect(a, P, "rw")
    assert len(mm.maps()) == 1
    c = mm.mmap(P, "r", addr=0x10000000)
    assert c == 0x10000000 and mm.maps()[0][2] == "r--p"
    assert mm.smaps(c)["VmFlags"] == "rd mr mw me"


def test_anon_vma_blocks_merging():
    mm = ReferenceMM()
    a = mm.mmap(2 * P, addr=HP_BASE, fixed=True)
    mm.madvise(a + P, P, "hugepage")
    mm.write(a)
    mm.write(a + P)                    # flags differ in hg: an anon_vma of its own
    mm.madvise(a, P, "hugepage")       # same flags now, different anon_vmas: no merge
    assert len(mm.maps()) == 2


def test_syscall_errors():
    mm = ReferenceMM()
    with pytest.raises(SyscallError) as e:
        mm.mmap(0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(SyscallError) as e:
        mm.mmap(P, addr=4096, fixed=True)
    assert e.value.errno == errno.EPERM
    with pytest.raises(SyscallError) as e:
        mm.munmap(1, P)
    assert e.value.errno == errno.EINVAL
    a = mm.mmap(4 * P)
    mm.munmap(a + P, P)
    with pytest.raises(SyscallError) as e:
        mm.mprotect(a, 4 * P, "r")
    assert e.value.errno == errno.ENOMEM and mm.maps()[0][2] == "r--p"
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, 4 * P, "hugepage")
    assert e.value.errno == errno.ENOMEM and all("hg" in mm.smaps(x)["VmFlags"] for x in (a, a + 2 * P))
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, 4 * P, "populate_write")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        mm.madvise(a, P, "bogus")
    with pytest.raises(NotImplementedError):
        mm.madvise(a, P, "mergeable")
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, P, "remove")                  # MADV_REMOVE needs a shared mapping
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        mm.read(1.5)
    with pytest.raises(ValueError):
        mm.mmap(P, "rwz")


def test_max_map_count():
    mm = ReferenceMM(Config(max_map_count=2))
    a = mm.mmap(8 * P)
    mm.mprotect(a, P, "r")                  # 2 VMAs
    with pytest.raises(SyscallError) as e:
        mm.madvise(a + 4 * P, P, "hugepage")
    assert e.value.errno == errno.EAGAIN
    with pytest.raises(SyscallError) as e:
        mm.munmap(a + 4 * P, P)
    assert e.value.errno == errno.ENOMEM
    mm.munmap(a + 7 * P, P)                 # trimming the end is no new VMA


def test_segv_in_access_keeps_earlier_accesses():
    mm, a = setup()
    with pytest.raises(SegmentationFault) as e:
        mm.access([a, a + P, 0x1000, a + 2 * P], [1, 0, 0, 1])
    assert e.value.index == 2 and e.value.address == 0x1000
    assert states(mm, a)[:3] == [S.ANON, S.ZERO, S.NONE]


def test_out_of_memory_and_thp_fallback():
    mm = ReferenceMM(Config(memory=2 * MiB))  # one 2 MiB block above the 512 reserved frames
    a = mm.mmap(4 * MiB)
    mm.madvise(a, 4 * MiB, "hugepage")
    assert mm.write(a) == 1                 # the only block becomes a THP
    s0 = snap(mm)
    with pytest.raises(OutOfMemory) as e:
        mm.access([a + 2 * MiB], 1)         # no block for a THP, no page either
    assert e.value.index == 0
    d = delta(s0, snap(mm))
    # an HP VMA with defrag=madvise compacts directly; nothing is movable (a THP): it fails
    assert d == {"pgfault": 1, "thp_fault_fallback": 1, "2048kB/anon_fault_fallback": 1, **pte(),
                 "compact_stall": 1, "compact_fail": 1}
    mm.munmap(a, 2 * MiB)
    assert mm.write(a + 2 * MiB) == 1       # the table exists now: a 4K page
    assert mm.page_states(a + 2 * MiB, P).tolist() == [S.ANON]


def test_close_frees_everything():
    mm, a = setup(hp=True)
    mm.write(a)
    mm.read(mm.mmap(P))
    mm.close()
    vs = mm.vmstat
    assert vs["nr_anon_pages"] == vs["nr_page_table_pages"] == vs["nr_anon_transparent_hugepages"] == 0
    assert mm.status == {"VmRSS": 0, "RssAnon": 0, "RssShmem": 0, "VmPTE": 0}
    with pytest.raises(ValueError):
        mm.read(a)

# ================================================================ issue 4: splits, fork, madvise, khugepaged, mremap


def sp(**kw):
    """Counter deltas by their short names."""
    names = {"TSP": "thp_split_pmd", "TDSP": "thp_deferred_split_page", "TSPG": "thp_split_page",
             "TCA": "thp_collapse_alloc", "NT": "nr_anon_transparent_hugepages", "sd": "2048kB/split_deferred",
             "pm": "2048kB/nr_anon_partially_mapped", "na": "2048kB/nr_anon", "sp": "2048kB/split",
             "TFA": "thp_fault_alloc", "af": "2048kB/anon_fault_alloc"}
    return {names[k]: v for k, v in kw.items()}


def shared_private(mm, a):
    sm = mm.smaps(a)
    return (sm["Private_Clean"] + sm["Private_Dirty"], sm["Shared_Clean"] + sm["Shared_Dirty"])


def hp_thp(length=2 * MiB, **config):
    """An HP mapping whose first 2 MiB is a THP (written at p0)."""
    mm, a = setup(length, hp=True, **config)
    mm.write(a)
    return mm, a


L, T, A, Z, N, H = S.LARGE, S.THP, S.ANON, S.ZERO, S.NONE, S.HUGE_ZERO


def test_s19_dontneed_one_page_of_thp():
    mm, a = hp_thp()
    s0 = snap(mm)
    mm.madvise(a + 256 * P, P, "dontneed")
    assert states(mm, a) == [L] * 256 + [N] + [L] * 255
    assert rss_ahp(mm, a) == (2044, 0)
    assert delta(s0, snap(mm)) == {**sp(TSP=1, TDSP=1, sd=1, pm=1, NT=-1), **anon(-1)}
    mm._check_invariants()


def test_s20_dontneed_whole_thp():
    mm, a = hp_thp()
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "dontneed")
    assert states(mm, a) == [N] * 512
    assert delta(s0, snap(mm)) == {**sp(NT=-1, na=-1), **pte(-1), **anon(-512)}


def test_s21_munmap_one_page_of_thp():
    mm, a = hp_thp()
    s0 = snap(mm)
    mm.munmap(a + 256 * P, P)
    assert states(mm, a) == [L] * 256 + [N] + [L] * 255
    assert len(mm.maps()) == 3                  # the warm page + 2 pieces
    assert mm.smaps(a)["Rss"] + mm.smaps(a + 257 * P)["Rss"] == 2044
    assert delta(s0, snap(mm)) == {**sp(TSP=1, TDSP=1, sd=1, pm=1, NT=-1), **anon(-1)}


def test_s22_mprotect_one_page_of_thp():
    mm, a = hp_thp()
    s0 = snap(mm)
    mm.mprotect(a + 256 * P, P, "r")
    assert states(mm, a) == [L] * 512
    assert len(mm.maps()) == 4
    assert sum(mm.smaps(x)["Rss"] for x in (a, a + 256 * P, a + 257 * P)) == 2048
    assert delta(s0, snap(mm)) == sp(TSP=1, NT=-1)


def test_s29_cow_of_shared_thp_splits_the_writers_pmd_only():
    mm, a = hp_thp()
    child = mm.fork()
    s0 = snap(mm)
    assert mm.write(a + P) == 1
    assert states(mm, a) == [L] + [A] + [L] * 510
    assert states(child, a) == [T] * 512
    assert rss_ahp(mm, a) == (2048, 0) and shared_private(mm, a) == (4, 2044)
    assert mm.smaps(a)["Pss"] == 4 + 511 * 2
    assert rss_ahp(child, a) == (2048, 2048) and shared_private(child, a) == (4, 2044)
    assert delta(s0, snap(mm)) == {**fault(), "thp_split_pmd": 1, "nr_anon_pages": 1}
    mm._check_invariants()


def test_s30_child_writes_and_exits_parent_reuses_the_thp():
    mm, a = hp_thp()
    child = mm.fork()
    c0 = snap(child)
    assert child.write(a + P) == 1
    assert delta(c0, snap(child))["thp_split_pmd"] == 1
    child.close()
    s0 = snap(mm)
    assert mm.write(a + P) == 1
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == fault()
    assert mm.vmstat["nr_anon_transparent_hugepages"] == 1 and mm.mthp_stats[2048]["nr_anon_partially_mapped"] == 0
    mm._check_invariants()


def test_s31_hzp_after_fork_write_gives_thp():
    mm, a = setup(hp=True)
    mm.read(a)
    child = mm.fork()
    s0 = snap(mm)
    assert mm.write(a + P) == 1
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2048, 2048)
    assert states(child, a) == [H] * 512
    assert delta(s0, snap(mm)) == {**fault(), **THP}


def test_s32_cow_of_shared_small_page():
    mm, a = setup()
    mm.write(a)
    mm.write(a + P)
    child = mm.fork()
    s0 = snap(mm)
    assert mm.write(a) == 1
    assert states(mm, a)[:2] == [A, A]
    assert rss_ahp(mm, a) == (8, 0) and shared_private(mm, a) == (4, 4)
    assert delta(s0, snap(mm)) == {**fault(), "nr_anon_pages": 1}
    assert child.smaps(a)["Pss"] == 4 + 2


def test_s33_small_page_reused_after_child_exit():
    mm, a = setup()
    mm.write(a)
    mm.fork().close()
    s0 = snap(mm)
    assert mm.write(a) == 1
    assert rss_ahp(mm, a) == (4, 0) and shared_private(mm, a) == (4, 0)
    assert delta(s0, snap(mm)) == fault()


@pytest.mark.parametrize("reuse", [True, False])
def test_s34_pte_mapped_thp_after_child_exit(reuse):
    mm, a = hp_thp(reuse_large_folios=reuse)
    mm.mprotect(a + 256 * P, P, "r")
    mm.mprotect(a + 256 * P, P, "rw")
    assert len(mm.maps()) == 2
    mm.fork().close()
    s0 = snap(mm)
    assert mm.write(a + P) == 1
    if reuse:                                   # 6.15+: mapped by this process only
        assert states(mm, a) == [L] * 512 and rss_ahp(mm, a) == (2048, 0)
        assert delta(s0, snap(mm)) == fault()
    else:                                       # before: the 4K page is copied
        assert states(mm, a) == [L, A] + [L] * 510
        assert delta(s0, snap(mm)) == {**fault(), **sp(TDSP=1, sd=1, pm=1)}   # +1 copy, -1 subpage


def test_s35_collapse_of_partially_mapped_thp():
    mm, a = hp_thp()
    s0 = snap(mm)
    mm.madvise(a, P, "dontneed")
    assert delta(s0, snap(mm)) == {**sp(TSP=1, TDSP=1, sd=1, pm=1, NT=-1), **anon(-1)}
    s1 = snap(mm)
    mm.madvise(a, 2 * MiB, "collapse")
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2048, 2048)
    assert delta(s1, snap(mm)) == {**sp(TCA=1, NT=1, pm=-1), **anon(1)}


def test_s36_collapse_without_hugepage():
    mm, a = setup()
    mm.write(a)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "collapse")
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == {**sp(TCA=1, NT=1, na=1), **anon(511)}
    assert mm.smaps(a)["THPeligible"] == 0
    assert mm.khugepaged == {"pages_collapsed": 0, "full_scans": 0}


@pytest.mark.parametrize("touch", ["S37 read all", "S38 nothing"])
def test_s37_s38_collapse_without_anon_vma(touch):
    mm, a = setup()
    if touch.startswith("S37"):
        mm.madvise(a, 2 * MiB, "populate_read")
    s0 = snap(mm)
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, 2 * MiB, "collapse")
    assert e.value.errno == errno.EINVAL and delta(s0, snap(mm)) == {}


def test_s39_collapse_of_zeropage_table_once_anon_vma_exists():
    mm, a = setup(4 * MiB)
    mm.madvise(a, 2 * MiB, "populate_read")
    mm.write(a + 512 * P)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "collapse")
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2052, 2048)
    assert delta(s0, snap(mm)) == {**sp(TCA=1, NT=1, na=1), **anon(512)}


def test_s40_collapse_of_none_pmd():
    mm, a = setup(4 * MiB)
    mm.write(a + 512 * P)
    s0 = snap(mm)
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, 2 * MiB, "collapse")
    assert e.value.errno == errno.EINVAL and delta(s0, snap(mm)) == {}
    assert rss_ahp(mm, a) == (4, 0)


@pytest.mark.parametrize("op", ["S41 write", "S42 read"])
def test_s41_s42_collapse_of_pmd_mapping_is_a_noop(op):
    mm, a = setup(hp=True)
    getattr(mm, op.split()[1])(a)
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "collapse")
    assert delta(s0, snap(mm)) == {}
    assert states(mm, a) == [T if "write" in op else H] * 512


def test_s43_collapse_of_pte_mapped_thp_copies():
    mm, a = hp_thp()
    mm.mprotect(a + 256 * P, P, "r")
    mm.mprotect(a + 256 * P, P, "rw")
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "collapse")
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == sp(TCA=1, NT=1)       # the old folio freed, no TDSP
    mm._check_invariants()


def test_s44_collapse_in_nohugepage_vma():
    mm, a = setup()
    mm.madvise(a, 2 * MiB, "nohugepage")
    mm.write(a)
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, 2 * MiB, "collapse")
    assert e.value.errno == errno.EINVAL and rss_ahp(mm, a) == (4, 0)


def test_s45_khugepaged_collapses_after_madv_hugepage():
    mm, a = setup()
    mm.write(a)
    mm.madvise(a, 2 * MiB, "hugepage")
    s0 = snap(mm)
    mm.khugepaged_scan(full_scans=1)
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == {**sp(TCA=1, NT=1, na=1), **anon(511)}
    assert mm.khugepaged == {"pages_collapsed": 1, "full_scans": 1}


def test_s46_zeropage_only_vma_never_scanned():
    mm, a = setup()
    mm.madvise(a, 2 * MiB, "populate_read")
    mm.madvise(a, 2 * MiB, "hugepage")          # no anon_vma: not registered
    mm.khugepaged_scan(full_scans=1)
    assert mm.khugepaged == {"pages_collapsed": 0, "full_scans": 0}
    b = mm.mmap(2 * MiB, addr=HP_BASE, fixed=True)  # register through another VMA (not adjacent)
    mm.madvise(b, 2 * MiB, "hugepage")
    mm.write(b)
    s0 = snap(mm)
    mm.khugepaged_scan(full_scans=2)
    assert delta(s0, snap(mm)) == {} and states(mm, a) == [Z] * 512
    assert mm.khugepaged == {"pages_collapsed": 0, "full_scans": 2}


def test_s47_khugepaged_exceeds_max_ptes_none_each_pass():
    mm, a = setup(hp=True)
    mm.read(a)
    mm.madvise(a + 256 * P, P, "dontneed")
    s0 = snap(mm)
    mm.khugepaged_scan(full_scans=1)
    assert delta(s0, snap(mm)) == {"thp_scan_exceed_none_pte": 1}
    mm.khugepaged_scan(full_scans=1)
    assert delta(s0, snap(mm)) == {"thp_scan_exceed_none_pte": 2}
    assert states(mm, a) == [Z] * 256 + [N] + [Z] * 255


def test_s48_khugepaged_collapses_once_a_page_is_written():
    mm, a = setup(hp=True)
    mm.read(a)
    mm.madvise(a + 256 * P, P, "dontneed")
    s0 = snap(mm)
    assert mm.write(a) == 1
    mm.khugepaged_scan(full_scans=1)
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2048, 2048)
    assert delta(s0, snap(mm)) == {**fault(), **sp(TCA=1, NT=1, na=1), **anon(512)}


def test_s49_khugepaged_collapses_half_written_range():
    mm, a = setup()
    mm.access(np.arange(a, a + MiB, P), 1)
    mm.madvise(a, 2 * MiB, "hugepage")
    s0 = snap(mm)
    mm.khugepaged_scan()                        # one wake-up: 4096 slots
    assert states(mm, a) == [T] * 512
    assert delta(s0, snap(mm)) == {**sp(TCA=1, NT=1, na=1), **anon(256)}


def test_s70_madv_free_whole_thp():
    mm, a = hp_thp()
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "free")
    assert states(mm, a) == [T] * 512 and rss_ahp(mm, a) == (2048, 2048)
    sm = mm.smaps(a)
    assert sm["Private_Clean"] == sm["LazyFree"] == 2048 and sm["Private_Dirty"] == 0
    assert sm["Referenced"] == 0
    assert delta(s0, snap(mm)) == {}
    mm.write(a + P)                             # a write dirties the PMD again: no fault
    assert mm.smaps(a)["LazyFree"] == 0 and mm.rusage["min_flt"] == s0["min_flt"]


@pytest.mark.parametrize("remap", [True, False])
def test_s71_madv_free_half_thp_splits_the_folio(remap):
    mm, a = hp_thp(remap_zero_subpages=remap)
    s0 = snap(mm)
    mm.madvise(a, MiB, "free")
    if remap:
        assert states(mm, a) == [A] + [Z] * 511 and rss_ahp(mm, a) == (4, 0)
        assert delta(s0, snap(mm)) == {**sp(TSP=1, TSPG=1, sp=1, na=-1, NT=-1), **anon(-511)}
        assert mm.smaps(a)["LazyFree"] == 4
    else:
        assert states(mm, a) == [A] * 512 and rss_ahp(mm, a) == (2048, 0)
        assert delta(s0, snap(mm)) == sp(TSP=1, TSPG=1, sp=1, na=-1, NT=-1)
        assert mm.smaps(a)["LazyFree"] == 1024
    mm._check_invariants()


def test_s72_shrinker_splits_partially_mapped_thp():
    mm, a = hp_thp()
    mm.madvise(a + 256 * P, P, "dontneed")
    s0 = snap(mm)
    mm.drop_caches(2)
    assert states(mm, a) == [A] + [Z] * 255 + [N] + [Z] * 255
    assert rss_ahp(mm, a) == (4, 0)
    assert delta(s0, snap(mm)) == {**sp(TSPG=1, sp=1, pm=-1, na=-1), **anon(-510)}


def test_s73_shrinker_split_keeps_written_pages():
    mm, a = setup(hp=True)
    mm.access(np.arange(a, a + 2 * MiB, P), 1)
    mm.madvise(a + 256 * P, P, "dontneed")
    s0 = snap(mm)
    mm.drop_caches(2)
    assert states(mm, a) == [A] * 256 + [N] + [A] * 255 and rss_ahp(mm, a) == (2044, 0)
    assert delta(s0, snap(mm)) == sp(TSPG=1, sp=1, pm=-1, na=-1)


def test_s74_shrinker_leaves_fully_mapped_thp():
    mm, a = hp_thp()
    s0 = snap(mm)
    mm.drop_caches(2)
    assert states(mm, a) == [T] * 512 and delta(s0, snap(mm)) == {}


def test_underused_thp_split_with_lower_max_ptes_none():
    mm, a = hp_thp(khugepaged_max_ptes_none=256)
    s0 = snap(mm)
    mm.drop_caches(3)
    assert states(mm, a) == [A] + [Z] * 511
    assert delta(s0, snap(mm)) == {**sp(TSP=1, TSPG=1, sp=1, na=-1, NT=-1), "thp_underused_split_page": 1,
                                   **anon(-511)}
    mm2, b = hp_thp(khugepaged_max_ptes_none=256, shrink_underused=False)
    mm2.drop_caches(2)
    assert states(mm2, b) == [T] * 512
    mm3, c = setup(hp=True, khugepaged_max_ptes_none=256)
    mm3.access(np.arange(c, c + 256 * P, P), 1)    # 256 unwritten: not more than 256
    mm3.drop_caches(2)
    assert states(mm3, c) == [T] * 512
    mm3.drop_caches(2)                              # it left the queue: never looked at again
    mm3.madvise(c + 511 * P, P, "dontneed")          # partially mapped now: queued again
    mm3.drop_caches(2)
    assert states(mm3, c) == [A] * 256 + [Z] * 255 + [N]


def test_s75_mremap_grow_moves_the_thp_whole():
    mm, a = hp_thp()
    s0 = snap(mm)
    b = mm.mremap(a, 2 * MiB, 4 * MiB, maymove=True)
    assert b != a and b % (2 * MiB) == 0
    assert states(mm, b, 4 * MiB) == [T] * 512 + [N] * 512
    assert rss_ahp(mm, b) == (2048, 2048)
    assert delta(s0, snap(mm)) == {}
    with pytest.raises(ValueError):
        mm.smaps(a)


def test_s76_mremap_shrink_splits_the_pmd():
    mm, a = hp_thp()
    s0 = snap(mm)
    assert mm.mremap(a, 2 * MiB, MiB) == a
    assert states(mm, a, MiB) == [L] * 256
    assert rss_ahp(mm, a) == (1024, 0)
    assert delta(s0, snap(mm)) == {**sp(TSP=1, TDSP=1, sd=1, pm=1, NT=-1), **anon(-256)}

# ---------------------------------------------------------------- rules


def test_fork_copies_tables_and_shares_pages():
    mm, a = hp_thp(4 * MiB)
    mm.write(a + 512 * P + 3 * P)       # a PTE table in [2M, 4M)? no: a second THP
    b = mm.mmap(2 * MiB)                # not HP
    mm.write(b)
    mm.madvise(b + P, P, "populate_read")
    c = mm.mmap(2 * MiB, "r")           # zeropages only, no anon_vma: not copied (R74)
    mm.read(c)
    s0 = snap(mm)
    child = mm.fork()
    assert delta(s0, snap(mm)) == {"nr_page_table_pages": child.status["VmPTE"] // 4}
    # the child: PUD + PMD tables, 2 deposits, b's PTE table (c has none copied), the warm page's PTE table
    assert child.status["VmPTE"] == 4 * 6
    assert child.status["RssAnon"] == mm.status["RssAnon"] == 2 * 2048 + 4 + 4
    assert child.maps() == mm.maps()
    assert child.page_states(c, P).tolist() == [N] and mm.page_states(c, P).tolist() == [Z]
    assert child.page_states(b, 2 * P).tolist() == [A, Z]
    assert child.rusage == {"min_flt": 0, "maj_flt": 0}
    sm = child.smaps(b)
    assert sm["Referenced"] == 0 and sm["Shared_Dirty"] == 4 and sm["Pss"] == 2
    assert mm.smaps(b)["Referenced"] == 4
    # write-protected in both: each side's write faults
    assert child.write(b) == 1 and mm.write(b) == 1      # the parent's page: now refcount 1 → reuse
    assert mm.vmstat["nr_anon_pages"] == 1 + 2 * 512 + 2
    child.close()
    mm._check_invariants()


def test_written_mark_follows_cow_copy_and_populate_does_not_write():
    mm, a = setup(hp=True, khugepaged_max_ptes_none=0)
    mm.madvise(a, 2 * MiB, "populate_write")            # a THP, nothing written
    mm.write(a + 5 * P)
    child = mm.fork()
    child.read(a + 7 * P)
    assert child.write(a + 7 * P) == 1                  # COW copy of an unwritten page
    mm.madvise(a, 2 * MiB, "dontneed")                  # parent lets go
    child.drop_caches(2)                                # the folio is partially mapped: split
    st = child.page_states(a, 2 * MiB).tolist()
    assert st[5] == A and st[7] == A and st.count(Z) == 510


def test_mm_id_sharing_three_processes():
    mm, a = hp_thp()
    mm.mprotect(a + 256 * P, P, "r")
    mm.mprotect(a + 256 * P, P, "rw")                   # PTE-mapped
    c1 = mm.fork()
    c2 = mm.fork()                                      # both slots taken: the third is unattributed
    folio = mm._pmds[a >> 21][a >> 12].page
    assert folio.maybe_mapped_shared() and folio.large == 3 * 512
    c1.close()
    assert folio.maybe_mapped_shared()
    mm.close()
    assert folio.maybe_mapped_shared()                  # only c2 maps it, but no slot holds it
    assert c2.write(a) == 1 and c2.page_states(a, P).tolist() == [A]     # so it is copied
    c2._check_invariants()


def test_madv_cold_and_pageout():
    mm, a = setup()
    mm.write(a)
    mm.write(a + P)
    mm.madvise(a, P, "free")
    mm.write(a + P)
    mm.madvise(a + P, P, "free")
    mm.write(a + P)                                     # dirtied again after MADV_FREE
    mm.madvise(a, 2 * P, "cold")
    assert mm.smaps(a)["Referenced"] == 0 and mm.smaps(a)["LazyFree"] == 4
    s0 = snap(mm)
    mm.madvise(a, 2 * P, "pageout")
    assert mm.page_states(a, 2 * P).tolist() == [N, A]  # the clean lazy-free page is discarded
    assert delta(s0, snap(mm)) == anon(-1)
    assert mm.smaps(a)["LazyFree"] == 0
    mm.madvise(a + P, P, "pageout")                     # swap-backed again: stays (no swap)
    assert mm.page_states(a, 2 * P).tolist() == [N, A]
    mm2, b = hp_thp()
    mm2.madvise(b, 2 * MiB, "free")
    s0 = snap(mm2)
    mm2.madvise(b, 2 * MiB, "pageout")                  # a clean lazy-free THP: PMD split, gone
    assert delta(s0, snap(mm2)) == {**sp(NT=-1, na=-1), **anon(-512), "thp_split_pmd": 1}


def test_madv_free_skips_shared_and_cold_half_thp_splits():
    mm, a = hp_thp()
    child = mm.fork()
    s0 = snap(mm)
    mm.madvise(a, MiB, "free")
    mm.madvise(a, MiB, "cold")
    assert delta(s0, snap(mm)) == {} and mm.smaps(a)["LazyFree"] == 0
    child.close()
    mm.madvise(a, MiB, "cold")
    assert states(mm, a) == [A] + [Z] * 511
    assert mm.smaps(a)["Referenced"] == 0


def test_drop_caches_frees_unused_huge_zero_page():
    mm, a = setup(hp=True)
    child = mm.fork()
    child.read(a)                                       # the child maps the huge zeropage
    mm.drop_caches(2)
    assert mm.vmstat["thp_zero_page_alloc"] == 1
    child.close()
    mm.drop_caches(1)
    mm.read(a)                                          # still there
    assert mm.vmstat["thp_zero_page_alloc"] == 1
    mm.madvise(a, 2 * MiB, "dontneed")
    mm.drop_caches(2)                                   # mm still holds it until it exits
    mm.read(a)
    assert mm.vmstat["thp_zero_page_alloc"] == 1
    mm.madvise(a, 2 * MiB, "dontneed")
    other = mm.fork()                                   # nothing to copy: no reference
    mm.close()
    other.drop_caches(2)                                # other never mapped it: freed
    b = other.mmap(2 * MiB)
    other.madvise(b, 2 * MiB, "hugepage")
    other.read(b)
    assert other.vmstat["thp_zero_page_alloc"] == 2
    with pytest.raises(ValueError):
        other.drop_caches(4)


def test_khugepaged_limits_and_young():
    mm, a = setup(hp=True, khugepaged_max_ptes_shared=10)
    mm.madvise(a, 2 * MiB, "nohugepage")
    mm.access(np.arange(a, a + 20 * P, P), 1)
    mm.madvise(a, 2 * MiB, "hugepage")                  # registers (anon_vma, HP)
    child = mm.fork()
    s0 = snap(mm)
    child.khugepaged_scan(full_scans=1)                 # both processes: 11 shared pages > 10
    assert delta(s0, snap(mm)) == {"thp_scan_exceed_share_pte": 2}
    mm.close()                                          # the child's pages are now not shared,
    s1 = snap(child)                                    # but old (fork): no collapse, no counter
    child.khugepaged_scan(full_scans=1)
    assert delta(s1, snap(child)) == {}
    child.read(a + 3 * P)                               # young again
    child.khugepaged_scan(full_scans=1)
    assert child.page_states(a, P).tolist() == [T]
    assert child.khugepaged["pages_collapsed"] == 1


def test_khugepaged_budget_resumes_where_it_stopped():
    mm = ReferenceMM()
    a = mm.mmap(8 * MiB, addr=HP_BASE, fixed=True)
    for i in range(4):
        mm.write(a + i * 2 * MiB)                       # 4 PTE tables (not HP at fault time)
    mm.madvise(a, 8 * MiB, "hugepage")
    mm.khugepaged_scan(pages=513)                       # 1 + 512, a collapse: stops there
    assert mm.khugepaged == {"pages_collapsed": 1, "full_scans": 0}
    assert mm.page_states(a, 8 * MiB).tolist()[::512] == [T, A, A, A]
    mm.khugepaged_scan(pages=514)                       # a collapse drops the lock: the scan goes on
    assert mm.khugepaged == {"pages_collapsed": 3, "full_scans": 0}
    # one wake-up of 4096: the last block (513), the end of the list (1, a wrap), a whole pass
    # from the head (1 + 4 * 512, a second wrap), and no third pass in one wake-up
    mm.khugepaged_scan()
    assert mm.khugepaged == {"pages_collapsed": 4, "full_scans": 2}


def test_khugepaged_off_with_thp_never():
    mm, a = setup(thp="never")
    mm.write(a)
    mm.madvise(a, 2 * MiB, "hugepage")
    mm.khugepaged_scan(full_scans=3)
    assert mm.khugepaged == {"pages_collapsed": 0, "full_scans": 0}


def test_collapse_alloc_failure():
    mm = ReferenceMM(Config(memory=4 * MiB))          # two 2 MiB blocks
    a = mm.mmap(4 * MiB, addr=HP_BASE, fixed=True)
    mm.write(a)
    mm.write(a + 2 * MiB)                               # both blocks partly used
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, 4 * MiB, "collapse")
    assert e.value.errno == errno.ENOMEM and mm.vmstat["thp_collapse_alloc_failed"] == 1


def test_mremap_errors_and_in_place():
    mm, a = setup(4 * MiB)
    for args, err in [((a + 1, P, P), errno.EINVAL), ((a, P, 0), errno.EINVAL),
                      ((a, P, P, False, a + 8 * MiB), errno.EINVAL), ((a, 2 * P, 2 * P, True, a + P), errno.EINVAL),
                      ((a - 64 * MiB, P, P), errno.EFAULT), ((a, 8 * MiB, 8 * MiB), errno.EFAULT),
                      ((a, 0, P), errno.EINVAL)]:
        with pytest.raises(SyscallError) as e:
            mm.mremap(*args)
        assert e.value.errno == err, args
    mm.write(a)
    assert mm.mremap(a, 4 * MiB, 4 * MiB + P) == a      # room above? only under the warm page
    assert mm.maps()[0][:2] == (a, a + 4 * MiB + P)
    with pytest.raises(SyscallError) as e:
        mm.mremap(a, 4 * MiB + P, 8 * MiB)
    assert e.value.errno == errno.ENOMEM


def test_mremap_to_unaligned_address_splits_and_keeps_pgoff():
    mm, a = hp_thp()
    dest = HP_BASE + P
    s0 = snap(mm)
    assert mm.mremap(a, 2 * MiB, 2 * MiB, True, dest) == dest
    assert mm.page_states(dest, 2 * MiB).tolist() == [L] * 512
    # new PUD + PMD tables and two PTE tables at the destination, the old PTE table freed
    assert delta(s0, snap(mm)) == {**sp(TSP=1, NT=-1), **pte(3)}
    mm._check_invariants()
    mm.madvise(dest, 2 * MiB, "dontneed")               # two tables: two batches
    assert mm.mthp_stats[2048]["nr_anon"] == 0
    assert mm.vmstat["thp_deferred_split_page"] == 1
    b = mm.mmap(P, addr=dest + 2 * MiB, fixed=True)      # vm_pgoff differs: no merge
    assert len([m for m in mm.maps() if m[0] in (dest, b)]) == 2

# ================================================================ issue 5: mTHP


def msnap(mm, sizes=(16, 32, 64, 2048)):
    """snap() plus the per-size stats of `sizes` as "<kB>kB/<name>"."""
    out = snap(mm)
    for kb in sizes:
        out.update({f"{kb}kB/" + k: v for k, v in mm.mthp_stats[kb].items()})
    return out


def mthp_setup(length=2 * MiB, hp=False, **config):
    """setup() with 64 kB mTHPs "always" unless the config says otherwise."""
    config.setdefault("hugepages", {64: "always"})
    return setup(length, hp=hp, **config)


def test_mthp_stats_have_all_eight_sizes():
    mm = ReferenceMM()
    stats = mm.mthp_stats
    assert sorted(stats) == [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert all(set(d) == set(mm.mthp_stats[2048]) and not any(d.values()) for d in stats.values())


def test_mthp_write_fault_maps_largest_enabled_order():
    """S64: the whole aligned 64 KiB block, in one fault; only its per-size stats move."""
    mm, a = mthp_setup(hugepages={16: "always", 64: "always"})
    s0 = msnap(mm)
    assert mm.write(a + 5 * P) == 1
    assert states(mm, a)[:17] == [L] * 16 + [N]
    assert rss_ahp(mm, a) == (64, 0)
    assert delta(s0, msnap(mm)) == {**fault(), **pte(), **anon(16), "64kB/anon_fault_alloc": 1,
                                    "64kB/nr_anon": 1}
    sm = mm.smaps(a)
    assert sm["Private_Dirty"] == sm["Anonymous"] == 64 and sm["THPeligible"] == 1
    mm._check_invariants()


def test_mthp_read_fault_maps_the_zeropage():
    """R30: mTHPs are never allocated for reads."""
    mm, a = mthp_setup()
    s0 = msnap(mm)
    assert mm.read(a) == 1
    assert states(mm, a)[:2] == [Z, N]
    assert delta(s0, msnap(mm)) == {**fault(), **pte()}


def test_mthp_read_fault_without_zero_pages_allocates_mthp():
    """R30: with zero pages forbidden a read is handled as a write."""
    mm, a = mthp_setup(zero_page=False)
    assert mm.read(a) == 1
    assert states(mm, a)[:17] == [L] * 16 + [N]


def test_mthp_zeropage_pte_blocks_its_block():
    """S65: a zeropage PTE is not none: the 64 KiB block of p1 cannot be used."""
    mm, a = mthp_setup()
    mm.read(a)
    s0 = msnap(mm)
    assert mm.write(a + P) == 1
    assert mm.write(a + 16 * P) == 1
    assert states(mm, a)[:33] == [Z, A] + [N] * 14 + [L] * 16 + [N]
    assert delta(s0, msnap(mm)) == {**fault(2), **anon(17), "64kB/anon_fault_alloc": 1, "64kB/nr_anon": 1}


def test_mthp_falls_to_the_highest_order_whose_block_is_none():
    """S66, R36: blocked orders are skipped without a fallback count; a lower order whose
    block is all none is used."""
    mm, a = mthp_setup(hugepages={16: "always", 64: "always"})
    mm.read(a + 16 * P)
    mm.write(a + 17 * P)                    # both blocks of p17 hold p16's zeropage: a 4K page
    mm.read(a + 36 * P)
    s0 = msnap(mm)
    assert mm.write(a + 40 * P) == 1        # the 64 KiB block [32, 48) holds p36; [40, 44) is none
    st = states(mm, a)
    assert st[16:18] == [Z, A] and st[32:48] == [N] * 4 + [Z] + [N] * 3 + [L] * 4 + [N] * 4
    assert delta(s0, msnap(mm)) == {**fault(), **anon(4), "16kB/anon_fault_alloc": 1, "16kB/nr_anon": 1}


def test_mthp_block_must_lie_inside_the_vma():
    """R21: a VMA starting 4 KiB after a 64 KiB boundary cannot use its first block."""
    mm = ReferenceMM(Config(hugepages={64: "always"}))
    a = mm.mmap(2 * MiB - P, addr=HP_BASE + P, fixed=True)
    assert mm.write(a) == 1 and mm.write(a + 15 * P) == 1
    assert mm.page_states(a, 32 * P).tolist() == [A] + [N] * 14 + [L] * 16 + [N]


def test_mthp_populate_write_faults_once_per_block():
    """S67."""
    mm, a = mthp_setup()
    s0 = msnap(mm)
    mm.madvise(a, 2 * MiB, "populate_write")
    assert states(mm, a) == [L] * 512
    assert delta(s0, msnap(mm)) == {**fault(32), **pte(), **anon(512), "64kB/anon_fault_alloc": 32,
                                    "64kB/nr_anon": 32}


@pytest.mark.parametrize("mode, top, hp, expect", [
    ("always", "never", False, True), ("madvise", "never", False, False), ("madvise", "never", True, True),
    ("inherit", "always", False, True), ("inherit", "madvise", False, False), ("inherit", "madvise", True, True),
    ("inherit", "never", True, False), ("never", "always", True, False)])
def test_mthp_per_size_mode_follows_r19(mode, top, hp, expect):
    mm, a = mthp_setup(hp=hp, thp=top, hugepages={64: mode, 2048: "never"})
    mm.write(a)
    assert states(mm, a)[1] == (L if expect else N)
    assert mm.smaps(a)["THPeligible"] == int(expect)


@pytest.mark.parametrize("veto", ["nohugepage", "prctl", "prctl_except_advised"])
def test_mthp_vetoes_of_r20(veto):
    mm, a = mthp_setup(hugepages={64: "always", 2048: "never"})
    if veto == "nohugepage":
        mm.madvise(a, 2 * MiB, "nohugepage")
    else:
        mm.prctl("PR_SET_THP_DISABLE", 1, 2 if veto == "prctl_except_advised" else 0)
    mm.write(a)
    assert states(mm, a)[:2] == [A, N]
    if veto == "prctl_except_advised":        # still allowed in a VM_HUGEPAGE VMA
        b = mm.mmap(2 * MiB)
        mm.madvise(b, 2 * MiB, "hugepage")
        mm.write(b)
        assert mm.page_states(b, 2 * P).tolist() == [L, L]


def test_mthp_tried_in_the_same_fault_when_the_pmd_thp_falls_back():
    """R36, R38: no 2 MiB block and no compaction (defrag never): the PMD fault falls back and
    the PTE level gets an mTHP; one fault."""
    mm = ReferenceMM(Config(memory=2 * MiB, defrag="never", hugepages={64: "always"}))
    a = mm.mmap(2 * MiB, addr=HP_BASE, fixed=True)
    mm.madvise(a, 2 * MiB, "hugepage")
    assert mm.fragment_memory(1.0, 9) == 1  # the one free 2 MiB block loses its first page
    s0 = msnap(mm)
    assert mm.write(a) == 1
    assert mm.page_states(a, 17 * P).tolist() == [L] * 16 + [N]
    assert delta(s0, msnap(mm)) == {**fault(), **pte(3), **anon(16), "thp_fault_fallback": 1,
                                    "2048kB/anon_fault_fallback": 1, "64kB/anon_fault_alloc": 1,
                                    "64kB/nr_anon": 1}


def test_mthp_allocation_failure_tries_the_next_order():
    mm = ReferenceMM(Config(memory=2 * MiB, defrag="never", hugepages={64: "always", 16: "always"}))
    a = mm.mmap(2 * MiB, addr=HP_BASE, fixed=True)
    assert mm.fragment_memory(1.0, 4) == 32  # a page held in every 64 KiB: 16 KiB blocks only
    s0 = msnap(mm)
    assert mm.write(a) == 1
    assert mm.page_states(a, 5 * P).tolist() == [L] * 4 + [N]
    d = delta(s0, msnap(mm))
    assert d["64kB/anon_fault_fallback"] == 1 and d["16kB/anon_fault_alloc"] == 1
    assert "compact_stall" not in d


def test_mthp_partial_dontneed_queues_it_as_partially_mapped():
    """S68, R50, R58: per-size split_deferred and nr_anon_partially_mapped; no PMD counters."""
    mm, a = mthp_setup()
    mm.write(a)
    s0 = msnap(mm)
    mm.madvise(a + 2 * P, P, "dontneed")
    assert states(mm, a)[:4] == [L, L, N, L]
    assert rss_ahp(mm, a) == (60, 0)
    assert delta(s0, msnap(mm)) == {**anon(-1), "64kB/split_deferred": 1, "64kB/nr_anon_partially_mapped": 1}
    s1 = msnap(mm)
    mm.madvise(a + 3 * P, P, "dontneed")    # only the first transition counts
    assert delta(s1, msnap(mm)) == anon(-1)
    mm.madvise(a, 16 * P, "dontneed")       # the rest: freed, flag and all
    assert delta(s0, msnap(mm)) == {**anon(-16), "64kB/split_deferred": 1, "64kB/nr_anon": -1}
    mm._check_invariants()


def test_mthp_whole_zap_frees_it_without_split_counters():
    mm, a = mthp_setup()
    mm.write(a)
    s0 = msnap(mm)
    mm.madvise(a, 16 * P, "dontneed")
    assert delta(s0, msnap(mm)) == {**anon(-16), "64kB/nr_anon": -1}


def test_mthp_fork_shares_it_and_a_write_copies_4k():
    """S69: both sides write-protected and not exclusive; the COW copy is 4 KiB."""
    mm, a = mthp_setup()
    mm.write(a)
    child = mm.fork()
    assert child.page_states(a, 17 * P).tolist() == [L] * 16 + [N]
    s0 = msnap(mm)
    assert mm.write(a + P) == 1
    assert states(mm, a)[:3] == [L, A, L]
    assert delta(s0, msnap(mm)) == {**fault(), "nr_anon_pages": 1}     # RssAnon unchanged
    assert shared_private(mm, a) == (4, 60)
    mm._check_invariants()


@pytest.mark.parametrize("reuse", [True, False])
def test_mthp_write_after_the_child_exits_reuses_it(reuse):
    """R40 (6.15+): a folio mapped only by this process (MM_ID) is reused."""
    mm, a = mthp_setup(reuse_large_folios=reuse)
    mm.write(a)
    mm.fork().close()
    s0 = msnap(mm)
    assert mm.write(a + P) == 1
    assert states(mm, a)[:2] == ([L, L] if reuse else [L, A])
    # a copy leaves p1 of the folio mapped nowhere: partially mapped (R50)
    assert delta(s0, msnap(mm)) == ({**fault()} if reuse else
                                    {**fault(), "64kB/split_deferred": 1, "64kB/nr_anon_partially_mapped": 1})


def test_mthp_madv_free_whole_marks_it_lazy_free():
    mm, a = mthp_setup()
    mm.write(a)
    s0 = msnap(mm)
    mm.madvise(a, 16 * P, "free")
    assert delta(s0, msnap(mm)) == {}
    sm = mm.smaps(a)
    assert sm["LazyFree"] == 64 and sm["Private_Clean"] == 64


@pytest.mark.parametrize("advice", ["free", "cold", "pageout"])
def test_mthp_partial_free_cold_pageout_split_it(advice):
    """R60, R61, MT22, MT26: a partly covered mTHP mapped by this process only is split (zero
    subpages to the zeropage) before the advice acts per page; the split passes through
    "partially mapped" (split_deferred +1)."""
    mm, a = mthp_setup()
    mm.write(a + 4 * P)
    s0 = msnap(mm)
    mm.madvise(a, 8 * P, advice)
    assert states(mm, a)[:17] == [Z] * 4 + [A] + [Z] * 11 + [N]
    assert delta(s0, msnap(mm)) == {**anon(-15), "64kB/split": 1, "64kB/nr_anon": -1, "64kB/split_deferred": 1}
    if advice == "free":
        assert mm.smaps(a)["LazyFree"] == 4


def test_mthp_partial_free_skips_a_shared_one():
    mm, a = mthp_setup()
    mm.write(a)
    child = mm.fork()
    s0 = msnap(mm)
    mm.madvise(a, 8 * P, "free")
    assert delta(s0, msnap(mm)) == {} and states(mm, a)[:16] == [L] * 16
    child.close()


def test_mthp_whole_pageout_without_swap_splits_it():
    mm, a = mthp_setup()
    mm.write(a)
    s0 = msnap(mm)
    mm.madvise(a, 16 * P, "pageout")
    assert states(mm, a)[:2] == [A, Z]                  # MT25
    assert delta(s0, msnap(mm)) == {**anon(-15), "64kB/split": 1, "64kB/nr_anon": -1, "64kB/split_deferred": 1}


def test_mthp_shrinker_splits_a_partially_mapped_one():
    """R54 for mTHPs: split +1, partially mapped -1, nr_anon -1, no thp_split_page."""
    mm, a = mthp_setup()
    mm.write(a)
    mm.madvise(a + 8 * P, P, "dontneed")
    s0 = msnap(mm)
    mm.drop_caches(2)
    assert states(mm, a)[:10] == [A] + [Z] * 7 + [N, Z]
    assert delta(s0, msnap(mm)) == {**anon(-14), "64kB/split": 1, "64kB/nr_anon": -1,
                                    "64kB/nr_anon_partially_mapped": -1}
    mm._check_invariants()


def test_mthp_fully_mapped_is_not_queued_for_the_shrinker():
    mm, a = mthp_setup(khugepaged_max_ptes_none=0)     # the underused check would be on
    mm.write(a)
    s0 = msnap(mm)
    mm.drop_caches(2)
    assert delta(s0, msnap(mm)) == {}


def test_mthp_collapse_copies_its_pages_and_frees_the_folio():
    """MADV_COLLAPSE and khugepaged treat mTHP pages as present pages."""
    mm, a = mthp_setup()
    mm.write(a)
    mm.write(a + 16 * P)
    s0 = msnap(mm)
    mm.madvise(a, 2 * MiB, "collapse")
    assert states(mm, a) == [T] * 512
    assert delta(s0, msnap(mm)) == {**anon(480), "thp_collapse_alloc": 1, "nr_anon_transparent_hugepages": 1,
                                    "2048kB/nr_anon": 1, "64kB/nr_anon": -2}
    b = mm.mmap(2 * MiB)
    mm.write(b + 100 * P)
    mm.madvise(b, 2 * MiB, "hugepage")
    mm.khugepaged_scan(full_scans=1)
    assert mm.page_states(b, 2 * MiB).tolist() == [T] * 512
    assert mm.mthp_stats[64]["nr_anon"] == 0
    mm._check_invariants()


def test_contpte_blocks():
    mm, a = mthp_setup(hp=True, hugepages={64: "always", 16: "always"})
    b = mm.mmap(2 * MiB)                    # not HP: mTHPs, no THP
    mm.write(b)                             # a 64 KiB mTHP: one block
    mm.read(b + 20 * P)
    mm.write(b + 16 * P)                    # a 16 KiB mTHP: none
    assert mm.contpte_blocks(b, 2 * MiB) == 1
    assert mm.contpte_blocks(b, 15 * P) == 0 and mm.contpte_blocks(b, 16 * P) == 1
    assert mm.contpte_blocks(b + P, 2 * MiB - P) == 0
    mm.write(a)                             # a PMD-mapped THP: not counted
    assert mm.contpte_blocks(a, 2 * MiB) == 0
    mm.mprotect(a + 40 * P, P, "r")         # PTE-mapped now; one block loses its write bit
    assert mm.contpte_blocks(a, 2 * MiB) == 31
    mm.mprotect(a + 40 * P, P, "rw")        # an exclusive page is made writable again
    assert mm.contpte_blocks(a, 2 * MiB) == 32
    child = mm.fork()                       # write-protected alike on both sides: still blocks
    assert mm.contpte_blocks(a, 2 * MiB) == child.contpte_blocks(a, 2 * MiB) == 32
    mm.write(a + 40 * P)                    # a 4K copy breaks one block
    assert mm.contpte_blocks(a, 2 * MiB) == 31
    child.close()
    c = mm.mremap(b, 16 * P, 16 * P, True, HP_BASE + P)     # not 64 KiB aligned any more
    assert mm.contpte_blocks(c - P, 32 * P) == 0
    with pytest.raises(ValueError):
        mm.contpte_blocks(a + 1, P)

# ================================================================ issue 5: the buddy allocator, compaction


def bi(mm):
    return mm.buddyinfo().tolist()


def fixed_hp(mm, length=2 * MiB, hp=True):
    a = mm.mmap(length, addr=HP_BASE, fixed=True)
    if hp:
        mm.madvise(a, length, "hugepage")
    return a


def test_buddy_starts_with_maximal_blocks_above_the_reserved_2mib():
    """Frames 0..511 are reserved; Config.memory above them starts free (frames 512.. as the
    engine reads the design notes)."""
    assert bi(ReferenceMM(Config(memory=16 * MiB))) == [0] * 9 + [2, 3]     # 512, 1024..3072, 4096
    assert bi(ReferenceMM(Config(memory=4 * MiB))) == [0] * 9 + [2, 0]
    mm = ReferenceMM(Config(memory=2 * MiB))
    assert bi(mm) == [0] * 9 + [1, 0]
    assert mm.fragment_memory(0.0, 9) == 512            # nothing free at all
    with pytest.raises(OutOfMemory):
        mm.write(fixed_hp(mm, hp=False))
    assert mm.release_fragmentation() == 512 and bi(mm) == [0] * 9 + [1, 0]


def test_buddy_alloc_splits_the_lowest_smallest_block_keeping_the_lower_half():
    mm = ReferenceMM(Config(memory=14 * MiB))
    a = fixed_hp(mm, hp=False)
    mm.write(a)                                         # frame 512, from the order-9 block
    assert bi(mm) == [1] * 9 + [0, 3]
    assert [p.frame for p in mm._m.pages.values()] == [512]
    mm.write(a + P)                                     # the order-0 block: 513
    assert bi(mm) == [0] + [1] * 8 + [0, 3]
    mm.write(a + 2 * P)                                 # splits the order-1 block: 514, 515 free
    assert bi(mm) == [1, 0] + [1] * 7 + [0, 3]
    assert sorted(mm._m.pages) == [512, 513, 514]
    b = mm.mmap(2 * MiB, addr=HP_BASE + 2 * MiB, fixed=True)
    mm.madvise(b, 2 * MiB, "hugepage")
    mm.write(b)                                         # a THP: no order-9 block: splits 1024
    assert bi(mm) == [1, 0] + [1] * 8 + [2]
    mm.munmap(a, 4 * MiB)                               # everything merges back
    assert bi(mm) == [0] * 9 + [1, 3]


def test_fragment_memory_holds_pages_in_every_wholly_free_region():
    mm = ReferenceMM(Config(memory=14 * MiB))
    assert mm.fragment_memory() == 7 * 256              # 7 free 2 MiB regions, half held
    assert bi(mm) == [7 * 256] + [0] * 10
    s0 = snap(mm)
    mm.release_fragmentation()
    assert bi(mm) == [0] * 9 + [1, 3]
    assert mm.fragment_memory(1.0, 10) == 3             # one page of each free 4 MiB block
    assert bi(mm) == [3] * 9 + [4, 0]
    # every wholly free 16 KiB, all of it: not frames 1..3 beside each page held above
    assert mm.fragment_memory(0.0, 2) == 4096 - 512 - 3 - 3 * 3
    assert bi(mm) == [3, 3] + [0] * 9
    assert mm.fragment_memory() == 0
    assert mm.fragment_memory(0.7, 0) == 9              # order 0: every free page
    a = fixed_hp(mm, hp=False)
    with pytest.raises(OutOfMemory):
        mm.write(a)
    mm.release_fragmentation()
    mm.write(a)
    assert delta(s0, snap(mm))["nr_anon_pages"] == 1 and mm.memory_current == 4 * P   # held pages are not charged
    for args, exc in [((1.5,), ValueError), ((0.5, 11), ValueError), (("x",), TypeError),
                      ((0.5, 9, 1), TypeError), ((0.5, 2.0), TypeError)]:
        with pytest.raises(exc):
            mm.fragment_memory(*args)
    mm._check_invariants()


def test_fragment_memory_rounds_the_held_count():
    mm = ReferenceMM(Config(memory=2 * MiB))
    assert mm.fragment_memory(0.375, 2) == 128 * 2      # round(2.5) == 2 held per 16 KiB
    assert bi(mm) == [256] + [0] * 10                   # offsets 0, 2 held: frames 1, 3 free


def test_thp_fault_compacts_movable_fragmentation():
    """The design notes' compaction: the lowest 2 MiB whose used frames are movable and fit in
    the free frames outside it is emptied (pages migrate to the lowest order-0 blocks)."""
    mm = ReferenceMM(Config(memory=6 * MiB))
    a = fixed_hp(mm)
    assert mm.fragment_memory(0.5, 9, movable=True) == 768
    s0 = snap(mm)
    assert mm.write(a) == 1
    assert states(mm, a) == [T] * 512
    assert delta(s0, snap(mm)) == {**THP, **fault(), **pte(3), "compact_stall": 1, "compact_success": 1,
                                   "pgmigrate_success": 256}
    assert bi(mm) == [256] + [0] * 10
    # the migrated pages took the lowest order-0 blocks: 1025, 1027, ..., 1535
    assert sorted(mm._m.held)[:512] == list(range(1024, 1536))
    mm._check_invariants()


def test_compaction_fails_on_unmovable_pages_and_the_fault_falls_back():
    mm = ReferenceMM(Config(memory=6 * MiB))
    a = fixed_hp(mm)
    mm.fragment_memory(0.5, 9)
    s0 = snap(mm)
    assert mm.write(a) == 1
    assert states(mm, a)[:2] == [A, N]
    assert delta(s0, snap(mm)) == {**fault(), **pte(3), **anon(1), "compact_stall": 1, "compact_fail": 1,
                                   "thp_fault_fallback": 1, "2048kB/anon_fault_fallback": 1}


def test_compaction_needs_room_outside_the_range():
    mm = ReferenceMM(Config(memory=2 * MiB))
    a = fixed_hp(mm)
    mm.fragment_memory(0.5, 9, movable=True)            # 256 used, 256 free, all in one range
    mm.write(a)
    assert mm.vmstat["compact_fail"] == 1 and states(mm, a)[0] == A


@pytest.mark.parametrize("defrag, hp, direct", [
    ("always", False, True), ("always", True, True), ("madvise", False, False), ("madvise", True, True),
    ("defer+madvise", False, False), ("defer+madvise", True, True), ("defer", True, False),
    ("never", True, False)])
def test_defrag_decides_whether_a_fault_compacts(defrag, hp, direct):
    """R23 as vma_thp_gfp_mask has it, for THPs and mTHPs alike."""
    for hugepages in ({2048: "always"}, {2048: "never", 64: "always"}):
        mm = ReferenceMM(Config(memory=6 * MiB, defrag=defrag, hugepages=hugepages))
        a = fixed_hp(mm, hp=hp)
        mm.fragment_memory(1.0, 4, movable=True)        # no 64 KiB block anywhere
        mm.write(a)
        assert mm.vmstat["compact_stall"] == int(direct), hugepages
        assert states(mm, a)[1] == ((T if 2048 in hugepages and hugepages[2048] == "always" else L)
                                    if direct else N)


def test_compaction_migrates_anon_pages_keeping_every_mapping():
    mm = ReferenceMM(Config(memory=6 * MiB))
    a = fixed_hp(mm, hp=False)
    mm.madvise(a, 2 * MiB, "populate_write")            # frames 512..1023
    for i in range(0, 512, 2):
        mm.madvise(a + i * P, P, "dontneed")            # every other one freed
    child = mm.fork()
    mm.fragment_memory(0.5, 9)                          # 1024..2047: unmovable, half free
    b = mm.mmap(2 * MiB, addr=HP_BASE + 2 * MiB, fixed=True)
    mm.madvise(b, 2 * MiB, "hugepage")
    before = [(p.states, p.smaps) for p in (types.SimpleNamespace(states=states(x, a), smaps=x.smaps(a))
                                            for x in (mm, child))]
    s0 = snap(mm)
    mm.write(b)
    assert states(mm, b) == [T] * 512
    assert delta(s0, snap(mm)) == {**THP, **fault(), **pte(1), "compact_stall": 1, "compact_success": 1,
                                   "pgmigrate_success": 256}
    assert before == [(states(x, a), x.smaps(a)) for x in (mm, child)]
    assert min(mm._m.pages) >= 1024                     # all moved out of 512..1023
    assert child.write(a + P) == 1 and child.page_states(a + P, P).tolist() == [A]
    mm._check_invariants()


def test_huge_zeropage_allocation_compacts_and_its_failure_falls_back():
    mm = ReferenceMM(Config(memory=2 * MiB, defrag="never"))
    a = fixed_hp(mm)
    mm.fragment_memory(1.0, 9)
    s0 = snap(mm)
    assert mm.read(a) == 1
    assert states(mm, a)[:2] == [Z, N]
    assert delta(s0, snap(mm)) == {**fault(), **pte(3), "thp_zero_page_alloc_failed": 1, "thp_fault_fallback": 1,
                                   "compact_stall": 1, "compact_fail": 1}


def test_collapse_compacts_before_failing():
    mm = ReferenceMM(Config(memory=4 * MiB))
    a = mm.mmap(4 * MiB, addr=HP_BASE, fixed=True)
    mm.write(a)
    mm.write(a + 2 * MiB)                               # frames 512, 513
    mm.fragment_memory(1.0, 9)                          # frame 1024 held: no 2 MiB block
    s0 = snap(mm)
    mm.madvise(a, 2 * MiB, "collapse")
    assert states(mm, a) == [T] * 512 and states(mm, a + 2 * MiB)[0] == A
    assert delta(s0, snap(mm)) == {**anon(511), "thp_collapse_alloc": 1, "nr_anon_transparent_hugepages": 1,
                                   "2048kB/nr_anon": 1, "compact_stall": 1, "compact_success": 1,
                                   "pgmigrate_success": 2}
    with pytest.raises(SyscallError) as e:
        mm.madvise(a + 2 * MiB, 2 * MiB, "collapse")
    assert e.value.errno == errno.ENOMEM
    assert mm.vmstat["thp_collapse_alloc_failed"] == 1 and mm.vmstat["compact_fail"] == 1

# ================================================================ issue 5: the memory cgroup


def test_memory_current_counts_anon_folios_and_page_tables():
    mm = ReferenceMM(Config(hugepages={64: "always"}))
    a = fixed_hp(mm, 4 * MiB, hp=False)
    mm.madvise(a, 2 * MiB, "hugepage")                  # the upper half gets mTHPs, no THP
    mm.read(a)                                          # PUD, PMD tables, the deposit; the HZP is free
    assert mm.memory_current == 3 * P
    mm.write(a)                                         # a THP over the HZP: the deposit is kept
    assert mm.memory_current == (3 + 512) * P
    mm.write(a + 2 * MiB)                               # a PTE table and a 64 KiB mTHP
    assert mm.memory_current == (4 + 512 + 16) * P
    child = mm.fork()                                   # the child's tables; pages are shared
    assert mm.memory_current == (8 + 512 + 16) * P == child.memory_current
    child.write(a + 2 * MiB)                            # a COW copy
    assert mm.memory_current == (8 + 512 + 17) * P
    child.close()
    mm.munmap(a, 2 * MiB)
    assert mm.memory_current == (3 + 16) * P
    mm.close()
    assert mm.memory_current == 0


def test_memory_max_is_settable_but_not_below_memory_current():
    mm = ReferenceMM(memory_max=8 * MiB)
    assert mm.memory_max == 8 * MiB
    a = fixed_hp(mm, hp=False)
    mm.write(a)
    with pytest.raises(ValueError):
        mm.memory_max = 3 * P
    assert mm.memory_max == 8 * MiB
    mm.memory_max = 8 * P
    assert mm.fork().memory_max == 8 * P                # one cgroup for the machine
    mm.memory_max = None
    for bad, exc in [(-1, ValueError), (True, TypeError), (1.0, TypeError)]:
        with pytest.raises(exc):
            mm.memory_max = bad
        with pytest.raises(exc):
            ReferenceMM(memory_max=bad)


def test_s62_thp_charge_refused_falls_back_to_a_4k_page():
    mm = ReferenceMM(memory_max=3 * MiB)
    a = fixed_hp(mm, 4 * MiB)
    mm.write(a)
    s0 = snap(mm)
    assert mm.write(a + 2 * MiB) == 1
    assert states(mm, a + 2 * MiB)[:2] == [A, N]
    assert delta(s0, snap(mm)) == {**fault(), **pte(), **anon(1), "thp_fault_fallback": 1,
                                   "thp_fault_fallback_charge": 1, "2048kB/anon_fault_fallback": 1,
                                   "2048kB/anon_fault_fallback_charge": 1}


def test_s63_hzp_write_with_the_thp_charge_refused_splits_it():
    mm = ReferenceMM(memory_max=3 * MiB)
    a = fixed_hp(mm, 4 * MiB)
    mm.write(a)
    s0 = snap(mm)
    assert mm.read(a + 2 * MiB) == 1 and mm.write(a + 2 * MiB) == 1
    assert states(mm, a + 2 * MiB)[:2] == [A, Z]
    assert delta(s0, snap(mm)) == {**fault(2), **pte(), **anon(1), "thp_fault_fallback": 1,
                                   "thp_fault_fallback_charge": 1, "2048kB/anon_fault_fallback": 1,
                                   "2048kB/anon_fault_fallback_charge": 1, "thp_split_pmd": 1,
                                   "thp_zero_page_alloc": 1}


def test_mthp_charge_refused_tries_the_next_order():
    mm = ReferenceMM(Config(hugepages={16: "always", 64: "always"}), memory_max=(3 + 10) * P)
    a = fixed_hp(mm, hp=False)
    s0 = msnap(mm)
    assert mm.write(a) == 1
    assert states(mm, a)[:5] == [L] * 4 + [N]
    assert delta(s0, msnap(mm)) == {**fault(), **pte(3), **anon(4), "64kB/anon_fault_fallback": 1,
                                    "64kB/anon_fault_fallback_charge": 1, "16kB/anon_fault_alloc": 1,
                                    "16kB/nr_anon": 1}


def test_order0_charge_refused_is_an_oom_as_when_ram_runs_out():
    """A refused 4K charge is VM_FAULT_OOM like a failed allocation (the engine as built; the
    kernel): pgfault counts it, min_flt does not, and what the fault did before the charge stays
    (the tables, the THP and mTHP tries and their fallback counters)."""
    mm = ReferenceMM(Config(hugepages={16: "always"}), memory_max=3 * P)
    a = fixed_hp(mm)
    s0 = msnap(mm)
    with pytest.raises(OutOfMemory) as e:
        mm.write(a)
    assert (e.value.address, e.value.index) == (a, None)
    assert states(mm, a)[0] == N
    assert delta(s0, msnap(mm)) == {"pgfault": 1, **pte(3), "thp_fault_fallback": 1, "thp_fault_fallback_charge": 1,
                                    "2048kB/anon_fault_fallback": 1, "2048kB/anon_fault_fallback_charge": 1,
                                    "16kB/anon_fault_fallback": 1, "16kB/anon_fault_fallback_charge": 1}
    mm.memory_max = 4 * P
    assert mm.write(a) == 1 and mm.memory_current == 4 * P


def test_access_trace_oom_keeps_the_accesses_before_it():
    mm = ReferenceMM(memory_max=4 * P)
    a = fixed_hp(mm, 4 * MiB, hp=False)
    s0 = snap(mm)
    with pytest.raises(OutOfMemory) as e:
        mm.access([a, a + P, a + 2 * MiB], [1, 0, 1])   # the third needs a PTE table and a page
    assert e.value.index == 2 and e.value.address == a + 2 * MiB
    assert delta(s0, snap(mm)) == {**fault(2), "pgfault": 3, **pte(4), **anon(1)}   # its PTE table stays


def test_page_table_charges_never_fail():
    """The design notes (engine as built): page tables are charged but never refused, so
    memory_current may pass memory_max; only the 4K page is refused."""
    mm = ReferenceMM(memory_max=0)
    a = fixed_hp(mm, hp=False)
    s0 = snap(mm)
    assert mm.read(a) == 1                              # PUD, PMD, PTE tables; the zeropage
    assert mm.memory_current == 3 * P > mm.memory_max
    with pytest.raises(OutOfMemory):
        mm.write(a + P)
    assert delta(s0, snap(mm)) == {**fault(), "pgfault": 2, **pte(3)}
    with pytest.raises(ValueError):                     # not below what is charged
        mm.memory_max = 2 * P


def test_thp_deposit_is_charged_beyond_the_limit():
    """__do_huge_pmd_anonymous_page charges the THP, then the deposit (never refused)."""
    mm = ReferenceMM(memory_max=(2 + 512) * P)
    a = fixed_hp(mm)
    assert mm.write(a) == 1 and states(mm, a)[0] == T
    assert mm.memory_current == (3 + 512) * P


def test_arm64_atomic_oom_keeps_its_read_fault():
    mm = ReferenceMM(Config(arch="arm64"), memory_max=3 * P)
    a = fixed_hp(mm, hp=False)
    s0 = snap(mm)
    with pytest.raises(OutOfMemory):
        mm.atomic(a)                                    # read fault (zeropage), then the write
    assert states(mm, a)[0] == Z
    assert delta(s0, snap(mm)) == {**fault(), "pgfault": 2, **pte(3)}


@pytest.mark.parametrize("how", ["populate_write", "mlock"])
def test_population_stops_at_a_refused_charge(how):
    mm = ReferenceMM(memory_max=(3 + 10) * P)
    a = fixed_hp(mm, hp=False)
    s0 = snap(mm)
    with pytest.raises(SyscallError) as e:
        if how == "mlock":
            mm.mlock(a, 2 * MiB)
        else:
            mm.madvise(a, 2 * MiB, how)
    assert e.value.errno == (errno.EAGAIN if how == "mlock" else errno.ENOMEM)
    assert states(mm, a)[:11] == [A] * 10 + [N]
    assert delta(s0, snap(mm)) == {**fault(10), "pgfault": 11, **pte(3), **anon(10)}   # the 11th: pgfault only


def test_fork_and_mremap_charge_their_tables_beyond_the_limit():
    mm = ReferenceMM()
    a = fixed_hp(mm, hp=False)
    mm.write(a)
    mm.memory_max = mm.memory_current
    child = mm.fork()                                   # 3 tables for the child
    assert mm.memory_current == mm.memory_max + 3 * P == child.memory_current
    child.close()
    assert mm.mremap(a, 2 * MiB, 2 * MiB, True, a + (1 << 30)) == a + (1 << 30)
    assert mm.memory_current == mm.memory_max           # a new PMD table, the old one freed
    with pytest.raises(OutOfMemory):
        mm.write(a + (1 << 30) + P)


def test_collapse_with_the_charge_refused_is_ebusy():
    mm = ReferenceMM()
    a = fixed_hp(mm, hp=False)
    mm.write(a)
    mm.memory_max = mm.memory_current + 100 * P
    s0 = snap(mm)
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, 2 * MiB, "collapse")
    assert e.value.errno == errno.EBUSY
    assert delta(s0, snap(mm)) == {"thp_collapse_alloc": 1}
    mm.madvise(a, 2 * MiB, "hugepage")
    mm.khugepaged_scan(full_scans=1)
    assert mm.khugepaged["pages_collapsed"] == 0 and delta(s0, snap(mm)) == {"thp_collapse_alloc": 2}


@pytest.mark.parametrize("how", ["munmap", "mremap shrink", "dontneed"])
def test_mthp_any_partial_unmap_flags_it_once(how):
    """The design notes: zap, munmap, DONTNEED and mremap shrinking all partially map it."""
    mm, a = mthp_setup()
    mm.write(a)
    s0 = msnap(mm)
    if how == "munmap":
        mm.munmap(a + 8 * P, 8 * P)
    elif how == "mremap shrink":
        mm.mremap(a, 2 * MiB, 8 * P)
    else:
        mm.madvise(a + 8 * P, 8 * P, "dontneed")
    assert states(mm, a, 8 * P) == [L] * 8
    assert delta(s0, msnap(mm)) == {**anon(-8), "64kB/split_deferred": 1, "64kB/nr_anon_partially_mapped": 1}
    mm._check_invariants()


def test_compaction_takes_the_lowest_pageblock_without_unmovable_frames():
    """The design notes (engine as built): the pageblock is chosen first (no frame of a large
    folio, of the huge zeropage or of unmovable fragmentation), then its lowest range."""
    mm = ReferenceMM(Config(memory=6 * MiB, defrag="always", hugepages={64: "always", 2048: "never"}))
    a = fixed_hp(mm, hp=False)
    mm.write(a)                                         # a 64 KiB mTHP at frames 512..527
    mm.fragment_memory(1.0, 4, movable=True)            # frame 0 of every other 64 KiB held
    s0 = snap(mm)
    mm.write(a + 16 * P)                                # no order-4 block: compaction
    assert delta(s0, snap(mm))["pgmigrate_success"] == 1
    # not the movable range 528..543 of pageblock 1 (the mTHP is in it): 1024.. of pageblock 2
    assert mm._frames(a + 16 * P, P)[0].tolist() == [1024]
    mm._check_invariants()


def test_compaction_is_deferred_after_failures():
    """mm/compaction.c as the design notes give it: after a failure, attempts at orders >=
    compact_order_failed (0 until a success) are skipped, nothing counted, until 1 << shift
    of them have been considered; each failure doubles that (up to 1 << 6)."""
    mm = ReferenceMM(Config(memory=2 * MiB, defrag="always", hugepages={2048: "always"}))
    a = fixed_hp(mm, 16 * MiB, hp=False)
    mm.fragment_memory(1.0, 9)                          # unmovable: every compaction fails
    stalls = []
    for i in range(8):
        mm.write(a + i * 2 * MiB)                       # a THP try each, then a 4K page
        stalls.append(mm.vmstat["compact_stall"])
    assert stalls == [1, 1, 2, 2, 2, 2, 3, 3]
    assert mm.vmstat["compact_fail"] == 3 and mm.vmstat["thp_fault_fallback"] == 8


def test_split_of_a_pte_mapped_thp_passes_through_partially_mapped():
    """The design notes, measured on the 6.18 host: mprotect of a part PTE-maps the THP, then
    MADV_FREE of another part splits the folio: thp_split_page +1 and thp_deferred_split_page
    +1; a THP mapped only by its PMD is split without it (S71)."""
    mm, a = hp_thp()
    mm.mprotect(a + 256 * P, P, "r")
    s0 = snap(mm)
    mm.madvise(a, 8 * P, "free")
    d = delta(s0, snap(mm))
    assert d["thp_split_page"] == d["thp_deferred_split_page"] == d["2048kB/split_deferred"] == 1
    assert "2048kB/nr_anon_partially_mapped" not in d and d["2048kB/nr_anon"] == -1
    mm2, b = hp_thp()
    mm2.madvise(b, MiB, "free")
    assert mm2.vmstat["thp_deferred_split_page"] == 0 and mm2.vmstat["thp_split_page"] == 1


def test_contpte_blocks_need_the_same_user_bit():
    """A PROT_NONE PTE (x86 PAGE_NONE: no _PAGE_USER) breaks its block even where the write
    bits agree (all write-protected after fork)."""
    mm, a = hp_thp()
    child = mm.fork()
    mm.mprotect(a, P, "none")
    assert mm.contpte_blocks(a, 2 * MiB) == 31
    mm.mprotect(a, P, "r")
    assert mm.contpte_blocks(a, 2 * MiB) == 32
    child.close()


# ---- shared memory (shmem, memfd): the host-measured issue-5 rows and shared-memory oracles ----

@pytest.mark.parametrize("row", scenarios.ISSUE5_ROWS, ids=[scenarios.short(r[0]) for r in scenarios.ISSUE5_ROWS])
def test_issue5_row(row):
    """mTHP, shared memory, memfd and the memory cgroup as the 6.18 host showed them, laid out
    where the host run put them; the reference's own bookkeeping stays consistent."""
    run = scenarios.play_row(ReferenceMM(Config(**row[1])), row, base=0x500000000000)
    try:
        wrong = scenarios.mismatches(run, row)
        run.mm._check_invariants()
    finally:
        if run.child is not None:
            run.child.close()
    assert wrong == []


@pytest.mark.parametrize("scenario", scenarios.SHARED_ORACLE_SCENARIOS,
                         ids=[scenarios.short(s[0]) for s in scenarios.SHARED_ORACLE_SCENARIOS])
def test_shared_oracle_scenario_as_the_host_showed_it(scenario):
    """X1-X12 have no values written down: the 6.18 host is their oracle, and the engine agrees
    with it there (tests/conformance). The reference must play each step as the engine does:
    outcome, page states, faults, VmPTE change, a child's view, and at the end the VMAs, their
    smaps and the host-exact counters."""
    engine = pytest.importorskip("mmemu.mm")
    from mmemu.conformance import first_difference, play
    name, config, length, hp, steps = scenario
    want = play(engine.MM(Config(**config)), name, length, hp, steps)
    got = play(ReferenceMM(Config(**config)), name, length, hp, steps)
    assert first_difference(got, want) == ""


@pytest.mark.parametrize("scenario", scenarios.EXPLORED_ORACLE_SCENARIOS,
                         ids=[scenarios.short(s[0]) for s in scenarios.EXPLORED_ORACLE_SCENARIOS])
def test_explored_oracle_scenario_as_the_engine_plays_it(scenario):
    """E1-E11 (found by random scenarios on the 6.18 host, which tests/conformance holds the
    engine to): the reference plays them step for step as the engine does."""
    engine = pytest.importorskip("mmemu.mm")
    from mmemu.conformance import first_difference, play
    name, config, length, hp, steps = scenario
    want = play(engine.MM(Config(**config)), name, length, hp, steps)
    got = play(ReferenceMM(Config(**config)), name, length, hp, steps)
    assert first_difference(got, want) == ""


def _shmem_folios(mm, a):
    """(first page, pages) of each folio left in the page cache of the file mapped at a."""
    file = mm._vma_at(a).file
    return [(f.index, f.nr) for f in file.folios()]


@pytest.mark.parametrize("hole, kernel, left", [
    # the host's kpageflags after MADV_REMOVE of page 0: 1, 2-3, 4-7, ..., 256-511 (the
    # order-1 piece 2-3 is two 4K pages here, as the design notes have it)
    ((0, 1), "6.18", [(1, 1), (2, 1), (3, 1)] + [(1 << k, 1 << k) for k in range(2, 9)]),
    # PUNCH_HOLE of page 5: 0-3, 4, 6, 7, 8-15, ..., 256-511 (split at 5, then at 6)
    ((5, 6), "6.18", [(0, 4), (4, 1), (6, 1), (7, 1)] + [(1 << k, 1 << k) for k in range(3, 9)]),
    # half of it (ST13): the other half stays one 1 MiB folio
    ((256, 512), "6.18", [(0, 256)]),
    # before 6.15: 4K pages
    ((256, 512), "6.12", [(i, 1) for i in range(256)]),
])
def test_a_hole_splits_a_shmem_thp_into_buddy_folios(hole, kernel, left):
    mm = ReferenceMM(Config.for_kernel(kernel, shmem_enabled="always"))
    f = mm.memfd_create()
    f.ftruncate(2 * MiB)
    a = mm.mmap(2 * MiB, fd=f, addr=HP_BASE, fixed=True)
    mm.write(a)
    before = snap(mm)
    f.fallocate(hole[0] * P, (hole[1] - hole[0]) * P, punch_hole=True)
    assert _shmem_folios(mm, a) == left
    d = delta(before, snap(mm))
    assert d["thp_split_page"] == 1 and d["2048kB/split"] == 1 and d["nr_shmem"] == -(hole[1] - hole[0])
    mm._check_invariants()


def test_a_hole_through_two_shmem_thps_splits_each_at_its_cut():
    mm = ReferenceMM(Config(shmem_enabled="always"))
    f = mm.memfd_create()
    f.ftruncate(4 * MiB)
    a = mm.mmap(4 * MiB, fd=f, addr=HP_BASE, fixed=True)
    mm.write(a)
    mm.write(a + 2 * MiB)
    mm.madvise(a + 500 * P, 100 * P, "remove")         # pages 500..599
    folios = _shmem_folios(mm, a)
    assert (500, 1) not in folios and (599, 1) not in folios
    # the first THP split at page 500 (0-255, 256-383, ..., 496-499 stay), the second at its
    # first page (512) and again at 600, the page after the hole: 600, 601, 602, 603, 604-607,
    # 608-639, 640-767, 768-1023 stay
    assert folios == [(0, 256), (256, 128), (384, 64), (448, 32), (480, 16), (496, 4), (600, 1), (601, 1),
                      (602, 1), (603, 1), (604, 4), (608, 32), (640, 128), (768, 256)]
    assert mm.vmstat["thp_split_page"] == 2 and mm.vmstat["nr_shmem"] == 1024 - 100
    mm._check_invariants()


# Where the reference and the engine part (the final report of the shared-memory reference work
# has each reproducer): the reference follows the 6.18 kernel's code.

def memfd_mapping(size_pages, map_pages=1024, **config):
    mm = ReferenceMM(Config(**config))
    f = mm.memfd_create()
    f.ftruncate(size_pages * P)
    a = mm.mmap(map_pages * P, fd=f, addr=HP_BASE, fixed=True)
    return mm, f, a


@pytest.mark.parametrize("mode, hp", [("always", False), ("advise", True), ("within_size", True)])
def test_a_shmem_thp_may_cross_i_size(mode, hp):
    """shmem_huge_global_enabled: always, and advise (within_size falls through to it) in a
    VM_HUGEPAGE VMA, ask nothing of i_size; shmem maps PMDs across i_size on purpose."""
    mm, f, a = memfd_mapping(768, 2048, shmem_enabled=mode)
    if hp:
        mm.madvise(a, 2048 * P, "hugepage")
    assert mm.write(a + 512 * P) == 1
    assert states(mm, a + 512 * P) == [S.SHMEM_THP] * 512
    assert mm.vmstat["thp_file_alloc"] == 1 and mm.vmstat["nr_shmem"] == 512
    assert mm.read(a + 800 * P) == 0            # past i_size, but mapped by the PMD: no fault
    mm.madvise(a + 512 * P, 512 * P, "dontneed")
    assert mm.read(a + 600 * P) == 1            # mapped by a PMD again, though i_size ends in it
    with pytest.raises(BusError):               # a fault past i_size is SIGBUS
        mm.read(a + 1100 * P)
    assert mm.vmstat["pgfault"] == 3 and mm.rusage["min_flt"] == 2


def test_within_size_without_madv_hugepage_needs_i_size():
    mm, f, a = memfd_mapping(768, 1024, shmem_enabled="within_size")
    mm.write(a + 512 * P)
    assert states(mm, a + 512 * P, 2 * P) == [S.SHMEM, S.NONE] and mm.vmstat["thp_file_alloc"] == 0


def test_madv_collapse_of_an_empty_shmem_range_is_einval_after_the_allocation():
    """collapse_file allocates and charges the THP first, then finds the range empty
    (SCAN_TRUNCATED), which madvise_collapse turns into EINVAL."""
    mm, f, a = memfd_mapping(512, 512)
    with pytest.raises(SyscallError) as e:
        mm.madvise(a, 2 * MiB, "collapse")
    assert e.value.errno == errno.EINVAL
    assert mm.vmstat["thp_collapse_alloc"] == 1 and mm.vmstat["nr_shmem"] == 0 and mm.memory_current == 0
    mm._check_invariants()


def test_madv_collapse_of_shmem_across_i_size():
    """khugepaged.c never looks at i_size: a range with pages is collapsed though i_size ends in it."""
    mm, f, a = memfd_mapping(100, 512)
    mm.write(a + 5 * P)
    mm.madvise(a, 2 * MiB, "collapse")
    assert states(mm, a) == [S.SHMEM_THP] * 512 and mm.vmstat["nr_shmem"] == 512
    mm._check_invariants()


def test_the_split_at_a_holes_end_is_a_split_of_its_own():
    """truncate_inode_partial_folio splits the folio holding the page after the hole even when
    that page begins it; each split counts in <size>/split."""
    mm, f, a = memfd_mapping(512, 512, shmem_enabled="always")
    mm.write(a)
    f.fallocate(0, 256 * P, punch_hole=True)
    assert mm.mthp_stats[2048]["split"] == 1 and mm.mthp_stats[1024]["split"] == 1
    assert _shmem_folios(mm, a)[:3] == [(256, 1), (257, 1), (258, 1)]


def test_a_shmem_fault_charges_its_preallocated_pte_table_before_the_page():
    """__do_fault preallocates the PTE table (a memcg-charged page) before ->fault allocates and
    charges the page: with one page of room, a fault into a new 2 MiB range is an OOM."""
    mm = ReferenceMM(Config())
    a = mm.mmap(4 * MiB, shared=True, addr=HP_BASE, fixed=True)
    mm.write(a)
    mm.memory_max = mm.memory_current + P
    with pytest.raises(OutOfMemory):
        mm.write(a + 2 * MiB)
    assert mm.vmstat["nr_shmem"] == 1 and mm.memory_current + P == mm.memory_max
    mm.write(a + P)                             # the same table: the page fits
    mm._check_invariants()


def test_fallocate_keep_size_wholly_past_i_size_allocates_nothing():
    """The API clamps fallocate's range to i_size: with keep_size past it, nothing is done."""
    mm, f, a = memfd_mapping(0, 512)
    f.fallocate(128 * P, 202 * P, keep_size=True)
    assert f.size == 0 and mm.vmstat["nr_shmem"] == 0


@pytest.mark.parametrize("mode, first, n, thps", [
    ("always", 100, 50, 1),          # the whole aligned 2 MiB of page 100, though the range is 50 pages
    ("always", 511, 948, 3),         # 0-511, 512-1023, 1024-1535
    ("within_size", 0, 600, 1),      # 512-1023 is not within the range's end (600): 4K there
    ("advise", 0, 512, 0),           # no VMA, no MADV_HUGEPAGE
    ("never", 0, 512, 0),
])
def test_fallocate_allocates_shmem_thps_as_a_file_without_a_vma(mode, first, n, thps):
    """shmem_fallocate -> shmem_get_folio(SGP_FALLOC) with no VMA: shmem_huge_global_enabled
    gives always every file order (PMD-sized here) and within_size those within max(i_size, the
    write's end); shmem_alloc_and_add_folio rounds the index down to the order."""
    mm = ReferenceMM(Config(shmem_enabled=mode))
    f = mm.memfd_create()
    f.fallocate(first * P, n * P)
    vs = mm.vmstat
    assert vs["nr_shmem_hugepages"] == vs["thp_file_alloc"] == thps
    a = mm.mmap(4 * MiB, fd=f, addr=HP_BASE, fixed=True)
    if thps:
        assert mm.read(a + 700 * P if first == 511 else a + first * P) == 1     # cleared: uptodate now
        assert mm.vmstat["thp_file_mapped"] == 1
    mm._check_invariants()


@pytest.mark.parametrize("how, pmd", [("nohugepage", False), ("prctl", False), ("prctl_except_advised", True)])
def test_a_cached_shmem_thp_is_not_mapped_by_a_pmd_where_thps_are_disabled(how, pmd):
    """do_set_pmd refuses a PMD mapping where vma_thp_disabled(forced_collapse=true) says so:
    VM_NOHUGEPAGE or PR_SET_THP_DISABLE (the except-advised flavour lets it through, "as we
    already have a THP"); the folio is then mapped whole by PTEs."""
    mm = ReferenceMM(Config(shmem_enabled="always"))
    a = mm.mmap(2 * MiB, shared=True, addr=HP_BASE, fixed=True)
    mm.write(a)
    mm.madvise(a, 2 * MiB, "dontneed")
    if how == "nohugepage":
        mm.madvise(a, 2 * MiB, "nohugepage")
    else:
        mm.prctl("PR_SET_THP_DISABLE", 1, 2 if how == "prctl_except_advised" else 0)
    assert mm.read(a + 5 * P) == 1
    assert states(mm, a) == [S.SHMEM_THP if pmd else S.SHMEM] * 512
    assert mm.vmstat["thp_file_mapped"] == 1 + pmd


def test_fallocate_that_runs_out_is_an_oom_and_frees_what_is_not_uptodate():
    """The memcg OOM killer ends a process whose fallocate cannot be charged; the call frees
    the folios without data it (or an earlier fallocate) left in the range."""
    mm, f, a = memfd_mapping(1024)
    f.fallocate(0, 4 * P)
    mm.memory_max = mm.memory_current + 100 * P
    with pytest.raises(OutOfMemory):
        f.fallocate(0, 4 * MiB)
    assert mm.vmstat["nr_shmem"] == 0
    mm._check_invariants()


@pytest.mark.parametrize("flavour, eligible", [(0, 0), (2, 0)])
def test_thpeligible_of_a_shared_mapping_under_the_prctl_veto(flavour, eligible):
    mm, f, a = memfd_mapping(512, 512, shmem_enabled="always")
    mm.prctl("PR_SET_THP_DISABLE", 1, flavour)
    assert mm.smaps(a)["THPeligible"] == eligible
    mm.madvise(a, 2 * MiB, "hugepage")
    assert mm.smaps(a)["THPeligible"] == (1 if flavour else 0)
