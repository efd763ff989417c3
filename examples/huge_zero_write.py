"""Should a write fault on the huge zeropage allocate a THP, or shatter the PMD into 4K
mappings? Linux 6.13 and later allocate (huge_zero_write="thp"); earlier kernels split.

    python examples/huge_zero_write.py [--size 256M]

A program reads its MADV_HUGEPAGE memory first (a scan, a checksum of fresh memory: each
2 MiB maps the huge zeropage), then writes it. Compared: the faults, the THPs left, the PMD
splits, the page tables, and what khugepaged has to repair afterwards.
"""
import numpy as np
from _common import main_guard, print_table, size_argument

from mmemu import MM, READ, WRITE, Config, PageState


def run(size):
    pages = np.arange(0, size, 4096, dtype=np.uint64)
    rows = []
    for kernel in ("6.12", "6.18"):
        mm = MM(Config.for_kernel(kernel))
        a = mm.mmap(size)
        mm.madvise(a, size, "hugepage")
        read_faults = int(mm.access(a + pages, READ).sum())
        write_faults = int(mm.access(a + pages, WRITE).sum())
        states = mm.page_states(a, size).reshape(-1, 512)
        thps = int((states == PageState.THP).all(axis=1).sum())
        vm = mm.vmstat
        rows.append({"kernel": kernel, "huge_zero_write": mm.config.huge_zero_write, "read faults": read_faults,
                     "write faults": write_faults, "THPs": thps, "thp_split_pmd": vm["thp_split_pmd"],
                     "VmPTE kB": mm.status["VmPTE"], "to repair (2M ranges)": size // (2 << 20) - thps})
        mm.khugepaged_scan(full_scans=2)
        rows[-1]["THPs after khugepaged"] = int(
            (mm.page_states(a, size).reshape(-1, 512) == PageState.THP).all(axis=1).sum())
        mm.close()
    return rows


if __name__ == "__main__":
    main_guard(lambda: print_table(run(size_argument(__doc__, "256M", "8M"))))
