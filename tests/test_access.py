"""The bulk path: mm.access replays traces in C, as the single accesses would, and stops exactly at
a SIGSEGV."""
import numpy as np
import pytest

from mmemu import ATOMIC, MM, READ, WRITE, Config, PageState, SegmentationFault

MB = 1 << 20
PAGE = 4096
PS = PageState


def test_access_returns_the_faults_of_each_access_as_uint8():
    mm = MM()
    a = mm.mmap(2 * MB)
    out = mm.access(np.array([a, a, a + PAGE, a + PAGE], np.uint64), np.array([READ, WRITE, WRITE, READ], np.uint8))
    assert out.dtype == np.uint8 and out.tolist() == [1, 1, 1, 0]


def test_access_with_one_op_for_all():
    mm = MM(Config(arch="arm64"))
    a = mm.mmap(2 * MB)
    assert mm.access([a, a + PAGE, a + PAGE + 8], ATOMIC).tolist() == [2, 2, 0]


@pytest.mark.parametrize("arch,awf", [("x86_64", False), ("arm64", False), ("arm64", True)])
@pytest.mark.parametrize("hp", [False, True])
def test_access_agrees_with_single_accesses(arch, awf, hp):
    rng = np.random.default_rng(7)
    cfg = Config(arch=arch, atomic_write_fault=awf)
    bulk, single = MM(cfg), MM(cfg)
    for mm in (bulk, single):
        a = mm.mmap(8 * MB)
        if hp:
            mm.madvise(a, 8 * MB, "hugepage")
    addrs = a + rng.integers(0, 8 * MB, 5000).astype(np.uint64)
    ops = rng.integers(0, 3, 5000).astype(np.uint8)
    got = bulk.access(addrs, ops)
    want = [(single.read, single.write, single.atomic)[o](int(x)) for x, o in zip(addrs, ops)]
    assert got.tolist() == want
    assert bulk.vmstat == single.vmstat and bulk.status == single.status
    assert (bulk.page_states(a, 8 * MB) == single.page_states(a, 8 * MB)).all()


def test_sigsegv_in_a_trace_carries_its_index_and_stops_there():
    mm = MM()
    a = mm.mmap(2 * MB)
    b = mm.mmap(2 * MB, "r")
    trace = np.array([a, a + PAGE, b, a + 2 * PAGE], np.uint64)
    with pytest.raises(SegmentationFault) as info:
        mm.access(trace, WRITE)
    assert (info.value.index, info.value.address) == (2, b)
    assert info.value.faults.tolist() == [1, 1, 0]
    assert mm.page_states(a, 3 * PAGE).tolist() == [PS.ANON, PS.ANON, PS.NONE]


def test_addresses_beyond_user_space_are_sigsegv():
    mm = MM()
    for addr in (1 << 47, (1 << 64) - 1, 0):
        with pytest.raises(SegmentationFault):
            mm.access(np.array([addr], np.uint64))


def test_bad_traces_are_refused_before_any_access():
    mm = MM()
    a = mm.mmap(2 * MB)
    good = np.array([a, a + PAGE], np.uint64)
    cases = [
        (TypeError, (np.array([1.0, 2.0]),), {}),
        (ValueError, (np.array([a, -1], np.int64),), {}),
        (ValueError, (good.reshape(1, 2),), {}),
        (ValueError, (good, np.array([0, 3], np.uint8)), {}),
        (ValueError, (good, np.array([0], np.uint8)), {}),
        (TypeError, (good, np.array([0.0, 1.0])), {}),
        (ValueError, (good, 7), {}),
        (TypeError, (good, "read"), {}),
    ]
    for exc, args, kw in cases:
        with pytest.raises(exc):
            mm.access(*args, **kw)
    assert mm.vmstat["pgfault"] == 0


def test_access_takes_strided_read_only_and_empty_arrays():
    mm = MM()
    a = mm.mmap(2 * MB)
    trace = a + np.arange(0, 2 * MB, PAGE // 2, dtype=np.uint64)
    trace.setflags(write=False)
    assert mm.access(trace[::2], WRITE).sum() == 512
    assert mm.access(np.array([], np.uint64)).shape == (0,)
    assert mm.access([]).shape == (0,)


def test_the_tlb_never_outlives_a_change_of_the_page_tables():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.access([a], WRITE)
    mm.madvise(a, 2 * MB, "dontneed")
    assert mm.access([a], READ).tolist() == [1]
    mm.mprotect(a, 2 * MB, "r")
    with pytest.raises(SegmentationFault):
        mm.access([a], WRITE)
    mm.munmap(a, 2 * MB)
    with pytest.raises(SegmentationFault):
        mm.access([a], READ)


def test_a_huge_trace_over_a_thp_counts_one_fault():
    mm = MM()
    a = mm.mmap(2 * MB)
    mm.madvise(a, 2 * MB, "hugepage")
    out = mm.access(a + np.arange(0, 2 * MB, 8, dtype=np.uint64), WRITE)
    assert out.sum() == 1 and out[0] == 1


def test_threads_sharing_one_mm_take_turns():
    """The core releases the GIL; calls on one MM from several threads are serialized, so the
    result is as if they ran one after the other (each page faults exactly once)."""
    import threading
    mm = MM()
    size = 512 << 30
    a = mm.mmap(size)
    trace = a + np.arange(0, size, 1 << 30, dtype=np.uint64)     # one page in each 1 GiB
    results = []
    threads = [threading.Thread(target=lambda: results.append(mm.access(trace, WRITE).sum()))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 0, 0, 512]
    puds = len(set((trace >> np.uint64(39)).tolist()))
    assert mm.status["RssAnon"] == 512 * 4 and mm.status["VmPTE"] == 4 * (puds + 512 + 512)
