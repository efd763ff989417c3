"""A small language for the spec's scenario table (section 19): steps over one mapping.

A scenario maps ``length`` bytes (2 MiB-aligned by placement, or at ``offset`` bytes past a
2 MiB boundary), optionally MADV_HUGEPAGE on all of it, then runs steps whose arguments are in
pages of that mapping.  Expected page states are written run-length: "Z N*511".
"""
import re

import numpy as np

from mmemu import MM, Config, PageState

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
        assert m, f"bad state token {token!r}"
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


class Run:
    """One scenario being played on an MM, with the base counters to take deltas from."""

    def __init__(self, mm, length, hp=False, offset=0, before=(), base=None):
        """``base``: map at this 2 MiB-aligned address (and the anchor 512 MiB above it)
        instead of where mmap places it, so that a real process and the emulator lay the
        scenario out alike."""
        self.mm = mm
        for step in before:                        # steps before the mapping is made (prctl)
            self.step(*step)
        # An anchor page above the scenario mapping, so the upper page tables already exist and
        # VmPTE deltas read as in the spec, measured inside a running process.
        anchor = mm.mmap(PAGE, addr=ANCHOR if base is None else base + 512 * MB, fixed=True)
        mm.write(anchor)
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
        elif op in ("dontneed", "nohugepage", "hugepage", "populate_read", "populate_write"):
            first, count = args if args else (0, self.length // PAGE)
            mm.madvise(self.page(first), count * PAGE, op)
        elif op == "mprotect":
            first, count, prot = args
            mm.mprotect(self.page(first), count * PAGE, prot)
        elif op == "prctl":
            mm.prctl("PR_SET_THP_DISABLE", *args)
        elif op == "munmap":
            first, count = args
            mm.munmap(self.page(first), count * PAGE)
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
