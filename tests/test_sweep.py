"""Sweeps (issue 6): a workload over a grid of configurations on an executor."""
import concurrent.futures

import pytest

from mmemu import Config
from mmemu.sweep import grid_points, run_point, split_point, sweep

MB = 1 << 20
GRID = {"arch": ["x86_64", "arm64"], "atomic_write_fault": [False, True], "kernel": ["6.12", "6.18"],
        "heap": [4 * MB]}


def _faults(rows):
    return {(r["arch"], r["atomic_write_fault"], r["kernel"]): r["faults"] for r in rows}


EXPECTED = {  # faults of an atomic pretouch of two MADV_HUGEPAGE 2 MiB ranges
    ("x86_64", False, "6.12"): 2, ("x86_64", True, "6.12"): 2, ("x86_64", False, "6.18"): 2,
    ("x86_64", True, "6.18"): 2, ("arm64", False, "6.12"): 2 * 513, ("arm64", True, "6.12"): 2,
    ("arm64", False, "6.18"): 4, ("arm64", True, "6.18"): 2}


def test_a_sweep_runs_every_point_on_a_process_pool_in_the_grids_order():
    rows = sweep("pretouch", GRID, max_workers=2, as_frame=False)
    assert [(r["arch"], r["atomic_write_fault"], r["kernel"]) for r in rows] == \
        [(p["arch"], p["atomic_write_fault"], p["kernel"]) for p in grid_points(GRID)]
    assert _faults(rows) == EXPECTED


def test_a_sweep_runs_on_any_executor_and_reports_progress():
    seen = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        rows = sweep("pretouch", GRID, executor=pool, as_frame=False, progress=lambda d, n: seen.append((d, n)))
    assert _faults(rows) == EXPECTED and seen[-1] == (8, 8) and len(seen) == 8


def _custom(config, pages):
    from mmemu import MM
    mm = MM(config)
    a = mm.mmap(pages * 4096)
    return {"faults": int(mm.access(a + 4096 * __import__("numpy").arange(pages, dtype="uint64"), 1).sum())}


def test_a_callable_workload_returning_a_dict():
    rows = sweep(_custom, {"pages": [1, 3], "thp": ["never"]}, max_workers=1, as_frame=False)
    assert [r["faults"] for r in rows] == [1, 3]


def test_a_kernel_in_the_grid_brings_that_versions_behaviour():
    config, params = split_point({"kernel": "6.12", "arch": "arm64", "heap": 2 * MB})
    assert config.huge_zero_write == "split" and config.arch == "arm64" and params == {"heap": 2 * MB}
    config, _ = split_point({"thp": "always"}, Config(arch="arm64"))
    assert config.arch == "arm64" and config.thp == "always"


def test_run_point_runs_one_point_here():
    row = run_point("pretouch", {"arch": "arm64", "heap": 2 * MB})
    assert row["faults"] == 2 and row["arch"] == "arm64"


@pytest.mark.parametrize("workload, grid", [
    ("nosuch", {"heap": [2 * MB]}), ("pretouch", {}), ("pretouch", []), ("pretouch", {"heap": []}),
    ("pretouch", {"arch": ["sparc"]}), ("pretouch", {"kernel": ["2.6"]})])
def test_a_bad_sweep_is_refused_before_anything_runs(workload, grid):
    with pytest.raises((ValueError, TypeError)):
        sweep(workload, grid, executor=concurrent.futures.ThreadPoolExecutor(1))


def test_a_sweep_returns_a_dataframe_where_pandas_is_installed():
    pd = pytest.importorskip("pandas")
    table = sweep("pretouch", {"arch": ["arm64"], "heap": [2 * MB]}, max_workers=1)
    assert isinstance(table, pd.DataFrame) and table.loc[0, "faults"] == 2


def test_a_sweep_on_a_dask_local_cluster():
    """Optional: needs dask.distributed (pip install 'mmemu[dask]')."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        rows = sweep("pretouch", GRID, executor=client.get_executor(), as_frame=False)
    assert _faults(rows) == EXPECTED
