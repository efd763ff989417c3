"""What does MADV_POPULATE_READ (or _WRITE) cost against touching every page?

    python examples/populate_cost.py [--size 1G]

Populating takes the same faults the kernel would take on first touch, but in one system call
(GUP faults pages in one after another, without a trap per page); reading every page traps
once per page (or per 2 MiB with THP). The table shows, for 4K pages and for THP: the faults,
the memory it costs (a read maps the zeropage: nothing; a write allocates), and page tables.
"""
import numpy as np
from _common import main_guard, print_table, size_argument

from mmemu import MM, READ, WRITE, Config


def run(size):
    pages = np.arange(0, size, 4096, dtype=np.uint64)
    rows = []
    for thp in (False, True):
        for how in ("touch: read", "touch: write", "populate_read", "populate_write"):
            mm = MM(Config())
            a = mm.mmap(size)
            if thp:
                mm.madvise(a, size, "hugepage")
            flt = mm.rusage["min_flt"]
            if how.startswith("touch"):
                mm.access(a + pages, READ if how.endswith("read") else WRITE)
                calls = len(pages)
            else:
                mm.madvise(a, size, how)
                calls = 1
            rows.append({"THP": "madvise" if thp else "no", "how": how, "accesses or calls": calls,
                         "faults": mm.rusage["min_flt"] - flt, "RssAnon MB": mm.status["RssAnon"] // 1024,
                         "VmPTE kB": mm.status["VmPTE"], "huge zeropage": mm.vmstat["thp_zero_page_alloc"]})
            mm.close()
    return rows


if __name__ == "__main__":
    main_guard(lambda: print_table(run(size_argument(__doc__, "1G", "16M"))))
