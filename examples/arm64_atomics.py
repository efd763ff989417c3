"""How many page faults does an atomic read-modify-write (LDADD, CAS, SWP) take on an untouched
page, on x86_64 and on arm64, with and without the patch that forces a write fault?

    python examples/arm64_atomics.py [--size 64M]

On arm64 the first access of an atomic is reported as a read: a read fault maps the zeropage
(the huge zeropage in a THP range), and the write that follows takes a second fault to copy
it. x86 reports a locked RMW as a write: one fault. ``atomic_write_fault`` is the proposed
arm64 change that decodes the instruction and takes the write fault at once.
"""
import numpy as np
from _common import main_guard, print_table, size_argument

from mmemu import ATOMIC, MM, Config


def run(size):
    rows = []
    for arch, awf in (("x86_64", False), ("arm64", False), ("arm64", True)):
        for thp in (False, True):
            mm = MM(Config(arch=arch, atomic_write_fault=awf))
            a = mm.mmap(size)
            if thp:
                mm.madvise(a, size, "hugepage")
            faults = mm.access(a + np.arange(0, size, 4096, dtype=np.uint64), ATOMIC)
            rows.append({"arch": arch + (" + atomic_write_fault" if awf else ""), "THP": "madvise" if thp else "no",
                         "faults": int(faults.sum()), "per 4K page": round(faults.sum() / (size // 4096), 3),
                         "RssAnon MB": mm.status["RssAnon"] // 1024,
                         "zeropage maps": mm.vmstat["thp_zero_page_alloc"] if thp else "-"})
            mm.close()
    return rows


if __name__ == "__main__":
    main_guard(lambda: print_table(run(size_argument(__doc__, "64M", "4M"))))
