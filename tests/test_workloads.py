"""Workloads (issue 6): the figures each one reports follow from the kernel's rules, checked
here on sizes small enough to count by hand."""
import json
import pickle

import numpy as np
import pytest

from mmemu import Config
from mmemu.workloads import TIMELINE_COLUMNS, WorkloadResult
from mmemu.workloads.pretouch import PRETOUCH_CASES, atomic_pretouch, compare_pretouch

MB = 1 << 20
RANGES = 8                     # 2 MiB ranges in the test heaps


@pytest.mark.parametrize("case, faults_per_range, thp_ranges, splits", [
    ("x86_64", 1, RANGES, 0),                               # one write fault allocates the THP
    ("arm64", 2, RANGES, 0),                                # huge zeropage, then a THP (6.13+)
    ("arm64 + atomic_write_fault", 1, RANGES, 0),
    ("arm64, 6.12 (huge zeropage split)", 2 + 511, 0, RANGES),   # split, then a COW per page
    ("arm64 + atomic_write_fault, 6.12", 1, RANGES, 0),
])
def test_atomic_pretouch_of_a_thp_heap(case, faults_per_range, thp_ranges, splits):
    kernel, fields = PRETOUCH_CASES[case]
    r = atomic_pretouch(RANGES * 2 * MB, Config.for_kernel(kernel, **fields))
    assert r.final["faults"] == faults_per_range * RANGES
    assert r.final["thp_ranges"] == thp_ranges and r.final["ranges_to_repair"] == RANGES - thp_ranges
    assert r.final["thp_split_pmd"] == splits
    assert r.final["rss_kb"] == RANGES * 2048


def test_khugepaged_repairs_the_ranges_a_huge_zeropage_split_left():
    kernel, fields = PRETOUCH_CASES["arm64, 6.12 (huge zeropage split)"]
    r = atomic_pretouch(RANGES * 2 * MB, Config.for_kernel(kernel, **fields), khugepaged_scans=2)
    assert r.final["thp_ranges_after_khugepaged"] == RANGES
    assert r.final["collapsed_by_khugepaged"] == RANGES


@pytest.mark.parametrize("arch, awf, per_page", [("x86_64", False, 1), ("arm64", False, 2), ("arm64", True, 1)])
def test_atomic_pretouch_without_thp_faults_per_page(arch, awf, per_page):
    r = atomic_pretouch(2 * MB, Config(arch=arch, atomic_write_fault=awf), hugepage=False)
    assert r.final["faults"] == 512 * per_page and r.final["thp_ranges"] == 0
    assert r.final["pte_kb"] >= 4


def test_the_timeline_samples_each_chunk_and_ends_at_the_final_figures():
    r = atomic_pretouch(4 * MB, Config(arch="arm64"), hugepage=False, chunk_pages=256)
    t = r.timeline
    assert set(t) == set(TIMELINE_COLUMNS)
    assert t["done"].tolist() == [0, 256, 512, 768, 1024]
    assert (np.diff(t["faults"]) == 512).all() and (np.diff(t["rss_kb"]) == 1024).all()
    assert t["faults"][-1] == r.final["faults"] and t["rss_kb"][-1] == r.final["rss_kb"]


def test_progress_is_reported_after_each_chunk():
    seen = []
    atomic_pretouch(2 * MB, chunk_pages=128, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(128, 512), (256, 512), (384, 512), (512, 512)]


def test_a_workload_result_pickles_and_turns_into_json_and_a_summary():
    r = atomic_pretouch(2 * MB, Config(arch="arm64"))
    copy = pickle.loads(pickle.dumps(r))
    assert isinstance(copy, WorkloadResult) and copy.final == r.final
    assert all((copy.timeline[k] == r.timeline[k]).all() for k in TIMELINE_COLUMNS)
    doc = json.loads(r.to_json())
    assert doc["final"]["faults"] == 2 and doc["config"]["arch"] == "arm64"
    row = r.summary()
    assert row["workload"] == "atomic_pretouch" and row["arch"] == "arm64" and row["faults"] == 2
    assert "kernel" not in row                             # only settings that differ from the defaults


def test_compare_pretouch_runs_every_case():
    results = compare_pretouch(2 * MB)
    assert list(results) == list(PRETOUCH_CASES)


@pytest.mark.parametrize("kwargs", [dict(heap=3 * MB), dict(heap=0), dict(heap=-2 * MB), dict(stride=3),
                                    dict(stride=0), dict(chunk_pages=0), dict(khugepaged_scans=-1),
                                    dict(heap=2.0 * MB), dict(stride=True)])
def test_atomic_pretouch_refuses_bad_arguments(kwargs):
    kwargs.setdefault("heap", 2 * MB)
    with pytest.raises(ValueError):
        atomic_pretouch(**kwargs)


def test_pmd_mapped_kb_is_what_the_summed_smaps_show():
    # the timeline's huge column is read from the PMDs alone; it must equal smaps_rollup
    from mmemu import MM
    from mmemu.workloads import rollup
    mm = MM(Config(shmem_enabled="always"))
    anon = mm.mmap(8 * MB)
    mm.madvise(anon, 8 * MB, "hugepage")
    mm.write(anon)                                   # a THP
    mm.read(anon + 2 * MB)                           # the huge zeropage: never counted
    mm.write(anon + 4 * MB)
    mm.munmap(anon + 4 * MB + 4096, 4096)            # a split PMD: PTE-mapped now
    shared = mm.mmap(4 * MB, shared=True)
    mm.read(shared + 2 * MB)                         # a shmem THP
    with mm.fork() as child:
        child.write(anon + 4096)                     # the child's COW splits its PMD, not ours
        for who in (mm, child):
            smaps = rollup(who)
            assert who.pmd_mapped_kb() == {"AnonHugePages": smaps["AnonHugePages"],
                                           "ShmemPmdMapped": smaps["ShmemPmdMapped"]}
    assert mm.pmd_mapped_kb() == {"AnonHugePages": 2048, "ShmemPmdMapped": 2048}
