"""Small helpers the rule tests share."""
MB = 1 << 20


def hp_mapping(mm, length=2 * MB):
    """A fresh mapping of ``length`` bytes advised MADV_HUGEPAGE; its address."""
    a = mm.mmap(length)
    mm.madvise(a, length, "hugepage")
    return a


def delta(before, after):
    """The counters that changed, and by how much."""
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def counters(mm):
    """/proc/vmstat and every per-size THP stat, the latter as '<kB>kB/<name>'."""
    out = dict(mm.vmstat)
    for kb, stats in mm.mthp_stats.items():
        out.update({f"{kb}kB/{k}": v for k, v in stats.items()})
    return out
