"""What do page tables cost? VmPTE for memory touched densely or sparsely, with 4K pages and
with THP, and what fork and MADV_DONTNEED do to it.

    python examples/page_table_cost.py [--size 4G]

A PTE table (4 kB) maps 2 MiB; a PMD-mapped THP needs none in use, but x86 deposits one per THP
for a later split, so VmPTE counts it too. Touching one byte per 2 MiB costs a whole table per
2 MiB with 4K pages.
"""
import numpy as np
from _common import main_guard, print_table, size_argument

from mmemu import MM, WRITE, Config


def run(size):
    rows = []
    for thp in (False, True):
        for stride, label in ((4096, "every 4K page"), (2 << 20, "one page per 2M"), (1 << 30, "one page per 1G")):
            mm = MM(Config())
            a = mm.mmap(size)
            if thp:
                mm.madvise(a, size, "hugepage")
            mm.access(a + np.arange(0, size, stride, dtype=np.uint64), WRITE)
            tables = mm.page_tables
            row = {"THP": "madvise" if thp else "no", "touched": label, "RssAnon kB": mm.status["RssAnon"],
                   "VmPTE kB": mm.status["VmPTE"], "PTE tables": tables["pte"], "deposited": tables["deposited"],
                   "PMD tables": tables["pmd"]}
            child = mm.fork()
            row["child VmPTE kB"] = child.status["VmPTE"]
            child.close()
            mm.madvise(a, size, "dontneed")
            row["after dontneed kB"] = mm.status["VmPTE"]
            rows.append(row)
            mm.close()
    return rows


if __name__ == "__main__":
    main_guard(lambda: print_table(run(size_argument(__doc__, "4G", "64M"))))
