"""What a workload returns: a timeline of the memory it cost as it ran, and the counters at the
end. Plain data (numpy arrays, dicts of ints), so that it pickles, turns into JSON and into a
row of a sweep's table."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

#: the timeline's columns, sampled after each chunk of work: how much work was done (pages
#: received, accesses replayed), VmRSS and its parts, the huge mappings smaps shows, the page
#: tables (VmPTE) and the faults taken so far (the process's min_flt)
TIMELINE_COLUMNS = ("done", "rss_kb", "anon_kb", "shmem_kb", "huge_kb", "pte_kb", "faults")

#: the /proc/vmstat counters a workload's summary reports (their change over the run)
SUMMARY_VMSTAT = ("pgfault", "thp_fault_alloc", "thp_fault_fallback", "thp_split_pmd", "thp_zero_page_alloc",
                  "thp_collapse_alloc", "thp_file_alloc", "nr_anon_pages", "nr_anon_transparent_hugepages",
                  "nr_shmem", "nr_shmem_hugepages", "nr_page_table_pages")


def rollup(mm) -> dict:
    """smaps_rollup: the smaps fields summed over every VMA of ``mm`` (kB)."""
    total: dict = {}
    for start, *_ in mm.maps():
        for key, value in mm.smaps(start).items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


class Timeline:
    """Samples of one process's memory as a workload runs: call :meth:`sample` after each chunk
    of work (``done``: how much work so far, in the workload's unit)."""

    def __init__(self, mm):
        self.mm = mm
        self.rows: list[tuple] = []
        self.base_faults = mm.rusage["min_flt"]

    def sample(self, done: int) -> None:
        mm = self.mm
        status = mm.status
        # an MM reads the huge mappings from its PMDs; anything else (a HostMM) sums its smaps
        huge = mm.pmd_mapped_kb() if hasattr(mm, "pmd_mapped_kb") else rollup(mm)
        self.rows.append((done, status["VmRSS"], status["RssAnon"], status["RssShmem"],
                          huge.get("AnonHugePages", 0) + huge.get("ShmemPmdMapped", 0), status["VmPTE"],
                          mm.rusage["min_flt"] - self.base_faults))

    def columns(self) -> dict:
        data = np.array(self.rows, np.int64).reshape(-1, len(TIMELINE_COLUMNS))
        return {name: data[:, i].copy() for i, name in enumerate(TIMELINE_COLUMNS)}


@dataclasses.dataclass
class WorkloadResult:
    """One run of a workload.

    ``workload``: its name; ``params``: the arguments it ran with (JSON-able); ``config``: the
    :class:`mmemu.Config` fields; ``timeline``: the :data:`TIMELINE_COLUMNS` as int64 arrays
    of equal length; ``final``: the figures at the end (flat name -> number: vmstat changes,
    smaps totals, status, and the workload's own)."""

    workload: str
    params: dict
    config: dict
    timeline: dict
    final: dict

    def summary(self) -> dict:
        """One flat record: the parameters, the settings that differ from the defaults, and
        the final figures (a row of a sweep's table)."""
        from ..config import Config
        defaults = Config().as_dict()
        changed = {k: v for k, v in self.config.items() if defaults.get(k) != v}
        return {"workload": self.workload, **self.params, **changed, **self.final}

    def to_json(self) -> str:
        return json.dumps({"workload": self.workload, "params": self.params, "config": self.config,
                           "timeline": {k: v.tolist() for k, v in self.timeline.items()},
                           "final": self.final}, default=jsonable)

    def plot(self, path, title=None) -> None:
        """Draw RSS, huge mappings, page tables and faults over the run into ``path`` (PNG, SVG,
        PDF: by its suffix). Needs matplotlib (``pip install 'mmemu[plot]'``)."""
        plot_timelines([self], path, title=title or self.workload)


def jsonable(value):
    """json.dumps's default: numpy scalars and arrays as plain numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def vmstat_delta(before: dict, after: dict, names=SUMMARY_VMSTAT) -> dict:
    return {name: after[name] - before[name] for name in names}


def plot_timelines(results, path, title=None, labels=None) -> None:
    """Three panels sharing the x axis, one colour per result: RSS (solid) and the part of it
    mapped huge (dashed), page tables, and faults (a log scale when results differ by more than
    fifty times)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'mmemu[plot]'") from None
    fig, (mem, pte, flt) = plt.subplots(3, 1, sharex=True, figsize=(9, 8), height_ratios=(3, 1.5, 2))
    finals = []
    for i, result in enumerate(results):
        t, colour = result.timeline, f"C{i % 10}"
        label = labels[i] if labels else result.workload
        mem.plot(t["done"], t["rss_kb"] / 1024, color=colour)
        if t["huge_kb"].any():
            mem.plot(t["done"], t["huge_kb"] / 1024, color=colour, linestyle="--")
        pte.plot(t["done"], t["pte_kb"], color=colour)
        flt.plot(t["done"], t["faults"], color=colour, label=label)
        if len(t["faults"]) and t["faults"][-1] > 0:
            finals.append(t["faults"][-1])
    mem.set_ylabel("RSS (MiB)")
    mem.legend([Line2D([], [], color="k"), Line2D([], [], color="k", linestyle="--")],
               ["RSS", "of it mapped huge"], fontsize="small", loc="upper left")
    pte.set_ylabel("page tables (kB)")
    if finals and max(finals) > 50 * min(finals):
        flt.set_yscale("log")
    flt.set_ylabel("faults (cumulative)")
    flt.set_xlabel(results[0].params.get("unit", "work done") if results else "work done")
    flt.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
