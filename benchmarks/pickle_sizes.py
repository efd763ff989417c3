"""Pickle sizes and dump/load/deepcopy times of a few MMs (protocol 5, in-band).

    python benchmarks/pickle_sizes.py

A fresh MM, 1 GiB touched with THP and 1 GiB touched with 4K pages, each on the default 16 GiB
machine; times are the best of 5 runs.
"""
import copy
import pickle
import time

import numpy as np
from mmemu import MM, Config

GiB, MB, PAGE = 1 << 30, 1 << 20, 4096

def timed(fn, reps=5):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t)
    return out, best

def report(name, mm):
    blob, dump = timed(lambda: pickle.dumps(mm, protocol=5))
    _, load = timed(lambda: pickle.loads(blob))
    _, deep = timed(lambda: copy.deepcopy(mm))
    print(f"{name:34s} {len(blob) / MB:8.2f} MiB  dump {dump * 1e3:7.1f} ms  load {load * 1e3:7.1f} ms  deepcopy {deep * 1e3:7.1f} ms")

report("fresh MM (16 GiB RAM)", MM())
mm = MM(Config(thp="always"))
a = mm.mmap(GiB)
mm.access(np.arange(a, a + GiB, PAGE, dtype=np.uint64), 1)
print("  THP:", mm.smaps(a)["AnonHugePages"] // 1024, "MiB huge")
report("1 GiB touched, THP (16 GiB RAM)", mm)
mm = MM(Config(thp="never"))
a = mm.mmap(GiB)
mm.access(np.arange(a, a + GiB, PAGE, dtype=np.uint64), 1)
report("1 GiB touched, 4K (16 GiB RAM)", mm)
c = mm.fork()
report("... plus a forked child (COW)", mm)
