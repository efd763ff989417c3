"""How many faults does a JVM's atomic pretouch (-XX:+AlwaysPreTouch) take on arm64, with and
without forced write faults, and how many huge pages survive it?

    python examples/jvm_pretouch.py [--size 1G]

The heap is MADV_HUGEPAGE (-XX:+UseTransparentHugePages); each page gets one atomic add of 0.
"""
from _common import main_guard, print_table, size_argument

from mmemu.workloads import compare_pretouch


def run(size):
    rows = []
    for name, r in compare_pretouch(size, khugepaged_scans=2).items():
        f = r.final
        rows.append({"case": name, "faults": f["faults"], "THPs": f["thp_ranges"], "of": size >> 21,
                     "thp_split_pmd": f["thp_split_pmd"], "RSS MB": f["rss_kb"] // 1024,
                     "THPs after khugepaged": f["thp_ranges_after_khugepaged"]})
    return rows


if __name__ == "__main__":
    main_guard(lambda: print_table(run(size_argument(__doc__, "1G", "8M"))))
