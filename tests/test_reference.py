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
    from mmemu.errors import SegmentationFault, SyscallError, OutOfMemory
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
        mm.madvise(a, P, "remove")
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
    mm = ReferenceMM(Config(memory=2 * MiB))
    a = mm.mmap(4 * MiB)
    mm.madvise(a, 4 * MiB, "hugepage")
    assert mm.write(a) == 1                 # the only block becomes a THP
    s0 = snap(mm)
    with pytest.raises(OutOfMemory) as e:
        mm.access([a + 2 * MiB], 1)         # no block for a THP, no page either
    assert e.value.index == 0
    d = delta(s0, snap(mm))
    assert d == {"pgfault": 1, "thp_fault_fallback": 1, "2048kB/anon_fault_fallback": 1, **pte()}
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
    assert mm.status == {"VmRSS": 0, "RssAnon": 0, "VmPTE": 0}
    with pytest.raises(ValueError):
        mm.read(a)
