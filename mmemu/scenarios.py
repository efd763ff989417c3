"""Scenarios: the spec's scenario table (section 19) as data, and the small language that
plays them on an :class:`mmemu.MM` or an :class:`mmemu.host.HostMM` alike.

A scenario maps ``length`` bytes (2 MiB-aligned by placement, at ``offset`` bytes past a 2 MiB
boundary, or at a given ``base``), optionally MADV_HUGEPAGE on all of it, then runs steps whose
arguments are in pages of that mapping.  Expected page states are written run-length:
"Z N*511" (N none, Z zeropage, H huge zeropage, a 4K anon page, t PTE-mapped large folio,
T PMD-mapped THP).
"""
import re

import numpy as np

from mmemu import PageState

KB = 1024
MB = 1 << 20
PAGE = 4096
#: in the same 1 GiB as the first mappings placed below mmap_base, but 384 MiB away from them
ANCHOR = 0x7fffe0000000
LETTER = {"N": PageState.NONE, "Z": PageState.ZERO, "H": PageState.HUGE_ZERO,
          "a": PageState.ANON, "t": PageState.LARGE, "T": PageState.THP}


def expand(spec):
    """'Z N*511' -> array of PageState codes."""
    out = []
    for token in spec.split():
        m = re.fullmatch(r"([NZHatT])(?:\*(\d+))?", token)
        if not m:
            raise ValueError(f"bad page-state token {token!r}")
        out += [LETTER[m.group(1)]] * int(m.group(2) or 1)
    return np.array(out, np.uint8)


def describe(states):
    """Run-length text of a PageState array, for readable failures."""
    names = {v: k for k, v in LETTER.items()}
    out, i = [], 0
    while i < len(states):
        j = i
        while j < len(states) and states[j] == states[i]:
            j += 1
        out.append(names[states[i]] + (f"*{j - i}" if j - i > 1 else ""))
        i = j
    return " ".join(out)


def _khugepaged(mm):
    """khugepaged's stats of mm's machine ({} where the MM does not have them yet)."""
    try:
        return dict(mm.khugepaged)
    except AttributeError:
        return {}


class Run:
    """One scenario being played on an MM, with the base counters to take deltas from."""

    def __init__(self, mm, length, hp=False, offset=0, before=(), base=None, anchor=True):
        """``base``: map at this 2 MiB-aligned address (and the anchor 512 MiB above it)
        instead of where mmap places it, so that a real process and the emulator lay the
        scenario out alike."""
        self.mm = mm
        for step in before:                        # steps before the mapping is made (prctl)
            self.step(*step)
        # An anchor page above the scenario mapping, so the upper page tables already exist and
        # VmPTE deltas read as in the spec, measured inside a running process.
        if anchor:
            mm.write(mm.mmap(PAGE, addr=ANCHOR if base is None else base + 512 * MB, fixed=True))
        if base is not None:
            self.addr = base + offset
            mm.mmap(length, addr=self.addr, fixed=True)
        elif offset:
            reserved = mm.mmap(length + 4 * MB)
            mm.munmap(reserved, length + 4 * MB)
            self.addr = ((reserved + 2 * MB - 1) & ~(2 * MB - 1)) + offset
            mm.mmap(length, addr=self.addr, fixed=True)
        else:
            self.addr = mm.mmap(length)
        self.length = length
        if hp:
            mm.madvise(self.addr, length, "hugepage")
        self.base_vmstat = mm.vmstat
        self.base_mthp = mm.mthp_stats[2048]
        self.base_flt = mm.rusage["min_flt"]
        self.base_pte = mm.status["VmPTE"]
        self.base_khugepaged = _khugepaged(mm)
        self.child = None

    def page(self, i):
        return self.addr + i * PAGE

    def step(self, op, *args):
        mm = self.mm
        if op in ("read", "write", "atomic"):
            for p in args:
                getattr(mm, op)(self.page(p))
        elif op in ("read_all", "write_all"):
            first, count = args if args else (0, self.length // PAGE)
            for p in range(first, first + count):
                getattr(mm, op[:-4])(self.page(p))
        elif op in ("dontneed", "nohugepage", "hugepage", "populate_read", "populate_write", "collapse",
                    "free", "cold", "pageout"):
            first, count = args if args else (0, self.length // PAGE)
            mm.madvise(self.page(first), count * PAGE, op)
        elif op == "map":
            first, count, prot = args                  # another mapping, at a page offset
            mm.mmap(count * PAGE, prot, self.page(first), True)
        elif op == "mprotect":
            first, count, prot = args
            mm.mprotect(self.page(first), count * PAGE, prot)
        elif op == "mremap":
            # ("mremap", old pages, new pages[, maymove[, new address as a page offset]]): the
            # scenario follows the mapping (its address and length become the new ones)
            old, new, maymove, to = (args + (False, None))[:4]
            where = mm.mremap(self.addr, old * PAGE, new * PAGE, maymove,
                              None if to is None else self.page(to))
            self.addr, self.length = where, new * PAGE
        elif op == "fork":
            self.child = mm.fork()
        elif op == "child":                            # ("child", step...): a step in the child
            self.mm = self.child
            try:
                self.step(*args)
            finally:
                self.mm = mm
        elif op == "child_exit":
            self.child.close()
            self.child = None
        elif op == "prctl":
            mm.prctl("PR_SET_THP_DISABLE", *args)
        elif op == "munmap":
            first, count = args
            mm.munmap(self.page(first), count * PAGE)
        elif op == "khugepaged":                       # ("khugepaged", full passes)
            mm.khugepaged_scan(full_scans=args[0] if args else 1)
        elif op == "drop_caches":                      # the shrinkers (echo 2 > drop_caches)
            mm.drop_caches(2)
        else:
            raise ValueError(op)

    def states(self):
        return self.mm.page_states(self.addr, self.length)

    def deltas(self):
        now = self.mm.vmstat
        d = {k: now[k] - self.base_vmstat[k] for k in now if now[k] != self.base_vmstat[k]}
        d.pop("pgfault", None)
        mthp = self.mm.mthp_stats[2048]
        d.update({f"2048kB/{k}": mthp[k] - self.base_mthp[k] for k in mthp if mthp[k] != self.base_mthp[k]})
        k = _khugepaged(self.mm)
        d.update({f"khugepaged/{n}": k[n] - self.base_khugepaged[n] for n in k if k[n] != self.base_khugepaged[n]})
        return d

    def faults(self):
        return self.mm.rusage["min_flt"] - self.base_flt

    def vmpte_delta(self):
        return self.mm.status["VmPTE"] - self.base_pte

    def rss_ahp(self):
        total_rss = total_ahp = 0
        seen = set()
        for start, end, _, _ in self.mm.maps():
            if end <= self.addr or start >= self.addr + self.length or start in seen:
                continue
            seen.add(start)
            s = self.mm.smaps(start)
            total_rss += s["Rss"]
            total_ahp += s["AnonHugePages"]
        return total_rss, total_ahp


# ---- the scenario table -----------------------------------------------------------------------
# The table assumes the huge zeropage already exists; on a fresh emulated machine its first use
# adds thp_zero_page_alloc +1, written here as HZA.  Counter deltas not listed are zero
# (pgfault is checked through the faults).

HZA = {"thp_zero_page_alloc": 1}
THP_FAULT = {"thp_fault_alloc": 1, "2048kB/anon_fault_alloc": 1, "2048kB/nr_anon": 1,
             "nr_anon_transparent_hugepages": 1, "nr_anon_pages": 512}


#: id, config kwargs, length, hp, steps, states, (rss, ahp), faults, deltas, vmpte delta
ROWS = [
    ("S1", {}, 2 * MB, False, [("read", 0)], "Z N*511", (0, 0), 1, {}, 4),
    ("S2", {}, 2 * MB, False, [("write", 0)], "a N*511", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S3", {}, 2 * MB, False, [("read", 0), ("write", 0)], "a N*511", (4, 0), 2, {"nr_anon_pages": 1}, 4),
    ("S4", {}, 2 * MB, False, [("read_all",)], "Z*512", (0, 0), 512, {}, 4),
    ("S5", {}, 2 * MB, False, [("atomic", 0)], "a N*511", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S7", {}, 2 * MB, False, [("populate_read",)], "Z*512", (0, 0), 512, {}, 4),
    ("S8", {}, 2 * MB, False, [("populate_write",)], "a*512", (2048, 0), 512, {"nr_anon_pages": 512}, 4),
    ("S9", {}, 4 * MB, False, [("write_all", 0, 512), ("dontneed", 0, 512)], "N*1024", (0, 0), 512, {}, 0),
    ("S10", {}, 4 * MB, False, [("write_all", 0, 512), ("dontneed", 0, 256)], "N*256 a*256 N*512",
     (1024, 0), 512, {"nr_anon_pages": 256}, 4),
    ("S11", {}, 4 * MB, False, [("write_all", 256, 512), ("dontneed", 256, 512)], "N*1024", (0, 0), 512, {}, 8),
    ("S12", {}, 2 * MB, False, [("read_all",), ("dontneed",)], "N*512", (0, 0), 512, {}, 0),
    ("S13", {}, 2 * MB, True, [("read", 1)], "H*512", (0, 0), 1, HZA, 4),
    ("S14", {}, 2 * MB, True, [("write", 0)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S15", {}, 2 * MB, True, [("read", 0), ("write", 5)], "T*512", (2048, 2048), 2, {**HZA, **THP_FAULT}, 4),
    ("S15-6.12", {"huge_zero_write": "split"}, 2 * MB, True, [("read", 0), ("write", 5)], "Z*5 a Z*506",
     (4, 0), 2, {**HZA, "thp_split_pmd": 1, "nr_anon_pages": 1}, 4),
    ("S16", {}, 2 * MB, True, [("populate_read",)], "H*512", (0, 0), 1, HZA, 4),
    ("S17", {}, 2 * MB, True, [("populate_write",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S18", {}, 2 * MB, True, [("populate_read",), ("populate_write",)], "T*512", (2048, 2048), 2,
     {**HZA, **THP_FAULT}, 4),
    ("S20", {}, 2 * MB, True, [("write", 0), ("dontneed",)], "N*512", (0, 0), 1,
     {"thp_fault_alloc": 1, "2048kB/anon_fault_alloc": 1}, 0),
    ("S23", {}, 4 * MB, True, [("write", 0), ("mprotect", 0, 512, "r")], "T*512 N*512", (2048, 2048), 1,
     THP_FAULT, 4),
    ("S24", {}, 4 * MB, True, [("write", 0, 512), ("munmap", 0, 512)], "N*512 T*512", (2048, 2048), 2,
     {"thp_fault_alloc": 2, "2048kB/anon_fault_alloc": 2, "2048kB/nr_anon": 1,
      "nr_anon_transparent_hugepages": 1, "nr_anon_pages": 512}, 4),
    ("S25", {}, 2 * MB, True, [("read", 0), ("mprotect", 256, 1, "r")], "Z*512", (0, 0), 1,
     {**HZA, "thp_split_pmd": 1}, 4),
    ("S26", {}, 2 * MB, True, [("read", 0), ("dontneed", 256, 1)], "Z*256 N Z*255", (0, 0), 1,
     {**HZA, "thp_split_pmd": 1}, 4),
    ("S27", {}, 2 * MB, True, [("read", 0), ("dontneed",)], "N*512", (0, 0), 1, HZA, 0),
    ("S28", {}, 2 * MB, True, [("read", 0), ("dontneed", 256, 1), ("write", 0, 256)], "a Z*255 a Z*255",
     (8, 0), 3, {**HZA, "thp_split_pmd": 1, "nr_anon_pages": 2}, 4),
    ("S50", {}, 4 * MB, True, [("write_all",)], "a*511 T*512 a", (4096, 2048), 513,
     {**THP_FAULT, "nr_anon_pages": 1024}, 12),
    ("S51", {}, 1 * MB, True, [("write", 0)], "a N*255", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S52", {}, 4 * MB, True, [("write", 0), ("nohugepage",), ("write", 512)], "T*512 a N*511",
     (2052, 2048), 2, {**THP_FAULT, "nr_anon_pages": 513}, 8),
    ("S53", {}, 2 * MB, True, [("write", 0)], "a N*511", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S54", {}, 2 * MB, True, [("write", 0)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S55", {}, 2 * MB, True, [("read", 0), ("prctl", 1, 0), ("write", 1)], "T*512", (2048, 2048), 2,
     {**HZA, **THP_FAULT}, 4),
    ("S56", {"thp": "always"}, 4 * MB, False, [("read", 0), ("nohugepage",), ("write", 1)], "T*512 N*512",
     (2048, 2048), 2, {**HZA, **THP_FAULT}, 4),
    ("S57", {"use_zero_page": False}, 2 * MB, True, [("read", 0)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S58", {"thp": "never"}, 2 * MB, True, [("write", 0)], "a N*511", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S59", {"hugepages": {2048: "never"}}, 2 * MB, True, [("write", 0), ("read", 256)], "a N*255 Z N*255",
     (4, 0), 2, {"nr_anon_pages": 1}, 4),
    ("S60", {"hugepages": {2048: "always"}}, 2 * MB, False, [("write", 0)], "T*512", (2048, 2048), 1,
     THP_FAULT, 4),
    ("S61", {"thp": "never", "hugepages": {2048: "madvise"}}, 2 * MB, True, [("write", 0)], "T*512",
     (2048, 2048), 1, THP_FAULT, 4),
    ("S77", {}, 4 * MB, False, [("populate_write",)], "a*1024", (4096, 0), 1024, {"nr_anon_pages": 1024}, 8),
]

OFFSETS = {"S50": 4096}
#: steps run before the mapping is made: prctl(PR_SET_THP_DISABLE, arg2, arg3)
BEFORE = {"S53": [("prctl", 1, 0)], "S54": [("prctl", 1, 2)]}


#: rows that need a PMD split of a THP (issue 4): a 2 MiB HP mapping, write p0, then this step
PMD_SPLIT_ROWS = [
    ("S19", [("dontneed", 256, 1)]),
    ("S21", [("munmap", 256, 1)]),
    ("S22", [("mprotect", 256, 1, "r")]),
]




#: Scenarios with no expected values written down: the real kernel is their oracle (mmemu
#: conformance).  Drawn from the kernel selftests madv_populate.c (errors and population) and
#: the spec's rules on protections, VMA splits, zapping and the huge zeropage.  Each: id,
#: config, mapping length, MADV_HUGEPAGE or not, steps.
HOST_ORACLE_SCENARIOS = [
    ("P1 populate_write on PROT_READ", {}, 2 * MB, False, [("mprotect", 0, 512, "r"), ("populate_write",)]),
    ("P2 populate_read on PROT_NONE", {}, 2 * MB, False, [("mprotect", 0, 512, "none"), ("populate_read",)]),
    ("P3 populate_read on PROT_WRITE", {}, 2 * MB, False, [("mprotect", 0, 512, "w"), ("populate_read",)]),
    ("P4 populate over a hole", {}, 2 * MB, False, [("munmap", 256, 1), ("populate_write",)]),
    ("P5 populate_read then write", {}, 2 * MB, False, [("populate_read",), ("write_all", 0, 16)]),
    ("P6 populate_write twice", {}, 2 * MB, False, [("populate_write",), ("populate_write",)]),
    ("P7 HP populate_read then populate_write", {}, 4 * MB, True,
     [("populate_read",), ("populate_write", 0, 512), ("populate_write",)]),
    ("A1 write-only VMA: read then write", {}, 2 * MB, False, [("mprotect", 0, 512, "w"), ("read", 0), ("write", 0)]),
    ("A2 read of PROT_NONE", {}, 2 * MB, False, [("mprotect", 0, 512, "none"), ("read", 0)]),
    ("A3 write to PROT_READ", {}, 2 * MB, False, [("mprotect", 0, 512, "r"), ("write", 0)]),
    ("A4 atomic on PROT_READ", {}, 2 * MB, False, [("mprotect", 0, 512, "r"), ("atomic", 3)]),
    ("A5 access in a hole", {}, 2 * MB, False, [("munmap", 0, 1), ("read", 0)]),
    ("A6 atomics over 64 pages", {}, 2 * MB, False, [("read", 5), ("atomic", *range(64))]),
    ("M1 THP made read-only and back", {}, 2 * MB, True,
     [("write", 0), ("mprotect", 0, 512, "r"), ("mprotect", 0, 512, "rw"), ("write", 1)]),
    ("M2 huge zeropage through PROT_NONE", {}, 2 * MB, True,
     [("read", 0), ("mprotect", 0, 512, "none"), ("mprotect", 0, 512, "rw"), ("write", 1)]),
    ("M3 4K page made read-only and back", {}, 2 * MB, False,
     [("write", 0), ("mprotect", 0, 512, "r"), ("mprotect", 0, 512, "rw"), ("write", 0)]),
    ("M4 zeropage made read-only and back", {}, 2 * MB, False,
     [("read", 0), ("mprotect", 0, 512, "r"), ("mprotect", 0, 512, "rw"), ("write", 0)]),
    ("M5 HP range split by mprotect before the fault", {}, 2 * MB, True,
     [("mprotect", 256, 256, "r"), ("write", 0), ("read", 300)]),
    ("M6 HP range split by nohugepage before the fault", {}, 2 * MB, True,
     [("nohugepage", 256, 256), ("write", 0), ("write", 300)]),
    ("M7 neighbouring mapping, then merge back", {}, 2 * MB, False,
     [("write", 0), ("map", 256, 16, "r"), ("read", 256), ("mprotect", 256, 16, "rw"), ("write", 257)]),
    ("Z1 HP 4M: two THPs, dontneed the first", {}, 4 * MB, True,
     [("write", 0), ("write", 512), ("dontneed", 0, 512), ("read", 5)]),
    ("Z2 HP 4M: two huge zeropages, munmap one", {}, 4 * MB, True,
     [("read", 0), ("read", 512), ("munmap", 512, 512)]),
    ("Z3 HP: populate_write then dontneed all", {}, 2 * MB, True, [("populate_write",), ("dontneed",), ("read", 9)]),
    ("Z4 4M: pages in two tables, munmap the middle", {}, 4 * MB, False,
     [("write", 0), ("write", 600), ("munmap", 256, 512)]),
    ("Z5 HP: huge zeropage, dontneed a page, write it", {}, 2 * MB, True,
     [("read", 0), ("dontneed", 0, 1), ("write", 0), ("write", 1)]),
    ("Z6 zeropages, dontneed some, write them", {}, 2 * MB, False,
     [("read_all", 0, 64), ("dontneed", 0, 32), ("write_all", 0, 64)]),
    ("Z7 HP: dontneed all of a huge zeropage, read again", {}, 2 * MB, True,
     [("read", 0), ("dontneed",), ("read", 100)]),
    ("T1 prctl except-advised: HP gets a THP", {}, 2 * MB, True, [("prctl", 1, 2), ("write", 0), ("prctl", 0, 0)]),
    ("T2 prctl disable, then enable, then fault", {}, 4 * MB, True,
     [("prctl", 1, 0), ("write", 0), ("prctl", 0, 0), ("write", 512)]),
]


#: scenarios laid out in an empty 512 GiB region, with no anchor page: the upper tables are new
NO_ANCHOR = {"S81"}

HOST_ORACLE_SCENARIOS += [
    # S6: LOCK CMPXCHG with a failing compare; on x86 every locked read-modify-write is reported
    # as a write (R25), so the library's atomic (LOCK XADD of 0) stands for it
    ("S6", {}, 2 * MB, False, [("atomic", 0)]),
    ("S81", {}, 1 << 30, False, [("read", 0), ("munmap", 0, (1 << 30) // PAGE)]),
]

#: MADV_COLLAPSE scenarios of the spec's table (S35-S44; the kernel selftest khugepaged.c
#: exercises the same paths), expected to differ until the emulator has MADV_COLLAPSE (issue 4).
COLLAPSE_SCENARIOS = [
    ("S36", {}, 2 * MB, False, [("write", 0), ("collapse",)]),
    ("S37", {}, 2 * MB, False, [("read_all",), ("collapse",)]),
    ("S38", {}, 2 * MB, False, [("collapse",)]),
    ("S39", {}, 4 * MB, False, [("read_all", 0, 512), ("write", 512), ("collapse", 0, 512)]),
    ("S40", {}, 4 * MB, False, [("write", 512), ("collapse", 0, 512)]),
    ("S41", {}, 2 * MB, True, [("write", 0), ("collapse",)]),
    ("S42", {}, 2 * MB, True, [("read", 0), ("collapse",)]),
    ("S44", {}, 2 * MB, False, [("nohugepage",), ("write", 0), ("collapse",)]),
]


#: Copy-on-write after fork: the spec's rows S29-S34 (section 13), the cases the kernel selftest
#: cow.c checks for anonymous private memory (a write after fork copies; after the other process
#: exits the survivor reuses the page or THP).  Expected to differ until the emulator forks
#: (issue 4).
FORK_SCENARIOS = [
    ("S29", {}, 2 * MB, True, [("write", 0), ("fork",), ("write", 1)]),
    ("S30", {}, 2 * MB, True, [("write", 0), ("fork",), ("child", "write", 1), ("child_exit",), ("write", 1)]),
    ("S31", {}, 2 * MB, True, [("read", 0), ("fork",), ("write", 1)]),
    ("S32", {}, 2 * MB, False, [("write", 0, 1), ("fork",), ("write", 0)]),
    ("S33", {}, 2 * MB, False, [("write", 0), ("fork",), ("child_exit",), ("write", 0)]),
    ("S34", {}, 2 * MB, True, [("write", 0), ("mprotect", 256, 1, "r"), ("mprotect", 256, 1, "rw"),
                               ("fork",), ("child_exit",), ("write", 1)]),
]
