"""Print rates and the issue-2 goals from a pytest-benchmark JSON file.

    python benchmarks/report.py bench.json
"""
import json
import sys
from collections import defaultdict


def main(path):
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        n = info.get("accesses") or info.get("faults") or info.get("pages")
        best = b["stats"]["min"]
        groups[info["workload"]][info["kind"]] = dict(n=n, best=best, rate=n / best, info=info)
    print("| workload | mmemu | floor (numpy) | reference model | mmemu / floor | mmemu / reference |")
    print("|---|---|---|---|---|---|")
    for workload, kinds in groups.items():
        m = kinds.get("mmemu")
        if m and "bytes_per_page" in m["info"]:
            print(f"| {workload} | {m['info']['bytes_per_page']} bytes | | | | |")
            continue
        cells = [workload]
        for kind in ("mmemu", "floor", "reference"):
            k = kinds.get(kind)
            cells.append(f"{k['rate'] / 1e6:,.2f} M/s" if k else "")
        for kind in ("floor", "reference"):
            k = kinds.get(kind)
            cells.append(f"{m['rate'] / k['rate']:,.2f}x" if (k and m) else "")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
