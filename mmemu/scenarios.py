"""Scenarios: the spec's scenario table (section 19) as data, and the small language that
plays them on an :class:`mmemu.MM` or an :class:`mmemu.host.HostMM` alike.

A scenario maps ``length`` bytes (2 MiB-aligned by placement, at ``offset`` bytes past a 2 MiB
boundary, or at a given ``base``), optionally MADV_HUGEPAGE on all of it, then runs steps whose
arguments are in pages of that mapping.  Expected page states are written run-length:
"Z N*511" (N none, Z zeropage, H huge zeropage, a 4K anon page, t PTE-mapped large folio (an
mTHP or a PTE-mapped THP), T PMD-mapped THP, s a PTE to a shmem page, S part of a PMD-mapped
shmem THP).

Issue 5: a scenario's mapping is private anonymous unless a step run before it (BEFORE) says
``("shared",)`` (MAP_SHARED|MAP_ANONYMOUS) or ``("memfd"[, size in pages])`` (a memfd of that
size, default the mapping's, mapped MAP_SHARED at offset 0).  MTHP_ROWS, SHMEM_ROWS and
MEMCG_ROWS are measured on the host and not yet in conformance.cases().
"""
import re

import numpy as np

from mmemu import PageState
from mmemu.errors import SyscallError

KB = 1024
MB = 1 << 20
PAGE = 4096
#: in the same 1 GiB as the first mappings placed below mmap_base, but 384 MiB away from them
ANCHOR = 0x7fffe0000000
LETTER = {"N": PageState.NONE, "Z": PageState.ZERO, "H": PageState.HUGE_ZERO,
          "a": PageState.ANON, "t": PageState.LARGE, "T": PageState.THP,
          "s": getattr(PageState, "SHMEM", 6), "S": getattr(PageState, "SHMEM_THP", 7)}


def expand(spec):
    """'Z N*511' -> array of PageState codes."""
    out = []
    for token in spec.split():
        m = re.fullmatch(r"([NZHatTsS])(?:\*(\d+))?", token)
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
        out.append(names.get(states[i], f"<{states[i]}>") + (f"*{j - i}" if j - i > 1 else ""))
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
        self.kind, self.file, self.file_pages, self.alias = "private", None, None, None
        for step in before:                        # steps before the mapping is made (prctl)
            self.step(*step)
        # An anchor page above the scenario mapping, so the upper page tables already exist and
        # VmPTE deltas read as in the spec, measured inside a running process.
        if anchor:
            mm.write(mm.mmap(PAGE, addr=ANCHOR if base is None else base + 512 * MB, fixed=True))
        kw = {}
        if self.kind == "shared":
            kw = {"shared": True}
        elif self.kind == "memfd":
            self.file = mm.memfd_create("mmemu-scenario")
            self.file.ftruncate((length // PAGE if self.file_pages is None else self.file_pages) * PAGE)
            kw = {"fd": self.file}
        if base is not None:
            self.addr = base + offset
            mm.mmap(length, addr=self.addr, fixed=True, **kw)
        elif offset or kw:
            reserved = mm.mmap(length + 4 * MB)
            mm.munmap(reserved, length + 4 * MB)
            self.addr = ((reserved + 2 * MB - 1) & ~(2 * MB - 1)) + offset
            mm.mmap(length, addr=self.addr, fixed=True, **kw)
        else:
            self.addr = mm.mmap(length)
        self.length = length
        if hp:
            mm.madvise(self.addr, length, "hugepage")
        self.base_vmstat = mm.vmstat
        self.base_mthp = {kb: dict(v) for kb, v in mm.mthp_stats.items()}
        self.base_flt = mm.rusage["min_flt"]
        self.base_pte = mm.status["VmPTE"]
        self.base_status = dict(mm.status)
        self.base_memcg = getattr(mm, "memory_current", None)
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
                    "free", "cold", "pageout", "remove"):
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
        elif op in ("mlock", "munlock"):
            first, count = args if args else (0, self.length // PAGE)
            getattr(mm, op)(self.page(first), count * PAGE)
        # ---- issue 5: shared memory and the memory cgroup ----
        elif op == "shared":                           # (BEFORE) the mapping is MAP_SHARED|MAP_ANONYMOUS
            self.kind = "shared"
        elif op == "memfd":                            # (BEFORE) the mapping is a memfd of args[0] pages
            self.kind = "memfd"
            self.file_pages = args[0] if args else None
        elif op == "punch":                            # ("punch", first, count): fallocate PUNCH_HOLE
            first, count = args if args else (0, self.length // PAGE)
            self.file.fallocate(first * PAGE, count * PAGE, punch_hole=True)
        elif op == "fallocate":                        # ("fallocate", first, count): allocate in the file
            first, count = args if args else (0, self.length // PAGE)
            self.file.fallocate(first * PAGE, count * PAGE, punch_hole=False)
        elif op == "truncate":                         # ("truncate", pages): ftruncate the memfd
            self.file.ftruncate(args[0] * PAGE)
        elif op == "map_file":                         # ("map_file", first, count): map the memfd's pages
            first, count = args                        # [first, first+count) at those pages (MAP_FIXED)
            mm.mmap(count * PAGE, "rw", self.page(first), True, fd=self.file, offset=first * PAGE)
        elif op == "close_fd":                         # close the memfd (its mappings stay)
            self.file.close()
        elif op == "map_alias":                        # ("map_alias", pages): a second mapping of the
            count = args[0] if args else self.length // PAGE       # memfd, 256 MiB above, offset 0
            self.alias = (self.addr + 256 * MB, count)
            mm.mmap(count * PAGE, "rw", self.alias[0], True, fd=self.file)
        elif op == "alias":                            # ("alias", step...): a step on the second mapping
            addr, length = self.addr, self.length
            self.addr, self.length = self.alias
            try:
                self.step(*args)
            finally:
                self.addr, self.length = addr, length
        elif op == "memory_headroom":                  # ("memory_headroom", kB): memory.max = current + kB
            mm.memory_max = mm.memory_current + args[0] * KB
        else:
            raise ValueError(op)

    def states(self):
        return self.mm.page_states(self.addr, self.length)

    def deltas(self):
        now = self.mm.vmstat
        d = {k: now[k] - self.base_vmstat[k] for k in now if now[k] != self.base_vmstat[k]}
        d.pop("pgfault", None)
        for kb, mthp in self.mm.mthp_stats.items():
            base = self.base_mthp.get(kb, {})
            d.update({f"{kb}kB/{k}": mthp[k] - base.get(k, 0) for k in mthp if mthp[k] != base.get(k, 0)})
        k = _khugepaged(self.mm)
        d.update({f"khugepaged/{n}": k[n] - self.base_khugepaged[n] for n in k if k[n] != self.base_khugepaged[n]})
        return d

    def faults(self):
        return self.mm.rusage["min_flt"] - self.base_flt

    def vmpte_delta(self):
        return self.mm.status["VmPTE"] - self.base_pte

    def view(self, key):
        """One figure by name: "smaps/<field>" summed over the VMAs of the scenario's range,
        "status/<field>" as a change since the mapping was made (kB)."""
        kind, _, field = key.partition("/")
        if kind == "status":
            return self.mm.status[field] - self.base_status[field]
        if kind == "smaps":
            total, seen = 0, set()
            for start, end, _, _ in self.mm.maps():
                if end <= self.addr or start >= self.addr + self.length or start in seen:
                    continue
                seen.add(start)
                total += self.mm.smaps(start)[field]
            return total
        raise ValueError(f"unknown view {key!r}")

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

#: shared memory on the paths the SH/ST rows do not take (protections, mlock, fork, population,
#: within_size): the host is their oracle
SHARED_ORACLE_SCENARIOS = [
    ("X1 shared: read, mprotect r then rw, write", {}, 2 * MB, False,
     [("read", 0), ("mprotect", 0, 512, "r"), ("mprotect", 0, 512, "rw"), ("write", 0), ("write", 1)]),
    ("X2 shared: write, mprotect r then rw, write", {}, 2 * MB, False,
     [("write", 0), ("mprotect", 0, 512, "r"), ("mprotect", 0, 512, "rw"), ("write", 0)]),
    ("X3 shared THP: read, mprotect r then rw, write", {"shmem_enabled": "always"}, 2 * MB, False,
     [("read", 0), ("mprotect", 0, 512, "r"), ("mprotect", 0, 512, "rw"), ("write", 0)]),
    ("X4 shared: mlock populates by reads", {}, 2 * MB, False, [("mlock", 0, 32)]),
    ("X5 shared: fork, the child writes, the parent reads", {}, 2 * MB, False,
     [("write", 0), ("fork",), ("child", "write", 1), ("read", 1)]),
    ("X6 shared THP: munmap of a quarter, read", {"shmem_enabled": "always"}, 4 * MB, False,
     [("read", 0), ("munmap", 256, 256), ("read", 600)]),
    ("X7 shared: dontneed, populate_read faults around", {}, 2 * MB, False,
     [("write", 0), ("write", 40), ("dontneed", 0, 512), ("populate_read", 0, 64)]),
    ("X8 shared: MADV_COLD", {}, 2 * MB, False, [("write", 0), ("cold", 0, 512)]),
    ("X9 shared read-only mapping: reads", {}, 2 * MB, False,
     [("mprotect", 0, 512, "r"), ("read", 0), ("read", 1)]),
    ("X10 shared THP: read, populate_write", {"shmem_enabled": "always"}, 2 * MB, False,
     [("read", 0), ("populate_write", 0, 512)]),
    ("X11 shared, advise + MADV_HUGEPAGE: populate_write", {"shmem_enabled": "advise"}, 2 * MB, True,
     [("populate_write", 0, 512)]),
    ("X12 shared, within_size: write, dontneed, read", {"shmem_enabled": "within_size"}, 2 * MB, False,
     [("write", 1), ("dontneed", 0, 512), ("read", 3)]),
]
BEFORE.update({name: [("shared",)] for name, *_ in SHARED_ORACLE_SCENARIOS})
HOST_ORACLE_SCENARIOS += SHARED_ORACLE_SCENARIOS

_M64 = {"hugepages": {64: "madvise", 2048: "never"}}
#: mTHP on the paths the MT rows do not take; madvise sizes in an HP mapping, so that no other
#: process on the host makes folios of that size meanwhile
MTHP_ORACLE_SCENARIOS = [
    ("Y1 mTHP: mremap moves it", _M64, 4 * MB, True, [("write", 0), ("write", 20), ("mremap", 64, 64, True, 1024)]),
    ("Y2 mTHP: mprotect of part, back, write", _M64, 2 * MB, True,
     [("write", 0), ("mprotect", 2, 4, "r"), ("mprotect", 2, 4, "rw"), ("write", 3)]),
    ("Y3 mTHP: fork, the child writes and exits, write", _M64, 2 * MB, True,
     [("write", 0), ("fork",), ("child", "write", 1), ("child_exit",), ("write", 2)]),
    ("Y4 mTHP 16K+256K: populate_write of 1 MiB", {"hugepages": {16: "madvise", 256: "madvise", 2048: "never"}},
     2 * MB, True, [("populate_write", 0, 256)]),
    ("Y5 mTHP: munmap of its middle, drop_caches", _M64, 2 * MB, True,
     [("write", 0), ("munmap", 4, 4), ("drop_caches",)]),
    ("Y6 mTHP: read, then writes in and beside the block", _M64, 2 * MB, True,
     [("read", 0), ("write", 1), ("write", 16)]),
    ("Y7 mTHP: mlock", _M64, 2 * MB, True, [("mlock", 0, 64)]),
    ("Y8 mTHP: MADV_FREE of it whole, a write, MADV_PAGEOUT", _M64, 2 * MB, True,
     [("write", 0), ("free", 0, 16), ("write", 3), ("pageout", 0, 16)]),
]
HOST_ORACLE_SCENARIOS += MTHP_ORACLE_SCENARIOS

_ALWAYS = {"shmem_enabled": "always"}
#: shmem THPs on the edges of the file: MADV_COLLAPSE across i_size, fallocate's THPs, cached
#: THPs under the vetoes, large folios a hole split, and the OOM killer (issue 5's last fixes)
FILE_ORACLE_SCENARIOS = [
    ("V1 memfd of 100 pages: MADV_COLLAPSE, then touch past i_size", {}, 2 * MB, False,
     [("write", 5), ("collapse", 0, 512), ("read", 300), ("write", 301), ("dontneed", 0, 512), ("read", 302)]),
    ("V2 memfd of 100 pages: MADV_COLLAPSE of 4 MiB, truncate", {}, 4 * MB, False,
     [("write", 5), ("collapse", 0, 1024), ("truncate", 50), ("read", 3)]),
    ("V3 shmem THP always: fallocate of pages inside a 2 MiB", _ALWAYS, 4 * MB, False,
     [("fallocate", 300, 10), ("read", 0), ("read", 600)]),
    ("V4 shmem THP always: fallocate across a cached THP", _ALWAYS, 4 * MB, False,
     [("write", 0), ("fallocate", 500, 30), ("read", 600)]),
    ("V5 within_size: fallocate of 4 MiB", {"shmem_enabled": "within_size"}, 4 * MB, False,
     [("fallocate", 0, 1024), ("read", 600)]),
    ("V6 cached THP, MADV_NOHUGEPAGE: mapped by PTEs", _ALWAYS, 2 * MB, False,
     [("fallocate", 0, 512), ("nohugepage", 0, 512), ("read", 3)]),
    ("V7 cached THP under PR_SET_THP_DISABLE: mapped by PTEs", _ALWAYS, 2 * MB, False,
     [("fallocate", 0, 512), ("read", 3)]),
    ("V8 cached THP under the except-advised prctl: mapped by its PMD", _ALWAYS, 2 * MB, False,
     [("fallocate", 0, 512), ("read", 3)]),
    ("V9 THP split by a hole, dontneed, write in an mTHP piece", _ALWAYS, 2 * MB, False,
     [("write", 0), ("punch", 0, 1), ("dontneed", 0, 512), ("write", 300), ("read", 2)]),
    ("V10 THP split by a hole, dontneed, read in an mTHP piece", _ALWAYS, 2 * MB, False,
     [("write", 0), ("punch", 0, 1), ("dontneed", 0, 512), ("read", 300), ("write", 200)]),
    ("V11 punch of the first 255 pages of a THP", _ALWAYS, 2 * MB, False,
     [("write", 0), ("punch", 0, 255), ("read", 300)]),
    ("V12 fallocate beyond the memory cgroup: the OOM killer", _ALWAYS, 4 * MB, False,
     [("write", 0), ("memory_headroom", 600), ("fallocate", 0, 1024)]),
    # a memfd of 768 pages (i_size inside the second 2 MiB) mapped 4 MiB
    ("V14 punch through a THP that runs past i_size", _ALWAYS, 4 * MB, False,
     [("read", 512), ("punch", 0, 1024), ("read", 3)]),
    ("V15 punch up to i_size in a THP: the split drops the pieces past EOF", _ALWAYS, 4 * MB, False,
     [("read", 512), ("punch", 0, 768), ("read", 3)]),
    ("V16 PTE-mapped THP across EOF, punch inside: the split unmaps it all", _ALWAYS, 4 * MB, False,
     [("fallocate", 512, 256), ("nohugepage", 0, 1024), ("write", 700), ("punch", 600, 10), ("read", 3)]),
    ("V17 PTE-mapped THP across EOF, truncate into it", _ALWAYS, 4 * MB, False,
     [("fallocate", 512, 256), ("nohugepage", 0, 1024), ("write", 700), ("truncate", 650), ("read", 3)]),
]
_FILE_BEFORE = {"V1": [("memfd", 100)], "V2": [("memfd", 100)], "V7": [("memfd",), ("prctl", 1, 0)],
                "V8": [("memfd",), ("prctl", 1, 2)], "V14": [("memfd", 768)], "V15": [("memfd", 768)],
                "V16": [("memfd", 768)], "V17": [("memfd", 768)]}
BEFORE.update({name: _FILE_BEFORE.get(name.split()[0], [("memfd",)]) for name, *_ in FILE_ORACLE_SCENARIOS})
HOST_ORACLE_SCENARIOS += FILE_ORACLE_SCENARIOS

HOST_ORACLE_SCENARIOS += [
    # S6: LOCK CMPXCHG with a failing compare; on x86 every locked read-modify-write is reported
    # as a write (R25), so the library's atomic (LOCK XADD of 0) stands for it
    ("S6", {}, 2 * MB, False, [("atomic", 0)]),
    ("S81", {}, 1 << 30, False, [("read", 0), ("munmap", 0, (1 << 30) // PAGE)]),
]

# Found by random scenarios played on the 6.18 host and the emulator (the session notes of
# 2026-11-29): the host is the oracle, no values are written down
EXPLORED_ORACLE_SCENARIOS = [
    ("E1 MADV_COLLAPSE inside one 2 MiB, not from its start: EINVAL", {}, 2 * MB, True,
     [("write", 0), ("collapse", 100, 50)]),
    ("E2 MADV_COLLAPSE from a 2 MiB boundary, shorter than it: nothing to do", {}, 2 * MB, True,
     [("write", 0), ("collapse", 0, 16)]),
    ("E3 memfd: MADV_COLLAPSE holding no whole 2 MiB", {}, 2 * MB, False,
     [("write", 5), ("collapse", 208, 256)]),
    ("E4 memfd of 259 pages: mlock across i_size", {}, 2 * MB, False, [("mlock", 250, 16)]),
    ("E5 shared, read-only by mprotect: MADV_REMOVE", {}, 2 * MB, False,
     [("write", 0), ("mprotect", 0, 512, "r"), ("remove", 0, 512)]),
    ("E6 THP locked in part: the underused shrinker splits it", {"khugepaged_max_ptes_none": 255}, 2 * MB, True,
     [("atomic", 264), ("mlock", 37, 16), ("drop_caches",)]),
    ("E7 THP locked whole, VMA split by mprotect: still mlocked", {"khugepaged_max_ptes_none": 255}, 2 * MB, True,
     [("write", 0), ("mlock", 0, 512), ("mprotect", 0, 256, "r"), ("drop_caches",)]),
    ("E8 THP locked in one page: MADV_PAGEOUT's split", {"thp": "always"}, 2 * MB, True,
     [("atomic", 346), ("mlock", 83, 1), ("pageout", 508, 4)]),
    ("E9 shmem THP: MADV_COLD of part splits and unmaps it", {"shmem_enabled": "always"}, 2 * MB, False,
     [("read", 0), ("cold", 16, 1), ("read", 100)]),
    ("E10 shmem THP: MADV_COLD of all of it", {"shmem_enabled": "always"}, 2 * MB, False,
     [("read", 0), ("cold", 0, 512)]),
    ("E11 shmem THP a child maps too: MADV_COLD of part", {"shmem_enabled": "always"}, 2 * MB, False,
     [("read", 0), ("fork",), ("child", "read", 0), ("cold", 0, 1)]),
]
BEFORE.update({name: {"E3": [("memfd",)], "E4": [("memfd", 259)], "E5": [("shared",)], "E9": [("shared",)],
                      "E10": [("shared",)], "E11": [("shared",)]}.get(name.split()[0], [])
               for name, *_ in EXPLORED_ORACLE_SCENARIOS})
HOST_ORACLE_SCENARIOS += EXPLORED_ORACLE_SCENARIOS

# ---- issue 4: splits, fork, madvise free/cold/pageout/collapse, khugepaged, shrinkers, mremap ----
# Same fields as ROWS.  Every value was measured on the 6.18.44 host (mmemu.host.HostMM, with
# khugepaged held off between steps and driven by ("khugepaged", passes)); where the host and the
# spec differ the host's value is written and the difference noted.  ``CHILD`` gives the page
# states a forked child shows at the end.  ``NEEDS`` names the emulator feature each needs, so
# that conformance can run the host side (and check these values) before the emulator has it.

TSP = {"thp_split_pmd": 1}
SPLIT_PAGE = {"thp_split_page": 1, "2048kB/split": 1}
PARTIAL = {"thp_deferred_split_page": 1, "2048kB/split_deferred": 1, "2048kB/nr_anon_partially_mapped": 1}
COLLAPSED = {"thp_collapse_alloc": 1, "2048kB/nr_anon": 1, "nr_anon_transparent_hugepages": 1}
FAULT_ONLY = {"thp_fault_alloc": 1, "2048kB/anon_fault_alloc": 1}   # a THP faulted, since gone as a PMD


def _anon(n):
    return {"nr_anon_pages": n} if n else {}


ISSUE4_ROWS = [
    # PMD splits (R47, R50, R65-R67)
    ("S19", {}, 2 * MB, True, [("write", 0), ("dontneed", 256, 1)], "t*256 N t*255", (2044, 0), 1,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **PARTIAL, **_anon(511)}, 4),
    ("S21", {}, 2 * MB, True, [("write", 0), ("munmap", 256, 1)], "t*256 N t*255", (2044, 0), 1,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **PARTIAL, **_anon(511)}, 4),
    ("S22", {}, 2 * MB, True, [("write", 0), ("mprotect", 256, 1, "r")], "t*512", (2048, 0), 1,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **_anon(512)}, 4),
    # fork (R74-R78); the parent's view, CHILD below the child's
    ("S29", {}, 2 * MB, True, [("write", 0), ("fork",), ("write", 1)], "t a t*510", (2048, 0), 2,
     {**THP_FAULT, **TSP, **_anon(513)}, 4),
    ("S30", {}, 2 * MB, True, [("write", 0), ("fork",), ("child", "write", 1), ("child_exit",), ("write", 1)],
     "T*512", (2048, 2048), 2, {**THP_FAULT, **TSP}, 4),
    ("S31", {}, 2 * MB, True, [("read", 0), ("fork",), ("write", 1)], "T*512", (2048, 2048), 2,
     {**HZA, **THP_FAULT}, 4),
    ("S32", {}, 2 * MB, False, [("write", 0, 1), ("fork",), ("write", 0)], "a*2 N*510", (8, 0), 3, _anon(3), 4),
    ("S33", {}, 2 * MB, False, [("write", 0), ("fork",), ("child_exit",), ("write", 0)], "a N*511", (4, 0), 2,
     _anon(1), 4),
    ("S34", {}, 2 * MB, True, [("write", 0), ("mprotect", 256, 1, "r"), ("mprotect", 256, 1, "rw"), ("fork",),
                               ("child_exit",), ("write", 1)], "t*512", (2048, 0), 2,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **_anon(512)}, 4),
    # MADV_COLLAPSE (R64)
    ("S35", {}, 2 * MB, True, [("write", 0), ("dontneed", 0, 1), ("collapse",)], "T*512", (2048, 2048), 1,
     {**THP_FAULT, **TSP, "thp_deferred_split_page": 1, "2048kB/split_deferred": 1, "thp_collapse_alloc": 1}, 4),
    ("S36", {}, 2 * MB, False, [("write", 0), ("collapse",)], "T*512", (2048, 2048), 1,
     {**COLLAPSED, **_anon(512)}, 4),
    ("S37", {}, 2 * MB, False, [("read_all",), ("collapse",)], "Z*512", (0, 0), 512, {}, 4),
    ("S38", {}, 2 * MB, False, [("collapse",)], "N*512", (0, 0), 0, {}, 0),
    ("S39", {}, 4 * MB, False, [("read_all", 0, 512), ("write", 512), ("collapse", 0, 512)], "T*512 a N*511",
     (2052, 2048), 513, {**COLLAPSED, **_anon(513)}, 8),
    ("S40", {}, 4 * MB, False, [("write", 512), ("collapse", 0, 512)], "N*512 a N*511", (4, 0), 1, _anon(1), 4),
    ("S41", {}, 2 * MB, True, [("write", 0), ("collapse",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S42", {}, 2 * MB, True, [("read", 0), ("collapse",)], "H*512", (0, 0), 1, HZA, 4),
    ("S43", {}, 2 * MB, True, [("write", 0), ("mprotect", 256, 1, "r"), ("mprotect", 256, 1, "rw"), ("collapse",)],
     "T*512", (2048, 2048), 1, {**THP_FAULT, **TSP, "thp_collapse_alloc": 1}, 4),
    ("S44", {}, 2 * MB, False, [("nohugepage",), ("write", 0), ("collapse",)], "a N*511", (4, 0), 1, _anon(1), 4),
    # khugepaged (R68-R73), one full pass after the last step
    ("S45", {}, 2 * MB, False, [("write", 0), ("hugepage",), ("khugepaged", 1)], "T*512", (2048, 2048), 1,
     {**COLLAPSED, **_anon(512), "khugepaged/pages_collapsed": 1}, 4),
    ("S46", {}, 2 * MB, False, [("read_all",), ("hugepage",), ("khugepaged", 1)], "Z*512", (0, 0), 512, {}, 4),
    ("S47", {}, 2 * MB, True, [("read", 0), ("dontneed", 256, 1), ("khugepaged", 1)], "Z*256 N Z*255", (0, 0), 1,
     {**HZA, **TSP, "thp_scan_exceed_none_pte": 1}, 4),
    ("S48", {}, 2 * MB, True, [("read", 0), ("dontneed", 256, 1), ("write", 0), ("khugepaged", 1)], "T*512",
     (2048, 2048), 2, {**HZA, **TSP, **COLLAPSED, **_anon(512), "khugepaged/pages_collapsed": 1}, 4),
    ("S49", {}, 2 * MB, False, [("write_all", 0, 256), ("hugepage",), ("khugepaged", 1)], "T*512", (2048, 2048),
     256, {**COLLAPSED, **_anon(512), "khugepaged/pages_collapsed": 1}, 4),
    # MADV_FREE and the deferred-split shrinker (R52, R54, R60)
    ("S70", {}, 2 * MB, True, [("write", 0), ("free",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S71", {}, 2 * MB, True, [("write", 0), ("free", 0, 256)], "a Z*511", (4, 0), 1,
     {**FAULT_ONLY, **TSP, **SPLIT_PAGE, **_anon(1)}, 4),
    ("S72", {}, 2 * MB, True, [("write", 0), ("dontneed", 256, 1), ("drop_caches",)], "a Z*255 N Z*255", (4, 0), 1,
     {**FAULT_ONLY, **TSP, **SPLIT_PAGE, "thp_deferred_split_page": 1, "2048kB/split_deferred": 1, **_anon(1)}, 4),
    ("S73", {}, 2 * MB, True, [("write_all",), ("dontneed", 256, 1), ("drop_caches",)], "a*256 N a*255",
     (2044, 0), 1,
     {**FAULT_ONLY, **TSP, **SPLIT_PAGE, "thp_deferred_split_page": 1, "2048kB/split_deferred": 1, **_anon(511)}, 4),
    ("S74", {}, 2 * MB, True, [("write", 0), ("drop_caches",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    # mremap (R67).  S75 moves with MREMAP_FIXED to 4 MiB further on (the spec's row grew with
    # MREMAP_MAYMOVE where the pages after it were taken): both move the PMD whole.
    ("S75", {}, 2 * MB, True, [("write", 0), ("mremap", 512, 1024, True, 1024)], "T*512 N*512", (2048, 2048), 1,
     THP_FAULT, 4),
    ("S76", {}, 2 * MB, True, [("write", 0), ("mremap", 512, 256)], "t*256", (1024, 0), 1,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **PARTIAL, **_anon(256)}, 4),
    # mlock populates as a write (R79)
    ("S78", {}, 2 * MB, True, [("mlock",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
]

#: Further scenarios for sections 2, 3 and 9-14, with what the 6.18 host showed.
EXTRA_ROWS = [
    # mremap
    ("R1 mremap grows a THP mapping in place", {}, 2 * MB, True, [("write", 0), ("mremap", 512, 1024)],
     "T*512 N*512", (2048, 2048), 1, THP_FAULT, 4),
    ("R2 mremap moves a PTE-mapped THP", {}, 2 * MB, True,
     [("write", 0), ("dontneed", 256, 1), ("mremap", 512, 512, True, 1024)], "t*256 N t*255", (2044, 0), 1,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **PARTIAL, **_anon(511)}, 4),
    ("R3 mremap moves a THP to an unaligned address", {}, 2 * MB, True,
     [("write", 0), ("mremap", 512, 512, True, 1025)], "t*512", (2048, 0), 1,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **_anon(512)}, 8),
    ("R4 mremap moves 4K pages and a zeropage", {}, 2 * MB, False,
     [("write", 0, 5), ("read", 7), ("mremap", 512, 512, True, 1024), ("write", 7)], "a N*4 a N a N*504",
     (12, 0), 4, _anon(3), 4),
    ("R5 mremap shrinks 4K pages, then grows back", {}, 2 * MB, False,
     [("write_all", 0, 512), ("mremap", 512, 256), ("mremap", 256, 512), ("read", 300)], "a*256 N*44 Z N*211",
     (1024, 0), 513, _anon(256), 4),
    ("R6 mremap moves the huge zeropage", {}, 2 * MB, True,
     [("read", 0), ("mremap", 512, 512, True, 1024), ("write", 3)], "T*512", (2048, 2048), 2,
     {**HZA, **THP_FAULT}, 4),
    ("R7 mremap cannot grow in place without maymove", {}, 2 * MB, True,
     [("write", 0), ("map", 512, 1, "r"), ("mremap", 512, 1024)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    # fork
    ("F1 fork, then copy-on-write in a PTE-mapped THP", {}, 2 * MB, True,
     [("write", 0), ("dontneed", 256, 1), ("fork",), ("write", 1), ("child", "write", 2)], "t a t*254 N t*255",
     (2044, 0), 2, {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **PARTIAL, **_anon(513)}, 4),
    ("F2 fork, both write the THP, the child stays", {}, 2 * MB, True,
     [("write", 0), ("fork",), ("child", "write", 1), ("write", 2)], "t*2 a t*509", (2048, 0), 2,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, "thp_split_pmd": 2, **_anon(514)}, 4),
    ("F3 fork of zeropages only (no anon_vma: not copied)", {}, 2 * MB, False,
     [("read_all", 0, 16), ("fork",), ("child", "read", 0), ("child", "write", 1)], "Z*16 N*496", (0, 0), 16,
     _anon(1), 4),
    ("F4 fork of the huge zeropage, both write", {}, 2 * MB, True,
     [("read", 0), ("fork",), ("child", "write", 1), ("write", 2)], "T*512", (2048, 2048), 2,
     {**HZA, "thp_fault_alloc": 2, "2048kB/anon_fault_alloc": 2, "2048kB/nr_anon": 2,
      "nr_anon_transparent_hugepages": 2, **_anon(1024)}, 4),
    ("F5 fork, the child drops its copy, the parent reuses", {}, 2 * MB, False,
     [("write", 0), ("fork",), ("child", "dontneed", 0, 1), ("write", 0)], "a N*511", (4, 0), 2, _anon(1), 4),
    ("F6 fork, the parent drops the THP, the child reuses it", {}, 2 * MB, True,
     [("write", 0), ("fork",), ("dontneed",), ("child", "write", 5)], "N*512", (0, 0), 1, THP_FAULT, 0),
    # khugepaged limits
    ("K1 max_ptes_none 255: 256 none PTEs", {"khugepaged_max_ptes_none": 255}, 2 * MB, False,
     [("write_all", 0, 256), ("hugepage",), ("khugepaged", 1)], "a*256 N*256", (1024, 0), 256,
     {"thp_scan_exceed_none_pte": 1, **_anon(256)}, 4),
    ("K2 max_ptes_none 255: 255 none PTEs", {"khugepaged_max_ptes_none": 255}, 2 * MB, False,
     [("write_all", 0, 257), ("hugepage",), ("khugepaged", 1)], "T*512", (2048, 2048), 257,
     {**COLLAPSED, **_anon(512), "khugepaged/pages_collapsed": 1}, 4),
    ("K3 300 pages shared with a child: over max_ptes_shared", {}, 2 * MB, False,
     [("write_all", 0, 300), ("fork",), ("write_all", 300, 212), ("hugepage",), ("khugepaged", 1)], "a*512",
     (2048, 0), 512, {"thp_scan_exceed_share_pte": 1, **_anon(512)}, 4),
    ("K4 300 pages shared with a child, max_ptes_shared 300", {"khugepaged_max_ptes_shared": 300}, 2 * MB, False,
     [("write_all", 0, 300), ("fork",), ("write_all", 300, 212), ("hugepage",), ("khugepaged", 1)], "T*512",
     (2048, 2048), 512, {**COLLAPSED, **_anon(812), "khugepaged/pages_collapsed": 1}, 4),
    ("K5 MADV_COLD pages are not collapsed (no young PTE)", {}, 2 * MB, False,
     [("write_all", 0, 8), ("cold",), ("hugepage",), ("khugepaged", 1)], "a*8 N*504", (32, 0), 8, _anon(8), 4),
    ("K6 a THP PTE-mapped by mprotect is collapsed again", {}, 2 * MB, True,
     [("write", 0), ("mprotect", 256, 1, "r"), ("mprotect", 256, 1, "rw"), ("khugepaged", 1)], "T*512",
     (2048, 2048), 1, {**THP_FAULT, **TSP, "thp_collapse_alloc": 1, "khugepaged/pages_collapsed": 1}, 4),
    ("K7 a partially mapped THP is collapsed into a new one", {}, 2 * MB, True,
     [("write", 0), ("dontneed", 256, 1), ("khugepaged", 1)], "T*512", (2048, 2048), 1,
     {**THP_FAULT, **TSP, "thp_deferred_split_page": 1, "2048kB/split_deferred": 1, "thp_collapse_alloc": 1,
      "khugepaged/pages_collapsed": 1}, 4),
    ("K8 max_ptes_none 0: one none PTE", {"khugepaged_max_ptes_none": 0}, 2 * MB, False,
     [("write_all", 0, 511), ("hugepage",), ("khugepaged", 1)], "a*511 N", (2044, 0), 511,
     {"thp_scan_exceed_none_pte": 1, **_anon(511)}, 4),
    # the underused-THP shrinker (R54)
    ("U1 an underused THP is split by the shrinker", {"khugepaged_max_ptes_none": 255}, 2 * MB, True,
     [("write", 0), ("drop_caches",)], "a Z*511", (4, 0), 1,
     {**FAULT_ONLY, **TSP, **SPLIT_PAGE, "thp_underused_split_page": 1, **_anon(1)}, 4),
    ("U2 a THP with enough written pages is kept", {"khugepaged_max_ptes_none": 255}, 2 * MB, True,
     [("write_all", 0, 300), ("drop_caches",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("U3 shrink_underused 0 keeps the THP", {"khugepaged_max_ptes_none": 255, "shrink_underused": False}, 2 * MB,
     True, [("write", 0), ("drop_caches",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    # MADV_COLD / MADV_PAGEOUT (R61).  C4: with no swap device reclaim splits the THP it cannot
    # swap out (shrink_folio_list falls back to order 0), zero subpages become the zeropage.
    ("C1 MADV_COLD of part of a THP", {}, 2 * MB, True, [("write", 0), ("cold", 0, 256)], "a Z*511", (4, 0), 1,
     {**FAULT_ONLY, **TSP, **SPLIT_PAGE, **_anon(1)}, 4),
    ("C2 MADV_PAGEOUT of part of a THP", {}, 2 * MB, True, [("write", 0), ("pageout", 0, 256)], "a Z*511", (4, 0),
     1, {**FAULT_ONLY, **TSP, **SPLIT_PAGE, **_anon(1)}, 4),
    ("C3 MADV_COLD of a whole THP", {}, 2 * MB, True, [("write", 0), ("cold",)], "T*512", (2048, 2048), 1,
     THP_FAULT, 4),
    ("C4 MADV_PAGEOUT of a whole THP, no swap", {}, 2 * MB, True, [("write", 0), ("pageout",)], "a Z*511", (4, 0), 1,
     {**FAULT_ONLY, **TSP, **SPLIT_PAGE, **_anon(1)}, 4),
    ("C5 MADV_COLD of part of a THP shared with a child", {}, 2 * MB, True, [("write", 0), ("fork",), ("cold", 0, 256)],
     "T*512", (2048, 2048), 1, THP_FAULT, 4),
    # MADV_FREE (R60).  L4: reclaim splits the lazy-free THP's PMD and discards the folio (the PTE
    # table stays); L5: a write after MADV_FREE keeps the folio, PTE-mapped.
    ("L1 MADV_FREE, then a write (no fault)", {}, 2 * MB, True, [("write", 0), ("free",), ("write", 1)], "T*512",
     (2048, 2048), 1, THP_FAULT, 4),
    ("L2 MADV_FREE, then MADV_PAGEOUT discards", {}, 2 * MB, False, [("write_all", 0, 4), ("free",), ("pageout",)],
     "N*512", (0, 0), 4, {}, 4),
    ("L3 MADV_FREE, a write, MADV_PAGEOUT", {}, 2 * MB, False,
     [("write_all", 0, 4), ("free",), ("write", 1), ("pageout",)], "N a N*510", (4, 0), 4, _anon(1), 4),
    ("L4 MADV_FREE of a THP, then MADV_PAGEOUT", {}, 2 * MB, True, [("write", 0), ("free",), ("pageout",)],
     "N*512", (0, 0), 1, {**FAULT_ONLY, **TSP}, 4),
    ("L5 MADV_FREE of a THP, a write, MADV_PAGEOUT", {}, 2 * MB, True,
     [("write", 0), ("free",), ("write", 1), ("pageout",)], "t*512", (2048, 0), 1,
     {**FAULT_ONLY, "2048kB/nr_anon": 1, **TSP, **_anon(512)}, 4),
    ("L6 MADV_FREE of part of a THP, then MADV_PAGEOUT", {}, 2 * MB, True,
     [("write", 0), ("free", 0, 256), ("pageout",)], "N Z*511", (0, 0), 1, {**FAULT_ONLY, **TSP, **SPLIT_PAGE}, 4),
    ("L7 MADV_FREE of a THP shared with a child", {}, 2 * MB, True, [("write", 0), ("fork",), ("free",)], "T*512",
     (2048, 2048), 1, THP_FAULT, 4),
    ("L8 MADV_FREE, a read, MADV_PAGEOUT discards", {}, 2 * MB, False,
     [("write_all", 0, 4), ("free",), ("read", 1), ("pageout",)], "N*512", (0, 0), 4, {}, 4),
    # mlock (R79): 4K pages written in, one fault each; a read-only mapping gets zeropages; part
    # of a mapping splits it; an mlocked mapping refuses MADV_DONTNEED; munlock merges it back
    ("ML1 mlock of a mapping not advised", {}, 2 * MB, False, [("mlock",)], "a*512", (2048, 0), 512,
     {"nr_anon_pages": 512}, 4),
    ("ML2 mlock of part, dontneed refused, munlock", {}, 2 * MB, False,
     [("mlock", 256, 256), ("dontneed", 256, 1), ("munlock", 256, 256)], "N*256 a*256", (1024, 0), 256,
     {"nr_anon_pages": 256}, 4),
    # an mlocked THP: a split keeps its zero subpages (R52); the underused shrinker skips it (R54)
    ("ML3 mlocked THP, a hole, the shrinker splits it", {}, 2 * MB, True,
     [("write", 0), ("mlock",), ("munmap", 256, 1), ("drop_caches",)], "a*256 N a*255", (2044, 0), 1,
     {**FAULT_ONLY, **TSP, **SPLIT_PAGE, "thp_deferred_split_page": 1, "2048kB/split_deferred": 1,
      **_anon(511)}, 4),
    ("ML4 mlocked underused THP, the shrinker", {"khugepaged_max_ptes_none": 100}, 2 * MB, True,
     [("write", 0), ("mlock",), ("drop_caches",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
]

#: what the child of a forking scenario shows at the end (page states, its faults)
CHILD = {
    "S29": ("T*512", 0), "S31": ("H*512", 0), "S32": ("a*2 N*510", 0),
    "F1": ("t*2 a t*253 N t*255", 1), "F2": ("t a t*510", 1), "F3": ("Z a N*510", 2), "F4": ("T*512", 1),
    "F5": ("N*512", 0), "F6": ("T*512", 1), "K3": ("a*300 N*212", 0), "K4": ("a*300 N*212", 0),
    "C5": ("T*512", 0), "L7": ("T*512", 0),
}

#: the system calls of a row that fail, and how
ERRORS = {"S37": [("collapse", "EINVAL")], "S38": [("collapse", "EINVAL")], "S40": [("collapse", "EINVAL")],
          "S44": [("collapse", "EINVAL")], "R7": [("mremap", "ENOMEM")], "ML2": [("dontneed", "EINVAL")]}

_FEATURES = {"fork": "fork", "child": "fork", "collapse": "MADV_COLLAPSE", "khugepaged": "khugepaged",
             "drop_caches": "the shrinkers", "free": "MADV_FREE", "cold": "MADV_COLD",
             "pageout": "MADV_PAGEOUT", "mremap": "mremap",
             # issue 5
             "shared": "shared memory", "memfd": "memfd", "remove": "MADV_REMOVE", "punch": "fallocate",
             "fallocate": "fallocate", "truncate": "ftruncate", "map_alias": "memfd", "map_file": "memfd",
             "close_fd": "memfd", "memory_headroom": "memory cgroup"}


def needs(steps, before=()):
    """The issue-4/5 features a scenario's steps (and BEFORE steps) use (for reports while the
    emulator lacks them)."""
    return sorted({_FEATURES[s[0]] for s in list(before) + list(steps) if s[0] in _FEATURES})


def short(name):
    """A scenario's id: 'K1 max_ptes_none ...' -> 'K1'."""
    return name.split()[0]


#: counters the host's figures can be held to: system-wide, but on an idle machine only the
#: scenario moves them (nr_anon_pages and nr_page_table_pages move with the interpreter's own
#: memory, thp_zero_page_alloc with the huge zeropage's lifetime, full_scans with time)
HOST_COUNTERS = ("thp_fault_alloc", "thp_fault_fallback", "thp_fault_fallback_charge", "thp_split_pmd",
                 "thp_collapse_alloc", "thp_collapse_alloc_failed", "thp_split_page", "thp_split_page_failed",
                 "thp_deferred_split_page", "thp_underused_split_page", "nr_anon_transparent_hugepages",
                 "khugepaged/pages_collapsed") + tuple(
    f"2048kB/{n}" for n in ("anon_fault_alloc", "anon_fault_fallback", "split", "split_failed", "split_deferred",
                            "nr_anon", "nr_anon_partially_mapped"))
#: counted once per khugepaged pass over a failing range: compared as happened / did not happen
#: issue 5: shmem THP counters (nr_shmem_hugepages and nr_shmem_pmdmapped move by whole THPs,
#: past the per-CPU batching; nr_shmem itself moves in 4K pages and is batched: not held) and the
#: per-size stats of every size (no process but a scenario uses mTHP or shmem THP while held)
HOST_COUNTERS += ("thp_file_alloc", "thp_file_fallback", "thp_file_fallback_charge", "thp_file_mapped",
                  "nr_shmem_hugepages", "nr_shmem_pmdmapped") + tuple(
    f"{kb}kB/{n}" for kb in (16, 32, 64, 128, 256, 512, 1024, 2048)
    for n in ("anon_fault_alloc", "anon_fault_fallback", "anon_fault_fallback_charge", "split", "split_failed",
              "split_deferred", "nr_anon", "nr_anon_partially_mapped", "shmem_alloc", "shmem_fallback",
              "shmem_fallback_charge") if f"{kb}kB/{n}" not in HOST_COUNTERS)
PER_PASS_COUNTERS = ("thp_scan_exceed_none_pte", "thp_scan_exceed_swap_pte", "thp_scan_exceed_share_pte")


def host_view(deltas):
    """The part of a scenario's counter deltas the host is held to (PER_PASS_COUNTERS as 0/1)."""
    out = {k: v for k, v in deltas.items() if k in HOST_COUNTERS and v}
    out.update({k: 1 for k in PER_PASS_COUNTERS if deltas.get(k, 0) > 0})
    return out


def play_row(mm, row, base=None):
    """Play one row with expected values on mm (an MM or a HostMM), at ``base`` (see Run);
    returns the Run, its failed system calls in ``run.errors``."""
    name, config, length, hp, steps = row[:5]
    run = Run(mm, length, hp, offset=OFFSETS.get(name, 0), before=BEFORE.get(name, ()), base=base)
    run.errors = []
    for step in steps:
        try:
            run.step(*step)
        except SyscallError as exc:
            run.errors.append((step[0], exc.errname))
    return run


def mismatches(run, row, host=False):
    """How a played row differs from its expected values (empty list: as expected).  ``host``:
    compare only what a real machine shows exactly (host_view of the counters)."""
    name, config, length, hp, steps, states, (rss, ahp), faults, deltas, vmpte = row
    out = []
    if getattr(run, "errors", []) != ERRORS.get(short(name), []):
        out.append(f"errors {run.errors}, expected {ERRORS.get(short(name), [])}")
    got = describe(run.states())
    if got != describe(expand(states)):
        out.append(f"page states {got}, expected {states}")
    if run.rss_ahp() != (rss, ahp):
        out.append(f"Rss/AnonHugePages {run.rss_ahp()}, expected {(rss, ahp)}")
    if run.faults() != faults:
        out.append(f"faults {run.faults()}, expected {faults}")
    if run.vmpte_delta() != vmpte:
        out.append(f"VmPTE {run.vmpte_delta():+} kB, expected {vmpte:+} kB")
    now = run.deltas()
    if host:
        got_d, want_d = host_view(now), host_view(deltas)
    else:
        got_d = {k: v for k, v in now.items() if k != "khugepaged/full_scans"}
        want_d = {k: v for k, v in deltas.items() if v}      # a 0 states "did not move"
        if not any(s[0] == "fork" for s in steps) and vmpte // 4:
            want_d["nr_page_table_pages"] = vmpte // 4
        else:
            got_d.pop("nr_page_table_pages", None)
    if got_d != want_d:
        keys = sorted(set(got_d) | set(want_d))
        out.append("counters " + ", ".join(f"{k} {got_d.get(k, 0):+} (expected {want_d.get(k, 0):+})"
                                           for k in keys if got_d.get(k, 0) != want_d.get(k, 0)))
    for key, want in EXPECT.get(short(name), {}).items():
        got = run.view(key)
        if got != want:
            out.append(f"{key} {got}, expected {want}")
    child = CHILD.get(short(name))
    if child is not None and run.child is not None:
        got = describe(run.child.page_states(run.addr, run.length))
        if got != describe(expand(child[0])):
            out.append(f"child page states {got}, expected {child[0]}")
        if run.child.rusage["min_flt"] != child[1]:
            out.append(f"child faults {run.child.rusage['min_flt']}, expected {child[1]}")
    return out


# ---- issue 5: multi-size THP, shared memory (shmem/memfd), the memory cgroup ---------------------
# Same fields as ROWS; measured on the 6.18.44 host (mmemu.host.HostMM; docs/shmem-host-findings.md
# has each experiment).  Not in conformance.cases() yet: the emulator does not have these features.
# mTHP rows enable their sizes as "madvise" in a MADV_HUGEPAGE mapping (2048 kB off unless the row
# is about it): with "always" every process on the machine faults mTHPs and the system-wide
# per-size stats are not the scenario's alone (the states and faults are the same).  Shared rows
# say so in BEFORE: ("shared",) MAP_SHARED|MAP_ANONYMOUS, ("memfd"[, pages]) a memfd mapped at
# offset 0.  EXPECT holds figures beyond the row's fields (Run.view).

def _m(kb, alloc=1, nr=None, **more):
    """Per-size stats of one size: anon_fault_alloc, nr_anon (default: alloc) and more."""
    d = {f"{kb}kB/anon_fault_alloc": alloc}
    nr = alloc if nr is None else nr
    if nr:
        d[f"{kb}kB/nr_anon"] = nr
    d.update({f"{kb}kB/{k}": v for k, v in more.items() if v})
    return d


C64 = {"hugepages": {64: "madvise", 2048: "never"}}
C16_64 = {"hugepages": {16: "madvise", 64: "madvise", 2048: "never"}}
#: an mTHP split by MADV_FREE/COLD/PAGEOUT or by the shrinker: its PTEs are unmapped one by one
#: first, so the folio is counted partially mapped (split_deferred +1) on the way (6.18)
MSPLIT = {"64kB/split": 1, "64kB/split_deferred": 1}

MTHP_ROWS = [
    # faults (R36)
    ("MT1 64K mTHP: a write maps its aligned 16 pages", C64, 2 * MB, True, [("write", 5)], "t*16 N*496", (64, 0), 1,
     {**_m(64), **_anon(16)}, 4),
    ("MT2 a zeropage blocks its 64K block", C64, 2 * MB, True, [("read", 0), ("write", 1)], "Z a N*510", (4, 0), 2,
     _anon(1), 4),
    ("MT3 16K+64K: a zeropage blocks both blocks, then 16K, then 64K", C16_64, 2 * MB, True,
     [("read", 16), ("write", 17), ("write", 20), ("write", 33)], "N*16 Z a N*2 t*4 N*8 t*16 N*464", (84, 0), 4,
     {**_m(16), **_m(64), **_anon(21)}, 4),
    ("MT4 VMA 4K past a 64K boundary: its first block cannot be used", C64, 2 * MB, True,
     [("write", 0), ("write", 15), ("write", 16)], "a N*14 t*16 N*481", (68, 0), 2, {**_m(64), **_anon(17)}, 4),
    ("MT5 read faults map the zeropage", C64, 2 * MB, True, [("read", 0), ("read", 20)], "Z N*19 Z N*491", (0, 0), 2,
     {}, 4),
    ("MT6 64K not advised: 4K", C64, 2 * MB, False, [("write", 0)], "a N*511", (4, 0), 1, _anon(1), 4),
    ("MT7 64K and 2048K in an HP VMA: a PMD THP", {"hugepages": {64: "madvise"}}, 2 * MB, True, [("write", 0)],
     "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("MT8 64K and 2048K in a 1 MiB HP VMA: 64K", {"hugepages": {64: "madvise"}}, 1 * MB, True, [("write", 0)],
     "t*16 N*240", (64, 0), 1, {**_m(64), **_anon(16)}, 4),
    ("MT9 all sizes below 2 MiB: the largest that fits", {"hugepages": {**{kb: "madvise" for kb in (
        16, 32, 64, 128, 256, 512, 1024)}, 2048: "never"}}, 2 * MB, True, [("write", 3), ("write", 300)], "t*512",
     (2048, 0), 2, {**_m(1024, 2), **_anon(512)}, 4),
    ("MT10 populate_write: one fault per mTHP", C64, 256 * KB, True, [("populate_write",)], "t*64", (256, 0), 4,
     {**_m(64, 4), **_anon(64)}, 4),
    ("MT11 populate_read: zeropages", C64, 256 * KB, True, [("populate_read",)], "Z*64", (0, 0), 64, {}, 4),
    # partial unmaps (R50, R58) and the shrinker
    ("MT12 MADV_DONTNEED of part of an mTHP", C64, 2 * MB, True, [("write", 0), ("dontneed", 0, 4)],
     "N*4 t*12 N*496", (48, 0), 1, {**_m(64, split_deferred=1, nr_anon_partially_mapped=1), **_anon(12)}, 4),
    ("MT13 ... then the shrinker splits it, zero pages to the zeropage", C64, 2 * MB, True,
     [("write", 0), ("dontneed", 0, 4), ("drop_caches",)], "N*4 Z*12 N*496", (0, 0), 1, {**_m(64, nr=0), **MSPLIT}, 4),
    ("MT14 ... written pages stay", C64, 2 * MB, True, [("write_all", 0, 16), ("dontneed", 4, 4), ("drop_caches",)],
     "a*4 N*4 a*8 N*496", (48, 0), 1, {**_m(64, nr=0), **MSPLIT, **_anon(12)}, 4),
    ("MT15 munmap of part of an mTHP", C64, 2 * MB, True, [("write_all", 0, 16), ("munmap", 12, 4)], "t*12 N*500",
     (48, 0), 1, {**_m(64, split_deferred=1, nr_anon_partially_mapped=1), **_anon(12)}, 4),
    ("MT16 MADV_DONTNEED of a whole mTHP", C64, 2 * MB, True, [("write", 0), ("dontneed", 0, 16)], "N*512", (0, 0), 1,
     _m(64, nr=0), 4),
    ("MT17 a write into the hole of a partly unmapped mTHP: 4K", C64, 2 * MB, True,
     [("write", 0), ("dontneed", 4, 4), ("write", 5)], "t*4 N a N*2 t*8 N*496", (52, 0), 2,
     {**_m(64, split_deferred=1, nr_anon_partially_mapped=1), **_anon(13)}, 4),
    ("MT18 mprotect of part of an mTHP: no split", C64, 2 * MB, True,
     [("write", 0), ("mprotect", 4, 4, "r"), ("write", 1)], "t*16 N*496", (64, 0), 1, {**_m(64), **_anon(16)}, 4),
    # fork (R40: copy 4K while shared, reuse once only this mm maps it)
    ("MT19 fork, both write an mTHP: 4K copies", C64, 2 * MB, True,
     [("write", 0), ("fork",), ("write", 1), ("child", "write", 2)], "t a t*14 N*496", (64, 0), 2,
     {**_m(64), **_anon(18)}, 4),
    ("MT20 fork, the child exits, the parent reuses the mTHP", C64, 2 * MB, True,
     [("write", 0), ("fork",), ("child_exit",), ("write", 1)], "t*16 N*496", (64, 0), 2, {**_m(64), **_anon(16)}, 4),
    ("MT21 fork, the parent drops half: still mapped by the child", C64, 2 * MB, True,
     [("write", 0), ("fork",), ("dontneed", 0, 8)], "N*8 t*8 N*496", (32, 0), 1, {**_m(64), **_anon(16)}, 4),
    # MADV_FREE / COLD / PAGEOUT (R60, R61): part splits the mTHP, whole acts on it whole
    ("MT22 MADV_FREE of part of an mTHP", C64, 2 * MB, True, [("write", 0), ("free", 0, 8)], "a Z*15 N*496", (4, 0), 1,
     {**_m(64, nr=0), **MSPLIT, **_anon(1)}, 4),
    ("MT23 MADV_FREE of a whole mTHP", C64, 2 * MB, True, [("write", 0), ("free", 0, 16)], "t*16 N*496", (64, 0), 1,
     {**_m(64), **_anon(16)}, 4),
    ("MT24 MADV_FREE of a whole mTHP, then MADV_PAGEOUT", C64, 2 * MB, True,
     [("write", 0), ("free", 0, 16), ("pageout", 0, 16)], "N*512", (0, 0), 1, _m(64, nr=0), 4),
    ("MT25 MADV_PAGEOUT of a whole mTHP, no swap", C64, 2 * MB, True, [("write", 0), ("pageout", 0, 16)],
     "a Z*15 N*496", (4, 0), 1, {**_m(64, nr=0), **MSPLIT, **_anon(1)}, 4),
    ("MT26 MADV_COLD of part of an mTHP", C64, 2 * MB, True, [("write", 0), ("cold", 0, 8)], "a Z*15 N*496", (4, 0),
     1, {**_m(64, nr=0), **MSPLIT, **_anon(1)}, 4),
    # collapse (R64, R68): mTHP pages are ordinary present pages
    ("MT27 MADV_COLLAPSE over mTHPs", C64, 2 * MB, True, [("write", 0), ("write", 100), ("collapse",)], "T*512",
     (2048, 2048), 2, {**_m(64, 2, nr=0), **COLLAPSED, **_anon(512)}, 4),
    ("MT28 khugepaged over mTHPs", {"hugepages": {64: "madvise"}}, 2 * MB, True,
     [("nohugepage", 0, 512), ("write", 511), ("hugepage", 0, 512), ("write", 0), ("write", 100), ("khugepaged", 1)],
     "T*512", (2048, 2048), 3, {**_m(64, 2, nr=0), **COLLAPSED, **_anon(512), "khugepaged/pages_collapsed": 1}, 4),
]

SH, MF = [("shared",)], [("memfd",)]
ALWAYS = {"shmem_enabled": "always"}


def _shm(n):
    return {"nr_shmem": n} if n else {}


#: a shmem THP allocated by a fault and mapped by a PMD
SHMEM_THP = {"thp_file_alloc": 1, "thp_file_mapped": 1, "2048kB/shmem_alloc": 1, "nr_shmem_hugepages": 1,
             "nr_shmem_pmdmapped": 1, **_shm(512)}

SHMEM_ROWS = [
    # faults: a read allocates, maps writable; a write maps one page; fault-around (64 KiB) maps
    # the pages already in the page cache
    ("SH1 shared anon: a read allocates, the write after it takes no fault", {}, 2 * MB, False,
     [("read", 0), ("write", 0), ("write", 5)], "s N*4 s N*506", (8, 0), 2, _shm(2), 4),
    ("SH2 memfd: a read allocates, the write after it takes no fault", {}, 2 * MB, False,
     [("read", 0), ("write", 0), ("write", 5)], "s N*4 s N*506", (8, 0), 2, _shm(2), 4),
    ("SH3 fault-around maps the cached pages of the aligned 64 KiB", {}, 2 * MB, False,
     [("map_alias", 512), ("alias", "write_all", 0, 32), ("read", 0), ("read", 20), ("read", 16), ("write", 3)],
     "s*32 N*480", (128, 0), 34, _shm(32), 8),
    ("SH4 fault-around starts at the VMA when the window would cross it", {}, 2 * MB, False,
     [("map_alias", 512), ("alias", "write_all", 0, 32), ("mprotect", 0, 1, "r"), ("read", 3)], "N s*16 N*495",
     (64, 0), 33, _shm(32), 8),
    ("SH5 a write fault maps one page, no fault-around", {}, 2 * MB, False,
     [("map_alias", 512), ("alias", "write_all", 0, 32), ("write", 0), ("read", 1)], "s*16 N*496", (64, 0), 34,
     _shm(32), 8),
    ("SH6 fallocated pages are not mapped by fault-around (not uptodate)", {}, 2 * MB, False,
     [("fallocate", 0, 16), ("read", 5)], "N*5 s N*506", (4, 0), 1, _shm(16), 4),
    ("SH7 populate_read allocates every page", {}, 2 * MB, False, [("populate_read",)], "s*512", (2048, 0), 512,
     _shm(512), 4),
    ("SH8 populate_write", {}, 2 * MB, False, [("populate_write",)], "s*512", (2048, 0), 512, _shm(512), 4),
    ("SH9 populate_write, dontneed, populate_read: fault-around", {}, 256 * KB, False,
     [("populate_write",), ("dontneed",), ("populate_read",)], "s*64", (256, 0), 68, _shm(64), 4),
    # fork: the child shares the object, its page tables start empty
    ("SH10 fork: the child's writes, the parent's reads fault around", {}, 2 * MB, False,
     [("fork",), ("child", "write_all", 0, 32), ("read", 5), ("read", 17)], "s*32 N*480", (128, 0), 2, _shm(32), 4),
    ("SH11 fork: the child starts with no PTEs", {}, 2 * MB, False,
     [("write_all", 0, 4), ("fork",), ("child", "read", 0), ("child", "write", 2), ("write", 10),
      ("child", "read", 10)], "s*4 N*6 s N*501", (20, 0), 5, _shm(5), 4),
    # MADV_DONTNEED unmaps only; MADV_REMOVE and PUNCH_HOLE free (from every mapping)
    ("SH12 MADV_DONTNEED unmaps, a read maps the same pages back", {}, 2 * MB, False,
     [("write", 0), ("write", 1), ("dontneed", 0, 2), ("read", 0)], "s*2 N*510", (8, 0), 3, _shm(2), 4),
    ("SH13 MADV_REMOVE frees the page in the child's mapping too", {}, 2 * MB, False,
     [("write", 0), ("write", 1), ("fork",), ("child", "read", 0), ("remove", 0, 1), ("read", 0)], "s*2 N*510",
     (8, 0), 3, _shm(2), 4),
    ("SH14 PUNCH_HOLE unmaps the page from every mapping", {}, 2 * MB, False,
     [("write", 0), ("write", 1), ("map_alias", 512), ("alias", "read", 0), ("punch", 0, 1), ("alias", "read", 1)],
     "N s N*510", (4, 0), 3, _shm(1), 8),
    ("SH15 memfd: munmap and map again, the pages are kept", {}, 2 * MB, False,
     [("write", 3), ("munmap", 0, 512), ("map_file", 0, 512), ("read", 0)], "s N*2 s N*508", (8, 0), 2, _shm(2), 4),
    ("SH16 memfd: closing the fd keeps the mapping", {}, 2 * MB, False, [("write", 0), ("close_fd",), ("write", 1)],
     "s*2 N*510", (8, 0), 2, _shm(2), 4),
    # shmem THP (shmem_enabled)
    ("ST1 shmem_enabled=always: a read maps a PMD shmem THP", ALWAYS, 2 * MB, False, [("read", 0), ("write", 1)],
     "S*512", (2048, 0), 1, SHMEM_THP, 0),
    ("ST2 within_size: the object's size covers the 2 MiB", {"shmem_enabled": "within_size"}, 2 * MB, False,
     [("read", 0), ("write", 1)], "S*512", (2048, 0), 1, SHMEM_THP, 0),
    ("ST3 advise, no MADV_HUGEPAGE: 4K", {"shmem_enabled": "advise"}, 2 * MB, False, [("read", 0), ("write", 1)],
     "s*2 N*510", (8, 0), 2, _shm(2), 4),
    ("ST4 advise with MADV_HUGEPAGE: a THP", {"shmem_enabled": "advise"}, 2 * MB, True, [("read", 0), ("write", 1)],
     "S*512", (2048, 0), 1, SHMEM_THP, 0),
    ("ST5 never, MADV_HUGEPAGE: 4K", {}, 2 * MB, True, [("write", 0)], "s N*511", (4, 0), 1, _shm(1), 4),
    ("ST6 advise, memfd, MADV_HUGEPAGE: a write maps a THP", {"shmem_enabled": "advise"}, 2 * MB, True,
     [("write", 3)], "S*512", (2048, 0), 1, SHMEM_THP, 0),
    ("ST7 within_size, a 3 MiB memfd mapped 4 MiB: 4K past the last whole 2 MiB",
     {"shmem_enabled": "within_size"}, 4 * MB, False, [("read", 0), ("read", 600), ("read", 700)],
     "S*512 N*88 s N*99 s N*323", (2056, 0), 3, {**SHMEM_THP, **_shm(514)}, 4),
    ("ST8 always, a mapping not 2 MiB-aligned: 4K", ALWAYS, 4 * MB, False, [("read", 0), ("read", 700)],
     "s N*699 s N*323", (8, 0), 2, _shm(2), 8),
    ("ST9 populate_read: one fault, a THP", ALWAYS, 2 * MB, False, [("populate_read",)], "S*512", (2048, 0), 1,
     SHMEM_THP, 0),
    ("ST10 MADV_DONTNEED of one page unmaps the whole PMD", ALWAYS, 2 * MB, False, [("read", 0), ("dontneed", 0, 1)],
     "N*512", (0, 0), 1, {**SHMEM_THP, "nr_shmem_pmdmapped": 0, **TSP}, 0),
    ("ST11 ... and a read maps it by a PMD again", ALWAYS, 2 * MB, False,
     [("read", 0), ("dontneed", 0, 1), ("read", 0), ("read", 100)], "S*512", (2048, 0), 2,
     {**SHMEM_THP, "thp_file_mapped": 2, **TSP}, 0),
    ("ST12 MADV_REMOVE of one page splits the THP", ALWAYS, 2 * MB, False, [("write", 0), ("remove", 0, 1)], "N*512",
     (0, 0), 1, {"thp_file_alloc": 1, "thp_file_mapped": 1, "2048kB/shmem_alloc": 1, **TSP, "thp_split_page": 1,
                 "2048kB/split": 1, **_shm(511)}, 0),
    ("ST13 PUNCH_HOLE of half: the other half stays one folio, mapped whole by a read", ALWAYS, 2 * MB, False,
     [("write", 0), ("punch", 256, 256), ("read", 100)], "s*256 N*256", (1024, 0), 2,
     {"thp_file_alloc": 1, "thp_file_mapped": 1, "2048kB/shmem_alloc": 1, **TSP, "thp_split_page": 1,
      "2048kB/split": 1, **_shm(256)}, 4),
    ("ST14 MADV_REMOVE of the whole THP, a read allocates a new one", ALWAYS, 2 * MB, False,
     [("write", 0), ("remove",), ("read", 0)], "S*512", (2048, 0), 2,
     {**SHMEM_THP, "thp_file_alloc": 2, "thp_file_mapped": 2, "2048kB/shmem_alloc": 2}, 0),
    ("ST15 fork: the child maps the THP by a PMD on its first access", ALWAYS, 2 * MB, False,
     [("write", 0), ("fork",), ("child", "read", 5), ("child", "write", 6)], "S*512", (2048, 0), 1,
     {**SHMEM_THP, "thp_file_mapped": 2}, 0),
    ("ST16 mprotect of one page: the PMD goes, fault-around maps the window", ALWAYS, 2 * MB, False,
     [("write", 0), ("mprotect", 0, 1, "r"), ("read", 3)], "N s*16 N*495", (64, 0), 2,
     {**SHMEM_THP, "nr_shmem_pmdmapped": 0, **TSP}, 4),
    ("ST17 MADV_COLLAPSE of shmem with shmem_enabled=never", {}, 2 * MB, False,
     [("write_all", 0, 8), ("collapse",)], "S*512", (2048, 0), 8,
     {"thp_collapse_alloc": 1, "thp_file_mapped": 1, "nr_shmem_hugepages": 1, "nr_shmem_pmdmapped": 1,
      **_shm(512)}, 0),
    ("ST18 the shrinkers leave a shmem THP inside i_size", ALWAYS, 2 * MB, False, [("write", 0), ("drop_caches",)],
     "S*512", (2048, 0), 1, SHMEM_THP, 0),
]

MEMCG_ROWS = [
    # R38: less than 2 MiB left under the limit (headroom above memory_current; the host's
    # per-CPU charge stock adds at most 256 KiB to it): the THP charge fails, one 4K page
    ("MC1 less than 2 MiB left: THP charge fails, 4K page", {}, 2 * MB, True,
     [("memory_headroom", 1024), ("write", 0)], "a N*511", (4, 0), 1,
     {"thp_fault_fallback": 1, "thp_fault_fallback_charge": 1, "2048kB/anon_fault_fallback": 1,
      "2048kB/anon_fault_fallback_charge": 1, **_anon(1)}, 4),
    ("MC2 the THP charge fails, the same fault takes a 64K mTHP", {"hugepages": {64: "madvise"}}, 2 * MB, True,
     [("memory_headroom", 1024), ("write", 0)], "t*16 N*496", (64, 0), 1,
     {"thp_fault_fallback": 1, "thp_fault_fallback_charge": 1, "2048kB/anon_fault_fallback": 1,
      "2048kB/anon_fault_fallback_charge": 1, **_m(64), **_anon(16)}, 4),
    ("MC3 a 1024K mTHP charge fails, 64K next", {"hugepages": {1024: "madvise", 64: "madvise", 2048: "never"}},
     2 * MB, True, [("memory_headroom", 512), ("write", 0)], "t*16 N*496", (64, 0), 1,
     {"1024kB/anon_fault_fallback": 1, "1024kB/anon_fault_fallback_charge": 1, **_m(64), **_anon(16)}, 4),
    ("MC4 a 1024K mTHP charge fails, 4K", {"hugepages": {1024: "madvise", 2048: "never"}}, 2 * MB, True,
     [("memory_headroom", 512), ("write", 0)], "a N*511", (4, 0), 1,
     {"1024kB/anon_fault_fallback": 1, "1024kB/anon_fault_fallback_charge": 1, **_anon(1)}, 4),
    ("MC5 a shmem THP charge fails: 4K", ALWAYS, 2 * MB, False, [("memory_headroom", 1024), ("read", 0)],
     "s N*511", (4, 0), 1, {"thp_file_fallback": 1, "thp_file_fallback_charge": 1, "2048kB/shmem_fallback": 1,
                            "2048kB/shmem_fallback_charge": 1, **_shm(1)}, 4),
]

#: the mapping kind (BEFORE) and offsets of the issue-5 rows, by id
_ISSUE5_BEFORE = {
    **{i: SH for i in ("SH1", "SH7", "SH8", "SH10", "SH11", "SH12", "SH13", "ST1", "ST2", "ST3", "ST4", "ST5",
                       "ST8", "ST9", "ST10", "ST11", "ST12", "ST14", "ST15", "ST16", "ST17", "ST18", "MC5")},
    **{i: MF for i in ("SH2", "SH3", "SH4", "SH5", "SH6", "SH9", "SH14", "SH15", "SH16", "ST6", "ST13")},
    "ST7": [("memfd", 768)],
}
_ISSUE5_OFFSETS = {"MT4": 4096, "ST8": 4096}
# play_row and conformance look BEFORE and OFFSETS up by the row's full name
for _row in MTHP_ROWS + SHMEM_ROWS + MEMCG_ROWS:
    if short(_row[0]) in _ISSUE5_BEFORE:
        BEFORE[_row[0]] = _ISSUE5_BEFORE[short(_row[0])]
    if short(_row[0]) in _ISSUE5_OFFSETS:
        OFFSETS[_row[0]] = _ISSUE5_OFFSETS[short(_row[0])]

CHILD.update({
    "MT19": ("t*2 a t*13 N*496", 1), "MT21": ("t*16 N*496", 0),
    "SH10": ("s*32 N*480", 32), "SH11": ("s*4 N*6 s N*501", 2), "SH13": ("N s N*510", 1), "ST15": ("S*512", 1),
})

#: figures beyond a row's fields: "smaps/<field>" over the scenario's VMAs, "status/<field>" change (kB)
EXPECT = {
    "MT1": {"smaps/THPeligible": 1, "smaps/AnonHugePages": 0},
    "MT6": {"smaps/THPeligible": 0},
    "MT23": {"smaps/LazyFree": 64},
    "SH1": {"status/RssShmem": 8, "smaps/Anonymous": 0, "smaps/Private_Dirty": 8},
    "SH3": {"smaps/Shared_Dirty": 128, "smaps/Pss": 64},
    "SH7": {"status/RssShmem": 2048, "smaps/Private_Clean": 2048},
    "SH8": {"smaps/Private_Dirty": 2048},
    "ST1": {"status/RssShmem": 2048, "smaps/ShmemPmdMapped": 2048, "smaps/AnonHugePages": 0,
            "smaps/THPeligible": 1},
    "ST3": {"smaps/THPeligible": 0},
    "ST7": {"smaps/ShmemPmdMapped": 2048, "status/RssShmem": 2056},
    "ST15": {"smaps/Shared_Dirty": 2048, "smaps/Pss": 1024, "smaps/ShmemPmdMapped": 2048},
    "ST17": {"smaps/ShmemPmdMapped": 2048},
}

#: the issue-5 rows by list (not in conformance.cases() yet)
ISSUE5_ROWS = MTHP_ROWS + SHMEM_ROWS + MEMCG_ROWS


def check_on_host(rows, repeat=1, progress=None):
    """Play rows on this machine's kernel (root) with their settings, each ``repeat`` times, and
    return {row id: [mismatches of each run]} (host view of the counters).  Rows with a
    ("memory_headroom", ...) step run in a memory cgroup (HostMM(memcg=True))."""
    from mmemu import Config
    from mmemu.host import HostMM, host_settings, with_settings
    BASE = 0x500000000000
    out = {}
    host = Config.from_host()
    for row in rows:
        name, config, length, hp, steps = row[:5]
        cfg = dict(config)
        extra = {k: cfg.pop(k) for k in list(cfg) if k not in Config.__dataclass_fields__}
        target = with_settings(host.replace(**cfg), **extra)
        memcg = any(s[0] == "memory_headroom" for s in steps)
        for _ in range(repeat):
            if progress:
                progress(name)
            with host_settings(target), HostMM(memcg=memcg) as mm:
                run = play_row(mm, row, base=BASE)
                try:
                    out.setdefault(short(name), []).append(mismatches(run, row, host=True))
                finally:
                    if run.child is not None:
                        run.child.close()
    return out
