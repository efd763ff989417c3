"""Workloads (issue 6), each measured in the same run against its baseline: the same accesses
given to ``MM.access`` in one call on a fresh MM (what the workload would cost with no image
to build, no chunks and no timeline). The ratio is the workload layer's overhead.

Run:  pytest benchmarks/test_workloads_bench.py --benchmark-only
"""
import numpy as np
import pytest

from mmemu import ATOMIC, MM, READ, WRITE, Config
from mmemu.workloads import GuestImage, Timeline, atomic_pretouch, migrate, rollup

GB, PAGE = 1 << 30, 4096
GUEST = 4 * GB


def _record(benchmark, group, kind, pages):
    benchmark.group = group
    benchmark.extra_info.update({"workload": group, "kind": kind, "pages": pages})


def test_migration_precopy_4g(benchmark):
    image = GuestImage(size=GUEST, zero=0.6, layout="clustered")
    benchmark.pedantic(lambda: migrate(image, "precopy"), rounds=3, iterations=1)
    _record(benchmark, "migration precopy 4 GiB", "workload", GUEST // PAGE)


def test_migration_precopy_4g_baseline(benchmark):
    image = GuestImage(size=GUEST, zero=0.6, layout="clustered")
    ops = np.where(image.zero, READ, WRITE).astype(np.uint8)

    def run():
        mm = MM(Config(memory=8 * GB))
        a = mm.mmap(GUEST)
        mm.madvise(a, GUEST, "hugepage")
        mm.access(a + np.arange(0, GUEST, PAGE, dtype=np.uint64), ops)
        mm.close()
    benchmark.pedantic(run, rounds=3, iterations=1)
    _record(benchmark, "migration precopy 4 GiB", "baseline", GUEST // PAGE)


def test_pretouch_arm64_1g(benchmark):
    benchmark.pedantic(lambda: atomic_pretouch(GB, Config(arch="arm64"), hugepage=False), rounds=3, iterations=1)
    _record(benchmark, "pretouch arm64 1 GiB, 4K pages", "workload", GB // PAGE)


def test_pretouch_arm64_1g_baseline(benchmark):
    def run():
        mm = MM(Config(arch="arm64"))
        a = mm.mmap(GB)
        mm.access(a + np.arange(0, GB, PAGE, dtype=np.uint64), ATOMIC)
        mm.close()
    benchmark.pedantic(run, rounds=3, iterations=1)
    _record(benchmark, "pretouch arm64 1 GiB, 4K pages", "baseline", GB // PAGE)


@pytest.fixture(scope="module")
def guest_of_4k_pages():
    """An MM with 4 GiB written in 4K pages (THP never): 1M PTEs for a sample to walk."""
    mm = MM(Config(thp="never", memory=8 * GB))
    a = mm.mmap(GUEST)
    mm.access(a + np.arange(0, GUEST, PAGE, dtype=np.uint64), WRITE)
    yield mm
    mm.close()


def test_timeline_sample_4g_of_4k_pages(benchmark, guest_of_4k_pages):
    # what a workload's timeline pays after each chunk: status, rusage and the huge mappings,
    # read from the PMD level (MM.pmd_mapped_kb)
    timeline = Timeline(guest_of_4k_pages)
    benchmark.pedantic(lambda: timeline.sample(0), rounds=20, iterations=1)
    _record(benchmark, "timeline sample, 4 GiB of 4K pages", "workload", GUEST // PAGE)


def test_timeline_sample_4g_of_4k_pages_baseline(benchmark, guest_of_4k_pages):
    # the same figures from smaps summed over the VMAs, as the timeline read them before
    mm = guest_of_4k_pages
    benchmark.pedantic(lambda: (mm.status, mm.rusage, rollup(mm)), rounds=20, iterations=1)
    _record(benchmark, "timeline sample, 4 GiB of 4K pages", "baseline", GUEST // PAGE)
