"""Workloads: the questions mmemu's users come with, answered in one call.

Each returns a :class:`WorkloadResult` (a timeline of memory and faults as it ran, and the
counters at the end)."""
from .result import TIMELINE_COLUMNS, Timeline, WorkloadResult, plot_timelines, rollup

__all__ = ["TIMELINE_COLUMNS", "Timeline", "WorkloadResult", "plot_timelines", "rollup"]
from .pretouch import PRETOUCH_CASES, atomic_pretouch, compare_pretouch

__all__ += ["PRETOUCH_CASES", "atomic_pretouch", "compare_pretouch"]
from .migration import BACKINGS, STRATEGIES, GuestImage, compare_strategies, migrate

__all__ += ["BACKINGS", "STRATEGIES", "GuestImage", "compare_strategies", "migrate"]
