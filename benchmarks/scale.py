"""Scale: a 1 TiB guest (2**28 4K pages) on one machine, and a 1 TiB migration.

    python benchmarks/scale.py [--size 1T] [--cases populate-4k,populate-thp,precopy,postcopy]

Each case runs in a process of its own, so that its peak RSS (host memory, getrusage) is its
alone; it prints the time, the peak RSS and the host bytes per emulated 4K page.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

CASES = ("populate-4k", "populate-thp", "precopy", "postcopy")


def run_case(case, size):
    from mmemu import MM, Config
    from mmemu.workloads import GuestImage, migrate
    pages = size // 4096
    start = time.perf_counter()
    if case.startswith("populate"):
        mm = MM(Config(memory=size + (2 << 30), thp="always" if case.endswith("thp") else "never"))
        a = mm.mmap(size)
        mm.madvise(a, size, "populate_write")
        check = mm.status["RssAnon"] * 1024 == size
    else:
        image = GuestImage(size=size, zero=0.6, layout="clustered")
        r = migrate(image, case, chunk_pages=max(1 << 15, pages // 128))
        check = r.final["pages_received"] == pages
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"case": case, "seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 2),
            "bytes_per_page": round(peak / pages, 2), "complete": bool(check)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1T")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from mmemu.cli import parse_size, print_table
    size = parse_size(args.size)
    if args.one:
        print(json.dumps(run_case(args.one, size)))
        return
    rows = []
    for case in args.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--size", args.size, "--one", case],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.splitlines()[-1]))
    print_table(rows)


if __name__ == "__main__":
    main()
