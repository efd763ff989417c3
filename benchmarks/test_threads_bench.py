"""Threads: separate MMs replay in parallel (MM.access runs without the GIL), calls on one MM
take turns. Measured in one run: the same two traces replayed one after the other on one
thread, and at the same time on two threads, each on an MM of its own.

Run:  pytest benchmarks/test_threads_bench.py --benchmark-only
"""
import threading

import numpy as np

from mmemu import MM, WRITE, Config

GB, PAGE = 1 << 30, 4096
SIZE = 2 * GB


def _trace():
    return np.arange(0, SIZE, PAGE, dtype=np.uint64)


def _replay(mm, base, offsets):
    mm.access(base + offsets, WRITE)


def _fresh_pair():
    pair = [MM(Config(memory=4 * GB, thp="never")) for _ in range(2)]
    return [(mm, mm.mmap(SIZE)) for mm in pair]


def _close(pair):
    for mm, _ in pair:
        mm.close()


def test_two_mms_one_thread(benchmark):
    offsets = _trace()

    def run(pair):
        for mm, base in pair:
            _replay(mm, base, offsets)
        _close(pair)
    benchmark.pedantic(run, setup=lambda: ((_fresh_pair(),), {}), rounds=5, iterations=1)
    benchmark.group = "two 2 GiB first-touch replays"
    benchmark.extra_info.update({"faults": 2 * SIZE // PAGE, "threads": 1})


def test_two_mms_two_threads(benchmark):
    offsets = _trace()

    def run(pair):
        threads = [threading.Thread(target=_replay, args=(mm, base, offsets)) for mm, base in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _close(pair)
    benchmark.pedantic(run, setup=lambda: ((_fresh_pair(),), {}), rounds=5, iterations=1)
    benchmark.group = "two 2 GiB first-touch replays"
    benchmark.extra_info.update({"faults": 2 * SIZE // PAGE, "threads": 2})
