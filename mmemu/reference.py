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

Memory: an order-0 anonymous page is a :class:`Page`, a large folio (a THP of order 9, or an
mTHP of order 2..8) a :class:`Folio` (per-subpage mapcounts and written marks, the entire
mapcount, the MM_ID slots).  Entries point at them; what /proc/vmstat counts about them
(nr_anon_pages, nr_anon_transparent_hugepages, the per-size nr_anon, nr_anon_partially_mapped)
and each process's RssAnon are computed from the live objects when asked, so they cannot drift
from the page tables.

Frames (issue 5, the design notes' exact policy): emulated RAM is 512 reserved frames (frame 0
is the zeropage) and ``Config.memory // 4096`` frames above them, behind a buddy allocator of
orders 0..10.  An allocation takes the lowest block of the smallest sufficient order and splits it
keeping the lower half; a free merges with free buddies.  The free lists are thus always the
canonical decomposition of the free frames.  A THP/mTHP/huge-zeropage allocation that finds no
block compacts directly when the defrag policy allows it and compaction is not deferred
(_Machine.compact).  The memory cgroup charges anonymous folios and page tables (a page-table
charge never fails); a refused charge of a THP/mTHP falls back, of a 4K page is an OOM, as
when no frame is free (VM_FAULT_OOM: pgfault counts it, what the fault did before stays).

Shared memory: a MAP_SHARED|MAP_ANONYMOUS mapping or a memfd (:class:`RefMemfd`) is a
:class:`ShmemFile` (i_size in pages, a page cache of :class:`ShmemFolio`: order 0, a PMD-sized
THP, or the buddy pieces a hole leaves of one). Entries of kind "shmem" map them; the page cache
holds them, so unmapping never frees them: a hole, a truncation or the file's last reference
does. Where the design notes are silent the model follows the 6.18 kernel's code (mm/shmem.c,
mm/filemap.c, mm/memory.c, mm/khugepaged.c, mm/truncate.c); where the API's Python layer decides
(argument checks, errnos, ranges, the order of its steps) it follows that layer.
"""
from __future__ import annotations

import bisect
import errno
import heapq
import numbers
from dataclasses import dataclass

import numpy as np

from .config import HUGEPAGE_SIZES_KB, Config
from .constants import (ADVICE, ATOMIC, MTHP_STAT_NAMES, PAGE_SIZE, PMD_SIZE, READ, TASK_SIZE,
                        VMSTAT_NAMES, WRITE, PageState)
from .errors import BusError, ClosedError, OutOfMemory, SegmentationFault, SyscallError

__all__ = ["ReferenceMM"]

PUD_SPAN = 1 << 30              # what one PMD table maps
PGD_SPAN = 1 << 39              # what one PUD table maps
TOP = 1 << 47                   # the top of the user page tables (USER_PGTABLES_CEILING)
PTRS = 512                      # entries per table, pages per THP
MMAP_MIN_ADDR = 65536
MMAP_BASE = TASK_SIZE - (128 << 20)
ZERO_FRAME = 0                  # the shared 4K zeropage, outside emulated RAM
PSS_SHIFT = 12
PMD_ORDER = 9
MAX_PAGE_ORDER = 10             # the buddy allocator's largest block: 4 MiB
RESERVED_FRAMES = 512           # frames 0..511 never reach the free lists (frame 0 is the zeropage)
CONT_PTES = 16                  # arm64 contiguous-PTE block: 16 PTEs, 64 KiB
COMPACT_MAX_DEFER_SHIFT = 6
#: the per-size stats directories by order (hugepages-<4 << order>kB)
SIZE_ORDERS = {kb: (kb // 4).bit_length() - 1 for kb in HUGEPAGE_SIZES_KB}
MTHP_ORDERS = tuple(o for o in SIZE_ORDERS.values() if o < PMD_ORDER)
#: /proc/vmstat names issue 5 adds (compaction, migration), kept whatever constants.py lists
ISSUE5_VMSTAT_NAMES = ("compact_stall", "compact_fail", "compact_success", "pgmigrate_success")
ALL_VMSTAT_NAMES = tuple(VMSTAT_NAMES) + tuple(n for n in ISSUE5_VMSTAT_NAMES if n not in VMSTAT_NAMES)
# what each frame of emulated RAM holds (_Machine.kind)
K_FREE, K_RESERVED, K_PAGE, K_FOLIO, K_HZP, K_HELD, K_HELD_MOVABLE, K_SHMEM = range(8)

# vm_flags bits, with the kernel's values
VM_READ, VM_WRITE, VM_EXEC = 0x1, 0x2, 0x4
VM_SHARED, VM_MAYSHARE = 0x8, 0x80
VM_MAYREAD, VM_MAYWRITE, VM_MAYEXEC = 0x10, 0x20, 0x40
VM_LOCKED = 0x2000
VM_SEQ_READ, VM_RAND_READ, VM_DONTCOPY = 0x8000, 0x10000, 0x20000
VM_ACCOUNT = 0x00100000
VM_WIPEONFORK, VM_DONTDUMP = 0x02000000, 0x04000000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC
VM_MAY = VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
# /proc/PID/smaps VmFlags mnemonics, in the kernel's order (only those mmemu can set)
VMFLAG_NAMES = ((VM_READ, "rd"), (VM_WRITE, "wr"), (VM_EXEC, "ex"), (VM_SHARED, "sh"), (VM_MAYREAD, "mr"),
                (VM_MAYWRITE, "mw"), (VM_MAYEXEC, "me"), (VM_MAYSHARE, "ms"), (VM_LOCKED, "lo"), (VM_SEQ_READ, "sr"),
                (VM_RAND_READ, "rr"),
                (VM_DONTCOPY, "dc"), (VM_ACCOUNT, "ac"), (VM_WIPEONFORK, "wf"), (VM_DONTDUMP, "dd"),
                (VM_HUGEPAGE, "hg"), (VM_NOHUGEPAGE, "nh"))
# advice that only changes VMA flags: (set, clear)
FLAG_ADVICE = {
    "hugepage": (VM_HUGEPAGE, VM_NOHUGEPAGE), "nohugepage": (VM_NOHUGEPAGE, VM_HUGEPAGE),
    "normal": (0, VM_SEQ_READ | VM_RAND_READ), "random": (VM_RAND_READ, VM_SEQ_READ),
    "sequential": (VM_SEQ_READ, VM_RAND_READ), "dontfork": (VM_DONTCOPY, 0), "dofork": (0, VM_DONTCOPY),
    "wipeonfork": (VM_WIPEONFORK, 0), "keeponfork": (0, VM_WIPEONFORK),
    "dontdump": (VM_DONTDUMP, 0), "dodump": (0, VM_DONTDUMP),
}

SMAPS_KEYS = ("Size", "KernelPageSize", "MMUPageSize", "Rss", "Pss", "Pss_Dirty", "Shared_Clean", "Shared_Dirty", "Private_Clean",
              "Private_Dirty", "Referenced", "Anonymous", "KSM", "LazyFree", "AnonHugePages",
              "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap",
              "SwapPss", "Locked", "THPeligible")

NOOP_ADVICE = ("willneed",)            # nothing to do for anonymous memory, beyond the hole check
#: advice private anonymous memory only takes: EINVAL on a range with a shared mapping (the
#: engine's Python layer counts MADV_KEEPONFORK in, which the kernel would accept)
PRIVATE_ONLY_ADVICE = ("free", "wipeonfork", "keeponfork")
MODELLED_ADVICE = NOOP_ADVICE + tuple(FLAG_ADVICE) + ("remove", "dontneed", "dontneed_locked", "populate_read",
                                                     "populate_write", "free", "cold", "pageout", "collapse")
DONE, FALLBACK = "done", "fallback"     # what a PMD-level handler returns (VM_FAULT_FALLBACK)
# results of one khugepaged / MADV_COLLAPSE look at a PMD range (enum scan_result)
SCAN_SUCCEED, SCAN_PMD_NULL, SCAN_PMD_MAPPED, SCAN_EXCEED_NONE, SCAN_EXCEED_SHARED, \
    SCAN_LACK_REFERENCED, SCAN_ALLOC_FAIL, SCAN_PMD_NONE, SCAN_CGROUP_CHARGE_FAIL = range(9)


class _Segv(Exception):
    """The architecture rejected the access (SIGSEGV, nothing counted)."""


class _Bus(Exception):
    """A shared mapping's fault beyond the end of its file (VM_FAULT_SIGBUS)."""


class _Oom(Exception):
    """A 4K page could not be had (VM_FAULT_OOM)."""


@dataclass(eq=False)         # identity, so list.remove() removes this very VMA
class Vma:
    start: int
    end: int
    flags: int
    anon_vma: int | None = None     # an id; None until the first anonymous fault (R17)
    pgoff: int = 0                  # vm_pgoff: start >> 12 at mmap, kept across mremap
    file: object = None             # the ShmemFile of a shared mapping (vm_file), else None


@dataclass(eq=False)
class Page:
    """An order-0 anonymous folio (its refcount is its mapcount: no pins are modelled)."""
    frame: int
    mapcount: int = 1
    written: bool = False           # a WRITE or ATOMIC completed on it: not a zero page
    lazyfree: bool = False          # MADV_FREE'd (not swap-backed)


class Folio:
    """A large anonymous folio: a THP (order 9) or an mTHP (orders 2..8), 2**order frames
    from frame `pfn` (naturally aligned)."""

    def __init__(self, pfn, order, mm_id, pmd_mapped):
        self.pfn = pfn
        self.order = order
        self.nr = 1 << order
        # a THP from a PMD fault or a collapse is born with one PMD mapping; an mTHP with a PTE
        # mapping of every page (folio_add_new_anon_rmap)
        self.entire = 1 if pmd_mapped else 0   # PMD mappings
        self.mapcount = [0 if pmd_mapped else 1] * self.nr    # PTE mappings per subpage
        self.written = [False] * self.nr
        self.lazyfree = False
        self.partially_mapped = False
        self.queued = False                   # on the deferred-split queue
        # MM_ID tracking (include/linux/rmap.h: folio_add/sub_return_large_mapcount); the
        # per-slot counts are "mappings - 1" as the kernel keeps them (-1: slot free)
        self.large = 1 if pmd_mapped else self.nr     # every mapping: PMD + PTE
        self.ids = [mm_id, None]
        self.cnt = [self.large - 1, -1]
        self.shared = False                   # FOLIO_MM_IDS_SHARED_BIT

    def mm_add(self, mm_id, diff):
        self.large += diff
        new_val = self.large - 1
        if self.ids[0] == mm_id:
            self.cnt[0] += diff
        elif self.ids[1] == mm_id:
            self.cnt[1] += diff
        elif self.ids[0] is None:
            self.ids[0], self.cnt[0] = mm_id, diff - 1
            if new_val != diff - 1:          # we might have other mappings already
                self.shared = True
        elif self.ids[1] is None:
            self.ids[1], self.cnt[1] = mm_id, diff - 1
            self.shared = True               # slot 0 certainly has mappings as well

    def mm_sub(self, mm_id, diff):
        self.large -= diff
        new_val = self.large - 1
        for i in (0, 1):
            if self.ids[i] == mm_id:
                self.cnt[i] -= diff
                if self.cnt[i] >= 0:
                    return
                self.ids[i], self.cnt[i] = None, -1
                break
        if new_val in (self.cnt[0], self.cnt[1]):   # one slot owns every mapping
            self.shared = False

    def maybe_mapped_shared(self):
        """folio_maybe_mapped_shared (CONFIG_MM_ID)."""
        return self.large > 1 and self.shared

    def nr_mapped(self):
        """Subpages mapped at all (by a PMD anywhere, or by a PTE)."""
        if self.entire:
            return self.nr
        return sum(1 for c in self.mapcount if c)

    def page_mapcount(self, i):
        """folio_precise_page_mapcount."""
        return self.mapcount[i] + self.entire


class ShmemFolio:
    """A folio of a shmem file's page cache: 2**order frames from `pfn` holding file pages
    `index` .. `index + nr - 1` (order 0, or 9 for a shmem THP, or a buddy piece of a split
    THP). The page cache holds it; mappings only count (mapcount per page, entire = PMD
    mappings)."""

    def __init__(self, file, index, pfn, order, uptodate=True):
        self.file = file
        self.index = index
        self.pfn = pfn
        self.order = order
        self.nr = 1 << order
        self.mapcount = [0] * self.nr
        self.entire = 0
        self.dirty = False          # PG_dirty (a write fault, fallocate, a dirty PTE zapped)
        self.uptodate = uptodate    # fallocated folios are not, until a fault clears them

    def page_mapcount(self, i):
        return self.mapcount[i] + self.entire


class ShmemFile:
    """A shmem inode: i_size in pages and the page cache (file page -> the folio holding it).
    A MAP_SHARED|MAP_ANONYMOUS object has no fd; a memfd's fd is open until closed."""

    def __init__(self, machine, anonymous):
        self.machine = machine
        self.size = 0
        self.fallocend = 0          # the end of what fallocate reserved (maybe past i_size)
        self.cache = {}
        self.fd_open = not anonymous

    def folios(self):
        """The distinct folios of the page cache, in file order."""
        return sorted({id(f): f for f in self.cache.values()}.values(), key=lambda f: f.index)


class RefMemfd:
    """The reference's memfd (mmemu.Memfd's API): a ShmemFile with an open fd."""

    def __init__(self, mm, name):
        self._m = mm._m
        self.name = name
        self._file = ShmemFile(mm._m, anonymous=False)
        mm._m.files.append(self._file)

    @property
    def closed(self):
        return self._file not in self._m.files or not self._file.fd_open

    @property
    def size(self):
        return self._file.size * PAGE_SIZE if self._file in self._m.files else 0

    def _check(self, call):
        if self.closed:
            raise SyscallError(errno.EBADF, call, "the memfd is closed")

    def ftruncate(self, size):
        """ftruncate(2) (shmem_setattr): i_size in whole pages, as the API keeps it; pages beyond
        a smaller size are unmapped from every process and freed."""
        size = _int_arg(size, "size")
        self._check("ftruncate")
        if size > TASK_SIZE:
            raise SyscallError(errno.EFBIG, "ftruncate")
        pages = _align_up(size, PAGE_SIZE) // PAGE_SIZE
        f = self._file
        if pages < f.size:
            # i_size is written first; then shmem_truncate_range(inode, newsize, (loff_t)-1):
            # to the very end, a THP's tail past the old i_size too, and fallocend comes back
            end = max([f.size] + [folio.index + folio.nr for folio in f.folios()])
            f.size = pages
            f.fallocend = min(f.fallocend, pages)
            for mm in self._m.mms:
                mm._unmap_file_range(f, pages, end)
            self._m.truncate_range(f, pages, end)
        f.size = pages

    def fallocate(self, offset, length, punch_hole=False, keep_size=False):
        """fallocate(2) (shmem_fallocate): PUNCH_HOLE frees the whole pages of the range; else
        each missing page of the range (up to i_size, which grows first unless keep_size) is
        allocated without data (not uptodate) and every folio of the range marked dirty."""
        offset, length = _int_arg(offset, "offset"), _int_arg(length, "length")
        for name, value in (("punch_hole", punch_hole), ("keep_size", keep_size)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False")
        self._check("fallocate")
        if length == 0:
            raise SyscallError(errno.EINVAL, "fallocate", "length 0")
        if offset + length > TASK_SIZE:
            raise SyscallError(errno.EFBIG, "fallocate")
        f = self._file
        if punch_hole:
            self._m.punch_hole(f, _align_up(offset, PAGE_SIZE) // PAGE_SIZE, (offset + length) // PAGE_SIZE)
            return
        end = _align_up(offset + length, PAGE_SIZE) // PAGE_SIZE
        old_size = f.size
        if end > f.size and not keep_size:
            f.size = end
        if not self._m.shmem_fallocate(f, offset // PAGE_SIZE, min(end, f.size), end):
            f.size = old_size
            raise OutOfMemory(None)

    def close(self):
        if self.closed:
            return
        self._file.fd_open = False
        self._m.release_files()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(eq=False)
class Pte:
    kind: str           # "zero" (the shared zeropage), "anon" or "shmem"
    page: object        # None for the zeropage, a Page, a Folio or a ShmemFolio (subpage idx)
    idx: int
    writable: bool
    dirty: bool
    young: bool
    exclusive: bool     # the page's anon-exclusive mark (one mapping implies one holder)


@dataclass(eq=False)
class HugePmd:
    kind: str           # "hzp" (the huge zeropage), "thp" (a PMD-mapped anonymous THP) or
    folio: object       # "shmem" (a PMD-mapped shmem THP, no deposited table); Folio/ShmemFolio
    writable: bool
    dirty: bool
    young: bool
    exclusive: bool


def _align_up(x, a):
    return (x + a - 1) // a * a


def _zero_pte():
    return Pte("zero", None, 0, False, False, True, False)


# ---- argument checking ------------------------------------------------------------------

def _int_arg(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be a non-negative 64-bit value, not {value}")
    return value


def _memory_max_arg(value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"memory_max must be an int (bytes) or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"memory_max must not be negative, not {value}")
    return int(value)


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


# ---- the machine: RAM, the huge zeropage, system-wide counters, khugepaged --------------

class _Machine:
    """Emulated RAM behind a buddy allocator, the memory cgroup, what /proc/vmstat counts, the
    processes, the deferred-split queue and khugepaged's scan list."""

    def __init__(self, config, memory_max=None):
        self.config = config
        self.events = dict.fromkeys(ALL_VMSTAT_NAMES, 0)
        self.mthp_events = {order: dict.fromkeys(MTHP_STAT_NAMES, 0) for order in SIZE_ORDERS.values()}
        self.huge_zero_pfn = None
        self.last_anon_vma = 0
        self.last_mm_id = 0
        self.mms = []               # open processes, in creation order
        self.pages = {}             # frame -> Page (mapped order-0 anonymous pages)
        self.folios = {}            # first frame -> Folio (existing large folios)
        self.held = {}              # frame -> movable: pages fragment_memory holds
        self.files = []             # live shmem files (ShmemFile), in creation order
        self.deferred = []          # the deferred-split queue (folios, in queueing order)
        # the memory cgroup every process of the machine is in
        self.memory_max = memory_max
        self.charged = 0            # pages charged (memory_current / 4096)
        # khugepaged (mm/khugepaged.c: khugepaged_scan, khugepaged_mm_slot)
        self.kh_list = []           # registered mms, in registration order
        self.kh_slot = None         # the mm being scanned, or None (at the list head)
        self.kh_address = 0
        self.pages_collapsed = 0
        self.full_scans = 0
        self._buddy_init()

    # ---- the buddy allocator (mm/page_alloc.c, one zone, orders 0..MAX_PAGE_ORDER)
    def _buddy_init(self):
        # frames 0..511 are reserved, Config.memory above them starts free (the engine as built
        # reads the design notes so: Config.memory is the RAM the allocator hands out)
        self.nframes = RESERVED_FRAMES + self.config.memory // PAGE_SIZE
        self.kind = np.full(self.nframes, K_FREE, dtype=np.uint8)
        self.kind[:RESERVED_FRAMES] = K_RESERVED
        self.free_at = {}           # first frame of a free block -> its order
        self.free_sets = [set() for _ in range(MAX_PAGE_ORDER + 1)]
        self.free_heaps = [[] for _ in range(MAX_PAGE_ORDER + 1)]   # lazily pruned
        self.nr_free = 0
        # compaction deferral (struct zone: compact_considered, _defer_shift, _order_failed)
        self.compact_considered = self.compact_defer_shift = self.compact_order_failed = 0
        pfn = RESERVED_FRAMES       # the rest starts free, as maximal aligned blocks
        while pfn < self.nframes:
            order = MAX_PAGE_ORDER
            while pfn % (1 << order) or pfn + (1 << order) > self.nframes:
                order -= 1
            self._add_free(pfn, order)
            pfn += 1 << order

    def _add_free(self, pfn, order):
        self.free_at[pfn] = order
        self.free_sets[order].add(pfn)
        heapq.heappush(self.free_heaps[order], pfn)
        self.nr_free += 1 << order
        self.kind[pfn:pfn + (1 << order)] = K_FREE

    def _del_free(self, pfn, order):
        del self.free_at[pfn]
        self.free_sets[order].remove(pfn)
        self.nr_free -= 1 << order

    def _lowest_free(self, order):
        heap, live = self.free_heaps[order], self.free_sets[order]
        while heap and heap[0] not in live:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def buddy_alloc(self, order):
        """__rmqueue_smallest: the smallest order with a free block, its lowest block; split,
        keeping the lower half (the upper halves go on the lists of the orders below)."""
        for k in range(order, MAX_PAGE_ORDER + 1):
            pfn = self._lowest_free(k)
            if pfn is None:
                continue
            self._del_free(pfn, k)
            while k > order:
                k -= 1
                self._add_free(pfn + (1 << k), k)
            return pfn
        return None

    def buddy_free(self, pfn, order):
        """__free_one_page: merge with the buddy while it is free at the same order."""
        while order < MAX_PAGE_ORDER:
            buddy = pfn ^ (1 << order)
            if self.free_at.get(buddy) != order:
                break
            self._del_free(buddy, order)
            pfn = min(pfn, buddy)
            order += 1
        self._add_free(pfn, order)

    def take_frame(self, pfn):
        """Take one given free frame off the free lists, splitting the block that holds it."""
        for order in range(MAX_PAGE_ORDER + 1):
            start = pfn & ~((1 << order) - 1)
            if self.free_at.get(start) == order:
                break
        else:
            raise AssertionError(f"frame {pfn} is not free")
        self._del_free(start, order)
        while order > 0:
            order -= 1
            half = start + (1 << order)
            if pfn >= half:
                self._add_free(start, order)
                start = half
            else:
                self._add_free(half, order)

    def buddyinfo(self):
        return np.array([len(s) for s in self.free_sets], dtype=np.int64)

    def alloc_large(self, order, compact):
        """A naturally aligned block of 2**order frames for a THP, an mTHP or the huge
        zeropage; with direct compaction allowed, a failure compacts and tries once more."""
        pfn = self.buddy_alloc(order)
        if pfn is None and compact and self.compact(order):
            pfn = self.buddy_alloc(order)
        return pfn

    def compact(self, order):
        """Direct compaction for one block of 2**order frames, as the design notes fix it (the
        engine as built): unless deferred, the lowest 2 MiB pageblock (not block 0) with no
        unmovable frame that is not wholly free; in it the lowest aligned 2**order range; if its
        used frames fit in the free frames outside it, they are migrated out in ascending order,
        each to the frame alloc(0) gives once the range's own free frames are off the lists,
        and the range is freed as one block."""
        if self.compaction_deferred(order):
            return False
        self.events["compact_stall"] += 1
        size = 1 << order
        start = None
        nblocks = self.nframes >> PMD_ORDER
        if nblocks > 1:
            kinds = self.kind[PTRS:nblocks << PMD_ORDER].reshape(nblocks - 1, PTRS)
            unmovable = np.isin(kinds, (K_RESERVED, K_FOLIO, K_HZP, K_HELD, K_SHMEM)).any(axis=1)
            wholly_free = (kinds == K_FREE).all(axis=1)
            found = np.flatnonzero(~unmovable & ~wholly_free)
            if len(found):
                start = (int(found[0]) + 1) << PMD_ORDER
        if start is not None:
            used = int((self.kind[start:start + size] != K_FREE).sum())
            if used > self.nr_free - (size - used):
                start = None
        if start is None:
            self.events["compact_fail"] += 1
            self.defer_compaction(order)
            return False
        pfn = start
        while pfn < start + size:           # the range's free blocks leave the free lists
            k = self.free_at.get(pfn)
            if k is not None:
                self._del_free(pfn, k)
                pfn += 1 << k
            else:
                pfn += 1
        for old in range(start, start + size):
            what = self.kind[old]
            if what == K_FREE:
                continue
            new = self.buddy_alloc(0)
            if what == K_PAGE:              # every PTE maps the same Page object: all follow
                page = self.pages.pop(old)
                page.frame = new
                self.pages[new] = page
            else:
                self.held[new] = self.held.pop(old)
            self.kind[new] = what
            self.events["pgmigrate_success"] += 1
        self.buddy_free(start, order)
        self.events["compact_success"] += 1
        self.compact_considered = self.compact_defer_shift = 0      # compaction_defer_reset
        self.compact_order_failed = max(self.compact_order_failed, order + 1)
        return True

    def compaction_deferred(self, order):
        """mm/compaction.c: compaction_deferred for the one zone."""
        if order < self.compact_order_failed:
            return False
        self.compact_considered += 1
        limit = 1 << self.compact_defer_shift
        if self.compact_considered >= limit:
            self.compact_considered = limit
            return False
        return True

    def defer_compaction(self, order):
        self.compact_considered = 0
        self.compact_defer_shift = min(self.compact_defer_shift + 1, COMPACT_MAX_DEFER_SHIFT)
        self.compact_order_failed = min(self.compact_order_failed, order)

    def alloc_page(self):
        """A 4K frame (never compacts: compaction cannot make an order-0 block)."""
        return self.buddy_alloc(0)

    def fragment(self, free_fraction, order, movable):
        size = 1 << order
        regions = [r for pfn, k in sorted(self.free_at.items()) if k >= order
                   for r in range(pfn, pfn + (1 << k), size)]
        h = max(1, round((1 - free_fraction) * size))
        offsets = [(i * size) // h for i in range(h)]
        for r in regions:
            for off in offsets:
                self.take_frame(r + off)
                self.held[r + off] = movable
                self.kind[r + off] = K_HELD_MOVABLE if movable else K_HELD
        return len(regions) * h

    def release_fragmentation(self):
        n = len(self.held)
        for pfn in sorted(self.held):
            self.buddy_free(pfn, 0)
        self.held.clear()
        return n

    # ---- the memory cgroup
    def try_charge(self, nr):
        if self.memory_max is not None and (self.charged + nr) * PAGE_SIZE > self.memory_max:
            return False
        self.charged += nr
        return True

    def uncharge(self, nr):
        self.charged -= nr

    def new_anon_vma(self):
        self.last_anon_vma += 1
        return self.last_anon_vma

    # ---- the counters
    def vmstat(self):
        out = dict(self.events)
        out["nr_anon_pages"] = len(self.pages) + sum(f.nr_mapped() for f in self.folios.values())
        out["nr_anon_transparent_hugepages"] = sum(1 for f in self.folios.values() if f.entire)
        out["nr_page_table_pages"] = sum(mm._nr_tables for mm in self.mms)
        shmem = [f for file in self.files for f in file.folios()]
        out["nr_shmem"] = sum(f.nr for f in shmem)
        out["nr_shmem_hugepages"] = sum(1 for f in shmem if f.order == PMD_ORDER)
        out["nr_shmem_pmdmapped"] = sum(1 for f in shmem if f.entire)
        return out

    def mthp(self):
        out = {}
        for kb, order in SIZE_ORDERS.items():
            d = dict(self.mthp_events[order])
            folios = [f for f in self.folios.values() if f.order == order]
            d["nr_anon"] = len(folios)
            d["nr_anon_partially_mapped"] = sum(1 for f in folios if f.partially_mapped)
            out[kb] = d
        return out

    # ---- folios
    def new_page(self, frame, written=False):
        page = Page(frame, 1, written)
        self.pages[frame] = page
        self.kind[frame] = K_PAGE
        return page

    def put_page(self, page):
        """One mapping of an order-0 page went; the last frees it."""
        page.mapcount -= 1
        if page.mapcount == 0:
            self.free_page(page)

    def free_page(self, page):
        del self.pages[page.frame]
        self.buddy_free(page.frame, 0)
        self.uncharge(1)

    def new_folio(self, pfn, order, mm, pmd_mapped):
        folio = Folio(pfn, order, mm._id, pmd_mapped)
        self.folios[pfn] = folio
        self.kind[pfn:pfn + folio.nr] = K_FOLIO
        return folio

    def free_folio(self, folio):
        del self.folios[folio.pfn]
        if folio.queued:
            self.deferred.remove(folio)
            folio.queued = False
        self.buddy_free(folio.pfn, folio.order)
        self.uncharge(folio.nr)

    def queue(self, folio):
        if not folio.queued:
            folio.queued = True
            self.deferred.append(folio)

    def after_rmap_removal(self, folio):
        """__folio_remove_rmap's tail: free a folio whose last mapping went; flag and queue
        one that is still mapped but has a subpage mapped nowhere (R50, R58)."""
        if folio.large == 0:
            self.free_folio(folio)
        elif not folio.entire and not folio.partially_mapped and 0 in folio.mapcount:
            folio.partially_mapped = True
            if folio.order == PMD_ORDER:
                self.events["thp_deferred_split_page"] += 1
            self.mthp_events[folio.order]["split_deferred"] += 1
            self.queue(folio)

    def folio_mlocked(self, folio):
        """folio_test_mlocked: some process maps every page of the folio from VM_LOCKED VMAs
        (a large folio locked in part is not mlocked)."""
        for mm in self.mms:
            locked = set()
            for vma in mm._vmas:
                if not vma.flags & VM_LOCKED:
                    continue
                for pi, entry in mm._pmds.items():
                    if isinstance(entry, HugePmd):
                        if entry.folio is folio and vma.start <= pi << 21 < vma.end:
                            locked.update(range(folio.nr))
                    else:
                        locked.update(pte.idx for vpn, pte in entry.items()
                                      if pte.page is folio and vma.start <= vpn * PAGE_SIZE < vma.end)
            if len(locked) == folio.nr:
                return True
        return False

    def split_folio(self, folio):
        """R51, R52: split a large folio into order-0 pages, in every process; an mlocked
        folio keeps its zero subpages mapped. unmap_folio's try_to_migrate removes PTEs one at a
        time, so a folio with PTE mappings (of two pages or more, or beside a PMD mapping) is
        partially mapped for a moment first: counted as deferred_split_folio counts it (the
        design notes, measured on the 6.18 host); PMD mappings are frozen whole."""
        pte_mapped = sum(1 for c in folio.mapcount if c)
        if not folio.partially_mapped and pte_mapped and (folio.entire or pte_mapped >= 2):
            folio.partially_mapped = True
            if folio.order == PMD_ORDER:
                self.events["thp_deferred_split_page"] += 1
            self.mthp_events[folio.order]["split_deferred"] += 1
        mlocked = self.folio_mlocked(folio)
        for mm in self.mms:
            for pi in [pi for pi, e in mm._pmds.items() if isinstance(e, HugePmd) and e.folio is folio]:
                mm._split_huge_pmd(pi)
        pages = [Page(folio.pfn + i, folio.mapcount[i], folio.written[i], folio.lazyfree)
                 if folio.mapcount[i] else None for i in range(folio.nr)]
        to_zero = self.config.remap_zero_subpages and self.config.zero_page and not mlocked
        for mm in self.mms:
            for table in mm._pmds.values():
                if isinstance(table, HugePmd):
                    continue
                for vpn, pte in table.items():
                    if pte.page is not folio:
                        continue
                    page = pages[pte.idx]
                    # try_to_map_unused_to_zeropage, which leaves a VM_LOCKED VMA's pages be
                    if to_zero and not page.written and not mm._find_vma(vpn * PAGE_SIZE).flags & VM_LOCKED:
                        table[vpn] = Pte("zero", None, 0, False, False, False, False)
                        page.mapcount -= 1
                    else:
                        pte.page, pte.idx = page, 0
        del self.folios[folio.pfn]
        if folio.queued:
            self.deferred.remove(folio)
            folio.queued = False
        for i, page in enumerate(pages):
            if page is not None and page.mapcount:
                self.pages[page.frame] = page
                self.kind[page.frame] = K_PAGE
            else:                                           # unmapped subpages are freed
                self.buddy_free(folio.pfn + i, 0)
                self.uncharge(1)
        if folio.order == PMD_ORDER:
            self.events["thp_split_page"] += 1
        self.mthp_events[folio.order]["split"] += 1

    # ---- shmem: page cache folios, holes, truncation, file lifetime
    def shmem_add(self, file, index, pfn, order, uptodate=True):
        """A new folio (frames already allocated and charged) in file's page cache at index."""
        folio = ShmemFolio(file, index, pfn, order, uptodate)
        for i in range(folio.nr):
            file.cache[index + i] = folio
        self.kind[pfn:pfn + folio.nr] = K_SHMEM
        return folio

    def shmem_alloc_page(self, file, index, uptodate=True):
        """shmem_alloc_and_add_folio, order 0: a frame, charged; None if either fails."""
        frame = self.alloc_page()
        if frame is None:
            return None
        if not self.try_charge(1):
            self.buddy_free(frame, 0)
            return None
        return self.shmem_add(file, index, frame, 0, uptodate)

    def shmem_free_folio(self, folio):
        """The page cache lets go of a folio no one maps (truncate_inode_folio): freed, uncharged."""
        assert not folio.entire and not any(folio.mapcount), "freeing a mapped shmem folio"
        for i in range(folio.nr):
            del folio.file.cache[folio.index + i]
        self.buddy_free(folio.pfn, folio.order)
        self.uncharge(folio.nr)

    def shmem_split(self, folio, cut, uniform=False):
        """Split a large shmem folio around its page `cut` (6.15+ folio_split: at each order
        below its own the half without the cut page stays one folio, the cut page ends as an
        order-0 folio; an order-1 piece becomes two order-0 pages here, as the design notes
        have it); before 6.15 into order-0 pages. It is unmapped from every process first and
        not mapped again (remap_page maps anonymous folios only); counted as thp_split_page
        (order 9) and <size>/split. Returns the pieces."""
        if self.config_version() >= (6, 15) and not uniform:     # uniform: split_folio
            pieces, lo, order = [], 0, folio.order
            while order > 0:
                order -= 1
                half = 1 << order
                if cut < lo + half:
                    pieces.append((lo + half, order))
                else:
                    pieces.append((lo, order))
                    lo += half
            pieces.append((lo, 0))
            pieces = [p for off, o in pieces for p in ([(off, 0), (off + 1, 0)] if o == 1 else [(off, o)])]
        else:
            pieces = [(i, 0) for i in range(folio.nr)]
        for mm in self.mms:         # unmapped whole (try_to_unmap), not mapped again: no anon folio
            mm._unmap_file_range(folio.file, folio.index, folio.index + folio.nr)
        new = {}
        for off, order in sorted(pieces):
            piece = ShmemFolio(folio.file, folio.index + off, folio.pfn + off, order, folio.uptodate)
            piece.dirty = folio.dirty
            piece.mapcount = folio.mapcount[off:off + piece.nr]
            for i in range(piece.nr):
                folio.file.cache[piece.index + i] = piece
                new[off + i] = piece
        for mm in self.mms:
            for table in mm._pmds.values():
                if isinstance(table, HugePmd):
                    continue
                for pte in table.values():
                    if pte.page is folio:
                        piece = new[pte.idx]
                        pte.page, pte.idx = piece, folio.index + pte.idx - piece.index
        if folio.order == PMD_ORDER:
            self.events["thp_split_page"] += 1
        if folio.order in self.mthp_events:
            self.mthp_events[folio.order]["split"] += 1
        return sorted({id(p): p for p in new.values()}.values(), key=lambda p: p.index)

    def config_version(self):
        return tuple(int(x) for x in self.config.kernel.split(".")[:2])

    def punch_hole(self, file, first, last):
        """shmem_fallocate(PUNCH_HOLE) of pages [first, last) (to wherever the range ends: a
        THP may hold pages past i_size): unmap them from every process (unmap_mapping_range),
        then truncate them; fallocend comes back to the hole's start if it was inside."""
        if first < file.fallocend <= last:
            file.fallocend = first
        if first >= last:
            return
        for mm in self.mms:
            mm._unmap_file_range(file, first, last)
        self.truncate_range(file, first, last)

    def truncate_range(self, file, first, last):
        """shmem_undo_range: folios wholly inside go; a large folio the range cuts is split
        (truncate_inode_partial_folio: at the range's first page in it, then at the page after
        the range), and the pieces inside go."""
        def whole():
            for folio in file.folios():
                if first <= folio.index and folio.index + folio.nr <= last:
                    self.shmem_free_folio(folio)
        whole()
        same_folio = False
        for at in (first, last - 1):
            if at == last - 1 and same_folio:
                break
            folio = file.cache.get(at)
            if folio is None:
                continue
            if at == first:         # shmem_get_partial_folio at the start
                same_folio = last <= folio.index + folio.nr
            folio.dirty = True
            if folio.nr == 1:
                continue
            offset = max(first - folio.index, 0)
            end = min(last, folio.index + folio.nr) - folio.index
            index, nr = folio.index, folio.nr
            self.drop_past_eof(file, self.shmem_split(folio, offset))
            folio2 = file.cache.get(index + end)
            if end < nr and folio2 is not None and folio2.nr > 1:
                self.drop_past_eof(file, self.shmem_split(folio2, index + end - folio2.index))
        whole()

    def shmem_fallocate(self, file, first, last, range_end=None):
        """shmem_fallocate over [first, last) (the API's range): each page not cached gets a
        folio without data (not uptodate), a THP where shmem_enabled lets a file without a VMA
        have one (always; within_size where i_size or the range's end covers the 2 MiB) and its
        naturally aligned 512 slots are empty -- the 2 MiB may start before the range -- else a
        4K page; every folio of the range is marked dirty. No VMA, so no MADV_HUGEPAGE: direct
        compaction only with defrag=always (vma_thp_gfp_mask(NULL)). Running out (no frame, or
        the charge refused, for a 4K page) frees what is not uptodate in [first, the failing
        page) (undo_fallocate) and fails. fallocend rises to the range's end (``range_end``,
        past i_size with keep_size) for the call, and comes back first if it fails."""
        mode = self.config.shmem_enabled
        undo_fallocend = file.fallocend
        file.fallocend = max(file.fallocend, last if range_end is None else range_end)
        index = first
        while index < last:
            folio = file.cache.get(index)
            if folio is None:
                base = index & ~(PTRS - 1)
                huge = mode == "always" or (mode == "within_size"
                                            and max(last, file.size) >= _align_up(index + 1, PTRS))
                if huge and not any(i in file.cache for i in range(base, base + PTRS)):
                    folio = self.shmem_alloc_thp(file, base, self.config.defrag == "always", uptodate=False)
            if folio is None:
                folio = self.shmem_alloc_page(file, index, uptodate=False)
                if folio is None:
                    file.fallocend = undo_fallocend
                    self.undo_fallocate(file, first, index)
                    return False
            folio.dirty = True
            index = folio.index + folio.nr
        return True

    def drop_past_eof(self, file, pieces):
        """__folio_split drops the new folios that begin at or past EOF (i_size, or fallocend
        where fallocate reserved beyond it), unmapped from every process; the first piece, which
        holds the old head, stays."""
        eof = max(file.size, file.fallocend)
        for piece in pieces[1:]:
            if piece.index >= eof:
                for mm in self.mms:
                    mm._unmap_file_range(file, piece.index, piece.index + piece.nr)
                self.shmem_free_folio(piece)

    def shmem_alloc_thp(self, file, base, compact, uptodate=True):
        """A shmem THP for pages [base, base + 512) of ``file``, or None: thp_file_alloc, or
        thp_file_fallback (and _charge when the memory cgroup refused it), with the 2048 kB
        shmem_* stats."""
        pfn = self.alloc_large(PMD_ORDER, compact)
        if pfn is not None and not self.try_charge(PTRS):
            self.buddy_free(pfn, PMD_ORDER)
            self.events["thp_file_fallback_charge"] += 1
            self.mthp_events[PMD_ORDER]["shmem_fallback_charge"] += 1
            pfn = None
        if pfn is None:
            self.events["thp_file_fallback"] += 1
            self.mthp_events[PMD_ORDER]["shmem_fallback"] += 1
            return None
        self.events["thp_file_alloc"] += 1
        self.mthp_events[PMD_ORDER]["shmem_alloc"] += 1
        return self.shmem_add(file, base, pfn, PMD_ORDER, uptodate=uptodate)

    def undo_fallocate(self, file, first, last):
        """shmem_undo_range(unfalloc) over [first, last): the folios not uptodate there go (an
        earlier fallocate's too); one that begins before the range is split at its first page
        (truncate_inode_partial_folio) and the pieces inside go. None crosses ``last``: the
        page there could not be had."""
        folio = file.cache.get(first)
        if first < last and folio is not None and folio.nr > 1 and not folio.uptodate and folio.index < first:
            self.drop_past_eof(file, self.shmem_split(folio, first - folio.index))
        for f in file.folios():
            if first <= f.index and f.index + f.nr <= last and not f.uptodate:
                self.shmem_free_folio(f)

    def release_files(self):
        """Free every shmem file no fd and no mapping holds any more (the last fput)."""
        live = {id(vma.file) for mm in self.mms for vma in mm._vmas if vma.file is not None}
        for file in list(self.files):
            if not file.fd_open and id(file) not in live:
                for folio in file.folios():
                    self.shmem_free_folio(folio)
                self.files.remove(file)

    # ---- shrinkers
    def deferred_split_scan(self):
        """R54: every queued folio leaves the queue; partially mapped ones are split, fully
        mapped ones too when underused."""
        cfg = self.config
        for folio in list(self.deferred):
            self.deferred.remove(folio)
            folio.queued = False
            if folio.partially_mapped:
                self.split_folio(folio)
            elif (cfg.shrink_underused and cfg.khugepaged_max_ptes_none < PTRS - 1
                  and not self.folio_mlocked(folio)
                  and folio.written.count(False) > cfg.khugepaged_max_ptes_none):
                self.split_folio(folio)
                self.events["thp_underused_split_page"] += 1

    def shrink_huge_zero(self):
        """R56: the huge zeropage goes when no process holds it."""
        if self.huge_zero_pfn is not None and not any(mm._has_huge_zero for mm in self.mms):
            self.buddy_free(self.huge_zero_pfn, PMD_ORDER)
            self.huge_zero_pfn = None

    # ---- khugepaged
    def khugepaged_enabled(self):
        """hugepage_pmd_enabled(): khugepaged runs while order 9 can be enabled at all."""
        return self.config.pmd_thp_modes()[1]

    def khugepaged_register(self, mm):
        if mm not in self.kh_list:
            self.kh_list.append(mm)

    def khugepaged_exit(self, mm):
        """__khugepaged_exit: the slot goes now unless khugepaged is scanning it (then the scan
        finds the mm exiting and frees the slot itself)."""
        if mm in self.kh_list and self.kh_slot is not mm:
            self.kh_list.remove(mm)

    def khugepaged_do_scan(self, pages):
        """One wake-up of khugepaged (khugepaged_do_scan)."""
        progress, pass_through_head, wait = 0, 0, True
        while True:
            if self.kh_slot is None:
                pass_through_head += 1
            result = None
            if self.kh_list and self.khugepaged_enabled() and pass_through_head < 2:
                done, result = self.khugepaged_scan_mm_slot(pages - progress)
                progress += done
            else:
                progress = pages
            if progress >= pages:
                return
            if result == SCAN_ALLOC_FAIL:
                if not wait:
                    return
                wait = False

    def khugepaged_scan_mm_slot(self, pages):
        """khugepaged_scan_mm_slot: (PTE slots used, last result)."""
        if self.kh_slot is None:
            self.kh_slot, self.kh_address = self.kh_list[0], 0
        mm = self.kh_slot
        progress, result, finished = 1, None, True
        if not mm._closed and mm._thp_disable != "completely":
            for vma in list(mm._vmas):
                if vma.end <= self.kh_address:
                    continue
                if not mm._khugepaged_allowed(vma, vma.flags):
                    progress += 1
                    continue
                hstart = _align_up(vma.start, PMD_SIZE)
                hend = vma.end & ~(PMD_SIZE - 1)
                if self.kh_address > hend:
                    progress += 1
                    continue
                self.kh_address = max(self.kh_address, hstart)
                stop = False
                while self.kh_address < hend:
                    result, locked = mm._khugepaged_scan_pmd(vma, self.kh_address)
                    if result == SCAN_SUCCEED:
                        self.pages_collapsed += 1
                    self.kh_address += PMD_SIZE
                    progress += PTRS
                    if not locked or progress >= pages:
                        stop = True
                        break
                if stop:
                    finished = False
                    break
        if finished:            # every VMA scanned (or the mm is exiting): the next mm
            i = self.kh_list.index(mm)
            if i + 1 < len(self.kh_list):
                self.kh_slot, self.kh_address = self.kh_list[i + 1], 0
            else:
                self.kh_slot = None
                self.full_scans += 1
            if mm._closed:
                self.kh_list.remove(mm)
        return progress, result


class ReferenceMM:
    """One emulated process (see the module docstring); the API of :class:`mmemu.MM`."""

    _prealloc = False           # a PTE table preallocated by a shmem fault, not yet installed

    def __init__(self, config: Config | None = None, memory_max=None):
        if config is None:
            config = Config()
        if not isinstance(config, Config):
            raise TypeError(f"config must be a mmemu.Config, not {type(config).__name__}")
        self._init_process(config, _Machine(config, _memory_max_arg(memory_max)))

    def _init_process(self, config, machine):
        self.config = config
        self._m = machine
        machine.last_mm_id += 1
        self._id = machine.last_mm_id
        machine.mms.append(self)
        self._vmas: list[Vma] = []
        self._pud_tables: set[int] = set()
        self._pmd_tables: set[int] = set()
        self._pmds: dict[int, dict | HugePmd] = {}
        self._nr_tables = 0         # page-table pages of this MM (PUD, PMD, PTE, deposited)
        self._min_flt = 0
        self._has_huge_zero = False  # this mm holds a reference on the huge zeropage
        self._thp_disable = None     # prctl(PR_SET_THP_DISABLE): "completely" or "except_advised"
        self._closed = False

    # ================================================================ observables

    @property
    def closed(self):
        return self._closed

    @property
    def vmstat(self):
        return self._m.vmstat()

    @property
    def mthp_stats(self):
        """Per size in kB (16 .. 2048), the stats of hugepages-<size>kB."""
        return self._m.mthp()

    # ---- the memory cgroup (machine-wide: every process of the machine is in it)

    @property
    def memory_max(self):
        """memory.max in bytes, or None (no limit); setting it below memory_current raises
        ValueError and keeps the old value."""
        return self._m.memory_max

    @memory_max.setter
    def memory_max(self, value):
        value = _memory_max_arg(value)
        if value is not None and value < self._m.charged * PAGE_SIZE:
            raise ValueError(f"memory_max {value} is below memory_current {self._m.charged * PAGE_SIZE}")
        self._m.memory_max = value

    @property
    def memory_current(self):
        """memory.current in bytes: anonymous folios and page tables charged."""
        return self._m.charged * PAGE_SIZE

    # ---- the buddy allocator

    def buddyinfo(self):
        """Free blocks of each order 0..10, like /proc/buddyinfo for the one zone."""
        return self._m.buddyinfo()

    def fragment_memory(self, free_fraction=0.5, order=9, movable=False):
        """Hold pages in every wholly free, naturally aligned 2**order-page region of RAM, as
        another tenant's allocations would; returns how many pages are held."""
        self._check_open()
        if isinstance(free_fraction, bool) or not isinstance(free_fraction, numbers.Real):
            raise TypeError(f"free_fraction must be a number, not {type(free_fraction).__name__}")
        if not 0 <= free_fraction <= 1:
            raise ValueError(f"free_fraction must be between 0 and 1, not {free_fraction}")
        if isinstance(order, bool) or not isinstance(order, numbers.Integral):
            raise TypeError(f"order must be an int, not {type(order).__name__}")
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError(f"order must be between 0 and {MAX_PAGE_ORDER}, not {order}")
        if not isinstance(movable, bool):
            raise TypeError(f"movable must be a bool, not {type(movable).__name__}")
        return self._m.fragment(float(free_fraction), int(order), movable)

    def release_fragmentation(self):
        """Free every page fragment_memory holds; returns how many (as the engine does)."""
        self._check_open()
        return self._m.release_fragmentation()

    def contpte_blocks(self, addr, length):
        """64 KiB-aligned virtual ranges inside [addr, addr+length) whose 16 PTEs are present
        and map 16 consecutive frames of one large folio from a 16-aligned frame, with the same
        permission (the write bit, and the user bit a PROT_NONE VMA clears); arm64 folds such
        blocks into contiguous-PTE mappings (PMDs not counted)."""
        self._check_open()
        addr, length = _int_arg(addr, "addr"), _int_arg(length, "length")
        if addr % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError("addr and length must be multiples of 4096")
        if addr + length > TOP:
            raise ValueError("the range must lie below 2**47")
        end = addr + length
        first = _align_up(addr, CONT_PTES * PAGE_SIZE) >> 12
        n = 0
        for pi, entry in self._entries_in(addr, end) if length else ():
            if isinstance(entry, HugePmd):
                continue
            lo = max(first, pi << 9)
            for vpn in range(lo, min(end >> 12, (pi + 1) << 9) - CONT_PTES + 1, CONT_PTES):
                head = entry.get(vpn)
                if head is None or not isinstance(head.page, (Folio, ShmemFolio)) or head.page.nr < CONT_PTES:
                    continue
                folio = head.page
                if (folio.pfn + head.idx) % CONT_PTES:
                    continue
                if all((q := entry.get(vpn + i)) is not None and q.page is folio and q.idx == head.idx + i
                       and q.writable == head.writable for i in range(1, CONT_PTES)) \
                        and len({self._pte_user(v << 12) for v in range(vpn, vpn + CONT_PTES)}) == 1:
                    n += 1
        return n

    def _pte_user(self, addr):
        """x86 _PAGE_USER of a PTE at addr: set unless its VMA is PROT_NONE (PAGE_NONE)."""
        vma = self._vma_at(addr)
        return vma is not None and bool(vma.flags & VM_ACCESS_FLAGS)

    @property
    def khugepaged(self):
        return {"pages_collapsed": self._m.pages_collapsed, "full_scans": self._m.full_scans}

    @property
    def rusage(self):
        return {"min_flt": self._min_flt, "maj_flt": 0}

    @property
    def status(self):
        anon, shmem = self._rss_anon() * 4, self._rss_shmem() * 4
        return {"VmRSS": anon + shmem, "RssAnon": anon, "RssShmem": shmem, "VmPTE": self._nr_tables * 4}

    def _rss_shmem(self):
        """MM_SHMEMPAGES: the shmem pages this process maps (by PTE or PMD)."""
        return self._rss("shmem", "shmem")

    def _rss_anon(self):
        """MM_ANONPAGES: the anonymous pages this process maps (shared ones too)."""
        return self._rss("thp", "anon")

    def _rss(self, pmd_kind, pte_kind):
        """Pages this process maps by PMDs of pmd_kind and PTEs of pte_kind."""
        n = 0
        for entry in self._pmds.values():
            if isinstance(entry, HugePmd):
                n += PTRS if entry.kind == pmd_kind else 0
            else:
                n += sum(1 for pte in entry.values() if pte.kind == pte_kind)
        return n

    def maps(self):
        self._check_open()
        out = []
        for v in self._vmas:
            perms = "".join(c if v.flags & bit else "-"
                            for bit, c in ((VM_READ, "r"), (VM_WRITE, "w"), (VM_EXEC, "x")))
            out.append((v.start, v.end, perms + ("s" if v.flags & (VM_SHARED | VM_MAYSHARE) else "p"), v.flags))
        return out

    def smaps(self, addr):
        """fs/proc/task_mmu.c: smaps_pte_entry, smaps_pmd_entry, smaps_account."""
        self._check_open()
        addr = _int_arg(addr, "addr")
        vma = self._vma_at(addr)
        if vma is None:
            raise ValueError(f"no VMA contains address {addr:#x}")
        acc = dict.fromkeys(("rss", "pss", "pss_dirty", "shared_clean", "shared_dirty", "private_clean",
                             "private_dirty", "referenced", "anonymous", "lazyfree", "ahp", "shmem_pmd"), 0)

        def page_accumulate(size, pss, dirty, private):
            acc["pss"] += pss
            if dirty:
                acc["pss_dirty"] += pss
            acc[("private_" if private else "shared_") + ("dirty" if dirty else "clean")] += size

        def account(folio, first, nr, young, dirty):
            size = nr * PAGE_SIZE
            acc["rss"] += size
            if young:
                acc["referenced"] += size
            if isinstance(folio, ShmemFolio):       # not anonymous; the page cache holds a
                dirty = dirty or folio.dirty        # reference: mapcounts page by page
                for i in range(first, first + nr):
                    mapcount = folio.page_mapcount(i)
                    pss = PAGE_SIZE << PSS_SHIFT
                    if mapcount >= 2:
                        pss //= mapcount
                    page_accumulate(PAGE_SIZE, pss, dirty, mapcount < 2)
                return
            lazyfree = folio.lazyfree
            acc["anonymous"] += size
            if lazyfree and not dirty:
                acc["lazyfree"] += size
            refcount = folio.mapcount if isinstance(folio, Page) else folio.large
            if refcount == 1:
                page_accumulate(size, size << PSS_SHIFT, dirty, True)
                return
            for i in range(first, first + nr):
                mapcount = folio.mapcount if isinstance(folio, Page) else folio.page_mapcount(i)
                pss = PAGE_SIZE << PSS_SHIFT
                if mapcount >= 2:
                    pss //= mapcount
                page_accumulate(PAGE_SIZE, pss, dirty, mapcount < 2)

        for _, entry in self._entries_in(vma.start, vma.end):
            if isinstance(entry, HugePmd):
                if entry.kind == "thp":                 # the huge zeropage never counts (R4)
                    account(entry.folio, 0, PTRS, entry.young, entry.dirty)
                    acc["ahp"] += PMD_SIZE
                elif entry.kind == "shmem":
                    account(entry.folio, 0, PTRS, entry.young, entry.dirty)
                    acc["shmem_pmd"] += PMD_SIZE
                continue
            for vpn in sorted(entry):
                pte = entry[vpn]
                if pte.kind in ("anon", "shmem") and vma.start <= vpn * PAGE_SIZE < vma.end:
                    account(pte.page, pte.idx, 1, pte.young, pte.dirty)
        out = dict.fromkeys(SMAPS_KEYS, 0)
        out.update(Size=(vma.end - vma.start) // 1024, KernelPageSize=4, MMUPageSize=4,
                   Rss=acc["rss"] >> 10, Pss=acc["pss"] >> (PSS_SHIFT + 10),
                   Pss_Dirty=acc["pss_dirty"] >> (PSS_SHIFT + 10),
                   Shared_Clean=acc["shared_clean"] >> 10, Shared_Dirty=acc["shared_dirty"] >> 10,
                   Private_Clean=acc["private_clean"] >> 10, Private_Dirty=acc["private_dirty"] >> 10,
                   Referenced=acc["referenced"] >> 10, Anonymous=acc["anonymous"] >> 10,
                   LazyFree=acc["lazyfree"] >> 10, AnonHugePages=acc["ahp"] >> 10,
                   ShmemPmdMapped=acc["shmem_pmd"] >> 10,
                   THPeligible=int(self._thp_eligible_smaps(vma)),
                   Locked=acc["pss"] >> (PSS_SHIFT + 10) if vma.flags & VM_LOCKED else 0)
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

    def _frames(self, addr, length):
        """For the differential tests: per 4K page of [addr, addr+length) the emulated PFN
        /proc/pid/pagemap shows (0 for no entry; the zeropage is frame 0) and the compound bits
        /proc/kpageflags shows (KPF_THP with KPF_COMPOUND_HEAD or _TAIL for every page of a
        large folio, and of the huge zeropage)."""
        n = length // PAGE_SIZE
        pfns = np.zeros(n, dtype=np.uint64)
        flags = np.zeros(n, dtype=np.uint64)
        thp, head, tail = 1 << 22, 1 << 15, 1 << 16
        for i in range(n):
            va = addr + i * PAGE_SIZE
            entry = self._pmds.get(va >> 21)
            if isinstance(entry, HugePmd):
                idx = (va >> 12) % PTRS
                pfns[i] = (entry.folio.pfn if entry.kind != "hzp" else self._m.huge_zero_pfn) + idx
                flags[i] = thp | (tail if idx else head)
                continue
            pte = entry.get(va >> 12) if entry is not None else None
            if pte is None or pte.kind == "zero":
                continue
            if isinstance(pte.page, (Folio, ShmemFolio)):
                pfns[i] = pte.page.pfn + pte.idx
                if pte.page.nr > 1:
                    flags[i] = thp | (tail if pte.idx else head)
            else:
                pfns[i] = pte.page.frame
        return pfns, flags

    def _page_state(self, addr):
        entry = self._pmds.get(addr >> 21)
        if isinstance(entry, HugePmd):
            return {"thp": PageState.THP, "hzp": PageState.HUGE_ZERO, "shmem": PageState.SHMEM_THP}[entry.kind]
        pte = entry.get(addr >> 12) if entry is not None else None
        if pte is None:
            return PageState.NONE
        if pte.kind == "zero":
            return PageState.ZERO
        if pte.kind == "shmem":
            return PageState.SHMEM
        return PageState.LARGE if isinstance(pte.page, Folio) else PageState.ANON

    # ================================================================ lifetime

    def fork(self):
        """A copy-on-write child on the same machine (kernel/fork.c: dup_mmap; R74-R78)."""
        self._check_open()
        child = ReferenceMM.__new__(ReferenceMM)
        child._init_process(self.config, self._m)
        child._thp_disable = self._thp_disable
        if self in self._m.kh_list and not self._closed:       # __khugepaged_fork
            self._m.khugepaged_register(child)
        for vma in self._vmas:
            if vma.flags & VM_DONTCOPY:                         # MADV_DONTFORK: absent
                continue
            wipe = bool(vma.flags & VM_WIPEONFORK)              # MADV_WIPEONFORK: empty
            # anon_vma_fork: each copied VMA gets an anon_vma of its own
            anon_vma = None if wipe or vma.anon_vma is None else self._m.new_anon_vma()
            child._vmas.append(Vma(vma.start, vma.end, vma.flags & ~VM_LOCKED, anon_vma, vma.pgoff, vma.file))
            if vma.anon_vma is not None and not wipe:           # vma_needs_copy (R74)
                self._copy_page_range(child, vma)
        return child

    def _copy_page_range(self, child, vma):
        """copy_page_range: upper tables where this process has them, a PTE table wherever
        this process has one (even empty), entries write-protected, the child's old."""
        start, end = vma.start, vma.end
        for g in sorted(self._pud_tables):
            if not (g + 1) * PGD_SPAN > start or not g * PGD_SPAN < end:
                continue
            if g not in child._pud_tables:
                child._pud_tables.add(g)
                child._table_alloc()
            for u in sorted(self._pmd_tables):
                if u >> 9 != g or not ((u + 1) * PUD_SPAN > start and u * PUD_SPAN < end):
                    continue
                if u not in child._pmd_tables:
                    child._pmd_tables.add(u)
                    child._table_alloc()
                for pi, entry in self._entries_in(max(start, u * PUD_SPAN), min(end, (u + 1) * PUD_SPAN)):
                    if isinstance(entry, HugePmd):
                        self._copy_huge_pmd(child, pi, entry)
                    else:
                        self._copy_pte_range(child, pi, entry, max(start, pi << 21), min(end, (pi + 1) << 21))

    def _copy_huge_pmd(self, child, pi, entry):
        child._table_alloc()                                    # the child's own deposit
        if entry.kind == "hzp":
            child._mm_get_huge_zero_folio()
            child._pmds[pi] = HugePmd("hzp", None, False, False, False, False)
            return
        folio = entry.folio
        entry.writable = entry.exclusive = False
        child._pmds[pi] = HugePmd("thp", folio, False, entry.dirty, False, False)
        folio.entire += 1
        folio.mm_add(child._id, 1)

    def _copy_pte_range(self, child, pi, table, start, end):
        ctable = child._pte_alloc(pi)
        lo, hi = start >> 12, end >> 12
        for vpn in sorted(v for v in table if lo <= v < hi):
            pte = table[vpn]
            if pte.kind == "zero":
                ctable[vpn] = Pte("zero", None, 0, False, pte.dirty, False, False)
                continue
            pte.writable = pte.exclusive = False
            ctable[vpn] = Pte("anon", pte.page, pte.idx, False, pte.dirty, False, False)
            if isinstance(pte.page, Folio):
                pte.page.mapcount[pte.idx] += 1
                pte.page.mm_add(child._id, 1)
            else:
                pte.page.mapcount += 1

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
        """The process exits: khugepaged lets go of it, every mapping goes, every table is
        freed (exit_mmap), and its huge-zeropage reference is dropped."""
        if self._closed:
            return
        self._m.khugepaged_exit(self)
        for vma in self._vmas:
            self._zap_range(vma, vma.start, vma.end)
        self._vmas = []
        self._free_pgtables([(0, TOP)], 0, TOP)
        self._has_huge_zero = False
        self._closed = True
        self._m.mms.remove(self)
        self._m.release_files()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_open(self):
        if self._closed:
            raise ClosedError("this MM was closed (its process exited)")

    def drop_caches(self, mode=2):
        """echo mode > /proc/sys/vm/drop_caches: 2 and 3 run the slab shrinkers (the deferred
        split queue, then the huge zeropage); 1 drops the page cache (none here)."""
        self._check_open()
        if isinstance(mode, bool) or not isinstance(mode, (int, np.integer)):
            raise TypeError(f"mode must be an int, not {type(mode).__name__}")
        if mode not in (1, 2, 3):
            raise ValueError(f"mode must be 1, 2 or 3, not {mode}")
        if mode & 2:
            self._m.deferred_split_scan()
            self._m.shrink_huge_zero()

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
        upper = Vma(at, vma.end, vma.flags, vma.anon_vma, vma.pgoff + ((at - vma.start) >> 12), vma.file)
        vma.end = at
        self._insert_vma(upper)
        return upper

    def _split_pmd_at(self, at):
        """vma_adjust_trans_huge: a PMD mapping across a new boundary is split."""
        if at % PMD_SIZE and isinstance(self._pmds.get(at >> 21), HugePmd):
            self._split_huge_pmd(at >> 21)

    @staticmethod
    def _mergeable(lo, hi):
        """lo immediately below hi: identical flags, compatible anon_vmas, continuous vm_pgoff."""
        return (lo.end == hi.start and lo.flags == hi.flags and lo.file is hi.file
                and (lo.anon_vma is None or hi.anon_vma is None or lo.anon_vma == hi.anon_vma)
                and lo.pgoff + ((lo.end - lo.start) >> 12) == hi.pgoff)

    def _merge_around(self, vma):
        """Merge vma with the previous, then the next adjacent VMA when compatible."""
        prev = self._prev_vma(vma.start)
        if prev is not None and self._mergeable(prev, vma):
            prev.end = vma.end
            prev.anon_vma = prev.anon_vma or vma.anon_vma
            self._vmas.remove(vma)
            vma = prev
        nxt = self._find_vma(vma.end)
        if nxt is not None and self._mergeable(vma, nxt):
            vma.end = nxt.end
            vma.anon_vma = vma.anon_vma or nxt.anon_vma
            self._vmas.remove(nxt)
        return vma

    def _vma_modify(self, vma, start, end, flags, syscall, err):
        """vma_modify_flags: give [start, end) of vma the new flags, merging or splitting."""
        prev = self._prev_vma(vma.start)
        nxt = self._find_vma(vma.end)
        piece = Vma(start, end, flags, vma.anon_vma, vma.pgoff + ((start - vma.start) >> 12), vma.file)
        merge_left = start == vma.start and prev is not None and self._mergeable(prev, piece)
        merge_right = end == vma.end and nxt is not None and self._mergeable(piece, nxt)
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
        """Share a neighbour's anon_vma if the two differ only in VM_READ/WRITE/EXEC and their
        vm_pgoff is continuous (anon_vma_compatible; next first)."""
        nxt = self._find_vma(vma.end)
        prev = self._prev_vma(vma.start)
        for lo, hi, other in ((vma, nxt, nxt), (prev, vma, prev)):
            if other is None or lo.end != hi.start or other.anon_vma is None:
                continue
            if not (lo.flags ^ hi.flags) & ~VM_ACCESS_FLAGS and lo.pgoff + ((lo.end - lo.start) >> 12) == hi.pgoff:
                return other.anon_vma
        return None

    # ================================================================ THP policy

    def _thp_vetoed(self, flags):
        """R20 (vma_thp_disabled): VM_NOHUGEPAGE, or PR_SET_THP_DISABLE (completely, or except
        in VM_HUGEPAGE VMAs)."""
        if flags & VM_NOHUGEPAGE or self._thp_disable == "completely":
            return True
        return self._thp_disable == "except_advised" and not flags & VM_HUGEPAGE

    def _order_enabled(self, order, flags):
        """R19: hugepages-<size>kB/enabled for one order (thp_vma_allowable_orders' mask)."""
        mode = self.config.hugepages[4 << order]
        hp = bool(flags & VM_HUGEPAGE)
        if mode == "inherit":
            return self.config.thp == "always" or (hp and self.config.thp == "madvise")
        return mode == "always" or (mode == "madvise" and hp)

    def _allowed_orders(self, flags, orders):
        """The orders among `orders` enabled for VMA flags and not vetoed, highest first."""
        if self._thp_vetoed(flags):
            return []
        return [o for o in sorted(orders, reverse=True) if self._order_enabled(o, flags)]

    def _thp_enabled_flags(self, flags):
        """R19/R20: order 9 enabled for VMA flags by the sysfs knobs, no VM_NOHUGEPAGE or prctl
        veto (PR_SET_THP_DISABLE: none at all, or only in VM_HUGEPAGE VMAs)."""
        return bool(self._allowed_orders(flags, (PMD_ORDER,)))

    def _thp_enabled(self, vma):
        return self._thp_enabled_flags(vma.flags)

    @staticmethod
    def _has_aligned_block(vma, order=PMD_ORDER):
        """thp_vma_suitable_order at the VMA's end: an aligned 2**order block inside."""
        size = PAGE_SIZE << order
        last = (vma.end - size) & ~(size - 1)   # the last aligned block before the end
        return vma.end >= size and vma.start <= last

    def _thp_eligible_smaps(self, vma):
        """THPeligible (TVA_SMAPS): some order 2..9 allowed with an aligned block inside (R21).
        A shared mapping: shmem_enabled's say (within_size when i_size covers the 2 MiB of the
        VMA's first file page, else as advise: checked on the host), no prctl veto (the
        except-advised one too, without MADV_HUGEPAGE: vma_thp_disabled), no VM_NOHUGEPAGE,
        file offsets aligned like the addresses and an aligned 2 MiB inside."""
        if vma.file is not None:
            mode = self.config.shmem_enabled
            if mode == "within_size":
                mode = "always" if vma.file.size >= _align_up(vma.pgoff + 1, PTRS) else "advise"
            if self._thp_disable == "completely" or (self._thp_disable == "except_advised"
                                                     and not vma.flags & VM_HUGEPAGE):
                return False
            if mode == "never" or vma.flags & VM_NOHUGEPAGE or (mode == "advise" and not vma.flags & VM_HUGEPAGE) \
                    or ((vma.start >> 12) - vma.pgoff) % PTRS:
                return False
            return _align_up(vma.start, PMD_SIZE) + PMD_SIZE <= vma.end
        return any(self._has_aligned_block(vma, o)
                   for o in self._allowed_orders(vma.flags, SIZE_ORDERS.values()))

    def _defrag_direct(self, vma):
        """vma_thp_gfp_mask: may a fault's THP/mTHP allocation compact directly (R23)?"""
        defrag = self.config.defrag
        if defrag == "always":
            return True
        if defrag in ("madvise", "defer+madvise"):
            return bool(vma.flags & VM_HUGEPAGE)
        return False

    def _khugepaged_allowed(self, vma, flags):
        """thp_vma_allowable_order(TVA_KHUGEPAGED): the sysfs mode and vetoes, an aligned block
        inside the VMA, and an anon_vma (R20.4)."""
        return self._thp_enabled_flags(flags) and self._has_aligned_block(vma) and vma.anon_vma is not None

    def _file_collapse_allowed(self, vma):
        """thp_vma_allowable_order(TVA_FORCED_COLLAPSE) for a shared mapping: no VM_NOHUGEPAGE,
        no complete prctl veto, an aligned block inside whose file offsets are aligned too."""
        return (not vma.flags & VM_NOHUGEPAGE and self._thp_disable != "completely"
                and self._has_aligned_block(vma) and ((vma.start >> 12) - vma.pgoff) % PTRS == 0)

    def _collapse_allowed(self, vma):
        """thp_vma_allowable_order(TVA_FORCED_COLLAPSE): sysfs ignored; VM_NOHUGEPAGE and a
        complete prctl veto; an aligned block inside; an anon_vma."""
        return (not vma.flags & VM_NOHUGEPAGE and self._thp_disable != "completely"
                and self._has_aligned_block(vma) and vma.anon_vma is not None)

    def _khugepaged_enter(self, vma, flags):
        """khugepaged_enter_vma (R18)."""
        if self._m.khugepaged_enabled() and self._khugepaged_allowed(vma, flags):
            self._m.khugepaged_register(self)

    # ================================================================ page tables

    def _table_alloc(self):
        """A page-table page: charged to the memory cgroup, whatever memory_max says (the
        design notes: a page-table charge never fails)."""
        self._m.charged += 1
        self._nr_tables += 1

    def _table_free(self, n=1):
        self._nr_tables -= n
        self._m.uncharge(n)

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
        except _Bus:
            raise BusError(addr, None, op) from None
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
            except _Bus:
                raise BusError(addr, i, op) from None
            except _Segv:
                raise SegmentationFault(addr, i, op) from None
            except _Oom:
                raise OutOfMemory(addr, i) from None
        return out

    def _access_one(self, addr, op):
        """One load/store/atomic: the faults it takes (0, 1 or 2). A store or an atomic that
        completes marks its page written."""
        vma = self._vma_at(addr)
        if vma is None or not vma.flags & VM_ACCESS_FLAGS:
            raise _Segv
        if op == READ:
            return self._touch(vma, addr, write=False)
        if op == WRITE or self.config.arch == "x86_64":        # x86: atomics are writes (R25)
            faults = self._touch(vma, addr, write=True)
        elif self.config.atomic_write_fault and vma.flags & VM_READ and vma.flags & VM_WRITE:
            faults = self._touch(vma, addr, write=True)         # arm64 (R26, R83)
        else:
            faults = 0
            if self._page_state(addr) == PageState.NONE:        # first reported as a read
                faults += self._touch(vma, addr, write=False)
            faults += self._touch(vma, addr, write=True)
        self._mark_written(addr)
        return faults

    def _mark_written(self, addr):
        entry = self._pmds.get(addr >> 21)
        if isinstance(entry, HugePmd):
            if entry.kind == "thp":
                entry.folio.written[(addr >> 12) % PTRS] = True
            return
        pte = entry.get(addr >> 12) if entry is not None else None
        if pte is not None and pte.kind == "anon":
            if isinstance(pte.page, Folio):
                pte.page.written[pte.idx] = True
            else:
                pte.page.written = True

    def _touch(self, vma, addr, write):
        if write and not vma.flags & VM_WRITE:
            raise _Segv
        if self._follow(addr, write):        # present with enough permission: no fault
            return 0
        self._fault(vma, addr, write)
        return 1

    def _follow(self, addr, write):
        """The bytes a present, sufficient entry maps from addr on (0 if it must fault).
        Like the MMU (and GUP's FOLL_TOUCH), an access marks the entry young, a write dirty."""
        entry = self._pmds.get(addr >> 21)
        if isinstance(entry, HugePmd):
            found, size = entry, PMD_SIZE - addr % PMD_SIZE
        else:
            found, size = (entry.get(addr >> 12) if entry is not None else None), PAGE_SIZE
        if found is None or (write and not found.writable):
            return 0
        found.dirty |= write
        found.young = True
        return size

    # ================================================================ the fault path

    def _fault(self, vma, addr, write):
        """handle_mm_fault + mm_account_fault (R1): errors count in pgfault only."""
        self._m.events["pgfault"] += 1
        self._handle_mm_fault(vma, addr, write)
        self._min_flt += 1

    def _handle_mm_fault(self, vma, addr, write):
        """__handle_mm_fault: the PMD-level decision tree (R27, R28)."""
        if vma.file is not None:
            return self._shmem_handle_fault(vma, addr, write)
        self._alloc_upper_tables(addr)
        entry = self._pmds.get(addr >> 21)
        if entry is None and self._thp_enabled(vma):
            if self._do_huge_pmd_anonymous_page(vma, addr, write) == DONE:
                return
        elif isinstance(entry, HugePmd):
            if not (write and not entry.writable):
                entry.dirty |= write                    # huge_pmd_set_accessed
                entry.young = True
                return
            if self._do_huge_pmd_wp_page(vma, addr, entry) == DONE:
                return
        self._handle_pte_fault(vma, addr, write)

    # ================================================================ shared memory faults

    def _shmem_handle_fault(self, vma, addr, write):
        """__handle_mm_fault in a shared mapping: shmem has no huge_fault, so a none PMD goes to
        the PTE level; a PMD mapping is marked accessed (or, written while read-only, cleared:
        wp_huge_pmd splits a file PMD); a none PTE is do_fault's (do_read_fault with fault-around,
        or do_shared_fault)."""
        self._alloc_upper_tables(addr)
        pi = addr >> 21
        entry = self._pmds.get(pi)
        if isinstance(entry, HugePmd):
            if not (write and not entry.writable):
                entry.dirty |= write
                entry.young = True
                return
            self._split_huge_pmd(pi)
            entry = None
        pte = entry.get(addr >> 12) if entry is not None else None
        if pte is not None:
            if write and not pte.writable:      # wp_page_shared: reuse, dirty the folio
                pte.writable = bool(vma.flags & VM_WRITE)
                pte.page.dirty = True
            pte.dirty |= write
            pte.young = True
            return
        self._prealloc = False          # do_fault_around / __do_fault: pte_alloc_one if none
        try:
            if not write and self._shmem_fault_around(vma, addr):
                return
            self._shmem_prealloc(addr >> 21)
            folio = self._shmem_get_folio(vma, addr)
            self._shmem_finish_fault(vma, addr, folio, write)
            if write:                   # fault_dirty_shared_page
                folio.dirty = True
        finally:
            if self._prealloc:          # the preallocated table was not needed: freed
                self._m.uncharge(1)
            self._prealloc = False

    def _shmem_prealloc(self, pi):
        """pte_alloc_one before the page cache is consulted, when the PMD is none: charged now,
        counted as a page table once installed."""
        if pi not in self._pmds and not self._prealloc:
            self._m.charged += 1        # a page-table charge never fails
            self._prealloc = True

    def _shmem_pte_install(self, pi):
        """pmd_install of the preallocated table (or pte_alloc)."""
        if pi in self._pmds:
            return self._pmds[pi]
        if self._prealloc:
            self._prealloc = False
            self._pmds[pi] = {}
            self._nr_tables += 1
            return self._pmds[pi]
        return self._pte_alloc(pi)

    @staticmethod
    def _linear_index(vma, addr):
        return vma.pgoff + ((addr - vma.start) >> 12)

    def _shmem_fault_around(self, vma, addr):
        """do_fault_around + filemap_map_pages: map what the page cache holds, uptodate, in the
        16-PTE window (aligned in the PTE table, clamped to the VMA and the table) up to i_size;
        the first such folio, if PMD-sized, by a PMD when the PMD is none and may map one; a
        large folio inside the VMA and one PTE table whole. True if addr got mapped."""
        file = vma.file
        pi = addr >> 21
        pte_off = (addr >> 12) % PTRS
        vma_off = (addr - vma.start) >> 12
        index = self._linear_index(vma, addr)
        from_pte = max(pte_off & ~15, pte_off - min(pte_off, vma_off))
        to_pte = min(from_pte + 16, PTRS, pte_off + ((vma.end - vma.start) >> 12) - vma_off) - 1
        start_pg, end_pg = index + from_pte - pte_off, index + to_pte - pte_off
        self._shmem_prealloc(pi)

        def uptodate_folios(end):
            seen, out = set(), []
            for i in range(start_pg, end + 1):
                f = file.cache.get(i)
                if f is None or id(f) in seen:
                    continue
                seen.add(id(f))
                xa_index = max(start_pg, f.index)
                if f.uptodate and xa_index < file.size:     # next_uptodate_folio
                    out.append((xa_index, f))
            return out

        found = uptodate_folios(end_pg)
        if not found:
            return False
        end_pg = min(end_pg, file.size - 1)
        first = found[0][1]
        if pi not in self._pmds and first.order == PMD_ORDER and self._shmem_set_pmd(vma, addr, first, False):
            return True                                   # filemap_map_pmd
        table = self._shmem_pte_install(pi)
        mapped = False
        for xa_index, folio in [(x, f) for x, f in found if x <= end_pg]:
            nr = min(folio.index + folio.nr - 1, end_pg) - xa_index + 1
            va = vma.start + ((xa_index - vma.pgoff) << 12)
            start = xa_index - folio.index
            if folio.nr > 1:                              # filemap_map_folio_range
                va0 = va - (start << 12)
                if self._folio_within_vma(folio, vma) and va0 >> 21 == (va0 + (folio.nr << 12) - 1) >> 21:
                    va, start, nr = va0, 0, folio.nr
            for i in range(nr):
                v = (va >> 12) + i
                if v not in table:
                    table[v] = Pte("shmem", folio, start + i, bool(vma.flags & VM_WRITE), False, True, False)
                    folio.mapcount[start + i] += 1
                    mapped |= v == addr >> 12
        return mapped

    @staticmethod
    def _folio_within_vma(folio, vma):
        npages = (vma.end - vma.start) >> 12
        if not vma.pgoff <= folio.index < vma.pgoff + npages:
            return False
        return folio.index + folio.nr <= vma.pgoff + npages

    def _shmem_huge_allowed(self, vma, index):
        """shmem_allowable_huge_orders for a fault: order 9 or not, by shmem_enabled (always;
        within_size where i_size covers the aligned 2 MiB of index; advise, and within_size
        otherwise, in VM_HUGEPAGE VMAs), vetoed by VM_NOHUGEPAGE and prctl."""
        mode = self.config.shmem_enabled
        if mode == "never" or self._thp_vetoed(vma.flags):
            return False
        if mode == "always":
            return True
        if mode == "within_size" and vma.file.size >= _align_up(index + 1, PTRS):
            return True
        return mode in ("within_size", "advise") and bool(vma.flags & VM_HUGEPAGE)

    @staticmethod
    def _shmem_pmd_suitable(vma, addr):
        """thp_vma_suitable_order for a file VMA: the aligned 2 MiB inside the VMA and its file
        offsets aligned like its addresses."""
        haddr = addr & ~(PMD_SIZE - 1)
        return ((vma.start >> 12) - vma.pgoff) % PTRS == 0 and vma.start <= haddr and haddr + PMD_SIZE <= vma.end

    def _shmem_get_folio(self, vma, addr):
        """shmem_fault -> shmem_get_folio_gfp(SGP_CACHE): SIGBUS beyond i_size; the cached folio
        (a fallocated one is cleared and made uptodate); else a new one: a THP where allowed, the
        VMA suitable and all 512 slots empty (allocation may compact as vma_thp_gfp_mask says;
        failure counts thp_file_fallback, a refused charge _charge too), else a 4K page, whose
        allocation or charge failing is an OOM."""
        file, m = vma.file, self._m
        index = self._linear_index(vma, addr)
        if index >= file.size:
            raise _Bus
        folio = file.cache.get(index)
        if folio is not None:
            folio.uptodate = True
            return folio
        base = index & ~(PTRS - 1)
        if self._shmem_huge_allowed(vma, index) and self._shmem_pmd_suitable(vma, addr) \
                and not any(i in file.cache for i in range(base, base + PTRS)):
            folio = m.shmem_alloc_thp(file, base, self._defrag_direct(vma))
            if folio is not None:
                return folio
        folio = m.shmem_alloc_page(file, index)
        if folio is None:
            raise _Oom
        return folio

    def _shmem_set_pmd(self, vma, addr, folio, write):
        """do_set_pmd: map a PMD-sized folio by the (none) PMD unless THPs are vetoed as for a
        forced collapse (VM_NOHUGEPAGE, or PR_SET_THP_DISABLE without the except-advised flag:
        "as we already have a THP") or the VMA cannot hold it; no deposited table;
        thp_file_mapped."""
        if vma.flags & VM_NOHUGEPAGE or self._thp_disable == "completely" \
                or not self._shmem_pmd_suitable(vma, addr) or folio.order != PMD_ORDER:
            return False
        self._pmds[addr >> 21] = HugePmd("shmem", folio, bool(vma.flags & VM_WRITE), write, True, False)
        folio.entire += 1
        self._m.events["thp_file_mapped"] += 1
        return True

    def _shmem_finish_fault(self, vma, addr, folio, write):
        """finish_fault: a PMD-sized folio by a PMD when the PMD is none; else PTEs: the whole
        folio if it lies in the VMA and the PTE table and its PTEs are all none, else the page."""
        pi = addr >> 21
        if pi not in self._pmds and self._shmem_set_pmd(vma, addr, folio, write):
            return
        table = self._shmem_pte_install(pi)
        idx = self._linear_index(vma, addr) - folio.index
        nr, first = 1, addr >> 12
        if folio.nr > 1:
            vma_off = (addr - vma.start) >> 12
            pte_off = (addr >> 12) % PTRS
            if not (vma_off < idx or vma_off + folio.nr - idx > (vma.end - vma.start) >> 12
                    or pte_off < idx or pte_off + folio.nr - idx > PTRS):
                if all(v not in table for v in range(first - idx, first - idx + folio.nr)):
                    nr, first = folio.nr, first - idx
        if nr == 1:
            if first in table:
                return
            idx_range = [idx]
        else:
            idx_range = range(folio.nr)
        for k, i in enumerate(idx_range):
            table[first + k] = Pte("shmem", folio, i, bool(vma.flags & VM_WRITE), write, True, False)
            folio.mapcount[i] += 1

    def _do_huge_pmd_anonymous_page(self, vma, addr, write):
        """R33, R34, R38 (do_huge_pmd_anonymous_page): the deposit of a huge zeropage mapping
        is allocated before the huge zeropage; a THP's after the THP."""
        haddr = addr & ~(PMD_SIZE - 1)
        if haddr < vma.start or haddr + PMD_SIZE > vma.end:    # thp_vma_suitable_order (R21)
            return FALLBACK
        self._anon_vma_prepare(vma)
        self._khugepaged_enter(vma, vma.flags)
        if not write and self.config.zero_page and self.config.use_zero_page:
            self._table_alloc()                                 # the deposit (R11)
            if not self._mm_get_huge_zero_folio():
                self._table_free()
                self._m.events["thp_fault_fallback"] += 1
                return FALLBACK
            self._pmds[addr >> 21] = HugePmd("hzp", None, False, False, True, False)
            return DONE
        pfn = self._vma_alloc_anon_folio_pmd(vma)
        if pfn is None:
            return FALLBACK
        self._table_alloc()                                     # the deposit (R11)
        self._map_anon_folio_pmd(vma, addr >> 21, pfn)
        return DONE

    def _mm_get_huge_zero_folio(self):
        """This mm's reference on the huge zeropage, allocating it on first need (R56); its
        allocation may compact (GFP_TRANSHUGE) and is not charged."""
        if not self._has_huge_zero:
            if self._m.huge_zero_pfn is None:
                pfn = self._m.alloc_large(PMD_ORDER, compact=True)
                if pfn is None:
                    self._m.events["thp_zero_page_alloc_failed"] += 1
                    return False
                self._m.kind[pfn:pfn + PTRS] = K_HZP
                self._m.huge_zero_pfn = pfn
                self._m.events["thp_zero_page_alloc"] += 1
            self._has_huge_zero = True
        return True

    def _vma_alloc_anon_folio_pmd(self, vma):
        """vma_alloc_anon_folio_pmd: the frames of a THP, allocated and charged, or None after
        counting the fallback (R38)."""
        m = self._m
        pfn = m.alloc_large(PMD_ORDER, self._defrag_direct(vma))
        if pfn is not None and not m.try_charge(PTRS):
            m.buddy_free(pfn, PMD_ORDER)
            m.events["thp_fault_fallback_charge"] += 1
            m.mthp_events[PMD_ORDER]["anon_fault_fallback_charge"] += 1
            pfn = None
        if pfn is None:
            m.events["thp_fault_fallback"] += 1
            m.mthp_events[PMD_ORDER]["anon_fault_fallback"] += 1
        return pfn

    def _map_anon_folio_pmd(self, vma, pi, pfn):
        """A new THP by PMD, queued for deferred split uncounted (R55)."""
        folio = self._m.new_folio(pfn, PMD_ORDER, self, pmd_mapped=True)
        self._pmds[pi] = HugePmd("thp", folio, bool(vma.flags & VM_WRITE), True, True, True)
        self._m.queue(folio)
        self._m.events["thp_fault_alloc"] += 1
        self._m.mthp_events[PMD_ORDER]["anon_fault_alloc"] += 1

    def _do_huge_pmd_wp_page(self, vma, addr, entry):
        """R41-R44: a write to a read-only PMD mapping."""
        if entry.kind == "hzp":
            if self.config.huge_zero_write == "thp" and self._do_huge_zero_wp_pmd(vma, addr) == DONE:
                return DONE
            self._split_huge_pmd(addr >> 21)        # R42 / R43, then the PTE level
            return FALLBACK
        if entry.exclusive or entry.folio.large == 1:   # R44: reuse
            entry.writable = entry.dirty = entry.young = entry.exclusive = True
            return DONE
        self._split_huge_pmd(addr >> 21)            # shared: split this process's PMD, copy 4K
        return FALLBACK

    def _do_huge_zero_wp_pmd(self, vma, addr):
        """R41 (6.13+): replace the huge zeropage by a new THP; the deposit is kept; no
        eligibility re-check."""
        pfn = self._vma_alloc_anon_folio_pmd(vma)
        if pfn is None:
            return FALLBACK
        self._map_anon_folio_pmd(vma, addr >> 21, pfn)
        return DONE

    def _split_huge_pmd(self, pi):
        """R47, R48: the deposit becomes the PTE table."""
        entry = self._pmds[pi]
        self._m.events["thp_split_pmd"] += 1
        base = pi << 9
        if entry.kind == "shmem":       # a file PMD is split by clearing it (no deposited table)
            del self._pmds[pi]
            folio = entry.folio
            folio.dirty |= entry.dirty
            folio.entire -= 1
            return
        if entry.kind == "hzp":
            self._pmds[pi] = {vpn: Pte("zero", None, 0, False, False, entry.young, False)
                              for vpn in range(base, base + PTRS)}
            return
        folio = entry.folio
        self._pmds[pi] = {base + i: Pte("anon", folio, i, entry.writable, entry.dirty, entry.young,
                                        entry.exclusive) for i in range(PTRS)}
        for i in range(PTRS):
            folio.mapcount[i] += 1
        folio.mm_add(self._id, PTRS)
        folio.entire -= 1
        folio.mm_sub(self._id, 1)
        self._m.after_rmap_removal(folio)

    def _handle_pte_fault(self, vma, addr, write):
        """R29."""
        table = self._pmds.get(addr >> 21)
        pte = table.get(addr >> 12) if table is not None else None
        if pte is None:
            return self._do_anonymous_page(vma, addr, write)
        if write and not pte.writable:
            return self._do_wp_page(vma, addr, pte)
        pte.dirty |= write                          # spurious: already fixed
        pte.young = True

    def _do_anonymous_page(self, vma, addr, write):
        """R30, R35, R36: a none PTE: the zeropage for a read, else a new folio (an mTHP of the
        highest order that can be had, or a 4K page) mapped writable and dirty."""
        table = self._pte_alloc(addr >> 21)
        if not write and self.config.zero_page:
            table[addr >> 12] = _zero_pte()
            return
        self._anon_vma_prepare(vma)
        order, pfn = self._alloc_anon_folio(vma, addr, table)
        writable = bool(vma.flags & VM_WRITE)
        if order == 0:
            table[addr >> 12] = Pte("anon", self._m.new_page(pfn), 0, writable, writable, True, True)
            return
        folio = self._m.new_folio(pfn, order, self, pmd_mapped=False)
        start = (addr >> 12) & ~(folio.nr - 1)
        for i in range(folio.nr):
            table[start + i] = Pte("anon", folio, i, writable, writable, True, True)
        self._m.mthp_events[order]["anon_fault_alloc"] += 1

    def _alloc_anon_folio(self, vma, addr, table):
        """alloc_anon_folio: (order, first frame), allocated and charged. The mTHP orders
        enabled for the VMA whose aligned block lies inside it; from the highest whose PTEs are
        all none (a zeropage PTE is not none) down, each tried in turn (allocation failure:
        anon_fault_fallback; charge refused: anon_fault_fallback_charge too); then order 0,
        whose allocation failure or refused charge is an OOM."""
        m = self._m
        orders = [o for o in self._allowed_orders(vma.flags, MTHP_ORDERS)
                  if self._block_inside(vma, addr, o)]
        vpn = addr >> 12
        while orders and any(v in table for v in range(vpn & ~((1 << orders[0]) - 1),
                                                       (vpn | ((1 << orders[0]) - 1)) + 1)):
            orders.pop(0)                   # the lower orders' blocks lie inside: all none
        for order in orders:
            pfn = m.alloc_large(order, self._defrag_direct(vma))
            if pfn is not None:
                if m.try_charge(1 << order):
                    return order, pfn
                m.buddy_free(pfn, order)
                m.mthp_events[order]["anon_fault_fallback_charge"] += 1
            m.mthp_events[order]["anon_fault_fallback"] += 1
        return 0, self._alloc_charged_page()

    @staticmethod
    def _block_inside(vma, addr, order):
        """thp_vma_suitable_order: the aligned 2**order block of addr lies inside the VMA."""
        size = PAGE_SIZE << order
        start = addr & ~(size - 1)
        return start >= vma.start and start + size <= vma.end

    def _do_wp_page(self, vma, addr, pte):
        """R39, R40: a write to a read-only PTE: reuse or copy."""
        if pte.kind == "zero":
            return self._wp_page_copy(vma, addr, pte)
        page = pte.page
        if pte.exclusive:
            reuse = True
        elif isinstance(page, Page):
            reuse = page.mapcount == 1                  # wp_can_reuse_anon_folio: refcount 1
        else:                                           # a PTE-mapped large folio (6.15+)
            reuse = self.config.reuse_large_folios and page.large > 1 and not page.shared
        if reuse:
            pte.writable = pte.dirty = pte.young = pte.exclusive = True
            return
        self._wp_page_copy(vma, addr, pte)

    def _wp_page_copy(self, vma, addr, old):
        """A new 4K page: zeroed for the zeropage, else a copy (the written mark with it)."""
        self._anon_vma_prepare(vma)
        frame = self._alloc_charged_page()
        written = False
        if old.kind == "anon":
            written = old.page.written[old.idx] if isinstance(old.page, Folio) else old.page.written
        self._pmds[addr >> 21][addr >> 12] = Pte("anon", self._m.new_page(frame, written), 0,
                                                 True, True, True, True)
        if old.kind == "anon":
            self._remove_rmap_ptes(old.page, old.idx, 1)

    def _alloc_charged_page(self):
        """folio_prealloc: a 4K frame, charged; failing either is an OOM."""
        m = self._m
        frame = m.alloc_page()
        if frame is None:
            raise _Oom
        if not m.try_charge(1):                     # the memory cgroup refused it
            m.buddy_free(frame, 0)
            raise _Oom
        return frame

    # ================================================================ rmap

    def _remove_rmap_ptes(self, page, idx, nr):
        """folio_remove_rmap_ptes: nr PTE mappings of consecutive subpages (or one order-0
        page) went."""
        if isinstance(page, Page):
            self._m.put_page(page)
            return
        for i in range(idx, idx + nr):
            page.mapcount[i] -= 1
        page.mm_sub(self._id, nr)
        self._m.after_rmap_removal(page)

    @staticmethod
    def _batch_len(table, vpn, hi):
        """folio_pte_batch: how many PTEs from vpn (below hi) map consecutive subpages of the
        large folio that vpn maps (1 for anything else)."""
        pte = table[vpn]
        n = 1
        if isinstance(pte.page, (Folio, ShmemFolio)):
            while vpn + n < hi:
                q = table.get(vpn + n)
                if q is None or q.page is not pte.page or q.idx != pte.idx + n:
                    break
                n += 1
        return n

    def _batches(self, table, lo, hi):
        """The entries of table in [lo, hi) as (vpn, pte, nr) batches (_batch_len)."""
        vpns = sorted(v for v in table if lo <= v < hi)
        out, i = [], 0
        while i < len(vpns):
            nr = self._batch_len(table, vpns[i], hi)
            out.append((vpns[i], table[vpns[i]], nr))
            i += nr
        return out

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
                entry = self._pmds.get(pi)
                if entry is None:                   # a shmem PMD: cleared
                    continue
            self._zap_ptes(entry, max(start, pstart) >> 12, min(end, pend) >> 12)
            if reclaim_pt and whole and not entry:
                del self._pmds[pi]
                self._table_free()

    def _zap_ptes(self, table, lo, hi):
        for vpn, pte, nr in self._batches(table, lo, hi):
            for v in range(vpn, vpn + nr):
                if pte.kind == "shmem":             # zap_present_folio_ptes: a dirty PTE
                    q = table[v]                    # dirties the file folio
                    q.page.dirty |= q.dirty
                    q.page.mapcount[q.idx] -= 1
                del table[v]
            if pte.kind == "anon":
                self._remove_rmap_ptes(pte.page, pte.idx, nr)

    def _zap_huge_pmd(self, pi, entry):
        del self._pmds[pi]
        if entry.kind == "shmem":                   # no deposit; the page cache keeps the folio
            entry.folio.entire -= 1                 # (zap_huge_pmd: a dirty PMD does not dirty it)
            return
        self._table_free()                          # the deposit
        if entry.kind == "thp":
            folio = entry.folio
            folio.entire -= 1
            folio.mm_sub(self._id, 1)
            self._m.after_rmap_removal(folio)

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

    def _unmap_file_range(self, file, first, last):
        """unmap_mapping_range for file pages [first, last): zap them in every VMA of this
        process that maps them (a PMD the range cuts is cleared; no table is freed)."""
        for vma in list(self._vmas):
            if vma.file is not file:
                continue
            lo = max(first, vma.pgoff)
            hi = min(last, vma.pgoff + ((vma.end - vma.start) >> 12))
            if lo < hi:
                self._zap_range(vma, vma.start + ((lo - vma.pgoff) << 12), vma.start + ((hi - vma.pgoff) << 12))

    def _do_munmap(self, start, end, syscall):
        """do_vmi_munmap on an aligned [start, end): split, zap, remove, free tables (R66)."""
        vmas = [v for v in self._vmas if v.start < end and v.end > start]
        if not vmas:
            return
        first = vmas[0]
        if start > first.start and end < first.end and len(self._vmas) >= self.config.max_map_count:
            raise SyscallError(errno.ENOMEM, syscall, "max_map_count")
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
        if any(v.file is not None for v in vmas):
            self._m.release_files()

    # ================================================================ mmap / munmap

    def memfd_create(self, name="mmemu"):
        """memfd_create(2): a new, empty shmem file with an open fd."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self._check_open()
        return RefMemfd(self, name)

    def mmap(self, length, prot="rw", addr=None, fixed=False, shared=False, fd=None, offset=0):
        """MAP_PRIVATE|MAP_ANONYMOUS; shared=True: MAP_SHARED|MAP_ANONYMOUS (a shmem object of
        its own, the size of the mapping); fd=: a memfd mapped MAP_SHARED from byte offset."""
        self._check_open()
        length = _int_arg(length, "length")
        bits = _prot_arg(prot) & VM_ACCESS_FLAGS     # do_mmap ignores the PROT bits it does not know
        if addr is not None:
            addr = _int_arg(addr, "addr")
        if not isinstance(fixed, bool):
            raise TypeError(f"fixed must be a bool, not {type(fixed).__name__}")
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be a bool, not {type(shared).__name__}")
        offset = _int_arg(offset, "offset")
        if fd is not None:
            if not isinstance(fd, RefMemfd):
                raise TypeError(f"fd must be a memfd, not {type(fd).__name__}")
            if fd._m is not self._m:
                raise ValueError("fd belongs to another emulated machine")
            if fd.closed:
                raise SyscallError(errno.EBADF, "mmap", "the memfd is closed")
        elif offset:
            raise ValueError("offset needs fd (an anonymous mapping has none)")
        if offset % PAGE_SIZE:
            raise SyscallError(errno.EINVAL, "mmap", "offset not page aligned")
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
            start = self._get_unmapped_area(length, addr or None, shmem=shared or fd is not None,
                                            pgoff=offset // PAGE_SIZE)
        if shared or fd is not None:
            if fd is None:              # shmem_zero_setup: an object the size of the mapping
                file = ShmemFile(self._m, anonymous=True)
                file.size = length // PAGE_SIZE
                self._m.files.append(file)
            else:
                file = fd._file
            vma = Vma(start, start + length, bits | VM_MAY | VM_SHARED | VM_MAYSHARE, None,
                      offset // PAGE_SIZE, file)
            self._insert_vma(vma)
            self._merge_around(vma)
            return start
        flags = bits | VM_MAY | (VM_ACCOUNT if bits & VM_WRITE else 0)
        vma = Vma(start, start + length, flags, None, start >> 12)
        self._insert_vma(vma)
        vma = self._merge_around(vma)
        self._khugepaged_enter(vma, vma.flags)
        return start

    def _get_unmapped_area(self, length, hint, shmem=False, pgoff=0):
        if hint is not None:
            hint &= ~(PAGE_SIZE - 1)
        if hint:                    # round_hint_to_min: a hint in the first page is no hint
            hint = max(hint, MMAP_MIN_ADDR)
            if hint + length <= TASK_SIZE and self._is_free(hint, hint + length):
                return hint
            if not shmem:
                return self._unmapped_area_topdown(length)
        if shmem:
            return self._shmem_get_unmapped_area(length, pgoff)
        ret = self._thp_get_unmapped_area(length, 0)
        return ret if ret is not None else self._unmapped_area_topdown(length)

    def _shmem_get_unmapped_area(self, length, pgoff):
        """shmem_get_unmapped_area as the API places shared mappings: when shmem THPs are
        possible (shmem_enabled not never, 2 MiB or more), an address whose offset in 2 MiB is
        the file offset's, from a search inflated by 2 MiB - 4 KiB."""
        ret = self._unmapped_area_topdown(length)
        offset = (pgoff * PAGE_SIZE) & (PMD_SIZE - 1)
        if (self.config.shmem_enabled == "never" or length < PMD_SIZE
                or (offset and offset + length < 2 * PMD_SIZE) or ret & (PMD_SIZE - 1) == offset):
            return ret
        inflated = self._unmapped_area_topdown(length + PMD_SIZE - PAGE_SIZE, fail=False)
        if inflated is None:
            return ret
        addr = inflated - (inflated & (PMD_SIZE - 1)) + offset
        return addr + PMD_SIZE if (inflated & (PMD_SIZE - 1)) > offset else addr

    def _thp_get_unmapped_area(self, length, off):
        """__thp_get_unmapped_area for an anonymous mapping whose first page has file offset
        off (0 for mmap, vm_pgoff << 12 for mremap), or None to search unpadded."""
        mode = self.config.mmap_thp_align
        if not ((mode == "pmd_multiple" and length % PMD_SIZE == 0) or (mode == "any" and length >= PMD_SIZE)):
            return None
        off_end, off_align = off + length, _align_up(off, PMD_SIZE)
        if off_end <= off_align or off_end - off_align < PMD_SIZE:
            return None
        ret = self._unmapped_area_topdown(length + PMD_SIZE, fail=False)
        if ret is None:
            return None
        off_sub = (off - ret) & (PMD_SIZE - 1)
        return ret + PMD_SIZE if off_sub == 0 else ret + off_sub

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

    # ================================================================ mremap (R67)

    def mremap(self, addr, old_size, new_size, maymove=False, new_addr=None):
        """mremap(2): returns the (new) address of the mapping."""
        self._check_open()
        addr = _int_arg(addr, "addr")
        old_size, new_size = _int_arg(old_size, "old_size"), _int_arg(new_size, "new_size")
        if not isinstance(maymove, bool):
            raise TypeError(f"maymove must be a bool, not {type(maymove).__name__}")
        if new_addr is not None:
            new_addr = _int_arg(new_addr, "new_addr")
        if addr % PAGE_SIZE:
            raise SyscallError(errno.EINVAL, "mremap", "addr not aligned")
        old_len = _align_up(old_size, PAGE_SIZE)
        new_len = _align_up(new_size, PAGE_SIZE)
        if new_len == 0 or new_len >= 1 << 64:
            raise SyscallError(errno.EINVAL, "mremap", "new_size 0")
        if new_len > TASK_SIZE:
            raise SyscallError(errno.EINVAL, "mremap", "new_size beyond TASK_SIZE")
        if new_addr is not None:
            if new_addr > TASK_SIZE - new_len:
                raise SyscallError(errno.EINVAL, "mremap", "new range beyond TASK_SIZE")
            if new_addr % PAGE_SIZE:
                raise SyscallError(errno.EINVAL, "mremap", "new_addr not aligned")
            if not maymove:
                raise SyscallError(errno.EINVAL, "mremap", "new_addr without maymove")
            if addr + old_len > new_addr and new_addr + new_len > addr:
                raise SyscallError(errno.EINVAL, "mremap", "new range overlaps the old")
        vma = self._vma_at(addr)
        if vma is None:
            raise SyscallError(errno.EFAULT, "mremap", "addr not mapped")
        if old_len == 0:
            if vma.file is None or not maymove:
                raise SyscallError(errno.EINVAL, "mremap", "old_size 0 needs a shared mapping and MREMAP_MAYMOVE")
            if new_addr is not None and new_addr < MMAP_MIN_ADDR:
                raise SyscallError(errno.EPERM, "mremap", "below mmap_min_addr")
            return self._mremap_dup(vma, addr, new_len, new_addr)
        if addr + old_len > vma.end:
            raise SyscallError(errno.EFAULT, "mremap", "old range not inside one VMA")
        if new_addr is not None:
            if new_addr < MMAP_MIN_ADDR:
                raise SyscallError(errno.EPERM, "mremap", "below mmap_min_addr")
            self._do_munmap(new_addr, new_addr + new_len, "mremap")
            if new_len < old_len:
                self._do_munmap(addr + new_len, addr + old_len, "mremap")
                old_len = new_len
            self._move_vma(addr, old_len, new_addr, new_len)
            self._mremap_populate(new_addr + old_len, new_addr + new_len)
            return new_addr
        if new_len == old_len:
            return addr
        if new_len < old_len:
            self._do_munmap(addr + new_len, addr + old_len, "mremap")
            return addr
        delta = new_len - old_len
        if addr + old_len == vma.end and vma.end + delta <= TASK_SIZE and self._is_free(vma.end, vma.end + delta):
            vma.end += delta                                # expand in place (vma_merge_extend)
            vma = self._merge_around(vma)
            self._khugepaged_enter(vma, vma.flags)
            self._mremap_populate(addr + old_len, addr + new_len)
            return addr
        if not maymove:
            raise SyscallError(errno.ENOMEM, "mremap", "cannot grow in place")
        # __get_unmapped_area passes pgoff 0 for anonymous memory
        target = self._thp_get_unmapped_area(new_len, 0)
        if target is None:
            target = self._unmapped_area_topdown(new_len, fail=False)
        if target is None:
            raise SyscallError(errno.ENOMEM, "mremap", "no room")
        self._move_vma(addr, old_len, target, new_len)
        self._mremap_populate(target + old_len, target + new_len)
        return target

    def _mremap_dup(self, vma, addr, new_len, new_addr):
        """mremap(old_size=0) of a shared mapping: a second mapping of the same file pages, from
        addr's file page, placed as a shared mmap is (or at new_addr, unmapping what is there);
        it is not mlocked."""
        pgoff = vma.pgoff + ((addr - vma.start) >> 12)
        flags, file = vma.flags & ~VM_LOCKED, vma.file
        if new_addr is None:
            new_addr = self._get_unmapped_area(new_len, None, shmem=True, pgoff=pgoff)
        else:
            self._do_munmap(new_addr, new_addr + new_len, "mremap")
        new = Vma(new_addr, new_addr + new_len, flags, None, pgoff, file)
        self._insert_vma(new)
        self._merge_around(new)
        return new_addr

    def _mremap_populate(self, start, end):
        """An mlocked mapping that grew: mm_populate the new part, errors ignored."""
        vma = self._vma_at(start) if start < end else None
        if vma is not None and vma.flags & VM_LOCKED and vma.flags & VM_ACCESS_FLAGS:
            self._populate_locked(vma, start, end, "mremap", ignore_errors=True)

    def _move_vma(self, old_addr, old_len, new_addr, new_len):
        """move_vma: a VMA at new_addr (same flags, anon_vma, vm_pgoff), the page tables moved
        (move_page_tables), the old range unmapped."""
        vma = self._vma_at(old_addr)
        if len(self._vmas) >= self.config.max_map_count - 3:
            raise SyscallError(errno.ENOMEM, "mremap", "max_map_count")
        # the API splits the old VMA at both ends first (a shmem PMD across an end is cleared
        # then, before move_page_tables: the kernel moves first and splits when unmapping)
        if old_addr > vma.start:
            vma = self._split_vma(vma, old_addr)
        if old_addr + old_len < vma.end:
            self._split_vma(vma, old_addr + old_len)
        if vma.anon_vma is None and vma.file is None:   # copy_vma: never faulted: the new pgoff
            pgoff = new_addr >> 12
        else:
            pgoff = vma.pgoff + ((old_addr - vma.start) >> 12)
        new_vma = Vma(new_addr, new_addr + new_len, vma.flags, vma.anon_vma, pgoff, vma.file)
        self._insert_vma(new_vma)
        merged = self._merge_around(new_vma)
        if merged is not new_vma or merged.end != new_addr + new_len:
            self._khugepaged_enter(merged, merged.flags)
        self._move_page_tables(old_addr, new_addr, old_len)
        self._do_munmap(old_addr, old_addr + old_len, "mremap")
        return new_addr

    def _move_page_tables(self, old_addr, new_addr, length):
        """move_page_tables: whole PMD tables (1 GiB both aligned), whole PMD mappings and PTE
        tables (2 MiB both aligned, destination none), else PTE by PTE, splitting a PMD mapping."""
        old_end = old_addr + length

        def extent(size):
            ext = min(((old_addr + size) & ~(size - 1)) - old_addr, old_end - old_addr)
            return min(ext, ((new_addr + size) & ~(size - 1)) - new_addr)

        while old_addr < old_end:
            ext = extent(PUD_SPAN)
            if old_addr >> 30 not in self._pmd_tables:          # get_old_pud: none
                old_addr, new_addr = old_addr + ext, new_addr + ext
                continue
            if new_addr >> 39 not in self._pud_tables:          # alloc_new_pud
                self._pud_tables.add(new_addr >> 39)
                self._table_alloc()
            if ext == PUD_SPAN and new_addr >> 30 not in self._pmd_tables:   # move_normal_pud
                self._pmd_tables.remove(old_addr >> 30)
                self._pmd_tables.add(new_addr >> 30)
                shift = (new_addr - old_addr) >> 21
                for pi in [pi for pi in self._pmds if pi >> 9 == old_addr >> 30]:
                    self._pmds[pi + shift] = self._rekey(self._pmds.pop(pi), shift << 9)
                old_addr, new_addr = old_addr + ext, new_addr + ext
                continue
            ext = extent(PMD_SIZE)
            pi, npi = old_addr >> 21, new_addr >> 21
            entry = self._pmds.get(pi)
            if entry is None:                                   # get_old_pmd: none
                old_addr, new_addr = old_addr + ext, new_addr + ext
                continue
            if new_addr >> 30 not in self._pmd_tables:          # alloc_new_pmd
                self._pmd_tables.add(new_addr >> 30)
                self._table_alloc()
            if ext == PMD_SIZE and npi not in self._pmds:       # move_huge_pmd / move_normal_pmd
                self._pmds[npi] = self._rekey(self._pmds.pop(pi), (npi - pi) << 9)
                old_addr, new_addr = old_addr + ext, new_addr + ext
                continue
            if isinstance(entry, HugePmd):
                self._split_huge_pmd(pi)
                entry = self._pmds.get(pi)
                if entry is None:                               # a shmem PMD: cleared
                    old_addr, new_addr = old_addr + ext, new_addr + ext
                    continue
            table = self._pte_alloc(npi)
            shift = (new_addr - old_addr) >> 12
            for vpn in [v for v in entry if old_addr >> 12 <= v < (old_addr + ext) >> 12]:
                table[vpn + shift] = entry.pop(vpn)
            old_addr, new_addr = old_addr + ext, new_addr + ext

    @staticmethod
    def _rekey(entry, shift):
        if isinstance(entry, HugePmd):
            return entry
        return {vpn + shift: pte for vpn, pte in entry.items()}

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
            if not vma.flags & (VM_ACCOUNT | VM_WRITE | VM_SHARED):    # private mappings only
                flags |= VM_ACCOUNT
        elif vma.flags & VM_ACCOUNT and vma.anon_vma is None:
            flags &= ~VM_ACCOUNT
        return flags

    def _change_protection(self, start, end, flags):
        """R65: entries follow the new protection; exclusive anonymous pages become writable
        again in a writable VMA (MM_CP_TRY_CHANGE_WRITABLE), shared and zero pages never do."""
        writable = bool(flags & VM_WRITE)
        for _, entry in self._entries_in(start, end):
            if isinstance(entry, HugePmd):     # whole: the VMA split already split partial ones
                entry.writable = writable and (entry.kind == "shmem" or entry.kind == "thp" and entry.exclusive)
                continue
            lo, hi = start >> 12, end >> 12
            for vpn, pte in entry.items():      # shmem: no write-notify, vm_page_prot decides
                if lo <= vpn < hi:
                    pte.writable = writable and (pte.kind == "shmem" or pte.kind == "anon" and pte.exclusive)

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
        if advice not in MODELLED_ADVICE:
            raise NotImplementedError(f"madvise {advice!r} is not modelled")
        if advice.startswith("populate_"):
            return self._madvise_populate(addr, end, advice == "populate_write")
        vmas = [v for v in self._vmas if v.start < end and v.end > addr]
        if any(v.file is not None for v in vmas):
            if advice in PRIVATE_ONLY_ADVICE:
                raise SyscallError(errno.EINVAL, "madvise", f"MADV_{advice.upper()} on a shared mapping")
            if advice == "pageout":
                raise NotImplementedError("MADV_PAGEOUT of shared memory is not modelled")
        if advice == "remove":
            return self._madvise_remove(addr, end, vmas)
        if advice == "collapse":
            return self._madvise_collapse(addr, end)
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
            if vma.flags & VM_LOCKED and advice in ("dontneed", "free", "cold", "pageout"):
                raise SyscallError(errno.EINVAL, "madvise", "mlocked VMA")
            if advice in ("dontneed", "dontneed_locked"):
                self._zap_range(vma, cur, stop, reclaim_pt=self.config.pt_reclaim)
            elif advice in FLAG_ADVICE:
                flags = self._advice_flags(vma, advice)
                if advice == "hugepage":
                    self._khugepaged_enter(vma, flags)
                if flags != vma.flags:
                    self._vma_modify(vma, cur, stop, flags, "madvise", errno.EAGAIN)
            elif advice == "free":
                self._madvise_free(cur, stop)
            elif advice == "cold" and vma.file is not None:
                self._madvise_cold_shared(cur, stop)
            elif advice in ("cold", "pageout"):
                self._madvise_cold_or_pageout(cur, stop, advice == "pageout")
            cur = stop
        if unmapped:
            raise SyscallError(errno.ENOMEM, "madvise", "range not fully mapped")

    def _madvise_remove(self, start, end, vmas):
        """MADV_REMOVE (madvise_remove -> fallocate PUNCH_HOLE of the file), VMA by VMA: each
        one's pages punched out of its file until one refuses (mlocked: EINVAL, private:
        EINVAL, no VM_MAYWRITE: EACCES; an mprotect to read-only keeps VM_MAYWRITE); a hole is
        ENOMEM at the end."""
        for vma in vmas:
            if vma.flags & VM_LOCKED:
                raise SyscallError(errno.EINVAL, "madvise", "MADV_REMOVE on an mlocked mapping")
            if vma.file is None:
                raise SyscallError(errno.EINVAL, "madvise", "MADV_REMOVE needs a shared mapping")
            if not vma.flags & VM_MAYWRITE:
                raise SyscallError(errno.EACCES, "madvise", "MADV_REMOVE needs a mapping that may write")
            s, e = max(start, vma.start), min(end, vma.end)
            first = self._linear_index(vma, s)
            self._m.punch_hole(vma.file, first, first + ((e - s) >> 12))
        cursor = start
        for vma in vmas:
            if vma.start > cursor:
                break
            cursor = vma.end
        if cursor < end:
            raise SyscallError(errno.ENOMEM, "madvise", "range not fully mapped")

    def _madvise_cold_shared(self, start, end):
        """R61 (madvise_cold_or_pageout_pte_range, MADV_COLD) over [start, end) of one shared
        VMA: a shmem folio only this process maps and the range covers in part is split to
        order 0 (split_folio), which unmaps it everywhere; a PMD covered whole is made old, and
        so are the PTEs of folios these entries alone map, once per page."""
        for pi, lo, hi, entry in self._pmd_ranges(start, end):
            if isinstance(entry, HugePmd):
                folio = entry.folio
                if self._shmem_maps_here(folio) != self._shmem_mapcount(folio):
                    continue
                if hi - lo == PMD_SIZE:
                    entry.young = False
                else:       # try_to_unmap(TTU_SPLIT_HUGE_PMD) splits each PMD map (counted)
                    self._m.events["thp_split_pmd"] += folio.entire
                    self._m.drop_past_eof(folio.file, self._m.shmem_split(folio, 0, uniform=True))
                continue
            vpn, last = lo >> 12, hi >> 12
            while vpn < last:
                pte = entry.get(vpn)
                if pte is None or pte.kind != "shmem":
                    vpn += 1
                    continue
                folio, nr = pte.page, self._batch_len(entry, vpn, last)
                if nr < folio.nr:
                    if self._shmem_maps_here(folio) == self._shmem_mapcount(folio):
                        self._m.events["thp_split_pmd"] += folio.entire
                        self._m.drop_past_eof(folio.file, self._m.shmem_split(folio, pte.idx, uniform=True))
                        continue                    # the same PTE: none now
                    vpn += nr
                    continue
                if self._shmem_mapcount(folio) == nr:
                    for v in range(vpn, vpn + nr):
                        entry[v].young = False
                vpn += nr

    @staticmethod
    def _shmem_mapcount(folio):
        """folio_mapcount of a shmem folio: every PTE map and every PMD map (one each)."""
        return sum(folio.mapcount) + folio.entire

    def _shmem_maps_here(self, folio):
        """This process's maps of the folio (a PMD map one, a PTE map one): all of them when
        no other process maps it (folio_maybe_mapped_shared is false)."""
        n = 0
        for entry in self._pmds.values():
            if isinstance(entry, HugePmd):
                n += entry.folio is folio
            else:
                n += sum(1 for pte in entry.values() if pte.page is folio)
        return n

    # ================================================================ mlock

    def mlock(self, addr, length):
        """mlock(2): VM_LOCKED on the range (up to a hole: ENOMEM), then populate_vma_page_range
        per VMA: write semantics for writable VMAs, read (FOLL_FORCE) otherwise; PROT_NONE ->
        EFAULT, reported as ENOMEM."""
        start, end = self._lock_range(addr, length)
        if start == end:
            return
        self._apply_lock(start, end, True, "mlock")
        cur = start
        while cur < end:
            vma = self._vma_at(cur)
            stop = min(end, vma.end)
            if not vma.flags & VM_ACCESS_FLAGS:
                raise SyscallError(errno.ENOMEM, "mlock", "PROT_NONE")
            self._populate_locked(vma, cur, stop, "mlock")
            cur = stop

    def munlock(self, addr, length):
        start, end = self._lock_range(addr, length)
        if start != end:
            self._apply_lock(start, end, False, "munlock")

    def _lock_range(self, addr, length):
        self._check_open()
        addr, length = _int_arg(addr, "addr"), _int_arg(length, "length")
        start = addr - addr % PAGE_SIZE
        end = start + _align_up(length + addr % PAGE_SIZE, PAGE_SIZE)
        if end >= 1 << 64:
            raise SyscallError(errno.EINVAL, "mlock", "wraps")
        return start, end

    def _apply_lock(self, start, end, lock, syscall):
        vma = self._find_vma(start)
        if vma is None or vma.start > start:
            raise SyscallError(errno.ENOMEM, syscall, "not mapped")
        cur = start
        while cur < end:
            vma = self._find_vma(cur)
            if vma is None or vma.start > cur:
                raise SyscallError(errno.ENOMEM, syscall, "hole")
            stop = min(end, vma.end)
            flags = (vma.flags | VM_LOCKED) if lock else (vma.flags & ~VM_LOCKED)
            if flags != vma.flags:
                self._vma_modify(vma, cur, stop, flags, syscall, errno.ENOMEM)
            cur = stop

    def _populate_locked(self, vma, start, end, syscall, ignore_errors=False):
        write = bool(vma.flags & VM_WRITE) and vma.file is None     # shared: populated by reads
        cur = start
        while cur < end:
            step = self._follow(cur, write)
            if step:
                cur += step
                continue
            try:
                self._fault(vma, cur, write)
            except _Oom:
                if ignore_errors:
                    return
                raise SyscallError(errno.EAGAIN, syscall, "out of memory") from None
            except _Bus:        # GUP's EFAULT, which __mlock_posix_error_return makes ENOMEM
                if ignore_errors:
                    return
                raise SyscallError(errno.ENOMEM, syscall, f"SIGBUS at {cur:#x} while populating") from None

    @staticmethod
    def _advice_flags(vma, advice):
        """madvise_vma_behavior's new flags (hugepage_madvise for R62)."""
        set_bits, clear_bits = FLAG_ADVICE[advice]
        return (vma.flags & ~clear_bits) | set_bits

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
                except _Bus:
                    raise SyscallError(errno.EFAULT, "madvise", "SIGBUS") from None

    @staticmethod
    def _shared(page):
        return page.mapcount > 1 if isinstance(page, Page) else page.maybe_mapped_shared()

    def _pmd_ranges(self, start, end):
        """(pi, lo, hi, entry) for each PMD entry over [start, end), in address order."""
        for pi in sorted(self._pmds):
            lo, hi = max(start, pi << 21), min(end, (pi + 1) << 21)
            entry = self._pmds.get(pi)         # an earlier step may have changed the table
            if lo < hi and entry is not None:
                yield pi, lo, hi, entry

    def _madvise_free(self, start, end):
        """R60 (madvise_free_huge_pmd, madvise_free_pte_range) over [start, end) of one VMA."""
        for pi, lo, hi, entry in self._pmd_ranges(start, end):
            if isinstance(entry, HugePmd):
                if entry.kind == "hzp" or entry.folio.maybe_mapped_shared():
                    continue
                if hi - lo == PMD_SIZE:
                    entry.young = entry.dirty = False
                    entry.folio.lazyfree = True
                    continue
                self._m.split_folio(entry.folio)
                entry = self._pmds[pi]
            self._walk_small(entry, lo >> 12, hi >> 12, self._free_batch, skip_shared=False)

    def _free_batch(self, table, vpn, pte, nr):
        for v in range(vpn, vpn + nr):
            table[v].young = table[v].dirty = False
        pte.page.lazyfree = True
        return True

    def _walk_small(self, table, lo, hi, action, skip_shared=True):
        """The PTE walk of MADV_FREE/COLD/PAGEOUT: a large folio not wholly mapped by the batch
        here is split (unless mapped shared) and the same PTE looked at again; other pages get
        action(table, vpn, pte, nr) -- MADV_FREE marks them whatever maps them (a fresh anon
        folio is not PG_dirty, so madvise_free_pte_range asks no more), COLD and PAGEOUT only
        those mapped by exactly these entries (folio_mapcount == folio_nr_pages)."""
        vpn = lo
        while vpn < hi:
            pte = table.get(vpn)
            if pte is None or pte.kind != "anon":
                vpn += 1
                continue
            nr = self._batch_len(table, vpn, hi)
            if isinstance(pte.page, Folio) and nr < pte.page.nr:
                if not pte.page.maybe_mapped_shared():
                    self._m.split_folio(pte.page)
                    continue                            # the same PTE, now an order-0 page
                vpn += nr
                continue
            if not skip_shared or self._mapcount(pte.page) == nr:
                action(table, vpn, pte, nr)
            vpn += nr

    @staticmethod
    def _mapcount(page):
        """folio_mapcount: every PTE and PMD mapping of the folio."""
        if isinstance(page, Page):
            return page.mapcount
        return page.large

    def _madvise_cold_or_pageout(self, start, end, pageout):
        """R61 (madvise_cold_or_pageout_pte_range) over [start, end) of one VMA."""
        for pi, lo, hi, entry in self._pmd_ranges(start, end):
            if isinstance(entry, HugePmd):
                if entry.kind == "hzp" or entry.folio.maybe_mapped_shared():
                    continue
                if hi - lo == PMD_SIZE:
                    if pageout:
                        self._reclaim_huge_pmd(pi, entry)
                    else:
                        entry.young = False
                    continue
                self._m.split_folio(entry.folio)
                entry = self._pmds[pi]
            reclaim = []

            def cold(table, vpn, pte, nr, reclaim=reclaim):
                if not pageout:                  # PAGEOUT leaves the young bits (since 6.9)
                    for v in range(vpn, vpn + nr):
                        table[v].young = False
                reclaim.append((vpn, nr))

            self._walk_small(entry, lo >> 12, hi >> 12, cold)
            if pageout:
                for vpn, nr in reclaim:
                    self._reclaim_ptes(entry, vpn, nr)

    def _reclaim_huge_pmd(self, pi, entry):
        """Reclaim without swap, as the 6.18 host showed it (scenarios C4, L4, L5): a THP that
        is not lazy-free cannot be swapped out and is split (folio split); a lazy-free one has
        its PMD split, then is discarded if clean (the table stays) or made swap-backed again,
        still whole, if it was written again."""
        folio = entry.folio
        if not folio.lazyfree:
            self._m.split_folio(folio)
            return
        self._split_huge_pmd(pi)
        self._reclaim_ptes(self._pmds[pi], pi << 9, PTRS)

    def _reclaim_ptes(self, table, vpn, nr):
        pte = table[vpn]
        page = pte.page
        if not page.lazyfree:
            if isinstance(page, Folio) and nr > 1:
                self._m.split_folio(page)       # a large folio it cannot swap out
            return
        batch = [table[v] for v in range(vpn, vpn + nr)]
        if any(p.dirty for p in batch):
            # try_to_unmap_one cleared the batch, gathering dirty and young, and puts it back
            # with them (host: Y8): every PTE of a re-dirtied lazy-free folio is dirty again
            young = any(p.young for p in batch)
            for p in batch:
                p.dirty = True
                p.young = p.young or young
            page.lazyfree = False
            return
        for v in range(vpn, vpn + nr):
            del table[v]
        self._remove_rmap_ptes(page, pte.idx, nr)

    # ================================================================ MADV_COLLAPSE, khugepaged

    def _madvise_collapse(self, start, end):
        """R64 (madvise_collapse per VMA): EINVAL for a VMA THPs are not allowed in; per aligned
        2 MiB block inside the range and the VMA, collapse; no PMD table fails the call (EINVAL,
        after the VMA's other blocks: SCAN_PMD_NULL is on madvise_collapse's list of results to
        go on after); a PMD table whose entry is none (SCAN_PMD_NONE), an allocation failure
        or a refused charge stops it at once (EINVAL, ENOMEM, EBUSY: madvise_collapse_errno)."""
        unmapped = False
        cur = start
        while cur < end:
            vma = self._find_vma(cur)
            if vma is None or vma.start >= end:
                unmapped = True
                break
            if vma.start > cur:
                unmapped, cur = True, vma.start
            stop = min(end, vma.end)
            # madvise_collapse: hend below hstart (the piece lies inside one 2 MiB, not from its
            # start) makes its block count wrap: EINVAL, after the VMA's own check
            no_block = _align_up(cur, PMD_SIZE) > stop & ~(PMD_SIZE - 1)
            if vma.file is not None:        # 2 MiB by 2 MiB; the first failure ends the call
                if not self._file_collapse_allowed(vma) or no_block:
                    raise SyscallError(errno.EINVAL, "madvise", "MADV_COLLAPSE not allowed here")
                for haddr in range(_align_up(cur, PMD_SIZE), (stop & ~(PMD_SIZE - 1)), PMD_SIZE):
                    err = self._collapse_file_block(vma, haddr)
                    if err:
                        raise SyscallError(err, "madvise", "MADV_COLLAPSE of shared memory")
                cur = stop
                continue
            if not self._collapse_allowed(vma) or no_block:
                raise SyscallError(errno.EINVAL, "madvise", "MADV_COLLAPSE not allowed in this VMA")
            failed = None
            for haddr in range(_align_up(cur, PMD_SIZE), stop & ~(PMD_SIZE - 1), PMD_SIZE):
                result = self._collapse_scan_pmd(vma, haddr, khugepaged=False)
                if result == SCAN_ALLOC_FAIL:
                    raise SyscallError(errno.ENOMEM, "madvise", "no THP for the collapse")
                if result == SCAN_CGROUP_CHARGE_FAIL:
                    raise SyscallError(errno.EBUSY, "madvise", "the memory cgroup refused the THP")
                if result == SCAN_PMD_NONE:
                    raise SyscallError(errno.EINVAL, "madvise", "a PMD entry is none")
                if result == SCAN_PMD_NULL:
                    failed = result
            if failed is not None:
                raise SyscallError(errno.EINVAL, "madvise", "a PMD range has no page table")
            cur = stop
        if unmapped:
            raise SyscallError(errno.ENOMEM, "madvise", "range not fully mapped")

    def _collapse_file_block(self, vma, haddr):
        """MADV_COLLAPSE of one aligned 2 MiB of a shared mapping (hpage_collapse_scan_file,
        collapse_file, collapse_pte_mapped_thp), whatever shmem_enabled says: 0 or an errno.
        VM_NOHUGEPAGE, a complete prctl veto or file offsets not aligned like the addresses:
        EINVAL. A PMD-sized folio already there is only mapped. Else a new THP (it may compact;
        thp_collapse_alloc, or _failed and ENOMEM; a refused charge EBUSY); a range with no page
        at all: EINVAL (SCAN_TRUNCATED; i_size plays no part); the old pages are unmapped from
        every process (a dirty PTE dirties its folio) and freed, the THP takes their place
        (dirty, uptodate), every
        process's PTE table over a VMA that holds the whole 2 MiB aligned is freed
        (retract_page_tables), and the caller maps the THP by a PMD."""
        m, file = self._m, vma.file
        if vma.flags & VM_NOHUGEPAGE or self._thp_disable == "completely" \
                or ((vma.start >> 12) - vma.pgoff) % PTRS:
            return errno.EINVAL
        start = self._linear_index(vma, haddr)
        folio = file.cache.get(start)
        if folio is None or folio.order != PMD_ORDER or folio.index != start:
            pfn = m.alloc_large(PMD_ORDER, compact=True)
            if pfn is None:
                m.events["thp_collapse_alloc_failed"] += 1
                return errno.ENOMEM
            m.events["thp_collapse_alloc"] += 1
            if not m.try_charge(PTRS):
                m.buddy_free(pfn, PMD_ORDER)
                return errno.EBUSY
            old = [f for f in file.folios() if start <= f.index < start + PTRS]
            if not old:                                 # SCAN_TRUNCATED; i_size is not looked at
                m.buddy_free(pfn, PMD_ORDER)
                m.uncharge(PTRS)
                return errno.EINVAL
            for mm in m.mms:
                mm._unmap_file_range(file, start, start + PTRS)
            for f in old:
                m.shmem_free_folio(f)
            folio = m.shmem_add(file, start, pfn, PMD_ORDER)
            folio.dirty = True
            for mm in m.mms:                                # retract_page_tables
                for v in mm._vmas:
                    if v.file is not file or v.anon_vma is not None:
                        continue
                    addr = v.start + ((start - v.pgoff) << 12)
                    if v.pgoff > start or addr % PMD_SIZE or v.end < addr + PMD_SIZE:
                        continue
                    table = mm._pmds.get(addr >> 21)
                    if isinstance(table, dict):
                        assert not table
                        del mm._pmds[addr >> 21]
                        mm._table_free()
        entry = self._pmds.get(haddr >> 21)                 # collapse_pte_mapped_thp
        if isinstance(entry, HugePmd):
            return 0
        if isinstance(entry, dict):
            ptes = {v: p for v, p in entry.items() if haddr >> 12 <= v < (haddr >> 12) + PTRS}
            if any(p.page is not folio or p.idx != v - (haddr >> 12) for v, p in ptes.items()):
                return errno.EINVAL
            for v, p in ptes.items():
                folio.mapcount[p.idx] -= 1
                del entry[v]
            del self._pmds[haddr >> 21]
            self._table_free()
        else:
            self._alloc_upper_tables(haddr)
        if not self._shmem_set_pmd(vma, haddr, folio, False):
            return errno.EINVAL
        return 0

    def _khugepaged_scan_pmd(self, vma, haddr):
        """One PMD range for khugepaged: (result, mmap lock still held)."""
        result = self._collapse_scan_pmd(vma, haddr, khugepaged=True)
        return result, result not in (SCAN_SUCCEED, SCAN_ALLOC_FAIL, SCAN_CGROUP_CHARGE_FAIL)

    def _collapse_scan_pmd(self, vma, haddr, khugepaged):
        """hpage_collapse_scan_pmd (R69) and, when it succeeds, collapse_huge_page (R70)."""
        cfg = self.config
        pi = haddr >> 21
        table = self._pmds.get(pi)
        if table is None:                    # find_pmd_or_thp_or_none: no table, or entry none
            return SCAN_PMD_NONE if haddr >> 30 in self._pmd_tables else SCAN_PMD_NULL
        if isinstance(table, HugePmd):
            return SCAN_PMD_MAPPED
        none_or_zero = shared = referenced = 0
        for vpn in range(pi << 9, (pi + 1) << 9):
            pte = table.get(vpn)
            if pte is None or pte.kind == "zero":
                none_or_zero += 1
                if khugepaged and none_or_zero > cfg.khugepaged_max_ptes_none:
                    self._m.events["thp_scan_exceed_none_pte"] += 1
                    return SCAN_EXCEED_NONE
                continue
            if self._shared(pte.page):
                shared += 1
                if khugepaged and shared > cfg.khugepaged_max_ptes_shared:
                    self._m.events["thp_scan_exceed_share_pte"] += 1
                    return SCAN_EXCEED_SHARED
            referenced += pte.young
        if khugepaged and not referenced:
            return SCAN_LACK_REFERENCED
        return self._collapse_huge_page(vma, pi, table)

    def _collapse_huge_page(self, vma, pi, table):
        """A new THP holding a copy of the range (small pages and mTHP pages alike), mapped by a
        dirty, young PMD; the old PTE table becomes its deposit; the old pages lose this
        mapping (a folio that loses its last one is freed)."""
        m = self._m
        pfn = m.alloc_large(PMD_ORDER, compact=True)        # alloc_charge_folio (defrag 1)
        if pfn is None:
            m.events["thp_collapse_alloc_failed"] += 1
            return SCAN_ALLOC_FAIL
        m.events["thp_collapse_alloc"] += 1
        if not m.try_charge(PTRS):
            m.buddy_free(pfn, PMD_ORDER)
            return SCAN_CGROUP_CHARGE_FAIL
        folio = m.new_folio(pfn, PMD_ORDER, self, pmd_mapped=True)
        base = pi << 9
        for vpn, pte in table.items():
            if pte.kind == "anon":
                page = pte.page
                folio.written[vpn - base] = page.written[pte.idx] if isinstance(page, Folio) else page.written
        self._pmds[pi] = HugePmd("thp", folio, bool(vma.flags & VM_WRITE), True, True, True)
        self._m.queue(folio)               # deferred_split_folio(folio, false): uncounted
        for vpn, pte, nr in self._batches(table, base, base + PTRS):
            if pte.kind == "anon":
                self._remove_rmap_ptes(pte.page, pte.idx, nr)
        return SCAN_SUCCEED

    def khugepaged_scan(self, pages=None, full_scans=None):
        """Run khugepaged synchronously for the whole machine: one wake-up scanning `pages` PTE
        slots (default Config.khugepaged_pages_to_scan), or, with full_scans, wake-ups until
        that many more full passes over the registered processes have completed."""
        self._check_open()
        if pages is not None:
            pages = _int_arg(pages, "pages")
            if pages == 0:
                raise ValueError("pages must be positive")
        if full_scans is not None:
            full_scans = _int_arg(full_scans, "full_scans")
        m = self._m
        budget = pages if pages is not None else self.config.khugepaged_pages_to_scan
        if full_scans is None:
            m.khugepaged_do_scan(budget)
            return
        target = m.full_scans + full_scans
        while m.full_scans < target and m.kh_list and m.khugepaged_enabled():
            m.khugepaged_scan_mm_slot(1 << 62)

    # ================================================================ self-check (tests)

    def _check_invariants(self):
        """Recount every mapping from the page tables of every process and compare with the
        mapcounts kept in pages and folios."""
        m = self._m
        page_maps, sub_maps, entire, per_mm = {}, {}, {}, {}
        for mm in m.mms:
            for v in mm._vmas:
                assert bool(v.flags & VM_SHARED) == (v.file is not None) and (v.file is None or v.file in m.files)
            assert mm._nr_tables == (len(mm._pud_tables) + len(mm._pmd_tables) + len(mm._pmds)
                                     - sum(1 for e in mm._pmds.values() if isinstance(e, HugePmd) and e.kind == "shmem"))
            for pi, e in mm._pmds.items():
                if isinstance(e, HugePmd):
                    if e.kind == "shmem":
                        entire[id(e.folio)] = entire.get(id(e.folio), 0) + 1
                    if e.kind == "thp":
                        entire[id(e.folio)] = entire.get(id(e.folio), 0) + 1
                        per_mm[(id(e.folio), mm._id)] = per_mm.get((id(e.folio), mm._id), 0) + 1
                    continue
                for vpn, pte in e.items():
                    assert vpn >> 9 == pi
                    if pte.kind == "shmem":
                        key = (id(pte.page), pte.idx)
                        sub_maps[key] = sub_maps.get(key, 0) + 1
                        vma = mm._vma_at(vpn << 12)
                        assert vma is not None and vma.file is pte.page.file
                        assert mm._linear_index(vma, vpn << 12) == pte.page.index + pte.idx
                        continue
                    if pte.kind != "anon":
                        continue
                    if isinstance(pte.page, Folio):
                        key = (id(pte.page), pte.idx)
                        sub_maps[key] = sub_maps.get(key, 0) + 1
                        per_mm[(id(pte.page), mm._id)] = per_mm.get((id(pte.page), mm._id), 0) + 1
                    else:
                        page_maps[id(pte.page)] = page_maps.get(id(pte.page), 0) + 1
        for p in m.pages.values():
            assert page_maps.pop(id(p), 0) == p.mapcount > 0, p
        assert not page_maps, "a mapped page is not registered"
        for f in m.folios.values():
            assert entire.get(id(f), 0) == f.entire
            for i in range(f.nr):
                assert sub_maps.pop((id(f), i), 0) == f.mapcount[i]
            assert f.large == f.entire + sum(f.mapcount) > 0
            assert f.queued == (f in m.deferred)
            mms = {k[1] for k in per_mm if k[0] == id(f)}
            for slot in (0, 1):
                if f.ids[slot] is not None:
                    assert per_mm.get((id(f), f.ids[slot]), 0) >= f.cnt[slot] + 1
            if len(mms) <= 1 and (f.ids[0] in mms or f.ids[1] in mms):
                assert not f.shared or f.large <= 1 or f.cnt[0] + 1 != f.large and f.cnt[1] + 1 != f.large
        for file in m.files:
            for f in file.folios():
                assert all(file.cache[f.index + i] is f for i in range(f.nr)) and f.index % f.nr == 0
                assert entire.pop(id(f), 0) == f.entire
                for i in range(f.nr):
                    assert sub_maps.pop((id(f), i), 0) == f.mapcount[i]
        assert not sub_maps, "a mapped subpage belongs to no live folio"
        assert not self._prealloc
        self._check_frames()

    def _check_frames(self):
        """The free lists are the canonical buddy decomposition of the free frames, every frame
        is accounted for once, and memory_current is what the live folios and tables hold."""
        m = self._m
        kind = np.full(m.nframes, K_FREE, dtype=np.uint8)
        kind[:RESERVED_FRAMES] = K_RESERVED
        free = np.zeros(m.nframes, dtype=bool)
        for pfn, order in m.free_at.items():
            assert pfn % (1 << order) == 0 and pfn in m.free_sets[order]
            assert not free[pfn:pfn + (1 << order)].any()
            free[pfn:pfn + (1 << order)] = True
            if order < MAX_PAGE_ORDER:          # fully merged: the buddy is not free whole
                assert m.free_at.get(pfn ^ (1 << order)) != order
        assert sum(len(x) for x in m.free_sets) == len(m.free_at)
        assert m.nr_free == int(free.sum())
        assert not free[:RESERVED_FRAMES].any()

        def claim(pfn, n, what):
            assert (kind[pfn:pfn + n] == K_FREE).all() and not free[pfn:pfn + n].any(), (pfn, what)
            kind[pfn:pfn + n] = what
        for frame, page in m.pages.items():
            assert page.frame == frame
            claim(frame, 1, K_PAGE)
        for pfn, f in m.folios.items():
            assert f.pfn == pfn and pfn % f.nr == 0
            claim(pfn, f.nr, K_FOLIO)
        if m.huge_zero_pfn is not None:
            claim(m.huge_zero_pfn, PTRS, K_HZP)
        for frame, movable in m.held.items():
            claim(frame, 1, K_HELD_MOVABLE if movable else K_HELD)
        for file in m.files:
            for f in file.folios():
                claim(f.pfn, f.nr, K_SHMEM)
        assert ((kind == K_FREE) == free).all(), "a frame is neither free nor used"
        assert (kind == m.kind).all()
        charged = len(m.pages) + sum(f.nr for f in m.folios.values()) + sum(mm._nr_tables for mm in m.mms) \
            + sum(f.nr for file in m.files for f in file.folios())
        assert m.charged == charged, (m.charged, charged)
