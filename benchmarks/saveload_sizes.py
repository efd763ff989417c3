"""Saved-state file sizes and save/load times of a few MMs, np.savez_compressed (what
``MM.save`` writes) against np.savez (uncompressed).

    python benchmarks/saveload_sizes.py [directory]

A fresh MM, 1 GiB touched with THP and 1 GiB touched with 4K pages, each on the default 16 GiB
machine; times are the best of 3 runs (save includes the fsync; the directory defaults to the
system's temporary directory).
"""
import functools
import os
import sys
import tempfile
import time

import numpy as np

import mmemu
from mmemu import MM, Config, _savefile

GiB, MB, PAGE = 1 << 30, 1 << 20, 4096


def timed(fn, reps=3):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def report(name, mm, folder):
    for compress in (True, False):
        path = os.path.join(folder, f"bench-{compress}.npz")
        save = timed(functools.partial(_savefile.save, mm, path, compress=compress))
        load = timed(functools.partial(mmemu.load, path))
        kind = "savez_compressed" if compress else "savez"
        print(f"{name:32s} {kind:16s} {os.path.getsize(path) / MB:8.2f} MiB  "
              f"save {save * 1e3:7.1f} ms  load {load * 1e3:7.1f} ms")
        os.unlink(path)


def touched(thp):
    mm = MM(Config(thp=thp))
    a = mm.mmap(GiB)
    mm.access(np.arange(a, a + GiB, PAGE, dtype=np.uint64), 1)
    return mm


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    report("fresh MM (16 GiB RAM)", MM(), folder)
    report("1 GiB touched, THP", touched("always"), folder)
    report("1 GiB touched, 4K", touched("never"), folder)


if __name__ == "__main__":
    main()
