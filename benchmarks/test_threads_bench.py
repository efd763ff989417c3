"""Threads: separate MMs replay in parallel (MM.access runs without the GIL), calls on one MM
take turns. Measured in one run: the same two traces replayed one after the other on one
thread, and at the same time on two threads, each on an MM of its own.

The MMs are populated before the clock starts, so that what is timed is the emulator's walk
and not the host faulting in fresh numpy arrays (which all threads of a process share the
host's page-fault path for).

Run:  pytest benchmarks/test_threads_bench.py --benchmark-only
"""
import threading

import numpy as np
import pytest

from mmemu import MM, Config

GB, PAGE = 1 << 30, 4096
SIZE = 1 * GB
N = 20_000_000


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(7)
    offsets = rng.integers(0, SIZE, N, dtype=np.uint64) & ~np.uint64(7)
    ops = rng.integers(0, 3, N, dtype=np.uint8)
    out = []
    for _ in range(2):
        mm = MM(Config(memory=2 * GB, thp="never"))
        base = mm.mmap(SIZE)
        mm.madvise(base, SIZE, "populate_write")
        out.append((mm, base + offsets, ops))
    yield out
    for mm, _, _ in out:
        mm.close()


def _replay(mm, addrs, ops):
    mm.access(addrs, ops)


def test_two_mms_one_thread(benchmark, pair):
    def run():
        for mm, addrs, ops in pair:
            _replay(mm, addrs, ops)
    benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.group = "two 20M-access random replays"
    benchmark.extra_info.update({"accesses": 2 * N, "threads": 1})


def test_two_mms_two_threads(benchmark, pair):
    def run():
        threads = [threading.Thread(target=_replay, args=p) for p in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.group = "two 20M-access random replays"
    benchmark.extra_info.update({"accesses": 2 * N, "threads": 2})
