"""The plain-Python reference model of mmemu.

Written for clarity, not speed: VMAs are a sorted list, page tables are dicts, and every
step of the fault path is one small method named after the kernel function it stands for.
It implements the same public API as :class:`mmemu.MM`, so the two can be run side by side
(differential tests).  The rules are those of ``shared/spec/linux-mm-semantics.md`` (Rnn)
and the decisions of ``docs/model.md``.

Page tables: ``_pud_tables`` holds the PGD indices (addr >> 39) that have a PUD table,
``_pmd_tables`` the PUD indices (addr >> 30) that have a PMD table, and ``_pmds`` maps a
PMD index (addr >> 21) to its entry: a dict (a PTE table: page number -> Pte) or a HugePmd
(a THP or the huge zeropage, mapped by the PMD; its deposited PTE table is implied).
"""
from __future__ import annotations

import bisect
import errno
import heapq
from dataclasses import dataclass

import numpy as np

from .config import Config
from .constants import (ADVICE, ATOMIC, MTHP_STAT_NAMES, PAGE_SIZE, PMD_SIZE, READ, TASK_SIZE,
                        VMSTAT_NAMES, WRITE, PageState)
from .errors import ClosedError, OutOfMemory, SegmentationFault, SyscallError

__all__ = ["ReferenceMM"]

PUD_SPAN = 1 << 30              # what one PMD table maps
PGD_SPAN = 1 << 39              # what one PUD table maps
TOP = 1 << 47                   # the top of the user page tables (USER_PGTABLES_CEILING)
PTRS = 512                      # entries per table, pages per THP
MMAP_MIN_ADDR = 65536
MMAP_BASE = TASK_SIZE - (128 << 20)
ZERO_FRAME = 0                  # the shared 4K zeropage, outside emulated RAM

# vm_flags bits, with the kernel's values
VM_READ, VM_WRITE, VM_EXEC = 0x1, 0x2, 0x4
VM_MAYREAD, VM_MAYWRITE, VM_MAYEXEC = 0x10, 0x20, 0x40
VM_ACCOUNT = 0x00100000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC
VM_MAY = VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
# /proc/PID/smaps VmFlags mnemonics, in the kernel's order (only those mmemu can set)
VMFLAG_NAMES = ((VM_READ, "rd"), (VM_WRITE, "wr"), (VM_EXEC, "ex"), (VM_MAYREAD, "mr"),
                (VM_MAYWRITE, "mw"), (VM_MAYEXEC, "me"), (VM_ACCOUNT, "ac"),
                (VM_HUGEPAGE, "hg"), (VM_NOHUGEPAGE, "nh"))

SMAPS_KEYS = ("Size", "KernelPageSize", "MMUPageSize", "Rss", "Pss", "Pss_Dirty", "Shared_Clean", "Shared_Dirty", "Private_Clean",
              "Private_Dirty", "Referenced", "Anonymous", "KSM", "LazyFree", "AnonHugePages",
              "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap",
              "SwapPss", "Locked", "THPeligible")

NOOP_ADVICE = ("normal", "willneed")    # nothing to do for anonymous memory, beyond the hole check
DONE, FALLBACK = "done", "fallback"     # what a PMD-level handler returns (VM_FAULT_FALLBACK)
ISSUE4_SPLIT = "splitting the PMD of an anonymous THP is not implemented yet (issue 4)"


class _Segv(Exception):
    """The architecture rejected the access (SIGSEGV, nothing counted)."""


class _Oom(Exception):
    """A 4K page could not be had (VM_FAULT_OOM)."""


@dataclass(eq=False)         # identity, so list.remove() removes this very VMA
class Vma:
    start: int
    end: int
    flags: int
    anon_vma: int | None = None     # an id; None until the first anonymous fault (R17)


@dataclass
class Pte:
    kind: str           # "zero" (the shared zeropage) or "anon" (a 4K anonymous page)
    frame: int
    writable: bool
    dirty: bool


@dataclass
class HugePmd:
    kind: str           # "hzp" (the huge zeropage) or "thp" (a PMD-mapped anonymous THP)
    block: int
    writable: bool
    dirty: bool


def _align_up(x, a):
    return (x + a - 1) // a * a


# ---- argument checking ------------------------------------------------------------------

def _int_arg(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be a non-negative 64-bit value, not {value}")
    return value


def _prot_arg(prot):
    """PROT_* bits from "rwx" letters, "" / "none", or an int (unknown bits kept for the caller)."""
    if isinstance(prot, str):
        if prot.lower() == "none":
            return 0
        letters = prot.lower().replace("-", "")     # "r-x" as ls and /proc/pid/maps write it
        if any(c not in "rwx" for c in letters) or len(set(letters)) != len(letters):
            raise ValueError(f"prot must be letters from 'rwx' (each once), '' or 'none', not {prot!r}")
        return sum({"r": VM_READ, "w": VM_WRITE, "x": VM_EXEC}[c] for c in letters)
    return _int_arg(prot, "prot")


# ---- the machine: RAM, the huge zeropage, system-wide counters --------------------------

class _Machine:
    """Emulated RAM in 2 MiB blocks of 512 frames, and what /proc/vmstat counts."""

    def __init__(self, config):
        self.nblocks = config.memory // PMD_SIZE
        self.fresh = 0              # blocks >= fresh have never been used (wholly free)
        self.free_blocks = []       # heap of wholly free blocks below fresh
        self.partial = {}           # block -> heap of its free frame offsets (partly used)
        self.vmstat = dict.fromkeys(VMSTAT_NAMES, 0)
        self.mthp = dict.fromkeys(MTHP_STAT_NAMES, 0)
        self.huge_zero_block = None
        self.last_anon_vma = 0

    def take_free_block(self):
        """The lowest-numbered wholly free block, or None."""
        if self.free_blocks:
            return heapq.heappop(self.free_blocks)
        if self.fresh < self.nblocks:
            self.fresh += 1
            return self.fresh - 1
        return None

    def free_block(self, block):
        heapq.heappush(self.free_blocks, block)

    def alloc_page(self):
        """A 4K frame: from the lowest partly used block, else from a wholly free block."""
        if self.partial:
            block = min(self.partial)
        else:
            block = self.take_free_block()
            if block is None:
                return None
            self.partial[block] = list(range(PTRS))
        offset = heapq.heappop(self.partial[block])
        if not self.partial[block]:
            del self.partial[block]         # the block is full
        return 1 + block * PTRS + offset

    def free_page(self, frame):
        block, offset = divmod(frame - 1, PTRS)
        heapq.heappush(self.partial.setdefault(block, []), offset)
        if len(self.partial[block]) == PTRS:
            del self.partial[block]
            self.free_block(block)

    def new_anon_vma(self):
        self.last_anon_vma += 1
        return self.last_anon_vma


class ReferenceMM:
    """One emulated process (see the module docstring); the API of :class:`mmemu.MM`."""

    def __init__(self, config: Config | None = None):
        if config is None:
            config = Config()
        if not isinstance(config, Config):
            raise TypeError(f"config must be a mmemu.Config, not {type(config).__name__}")
        if config.mthp_enabled():
            raise NotImplementedError("mTHP sizes other than 2048 kB are not implemented yet (issue 5)")
        self.config = config
        self._m = _Machine(config)
        self._vmas: list[Vma] = []
        self._pud_tables: set[int] = set()
        self._pmd_tables: set[int] = set()
        self._pmds: dict[int, dict | HugePmd] = {}
        self._nr_tables = 0         # page-table pages of this MM (PUD, PMD, PTE, deposited)
        self._rss_anon = 0          # MM_ANONPAGES, in 4K pages
        self._min_flt = 0
        self._has_huge_zero = False  # this mm holds a reference on the huge zeropage
        self._thp_disable = None     # prctl(PR_SET_THP_DISABLE): "completely" or "except_advised"
        self._closed = False

    # ================================================================ observables

    @property
    def vmstat(self):
        return dict(self._m.vmstat)

    @property
    def mthp_stats(self):
        return {2048: dict(self._m.mthp)}

    @property
    def rusage(self):
        return {"min_flt": self._min_flt, "maj_flt": 0}

    @property
    def status(self):
        rss = self._rss_anon * 4
        return {"VmRSS": rss, "RssAnon": rss, "VmPTE": self._nr_tables * 4}

    def maps(self):
        self._check_open()
        out = []
        for v in self._vmas:
            perms = "".join(c if v.flags & bit else "-"
                            for bit, c in ((VM_READ, "r"), (VM_WRITE, "w"), (VM_EXEC, "x")))
            out.append((v.start, v.end, perms + "p", v.flags))
        return out

    def smaps(self, addr):
        self._check_open()
        addr = _int_arg(addr, "addr")
        vma = self._vma_at(addr)
        if vma is None:
            raise ValueError(f"no VMA contains address {addr:#x}")
        clean = dirty = ahp = 0                         # kB
        for _, entry in self._entries_in(vma.start, vma.end):
            if isinstance(entry, HugePmd):
                if entry.kind == "thp":                 # the huge zeropage never counts (R4)
                    ahp += 2048
                    if entry.dirty:
                        dirty += 2048
                    else:
                        clean += 2048
                continue
            for vpn, pte in entry.items():
                if pte.kind == "anon" and vma.start <= vpn * PAGE_SIZE < vma.end:
                    if pte.dirty:
                        dirty += 4
                    else:
                        clean += 4
        rss = clean + dirty
        out = dict.fromkeys(SMAPS_KEYS, 0)
        out.update(Size=(vma.end - vma.start) // 1024, KernelPageSize=4, MMUPageSize=4, Rss=rss,
                   Pss=rss, Pss_Dirty=dirty, Private_Clean=clean,
                   Private_Dirty=dirty, Referenced=rss, Anonymous=rss, AnonHugePages=ahp,
                   THPeligible=int(self._thp_eligible_smaps(vma)))
        out["VmFlags"] = " ".join(name for bit, name in VMFLAG_NAMES if vma.flags & bit)
        return out

    def page_states(self, addr, length):
        self._check_open()
        addr, length = _int_arg(addr, "addr"), _int_arg(length, "length")
        if addr % PAGE_SIZE:
            raise ValueError(f"addr must be 4K-aligned, not {addr:#x}")
        if length % PAGE_SIZE:
            raise ValueError(f"length must be a multiple of 4K, not {length}")
        out = np.zeros(length // PAGE_SIZE, dtype=np.uint8)
        for i in range(len(out)):
            out[i] = self._page_state(addr + i * PAGE_SIZE)
        return out

    def _page_state(self, addr):
        entry = self._pmds.get(addr >> 21)
        if isinstance(entry, HugePmd):
            return PageState.THP if entry.kind == "thp" else PageState.HUGE_ZERO
        pte = entry.get(addr >> 12) if entry is not None else None
        if pte is None:
            return PageState.NONE
        return PageState.ANON if pte.kind == "anon" else PageState.ZERO

    # ================================================================ lifetime

    def fork(self):
        raise NotImplementedError("fork is not implemented yet (issue 4)")

    def prctl(self, option, arg2=0, arg3=0, arg4=0, arg5=0):
        """PR_SET_THP_DISABLE (41) and PR_GET_THP_DISABLE (42) (kernel/sys.c)."""
        self._check_open()
        option = {"PR_SET_THP_DISABLE": 41, "PR_GET_THP_DISABLE": 42}.get(option, option)
        if option == 42:
            if arg2 or arg3 or arg4 or arg5:
                raise SyscallError(errno.EINVAL, "prctl")
            return {None: 0, "completely": 1, "except_advised": 3}[self._thp_disable]
        if option != 41:
            raise NotImplementedError(f"prctl {option}")
        except_advised = 1 << 1
        version = tuple(int(x) for x in self.config.kernel.split("."))
        if (arg4 or arg5 or arg3 & ~except_advised or (arg3 and not arg2)
                or (arg3 and version < (6, 18))):
            raise SyscallError(errno.EINVAL, "prctl")
        self._thp_disable = None if not arg2 else ("except_advised" if arg3 else "completely")
        return 0

    def close(self):
        """The process exits: every mapping goes, every table is freed (exit_mmap)."""
        if self._closed:
            return
        for vma in self._vmas:
            self._zap_range(vma, vma.start, vma.end)
        self._vmas = []
        self._free_pgtables([(0, TOP)], 0, TOP)
        self._has_huge_zero = False     # the huge zeropage itself stays (no shrinker yet)
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_open(self):
        if self._closed:
            raise ClosedError("this MM was closed (its process exited)")

    # ================================================================ VMAs

    def _find_vma(self, addr):
        """find_vma: the first VMA that ends above addr, or None."""
        i = bisect.bisect_right(self._vmas, addr, key=lambda v: v.end)
        return self._vmas[i] if i < len(self._vmas) else None

    def _vma_at(self, addr):
        vma = self._find_vma(addr)
        return vma if vma is not None and vma.start <= addr else None

    def _prev_vma(self, addr):
        """The last VMA that ends at or below addr, or None."""
        i = bisect.bisect_right(self._vmas, addr, key=lambda v: v.end)
        return self._vmas[i - 1] if i > 0 else None

    def _insert_vma(self, vma):
        bisect.insort(self._vmas, vma, key=lambda v: v.start)

    def _split_vma(self, vma, at):
        """Split vma at `at`; returns the upper piece. A straddling PMD mapping is split first (R16)."""
        self._split_pmd_at(at)
        upper = Vma(at, vma.end, vma.flags, vma.anon_vma)
        vma.end = at
        self._insert_vma(upper)
        return upper

    def _split_pmd_at(self, at):
        """vma_adjust_trans_huge: a PMD mapping across a new boundary is split."""
        if at % PMD_SIZE and isinstance(self._pmds.get(at >> 21), HugePmd):
            self._split_huge_pmd(at >> 21)

    @staticmethod
    def _mergeable(vma, flags, anon_vma):
        return vma.flags == flags and (vma.anon_vma is None or anon_vma is None
                                       or vma.anon_vma == anon_vma)

    def _merge_around(self, vma):
        """Merge vma with the previous, then the next adjacent VMA when compatible."""
        prev = self._prev_vma(vma.start)
        if prev is not None and prev.end == vma.start and self._mergeable(prev, vma.flags, vma.anon_vma):
            prev.end = vma.end
            prev.anon_vma = prev.anon_vma or vma.anon_vma
            self._vmas.remove(vma)
            vma = prev
        nxt = self._find_vma(vma.end)
        if nxt is not None and nxt.start == vma.end and self._mergeable(nxt, vma.flags, vma.anon_vma):
            vma.end = nxt.end
            vma.anon_vma = vma.anon_vma or nxt.anon_vma
            self._vmas.remove(nxt)
        return vma

    def _vma_modify(self, vma, start, end, flags, syscall, err):
        """vma_modify_flags: give [start, end) of vma the new flags, merging or splitting."""
        prev = self._prev_vma(vma.start)
        nxt = self._find_vma(vma.end)
        merge_left = (start == vma.start and prev is not None and prev.end == start
                      and self._mergeable(prev, flags, vma.anon_vma))
        merge_right = (end == vma.end and nxt is not None and nxt.start == end
                       and self._mergeable(nxt, flags, vma.anon_vma))
        if start > vma.start:
            if not merge_right:                  # a real split: it may be refused (split_vma)
                self._check_split(syscall, err)
            vma = self._split_vma(vma, start)
        if end < vma.end:
            if not merge_left:
                self._check_split(syscall, err)
            self._split_vma(vma, end)
        vma.flags = flags
        return self._merge_around(vma)

    def _check_split(self, syscall, err):
        if len(self._vmas) >= self.config.max_map_count:
            raise SyscallError(err, syscall, "max_map_count")

    def _anon_vma_prepare(self, vma):
        if vma.anon_vma is None:
            vma.anon_vma = self._find_mergeable_anon_vma(vma) or self._m.new_anon_vma()

    def _find_mergeable_anon_vma(self, vma):
        """Share a neighbour's anon_vma if the two differ only in VM_READ/WRITE/EXEC (next first)."""
        nxt = self._find_vma(vma.end)
        prev = self._prev_vma(vma.start)
        for other, touching in ((nxt, nxt is not None and nxt.start == vma.end),
                                (prev, prev is not None and prev.end == vma.start)):
            if touching and other.anon_vma is not None \
                    and not (other.flags ^ vma.flags) & ~VM_ACCESS_FLAGS:
                return other.anon_vma
        return None

    # ================================================================ THP policy

    def _thp_enabled(self, vma):
        """R19/R20: order 9 enabled for this VMA by the sysfs knobs, no VM_NOHUGEPAGE or prctl
        veto (PR_SET_THP_DISABLE: none at all, or only in VM_HUGEPAGE VMAs)."""
        always, madvise = self.config.pmd_thp_modes()
        if vma.flags & VM_NOHUGEPAGE or self._thp_disable == "completely":
            return False
        if self._thp_disable == "except_advised" and not vma.flags & VM_HUGEPAGE:
            return False
        return always or (madvise and bool(vma.flags & VM_HUGEPAGE))

    def _thp_eligible_smaps(self, vma):
        last = (vma.end - PMD_SIZE) & ~(PMD_SIZE - 1)   # the last aligned 2 MiB before the end
        return self._thp_enabled(vma) and vma.start <= last

    # ================================================================ page tables

    def _table_alloc(self):
        self._nr_tables += 1
        self._m.vmstat["nr_page_table_pages"] += 1

    def _table_free(self, n=1):
        self._nr_tables -= n
        self._m.vmstat["nr_page_table_pages"] -= n

    def _alloc_upper_tables(self, addr):
        """__handle_mm_fault: pud_alloc, pmd_alloc on the way down (R10)."""
        if addr >> 39 not in self._pud_tables:
            self._pud_tables.add(addr >> 39)
            self._table_alloc()
        if addr >> 30 not in self._pmd_tables:
            self._pmd_tables.add(addr >> 30)
            self._table_alloc()

    def _pte_alloc(self, pi):
        if pi not in self._pmds:
            self._pmds[pi] = {}
            self._table_alloc()
        return self._pmds[pi]

    def _entries_in(self, start, end):
        """The PMD entries (index, entry) whose 2 MiB overlaps [start, end), in order."""
        lo, hi = start >> 21, (end - 1) >> 21
        return [(pi, self._pmds[pi]) for pi in sorted(self._pmds) if lo <= pi <= hi]

    def _add_anon(self, pages):
        self._rss_anon += pages
        self._m.vmstat["nr_anon_pages"] += pages

    # ================================================================ accesses

    def read(self, addr):
        return self._single(addr, READ)

    def write(self, addr):
        return self._single(addr, WRITE)

    def atomic(self, addr):
        return self._single(addr, ATOMIC)

    def _single(self, addr, op):
        self._check_open()
        addr = _int_arg(addr, "addr")
        try:
            return self._access_one(addr, op)
        except _Segv:
            raise SegmentationFault(addr, None, op) from None
        except _Oom:
            raise OutOfMemory(addr, None) from None

    def access(self, addrs, ops):
        self._check_open()
        addrs = np.asarray(addrs)
        if addrs.ndim != 1:
            raise ValueError("addrs must be a 1-D array")
        if addrs.size == 0:
            addrs = addrs.astype(np.uint64)
        if addrs.dtype.kind not in "iu":
            raise TypeError(f"addrs must hold integers, not {addrs.dtype}")
        if addrs.dtype.kind == "i" and (addrs < 0).any():
            raise ValueError("addrs must not be negative")
        if isinstance(ops, (int, np.integer)) and not isinstance(ops, (bool, np.bool_)):
            ops = np.full(len(addrs), int(ops), dtype=np.int64)
        ops = np.asarray(ops)
        if ops.ndim != 1 or len(ops) != len(addrs):
            raise ValueError("ops must be one int or a 1-D array as long as addrs")
        if len(ops) and (ops.dtype.kind not in "iu"):
            raise TypeError(f"ops must hold integers, not {ops.dtype}")
        if len(ops) and not np.isin(ops, (READ, WRITE, ATOMIC)).all():
            raise ValueError("ops must be 0 (READ), 1 (WRITE) or 2 (ATOMIC)")
        out = np.zeros(len(addrs), dtype=np.uint8)
        for i, (addr, op) in enumerate(zip(addrs.tolist(), ops.tolist())):
            try:
                out[i] = self._access_one(addr, op)
            except _Segv:
                raise SegmentationFault(addr, i, op) from None
            except _Oom:
                raise OutOfMemory(addr, i) from None
        return out

    def _access_one(self, addr, op):
        """One load/store/atomic: the faults it takes (0, 1 or 2)."""
        vma = self._vma_at(addr)
        if vma is None or not vma.flags & VM_ACCESS_FLAGS:
            raise _Segv
        if op == READ:
            return self._touch(vma, addr, write=False)
        if op == WRITE or self.config.arch == "x86_64":        # x86: atomics are writes (R25)
            return self._touch(vma, addr, write=True)
        # arm64 (R26, R83)
        if self.config.atomic_write_fault and vma.flags & VM_READ and vma.flags & VM_WRITE:
            return self._touch(vma, addr, write=True)
        faults = 0
        if self._page_state(addr) == PageState.NONE:            # first reported as a read
            faults += self._touch(vma, addr, write=False)
        return faults + self._touch(vma, addr, write=True)

    def _touch(self, vma, addr, write):
        if write and not vma.flags & VM_WRITE:
            raise _Segv
        if self._follow(addr, write):        # present with enough permission: no fault
            return 0
        self._fault(vma, addr, write)
        return 1

    def _follow(self, addr, write):
        """The bytes a present, sufficient entry maps from addr on (0 if it must fault).
        Like the MMU (and GUP's FOLL_TOUCH), a write marks the entry dirty."""
        entry = self._pmds.get(addr >> 21)
        if isinstance(entry, HugePmd):
            found, size = entry, PMD_SIZE - addr % PMD_SIZE
        else:
            found, size = (entry.get(addr >> 12) if entry is not None else None), PAGE_SIZE
        if found is None or (write and not found.writable):
            return 0
        found.dirty |= write
        return size

    # ================================================================ the fault path

    def _fault(self, vma, addr, write):
        """handle_mm_fault + mm_account_fault (R1): errors count in pgfault only."""
        self._m.vmstat["pgfault"] += 1
        self._handle_mm_fault(vma, addr, write)
        self._min_flt += 1

    def _handle_mm_fault(self, vma, addr, write):
        """__handle_mm_fault: the PMD-level decision tree (R27, R28)."""
        self._alloc_upper_tables(addr)
        entry = self._pmds.get(addr >> 21)
        if entry is None and self._thp_enabled(vma):
            if self._do_huge_pmd_anonymous_page(vma, addr, write) == DONE:
                return
        elif isinstance(entry, HugePmd):
            if not (write and not entry.writable):
                entry.dirty |= write                    # huge_pmd_set_accessed
                return
            if self._do_huge_pmd_wp_page(vma, addr, entry) == DONE:
                return
        self._handle_pte_fault(vma, addr, write)

    def _do_huge_pmd_anonymous_page(self, vma, addr, write):
        """R33, R34, R38."""
        haddr = addr & ~(PMD_SIZE - 1)
        if haddr < vma.start or haddr + PMD_SIZE > vma.end:    # thp_vma_suitable_order (R21)
            return FALLBACK
        self._anon_vma_prepare(vma)
        if not write and self.config.zero_page and self.config.use_zero_page:
            if not self._mm_get_huge_zero_folio():
                self._m.vmstat["thp_fault_fallback"] += 1
                return FALLBACK
            self._table_alloc()                                 # the deposit (R11)
            self._pmds[addr >> 21] = HugePmd("hzp", self._m.huge_zero_block, False, False)
            return DONE
        block = self._vma_alloc_anon_folio_pmd()
        if block is None:
            return FALLBACK
        self._table_alloc()                                     # the deposit (R11)
        self._map_anon_folio_pmd(vma, addr >> 21, block)
        return DONE

    def _mm_get_huge_zero_folio(self):
        """This mm's reference on the huge zeropage, allocating it on first need (R56)."""
        if not self._has_huge_zero:
            if self._m.huge_zero_block is None:
                block = self._m.take_free_block()
                if block is None:
                    self._m.vmstat["thp_zero_page_alloc_failed"] += 1
                    return False
                self._m.huge_zero_block = block
                self._m.vmstat["thp_zero_page_alloc"] += 1
            self._has_huge_zero = True
        return True

    def _vma_alloc_anon_folio_pmd(self):
        """A wholly free block for a THP, or None after counting the fallback (R38)."""
        block = self._m.take_free_block()
        if block is None:
            self._m.vmstat["thp_fault_fallback"] += 1
            self._m.mthp["anon_fault_fallback"] += 1
        return block

    def _map_anon_folio_pmd(self, vma, pi, block):
        self._pmds[pi] = HugePmd("thp", block, bool(vma.flags & VM_WRITE), True)
        self._add_anon(PTRS)
        m = self._m
        m.vmstat["thp_fault_alloc"] += 1
        m.vmstat["nr_anon_transparent_hugepages"] += 1
        m.mthp["anon_fault_alloc"] += 1
        m.mthp["nr_anon"] += 1

    def _do_huge_pmd_wp_page(self, vma, addr, entry):
        """R41-R44: a write to a read-only PMD mapping."""
        if entry.kind == "hzp":
            if self.config.huge_zero_write == "thp" and self._do_huge_zero_wp_pmd(vma, addr) == DONE:
                return DONE
            self._split_huge_pmd(addr >> 21)        # R42 / R43, then the PTE level
            return FALLBACK
        entry.writable = entry.dirty = True         # exclusive THP: reuse (no fork yet)
        return DONE

    def _do_huge_zero_wp_pmd(self, vma, addr):
        """R41 (6.13+): replace the huge zeropage by a new THP; the deposit is kept; no
        eligibility re-check."""
        block = self._vma_alloc_anon_folio_pmd()
        if block is None:
            return FALLBACK
        self._map_anon_folio_pmd(vma, addr >> 21, block)
        return DONE

    def _split_huge_pmd(self, pi):
        entry = self._pmds[pi]
        if entry.kind == "thp":
            raise NotImplementedError(ISSUE4_SPLIT)
        self._split_huge_zero_pmd(pi)

    def _split_huge_zero_pmd(self, pi):
        """R48: the deposit becomes a PTE table of 512 read-only zeropage PTEs."""
        base = pi << 9
        self._pmds[pi] = {vpn: Pte("zero", ZERO_FRAME, False, False) for vpn in range(base, base + PTRS)}
        self._m.vmstat["thp_split_pmd"] += 1

    def _handle_pte_fault(self, vma, addr, write):
        """R29."""
        table = self._pmds.get(addr >> 21)
        pte = table.get(addr >> 12) if table is not None else None
        if pte is None:
            return self._do_anonymous_page(vma, addr, write)
        if write and not pte.writable:
            return self._do_wp_page(vma, addr, pte)
        pte.dirty |= write                          # spurious: already fixed

    def _do_anonymous_page(self, vma, addr, write):
        """R30, R35: a none PTE."""
        table = self._pte_alloc(addr >> 21)
        if not write and self.config.zero_page:
            table[addr >> 12] = Pte("zero", ZERO_FRAME, False, False)
            return
        self._anon_vma_prepare(vma)
        frame = self._m.alloc_page()
        if frame is None:
            raise _Oom
        writable = bool(vma.flags & VM_WRITE)
        table[addr >> 12] = Pte("anon", frame, writable, writable)
        self._add_anon(1)

    def _do_wp_page(self, vma, addr, pte):
        """R39, R40: a write to a read-only PTE."""
        if pte.kind == "zero":
            return self._wp_page_copy(vma, addr)
        pte.writable = pte.dirty = True             # exclusive anon page: wp_page_reuse

    def _wp_page_copy(self, vma, addr):
        self._anon_vma_prepare(vma)
        frame = self._m.alloc_page()
        if frame is None:
            raise _Oom
        self._pmds[addr >> 21][addr >> 12] = Pte("anon", frame, True, True)
        self._add_anon(1)

    # ================================================================ unmapping

    def _zap_range(self, vma, start, end, reclaim_pt=False):
        """unmap_single_vma over [start, end) inside vma (R57); with reclaim_pt, free the PTE
        tables whose whole span lies in [start, end) (R13)."""
        for pi, entry in self._entries_in(start, end):
            pstart, pend = pi << 21, (pi + 1) << 21
            whole = start <= pstart and pend <= end
            if isinstance(entry, HugePmd):
                if whole:
                    self._zap_huge_pmd(pi, entry)
                    continue
                self._split_huge_pmd(pi)
                entry = self._pmds[pi]
            lo, hi = max(start, pstart) >> 12, min(end, pend) >> 12
            for vpn in [v for v in entry if lo <= v < hi]:
                pte = entry.pop(vpn)
                if pte.kind == "anon":
                    self._m.free_page(pte.frame)
                    self._add_anon(-1)
            if reclaim_pt and whole and not entry:
                del self._pmds[pi]
                self._table_free()

    def _zap_huge_pmd(self, pi, entry):
        del self._pmds[pi]
        self._table_free()                          # the deposit
        if entry.kind == "thp":
            self._m.free_block(entry.block)
            self._add_anon(-PTRS)
            self._m.vmstat["nr_anon_transparent_hugepages"] -= 1
            self._m.mthp["nr_anon"] -= 1

    def _free_pgtables(self, ranges, floor, ceiling):
        """free_pgtables (R12): at every level, free each table that overlaps one of the
        unmapped ranges and whose whole span lies in [floor, ceiling)."""
        for tables, shift in ((self._pmds, 21), (self._pmd_tables, 30), (self._pud_tables, 39)):
            span = 1 << shift
            for start, end in ranges:
                for key in [k for k in tables if start >> shift <= k <= (end - 1) >> shift]:
                    if floor <= key * span and (key + 1) * span <= ceiling:
                        if shift == 21:
                            assert not isinstance(tables[key], HugePmd) and not tables[key]
                            del tables[key]
                        else:
                            tables.remove(key)
                        self._table_free()

    def _check_thp_split(self, *boundaries):
        """A new boundary inside a PMD-mapped THP would split its PMD: not implemented yet."""
        for at in boundaries:
            entry = self._pmds.get(at >> 21)
            if at % PMD_SIZE and isinstance(entry, HugePmd) and entry.kind == "thp":
                raise NotImplementedError(ISSUE4_SPLIT)

    def _do_munmap(self, start, end, syscall):
        """do_vmi_munmap on an aligned [start, end): split, zap, remove, free tables (R66)."""
        vmas = [v for v in self._vmas if v.start < end and v.end > start]
        if not vmas:
            return
        first = vmas[0]
        if start > first.start and end < first.end and len(self._vmas) >= self.config.max_map_count:
            raise SyscallError(errno.ENOMEM, syscall, "max_map_count")
        self._check_thp_split(start, end)
        if start > first.start:
            vmas[0] = self._split_vma(first, start)
        if end < vmas[-1].end:
            self._split_vma(vmas[-1], end)
        prev, nxt = self._prev_vma(start), self._find_vma(end)
        floor = prev.end if prev is not None else 0
        ceiling = nxt.start if nxt is not None else TOP
        for vma in vmas:
            self._zap_range(vma, vma.start, vma.end)
            self._vmas.remove(vma)
        self._free_pgtables([(v.start, v.end) for v in vmas], floor, ceiling)

    # ================================================================ mmap / munmap

    def mmap(self, length, prot="rw", addr=None, fixed=False):
        self._check_open()
        length = _int_arg(length, "length")
        bits = _prot_arg(prot) & VM_ACCESS_FLAGS     # do_mmap ignores the PROT bits it does not know
        if addr is not None:
            addr = _int_arg(addr, "addr")
        if not isinstance(fixed, bool):
            raise TypeError(f"fixed must be a bool, not {type(fixed).__name__}")
        if fixed and addr is None:
            raise ValueError("fixed=True needs addr")
        if length == 0:
            raise SyscallError(errno.EINVAL, "mmap", "length 0")
        length = _align_up(length, PAGE_SIZE)
        if len(self._vmas) > self.config.max_map_count:
            raise SyscallError(errno.ENOMEM, "mmap", "max_map_count")
        if length > TASK_SIZE:
            raise SyscallError(errno.ENOMEM, "mmap", "length")
        if fixed:
            if addr > TASK_SIZE - length:
                raise SyscallError(errno.ENOMEM, "mmap", "beyond TASK_SIZE")
            if addr % PAGE_SIZE:
                raise SyscallError(errno.EINVAL, "mmap", "addr not aligned")
            if addr < MMAP_MIN_ADDR:
                raise SyscallError(errno.EPERM, "mmap", "below mmap_min_addr")
            start = addr
            self._do_munmap(start, start + length, "mmap")
        else:
            start = self._get_unmapped_area(length, addr or None)
        flags = bits | VM_MAY | (VM_ACCOUNT if bits & VM_WRITE else 0)
        vma = Vma(start, start + length, flags)
        self._insert_vma(vma)
        self._merge_around(vma)
        return start

    def _get_unmapped_area(self, length, hint):
        if hint is not None:
            hint &= ~(PAGE_SIZE - 1)
        if hint:                    # round_hint_to_min: a hint in the first page is no hint
            hint = max(hint, MMAP_MIN_ADDR)
            if hint + length <= TASK_SIZE and self._is_free(hint, hint + length):
                return hint
            return self._unmapped_area_topdown(length)
        mode = self.config.mmap_thp_align
        if (mode == "pmd_multiple" and length % PMD_SIZE == 0) or (mode == "any" and length >= PMD_SIZE):
            ret = self._unmapped_area_topdown(length + PMD_SIZE, fail=False)
            if ret is not None:         # __thp_get_unmapped_area; else retry unpadded
                return ret + PMD_SIZE if ret % PMD_SIZE == 0 else _align_up(ret, PMD_SIZE)
        return self._unmapped_area_topdown(length)

    def _unmapped_area_topdown(self, length, fail=True):
        """The top of the highest gap in [mmap_min_addr, mmap_base) that holds length."""
        bounds = [0] + [x for v in self._vmas for x in (v.start, v.end)] + [TOP]
        for i in range(len(bounds) - 2, -1, -2):
            lo, hi = max(bounds[i], MMAP_MIN_ADDR), min(bounds[i + 1], MMAP_BASE)
            if hi - lo >= length:
                return hi - length
        if fail:
            raise SyscallError(errno.ENOMEM, "mmap", "no room")
        return None

    def _is_free(self, start, end):
        vma = self._find_vma(start)
        return vma is None or vma.start >= end

    def munmap(self, addr, length):
        self._check_open()
        addr, length = _int_arg(addr, "addr"), _int_arg(length, "length")
        if addr % PAGE_SIZE or addr > TASK_SIZE or length > TASK_SIZE - addr:
            raise SyscallError(errno.EINVAL, "munmap")
        if length == 0:
            raise SyscallError(errno.EINVAL, "munmap", "length 0")
        self._do_munmap(addr, addr + _align_up(length, PAGE_SIZE), "munmap")

    # ================================================================ mprotect

    def mprotect(self, addr, length, prot):
        self._check_open()
        addr, length = _int_arg(addr, "addr"), _int_arg(length, "length")
        bits = _prot_arg(prot)
        if addr % PAGE_SIZE:
            raise SyscallError(errno.EINVAL, "mprotect", "addr not aligned")
        if length == 0:
            return
        end = addr + _align_up(length, PAGE_SIZE)
        if end >= 1 << 64:
            raise SyscallError(errno.ENOMEM, "mprotect", "wraps")
        if bits & ~0xF:                              # arch_validate_prot: READ|WRITE|EXEC|SEM
            raise SyscallError(errno.EINVAL, "mprotect", "unknown prot bits")
        bits &= VM_ACCESS_FLAGS
        vma = self._find_vma(addr)
        if vma is None or vma.start > addr:
            raise SyscallError(errno.ENOMEM, "mprotect", "not mapped")
        reached = addr          # the kernel stops at the first hole: cuts beyond it never happen
        while reached < end:
            v = self._find_vma(reached)
            if v is None or v.start > reached:
                break
            reached = v.end
        for at in (addr, end):
            v = self._vma_at(at)
            if (v is not None and v.start < at and at <= reached
                    and self._mprotect_flags(v, bits) != v.flags):
                self._check_thp_split(at)
        cur = addr
        while cur < end:
            vma = self._find_vma(cur)
            if vma is None or vma.start > cur:
                raise SyscallError(errno.ENOMEM, "mprotect", "hole")
            stop = min(end, vma.end)
            flags = self._mprotect_flags(vma, bits)
            if flags != vma.flags:
                self._vma_modify(vma, cur, stop, flags, "mprotect", errno.ENOMEM)
                self._change_protection(cur, stop, flags)
            cur = stop

    @staticmethod
    def _mprotect_flags(vma, bits):
        """mprotect_fixup's new flags, VM_ACCOUNT included."""
        flags = (vma.flags & ~VM_ACCESS_FLAGS) | bits
        if flags & VM_WRITE:
            if not vma.flags & (VM_ACCOUNT | VM_WRITE):
                flags |= VM_ACCOUNT
        elif vma.flags & VM_ACCOUNT and vma.anon_vma is None:
            flags &= ~VM_ACCOUNT
        return flags

    def _change_protection(self, start, end, flags):
        """R65: entries follow the new protection; exclusive anonymous pages become writable
        again in a writable VMA (MM_CP_TRY_CHANGE_WRITABLE), zeropages never do."""
        writable = bool(flags & VM_WRITE)
        for _, entry in self._entries_in(start, end):
            if isinstance(entry, HugePmd):     # whole: the VMA split already split partial ones
                entry.writable = writable and entry.kind == "thp"
                continue
            lo, hi = start >> 12, end >> 12
            for vpn, pte in entry.items():
                if lo <= vpn < hi:
                    pte.writable = writable and pte.kind == "anon"

    # ================================================================ madvise

    def madvise(self, addr, length, advice):
        self._check_open()
        addr, length = _int_arg(addr, "addr"), _int_arg(length, "length")
        if not isinstance(advice, str):
            raise TypeError(f"advice must be a str, not {type(advice).__name__}")
        if advice not in ADVICE:
            raise ValueError(f"unknown advice {advice!r}")
        if addr % PAGE_SIZE:
            raise SyscallError(errno.EINVAL, "madvise", "addr not aligned")
        end = addr + _align_up(length, PAGE_SIZE)
        if end >= 1 << 64:
            raise SyscallError(errno.EINVAL, "madvise", "end before start")
        if end == addr:
            return
        if advice not in NOOP_ADVICE + ("hugepage", "nohugepage", "dontneed", "populate_read",
                                        "populate_write"):
            raise NotImplementedError(f"madvise {advice!r} is not implemented yet (issue 4)")
        if advice.startswith("populate_"):
            return self._madvise_populate(addr, end, advice == "populate_write")
        if advice == "dontneed":
            self._check_thp_split(addr, end)
        elif advice in ("hugepage", "nohugepage"):
            for at in (addr, end):
                v = self._vma_at(at)
                if v is not None and v.start < at and self._hugepage_flags(v, advice) != v.flags:
                    self._check_thp_split(at)
        unmapped = False
        cur = addr
        while cur < end:            # madvise_walk_vmas
            vma = self._find_vma(cur)
            if vma is None or vma.start >= end:
                unmapped = True
                break
            if vma.start > cur:
                unmapped, cur = True, vma.start
            stop = min(end, vma.end)
            if advice == "dontneed":
                self._zap_range(vma, cur, stop, reclaim_pt=self.config.pt_reclaim)
            elif advice in ("hugepage", "nohugepage"):
                flags = self._hugepage_flags(vma, advice)
                if flags != vma.flags:
                    self._vma_modify(vma, cur, stop, flags, "madvise", errno.EAGAIN)
            cur = stop
        if unmapped:
            raise SyscallError(errno.ENOMEM, "madvise", "range not fully mapped")

    @staticmethod
    def _hugepage_flags(vma, advice):
        """hugepage_madvise (R62)."""
        if advice == "hugepage":
            return (vma.flags & ~VM_NOHUGEPAGE) | VM_HUGEPAGE
        return (vma.flags & ~VM_HUGEPAGE) | VM_NOHUGEPAGE

    def _madvise_populate(self, start, end, write):
        """R63, R79: GUP page by page; faults through the normal handler."""
        cur = start
        while cur < end:
            vma = self._vma_at(cur)
            if vma is None:
                raise SyscallError(errno.ENOMEM, "madvise", "hole")
            if not vma.flags & (VM_WRITE if write else VM_READ):
                raise SyscallError(errno.EINVAL, "madvise", "VMA lacks the permission")
            stop = min(end, vma.end)
            while cur < stop:
                step = self._follow(cur, write)
                if step:
                    cur += step
                    continue
                try:
                    self._fault(vma, cur, write)
                except _Oom:
                    raise SyscallError(errno.ENOMEM, "madvise", "out of memory") from None
