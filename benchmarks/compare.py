"""Before and after: the core workloads of two builds of mmemu, measured back to back.

    python benchmarks/compare.py BASE_REF [--rounds 2]

Checks BASE_REF (a commit, tag or branch) out into a temporary git worktree and builds it in
place, then runs the mmemu side of every workload of ``benchmarks/test_core_bench.py`` (the
file of *this* tree, so both builds replay the same traces) against the base build and against
this tree's build, alternating, ``--rounds`` times each. Prints the best rate of each build and
the ratio after/before. This tree must be built in place first (``python setup.py build_ext
--inplace``).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)
BENCH_FILES = ("conftest.py", "test_core_bench.py")


def build_base(ref, workdir):
    path = os.path.join(workdir, "base")
    subprocess.run(["git", "-C", TREE, "worktree", "add", "--detach", path, ref], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=path, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def run_suite(tree, bench_dir, out):
    env = dict(os.environ, PYTHONPATH=tree, OPENBLAS_NUM_THREADS="1")
    results = []
    # the state figure is a VmRSS delta: it gets a fresh process, or it would reuse memory the
    # workloads before it left resident in the allocator's heap
    for i, selection in enumerate(("mmemu", "state_bytes")):
        part = f"{out}.{i}"
        subprocess.run([sys.executable, "-m", "pytest", bench_dir, "-q", "-k", selection,
                        "--benchmark-only", f"--benchmark-json={part}", "-p", "no:cacheprovider"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        results += json.load(open(part))["benchmarks"]
    rates = {}
    for b in results:
        info = b["extra_info"]
        n = info.get("accesses") or info.get("faults") or info.get("pages")
        if "bytes_per_page" in info:
            rates[info["workload"]] = -info["bytes_per_page"]      # lower is better: negate
        else:
            rates[info["workload"]] = n / b["stats"]["min"]
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="mmemu-compare-")
    base = build_base(args.base, workdir)
    bench_dir = os.path.join(workdir, "bench")
    os.makedirs(bench_dir)
    for name in BENCH_FILES:
        shutil.copy(os.path.join(HERE, name), bench_dir)
    best = defaultdict(dict)
    try:
        for r in range(args.rounds):
            for label, tree in (("before", base), ("after", TREE)):
                rates = run_suite(tree, bench_dir, os.path.join(workdir, f"{label}{r}.json"))
                for workload, rate in rates.items():
                    best[workload][label] = max(best[workload].get(label, rate), rate)
    finally:
        subprocess.run(["git", "-C", TREE, "worktree", "remove", "--force", base], check=False)
    print(f"| workload | before ({args.base}) | after | after / before |")
    print("|---|---|---|---|")
    for workload, r in best.items():
        ratio = f"{r['after'] / r['before']:.2f}x" if r["before"] else "n/a"
        if r["before"] <= 0 and r["after"] <= 0:        # state bytes: recorded negated
            print(f"| {workload} | {-r['before']:.2f} bytes | {-r['after']:.2f} bytes | {ratio} |")
        else:
            print(f"| {workload} | {r['before'] / 1e6:,.2f} M/s | {r['after'] / 1e6:,.2f} M/s | {ratio} |")


if __name__ == "__main__":
    main()
