"""The README's demonstration: what the kernel does for the accesses the arm64-atomics thread
argued about, measured on the emulator."""
from __future__ import annotations

import numpy as np

from .config import Config
from .constants import PageState
from .mm import MM

MB = 1 << 20


def _summary(states):
    """'1 ANON + 511 ZERO' style text of a PageState array."""
    counts = np.bincount(states, minlength=len(PageState))
    parts = [f"{n} {PageState(i).name}" for i, n in enumerate(counts) if n and i != PageState.NONE]
    return " + ".join(parts) or "nothing mapped"


def _case(title, config, hugepage, ops):
    mm = MM(config)
    addr = mm.mmap(2 * MB)
    if hugepage:
        mm.madvise(addr, 2 * MB, "hugepage")
    faults = [getattr(mm, op)(addr + 4096 * page) for op, page in ops]
    vm = mm.vmstat
    return {
        "case": title,
        "faults": "+".join(map(str, faults)),
        "pages": _summary(mm.page_states(addr, 2 * MB)),
        "RssAnon kB": mm.status["RssAnon"],
        "thp_fault_alloc": vm["thp_fault_alloc"],
        "thp_split_pmd": vm["thp_split_pmd"],
    }


def demo_rows():
    """One row per case: faults per access, resulting pages, RSS and THP counters."""
    x86 = Config()
    arm = Config(arch="arm64")
    return [
        _case("x86_64: read then write a 4K page", x86, False, [("read", 0), ("write", 0)]),
        _case("x86_64: atomic on an untouched page", x86, False, [("atomic", 0)]),
        _case("arm64: atomic on an untouched page", arm, False, [("atomic", 0)]),
        _case("arm64 + atomic_write_fault: atomic", arm.replace(atomic_write_fault=True), False,
              [("atomic", 0)]),
        _case("arm64 THP: atomic on untouched 2M [6.13+]", arm, True, [("atomic", 0)]),
        _case("arm64 THP: atomic on untouched 2M [<6.13]", Config.for_kernel("6.12", arch="arm64"), True,
              [("atomic", 0)]),
        _case("arm64 THP + atomic_write_fault: atomic", arm.replace(atomic_write_fault=True), True,
              [("atomic", 0)]),
        _case("x86_64 THP: atomic on untouched 2M", x86, True, [("atomic", 0)]),
        _case("THP: read (huge zeropage), write [6.13+]", x86, True, [("read", 0), ("write", 1)]),
        _case("THP: read (huge zeropage), write [<6.13]", x86.replace(huge_zero_write="split"), True,
              [("read", 0), ("write", 1)]),
    ]


def _pressure_case(title, config, prepare, shared=False, op="write", memory_max_headroom=None):
    """One 2 MiB MADV_HUGEPAGE mapping touched once at its start, after ``prepare(mm)``."""
    mm = MM(config)
    prepare(mm)
    if memory_max_headroom is not None:
        mm.memory_max = mm.memory_current + memory_max_headroom
    addr = mm.mmap(2 * MB, shared=shared)
    mm.madvise(addr, 2 * MB, "hugepage")
    faults = getattr(mm, op)(addr)
    vm = mm.vmstat
    return {
        "case": title,
        "faults": str(faults),
        "pages": _summary(mm.page_states(addr, 2 * MB)),
        "Rss kB": mm.smaps(addr)["Rss"],
        "thp_fault_alloc": vm["thp_fault_alloc"],
        "thp_fault_fallback": vm["thp_fault_fallback"],
        "..._charge": vm["thp_fault_fallback_charge"],
        "compact_stall/success": f"{vm['compact_stall']}/{vm['compact_success']}",
    }


def pressure_rows():
    """A THP write fault as memory gets scarce: fragmentation, defrag, compaction, a memory
    cgroup limit, an mTHP size to fall back to; and what a read costs in shared memory."""
    small = Config(memory=256 * MB)
    nothing = lambda mm: None
    def fragment(movable, free_fraction=0.9):
        return lambda mm: mm.fragment_memory(free_fraction=free_fraction, movable=movable)
    return [
        _pressure_case("plenty of free memory", small, nothing),
        _pressure_case("fragmented, defrag=never", small.replace(defrag="never"), fragment(True)),
        _pressure_case("fragmented (movable), defrag=madvise", small, fragment(True)),
        _pressure_case("fragmented (unmovable), defrag=madvise", small, fragment(False)),
        _pressure_case("fragmented, 64K mTHP enabled", small.replace(defrag="never", hugepages={64: "always"}),
                       fragment(False, 0.99)),
        _pressure_case("memory.max 1M above usage", small, nothing, memory_max_headroom=1 * MB),
        _pressure_case("private: read (huge zeropage)", small, nothing, op="read"),
        _pressure_case("MAP_SHARED (shmem): read", small, nothing, shared=True, op="read"),
    ]


def format_table(rows):
    cols = list(rows[0])
    widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in cols]
    line = "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(out)


def main():
    print("mmemu: what Linux does for one 2 MiB anonymous mapping (emulated, Linux 6.18 rules)\n")
    print(format_table(demo_rows()))
    print("\nfaults: per access, e.g. 1+1 = two accesses of one fault each; "
          "arm64 atomics fault as a read first unless atomic_write_fault is set.")
    print("\nA 2 MiB MADV_HUGEPAGE mapping touched once, as memory gets scarce (256 MiB of RAM)\n")
    print(format_table(pressure_rows()))
    print("\nfragmented: every free 2 MiB block holds a page of another tenant; compaction can "
          "move movable ones (defrag=madvise compacts for MADV_HUGEPAGE mappings).")
