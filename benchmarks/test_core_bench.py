"""Core workloads, each measured in the same run against two baselines on the same trace:

* ``floor``: numpy reading the trace once (``np.bitwise_or.reduce``), the memory-bandwidth floor
  (for the random trace (c): numpy gathering one page-table-sized entry per access, the bound
  of any walk);
* ``reference``: the plain-Python reference model (on a prefix of the trace, as it is slow).

Each benchmark records ``accesses`` (or ``faults``) in extra_info so rates can be compared;
``python benchmarks/report.py BENCH.json`` prints rates and the goals of issue 2.

Run:  pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
"""
import numpy as np

from mmemu import MM, READ, WRITE, Config
from mmemu.reference import ReferenceMM

GB, MB, PAGE = 1 << 30, 1 << 20, 4096
REF_PREFIX = 20_000          # accesses the reference model replays per round

# ---- traces ----------------------------------------------------------------------------------


def stride8_1g(base):
    return base + np.arange(0, GB, 8, dtype=np.uint64)


def per_page(base, size=4 * GB):
    return base + np.arange(0, size, PAGE, dtype=np.uint64)


def random_4g(base, n=20_000_000, seed=1):
    rng = np.random.default_rng(seed)
    addrs = base + (rng.integers(0, 4 * GB, n, dtype=np.uint64) & ~np.uint64(7))
    ops = rng.integers(0, 3, n, dtype=np.uint8)
    return addrs, ops


def populated(size=4 * GB, config=None):
    mm = MM(config or Config(memory=8 * GB))
    a = mm.mmap(size)
    mm.madvise(a, size, "populate_write")
    return mm, a


def ref_populated(size):
    # the reference model populated by the engine's placement rules: same address
    ref = ReferenceMM(Config(memory=8 * GB))
    a = ref.mmap(size)
    return ref, a


def record(benchmark, workload, kind, n, unit="accesses"):
    benchmark.group = workload
    benchmark.extra_info.update({"workload": workload, "kind": kind, unit: int(n)})


# ---- (a) 8-byte-stride reads over 1 GiB of populated memory ------------------------------------

def test_a_stride8_reads_mmemu(benchmark):
    mm, a = populated(GB)
    trace = stride8_1g(a)
    record(benchmark, "a: 8-byte reads over 1 GiB", "mmemu", trace.size)
    out = benchmark.pedantic(mm.access, (trace, READ), rounds=5, iterations=1)
    assert out.sum() == 0


def test_a_stride8_reads_floor(benchmark):
    trace = stride8_1g(0x7fff00000000)
    record(benchmark, "a: 8-byte reads over 1 GiB", "floor", trace.size)
    benchmark.pedantic(np.bitwise_or.reduce, (trace,), rounds=5, iterations=1)


# ---- (b) one read per 4K page over 4 GiB, populated ---------------------------------------------

def test_b_page_reads_mmemu(benchmark):
    mm, a = populated()
    trace = per_page(a)
    record(benchmark, "b: one read per page over 4 GiB", "mmemu", trace.size)
    out = benchmark.pedantic(mm.access, (trace, READ), rounds=5, iterations=1)
    assert out.sum() == 0


def test_b_page_reads_reference(benchmark):
    ref, a = ref_populated(REF_PREFIX * PAGE)
    trace = per_page(a, REF_PREFIX * PAGE)
    ref.access(trace, WRITE)
    record(benchmark, "b: one read per page over 4 GiB", "reference", trace.size)
    benchmark.pedantic(ref.access, (trace, READ), rounds=3, iterations=1)


# ---- (c) random reads, writes and atomics over 4 GiB, populated ---------------------------------

def test_c_random_mixed_mmemu(benchmark):
    mm, a = populated()
    addrs, ops = random_4g(a)
    record(benchmark, "c: random read/write/atomic over 4 GiB", "mmemu", addrs.size)
    out = benchmark.pedantic(mm.access, (addrs, ops), rounds=5, iterations=1)
    assert out.sum() == 0


def test_c64_random_mixed_mmemu(benchmark):
    """(c) over 64 MiB: the same random trace when the page tables stay in the CPU cache."""
    mm, a = populated(64 * MB)
    rng = np.random.default_rng(1)
    addrs = a + (rng.integers(0, 64 * MB, 20_000_000, dtype=np.uint64) & ~np.uint64(7))
    ops = rng.integers(0, 3, addrs.size, dtype=np.uint8)
    record(benchmark, "c64: random read/write/atomic over 64 MiB", "mmemu", addrs.size)
    benchmark.pedantic(mm.access, (addrs, ops), rounds=5, iterations=1)


def test_c_random_mixed_floor(benchmark):
    """What a random walk cannot beat: numpy gathering one 8-byte entry per access from an
    array the size of the 4 GiB mapping's PTE tables (8 MiB), at the trace's page numbers."""
    addrs, _ = random_4g(0)
    entries = np.ones((4 * GB) // PAGE, np.uint64)
    pages = (addrs >> np.uint64(12)).astype(np.intp)
    record(benchmark, "c: random read/write/atomic over 4 GiB", "floor", addrs.size)
    benchmark.pedantic(np.take, (entries, pages), rounds=5, iterations=1)


def test_c_random_mixed_reference(benchmark):
    ref, a = ref_populated(4 * GB)
    addrs, ops = random_4g(a, n=REF_PREFIX)
    ref.access(addrs, WRITE)           # populate the pages the prefix touches
    record(benchmark, "c: random read/write/atomic over 4 GiB", "reference", addrs.size)
    benchmark.pedantic(ref.access, (addrs, ops), rounds=3, iterations=1)


# ---- first touch: (d) one write per 4K page over 4 GiB ------------------------------------------

def _fresh(size, config=None, ref=False, hugepage=False):
    mm = (ReferenceMM if ref else MM)(config or Config(memory=8 * GB))
    a = mm.mmap(size)
    if hugepage:
        mm.madvise(a, size, "hugepage")
    return mm, a


def test_d_first_touch_writes_mmemu(benchmark):
    def setup():
        mm, a = _fresh(4 * GB)
        return (mm, per_page(a)), {}
    record(benchmark, "d: first-touch write per page over 4 GiB", "mmemu", (4 * GB) // PAGE, "faults")
    benchmark.pedantic(lambda mm, t: mm.access(t, WRITE), setup=setup, rounds=5, iterations=1)


def test_d_first_touch_writes_reference(benchmark):
    def setup():
        ref, a = _fresh(REF_PREFIX * PAGE, ref=True)
        return (ref, per_page(a, REF_PREFIX * PAGE)), {}
    record(benchmark, "d: first-touch write per page over 4 GiB", "reference", REF_PREFIX, "faults")
    benchmark.pedantic(lambda ref, t: ref.access(t, WRITE), setup=setup, rounds=3, iterations=1)


# ---- (e) one write per 2 MiB with THP -------------------------------------------------------------

def thp_trace(a, size):
    return a + np.arange(0, size, 2 * MB, dtype=np.uint64)


def test_e_first_touch_thp_mmemu(benchmark):
    def setup():
        mm, a = _fresh(4 * GB, hugepage=True)
        return (mm, thp_trace(a, 4 * GB)), {}
    record(benchmark, "e: first-touch write per 2 MiB, THP, over 4 GiB", "mmemu", 2048, "faults")
    benchmark.pedantic(lambda mm, t: mm.access(t, WRITE), setup=setup, rounds=20, iterations=1)


def test_e_first_touch_thp_reference(benchmark):
    def setup():
        ref, a = _fresh(4 * GB, ref=True, hugepage=True)
        return (ref, thp_trace(a, 4 * GB)), {}
    record(benchmark, "e: first-touch write per 2 MiB, THP, over 4 GiB", "reference", 2048, "faults")
    benchmark.pedantic(lambda ref, t: ref.access(t, WRITE), setup=setup, rounds=3, iterations=1)


# ---- (f) read then write per 4K page ----------------------------------------------------------

def read_then_write(a, size):
    addrs = np.repeat(per_page(a, size), 2)
    ops = np.tile(np.array([READ, WRITE], np.uint8), addrs.size // 2)
    return addrs, ops


def test_f_read_then_write_mmemu(benchmark):
    def setup():
        mm, a = _fresh(4 * GB)
        return (mm, *read_then_write(a, 4 * GB)), {}
    record(benchmark, "f: read then write per page over 4 GiB", "mmemu", 2 * (4 * GB) // PAGE)
    benchmark.pedantic(lambda mm, t, o: mm.access(t, o), setup=setup, rounds=5, iterations=1)


def test_f_read_then_write_reference(benchmark):
    def setup():
        ref, a = _fresh(REF_PREFIX * PAGE // 2, ref=True)
        return (ref, *read_then_write(a, REF_PREFIX * PAGE // 2)), {}
    record(benchmark, "f: read then write per page over 4 GiB", "reference", REF_PREFIX)
    benchmark.pedantic(lambda ref, t, o: ref.access(t, o), setup=setup, rounds=3, iterations=1)


# ---- state per populated page ------------------------------------------------------------------

def test_state_bytes_per_populated_page(benchmark, rss_kb):
    """Host memory the emulator spends per populated 4K page: VmRSS of this process before and
    after populating 4 GiB by writes (the trace is built before the first reading)."""
    def run():
        mm = MM(Config(memory=8 * GB))
        a = mm.mmap(4 * GB)
        trace = per_page(a)
        before = rss_kb()
        mm.access(trace, WRITE)
        after = rss_kb()
        del trace
        return mm, (after - before) * 1024 / ((4 * GB) // PAGE)
    record(benchmark, "state bytes per populated 4K page", "mmemu", (4 * GB) // PAGE, "pages")
    mm, per_page_bytes = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_page"] = round(per_page_bytes, 2)
    assert mm.status["RssAnon"] == 4 * GB // 1024
