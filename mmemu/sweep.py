"""Sweeps: one workload over a grid of configurations, on any concurrent.futures.Executor.

    from mmemu.sweep import sweep
    table = sweep("pretouch", {"arch": ["x86_64", "arm64"], "atomic_write_fault": [False, True],
                               "kernel": ["6.12", "6.18"], "heap": [256 << 20]})

Each point of the grid (the cartesian product of its lists) runs in a worker: a process pool by
default. Names that are :class:`mmemu.Config` fields set the configuration (a ``kernel`` brings
that version's behaviour, as ``Config.for_kernel``); the others are the workload's arguments.
The result is a table with one row per point: the point's values and the workload's final
figures (a pandas DataFrame where pandas is installed, else a list of dicts).

On a cluster, pass dask.distributed's executor::

    from dask.distributed import Client
    with Client("scheduler:8786") as client:
        table = sweep("pretouch", grid, executor=client.get_executor())

Workloads run where the executor puts them, so a workload given as a callable must be
importable there (a module-level function, not a lambda).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools

from .config import Config

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(Config)}


def _pretouch(config, **params):
    from .workloads.pretouch import atomic_pretouch
    return atomic_pretouch(config=config, **params)


def _migration(config, **params):
    from .workloads.migration import migrate
    return migrate(config=config, **params)


def _trace(config, **params):
    from .trace import replay
    return replay(config=config, **params)


#: workloads by name, for the command line and for sweeps given a name
WORKLOADS = {"pretouch": _pretouch, "migration": _migration, "trace": _trace}


def grid_points(grid: dict) -> list[dict]:
    """The cartesian product of ``grid`` (name -> list of values), in order, as dicts."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError("grid must be a non-empty dict of name -> list of values")
    names = list(grid)
    values = []
    for name in names:
        v = grid[name]
        if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
            v = [v]                       # a single value is a one-point axis
        v = list(v)
        if not v:
            raise ValueError(f"grid[{name!r}] has no values")
        values.append(v)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def split_point(point: dict, base: Config | None = None) -> tuple[Config, dict]:
    """(the Config of a grid point, the workload's arguments)."""
    fields = {k: v for k, v in point.items() if k in _CONFIG_FIELDS}
    params = {k: v for k, v in point.items() if k not in _CONFIG_FIELDS}
    if "kernel" in fields:
        kernel = fields.pop("kernel")
        start = (base or Config()).as_dict()
        start.update(Config.for_kernel(kernel).as_dict())
        start.update(fields)
        return Config(**start), params
    return (base or Config()).replace(**fields), params


def run_point(workload, point: dict, base: Config | None = None) -> dict:
    """One grid point in this process: the point's values and the workload's final figures."""
    fn = _workload(workload)
    config, params = split_point(point, base)
    result = fn(config, **params)
    final = result.final if hasattr(result, "final") else dict(result)
    return {**point, **final}


def sweep(workload, grid: dict, *, executor: concurrent.futures.Executor | None = None,
          base: Config | None = None, max_workers: int | None = None, progress=None, as_frame=None):
    """Run ``workload`` (a name in :data:`WORKLOADS`, or a callable ``f(config, **params)``
    returning a WorkloadResult or a dict of figures) at every point of ``grid``.

    ``executor``: where to run (default: a ProcessPoolExecutor of ``max_workers``; any
    Executor works, dask.distributed's ``client.get_executor()`` included). ``base``: the
    Config the grid's fields change. ``progress(done, total)`` after each point. Rows come
    back in the grid's order. ``as_frame``: a pandas DataFrame (default: when pandas is
    installed) or a list of dicts."""
    _workload(workload)                      # a bad name fails here, not in every worker
    points = grid_points(grid)
    for point in points:                     # and a bad setting too
        split_point(point, base)
    own = executor is None
    if own:
        executor = concurrent.futures.ProcessPoolExecutor(max_workers=max_workers)
    try:
        futures = {executor.submit(run_point, workload, point, base): i for i, point in enumerate(points)}
        rows = [None] * len(points)
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            rows[futures[future]] = future.result()
            if progress:
                progress(done, len(points))
    finally:
        if own:
            executor.shutdown(cancel_futures=True)
    return _table(rows, as_frame)


def _workload(workload):
    if callable(workload):
        return workload
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}: one of {', '.join(WORKLOADS)}, or a callable")
    return WORKLOADS[workload]


def _table(rows, as_frame):
    if as_frame is False:
        return rows
    try:
        import pandas
    except ImportError:
        if as_frame:
            raise RuntimeError("as_frame=True needs pandas: pip install pandas") from None
        return rows
    return pandas.DataFrame.from_records(rows)
