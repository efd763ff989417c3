"""Why does QEMU read a page before writing it during incoming migration?

    python examples/qemu_read_before_write.py [--size 4G]

A zero page that arrives is only checked (``buffer_is_zero`` reads it): the read maps the shared
zeropage (in a THP range the huge zeropage), so zero pages on the source cost no memory on the
destination. Writing every page instead (before QEMU commit 211ea740) allocates all of them.
With a memfd backend the read allocates anyway: shmem has no zeropage. multifd skips zero pages
it never received; postcopy places pages with UFFDIO_COPY / UFFDIO_ZEROPAGE under
MADV_NOHUGEPAGE. The guest here has 60% zero pages in 2 MiB runs.
"""
from _common import main_guard, print_table, size_argument

from mmemu import Config
from mmemu.workloads import GuestImage, migrate


def run(size):
    image = GuestImage(size=size, zero=0.6, layout="clustered")
    rows = []
    for backing in ("anon", "memfd"):
        for strategy in ("precopy-write", "precopy", "multifd", "postcopy"):
            r = migrate(image, strategy, backing)
            f = r.final
            rows.append({"backing": backing, "strategy": strategy, "RSS MB": f["rss_kb"] // 1024,
                         "of guest MB": size >> 20, "huge MB": f["huge_kb"] // 1024, "faults": f["faults"],
                         "VmPTE kB": f["pte_kb"]})
    for kernel in ("6.12", "6.18"):     # the same precopy on both sides of the 6.13 huge-zeropage change
        config = Config.for_kernel(kernel, memory=max(16 << 30, 2 * size))
        f = migrate(GuestImage(size=size, zero=0.6, layout="random", seed=1), "precopy", config=config).final
        rows.append({"backing": f"anon, {kernel}", "strategy": "precopy, zero pages scattered",
                     "RSS MB": f["rss_kb"] // 1024, "of guest MB": size >> 20, "huge MB": f["huge_kb"] // 1024,
                     "faults": f["faults"], "VmPTE kB": f["pte_kb"]})
    return rows


if __name__ == "__main__":
    main_guard(lambda: print_table(run(size_argument(__doc__, "4G", "64M"))))
