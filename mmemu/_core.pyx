# cython: language_level=3
"""The mmemu core: page-table walk and the anonymous fault path, in C over packed arrays.

Functions are named after the kernel's (mm/memory.c, mm/huge_memory.c) so both can be read
side by side.  Everything reached from the bulk access loop is ``nogil`` and touches no Python
object; the rare growth of a table pool takes the GIL for the numpy allocation.

Rule numbers (Rnn) refer to shared/spec/linux-mm-semantics.md.
"""
import numpy as np
cimport numpy as cnp
from libc.string cimport memset, memcpy
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, INT64_MAX
from mmemu._buddy cimport FreeArea, MAX_PAGE_ORDER
from mmemu import _persist

cnp.import_array()

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil

cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    static int mmemu_advise_huge(void *p, size_t n) { return madvise(p, n, MADV_HUGEPAGE); }
    #else
    static int mmemu_advise_huge(void *p, size_t n) { (void)p; (void)n; return 0; }
    #endif
    """
    int mmemu_advise_huge(void *p, size_t n) nogil


cdef object huge_zeros(shape, dtype):
    """np.zeros whose memory the host backs with transparent huge pages where it can: the
    page tables and frame arrays are walked at random, and 4K host pages would make every
    emulated walk a host TLB miss.  (An emulator of THP that runs faster on THP.)"""
    cdef cnp.ndarray a = np.zeros(shape, dtype)
    cdef size_t start = <size_t>cnp.PyArray_DATA(a)
    cdef size_t end = start + <size_t>a.nbytes
    cdef size_t lo = (start + PMD_SIZE - 1) & ~(<size_t>PMD_SIZE - 1)
    cdef size_t hi = end & ~(<size_t>PMD_SIZE - 1)
    if hi > lo:
        mmemu_advise_huge(<void *>lo, hi - lo)
    return a


# ---- geometry helpers ---------------------------------------------------------------------
cdef uint64_t PAGE_SIZE = 1 << PAGE_SHIFT
cdef uint64_t PMD_SIZE = 1 << PMD_SHIFT
cdef uint64_t PUD_SIZE = 1 << PUD_SHIFT
cdef uint64_t PGDIR_SIZE = 1ULL << PGDIR_SHIFT
cdef uint64_t PMD_MASK = ~((1ULL << PMD_SHIFT) - 1)
# arm64 with 4K pages: 16 PTEs (64 KiB) make one contiguous-PTE block
cdef enum:
    CONT_PTE_ORDER = 4
    CONT_PTES = 16
cdef uint64_t CONT_PTE_SIZE = CONT_PTES * 4096
# fault_around_bytes (64 KiB) in pages
cdef enum:
    FAULT_AROUND_PAGES = 16
cdef uint64_t PFN_MASK = 0xFFFFFFFFFF      # 40 bits of frame / table number
cdef uint64_t TASK_SIZE = (1ULL << 47) - 4096
#: the end of the user address range, as the ceiling of free_pgtables
cdef uint64_t USER_TOP = 1ULL << 47
cdef uint64_t TLB_INVALID = 1              # no masked address equals it
cdef uint64_t TABLE_BITS = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED
cdef uint64_t ZERO_PTE = _PAGE_PRESENT | _PAGE_USER | _PAGE_SPECIAL | _PAGE_ACCESSED

PAGE_STATE_VALUES = (PS_NONE, PS_ZERO, PS_HUGE_ZERO, PS_ANON, PS_LARGE, PS_THP, PS_SHMEM, PS_SHMEM_THP)
OP_VALUES = (OP_READ, OP_WRITE, OP_ATOMIC)
VM_FLAG_VALUES = dict(VM_READ=VM_READ, VM_WRITE=VM_WRITE, VM_EXEC=VM_EXEC, VM_MAYREAD=VM_MAYREAD,
                      VM_MAYWRITE=VM_MAYWRITE, VM_MAYEXEC=VM_MAYEXEC, VM_ACCOUNT=VM_ACCOUNT,
                      VM_HUGEPAGE=VM_HUGEPAGE, VM_NOHUGEPAGE=VM_NOHUGEPAGE, VM_LOCKED=VM_LOCKED, VM_SEQ_READ=VM_SEQ_READ,
                      VM_RAND_READ=VM_RAND_READ, VM_DONTCOPY=VM_DONTCOPY, VM_WIPEONFORK=VM_WIPEONFORK,
                      VM_DONTDUMP=VM_DONTDUMP, VM_SHARED=VM_SHARED, VM_MAYSHARE=VM_MAYSHARE)
FAULT_OOM = VM_FAULT_OOM
FAULT_SIGSEGV = VM_FAULT_SIGSEGV
FAULT_HOSTMEM = VM_FAULT_HOSTMEM
FAULT_NOTIMPL = VM_FAULT_NOTIMPL
FAULT_SIGBUS = VM_FAULT_SIGBUS
#: /sys/kernel/mm/transparent_hugepage/shmem_enabled values for Machine.shmem_enabled
SHMEM_ENABLED_MODES = {"never": SHMEM_HUGE_NEVER, "always": SHMEM_HUGE_ALWAYS,
                       "within_size": SHMEM_HUGE_WITHIN_SIZE, "advise": SHMEM_HUGE_ADVISE}
#: prctl(PR_SET_THP_DISABLE) modes of MMCore.set_thp_disable
DISABLE_COMPLETELY = THP_DISABLE_COMPLETELY
DISABLE_EXCEPT_ADVISED = THP_DISABLE_EXCEPT_ADVISED
#: /sys/kernel/mm/transparent_hugepage/defrag values for MMCore(defrag=...)
DEFRAG_MODES = {"always": DEFRAG_ALWAYS, "defer": DEFRAG_DEFER, "defer+madvise": DEFRAG_DEFER_MADVISE,
                "madvise": DEFRAG_MADVISE, "never": DEFRAG_NEVER}
#: per-size THP stats are kept for these orders: 16 kB .. 2 MiB
STAT_ORDERS = tuple(range(MIN_MTHP_ORDER, MAX_FOLIO_ORDER + 1))

cdef enum:
    # populate() results besides a fault code
    GUP_HOLE = 1 << 8          # no VMA: ENOMEM
    GUP_BADVMA = 1 << 9        # check_vma_flags refused: EINVAL

POPULATE_HOLE = GUP_HOLE
POPULATE_BADVMA = GUP_BADVMA


cdef int check_range(uint64_t start, uint64_t end) except -1:
    """The boundary check of every range the Python layer hands the core: page-aligned,
    ordered, inside the 47-bit user address space (so no walk can index outside a table)."""
    if start > end or end > USER_TOP or (start | end) & (PAGE_SIZE - 1):
        raise ValueError(f"bad range [{start:#x}, {end:#x})")
    return 0


# /proc/pid/pagemap bits (Documentation/admin-guide/mm/pagemap.rst)
cdef uint64_t PM_PRESENT = 1ULL << 63
cdef uint64_t PM_FILE = 1ULL << 61
cdef uint64_t PM_MMAP_EXCLUSIVE = 1ULL << 56
# /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h; 32+ are the kernel-hacking ones)
cdef uint64_t KPF_REFERENCED = 1ULL << 2
cdef uint64_t KPF_UPTODATE = 1ULL << 3
cdef uint64_t KPF_DIRTY = 1ULL << 4
cdef uint64_t KPF_LRU = 1ULL << 5
cdef uint64_t KPF_MMAP = 1ULL << 11
cdef uint64_t KPF_ANON = 1ULL << 12
cdef uint64_t KPF_SWAPBACKED = 1ULL << 14
cdef uint64_t KPF_COMPOUND_HEAD = 1ULL << 15
cdef uint64_t KPF_COMPOUND_TAIL = 1ULL << 16
cdef uint64_t KPF_THP = 1ULL << 22
cdef uint64_t KPF_ZERO_PAGE = 1ULL << 24
cdef uint64_t KPF_RESERVED = 1ULL << 32
cdef uint64_t KPF_MAPPEDTODISK = 1ULL << 34


cdef inline bint is_vector(cnp.ndarray a, int typenum):
    """A one-dimensional, C-contiguous, native-endian array of exactly this element type."""
    return (cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_TYPE(a) == typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISNOTSWAPPED(a))


cdef inline uint64_t entry_index(uint64_t e) noexcept nogil:
    return (e >> PAGE_SHIFT) & PFN_MASK


cdef inline uint64_t mk_table_entry(int64_t index) noexcept nogil:
    return (<uint64_t>index << PAGE_SHIFT) | TABLE_BITS


cdef inline int64_t pgd_index(uint64_t addr) noexcept nogil:
    return (addr >> PGDIR_SHIFT) & 511


cdef inline int64_t pud_index(uint64_t addr) noexcept nogil:
    return (addr >> PUD_SHIFT) & 511


cdef inline int64_t pmd_index(uint64_t addr) noexcept nogil:
    return (addr >> PMD_SHIFT) & 511


cdef inline int64_t pte_index(uint64_t addr) noexcept nogil:
    return (addr >> PAGE_SHIFT) & 511


cdef inline bint table_empty(const uint64_t *table) noexcept nogil:
    cdef int i
    for i in range(PTRS_PER_TABLE):
        if table[i]:
            return False
    return True


cdef inline int64_t folio_pte_batch(const uint64_t *pte, int64_t i, int64_t last, int64_t pfn,
                                   int order) noexcept nogil:
    """How many PTEs from i (below last) map consecutive pages of pfn's folio of this order."""
    cdef int64_t nr = 1
    cdef int64_t end_pfn = (pfn | ((<int64_t>1 << order) - 1)) + 1
    cdef uint64_t e
    while i + nr < last and pfn + nr < end_pfn:
        e = pte[i + nr]
        if not e or (e & _PAGE_SPECIAL) or <int64_t>entry_index(e) != pfn + nr:
            break
        nr += 1
    return nr


cdef inline bint ptes_none(const uint64_t *pte, int64_t nr) noexcept nogil:
    """pte_range_none: no entry at all (a zeropage PTE is an entry)."""
    cdef int64_t k
    for k in range(nr):
        if pte[k]:
            return False
    return True


cdef inline uint64_t umin(uint64_t a, uint64_t b) noexcept nogil:
    return a if a < b else b


cdef inline uint64_t umax(uint64_t a, uint64_t b) noexcept nogil:
    return a if a > b else b


cdef inline bint no_whole_block(uint64_t start, uint64_t end) noexcept nogil:
    """[start, end) lies inside one aligned 2 MiB without holding it whole nor starting at its
    beginning: madvise_collapse's hend falls below its hstart, its count of blocks to collapse
    wraps around and it fails with the EINVAL of its initial last_fail (SCAN_FAIL). A range
    that starts on a boundary has hstart == hend: nothing to do, success."""
    return ((start + PMD_SIZE - 1) & PMD_MASK) > (end & PMD_MASK)


cdef inline uint64_t tlb_perm_of(uint64_t e) noexcept nogil:
    # A clean writable entry is cached read-only: the first write must set the dirty bit.
    # So is one whose page has not yet been marked written: the first store must mark it.
    cdef uint64_t perm = e & (_PAGE_PRESENT | _PAGE_USER)
    if (e & (_PAGE_RW | _PAGE_DIRTY | _PAGE_WRITTEN)) == (_PAGE_RW | _PAGE_DIRTY | _PAGE_WRITTEN):
        perm |= _PAGE_RW
    return perm


# =============================================================================================
# Machine: emulated physical memory
# =============================================================================================

cdef class ShmemFile:
    """A shmem inode: the object behind a MAP_SHARED|MAP_ANONYMOUS mapping or a memfd. Its page
    cache maps page indices to frames; pages beyond ``size`` do not exist (SIGBUS)."""

    def __cinit__(self, int32_t fid, bint anonymous):
        self.fid = fid
        self.anonymous = anonymous
        self.fd_open = not anonymous
        self.size = 0
        self.fallocend = 0
        self._pages = np.zeros(1, np.int64)
        self.pages = <int64_t *>cnp.PyArray_DATA(self._pages)

    def page(self, int64_t index):
        """The frame holding page ``index`` (0: not in the page cache)."""
        if not 0 <= index < self.size:
            raise IndexError(f"page {index} is beyond the file's {self.size} pages")
        return self.pages[index]

    def resident(self):
        """A copy of the page cache: frame per page index, 0 for a hole (past i_size too, to
        the end of its 2 MiB block: a THP may run past i_size)."""
        return self._pages.copy()

    @property
    def nr_pages(self):
        """Pages in the page cache."""
        return int(np.count_nonzero(self._pages))

    @property
    def capacity(self):
        """Page indices the page cache can hold: i_size rounded up to 2 MiB."""
        return self._pages.shape[0]

    def __reduce__(self):
        raise TypeError("a ShmemFile pickles only as part of its Machine: pickle the MM, Memfd or Machine")


cdef class Machine:
    """Frames of emulated RAM, their buddy allocator, the memory cgroup and the system-wide
    counters.

    Frames 0..511 are reserved (frame 0 stands for the shared zeropage, outside RAM).  Free
    memory is a buddy allocator of orders 0..10 (mmemu._buddy.FreeArea).  Per-frame arrays are
    zero-filled lazily by the OS, so unused RAM costs no host memory.
    """

    def __cinit__(self, int64_t memory_bytes):
        if memory_bytes < <int64_t>PMD_SIZE or memory_bytes % <int64_t>PMD_SIZE:
            raise ValueError("memory must be a positive multiple of 2 MiB")
        self.nr_blocks = memory_bytes // <int64_t>PMD_SIZE + 1
        self.nr_frames = self.nr_blocks * HPAGE_PMD_NR
        self.area = FreeArea(self.nr_frames, HPAGE_PMD_NR)
        self._refcount = huge_zeros(self.nr_frames, np.int32)
        self._mapcount = huge_zeros(self.nr_frames, np.int32)
        self._flags = huge_zeros(self.nr_frames, np.uint8)
        # structs in byte arrays (numpy has no dtype for a C struct); zero-filled lazily, so
        # the mTHP descriptors of RAM that never held an mTHP cost no host memory
        self._pmd_folio = np.zeros(self.nr_blocks * sizeof(folio_t), np.uint8)
        self._mthp_folio = huge_zeros((self.nr_frames >> 2) * sizeof(folio_t), np.uint8)
        self._mthp_blocks = np.zeros(self.nr_blocks, np.uint8)
        self._block_pinned = np.zeros(self.nr_blocks, np.int32)
        self._vmstat = np.zeros(NR_VMSTAT, np.int64)
        self._mthp_stat = np.zeros((MAX_FOLIO_ORDER + 1) * NR_MTHP_STAT, np.int64)
        self.bind_arrays()
        self.memcg_usage = 0
        self.memcg_max = INT64_MAX
        self.compact_considered = 0
        self.compact_defer_shift = 0
        self.compact_order_failed = 0
        self.nr_foreign = 0
        self.files = {}
        self.next_fid = 1
        self.file_slots = 0
        self._grow_file_table(16)
        self.shmem_enabled = SHMEM_HUGE_NEVER
        self.folio_split_nonuniform = True
        self.huge_zero_pfn = -1
        self.huge_zero_users = 0
        self.mms = []
        self.khugepaged_exited = []
        self.next_mm_id = 1
        self.next_khugepaged_seq = 1
        self.khugepaged_cursor_seq = 0
        self.khugepaged_cursor_addr = 0
        self.pages_collapsed = 0
        self.full_scans = 0

    # ---- the page allocator (mm/page_alloc.c) -----------------------------------------------
    # The buddy allocator hands out the lowest block of the smallest sufficient order.  Frames
    # compaction cannot move (large folios, the huge zeropage, unmovable foreign pages) are
    # counted per 2 MiB pageblock so compaction finds its candidates without a scan.

    @property
    def nr_free_pages(self):
        return self.area.free_pages

    cdef int64_t alloc_page(self) noexcept nogil:
        """One order-0 frame, or -1 when RAM is exhausted."""
        return self.area.alloc(0)

    cdef int64_t alloc_pages(self, int order, bint compact) noexcept nogil:
        """The head of a free block of 2**order frames, or -1. A large block that is not to be
        had triggers direct compaction where the caller's gfp allows it (__alloc_pages_slowpath
        -> __alloc_pages_direct_compact), then one more try."""
        cdef int64_t pfn = self.area.alloc(order)
        if pfn < 0 and compact and order > 0 and not self.compaction_deferred(order):
            if self.compact_zone(order):
                pfn = self.area.alloc(order)
        if pfn >= 0 and order > 0:
            self.block_pinned[pfn >> HPAGE_PMD_ORDER] += 1 << order
        return pfn

    cdef void free_frames(self, int64_t pfn, int order) noexcept nogil:
        """Give 2**order frames back to the buddy allocator, their metadata cleared."""
        cdef int64_t nr = (<int64_t>1) << order
        memset(self.flags + pfn, 0, nr)
        memset(self.mapcount + pfn, 0, nr * sizeof(int32_t))
        memset(self.refcount + pfn, 0, nr * sizeof(int32_t))
        if order > 0:
            self.block_pinned[pfn >> HPAGE_PMD_ORDER] -= <int32_t>nr
        self.area.free(pfn, order)

    cdef void free_page(self, int64_t pfn) noexcept nogil:
        """An order-0 anonymous page is freed: uncharged and given back."""
        self.uncharge(1)
        self.free_frames(pfn, 0)

    cdef int64_t alloc_pmd_folio(self, bint compact) noexcept nogil:
        """The head frame of a free, aligned 2 MiB block, or -1 when none is to be had."""
        return self.alloc_pages(HPAGE_PMD_ORDER, compact)

    cdef folio_t *new_mthp(self, int64_t pfn, int order) noexcept nogil:
        """Describe a freshly allocated block as an mTHP: every quad of it knows the order."""
        cdef int64_t q
        for q in range(pfn >> 2, (pfn >> 2) + ((<int64_t>1) << (order - 2))):
            self.mthp_folio[q].order = <uint8_t>order
        self.mthp_blocks[pfn >> HPAGE_PMD_ORDER] = 1
        return &self.mthp_folio[pfn >> 2]

    # ---- the memory cgroup (mm/memcontrol.c: try_charge, uncharge) ----------------------------

    cdef bint try_charge(self, int64_t nr) noexcept nogil:
        """Charge nr pages to the cgroup, unless that would pass memory.max (no swap, nothing to
        reclaim: the charge fails)."""
        if nr > self.memcg_max - self.memcg_usage:
            return False
        self.memcg_usage += nr
        return True

    cdef inline void uncharge(self, int64_t nr) noexcept nogil:
        self.memcg_usage -= nr

    # ---- compaction (mm/compaction.c) ---------------------------------------------------------

    cdef bint compaction_deferred(self, int order) noexcept nogil:
        """compaction_deferred: after a failure, skip the next 2**compact_defer_shift tries."""
        if order < self.compact_order_failed:
            return False
        self.compact_considered += 1
        if self.compact_considered >= (1 << self.compact_defer_shift):
            self.compact_considered = 1 << self.compact_defer_shift
            return False
        return True

    cdef bint compact_zone(self, int order) noexcept nogil:
        """Direct compaction for one free block of 2**order frames (R23). The migration scanner
        takes the lowest pageblock (2 MiB) holding only movable pages (order-0 anonymous pages,
        movable foreign pages) and in it the lowest aligned block of the order; its used frames
        move to the lowest free frames outside it, the PTEs that mapped them, in every process,
        follow, and the block is free. Fails when no such pageblock exists or too little memory
        is free elsewhere. Returns whether the block was freed."""
        cdef int64_t block, lo = -1, used = 0
        cdef bint ok = False
        self.vmstat[COMPACT_STALL] += 1
        for block in range(1, self.nr_blocks):
            # merging is complete: a wholly free pageblock lies in a free block of order >= 9
            if self.block_pinned[block] == 0 \
                    and self.area.free_order_of(block << HPAGE_PMD_ORDER) < HPAGE_PMD_ORDER:
                lo = block << HPAGE_PMD_ORDER
                break
        if lo >= 0:
            used = self.used_frames(lo, order)
            if used <= self.area.free_pages - (((<int64_t>1) << order) - used):
                with gil:
                    ok = self.migrate_block(lo, order) == 0
        if ok:
            self.vmstat[COMPACT_SUCCESS] += 1
            self.compact_considered = 0       # compaction_defer_reset
            self.compact_defer_shift = 0
            if order + 1 > self.compact_order_failed:
                self.compact_order_failed = order + 1
        else:
            self.vmstat[COMPACT_FAIL] += 1
            self.compact_considered = 0       # defer_compaction
            if self.compact_defer_shift < COMPACT_MAX_DEFER_SHIFT:
                self.compact_defer_shift += 1
            if order < self.compact_order_failed:
                self.compact_order_failed = order
        return ok

    cdef int64_t used_frames(self, int64_t lo, int order) noexcept nogil:
        cdef int64_t pfn, used = 0
        for pfn in range(lo, lo + ((<int64_t>1) << order)):
            if self.area.free_order_of(pfn) < 0:
                used += 1
        return used

    cdef int migrate_block(self, int64_t lo, int order) except -1:
        """migrate_pages for every used frame of [lo, lo + 2**order), in ascending order: the
        block's free frames are taken first so that no copy lands inside it; then it is freed
        whole."""
        cdef int64_t nr = (<int64_t>1) << order, pfn, new
        cdef cnp.ndarray moved = np.full(nr, -1, np.int64)
        cdef int64_t *to = <int64_t *>cnp.PyArray_DATA(moved)
        cdef MMCore mm
        for pfn in range(lo, lo + nr):
            if self.area.free_order_of(pfn) >= 0:
                self.area.take(pfn, 0)
                to[pfn - lo] = -2                     # was free: nothing to move
        for pfn in range(lo, lo + nr):
            if to[pfn - lo] == -2:
                to[pfn - lo] = -1
                continue
            new = self.area.alloc(0)
            to[pfn - lo] = new
            self.refcount[new] = self.refcount[pfn]
            self.mapcount[new] = self.mapcount[pfn]
            self.flags[new] = self.flags[pfn]
            self.vmstat[PGMIGRATE_SUCCESS] += 1
        for mm in self.mms:
            mm.rmap_migrate(lo, moved)
        memset(self.flags + lo, 0, nr)
        memset(self.mapcount + lo, 0, nr * sizeof(int32_t))
        memset(self.refcount + lo, 0, nr * sizeof(int32_t))
        self.area.free(lo, order)
        return 0

    cdef void clear_folio(self, int64_t block) noexcept nogil:
        """Forget the PMD-order folio that filled a block (freed, or split into pages)."""
        memset(&self.pmd_folio[block], 0, sizeof(folio_t))

    cdef void free_pmd_folio(self, int64_t pfn) noexcept nogil:
        """Free a PMD-order folio (a THP, or the huge zeropage, which was never charged)."""
        self.clear_folio(pfn >> HPAGE_PMD_ORDER)
        # subpages carry written marks, and PTE mappings once the PMD was split
        self.free_frames(pfn, HPAGE_PMD_ORDER)

    cdef int64_t get_huge_zero_folio(self) noexcept nogil:
        """The huge zeropage, allocated on first need (mm/huge_memory.c: get_huge_zero_folio)."""
        cdef int64_t pfn
        if self.huge_zero_pfn >= 0:
            return self.huge_zero_pfn
        pfn = self.alloc_pmd_folio(True)       # GFP_TRANSHUGE: direct compaction
        if pfn < 0:
            self.vmstat[THP_ZERO_PAGE_ALLOC_FAILED] += 1
            return -1
        self.pmd_folio[pfn >> HPAGE_PMD_ORDER].flags = PG_HUGE_ZERO | PG_HEAD
        self.pmd_folio[pfn >> HPAGE_PMD_ORDER].order = HPAGE_PMD_ORDER
        self.vmstat[THP_ZERO_PAGE_ALLOC] += 1
        self.huge_zero_pfn = pfn
        return pfn

    # ---- large folios as the rmap sees them (mm/rmap.c, mm/huge_memory.c) -----------------------

    cdef inline folio_t *folio_of(self, int64_t pfn) noexcept nogil:
        """page_folio for a large folio: the folio pfn belongs to, or NULL for an order-0 page."""
        cdef int64_t block = pfn >> HPAGE_PMD_ORDER
        cdef uint8_t order
        if self.pmd_folio[block].flags & PG_HEAD:
            return &self.pmd_folio[block]
        if not self.mthp_blocks[block]:
            return NULL
        order = self.mthp_folio[pfn >> 2].order
        if not order:
            return NULL
        return &self.mthp_folio[((pfn >> order) << order) >> 2]

    cdef void bind_arrays(self):
        """Point the C views at the per-frame and counter arrays (after they are made or
        loaded: pointers are never kept across a pickle)."""
        self.refcount = <int32_t *>cnp.PyArray_DATA(self._refcount)
        self.mapcount = <int32_t *>cnp.PyArray_DATA(self._mapcount)
        self.flags = <uint8_t *>cnp.PyArray_DATA(self._flags)
        self.pmd_folio = <folio_t *>cnp.PyArray_DATA(self._pmd_folio)
        self.mthp_folio = <folio_t *>cnp.PyArray_DATA(self._mthp_folio)
        self.mthp_blocks = <uint8_t *>cnp.PyArray_DATA(self._mthp_blocks)
        self.block_pinned = <int32_t *>cnp.PyArray_DATA(self._block_pinned)
        self.vmstat = <int64_t *>cnp.PyArray_DATA(self._vmstat)
        self.mthp_stat = <int64_t *>cnp.PyArray_DATA(self._mthp_stat)

    cdef inline bint page_is_shmem(self, int64_t pfn, folio_t *folio) noexcept nogil:
        """Whether frame pfn is in a shmem page cache (every such frame carries PG_SHMEM)."""
        return (self.flags[pfn] & PG_SHMEM) != 0

    cdef inline int64_t folio_pfn(self, folio_t *folio) noexcept nogil:
        """The head frame of a large folio."""
        if folio.order == HPAGE_PMD_ORDER:
            return (folio - self.pmd_folio) << HPAGE_PMD_ORDER
        return (folio - self.mthp_folio) << 2

    cdef inline void count_mthp(self, int order, int item, int64_t delta) noexcept nogil:
        self.mthp_stat[order * NR_MTHP_STAT + item] += delta

    cdef void folio_mm_add(self, folio_t *folio, int32_t mm_id, int32_t nr) noexcept nogil:
        """Account nr more mappings of the folio to process mm_id (folio_add_return_large_mapcount
        with MM_ID): a process takes a free slot; a third process finds none."""
        if folio.mm_count[0] and folio.mm_id[0] == mm_id:
            folio.mm_count[0] += nr
        elif folio.mm_count[1] and folio.mm_id[1] == mm_id:
            folio.mm_count[1] += nr
        elif folio.mm_count[0] == 0:
            folio.mm_id[0] = mm_id
            folio.mm_count[0] = nr
        elif folio.mm_count[1] == 0:
            folio.mm_id[1] = mm_id
            folio.mm_count[1] = nr

    cdef void folio_mm_sub(self, folio_t *folio, int32_t mm_id, int32_t nr) noexcept nogil:
        if folio.mm_count[0] and folio.mm_id[0] == mm_id:
            folio.mm_count[0] -= nr
        elif folio.mm_count[1] and folio.mm_id[1] == mm_id:
            folio.mm_count[1] -= nr

    cdef bint folio_maybe_mapped_shared(self, folio_t *folio) noexcept nogil:
        """Unless one process's slot holds every mapping (the refcount: no pins here)."""
        return not (folio.mm_count[0] == folio.refcount or folio.mm_count[1] == folio.refcount)

    cdef void free_large_folio(self, folio_t *folio) noexcept nogil:
        """The last reference of a large anonymous folio went (folio_put -> free)."""
        cdef int order = folio.order
        cdef int64_t head = self.folio_pfn(folio), nr = (<int64_t>1) << order
        self.count_mthp(order, MTHP_NR_ANON, -1)
        if folio.flags & PG_PARTIAL:
            self.count_mthp(order, MTHP_NR_ANON_PARTIALLY_MAPPED, -1)
        self.uncharge(nr)
        if order == HPAGE_PMD_ORDER:
            self.free_pmd_folio(head)
            return
        self.forget_mthp(head, order)
        self.free_frames(head, order)

    cdef void forget_mthp(self, int64_t head, int order) noexcept nogil:
        """The frames of an mTHP are order-0 frames again (freed, or split)."""
        memset(&self.mthp_folio[head >> 2], 0, ((<int64_t>1) << (order - 2)) * sizeof(folio_t))

    cdef void deferred_split_folio(self, folio_t *folio, bint partially_mapped) noexcept nogil:
        """mm/huge_memory.c: deferred_split_folio. A partially mapped folio is flagged and
        counted the first time (6.12+); a new THP is only queued, uncounted (R50, R55)."""
        if partially_mapped:
            if folio.flags & PG_PARTIAL:
                return
            folio.flags = folio.flags | PG_PARTIAL | PG_DEFERRED
            if folio.order == HPAGE_PMD_ORDER:
                self.vmstat[THP_DEFERRED_SPLIT_PAGE] += 1
            self.count_mthp(folio.order, MTHP_SPLIT_DEFERRED, 1)
            self.count_mthp(folio.order, MTHP_NR_ANON_PARTIALLY_MAPPED, 1)
        else:
            folio.flags = folio.flags | PG_DEFERRED

    cdef void folio_mark_written(self, int64_t pfn) noexcept nogil:
        """A store reached page pfn: its contents are no longer all zero."""
        cdef folio_t *folio
        if self.flags[pfn] & PG_WRITTEN:
            return
        self.flags[pfn] |= PG_WRITTEN
        folio = self.folio_of(pfn)
        if folio != NULL:
            folio.written += 1
            if folio.written == (1 << folio.order):
                folio.flags = folio.flags | PG_WRITTEN

    cdef int split_folio(self, folio_t *folio, bint zero_remap) except -1:
        """split_folio to order 0 (R51, R52): split every PMD mapping of the folio in every
        process (unmap_folio), turn its subpages into order-0 pages, free the unmapped ones
        and, with zero_remap, map every unwritten subpage to the shared zeropage."""
        cdef int64_t head = self.folio_pfn(folio), pfn
        cdef int order = folio.order
        cdef int64_t nr = (<int64_t>1) << order
        cdef uint8_t folio_flags = folio.flags
        cdef MMCore mm
        cdef int64_t i
        if zero_remap and self.folio_mlocked(head):
            zero_remap = False                # mlocked subpages stay mapped (R52)
        if self.unmap_leaves_partial(folio, head):
            # unmap_folio -> try_to_migrate takes the PTEs away one at a time: the folio is
            # partially mapped for a moment and __folio_remove_rmap queues it (counted)
            self.deferred_split_folio(folio, True)
            folio_flags = folio.flags
        if order == HPAGE_PMD_ORDER:
            for mm in list(self.mms):
                mm.rmap_split_pmds(head)
            self.vmstat[THP_SPLIT_PAGE] += 1
        self.count_mthp(order, MTHP_SPLIT, 1)
        self.count_mthp(order, MTHP_NR_ANON, -1)
        if folio_flags & PG_PARTIAL:
            self.count_mthp(order, MTHP_NR_ANON_PARTIALLY_MAPPED, -1)
        if zero_remap:
            for mm in list(self.mms):
                mm.rmap_remap_zero(head)
        # the folio becomes order-0 frames: all in use, then the unmapped ones are freed
        if order == HPAGE_PMD_ORDER:
            self.clear_folio(head >> HPAGE_PMD_ORDER)
        else:
            self.forget_mthp(head, order)
        self.block_pinned[head >> HPAGE_PMD_ORDER] -= <int32_t>nr     # order-0 pages move
        for i in range(nr):
            pfn = head + i
            if self.mapcount[pfn] > 0:
                self.refcount[pfn] = self.mapcount[pfn]
                self.flags[pfn] = PG_ANON | (self.flags[pfn] & (PG_ANON_EXCLUSIVE | PG_WRITTEN)) \
                    | (folio_flags & PG_LAZYFREE)
            else:
                self.free_page(pfn)
        return 0

    cdef bint unmap_leaves_partial(self, folio_t *folio, int64_t head) noexcept nogil:
        """Whether unmapping the folio for a split passes through a partially mapped state: it
        has PTE mappings, and some page will lose its last mapping while another page is
        still mapped (a folio mapped by PMDs only is frozen whole: split_huge_pmd_locked)."""
        cdef int64_t i, nr = (<int64_t>1) << folio.order, pte_mapped = 0
        if folio.flags & PG_PARTIAL:
            return False
        for i in range(nr):
            if self.mapcount[head + i] > 0:
                pte_mapped += 1
        return pte_mapped > 0 and (folio.entire_mapcount > 0 or pte_mapped >= 2)

    cdef bint folio_mlocked(self, int64_t head) except -1:
        """folio_test_mlocked: some process maps every page of the folio from VM_LOCKED VMAs
        (mlock_vma_folio and mlock_pte_range lock a large folio only when the locked range
        holds all of it; one locked in part is not, and its split remaps the zero subpages
        outside the locked VMAs)."""
        cdef MMCore mm
        for mm in self.mms:
            if mm.rmap_maps_locked(head):
                return True
        return False

    def shrink_slab(self, bint shrink_underused, int max_ptes_none, bint zero_remap):
        """echo 2 > /proc/sys/vm/drop_caches: the deferred-split shrinker (R54), then the
        huge-zeropage shrinker (R56)."""
        cdef int64_t block, q, zeros
        cdef folio_t *folio
        cdef bint remains
        for block in range(self.nr_blocks):
            if self.mthp_blocks[block]:
                remains = False
                for q in range(block << (HPAGE_PMD_ORDER - 2), (block + 1) << (HPAGE_PMD_ORDER - 2)):
                    folio = &self.mthp_folio[q]
                    if not folio.order or q & ((1 << (folio.order - 2)) - 1):
                        continue                      # not the head quad of an mTHP
                    if folio.flags & PG_PARTIAL:
                        self.split_folio(folio, zero_remap)
                    else:
                        folio.flags = folio.flags & ~PG_DEFERRED
                        remains = True
                self.mthp_blocks[block] = remains     # no mTHP left: folio_of skips the block
            folio = &self.pmd_folio[block]
            if not (folio.flags & PG_DEFERRED):
                continue
            if folio.flags & PG_PARTIAL:
                self.split_folio(folio, zero_remap)
                continue
            if shrink_underused and max_ptes_none < HPAGE_PMD_NR - 1 \
                    and not self.folio_mlocked(block << HPAGE_PMD_ORDER):
                zeros = HPAGE_PMD_NR - folio.written
                if zeros > max_ptes_none:
                    self.vmstat[THP_UNDERUSED_SPLIT_PAGE] += 1
                    self.split_folio(folio, zero_remap)
                    continue
            folio.flags = folio.flags & ~PG_DEFERRED
        if self.huge_zero_pfn >= 0 and self.huge_zero_users == 0:
            self.free_pmd_folio(self.huge_zero_pfn)
            self.huge_zero_pfn = -1

    cdef void register_mm(self, MMCore mm):
        mm.mm_id = self.next_mm_id
        self.next_mm_id += 1
        self.mms.append(mm)

    def unregister_mm(self, MMCore mm):
        """The process exited: off the rmap, and off khugepaged's list (__khugepaged_exit)
        unless khugepaged is positioned on it: then the scan drops it when it gets there."""
        if mm in self.mms:
            self.mms.remove(mm)
        if mm.khugepaged_seq and mm.khugepaged_seq == self.khugepaged_cursor_seq:
            self.khugepaged_exited.append(mm)
        else:
            mm.khugepaged_seq = 0

    # ---- shmem files (mm/shmem.c) ----------------------------------------------------------------

    def _grow_file_table(self, int64_t slots):
        cdef cnp.ndarray pages = np.zeros(slots, np.uint64)
        cdef cnp.ndarray size = np.zeros(slots, np.int64)
        if self.file_slots:
            pages[:self.file_slots] = self._file_pages
            size[:self.file_slots] = self._file_size
        self._file_pages = pages
        self._file_size = size
        self.file_pages = <int64_t **>cnp.PyArray_DATA(pages)
        self.file_size = <int64_t *>cnp.PyArray_DATA(size)
        self.file_slots = slots

    def new_file(self, bint anonymous, int64_t size=0):
        """A new shmem file (shmem_file_setup) of ``size`` pages; its id. The page cache is
        allocated before the machine changes: a size the host cannot hold raises MemoryError
        and leaves no file behind."""
        cdef int32_t fid = self.next_fid
        cdef ShmemFile f = ShmemFile(fid, anonymous)
        cdef int64_t capacity = (size + HPAGE_PMD_NR - 1) & ~(<int64_t>HPAGE_PMD_NR - 1)
        if size < 0:
            raise ValueError("size must not be negative")
        if capacity > f._pages.shape[0]:             # as file_set_size grows it
            f._pages = np.zeros(capacity, np.int64)
            f.pages = <int64_t *>cnp.PyArray_DATA(f._pages)
        f.size = size
        if fid >= self.file_slots:
            self._grow_file_table(self.file_slots * 2)
        self.next_fid += 1
        self.files[fid] = f
        self.file_pages[fid] = f.pages
        self.file_size[fid] = size
        return fid

    def file_set_size(self, int32_t fid, int64_t size, bint truncate=True):
        """ftruncate: a new i_size in pages; shrinking frees everything from there on (the
        caller has unmapped it from every process first) unless not ``truncate`` (a failed
        fallocate puts i_size back: what it left past i_size stays, as in the kernel, where
        i_size never moved). The page cache holds whole 2 MiB blocks, so that a THP may run
        past i_size as the kernel's may."""
        cdef ShmemFile f = self.files[fid]
        cdef cnp.ndarray pages
        cdef int64_t capacity = (size + HPAGE_PMD_NR - 1) & ~(<int64_t>HPAGE_PMD_NR - 1)
        if size < 0:
            raise ValueError("size must not be negative")
        if size < f.size and truncate:
            # shmem_setattr: i_size is written before the truncation, which also pulls
            # fallocend back (shmem_undo_range): a split past the new EOF drops the tail
            f.size = size
            self.file_size[fid] = size
            f.fallocend = min(f.fallocend, size)
            self.file_free_range(fid, size, f._pages.shape[0])
        elif capacity > f._pages.shape[0]:
            pages = np.zeros(capacity, np.int64)
            pages[:f._pages.shape[0]] = f._pages
            f._pages = pages
            f.pages = <int64_t *>cnp.PyArray_DATA(pages)
            self.file_pages[fid] = f.pages
        f.size = size
        self.file_size[fid] = size

    def file_free_range(self, int32_t fid, int64_t first, int64_t last):
        """shmem_undo_range: free the pages of [first, last) from the page cache (mapped
        nowhere any more). A large folio only partly inside is split around the cut first, as
        6.15+ truncate_inode_partial_folio does (folio_split: the buddy halves away from the
        cut stay large folios)."""
        cdef ShmemFile f = self.files[fid]
        cdef int64_t at, pfn, head, hidx, nr, offset, end, k
        cdef int64_t capacity = f._pages.shape[0]
        cdef bint same_folio = False
        cdef folio_t *folio
        cdef folio_t *folio2
        if not 0 <= first <= last <= capacity:
            raise ValueError("file_free_range: bad range")
        if first == last:
            return 0
        self.shmem_free_whole(f, first, last)
        for at in (first, last - 1):              # the partial folios at the start and the end
            if at == last - 1 and same_folio:
                break
            pfn = f.pages[at]
            if not pfn:
                continue
            folio = self.folio_of(pfn)
            head = pfn if folio == NULL else self.folio_pfn(folio)
            nr = 1 if folio == NULL else (<int64_t>1) << folio.order
            hidx = at - (pfn - head)
            if at == first:
                same_folio = last <= hidx + nr
            for k in range(head, head + nr):      # the part outside the range is zeroed: dirty
                self.flags[k] = self.flags[k] | PG_DIRTY
            if folio == NULL:
                continue
            offset = max(first - hidx, 0)
            end = min(last, hidx + nr) - hidx
            self.shmem_split(f, folio, head + offset, hidx)
            if end < nr and f.pages[hidx + end]:  # split_at2: the page after the range
                pfn = f.pages[hidx + end]         # (not dropped past EOF by the first split)
                folio2 = self.folio_of(pfn)
                if folio2 != NULL:
                    self.shmem_split(f, folio2, pfn, hidx + end - (pfn - self.folio_pfn(folio2)))
        self.shmem_free_whole(f, first, last)
        return 0

    cdef void shmem_free_whole(self, ShmemFile f, int64_t first, int64_t last) noexcept nogil:
        """Free the folios of the page cache that lie wholly inside [first, last)."""
        cdef int64_t index = first, pfn, head, hidx, nr, k
        cdef folio_t *folio
        while index < last:
            pfn = f.pages[index]
            if not pfn:
                index += 1
                continue
            folio = self.folio_of(pfn)
            if folio == NULL:
                f.pages[index] = 0
                self.shmem_free_page(pfn)
                index += 1
                continue
            head = self.folio_pfn(folio)
            nr = (<int64_t>1) << folio.order
            hidx = index - (pfn - head)
            if hidx >= first and hidx + nr <= last:
                for k in range(hidx, hidx + nr):
                    f.pages[k] = 0
                self.shmem_free_folio(folio)
            index = hidx + nr

    def file_fallocate(self, int32_t fid, int64_t first, int64_t last, bint compact=False, int64_t range_end=-1):
        """shmem_fallocate without PUNCH_HOLE over pages [first, last): each page not cached
        gets a folio without data (not uptodate until a fault reaches it), and every folio of
        the range is marked dirty, old ones too (so that reclaim would swap rather than drop
        them). The folio is a THP where a file without a VMA may have one (shmem_enabled
        always, or within_size where i_size covers the 2 MiB: advise needs a VMA) and the
        naturally aligned 512 slots are empty, though they start before ``first``; else a
        page. ``compact``: direct compaction for the THP (vma_thp_gfp_mask without a VMA: only
        defrag=always). On running out, the folios not uptodate that lie wholly in [first,
        the failing page) are freed (shmem_undo_range(unfalloc)) and False is returned.
        ``range_end``: the end of the call's range, past i_size with FALLOC_FL_KEEP_SIZE
        (default ``last``): fallocend, below which a split keeps the pieces past i_size."""
        cdef ShmemFile f = self.files[fid]
        cdef int64_t index, pfn, hidx
        cdef folio_t *folio
        cdef int mode = self.shmem_enabled
        cdef bint huge
        if not 0 <= first <= last <= f.size:
            raise ValueError("file_fallocate: bad range")
        undo_fallocend = f.fallocend
        f.fallocend = max(f.fallocend, last if range_end < 0 else range_end)
        index = first
        while index < last:
            pfn = f.pages[index]
            if not pfn:
                hidx = index & ~(<int64_t>HPAGE_PMD_NR - 1)
                huge = mode == SHMEM_HUGE_ALWAYS or (mode == SHMEM_HUGE_WITHIN_SIZE
                                                     and hidx + HPAGE_PMD_NR <= f.size)
                pfn = self.shmem_alloc_folio(fid, index, huge, compact)
                if pfn < 0:
                    f.fallocend = undo_fallocend              # before the undo, as the kernel
                    self.shmem_undo_falloc(f, first, index)
                    return False
                self.shmem_mark_fallocated(pfn)
            self.shmem_folio_dirty(pfn)
            index += self.folio_pages_from(pfn)
        return True

    cdef int64_t folio_pages_from(self, int64_t pfn) noexcept nogil:
        """Pages from ``pfn`` to the end of its folio."""
        cdef folio_t *folio = self.folio_of(pfn)
        if folio == NULL:
            return 1
        return self.folio_pfn(folio) + ((<int64_t>1) << folio.order) - pfn

    cdef void shmem_mark_fallocated(self, int64_t pfn) noexcept nogil:
        """A folio fallocate added: not uptodate (every page of it)."""
        cdef folio_t *folio = self.folio_of(pfn)
        cdef int64_t head = pfn if folio == NULL else self.folio_pfn(folio), k
        cdef int64_t nr = 1 if folio == NULL else (<int64_t>1) << folio.order
        for k in range(head, head + nr):
            self.flags[k] = self.flags[k] | PG_FALLOCATED

    cdef int shmem_split(self, ShmemFile f, folio_t *folio, int64_t at, int64_t hidx,
                         bint uniform=False) except -1:
        """__folio_split of the shmem folio holding file pages from ``hidx``, around frame
        ``at`` (``uniform``: split_folio, to order 0 whatever the kernel): it is unmapped from
        every process first (try_to_unmap) and, being no anonymous folio, not mapped again
        (remap_page): faults map the pieces anew. The pieces that begin at or past EOF are
        dropped."""
        cdef int64_t nr = (<int64_t>1) << folio.order
        cdef MMCore mm
        for mm in list(self.mms):
            if mm.unmap_file_range(f.fid, hidx, hidx + nr):
                raise MemoryError("cannot grow the page-table pool")
        self.shmem_split_folio_at(folio, at, uniform)
        return self.shmem_drop_past_eof(f, hidx, nr)

    cdef int shmem_drop_past_eof(self, ShmemFile f, int64_t hidx, int64_t nr) except -1:
        """After a split of the folio that held pages [hidx, hidx + nr): __folio_split drops
        the new folios that begin at or past EOF (i_size, or fallocend where fallocate reserved
        beyond it) from the page cache, unmapped from every process; the piece holding the
        old head stays."""
        cdef int64_t eof = max(f.size, f.fallocend), i = hidx, pfn, n
        cdef MMCore mm
        if hidx + nr <= max(eof, hidx + 1):
            return 0
        while i < hidx + nr:
            pfn = f.pages[i]
            if not pfn:
                i += 1
                continue
            n = self.folio_pages_from(pfn)
            if i >= eof and i > hidx:
                for mm in list(self.mms):
                    if mm.unmap_file_range(f.fid, i, i + n):
                        raise MemoryError("cannot grow the page-table pool")
                self.shmem_remove(f, i, n, pfn)
            i += n
        return 0

    cdef void shmem_remove(self, ShmemFile f, int64_t hidx, int64_t nr, int64_t pfn) noexcept nogil:
        """The folio at file pages [hidx, hidx + nr) (one of its frames: ``pfn``) leaves the
        page cache and is freed."""
        cdef folio_t *folio = self.folio_of(pfn)
        cdef int64_t k
        for k in range(hidx, hidx + nr):
            f.pages[k] = 0
        if folio == NULL:
            self.shmem_free_page(pfn)
        else:
            self.shmem_free_folio(folio)

    cdef int shmem_undo_falloc(self, ShmemFile f, int64_t first, int64_t last) except -1:
        """shmem_undo_range(unfalloc): free the folios not uptodate in [first, last) (an
        earlier fallocate's too: the kernel cannot tell them apart). One that begins before
        ``first`` is split there first, as truncate_inode_partial_folio splits it, and loses
        the pieces inside; none can cross ``last``, the page that could not be had."""
        cdef int64_t index = first, pfn = f.pages[first] if first < last else 0, hidx, nr
        cdef folio_t *folio = self.folio_of(pfn) if pfn else NULL
        if folio != NULL and self.flags[pfn] & PG_FALLOCATED and self.folio_pfn(folio) < pfn:
            self.shmem_split(f, folio, pfn, first - (pfn - self.folio_pfn(folio)))
        while index < last:
            pfn = f.pages[index]
            if not pfn:
                index += 1
                continue
            folio = self.folio_of(pfn)
            nr = 1 if folio == NULL else (<int64_t>1) << folio.order
            hidx = index if folio == NULL else index - (pfn - self.folio_pfn(folio))
            if hidx >= first and hidx + nr <= last and self.flags[pfn] & PG_FALLOCATED:
                self.shmem_remove(f, hidx, nr, pfn)
            index = hidx + nr

    cdef void shmem_folio_dirty(self, int64_t pfn) noexcept nogil:
        """folio_mark_dirty: every page of pfn's folio is dirty (smaps counts a page dirty if
        its PTE or its folio is)."""
        cdef folio_t *folio = self.folio_of(pfn)
        cdef int64_t head = pfn if folio == NULL else self.folio_pfn(folio), k
        cdef int64_t nr = 1 if folio == NULL else (<int64_t>1) << folio.order
        for k in range(head, head + nr):
            self.flags[k] = self.flags[k] | PG_DIRTY

    cdef void shmem_mark_uptodate(self, int64_t pfn, folio_t *folio) noexcept nogil:
        """A fallocated folio a fault reached is zeroed and uptodate, every page of it."""
        cdef int64_t head = pfn if folio == NULL else self.folio_pfn(folio), k
        cdef int64_t nr = 1 if folio == NULL else (<int64_t>1) << folio.order
        for k in range(head, head + nr):
            self.flags[k] = self.flags[k] & ~PG_FALLOCATED

    def file_forget(self, int32_t fid):
        """The file is gone (no fd, no mapping): free its page cache, past i_size too (a failed
        fallocate or a THP may have left pages there), and forget it."""
        cdef ShmemFile f = self.files[fid]
        self.file_free_range(fid, 0, f._pages.shape[0])
        self.file_set_size(fid, 0)
        self.file_pages[fid] = NULL
        del self.files[fid]

    cdef void shmem_free_folio(self, folio_t *folio) noexcept nogil:
        """A large shmem folio leaves the page cache: uncharged and freed."""
        cdef int order = folio.order
        cdef int64_t head = self.folio_pfn(folio), nr = (<int64_t>1) << order
        self.uncharge(nr)
        self.vmstat[NR_SHMEM] -= nr
        if order == HPAGE_PMD_ORDER:
            self.vmstat[NR_SHMEM_THPS] -= 1
            self.free_pmd_folio(head)
        else:
            self.forget_mthp(head, order)
            self.free_frames(head, order)

    cdef void shmem_split_folio_at(self, folio_t *folio, int64_t at, bint uniform=False) noexcept nogil:
        """folio_split(folio, 0, at): the folio becomes, at each order below its own, the buddy
        half that does not hold ``at`` (a folio of that order), and ``at`` alone. Order-1
        pieces are kept as two order-0 pages (mmemu describes large folios from order 2).
        ``uniform`` (split_folio), or before 6.15: order-0 pages."""
        cdef int order = folio.order, j
        cdef int64_t head = self.folio_pfn(folio), start
        if order == HPAGE_PMD_ORDER:
            self.vmstat[THP_SPLIT_PAGE] += 1
            self.vmstat[NR_SHMEM_THPS] -= 1
            self.clear_folio(head >> HPAGE_PMD_ORDER)
        else:
            self.forget_mthp(head, order)
        self.count_mthp(order, MTHP_SPLIT, 1)
        if uniform or not self.folio_split_nonuniform:
            return                                # split_folio, to order 0
        for j in range(order - 1, -1, -1):
            start = head + ((((at - head) >> j) ^ 1) << j)
            if j >= MIN_MTHP_ORDER:
                self.shmem_describe_folio(start, j)
        # frames keep their flags (PG_SHMEM, dirty, written) and mapcounts: order-0 pages now

    cdef folio_t *shmem_describe_folio(self, int64_t head, int order) noexcept nogil:
        """Describe frames [head, head + 2**order) of a page cache as one shmem folio; its
        refcount counts the PTEs that map its pages."""
        cdef folio_t *folio = self.new_mthp(head, order)
        cdef int64_t k
        folio.flags = 0
        folio.refcount = 0
        for k in range(head, head + ((<int64_t>1) << order)):
            folio.refcount += self.mapcount[k]
            if self.flags[k] & PG_WRITTEN:
                folio.written += 1
        return folio

    cdef void shmem_free_page(self, int64_t pfn) noexcept nogil:
        """An order-0 page leaves the page cache: uncharged and freed."""
        self.uncharge(1)
        self.vmstat[NR_SHMEM] -= 1
        self.block_pinned[pfn >> HPAGE_PMD_ORDER] -= 1
        self.free_frames(pfn, 0)

    cdef int64_t shmem_alloc_folio(self, int32_t fid, int64_t index, bint huge, bint compact) noexcept nogil:
        """shmem_get_folio_gfp for a page not in the cache: a THP for the aligned 2 MiB when
        ``huge`` and none of its pages exists, else one page; added to the cache and charged.
        Returns the frame of page ``index``, or -1 when out of memory."""
        cdef int64_t *pages = self.file_pages[fid]
        cdef int64_t hidx = index & ~(<int64_t>HPAGE_PMD_NR - 1), pfn, k
        cdef folio_t *folio
        if huge:                                  # the page cache holds whole 2 MiB blocks
            for k in range(hidx, hidx + HPAGE_PMD_NR):
                if pages[k]:
                    huge = False
                    break
        else:
            huge = False
        if huge:
            pfn = self.alloc_pmd_folio(compact)
            if pfn >= 0 and not self.try_charge(HPAGE_PMD_NR):
                self.free_frames(pfn, HPAGE_PMD_ORDER)
                self.vmstat[THP_FILE_FALLBACK_CHARGE] += 1
                self.count_mthp(HPAGE_PMD_ORDER, MTHP_SHMEM_FALLBACK_CHARGE, 1)
                pfn = -1
            if pfn < 0:
                self.vmstat[THP_FILE_FALLBACK] += 1
                self.count_mthp(HPAGE_PMD_ORDER, MTHP_SHMEM_FALLBACK, 1)
            else:
                folio = &self.pmd_folio[pfn >> HPAGE_PMD_ORDER]
                folio.flags = PG_HEAD
                folio.order = HPAGE_PMD_ORDER
                folio.index = hidx
                for k in range(HPAGE_PMD_NR):
                    pages[hidx + k] = pfn + k
                    self.flags[pfn + k] = PG_SHMEM
                self.vmstat[THP_FILE_ALLOC] += 1
                self.count_mthp(HPAGE_PMD_ORDER, MTHP_SHMEM_ALLOC, 1)
                self.vmstat[NR_SHMEM] += HPAGE_PMD_NR
                self.vmstat[NR_SHMEM_THPS] += 1
                return pfn + (index - hidx)
        if not self.try_charge(1):
            return -1
        pfn = self.alloc_page()
        if pfn < 0:
            self.uncharge(1)
            return -1
        self.flags[pfn] = PG_SHMEM
        self.block_pinned[pfn >> HPAGE_PMD_ORDER] += 1      # not migrated by compaction here
        pages[index] = pfn
        self.vmstat[NR_SHMEM] += 1
        return pfn

    # ---- views for Python --------------------------------------------------------------------

    def vmstat_values(self):
        return self._vmstat.copy()

    def mthp_values(self):
        """Per-size stats: one row per order 0..9, MTHP_STAT_NAMES columns."""
        return self._mthp_stat.reshape(MAX_FOLIO_ORDER + 1, NR_MTHP_STAT).copy()

    @property
    def free_blocks_count(self):
        """Wholly free 2 MiB blocks (a THP can be had while this is above 0)."""
        info = self.area.buddyinfo()
        return int(info[HPAGE_PMD_ORDER] + 2 * info[HPAGE_PMD_ORDER + 1])

    def buddyinfo(self):
        """Free blocks of each order 0..10 (/proc/buddyinfo)."""
        return self.area.buddyinfo()

    def fragment(self, double free_fraction, int order, bint movable):
        """Hold pages of every wholly free, aligned block of 2**order frames, spread evenly,
        so that no free block of that order is left (as another tenant's memory would).
        Unmovable ones also stop compaction in their pageblock. Returns the pages held."""
        cdef int64_t region = (<int64_t>1) << order, start, pfn, i, h, held = 0
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError(f"order must be 0..{MAX_PAGE_ORDER}, not {order}")
        if not 0.0 <= free_fraction <= 1.0:
            raise ValueError(f"free_fraction must be between 0 and 1, not {free_fraction}")
        h = max(1, <int64_t>round((1.0 - free_fraction) * region))
        for start in range(0, self.nr_frames, region):
            if self.area.free_order_of(start) < order:
                continue                               # not wholly free
            for i in range(h):
                pfn = start + (i * region) // h
                self.area.take(pfn, 0)
                self.flags[pfn] = PG_FOREIGN | (PG_FOREIGN_MOVABLE if movable else 0)
                if not movable:
                    self.block_pinned[pfn >> HPAGE_PMD_ORDER] += 1
                held += 1
        self.nr_foreign += held
        return held

    def release_fragmentation(self):
        """Free every page fragment() holds. Returns how many."""
        cdef int64_t pfn, freed = 0
        with nogil:
            for pfn in range(self.nr_frames):
                if self.flags[pfn] & PG_FOREIGN:
                    if not (self.flags[pfn] & PG_FOREIGN_MOVABLE):
                        self.block_pinned[pfn >> HPAGE_PMD_ORDER] -= 1
                    self.free_frames(pfn, 0)
                    freed += 1
        self.nr_foreign -= freed
        return freed

    @property
    def memory_current(self):
        """Pages charged to the memory cgroup (memory.current / 4096)."""
        return self.memcg_usage

    @property
    def memory_max(self):
        """memory.max in pages, or None for no limit."""
        return None if self.memcg_max == INT64_MAX else self.memcg_max

    def set_memory_max(self, pages):
        """Set memory.max (pages, or None). Below the current usage it is refused (no swap:
        nothing could be reclaimed): returns False and keeps the old limit."""
        if pages is None:
            self.memcg_max = INT64_MAX
            return True
        if pages < 0:
            raise ValueError("memory.max must not be negative")
        if pages < self.memcg_usage:
            return False
        self.memcg_max = pages
        return True

    def frame_info(self, int64_t pfn):
        """(refcount, mapcount, flags) of one frame, for tests and invariant checks."""
        if pfn < 0 or pfn >= self.nr_frames:
            raise IndexError(f"pfn {pfn} out of range")
        return (self.refcount[pfn], self.mapcount[pfn], self.flags[pfn])

    def pmd_folio_info(self, int64_t block):
        """(refcount, entire_mapcount, flags) of the PMD-order folio filling a block."""
        if block < 0 or block >= self.nr_blocks:
            raise IndexError(f"block {block} out of range")
        return (self.pmd_folio[block].refcount, self.pmd_folio[block].entire_mapcount, self.pmd_folio[block].flags)

    # ---- pickling (mmemu._persist) ---------------------------------------------------------------
    # A machine pickles whole: frames, allocator, counters, shmem files and every process on it
    # (the rmap and shared pages tie them together), each process as plain data, so that loading
    # can check all of it before building anything. An MMCore pickles as a reference into its
    # machine (MMCore.__reduce__), so objects pickled together keep sharing one machine.

    def __reduce__(self):
        return (Machine, ((self.nr_blocks - 1) * <int64_t>PMD_SIZE,), self._getstate())

    def _getstate(self):
        cdef ShmemFile f
        P = _persist
        files = []
        for f in self.files.values():
            files.append({"fid": f.fid, "anonymous": f.anonymous, "fd_open": f.fd_open, "size": f.size,
                          "fallocend": f.fallocend, "pages": f._pages.copy()})
        return {
            "version": P.FORMAT_VERSION, "area": self.area._getstate(),
            "refcount": P.pack(self._refcount), "mapcount": P.pack(self._mapcount),
            "flags": P.pack(self._flags), "pmd_folio": P.pack(self._pmd_folio),
            "mthp_folio": P.pack(self._mthp_folio), "mthp_blocks": P.pack(self._mthp_blocks),
            "block_pinned": P.pack(self._block_pinned),
            "vmstat": self._vmstat.copy(), "mthp_stat": self._mthp_stat.copy(),
            "scalars": {
                "memcg_usage": self.memcg_usage, "memcg_max": self.memcg_max,
                "compact_considered": self.compact_considered, "compact_defer_shift": self.compact_defer_shift,
                "compact_order_failed": self.compact_order_failed, "nr_foreign": self.nr_foreign,
                "file_slots": self.file_slots, "next_fid": self.next_fid, "shmem_enabled": self.shmem_enabled,
                "folio_split_nonuniform": self.folio_split_nonuniform, "huge_zero_pfn": self.huge_zero_pfn,
                "huge_zero_users": self.huge_zero_users, "next_mm_id": self.next_mm_id,
                "next_khugepaged_seq": self.next_khugepaged_seq, "khugepaged_cursor_seq": self.khugepaged_cursor_seq,
                "khugepaged_cursor_addr": self.khugepaged_cursor_addr, "pages_collapsed": self.pages_collapsed,
                "full_scans": self.full_scans},
            "files": files,
            "mms": [(<MMCore>mm)._getstate() for mm in self.mms],
            "khugepaged_exited": [(<MMCore>mm)._getstate() for mm in self.khugepaged_exited],
        }

    def __setstate__(self, state):
        """Load a pickled state into this new Machine, after checking every array's dtype and
        size and every index the C code will trust (ValueError otherwise, with nothing
        changed)."""
        if self.mms or self.files or self.next_mm_id != 1 or self.memcg_usage or self.nr_foreign:
            raise RuntimeError("only a new Machine can take a pickled state")
        with _persist.guard("Machine"):
            _persist.check_version(state, "Machine")
            loaded = self._load(state)
        self._commit(loaded)

    def _load(self, dict state):
        """Every part of the state, checked and copied into arrays of this machine's sizes."""
        P = _persist
        cdef int64_t nr_frames = self.nr_frames, nr_blocks = self.nr_blocks
        d = {"refcount": P.unpack(state["refcount"], huge_zeros(nr_frames, np.int32), "Machine.refcount"),
             "mapcount": P.unpack(state["mapcount"], huge_zeros(nr_frames, np.int32), "Machine.mapcount"),
             "flags": P.unpack(state["flags"], huge_zeros(nr_frames, np.uint8), "Machine.flags"),
             "pmd_folio": P.unpack(state["pmd_folio"], np.zeros(nr_blocks * sizeof(folio_t), np.uint8),
                                   "Machine.pmd_folio"),
             "mthp_folio": P.unpack(state["mthp_folio"],
                                    huge_zeros((nr_frames >> 2) * sizeof(folio_t), np.uint8), "Machine.mthp_folio"),
             "mthp_blocks": P.unpack(state["mthp_blocks"], np.zeros(nr_blocks, np.uint8), "Machine.mthp_blocks"),
             "block_pinned": P.unpack(state["block_pinned"], np.zeros(nr_blocks, np.int32), "Machine.block_pinned"),
             "vmstat": P.dense(state["vmstat"], np.int64, NR_VMSTAT, "Machine.vmstat"),
             "mthp_stat": P.dense(state["mthp_stat"], np.int64, (MAX_FOLIO_ORDER + 1) * NR_MTHP_STAT,
                                  "Machine.mthp_stat")}
        d["scalars"] = s = self._load_scalars(state["scalars"])
        pmd_head, mthp_order = _check_folios(d["pmd_folio"], d["mthp_folio"], nr_blocks, state["mthp_folio"])
        hz = s["huge_zero_pfn"]
        if hz >= 0 and (hz & (HPAGE_PMD_NR - 1) or not pmd_head[hz >> HPAGE_PMD_ORDER]):
            P.fail("Machine", f"the huge zeropage {hz} is not a PMD-order folio")
        d["files"] = _load_files(state["files"], s, nr_frames, pmd_head, mthp_order, d["mthp_blocks"])
        fids = {f["fid"] for f in d["files"]}
        d["mms"] = [_load_core(c, nr_frames, pmd_head, fids, f"Machine.mms[{i}]")
                    for i, c in enumerate(state["mms"])]
        d["khugepaged_exited"] = [_load_core(c, nr_frames, pmd_head, fids, f"Machine.khugepaged_exited[{i}]")
                                  for i, c in enumerate(state["khugepaged_exited"])]
        _check_processes(d["mms"] + d["khugepaged_exited"], s)
        d["area"] = FreeArea(self.nr_frames, HPAGE_PMD_NR)
        d["area"].__setstate__(state["area"])
        return d

    def _load_scalars(self, s):
        """The machine's counters and knobs, each checked against the range its C use needs."""
        P = _persist
        i64 = lambda name, lo=-(1 << 63), hi=(1 << 63) - 1: P.integer(s[name], f"Machine.{name}", lo, hi)
        out = {"memcg_usage": i64("memcg_usage", 0), "memcg_max": i64("memcg_max", 0),
               "compact_considered": i64("compact_considered"),
               "compact_defer_shift": i64("compact_defer_shift", 0, COMPACT_MAX_DEFER_SHIFT),
               "compact_order_failed": i64("compact_order_failed", 0, 63),
               "nr_foreign": i64("nr_foreign", 0, self.nr_frames),
               "file_slots": i64("file_slots", 1, (1 << 31) - 1),
               "shmem_enabled": i64("shmem_enabled", SHMEM_HUGE_NEVER, SHMEM_HUGE_ADVISE),
               "folio_split_nonuniform": P.boolean(s["folio_split_nonuniform"], "Machine.folio_split_nonuniform"),
               "huge_zero_pfn": i64("huge_zero_pfn", -1, self.nr_frames - 1),
               "huge_zero_users": i64("huge_zero_users", 0),
               "next_mm_id": i64("next_mm_id", 1, (1 << 31) - 1),
               "next_khugepaged_seq": i64("next_khugepaged_seq", 1),
               "khugepaged_cursor_seq": i64("khugepaged_cursor_seq"),
               "khugepaged_cursor_addr": i64("khugepaged_cursor_addr", 0, (1 << 64) - 1),
               "pages_collapsed": i64("pages_collapsed"), "full_scans": i64("full_scans")}
        out["next_fid"] = i64("next_fid", 1, out["file_slots"])
        return out

    def _commit(self, dict d):
        """Install what _load checked (nothing here can fail but the host's memory)."""
        cdef ShmemFile f
        cdef MMCore core
        s = d["scalars"]
        self.area = d["area"]
        self._refcount, self._mapcount, self._flags = d["refcount"], d["mapcount"], d["flags"]
        self._pmd_folio, self._mthp_folio, self._mthp_blocks = d["pmd_folio"], d["mthp_folio"], d["mthp_blocks"]
        self._block_pinned, self._vmstat, self._mthp_stat = d["block_pinned"], d["vmstat"], d["mthp_stat"]
        self.bind_arrays()
        self.memcg_usage, self.memcg_max = s["memcg_usage"], s["memcg_max"]
        self.compact_considered = s["compact_considered"]
        self.compact_defer_shift, self.compact_order_failed = s["compact_defer_shift"], s["compact_order_failed"]
        self.nr_foreign = s["nr_foreign"]
        self.shmem_enabled, self.folio_split_nonuniform = s["shmem_enabled"], s["folio_split_nonuniform"]
        self.huge_zero_pfn, self.huge_zero_users = s["huge_zero_pfn"], s["huge_zero_users"]
        self.khugepaged_cursor_seq, self.khugepaged_cursor_addr = s["khugepaged_cursor_seq"], s["khugepaged_cursor_addr"]
        self.pages_collapsed, self.full_scans = s["pages_collapsed"], s["full_scans"]
        # the shmem files, and the C table of their page caches
        self.file_slots = 0
        self._grow_file_table(s["file_slots"])
        self.files = {}
        for rec in d["files"]:
            f = ShmemFile(rec["fid"], rec["anonymous"])
            f.fd_open, f.size, f._pages = rec["fd_open"], rec["size"], rec["pages"]
            f.fallocend = rec["fallocend"]
            f.pages = <int64_t *>cnp.PyArray_DATA(f._pages)
            self.files[f.fid] = f
            self.file_pages[f.fid] = f.pages
            self.file_size[f.fid] = f.size
        self.next_fid = s["next_fid"]
        # the processes: built on this machine (which registers them), then given their state
        lists = []
        for key in ("mms", "khugepaged_exited"):
            cores = []
            for rec in d[key]:
                core = MMCore(self, **rec["settings"])
                core._commit(rec)
                cores.append(core)
            lists.append(cores)
        self.mms, self.khugepaged_exited = lists
        self.next_mm_id = s["next_mm_id"]
        self.next_khugepaged_seq = s["next_khugepaged_seq"]

    def core_by_id(self, int32_t mm_id):
        """The process with this mm_id (on the rmap, or exited with khugepaged on it)."""
        for core in self.mms + self.khugepaged_exited:
            if (<MMCore>core).mm_id == mm_id:
                return core
        raise ValueError(f"no process with mm_id {mm_id} on this machine")

    def check_state(self):
        """Recount every reference to every frame from the page tables of every process and
        the shmem page caches, and compare with the refcounts, mapcounts and counters the
        engine keeps (MM.check). Returns a list of problems, one line each (empty: all holds).
        Reads only; see _InvariantChecker for what is checked and the conventions."""
        return _InvariantChecker(self).run()


# =============================================================================================
# MMCore: one process
# =============================================================================================

cdef class MMCore:
    """Page tables, VMAs and counters of one process over a Machine."""

    def __cinit__(self, Machine machine, *, bint thp_always, bint thp_madvise, bint use_zero_page,
                  bint zero_page, bint huge_zero_write_thp, bint pt_reclaim, bint arm64,
                  bint atomic_write_fault, bint reuse_large_folios=True, uint32_t mthp_always=0,
                  uint32_t mthp_madvise=0, int defrag=DEFRAG_MADVISE):
        cdef int level
        if (mthp_always | mthp_madvise) & ~(<uint32_t>0x1fc):
            raise ValueError("mTHP orders must be 2..8")
        if not DEFRAG_ALWAYS <= defrag <= DEFRAG_NEVER:
            raise ValueError(f"bad defrag mode {defrag}")
        self.machine = machine
        self.mthp_always = mthp_always
        self.mthp_madvise = mthp_madvise
        self.defrag = defrag
        self.thp_always = thp_always
        self.thp_madvise = thp_madvise
        self.use_zero_page = use_zero_page
        self.zero_page = zero_page
        self.huge_zero_write_thp = huge_zero_write_thp
        self.pt_reclaim = pt_reclaim
        self.arm64 = arm64
        self.atomic_write_fault = atomic_write_fault
        self.reuse_large_folios = reuse_large_folios
        self._pools = [None] * NR_LEVELS
        self._pool_free = [None] * NR_LEVELS
        for level in range(NR_LEVELS):
            self.pool_cap[level] = 0
            self.pool_used[level] = 0
            self.pool_nfree[level] = 0
            self._grow_pool(level, 1 if level == LVL_PGD else 16)
        self.pool_used[LVL_PGD] = 1        # the PGD itself, never freed, never counted
        self.vma_cap = 0
        self._grow_vmas(16)
        self.nr_vmas = 0
        self.vma_cache = -1
        self.next_anon_vma = 1
        self.tlb_flush()
        self.tlb_mask = 0
        self.tlb_perm = 0
        self.last_leaf = NULL
        machine.register_mm(self)

    # ---- table pools ------------------------------------------------------------------------

    cdef int _grow_pool(self, int level, int64_t new_cap) except -1:
        cdef cnp.ndarray table = huge_zeros(new_cap * PTRS_PER_TABLE, np.uint64)
        cdef cnp.ndarray free = np.zeros(new_cap, np.int32)
        if self.pool_cap[level]:
            memcpy(cnp.PyArray_DATA(table), self.pool[level],
                   self.pool_cap[level] * PTRS_PER_TABLE * sizeof(uint64_t))
            memcpy(cnp.PyArray_DATA(free), self.pool_free[level],
                   self.pool_cap[level] * sizeof(int32_t))
        self._pools[level] = table
        self._pool_free[level] = free
        self.tlb_flush()
        self.pool[level] = <uint64_t *>cnp.PyArray_DATA(table)
        self.pool_free[level] = <int32_t *>cnp.PyArray_DATA(free)
        self.pool_cap[level] = new_cap
        return 0

    cdef int32_t pool_alloc(self, int level) noexcept nogil:
        """A zeroed table of ``level``, counted as the kernel counts page-table pages; -1 if the
        host cannot grow the pool.  Growth moves the pool: callers re-read entry pointers of
        this level afterwards."""
        cdef int64_t index
        cdef int failed = 0
        if self.pool_nfree[level] > 0:
            self.pool_nfree[level] -= 1
            index = self.pool_free[level][self.pool_nfree[level]]
        else:
            if self.pool_used[level] == self.pool_cap[level]:
                with gil:
                    try:
                        self._grow_pool(level, self.pool_cap[level] * 2)
                    except BaseException:     # never hand out a table that is in use
                        failed = 1
                if failed:
                    return -1
            index = self.pool_used[level]
            self.pool_used[level] += 1
        self.count_table(level, 1)
        return <int32_t>index

    cdef inline void count_vm(self, int item, int64_t delta) noexcept nogil:
        cdef int64_t *vmstat = self.machine.vmstat
        vmstat[item] += delta

    cdef void count_table(self, int level, int delta) noexcept nogil:
        if level == LVL_PTE:
            self.nr_tables_pte += delta
        elif level == LVL_PMD:
            self.nr_tables_pmd += delta
        else:
            self.nr_tables_pud += delta
        self.count_vm(NR_PAGETABLE, delta)
        self.machine.memcg_usage += delta      # charged (__GFP_ACCOUNT), never refused

    cdef void pool_release(self, int level, int64_t index) noexcept nogil:
        memset(self.pool[level] + index * PTRS_PER_TABLE, 0, PTRS_PER_TABLE * sizeof(uint64_t))
        self.pool_free[level][self.pool_nfree[level]] = <int32_t>index
        self.pool_nfree[level] += 1
        self.count_table(level, -1)

    cdef void deposit(self, int delta) noexcept nogil:
        # The PTE table parked behind a PMD mapping (pgtable_trans_huge_deposit): counted,
        # never looked at until a split makes it the live table.
        self.nr_deposited += delta
        self.count_vm(NR_PAGETABLE, delta)
        self.machine.memcg_usage += delta

    # ---- the walk ------------------------------------------------------------------------------

    cdef uint64_t *pmd_entry(self, uint64_t addr) noexcept nogil:
        """The PMD entry for addr, or NULL when an upper table is missing."""
        cdef uint64_t e = self.pool[LVL_PGD][pgd_index(addr)]
        if not e:
            return NULL
        e = self.pool[LVL_PUD][entry_index(e) * PTRS_PER_TABLE + pud_index(addr)]
        if not e:
            return NULL
        return self.pool[LVL_PMD] + entry_index(e) * PTRS_PER_TABLE + pmd_index(addr)

    cdef uint64_t *table_alloc(self, int level, uint64_t *entryp) noexcept nogil:
        """The table of ``level`` an upper entry points to, allocated (and the entry set) if the
        entry is none; NULL if the host cannot grow the pool. Growing the pool of ``level``
        leaves entryp, which lies in the level above, where it is."""
        cdef int32_t index
        if not entryp[0]:
            index = self.pool_alloc(level)
            if index < 0:
                return NULL
            entryp[0] = mk_table_entry(index)
        return self.pool[level] + entry_index(entryp[0]) * PTRS_PER_TABLE

    cdef uint64_t *pmd_alloc(self, uint64_t addr) noexcept nogil:
        """The PMD entry for addr, allocating the PUD and PMD tables on the way down (R10)."""
        cdef uint64_t *pud = self.table_alloc(LVL_PUD, self.pool[LVL_PGD] + pgd_index(addr))
        cdef uint64_t *pmd
        if pud == NULL:
            return NULL
        pmd = self.table_alloc(LVL_PMD, pud + pud_index(addr))
        return NULL if pmd == NULL else pmd + pmd_index(addr)

    cdef uint64_t skip_hole(self, uint64_t addr) noexcept nogil:
        """Where a walk that found no PMD table for addr goes on: the next PUD or PGD span."""
        if not self.pool[LVL_PGD][pgd_index(addr)]:
            return (addr & ~(PGDIR_SIZE - 1)) + PGDIR_SIZE
        return (addr & ~(PUD_SIZE - 1)) + PUD_SIZE

    cdef uint64_t *pte_entry(self, uint64_t pmdval, uint64_t addr) noexcept nogil:
        return self.pool[LVL_PTE] + entry_index(pmdval) * PTRS_PER_TABLE + pte_index(addr)

    cdef inline void tlb_flush(self) noexcept nogil:
        """Forget every cached translation (flush_tlb_mm): the TLB entry and the cached PTE
        table.  Called whenever page tables change or move."""
        self.tlb_tag = TLB_INVALID
        self.pt_tag = TLB_INVALID

    cdef uint64_t walk(self, uint64_t addr, uint64_t need) noexcept nogil:
        """What the MMU does: find the leaf entry for addr; when it allows the access, set the
        accessed (and, for a write, dirty) bit and load the TLB.  Returns the leaf entry (0 if
        none).  Like a CPU's paging-structure cache, the last PTE table walked to is kept, so
        a walk within the same 2 MiB reads one entry."""
        cdef uint64_t *pmdp
        cdef uint64_t *leaf
        cdef uint64_t e, bits, span_mask = ~(PAGE_SIZE - 1)
        self.last_leaf_pmd = False
        if (addr & PMD_MASK) == self.pt_tag:
            leaf = self.pt_base + pte_index(addr)
        else:
            pmdp = self.pmd_entry(addr)
            if pmdp == NULL or not pmdp[0]:
                return 0
            e = pmdp[0]
            if e & _PAGE_PSE:
                leaf = pmdp
                span_mask = PMD_MASK
                self.last_leaf_pmd = True
            else:
                self.pt_base = self.pool[LVL_PTE] + entry_index(e) * PTRS_PER_TABLE
                self.pt_tag = addr & PMD_MASK
                leaf = self.pt_base + pte_index(addr)
        e = leaf[0]
        self.last_leaf = leaf
        if (e & need) == need:
            bits = _PAGE_ACCESSED | (_PAGE_DIRTY if need & _PAGE_RW else 0)
            if (e & bits) != bits:
                e |= bits
                leaf[0] = e
            self.tlb_tag = addr & span_mask
            self.tlb_mask = span_mask
            self.tlb_perm = tlb_perm_of(e)
        return e

    # ---- VMAs ---------------------------------------------------------------------------------

    cdef int _grow_vmas(self, int64_t new_cap) except -1:
        arrays = []
        for old, dtype in ((self._vm_start, np.uint64), (self._vm_end, np.uint64),
                           (self._vm_flags, np.uint32), (self._vm_anon, np.int32),
                           (self._vm_pgoff, np.uint64), (self._vm_file, np.int32)):
            new = np.zeros(new_cap, dtype)
            if old is not None:
                new[:self.nr_vmas] = old[:self.nr_vmas]
            arrays.append(new)
        self._vm_start, self._vm_end, self._vm_flags, self._vm_anon, self._vm_pgoff, self._vm_file = arrays
        self.vm_file = <int32_t *>cnp.PyArray_DATA(self._vm_file)
        self.vm_start = <uint64_t *>cnp.PyArray_DATA(self._vm_start)
        self.vm_end = <uint64_t *>cnp.PyArray_DATA(self._vm_end)
        self.vm_flags = <uint32_t *>cnp.PyArray_DATA(self._vm_flags)
        self.vm_anon_vma = <int32_t *>cnp.PyArray_DATA(self._vm_anon)
        self.vm_pgoff = <uint64_t *>cnp.PyArray_DATA(self._vm_pgoff)
        self.vma_cap = new_cap
        return 0

    cdef int64_t find_vma(self, uint64_t addr) noexcept nogil:
        """Index of the VMA containing addr, or -1."""
        cdef int64_t lo = 0, hi = self.nr_vmas, mid
        cdef int64_t c = self.vma_cache
        if 0 <= c < self.nr_vmas and self.vm_start[c] <= addr < self.vm_end[c]:
            return c
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.vm_end[mid] <= addr:
                lo = mid + 1
            else:
                hi = mid
        if lo < self.nr_vmas and self.vm_start[lo] <= addr:
            self.vma_cache = lo
            return lo
        return -1

    cdef int64_t vma_lower_bound(self, uint64_t addr) noexcept nogil:
        """Index of the first VMA ending above addr (nr_vmas if none)."""
        cdef int64_t lo = 0, hi = self.nr_vmas, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.vm_end[mid] <= addr:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef bint thp_allowed(self, uint32_t vm_flags) noexcept nogil:
        """thp_vma_allowable_order(PMD_ORDER) for a fault or smaps (R19, R20): the sysfs modes,
        then the vetoes VM_NOHUGEPAGE and prctl(PR_SET_THP_DISABLE)."""
        if vm_flags & VM_NOHUGEPAGE or self.thp_disable == THP_DISABLE_COMPLETELY:
            return False
        if self.thp_disable == THP_DISABLE_EXCEPT_ADVISED and not (vm_flags & VM_HUGEPAGE):
            return False
        return self.thp_always or (self.thp_madvise and (vm_flags & VM_HUGEPAGE) != 0)

    cdef bint thp_direct_compact(self, uint32_t vm_flags) noexcept nogil:
        """vma_thp_gfp_mask: whether a fault's THP/mTHP allocation may compact (R23)."""
        if self.defrag == DEFRAG_ALWAYS:
            return True
        if self.defrag == DEFRAG_MADVISE or self.defrag == DEFRAG_DEFER_MADVISE:
            return (vm_flags & VM_HUGEPAGE) != 0
        return False

    cdef int64_t alloc_anon_page(self) noexcept nogil:
        """An order-0 page for an anonymous fault, charged; -1: out of memory (RAM or memcg)."""
        cdef int64_t pfn
        if not self.machine.try_charge(1):
            return -1
        pfn = self.machine.alloc_page()
        if pfn < 0:
            self.machine.uncharge(1)
        return pfn

    def mthp_orders_for(self, uint32_t vm_flags):
        """The orders below 9 a fault may use in a VMA with these flags (a bitmask)."""
        return self.mthp_orders(vm_flags)

    def thp_allowed_for(self, uint32_t vm_flags):
        """Whether order 9 is allowed for a VMA with these flags (smaps THPeligible)."""
        return self.thp_allowed(vm_flags)

    def set_thp_disable(self, int mode):
        """prctl(PR_SET_THP_DISABLE): 0, THP_DISABLE_COMPLETELY or THP_DISABLE_EXCEPT_ADVISED.
        Takes effect at the next fault; existing mappings stay as they are (R24)."""
        if mode not in (0, THP_DISABLE_COMPLETELY, THP_DISABLE_EXCEPT_ADVISED):
            raise ValueError(f"bad THP disable mode {mode}")
        self.thp_disable = mode

    cdef bint anon_vma_compatible(self, int64_t a, int64_t b) noexcept nogil:
        # mm/vma.c: anon_vma_compatible
        return (self.vm_end[a] == self.vm_start[b]
                and ((self.vm_flags[a] ^ self.vm_flags[b]) & ~(<uint32_t>VM_ACCESS_FLAGS)) == 0
                and self.vm_pgoff[b] == self.vm_pgoff[a] + ((self.vm_end[a] - self.vm_start[a]) >> PAGE_SHIFT))

    cdef void khugepaged_enter(self) noexcept nogil:
        """__khugepaged_enter: put the mm on khugepaged's list (R18), once."""
        if not self.khugepaged_seq:
            self.khugepaged_seq = self.machine.next_khugepaged_seq
            self.machine.next_khugepaged_seq += 1

    def khugepaged_register(self):
        self.khugepaged_enter()

    def khugepaged_forget(self):
        self.khugepaged_seq = 0

    cdef int64_t folio_index_at(self, int64_t vma, uint64_t addr) noexcept nogil:
        """linear_page_index: the page offset the anon rmap finds addr's page at."""
        return <int64_t>(self.vm_pgoff[vma] + ((addr - self.vm_start[vma]) >> PAGE_SHIFT))

    cdef void anon_vma_prepare(self, int64_t vma) noexcept nogil:
        """mm/rmap.c: __anon_vma_prepare, reusing a neighbour's anon_vma where the kernel would
        (find_mergeable_anon_vma: the next VMA first, then the previous one)."""
        if self.vm_anon_vma[vma]:
            return
        if vma + 1 < self.nr_vmas and self.vm_anon_vma[vma + 1] and self.anon_vma_compatible(vma, vma + 1):
            self.vm_anon_vma[vma] = self.vm_anon_vma[vma + 1]
        elif vma > 0 and self.vm_anon_vma[vma - 1] and self.anon_vma_compatible(vma - 1, vma):
            self.vm_anon_vma[vma] = self.vm_anon_vma[vma - 1]
        else:
            self.vm_anon_vma[vma] = self.next_anon_vma
            self.next_anon_vma += 1

    # ---- frames as the rmap sees them ------------------------------------------------------

    cdef void new_anon_page(self, int64_t pfn) noexcept nogil:
        # folio_add_new_anon_rmap: a fresh page is mapped once and exclusive (R37)
        self.machine.refcount[pfn] = 1
        self.machine.mapcount[pfn] = 1
        self.machine.flags[pfn] = PG_ANON | PG_ANON_EXCLUSIVE
        self.rss_anon += 1
        self.count_vm(NR_ANON_MAPPED, 1)

    cdef void remove_anon_pte(self, int64_t pfn) noexcept nogil:
        """Drop one PTE mapping of an anonymous page (folio_remove_rmap_pte + folio_put). A
        large folio that keeps other mappings but has a subpage mapped nowhere now is
        partially mapped (R50)."""
        cdef folio_t *folio = self.machine.folio_of(pfn)
        if folio != NULL:
            self.remove_anon_ptes(folio, pfn, 1)
            return
        self.machine.mapcount[pfn] = self.machine.mapcount[pfn] - 1
        self.machine.refcount[pfn] = self.machine.refcount[pfn] - 1
        self.rss_anon -= 1
        if self.machine.mapcount[pfn] == 0:
            self.count_vm(NR_ANON_MAPPED, -1)
        if self.machine.refcount[pfn] == 0:
            self.machine.free_page(pfn)

    cdef void remove_anon_ptes(self, folio_t *folio, int64_t pfn, int64_t nr) noexcept nogil:
        """folio_remove_rmap_ptes: drop nr PTE mappings of consecutive pages of one large
        folio at once; the folio is partially mapped if some of them are mapped nowhere now
        while it keeps other mappings (R50, R58)."""
        cdef int64_t k
        cdef bint unmapped = False
        for k in range(pfn, pfn + nr):
            self.machine.mapcount[k] = self.machine.mapcount[k] - 1
            if self.machine.mapcount[k] == 0 and folio.entire_mapcount == 0:
                self.count_vm(NR_ANON_MAPPED, -1)
                unmapped = True
        folio.refcount = folio.refcount - <int32_t>nr
        self.machine.folio_mm_sub(folio, self.mm_id, <int32_t>nr)
        self.rss_anon -= nr
        if folio.refcount == 0:
            self.machine.free_large_folio(folio)
        elif unmapped:
            self.machine.deferred_split_folio(folio, True)

    cdef void page_dup_pte(self, int64_t pfn) noexcept nogil:
        """One more PTE mapping of a mapped page, in this process (fork's copy): shared now."""
        cdef folio_t *folio = self.machine.folio_of(pfn)
        self.machine.mapcount[pfn] = self.machine.mapcount[pfn] + 1
        self.machine.flags[pfn] = self.machine.flags[pfn] & (~PG_ANON_EXCLUSIVE)
        if folio != NULL:
            folio.refcount = folio.refcount + 1
            self.machine.folio_mm_add(folio, self.mm_id, 1)
        else:
            self.machine.refcount[pfn] = self.machine.refcount[pfn] + 1
        self.rss_anon += 1

    cdef void zap_pmd_mapping(self, int64_t block) noexcept nogil:
        """Drop this process's PMD mapping of a THP (zap_huge_pmd's rmap side)."""
        cdef folio_t *folio = &self.machine.pmd_folio[block]
        cdef int64_t head = block * HPAGE_PMD_NR, unmapped = 0
        cdef int i
        folio.entire_mapcount = folio.entire_mapcount - 1
        folio.refcount = folio.refcount - 1
        self.machine.folio_mm_sub(folio, self.mm_id, 1)
        self.rss_anon -= HPAGE_PMD_NR
        if folio.entire_mapcount == 0:
            self.count_vm(NR_ANON_THPS, -1)
            if folio.refcount == 0:
                unmapped = HPAGE_PMD_NR
            else:
                for i in range(HPAGE_PMD_NR):
                    if self.machine.mapcount[head + i] == 0:
                        unmapped += 1
            self.count_vm(NR_ANON_MAPPED, -unmapped)
            if 0 < unmapped and folio.refcount > 0:
                self.machine.deferred_split_folio(folio, True)
        if folio.refcount == 0:
            self.machine.free_large_folio(folio)

    cdef void mark_written(self, uint64_t addr) noexcept nogil:
        """The store of an access completed on the leaf of the last walk: mark the page's
        contents written, and let the TLB cache write permission from now on (a PMD whose
        subpages are not all written is cached for write 4K at a time)."""
        cdef uint64_t *leaf = self.last_leaf
        cdef uint64_t e = leaf[0]
        cdef int64_t pfn = <int64_t>entry_index(e)
        if e & _PAGE_WRITTEN:          # recorded already (for a PMD: every subpage)
            return
        if self.last_leaf_pmd:
            pfn += pte_index(addr)
            self.machine.folio_mark_written(pfn)
            if self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER].flags & PG_WRITTEN:
                leaf[0] = e | _PAGE_WRITTEN
                self.tlb_perm = tlb_perm_of(leaf[0])
            else:
                self.tlb_tag = addr & ~(PAGE_SIZE - 1)
                self.tlb_mask = ~(PAGE_SIZE - 1)
                self.tlb_perm = NEED_WRITE
        else:
            self.machine.folio_mark_written(pfn)
            leaf[0] = e | _PAGE_WRITTEN
            self.tlb_perm = tlb_perm_of(leaf[0])

    cdef void map_anon_folio_pmd(self, int64_t vma, uint64_t haddr, uint64_t *pmdp, int64_t pfn) noexcept nogil:
        """mm/huge_memory.c: map_anon_folio_pmd for a THP just allocated for a fault (R38);
        it goes on the deferred-split queue uncounted (R55)."""
        cdef uint64_t e = (<uint64_t>pfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_USER | _PAGE_PSE \
            | _PAGE_ACCESSED | _PAGE_DIRTY
        if self.vm_flags[vma] & VM_WRITE:
            e |= _PAGE_RW
        # A PMD-order folio is described per block (as the kernel keeps it in the folio, not
        # in 512 struct pages), so a THP fault touches no per-frame metadata.
        cdef folio_t *folio = &self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER]
        folio.flags = PG_ANON | PG_HEAD | PG_ANON_EXCLUSIVE | PG_DEFERRED
        folio.order = HPAGE_PMD_ORDER
        folio.refcount = 1
        folio.entire_mapcount = 1
        folio.index = self.folio_index_at(vma, haddr)
        self.machine.folio_mm_add(folio, self.mm_id, 1)
        pmdp[0] = e
        self.rss_anon += HPAGE_PMD_NR
        self.count_vm(NR_ANON_MAPPED, HPAGE_PMD_NR)
        self.count_vm(NR_ANON_THPS, 1)
        self.count_vm(THP_FAULT_ALLOC, 1)
        self.machine.count_mthp(HPAGE_PMD_ORDER, MTHP_ANON_FAULT_ALLOC, 1)
        self.machine.count_mthp(HPAGE_PMD_ORDER, MTHP_NR_ANON, 1)

    cdef int64_t alloc_anon_folio_pmd(self, int64_t vma) noexcept nogil:
        """vma_alloc_anon_folio_pmd: a charged THP, or -1 with the fallback counted (R38)."""
        cdef int64_t pfn = self.machine.alloc_pmd_folio(self.thp_direct_compact(self.vm_flags[vma]))
        if pfn >= 0 and not self.machine.try_charge(HPAGE_PMD_NR):
            self.machine.free_frames(pfn, HPAGE_PMD_ORDER)
            self.count_vm(THP_FAULT_FALLBACK_CHARGE, 1)
            self.machine.count_mthp(HPAGE_PMD_ORDER, MTHP_ANON_FAULT_FALLBACK_CHARGE, 1)
            pfn = -1
        if pfn < 0:
            self.count_vm(THP_FAULT_FALLBACK, 1)
            self.machine.count_mthp(HPAGE_PMD_ORDER, MTHP_ANON_FAULT_FALLBACK, 1)
        return pfn

    # ---- the fault path (mm/memory.c) ------------------------------------------------------

    cdef int handle_mm_fault(self, int64_t vma, uint64_t addr, bint write) noexcept nogil:
        """Handle one fault and account it (mm_account_fault, R1)."""
        cdef int ret
        # A fault changes entries but frees no table (a pool that grows flushes its own cache),
        # so only the TLB entry is dropped; the cached PTE table stays valid.
        self.tlb_tag = TLB_INVALID
        self.count_vm(PGFAULT, 1)
        ret = self._handle_mm_fault(vma, addr, write)
        if ret & VM_FAULT_NOTIMPL:
            self.count_vm(PGFAULT, -1)   # nothing happened: do not count it
        elif not ret:
            self.min_flt += 1
        return ret

    cdef int _handle_mm_fault(self, int64_t vma, uint64_t addr, bint write) noexcept nogil:
        cdef uint64_t *pmdp = self.pmd_alloc(addr)
        cdef uint64_t pmd
        cdef int ret
        if pmdp == NULL:
            return VM_FAULT_HOSTMEM
        if self.vm_file[vma]:
            return self.handle_shmem_fault(vma, addr, pmdp, write)
        pmd = pmdp[0]
        if not pmd:
            if self.thp_allowed(self.vm_flags[vma]):
                ret = self.do_huge_pmd_anonymous_page(vma, addr, pmdp, write)
                if not (ret & VM_FAULT_FALLBACK):
                    return ret
        elif pmd & _PAGE_PSE:
            if write and not (pmd & _PAGE_RW):
                ret = self.do_huge_pmd_wp_page(vma, addr, pmdp)
                if not (ret & VM_FAULT_FALLBACK):
                    return ret
            else:
                # huge_pmd_set_accessed: a spurious fault
                pmdp[0] = pmd | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
                return VM_FAULT_OK
        return self.handle_pte_fault(vma, addr, pmdp, write)

    cdef int do_huge_pmd_anonymous_page(self, int64_t vma, uint64_t addr, uint64_t *pmdp,
                                        bint write) noexcept nogil:
        """A fault on a none PMD where order 9 is allowed (R33, R34, R38)."""
        cdef uint64_t haddr = addr & PMD_MASK
        cdef int64_t pfn
        if haddr < self.vm_start[vma] or haddr + PMD_SIZE > self.vm_end[vma]:
            return VM_FAULT_FALLBACK       # thp_vma_suitable_order (R21)
        self.anon_vma_prepare(vma)         # R17: even for the huge zeropage
        self.khugepaged_enter_vma(vma)     # R18
        if not write and self.zero_page and self.use_zero_page:
            pfn = self.machine.get_huge_zero_folio()
            if pfn < 0:
                self.count_vm(THP_FAULT_FALLBACK, 1)
                return VM_FAULT_FALLBACK
            if not self.holds_huge_zero:   # mm_get_huge_zero_folio: one reference per mm
                self.holds_huge_zero = True
                self.machine.huge_zero_users += 1
            self.deposit(1)
            pmdp[0] = (<uint64_t>pfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_USER | _PAGE_PSE \
                | _PAGE_ACCESSED
            return VM_FAULT_OK
        pfn = self.alloc_anon_folio_pmd(vma)
        if pfn < 0:
            return VM_FAULT_FALLBACK
        self.deposit(1)
        self.map_anon_folio_pmd(vma, haddr, pmdp, pfn)
        return VM_FAULT_OK

    cdef int do_huge_pmd_wp_page(self, int64_t vma, uint64_t addr, uint64_t *pmdp) noexcept nogil:
        """A write to a read-only PMD mapping (R41-R44)."""
        cdef uint64_t e = pmdp[0]
        cdef int64_t pfn = <int64_t>entry_index(e)
        cdef int ret
        if pfn == self.machine.huge_zero_pfn:
            if self.huge_zero_write_thp:
                ret = self.do_huge_zero_wp_pmd(vma, addr, pmdp)
                if not (ret & VM_FAULT_FALLBACK):
                    return ret
            ret = self.split_huge_zero_pmd(pmdp)       # R42, R43
            return ret if ret else VM_FAULT_FALLBACK
        cdef folio_t *folio = &self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER]
        if (folio.flags & PG_ANON_EXCLUSIVE) or folio.refcount == 1:
            folio.flags = folio.flags | PG_ANON_EXCLUSIVE       # reuse (R44)
            pmdp[0] = e | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
            return VM_FAULT_OK
        # shared: split this process's PMD, then copy the one 4K page at PTE level (R44)
        ret = self.split_huge_pmd(pmdp)
        return ret if ret else VM_FAULT_FALLBACK

    cdef int do_huge_zero_wp_pmd(self, int64_t vma, uint64_t addr, uint64_t *pmdp) noexcept nogil:
        """6.13+: replace the huge zeropage by a new THP, keeping the deposit; no eligibility
        re-check (R41)."""
        cdef int64_t pfn = self.alloc_anon_folio_pmd(vma)
        if pfn < 0:
            return VM_FAULT_FALLBACK
        self.map_anon_folio_pmd(vma, addr & PMD_MASK, pmdp, pfn)
        return VM_FAULT_OK

    cdef int split_huge_zero_pmd(self, uint64_t *pmdp) noexcept nogil:
        """__split_huge_zero_page_pmd: the deposit becomes a table of 512 zeropage PTEs (R48)."""
        cdef uint64_t e = pmdp[0]
        cdef uint64_t zero = ZERO_PTE & ~(<uint64_t>_PAGE_USER) | (e & _PAGE_USER)
        cdef int32_t index = self.pool_alloc(LVL_PTE)
        cdef uint64_t *pte
        cdef int i
        if index < 0:
            return VM_FAULT_HOSTMEM
        self.deposit(-1)
        pte = self.pool[LVL_PTE] + <int64_t>index * PTRS_PER_TABLE
        for i in range(PTRS_PER_TABLE):
            pte[i] = zero
        pmdp[0] = mk_table_entry(index)
        self.count_vm(THP_SPLIT_PMD, 1)
        self.tlb_flush()
        return VM_FAULT_OK

    cdef int split_huge_pmd(self, uint64_t *pmdp) noexcept nogil:
        """__split_huge_pmd_locked for this process's PMD mapping of a THP or the huge zeropage:
        the deposit becomes the live table of 512 PTEs with the PMD's bits (R47, R48)."""
        cdef uint64_t e = pmdp[0]
        cdef int64_t pfn = <int64_t>entry_index(e)
        cdef folio_t *folio = &self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER]
        cdef uint64_t bits = e & (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED
                                  | _PAGE_DIRTY | _PAGE_WRITTEN)
        cdef bint exclusive = (folio.flags & PG_ANON_EXCLUSIVE) != 0
        cdef int32_t index
        cdef uint64_t *pte
        cdef int i
        if pfn == self.machine.huge_zero_pfn:
            return self.split_huge_zero_pmd(pmdp)
        if self.machine.page_is_shmem(pfn, folio):
            # __split_huge_pmd_locked of a file PMD: cleared, the pages fault back in
            self.zap_shmem_pmd(pmdp)
            self.count_vm(THP_SPLIT_PMD, 1)
            self.tlb_flush()
            return VM_FAULT_OK
        index = self.pool_alloc(LVL_PTE)
        if index < 0:
            return VM_FAULT_HOSTMEM
        self.deposit(-1)
        pte = self.pool[LVL_PTE] + <int64_t>index * PTRS_PER_TABLE
        for i in range(PTRS_PER_TABLE):
            pte[i] = (<uint64_t>(pfn + i) << PAGE_SHIFT) | bits
            self.machine.mapcount[pfn + i] = self.machine.mapcount[pfn + i] + 1
            if exclusive:
                self.machine.flags[pfn + i] = self.machine.flags[pfn + i] | PG_ANON_EXCLUSIVE
        pmdp[0] = mk_table_entry(index)
        folio.entire_mapcount = folio.entire_mapcount - 1
        folio.refcount = folio.refcount + (HPAGE_PMD_NR - 1)
        self.machine.folio_mm_add(folio, self.mm_id, HPAGE_PMD_NR - 1)
        if folio.entire_mapcount == 0:
            self.count_vm(NR_ANON_THPS, -1)
            folio.flags = folio.flags & (~PG_ANON_EXCLUSIVE)
        self.count_vm(THP_SPLIT_PMD, 1)
        self.tlb_flush()
        return VM_FAULT_OK

    cdef int split_pmd_at(self, uint64_t addr) noexcept nogil:
        """Split a PMD mapping that covers addr without starting there (a cut at addr)."""
        cdef uint64_t *pmdp
        if addr & ~PMD_MASK == 0 or addr >= USER_TOP:
            return 0
        pmdp = self.pmd_entry(addr)
        if pmdp != NULL and pmdp[0] & _PAGE_PSE:
            return self.split_huge_pmd(pmdp)
        return 0

    cdef uint64_t *pte_alloc(self, uint64_t *pmdp) noexcept nogil:
        """The PTE table under a PMD entry, allocated if the entry is none (NULL: host OOM)."""
        return self.table_alloc(LVL_PTE, pmdp)

    cdef int handle_pte_fault(self, int64_t vma, uint64_t addr, uint64_t *pmdp, bint write) noexcept nogil:
        cdef uint64_t *ptep
        cdef uint64_t pte
        if not pmdp[0]:
            return self.do_anonymous_page(vma, addr, pmdp, write)
        ptep = self.pte_entry(pmdp[0], addr)
        pte = ptep[0]
        if not pte:
            return self.do_anonymous_page(vma, addr, pmdp, write)
        if write and not (pte & _PAGE_RW):
            return self.do_wp_page(vma, addr, ptep)
        ptep[0] = pte | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
        return VM_FAULT_OK

    cdef int do_anonymous_page(self, int64_t vma, uint64_t addr, uint64_t *pmdp, bint write) noexcept nogil:
        """A fault on a none PTE: the zeropage for a read, a new page or mTHP for a write (R30,
        R35, R36)."""
        cdef uint64_t *ptep
        cdef uint64_t e
        cdef int64_t pfn
        cdef int order = 0
        if self.pte_alloc(pmdp) == NULL:      # pte_alloc, before anything else
            return VM_FAULT_HOSTMEM
        ptep = self.pte_entry(pmdp[0], addr)
        if not write and self.zero_page:
            ptep[0] = ZERO_PTE
            return VM_FAULT_OK
        self.anon_vma_prepare(vma)
        pfn = self.alloc_anon_folio(vma, addr, self.pte_entry(pmdp[0], 0), &order)
        if pfn < 0:
            return VM_FAULT_OOM
        if order:
            self.map_anon_folio_pte(vma, addr & ~((PAGE_SIZE << order) - 1), pmdp, pfn, order)
            return VM_FAULT_OK
        e = (<uint64_t>pfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
        if self.vm_flags[vma] & VM_WRITE:
            e |= _PAGE_RW | _PAGE_DIRTY
        self.new_anon_page(pfn)
        ptep[0] = e
        return VM_FAULT_OK

    cdef uint32_t mthp_orders(self, uint32_t vm_flags) noexcept nogil:
        """thp_vma_allowable_orders for the orders below PMD order at fault time (R19, R20)."""
        if vm_flags & VM_NOHUGEPAGE or self.thp_disable == THP_DISABLE_COMPLETELY:
            return 0
        if vm_flags & VM_HUGEPAGE:
            return self.mthp_always | self.mthp_madvise
        if self.thp_disable == THP_DISABLE_EXCEPT_ADVISED:
            return 0
        return self.mthp_always

    cdef int64_t alloc_anon_folio(self, int64_t vma, uint64_t addr, uint64_t *pte,
                                  int *order_out) noexcept nogil:
        """mm/memory.c: alloc_anon_folio (R36). The highest enabled order whose aligned block
        lies in the VMA and has only none PTEs (pte is the PTE table of addr's 2 MiB), then
        lower orders as allocation or charge fails; else one 4K page (-1: out of memory)."""
        cdef uint32_t orders = self.mthp_orders(self.vm_flags[vma])
        cdef uint64_t start
        cdef int64_t pfn
        cdef int order
        order_out[0] = 0
        if not orders:
            return self.alloc_anon_page()
        for order in range(HPAGE_PMD_ORDER - 1, MIN_MTHP_ORDER - 1, -1):
            if not (orders >> order) & 1:
                continue
            start = addr & ~((PAGE_SIZE << order) - 1)
            if start < self.vm_start[vma] or start + (PAGE_SIZE << order) > self.vm_end[vma] \
                    or not ptes_none(pte + pte_index(start), (<int64_t>1) << order):
                continue                      # thp_vma_suitable_order, pte_range_none
            pfn = self.machine.alloc_pages(order, self.thp_direct_compact(self.vm_flags[vma]))
            if pfn >= 0 and not self.machine.try_charge((<int64_t>1) << order):
                self.machine.free_frames(pfn, order)
                self.machine.count_mthp(order, MTHP_ANON_FAULT_FALLBACK_CHARGE, 1)
                pfn = -1
            if pfn >= 0:
                order_out[0] = order
                return pfn
            self.machine.count_mthp(order, MTHP_ANON_FAULT_FALLBACK, 1)
        order_out[0] = 0
        return self.alloc_anon_page()

    cdef void map_anon_folio_pte(self, int64_t vma, uint64_t start, uint64_t *pmdp, int64_t pfn,
                                 int order) noexcept nogil:
        """do_anonymous_page's tail for an mTHP: folio_add_new_anon_rmap(RMAP_EXCLUSIVE), then
        set_ptes of all its pages, young, dirty and writable (R36, R37)."""
        cdef int64_t nr = (<int64_t>1) << order, k
        cdef uint64_t *ptep = self.pte_entry(pmdp[0], start)
        cdef uint64_t e = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
        cdef folio_t *folio = self.machine.new_mthp(pfn, order)
        if self.vm_flags[vma] & VM_WRITE:
            e |= _PAGE_RW | _PAGE_DIRTY
        folio.flags = PG_ANON
        folio.refcount = <int32_t>nr
        folio.index = self.folio_index_at(vma, start)
        self.machine.folio_mm_add(folio, self.mm_id, <int32_t>nr)
        for k in range(nr):
            self.machine.mapcount[pfn + k] = 1
            self.machine.flags[pfn + k] = PG_ANON | PG_ANON_EXCLUSIVE
            ptep[k] = (<uint64_t>(pfn + k) << PAGE_SHIFT) | e
        self.rss_anon += nr
        self.count_vm(NR_ANON_MAPPED, nr)
        self.machine.count_mthp(order, MTHP_ANON_FAULT_ALLOC, 1)
        self.machine.count_mthp(order, MTHP_NR_ANON, 1)

    cdef int do_wp_page(self, int64_t vma, uint64_t addr, uint64_t *ptep) noexcept nogil:
        """A write to a read-only PTE: copy the zeropage, reuse an exclusive page (R39, R40)."""
        cdef uint64_t pte = ptep[0]
        cdef int64_t pfn = <int64_t>entry_index(pte)
        cdef folio_t *folio
        if pte & _PAGE_SPECIAL:
            return self.wp_page_copy(vma, ptep, -1)
        folio = self.machine.folio_of(pfn)
        if folio != NULL:
            # R40: exclusive, or (6.15+) a large folio all of whose mappings are this
            # process's (__wp_can_reuse_large_anon_folio; a folio mapped once is copied to
            # free it); else a 4K copy
            if (self.machine.flags[pfn] & PG_ANON_EXCLUSIVE) or (
                    self.reuse_large_folios and folio.refcount > 1
                    and not self.machine.folio_maybe_mapped_shared(folio)):
                self.machine.flags[pfn] = self.machine.flags[pfn] | PG_ANON_EXCLUSIVE
                ptep[0] = pte | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
                return VM_FAULT_OK
            return self.wp_page_copy(vma, ptep, pfn)
        if (self.machine.flags[pfn] & PG_ANON_EXCLUSIVE) or self.machine.refcount[pfn] == 1:
            self.machine.flags[pfn] = self.machine.flags[pfn] | PG_ANON_EXCLUSIVE   # wp_page_reuse
            ptep[0] = pte | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
            return VM_FAULT_OK
        return self.wp_page_copy(vma, ptep, pfn)

    cdef int wp_page_copy(self, int64_t vma, uint64_t *ptep, int64_t old_pfn) noexcept nogil:
        """A new page replacing the zeropage (zero-filled) or a shared page (copied)."""
        cdef int64_t pfn
        self.anon_vma_prepare(vma)
        pfn = self.alloc_anon_page()
        if pfn < 0:
            return VM_FAULT_OOM
        self.new_anon_page(pfn)
        ptep[0] = (<uint64_t>pfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_USER | _PAGE_RW \
            | _PAGE_ACCESSED | _PAGE_DIRTY
        if old_pfn >= 0:
            # the copy holds what the old page held
            self.machine.flags[pfn] = self.machine.flags[pfn] | (self.machine.flags[old_pfn] & PG_WRITTEN)
            self.remove_anon_pte(old_pfn)
        return VM_FAULT_OK

    # ---- shared memory: do_read_fault / do_shared_fault over shmem_fault (mm/memory.c,
    # ---- mm/filemap.c, mm/shmem.c)

    cdef int handle_shmem_fault(self, int64_t vma, uint64_t addr, uint64_t *pmdp, bint write) noexcept nogil:
        """A fault in a shared mapping: find the page in the shmem file's page cache (a read
        first maps what is cached around it: fault-around), allocate it if missing (a read
        too: there is no zeropage here), and map it: a THP by its PMD where it fits, else PTEs."""
        cdef int32_t fid = self.vm_file[vma]
        cdef int64_t index, pfn, head, nr
        cdef uint64_t pmd = pmdp[0]
        cdef uint64_t *pte
        cdef folio_t *folio
        cdef int ret
        cdef bint prealloc
        addr &= ~(<uint64_t>PAGE_SIZE - 1)         # vmf->address: where the folio's pages go
        index = self.folio_index_at(vma, addr)
        if index >= self.machine.file_size[fid]:
            return VM_FAULT_SIGBUS
        if pmd & _PAGE_PSE:
            if not write or (pmd & _PAGE_RW):
                pmdp[0] = pmd | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)   # spurious
                return VM_FAULT_OK
            # wp_huge_pmd: shmem has no huge_fault, so the PMD is split (cleared) and the
            # fault goes on at PTE level, where finish_fault maps the folio again
            self.zap_shmem_pmd(pmdp)
            self.count_vm(THP_SPLIT_PMD, 1)
            self.tlb_flush()
        elif pmd:
            pte = self.pte_entry(pmd, addr)
            if pte[0]:
                if write and not (pte[0] & _PAGE_RW):
                    pte[0] = pte[0] | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED    # wp_page_shared
                    self.machine.shmem_folio_dirty(<int64_t>entry_index(pte[0]))  # fault_dirty_shared_page
                else:
                    pte[0] = pte[0] | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
                return VM_FAULT_OK
        if not write:
            ret = self.shmem_fault_around(vma, addr, pmdp)
            if ret:
                return ret
            if pmdp[0] & _PAGE_PSE or (pmdp[0] and self.pte_entry(pmdp[0], addr)[0]):
                return VM_FAULT_OK             # VM_FAULT_NOPAGE: fault-around mapped it
        pfn = self.machine.file_pages[fid][index]
        if not pfn:
            # __do_fault preallocates (and charges) the PTE table if the PMD is none, before
            # ->fault; it is freed again unless used: the page is charged on top of it
            prealloc = not pmdp[0]
            self.machine.memcg_usage += prealloc
            pfn = self.machine.shmem_alloc_folio(fid, index, self.shmem_huge_allowed(vma, addr, index),
                                                 self.thp_direct_compact(self.vm_flags[vma]))
            self.machine.memcg_usage -= prealloc
            if pfn < 0:
                return VM_FAULT_OOM
        folio = self.machine.folio_of(pfn)
        if self.machine.flags[pfn] & PG_FALLOCATED:
            self.machine.shmem_mark_uptodate(pfn, folio)      # shmem_get_folio: cleared now
        # finish_fault
        if not pmdp[0] and self.shmem_pmd_mappable(vma, addr, folio):
            self.shmem_map_pmd(vma, pmdp, self.machine.folio_pfn(folio), write)
            return VM_FAULT_OK
        if self.pte_alloc(pmdp) == NULL:
            return VM_FAULT_HOSTMEM
        pte = self.pte_entry(pmdp[0], addr)
        if folio != NULL:
            head = self.machine.folio_pfn(folio)
            nr = (<int64_t>1) << folio.order
            if self.folio_fits(vma, addr - (<uint64_t>(pfn - head) << PAGE_SHIFT), nr) \
                    and ptes_none(pte - (pfn - head), nr):
                self.shmem_map_ptes(vma, pte - (pfn - head), head, nr, write)    # the whole folio
                return VM_FAULT_OK
        self.shmem_map_ptes(vma, pte, pfn, 1, write)
        return VM_FAULT_OK

    cdef bint folio_fits(self, int64_t vma, uint64_t start, int64_t nr) noexcept nogil:
        """finish_fault / filemap_map_folio_range: a folio whose first page would sit at start
        may be mapped whole when it lies inside the VMA and inside one PTE table."""
        cdef uint64_t end = start + (<uint64_t>nr << PAGE_SHIFT)
        return (start >= self.vm_start[vma] and end <= self.vm_end[vma]
                and (start & PMD_MASK) == ((end - 1) & PMD_MASK))

    cdef bint shmem_pmd_suitable(self, int64_t vma, uint64_t addr) noexcept nogil:
        """thp_vma_suitable_order(PMD_ORDER) for a file VMA: the aligned 2 MiB of addr lies in
        the VMA and file offsets there are 2 MiB-aligned too."""
        cdef uint64_t haddr = addr & PMD_MASK
        return (haddr >= self.vm_start[vma] and haddr + PMD_SIZE <= self.vm_end[vma]
                and (((self.vm_start[vma] >> PAGE_SHIFT) - self.vm_pgoff[vma]) & (HPAGE_PMD_NR - 1)) == 0)

    def file_collapse_refused(self, uint64_t start, uint64_t end):
        """Whether madvise_collapse fails [start, end), which lies in one shared mapping, with
        EINVAL before its first block: thp_vma_allowable_order(TVA_FORCED_COLLAPSE) says no
        (VM_NOHUGEPAGE, a complete PR_SET_THP_DISABLE, or the VMA's last aligned 2 MiB not
        suitable: thp_vma_suitable_order, file offsets aligned alike), or the range holds no
        whole block without starting on a boundary (no_whole_block)."""
        cdef int64_t vma
        check_range(start, end)
        vma = self.find_vma(start)
        if vma < 0 or not self.vm_file[vma] or start < self.vm_start[vma] or end > self.vm_end[vma]:
            raise ValueError("file_collapse_refused: the range must lie in one shared mapping")
        if self.vm_flags[vma] & VM_NOHUGEPAGE or self.thp_disable == THP_DISABLE_COMPLETELY:
            return True
        if not (self.vm_end[vma] - self.vm_start[vma] >= PMD_SIZE
                and self.shmem_pmd_suitable(vma, self.vm_end[vma] - PMD_SIZE)):
            return True
        return no_whole_block(start, end)

    cdef bint shmem_pmd_mappable(self, int64_t vma, uint64_t addr, folio_t *folio) noexcept nogil:
        """do_set_pmd's conditions: a PMD-sized folio, a VMA that can hold it, and no veto as for
        a forced collapse ("as we already have a THP"): VM_NOHUGEPAGE or a complete
        PR_SET_THP_DISABLE refuse it, the except-advised flavour does not."""
        if folio == NULL or folio.order != HPAGE_PMD_ORDER:
            return False
        if self.vm_flags[vma] & VM_NOHUGEPAGE or self.thp_disable == THP_DISABLE_COMPLETELY:
            return False
        return self.shmem_pmd_suitable(vma, addr)

    cdef bint shmem_huge_allowed(self, int64_t vma, uint64_t addr, int64_t index) noexcept nogil:
        """shmem_allowable_huge_orders for a fault: shmem_enabled, the VMA's advice and vetoes,
        and that the THP can be mapped by a PMD here."""
        cdef uint32_t flags = self.vm_flags[vma]
        cdef int mode = self.machine.shmem_enabled
        cdef int64_t hidx = index & ~(<int64_t>HPAGE_PMD_NR - 1)
        if flags & VM_NOHUGEPAGE or self.thp_disable == THP_DISABLE_COMPLETELY:
            return False
        if self.thp_disable == THP_DISABLE_EXCEPT_ADVISED and not (flags & VM_HUGEPAGE):
            return False
        if not self.shmem_pmd_suitable(vma, addr):
            return False
        if mode == SHMEM_HUGE_ALWAYS:
            return True
        if mode == SHMEM_HUGE_WITHIN_SIZE and hidx + HPAGE_PMD_NR <= self.machine.file_size[self.vm_file[vma]]:
            return True
        # shmem_huge_global_enabled: within_size falls through to advise
        if mode == SHMEM_HUGE_WITHIN_SIZE or mode == SHMEM_HUGE_ADVISE:
            return (flags & VM_HUGEPAGE) != 0
        return False

    cdef void shmem_map_pmd(self, int64_t vma, uint64_t *pmdp, int64_t head, bint write) noexcept nogil:
        """do_set_pmd: a shmem THP mapped by one PMD (no deposited table on x86)."""
        cdef folio_t *folio = &self.machine.pmd_folio[head >> HPAGE_PMD_ORDER]
        cdef uint64_t e = (<uint64_t>head << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_PSE | _PAGE_ACCESSED
        cdef uint32_t flags = self.vm_flags[vma]
        cdef int64_t k
        if flags & VM_ACCESS_FLAGS:
            e |= _PAGE_USER
            if flags & VM_WRITE:
                e |= _PAGE_RW               # a shared writable mapping needs no write-notify
        if write:
            e |= _PAGE_DIRTY
            for k in range(head, head + HPAGE_PMD_NR):        # fault_dirty_shared_page
                self.machine.flags[k] = self.machine.flags[k] | PG_DIRTY
        if folio.written == HPAGE_PMD_NR:
            e |= _PAGE_WRITTEN
        pmdp[0] = e
        folio.entire_mapcount += 1
        folio.refcount += 1
        if folio.entire_mapcount == 1:
            self.count_vm(NR_SHMEM_PMDMAPPED, 1)
        self.count_vm(THP_FILE_MAPPED, 1)
        self.rss_shmem += HPAGE_PMD_NR

    cdef void shmem_map_ptes(self, int64_t vma, uint64_t *pte, int64_t pfn, int64_t nr, bint write) noexcept nogil:
        """set_pte_range for shmem pages: writable in a writable shared mapping, dirty on a
        write; only none entries are filled."""
        cdef uint64_t e = _PAGE_PRESENT | _PAGE_ACCESSED
        cdef uint32_t flags = self.vm_flags[vma]
        cdef folio_t *folio
        cdef int64_t k
        if flags & VM_ACCESS_FLAGS:
            e |= _PAGE_USER
            if flags & VM_WRITE:
                e |= _PAGE_RW
        if write:
            e |= _PAGE_DIRTY
        for k in range(nr):
            if pte[k]:
                continue
            pte[k] = (<uint64_t>(pfn + k) << PAGE_SHIFT) | e \
                | (_PAGE_WRITTEN if self.machine.flags[pfn + k] & PG_WRITTEN else 0)
            # a page cache page is uptodate once mapped; a write fault dirties its folio
            self.machine.flags[pfn + k] = self.machine.flags[pfn + k] & ~PG_FALLOCATED
            if write:
                self.machine.shmem_folio_dirty(pfn + k)
            self.machine.mapcount[pfn + k] = self.machine.mapcount[pfn + k] + 1
            folio = self.machine.folio_of(pfn + k)
            if folio != NULL:
                folio.refcount += 1
            self.rss_shmem += 1

    cdef int shmem_fault_around(self, int64_t vma, uint64_t addr, uint64_t *pmdp) noexcept nogil:
        """do_fault_around -> filemap_map_pages: map the cached pages of the 64 KiB window of
        the fault (clamped to the VMA and the PTE table) whose entries are none; a THP in the
        cache is mapped by its PMD where the PMD is none and it fits."""
        cdef int32_t fid = self.vm_file[vma]
        cdef int64_t pte_off = pte_index(addr)
        cdef int64_t vma_off = <int64_t>((addr - self.vm_start[vma]) >> PAGE_SHIFT)
        cdef int64_t vma_pages = <int64_t>((self.vm_end[vma] - self.vm_start[vma]) >> PAGE_SHIFT)
        cdef int64_t from_pte, to_pte, i, index, pfn, first = -1, nr, head
        cdef uint64_t start
        cdef int64_t *pages = self.machine.file_pages[fid]
        cdef int64_t size = self.machine.file_size[fid]
        cdef uint64_t *pte
        cdef folio_t *folio
        from_pte = pte_off & ~(<int64_t>FAULT_AROUND_PAGES - 1)
        if pte_off - min(pte_off, vma_off) > from_pte:
            from_pte = pte_off - min(pte_off, vma_off)
        to_pte = min(min(from_pte + FAULT_AROUND_PAGES, <int64_t>PTRS_PER_TABLE), pte_off + vma_pages - vma_off)
        index = self.folio_index_at(vma, addr) - pte_off
        for i in range(from_pte, to_pte):
            if self.cached_uptodate(pages, size, index + i):
                first = i
                break
        if first < 0:
            return 0                               # nothing cached: no table either
        pfn = pages[index + first]
        folio = self.machine.folio_of(pfn)
        if not pmdp[0] and self.shmem_pmd_mappable(vma, addr, folio):
            self.shmem_map_pmd(vma, pmdp, self.machine.folio_pfn(folio), False)   # filemap_map_pmd
            return 0
        if self.pte_alloc(pmdp) == NULL:
            return VM_FAULT_HOSTMEM
        pte = self.pte_entry(pmdp[0], 0)
        i = first
        while i < to_pte:
            if not self.cached_uptodate(pages, size, index + i):
                i += 1
                continue
            pfn = pages[index + i]
            folio = self.machine.folio_of(pfn)
            nr = 1 if folio == NULL else (<int64_t>1) << folio.order
            head = pfn if folio == NULL else self.machine.folio_pfn(folio)
            start = self.vm_start[vma] + (<uint64_t>(index + i - (pfn - head) - <int64_t>self.vm_pgoff[vma]) << PAGE_SHIFT)
            if folio != NULL and index + i - (pfn - head) >= <int64_t>self.vm_pgoff[vma] \
                    and self.folio_fits(vma, start, nr):
                # filemap_map_folio_range: a large folio inside the VMA and the table, whole
                self.shmem_map_ptes(vma, pte + pte_index(start), head, nr, False)
                i = pte_index(start) + nr
            else:
                if not pte[i]:
                    self.shmem_map_ptes(vma, pte + i, pfn, 1, False)
                i += 1
        return 0

    cdef bint cached_uptodate(self, const int64_t *pages, int64_t size, int64_t index) noexcept nogil:
        """next_uptodate_folio: a page in the cache that holds data (not just fallocated)."""
        return 0 <= index < size and pages[index] != 0 \
            and not (self.machine.flags[pages[index]] & PG_FALLOCATED)

    cdef void zap_shmem_pte(self, uint64_t e) noexcept nogil:
        """Drop one PTE mapping of a shmem page: the page stays in the page cache; a dirty PTE
        leaves the folio dirty (zap_present_folio_ptes -> folio_mark_dirty)."""
        cdef int64_t pfn = <int64_t>entry_index(e)
        cdef folio_t *folio = self.machine.folio_of(pfn)
        self.machine.mapcount[pfn] = self.machine.mapcount[pfn] - 1
        if folio != NULL:
            folio.refcount -= 1
        if e & _PAGE_DIRTY:
            self.machine.shmem_folio_dirty(pfn)       # folio_mark_dirty
        self.rss_shmem -= 1

    cdef void zap_shmem_pmd(self, uint64_t *pmdp) noexcept nogil:
        """Clear a PMD mapping of a shmem THP (zap_huge_pmd, and a file PMD's split, which
        leaves no PTE table: the pages fault back in)."""
        cdef uint64_t e = pmdp[0]
        cdef int64_t head = <int64_t>entry_index(e), k
        cdef folio_t *folio = &self.machine.pmd_folio[head >> HPAGE_PMD_ORDER]
        pmdp[0] = 0
        folio.entire_mapcount -= 1
        folio.refcount -= 1
        if folio.entire_mapcount == 0:
            self.count_vm(NR_SHMEM_PMDMAPPED, -1)
        if e & _PAGE_DIRTY:
            for k in range(head, head + HPAGE_PMD_NR):
                self.machine.flags[k] = self.machine.flags[k] | PG_DIRTY
        self.rss_shmem -= HPAGE_PMD_NR

    def collapse_file(self, int64_t vma, uint64_t haddr):
        """MADV_COLLAPSE of one aligned 2 MiB of a shared mapping (collapse_file, then
        collapse_pte_mapped_thp): the file's pages there become one THP (holes zero-filled,
        shmem_enabled ignored), every process's PTEs of them go (retract_page_tables), and this
        process maps the THP by its PMD. Returns 0 or the errno name."""
        cdef int32_t fid
        cdef int64_t hidx, k, pfn, old, present = 0
        cdef uint64_t *pmdp
        cdef int64_t *pages
        cdef folio_t *folio
        cdef MMCore mm
        if not 0 <= vma < self.nr_vmas or not self.vm_file[vma]:
            raise ValueError("collapse_file: not a shared mapping")
        fid = self.vm_file[vma]
        if haddr & ~PMD_MASK or not self.shmem_pmd_suitable(vma, haddr) \
                or self.vm_flags[vma] & VM_NOHUGEPAGE or self.thp_disable == THP_DISABLE_COMPLETELY:
            return "EINVAL"
        hidx = self.folio_index_at(vma, haddr)
        pmdp = self.pmd_entry(haddr)
        if pmdp != NULL and pmdp[0] & _PAGE_PSE:
            return 0                                  # SCAN_PMD_MAPPED
        pages = self.machine.file_pages[fid]
        # khugepaged.c never looks at i_size: a block with a page before i_size is collapsed
        # whole (a THP may run past i_size); one wholly past the page cache has no page
        within = hidx + HPAGE_PMD_NR <= (<ShmemFile>self.machine.files[fid])._pages.shape[0]
        folio = self.machine.folio_of(pages[hidx]) if within and pages[hidx] else NULL
        if folio == NULL or folio.order != HPAGE_PMD_ORDER:
            pfn = self.machine.alloc_pmd_folio(True)
            if pfn < 0:
                self.count_vm(THP_COLLAPSE_ALLOC_FAILED, 1)
                return "ENOMEM"
            self.count_vm(THP_COLLAPSE_ALLOC, 1)
            if not self.machine.try_charge(HPAGE_PMD_NR):
                self.machine.free_frames(pfn, HPAGE_PMD_ORDER)
                return "EBUSY"
            if within:
                for k in range(HPAGE_PMD_NR):
                    present += pages[hidx + k] != 0
            if not present:
                # SCAN_TRUNCATED: no page left in the range
                self.machine.uncharge(HPAGE_PMD_NR)
                self.machine.free_frames(pfn, HPAGE_PMD_ORDER)
                return "EINVAL"
            present = 0
            for mm in list(self.machine.mms):         # retract_page_tables
                mm.unmap_file_range(fid, hidx, hidx + HPAGE_PMD_NR, True)
            for k in range(HPAGE_PMD_NR):
                old = pages[hidx + k]
                self.machine.flags[pfn + k] = PG_SHMEM | PG_DIRTY \
                    | (self.machine.flags[old] & PG_WRITTEN if old else 0)
                present += old != 0
            self.machine.file_free_range(fid, hidx, hidx + HPAGE_PMD_NR)
            folio = &self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER]
            folio.flags = PG_HEAD
            folio.order = HPAGE_PMD_ORDER
            folio.index = hidx
            for k in range(HPAGE_PMD_NR):
                pages[hidx + k] = pfn + k
                if self.machine.flags[pfn + k] & PG_WRITTEN:
                    folio.written += 1
            self.count_vm(NR_SHMEM, HPAGE_PMD_NR)
            self.count_vm(NR_SHMEM_THPS, 1)
        else:
            self.unmap_file_range(fid, hidx, hidx + HPAGE_PMD_NR, True)
        pmdp = self.pmd_alloc(haddr)
        if pmdp == NULL:
            raise MemoryError("cannot grow the page-table pool")
        self.shmem_map_pmd(vma, pmdp, self.machine.folio_pfn(folio), False)
        self.tlb_flush()
        return 0

    def unmap_file_range(self, int32_t fid, int64_t first, int64_t last, bint retract=False):
        """unmap_mapping_range: zap every mapping this process has of pages [first, last) of
        shmem file fid (a PMD mapping only partly inside is cleared whole); with ``retract``,
        a PTE table emptied over a whole 2 MiB is freed too (retract_page_tables)."""
        cdef int64_t vma, lo, hi
        cdef uint64_t start, end
        cdef int ret = 0
        self.tlb_flush()
        for vma in range(self.nr_vmas):
            if self.vm_file[vma] != fid:
                continue
            lo = max(first, <int64_t>self.vm_pgoff[vma])
            hi = min(last, <int64_t>(self.vm_pgoff[vma] + ((self.vm_end[vma] - self.vm_start[vma]) >> PAGE_SHIFT)))
            if lo >= hi:
                continue
            start = self.vm_start[vma] + (<uint64_t>(lo - <int64_t>self.vm_pgoff[vma]) << PAGE_SHIFT)
            end = start + (<uint64_t>(hi - lo) << PAGE_SHIFT)
            with nogil:
                ret = self._zap(start, end, retract)
            if ret:
                return ret
        self.tlb_flush()
        return 0

    # ---- accesses -------------------------------------------------------------------------------

    cdef int access_slow(self, uint64_t addr, int op, int *faults) noexcept nogil:
        """An access the TLB could not satisfy: walk, fault as the CPU and the arch code would,
        retry.  Counts faults taken in faults[0]; returns 0 or a VM_FAULT_* error."""
        cdef uint64_t need = NEED_READ if op == OP_READ else NEED_WRITE
        cdef uint64_t e
        cdef int64_t vma
        cdef uint32_t flags
        cdef bint write
        cdef int ret
        faults[0] = 0
        if addr >= TASK_SIZE:
            return VM_FAULT_SIGSEGV
        while True:
            e = self.walk(addr, need)
            if (e & need) == need:
                if op != OP_READ:
                    self.mark_written(addr)
                return VM_FAULT_OK
            if faults[0] >= 3:
                return VM_FAULT_NOTIMPL     # cannot happen: a fault always makes progress
            vma = self.find_vma(addr)
            if vma < 0:
                return VM_FAULT_SIGSEGV
            flags = self.vm_flags[vma]
            write = op != OP_READ
            if op == OP_ATOMIC and self.arm64 and not (e & _PAGE_PRESENT):
                # arm64 reports an LSE atomic on an unmapped page as a read (R26), unless the
                # forced-write patch decodes it in a readable, writable VMA (R83).
                write = self.atomic_write_fault and (flags & (VM_READ | VM_WRITE)) == (VM_READ | VM_WRITE)
            if write:
                if not (flags & VM_WRITE):
                    return VM_FAULT_SIGSEGV
            elif not (flags & VM_ACCESS_FLAGS):
                return VM_FAULT_SIGSEGV
            ret = self.handle_mm_fault(vma, addr, write)
            if ret:
                return ret
            faults[0] += 1

    cdef void tlb_tags(self, uint64_t *tags) noexcept nogil:
        """The TLB tag as each op sees it: TLB_INVALID where the cached entry does not grant what
        the op needs, so that a hit is one compare."""
        cdef uint64_t read = self.tlb_tag if (self.tlb_perm & NEED_READ) == NEED_READ else TLB_INVALID
        cdef uint64_t write = self.tlb_tag if (self.tlb_perm & NEED_WRITE) == NEED_WRITE else TLB_INVALID
        tags[OP_READ] = read
        tags[OP_WRITE] = write
        tags[OP_ATOMIC] = write

    cdef int64_t access_trace(self, const uint64_t *addrs, const uint8_t *ops, uint8_t op0,
                              int64_t n, uint8_t *out, int *err) noexcept nogil:
        """Replay n accesses; out[i] gets the faults access i took (out must be zeroed).
        Returns n, or the index of the access that failed with err[0] set.

        Hits are scanned four at a time with one branch; only a miss leaves the scan."""
        cdef uint64_t tags[NR_OPS]
        cdef uint64_t mask, t
        cdef int64_t i = 0
        cdef int faults, ret
        cdef uint8_t op
        self.tlb_tags(tags)
        mask = self.tlb_mask
        err[0] = 0
        while i < n:
            if ops == NULL:
                t = tags[op0]
                while i + 4 <= n and not (((addrs[i] & mask) ^ t) | ((addrs[i + 1] & mask) ^ t)
                                          | ((addrs[i + 2] & mask) ^ t) | ((addrs[i + 3] & mask) ^ t)):
                    i += 4
                while i < n and (addrs[i] & mask) == t:
                    i += 1
                op = op0
            else:
                while i + 4 <= n and not (((addrs[i] & mask) ^ tags[ops[i]])
                                          | ((addrs[i + 1] & mask) ^ tags[ops[i + 1]])
                                          | ((addrs[i + 2] & mask) ^ tags[ops[i + 2]])
                                          | ((addrs[i + 3] & mask) ^ tags[ops[i + 3]])):
                    i += 4
                while i < n and (addrs[i] & mask) == tags[ops[i]]:
                    i += 1
                if i < n:
                    op = ops[i]
            if i == n:
                break
            ret = self.access_slow(addrs[i], op, &faults)
            if faults:                  # out is zeroed: leave untouched what stays 0
                out[i] = <uint8_t>faults
            if ret:
                err[0] = ret
                return i
            self.tlb_tags(tags)
            mask = self.tlb_mask
            i += 1
        return n

    def access(self, cnp.ndarray addrs not None, cnp.ndarray ops, int op0, cnp.ndarray out not None):
        """Replay a trace (arguments converted by mmemu.MM.access). Returns (stopped_at, err)."""
        cdef int64_t n
        cdef const uint8_t *o = NULL
        cdef int64_t stopped
        cdef int err = 0
        if not (is_vector(addrs, cnp.NPY_UINT64) and is_vector(out, cnp.NPY_UINT8)
                and cnp.PyArray_ISWRITEABLE(out) and cnp.PyArray_DIM(out, 0) == cnp.PyArray_DIM(addrs, 0)):
            raise ValueError("access: addrs must be a contiguous native uint64 vector, out a writable "
                             "contiguous uint8 vector of the same length")
        n = cnp.PyArray_DIM(addrs, 0)
        if ops is not None:
            if not (is_vector(ops, cnp.NPY_UINT8) and cnp.PyArray_DIM(ops, 0) == n):
                raise ValueError("access: ops must be a contiguous uint8 vector of the same length")
            if n and np.max(ops) >= NR_OPS:
                raise ValueError("access: ops must be READ, WRITE or ATOMIC")
            o = <const uint8_t *>cnp.PyArray_DATA(ops)
        elif not 0 <= op0 < NR_OPS:
            raise ValueError("access: op must be READ, WRITE or ATOMIC")
        self._check_open()
        with nogil:
            stopped = self.access_trace(<const uint64_t *>cnp.PyArray_DATA(addrs), o, <uint8_t>op0, n,
                                        <uint8_t *>cnp.PyArray_DATA(out), &err)
        return stopped, err

    def access_one(self, uint64_t addr, int op):
        """One access: (faults, err)."""
        cdef int faults = 0, err
        if not 0 <= op < NR_OPS:
            raise ValueError("op must be READ, WRITE or ATOMIC")
        self._check_open()
        err = self.access_slow(addr, op, &faults)
        return faults, err

    cdef void _check_open(self) except *:
        if self.closed:
            raise ValueError("the MM is closed")

    # ---- population (mm/gup.c: __get_user_pages for MADV_POPULATE_*) ---------------------------

    def populate(self, uint64_t start, uint64_t end, bint write, bint force=False):
        """Fault in [start, end) as GUP does (R63, R79). Returns (err, address): err 0, a
        VM_FAULT_* code, POPULATE_HOLE (no VMA: ENOMEM) or POPULATE_BADVMA (EINVAL). With
        force (FOLL_FORCE, as mlock populates), a read needs only an accessible VMA."""
        cdef int err
        cdef uint64_t addr = start
        check_range(start, end)
        with nogil:
            err = self._populate(&addr, end, write, force)
        return err, addr

    cdef int _populate(self, uint64_t *paddr, uint64_t end, bint write, bint force) noexcept nogil:
        cdef uint64_t need = NEED_WRITE if write else NEED_READ
        cdef uint64_t addr = paddr[0], vend, e
        cdef int64_t vma
        cdef int ret, tries
        while addr < end:
            paddr[0] = addr
            vma = self.find_vma(addr)
            if vma < 0:
                return GUP_HOLE
            if (write and not (self.vm_flags[vma] & VM_WRITE)) or (
                    not write and not (self.vm_flags[vma] & (VM_ACCESS_FLAGS if force else VM_READ))):
                return GUP_BADVMA        # check_vma_flags
            vend = umin(self.vm_end[vma], end)
            tries = 0
            while addr < vend:
                paddr[0] = addr
                e = self.walk(addr, need)
                if (e & need) == need:
                    tries = 0
                    if e & _PAGE_PSE:
                        addr = (addr & PMD_MASK) + PMD_SIZE
                    else:
                        addr += PAGE_SIZE
                    continue
                if tries >= 2:
                    return VM_FAULT_NOTIMPL   # cannot happen: a fault always makes progress
                ret = self.handle_mm_fault(vma, addr, write)
                if ret:
                    return ret
                tries += 1
        paddr[0] = end
        return 0

    # ---- zapping (mm/memory.c: zap_page_range_single, unmap_page_range) -------------------------

    cdef void zap_huge_pmd(self, uint64_t *pmdp) noexcept nogil:
        cdef int64_t pfn = <int64_t>entry_index(pmdp[0])
        if self.machine.page_is_shmem(pfn, self.machine.folio_of(pfn)):
            self.zap_shmem_pmd(pmdp)            # a file PMD has no deposit
            return
        pmdp[0] = 0
        self.deposit(-1)
        if pfn != self.machine.huge_zero_pfn:
            self.zap_pmd_mapping(pfn >> HPAGE_PMD_ORDER)

    cdef void zap_pte_range(self, uint64_t *pte, int64_t first, int64_t last) noexcept nogil:
        """Clear PTEs first..last-1 of a table, dropping the pages they map; PTEs of one large
        folio go in one batch (zap_present_ptes)."""
        cdef int64_t i = first, nr, pfn, k
        cdef uint64_t e
        cdef folio_t *folio
        while i < last:
            e = pte[i]
            if not e:
                i += 1
                continue
            if e & _PAGE_SPECIAL:
                pte[i] = 0
                i += 1
                continue
            pfn = <int64_t>entry_index(e)
            folio = self.machine.folio_of(pfn)
            if self.machine.page_is_shmem(pfn, folio):
                pte[i] = 0
                self.zap_shmem_pte(e)
                i += 1
                continue
            if folio == NULL:
                pte[i] = 0
                self.remove_anon_pte(pfn)
                i += 1
                continue
            nr = folio_pte_batch(pte, i, last, pfn, folio.order)
            for k in range(i, i + nr):
                pte[k] = 0
            self.remove_anon_ptes(folio, pfn, nr)
            i += nr

    cdef int _zap(self, uint64_t start, uint64_t end, bint reclaim) noexcept nogil:
        """Unmap every page in [start, end). A PMD mapping wholly inside is zapped whole; one
        partly inside is split first (R57). With reclaim (MADV_DONTNEED, R13) a PTE table
        wholly inside and empty afterwards is freed."""
        cdef uint64_t addr = start, next_addr, haddr
        cdef uint64_t *pmdp
        cdef uint64_t e
        cdef uint64_t *pte
        cdef int ret
        while addr < end:
            haddr = addr & PMD_MASK
            next_addr = umin(haddr + PMD_SIZE, end)
            pmdp = self.pmd_entry(addr)
            if pmdp == NULL:
                addr = umin(self.skip_hole(addr), end)
                continue
            if not pmdp[0]:
                addr = next_addr
                continue
            e = pmdp[0]
            if e & _PAGE_PSE:
                if addr == haddr and next_addr == haddr + PMD_SIZE:
                    self.zap_huge_pmd(pmdp)
                    addr = next_addr
                    continue
                ret = self.split_huge_pmd(pmdp)
                if ret:
                    return ret
                if not pmdp[0]:                  # a shmem PMD's split clears it
                    addr = next_addr
                    continue
            pte = self.pte_entry(pmdp[0], 0)
            self.zap_pte_range(pte, pte_index(addr), pte_index(next_addr - 1) + 1)
            if reclaim and addr == haddr and next_addr == haddr + PMD_SIZE and table_empty(pte):
                self.pool_release(LVL_PTE, <int64_t>entry_index(pmdp[0]))
                pmdp[0] = 0
            addr = next_addr
        return 0

    def zap(self, uint64_t start, uint64_t end, bint reclaim):
        cdef int ret
        check_range(start, end)
        self.tlb_flush()
        with nogil:
            ret = self._zap(start, end, reclaim and self.pt_reclaim)
        return ret

    def split_pmd(self, uint64_t addr):
        """Split the PMD mapping covering addr, if one covers it without starting there (the
        cut of a munmap, mprotect, madvise or mremap at addr, R16)."""
        check_range(addr & ~(PAGE_SIZE - 1), addr & ~(PAGE_SIZE - 1))
        return self.split_pmd_at(addr)

    # ---- freeing page tables (mm/memory.c: free_pgtables, free_pgd_range) ----------------------

    cdef void free_table_tree(self, int level, int64_t index) noexcept nogil:
        """Free a table and anything still below it."""
        cdef uint64_t *t
        cdef int i
        cdef uint64_t e
        if level > LVL_PTE:
            t = self.pool[level] + index * PTRS_PER_TABLE
            for i in range(PTRS_PER_TABLE):
                e = t[i]
                if e and not (e & _PAGE_PSE):
                    self.free_table_tree(level - 1, <int64_t>entry_index(e))
        self.pool_release(level, index)

    cdef void _free_pgtables(self, int level, uint64_t *entries, uint64_t base, uint64_t start,
                             uint64_t end, uint64_t floor, uint64_t ceiling) noexcept nogil:
        """Free the tables below ``entries`` (a table of ``level``) whose span lies in
        [floor, ceiling) and overlaps [start, end)."""
        cdef int shift = PMD_SHIFT + 9 * (level - LVL_PMD)
        cdef uint64_t span = (<uint64_t>1) << shift
        cdef uint64_t first = (umax(start, base) - base) >> shift
        cdef uint64_t last = (umin(end, base + (span << 9)) - 1 - base) >> shift
        cdef uint64_t i, lo, e
        cdef int64_t child
        for i in range(first, last + 1):
            e = entries[i]
            if not e or (e & _PAGE_PSE):
                continue
            lo = base + (i << shift)
            child = <int64_t>entry_index(e)
            if level > LVL_PMD:
                self._free_pgtables(level - 1, self.pool[level - 1] + child * PTRS_PER_TABLE,
                                    lo, start, end, floor, ceiling)
            if lo >= floor and lo + span <= ceiling:
                self.free_table_tree(level - 1, child)
                entries[i] = 0

    def free_pgtables(self, uint64_t start, uint64_t end, uint64_t floor, uint64_t ceiling):
        """After munmap of [start, end): floor is the end of the VMA below (0 if none), ceiling
        the start of the VMA above (2**47 if none) (R12)."""
        check_range(start, end)
        if not floor <= start or not end <= ceiling <= USER_TOP:
            raise ValueError("free_pgtables: need floor <= start <= end <= ceiling <= 2**47")
        if start == end:
            return
        self.tlb_flush()
        with nogil:
            self._free_pgtables(LVL_PGD, self.pool[LVL_PGD], 0, start, end, floor, ceiling)

    # ---- mprotect (mm/mprotect.c: change_protection) ------------------------------------------

    cdef uint64_t change_entry(self, uint64_t e, uint32_t vm_flags, bint pmd) noexcept nogil:
        cdef int64_t pfn
        cdef bint exclusive
        if not (vm_flags & VM_ACCESS_FLAGS):
            return e & ~(<uint64_t>(_PAGE_USER | _PAGE_RW))    # protnone
        e |= _PAGE_USER
        if not (vm_flags & VM_WRITE):
            return e & ~(<uint64_t>_PAGE_RW)
        if e & (_PAGE_RW | _PAGE_SPECIAL):
            return e
        # can_change_pte_writable: only exclusive anonymous pages become writable without a fault;
        # a shared mapping's new protection is writable (shmem wants no write-notify)
        pfn = <int64_t>entry_index(e)
        if self.machine.page_is_shmem(pfn, self.machine.folio_of(pfn)):
            return e | _PAGE_RW
        if pmd:
            exclusive = self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER].flags & PG_ANON_EXCLUSIVE
        else:
            exclusive = self.machine.flags[pfn] & PG_ANON_EXCLUSIVE
        if exclusive:
            e |= _PAGE_RW
        return e

    def change_protection(self, uint64_t start, uint64_t end, uint32_t vm_flags):
        """Apply a VMA's new flags to the entries of [start, end) (PMD mappings inside whole)."""
        cdef uint64_t addr = start, next_addr
        cdef uint64_t *pmdp
        cdef uint64_t *pte
        cdef int64_t i
        check_range(start, end)
        self.tlb_flush()
        with nogil:
            while addr < end:
                next_addr = umin((addr & PMD_MASK) + PMD_SIZE, end)
                pmdp = self.pmd_entry(addr)
                if pmdp == NULL:
                    next_addr = umin(self.skip_hole(addr), end)
                elif pmdp[0]:
                    if pmdp[0] & _PAGE_PSE:
                        pmdp[0] = self.change_entry(pmdp[0], vm_flags, True)
                    else:
                        pte = self.pte_entry(pmdp[0], 0)
                        for i in range(pte_index(addr), pte_index(next_addr - 1) + 1):
                            if pte[i]:
                                pte[i] = self.change_entry(pte[i], vm_flags, False)
                addr = next_addr

    # ---- VMA edits (called with the arguments checked by mmemu.mm) ----------------------------

    def vmas(self):
        """Copies of the VMA arrays: (start, end, flags, anon_vma)."""
        n = self.nr_vmas
        return (self._vm_start[:n].copy(), self._vm_end[:n].copy(), self._vm_flags[:n].copy(),
                self._vm_anon[:n].copy())

    def vma_pgoffs(self):
        """A copy of the VMAs' vm_pgoff."""
        return self._vm_pgoff[:self.nr_vmas].copy()

    def vma_files(self):
        """A copy of the VMAs' shmem file ids (0: private anonymous)."""
        return self._vm_file[:self.nr_vmas].copy()

    def vma_index(self, uint64_t addr):
        """Index of the VMA containing addr, or -1."""
        return self.find_vma(addr)

    def vma_first_after(self, uint64_t addr):
        """Index of the first VMA that ends above addr (nr_vmas if none)."""
        return self.vma_lower_bound(addr)

    def vma_insert(self, uint64_t start, uint64_t end, uint32_t flags, int32_t anon_vma=0, pgoff=None,
                   int32_t file=0):
        """A new VMA; its vm_pgoff is start's page number unless given (a moved or split VMA, or
        the file offset of a shared mapping of shmem file ``file``)."""
        if file and (file not in self.machine.files or not (flags & VM_SHARED)):
            raise ValueError("vma_insert: a file mapping needs a live shmem file and VM_SHARED")
        if (flags & VM_SHARED) and not file:
            raise ValueError("vma_insert: a VM_SHARED mapping needs its shmem file")
        cdef int64_t i = self.vma_lower_bound(start)
        check_range(start, end)
        if start == end:
            raise ValueError("vma_insert of an empty range")
        if i < self.nr_vmas and self.vm_start[i] < end:
            raise ValueError("vma_insert over a mapped range")
        if self.nr_vmas == self.vma_cap:
            self._grow_vmas(self.vma_cap * 2)
        n = self.nr_vmas
        for arr in (self._vm_start, self._vm_end, self._vm_flags, self._vm_anon, self._vm_pgoff,
                    self._vm_file):
            arr[i + 1:n + 1] = arr[i:n]
        self.vm_start[i] = start
        self.vm_end[i] = end
        self.vm_flags[i] = flags
        self.vm_anon_vma[i] = anon_vma
        self.vm_pgoff[i] = (start >> PAGE_SHIFT) if pgoff is None else <uint64_t>pgoff
        self.vm_file[i] = file
        self.nr_vmas += 1
        self.vma_cache = -1
        return i

    def vma_delete(self, int64_t first, int64_t last):
        """Remove VMAs first..last-1."""
        n = self.nr_vmas
        if not 0 <= first <= last <= n:
            raise IndexError("vma_delete")
        for arr in (self._vm_start, self._vm_end, self._vm_flags, self._vm_anon, self._vm_pgoff,
                    self._vm_file):
            arr[first:n - (last - first)] = arr[last:n]
        self.nr_vmas -= last - first
        self.vma_cache = -1

    def vma_split(self, uint64_t addr):
        """Split the VMA containing addr at addr (mm/vma.c: __split_vma). A huge zeropage PMD
        straddling addr is split first (vma_adjust_trans_huge); a THP must not straddle it
        (checked by the caller).  Returns True if a split happened."""
        cdef int64_t i = self.find_vma(addr)
        cdef uint64_t haddr = addr & PMD_MASK
        cdef uint64_t *pmdp
        check_range(addr, addr)
        if i < 0 or self.vm_start[i] == addr:
            return False
        if addr & ~PMD_MASK and haddr >= self.vm_start[i] and haddr + PMD_SIZE <= self.vm_end[i]:
            if self.split_pmd_at(addr):
                raise MemoryError("cannot grow the page-table pool")
        end, flags, anon, file = self.vm_end[i], self.vm_flags[i], self.vm_anon_vma[i], self.vm_file[i]
        pgoff = self.vm_pgoff[i] + ((addr - self.vm_start[i]) >> PAGE_SHIFT)
        self.vm_end[i] = addr
        self.vma_insert(addr, end, flags, anon, pgoff, file)
        self.tlb_flush()
        return True

    def vma_set_end(self, int64_t i, uint64_t end):
        """Grow VMA i in place to end (vma_expand); the range must be free."""
        if not 0 <= i < self.nr_vmas or end <= self.vm_start[i] or end > USER_TOP or end & (PAGE_SIZE - 1):
            raise IndexError("vma_set_end")
        if i + 1 < self.nr_vmas and self.vm_start[i + 1] < end:
            raise ValueError("vma_set_end over a mapped range")
        self.vm_end[i] = end
        self.vma_cache = -1

    def vma_set_flags(self, int64_t i, uint32_t flags):
        if not 0 <= i < self.nr_vmas:
            raise IndexError("vma_set_flags")
        self.vm_flags[i] = flags
        self.tlb_flush()

    def vma_try_merge(self, int64_t i):
        """Merge VMA i with VMA i+1 if the kernel would (is_mergeable_vma/anon_vma)."""
        cdef int32_t a, b
        if not 0 <= i < self.nr_vmas - 1:
            return False
        a, b = self.vm_anon_vma[i], self.vm_anon_vma[i + 1]
        if (self.vm_end[i] != self.vm_start[i + 1] or self.vm_flags[i] != self.vm_flags[i + 1]
                or (a and b and a != b) or self.vm_file[i] != self.vm_file[i + 1]
                or self.vm_pgoff[i + 1] != self.vm_pgoff[i] + ((self.vm_end[i] - self.vm_start[i]) >> PAGE_SHIFT)):
            return False
        self.vm_end[i] = self.vm_end[i + 1]
        self.vm_anon_vma[i] = a if a else b
        self.vma_delete(i + 1, i + 2)
        return True

    def drop_huge_zero(self):
        """The process exits: release its reference on the huge zeropage (mm_put_huge_zero_folio)."""
        if self.holds_huge_zero:
            self.holds_huge_zero = False
            self.machine.huge_zero_users -= 1

    def set_closed(self):
        self.closed = True

    # ---- khugepaged's eligibility (R18-R21) --------------------------------------------------

    cdef bint khugepaged_allowed(self, int64_t vma) noexcept nogil:
        """thp_vma_allowable_order(TVA_KHUGEPAGED, PMD_ORDER): the sysfs mode and vetoes, an
        anon_vma (not needed by faults or smaps), and an aligned 2 MiB block inside the VMA."""
        cdef uint64_t hstart = (self.vm_start[vma] + PMD_SIZE - 1) & PMD_MASK
        return (self.thp_allowed(self.vm_flags[vma]) and self.vm_anon_vma[vma] != 0
                and hstart + PMD_SIZE <= self.vm_end[vma])

    cdef void khugepaged_enter_vma(self, int64_t vma) noexcept nogil:
        if not self.khugepaged_seq and self.khugepaged_allowed(vma):
            self.khugepaged_enter()

    def khugepaged_enter_flags(self, uint64_t addr, uint32_t flags):
        """khugepaged_enter_vma(vma, flags) for the VMA holding addr with flags it is about to
        get (hugepage_madvise checks the whole VMA before madvise splits it)."""
        cdef int64_t vma = self.find_vma(addr)
        cdef uint64_t hstart
        if vma < 0 or self.khugepaged_seq:
            return
        hstart = (self.vm_start[vma] + PMD_SIZE - 1) & PMD_MASK
        if self.thp_allowed(flags) and self.vm_anon_vma[vma] and hstart + PMD_SIZE <= self.vm_end[vma]:
            self.khugepaged_enter()

    def khugepaged_enter_at(self, uint64_t addr):
        """khugepaged_enter_vma for the VMA holding addr (MADV_HUGEPAGE, mmap)."""
        cdef int64_t vma = self.find_vma(addr)
        if vma >= 0:
            self.khugepaged_enter_vma(vma)

    # ---- fork (kernel/fork.c: dup_mmap; mm/memory.c: copy_page_range) --------------------------

    def fork_into(self, MMCore child):
        """Give child this process's VMAs (not MADV_DONTFORK ones; MADV_WIPEONFORK ones
        empty), prctl mode and khugepaged registration, and copy the page tables of every
        other VMA with an anon_vma (R74-R76). Returns 0 or VM_FAULT_HOSTMEM."""
        cdef int64_t i, n
        cdef int ret = 0
        self._check_open()
        if child is None or child.machine is not self.machine or child is self:
            raise ValueError("fork_into: the child must be another process on this machine")
        if child.nr_vmas or child.closed or child.pgtables_pages:
            raise ValueError("fork_into: the child must be new")
        n = self.nr_vmas
        keep = (self._vm_flags[:n] & VM_DONTCOPY) == 0
        n = int(keep.sum())
        if child.vma_cap < n:
            child._grow_vmas(max(16, self.vma_cap))
        for src, dst in ((self._vm_start, child._vm_start), (self._vm_end, child._vm_end),
                         (self._vm_flags, child._vm_flags), (self._vm_anon, child._vm_anon),
                         (self._vm_pgoff, child._vm_pgoff), (self._vm_file, child._vm_file)):
            dst[:n] = src[:self.nr_vmas][keep]
        child._vm_flags[:n] &= ~np.uint32(VM_LOCKED)   # dup_mmap: mlock is not inherited
        wipe = (child._vm_flags[:n] & VM_WIPEONFORK) != 0
        child._vm_anon[:n][wipe] = 0          # an empty VMA: no anon_vma, nothing copied
        # anon_vma_fork: each child VMA gets an anon_vma of its own
        has = child._vm_anon[:n] != 0
        child._vm_anon[:n][has] = self.next_anon_vma + np.arange(int(has.sum()), dtype=np.int32)
        child.nr_vmas = n
        child.vma_cache = -1
        child.next_anon_vma = self.next_anon_vma + n
        child.thp_disable = self.thp_disable
        if self.khugepaged_seq:
            child.khugepaged_enter()          # khugepaged_fork
        self.tlb_flush()
        with nogil:
            for i in range(n):
                if child.vm_anon_vma[i]:
                    ret = self.copy_range(child, child.vm_start[i], child.vm_end[i])
                    if ret:
                        break
        self.tlb_flush()
        child.tlb_flush()
        return ret

    cdef int copy_range(self, MMCore child, uint64_t start, uint64_t end) noexcept nogil:
        """copy_p4d_range..copy_pte_range: the child gets an upper table wherever the parent
        has one over the range, a PTE table wherever the parent has one (even empty)."""
        cdef uint64_t addr = start, next_addr, sg, su, e
        cdef uint64_t *dpud
        cdef uint64_t *dpmd
        cdef uint64_t *spmdp
        cdef uint64_t *dpmdp
        cdef uint64_t *spte
        cdef uint64_t *dpte
        cdef int32_t index
        cdef int64_t j
        cdef int ret
        while addr < end:
            sg = self.pool[LVL_PGD][pgd_index(addr)]
            if not sg:
                addr = (addr & ~(PGDIR_SIZE - 1)) + PGDIR_SIZE
                continue
            dpud = child.table_alloc(LVL_PUD, child.pool[LVL_PGD] + pgd_index(addr))
            if dpud == NULL:
                return VM_FAULT_HOSTMEM
            su = self.pool[LVL_PUD][entry_index(sg) * PTRS_PER_TABLE + pud_index(addr)]
            if not su:
                addr = (addr & ~(PUD_SIZE - 1)) + PUD_SIZE
                continue
            dpmd = child.table_alloc(LVL_PMD, dpud + pud_index(addr))
            if dpmd == NULL:
                return VM_FAULT_HOSTMEM
            next_addr = umin((addr & PMD_MASK) + PMD_SIZE, end)
            spmdp = self.pool[LVL_PMD] + entry_index(su) * PTRS_PER_TABLE + pmd_index(addr)
            if spmdp[0]:
                dpmdp = dpmd + pmd_index(addr)
                if spmdp[0] & _PAGE_PSE:
                    ret = self.copy_huge_pmd(child, spmdp, dpmdp)
                    if ret:
                        return ret
                else:
                    dpte = child.pte_alloc(dpmdp)
                    if dpte == NULL:
                        return VM_FAULT_HOSTMEM
                    spte = self.pte_entry(spmdp[0], 0)
                    for j in range(pte_index(addr), pte_index(next_addr - 1) + 1):
                        e = spte[j]
                        if not e:
                            continue
                        if not (e & _PAGE_SPECIAL):     # copy_present_ptes: share, write-protect
                            child.page_dup_pte(<int64_t>entry_index(e))
                            e &= ~(<uint64_t>_PAGE_RW)
                            spte[j] = e
                        dpte[j] = e & ~(<uint64_t>_PAGE_ACCESSED)   # the child's copy is old
            addr = next_addr
        return 0

    cdef int copy_huge_pmd(self, MMCore child, uint64_t *src, uint64_t *dst) noexcept nogil:
        cdef uint64_t e = src[0]
        cdef int64_t pfn = <int64_t>entry_index(e)
        cdef folio_t *folio = &self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER]
        child.deposit(1)
        if pfn == self.machine.huge_zero_pfn:
            if not child.holds_huge_zero:
                child.holds_huge_zero = True
                self.machine.huge_zero_users += 1
            dst[0] = e
            return 0
        folio.entire_mapcount = folio.entire_mapcount + 1
        folio.refcount = folio.refcount + 1
        self.machine.folio_mm_add(folio, child.mm_id, 1)
        folio.flags = folio.flags & (~PG_ANON_EXCLUSIVE)
        child.rss_anon += HPAGE_PMD_NR
        e &= ~(<uint64_t>_PAGE_RW)
        src[0] = e
        dst[0] = e & ~(<uint64_t>_PAGE_ACCESSED)
        return 0

    # ---- the rmap walk of a folio split (mm/rmap.c: try_to_migrate, remove_migration_ptes) ------

    cdef bint rmap_vma_range(self, int64_t vma, folio_t *folio, uint64_t *lo, uint64_t *hi) noexcept nogil:
        """[lo, hi): where the folio's pages would sit in the VMA (vma_address), if anywhere."""
        cdef int64_t idx = folio.index
        cdef int64_t first = <int64_t>self.vm_pgoff[vma]
        cdef int64_t npages = <int64_t>((self.vm_end[vma] - self.vm_start[vma]) >> PAGE_SHIFT)
        cdef int64_t a = idx if idx > first else first
        cdef int64_t b = idx + ((<int64_t>1) << folio.order)
        if not self.vm_anon_vma[vma]:
            return False
        if b > first + npages:
            b = first + npages
        if a >= b:
            return False
        lo[0] = self.vm_start[vma] + (<uint64_t>(a - first) << PAGE_SHIFT)
        hi[0] = self.vm_start[vma] + (<uint64_t>(b - first) << PAGE_SHIFT)
        return True

    cdef folio_t *anon_folio_at(self, int64_t head) except NULL:
        """The anonymous large folio whose head frame is head (checked: Python-level calls)."""
        cdef folio_t *folio
        if not 0 <= head < self.machine.nr_frames:
            raise ValueError(f"pfn {head} is not in RAM")
        folio = self.machine.folio_of(head)
        if folio == NULL or self.machine.folio_pfn(folio) != head or (folio.flags & PG_HUGE_ZERO):
            raise ValueError(f"pfn {head} is not the head of an anonymous large folio")
        return folio

    cdef int64_t rmap_pfn(self, uint64_t addr) noexcept nogil:
        """The frame mapped at addr (by a PTE or within a PMD mapping), or -1."""
        cdef uint64_t *pmdp = self.pmd_entry(addr)
        cdef uint64_t e
        if pmdp == NULL or not pmdp[0]:
            return -1
        if pmdp[0] & _PAGE_PSE:
            return <int64_t>entry_index(pmdp[0]) + pte_index(addr)
        e = self.pte_entry(pmdp[0], addr)[0]
        if not e or (e & _PAGE_SPECIAL):
            return -1
        return <int64_t>entry_index(e)

    def rmap_migrate(self, int64_t lo, cnp.ndarray moved not None):
        """remove_migration_ptes for compaction: every PTE of this process mapping frame
        lo + i now maps moved[i] (where moved[i] >= 0), with the same bits."""
        cdef int64_t nr, vma, pfn
        cdef const int64_t *to
        cdef uint64_t addr, end, e
        cdef uint64_t *pmdp
        cdef uint64_t *pte
        cdef int64_t i
        if not is_vector(moved, cnp.NPY_INT64):
            raise ValueError("rmap_migrate: moved must be a contiguous int64 vector")
        nr = cnp.PyArray_DIM(moved, 0)
        if lo < 0 or lo + nr > self.machine.nr_frames:
            raise ValueError("rmap_migrate: frames out of range")
        to = <const int64_t *>cnp.PyArray_DATA(moved)
        for i in range(nr):
            if not -1 <= to[i] < self.machine.nr_frames:
                raise ValueError("rmap_migrate: a target frame is out of range")
        with nogil:
            for vma in range(self.nr_vmas):
                addr = self.vm_start[vma]
                end = self.vm_end[vma]
                while addr < end:
                    pmdp = self.pmd_entry(addr)
                    if pmdp == NULL:
                        addr = self.skip_hole(addr)
                        continue
                    if pmdp[0] and not (pmdp[0] & _PAGE_PSE):
                        pte = self.pte_entry(pmdp[0], 0)
                        for i in range(pte_index(addr), pte_index(umin((addr & PMD_MASK) + PMD_SIZE, end) - 1) + 1):
                            e = pte[i]
                            pfn = <int64_t>entry_index(e)
                            if e and not (e & _PAGE_SPECIAL) and lo <= pfn < lo + nr and to[pfn - lo] >= 0:
                                pte[i] = (e & ~(PFN_MASK << PAGE_SHIFT)) | (<uint64_t>to[pfn - lo] << PAGE_SHIFT)
                    addr = (addr & PMD_MASK) + PMD_SIZE
        self.tlb_flush()

    def rmap_maps_locked(self, int64_t head):
        """Whether VM_LOCKED VMAs of this process map every page of the folio."""
        cdef folio_t *folio = self.anon_folio_at(head)
        cdef int64_t vma, pfn, nr = (<int64_t>1) << folio.order, locked = 0
        cdef uint64_t lo, hi, addr
        for vma in range(self.nr_vmas):
            if not (self.vm_flags[vma] & VM_LOCKED) or not self.rmap_vma_range(vma, folio, &lo, &hi):
                continue
            for addr in range(lo, hi, PAGE_SIZE):
                pfn = self.rmap_pfn(addr)
                if head <= pfn < head + nr:
                    locked += 1
        return locked >= nr

    def rmap_split_pmds(self, int64_t head):
        """Split every PMD mapping of the folio in this process."""
        cdef folio_t *folio = self.anon_folio_at(head)
        cdef int64_t vma
        cdef uint64_t lo, hi, addr
        cdef uint64_t *pmdp
        for vma in range(self.nr_vmas):
            if not self.rmap_vma_range(vma, folio, &lo, &hi):
                continue
            addr = lo & PMD_MASK
            while addr < hi:
                pmdp = self.pmd_entry(addr)
                if pmdp != NULL and (pmdp[0] & _PAGE_PSE) and <int64_t>entry_index(pmdp[0]) == head:
                    if self.split_huge_pmd(pmdp):
                        raise MemoryError("cannot grow the page-table pool")
                addr += PMD_SIZE

    def rmap_remap_zero(self, int64_t head):
        """try_to_map_unused_to_zeropage: each PTE of this process mapping an unwritten subpage
        of the folio becomes a zeropage PTE (R52), but in a VM_LOCKED VMA."""
        cdef folio_t *folio = self.anon_folio_at(head)
        cdef int64_t vma, pfn, nr = (<int64_t>1) << folio.order
        cdef uint64_t lo, hi, addr, e
        cdef uint64_t *pmdp
        cdef uint64_t *ptep
        for vma in range(self.nr_vmas):
            if self.vm_flags[vma] & VM_LOCKED or not self.rmap_vma_range(vma, folio, &lo, &hi):
                continue
            for addr in range(lo, hi, PAGE_SIZE):
                pmdp = self.pmd_entry(addr)
                if pmdp == NULL or not pmdp[0] or (pmdp[0] & _PAGE_PSE):
                    continue
                ptep = self.pte_entry(pmdp[0], addr)
                e = ptep[0]
                pfn = <int64_t>entry_index(e)
                if (e and not (e & _PAGE_SPECIAL) and head <= pfn < head + nr
                        and not (self.machine.flags[pfn] & PG_WRITTEN)):
                    ptep[0] = (ZERO_PTE & ~(<uint64_t>_PAGE_USER)) | (e & _PAGE_USER)
                    self.machine.mapcount[pfn] = self.machine.mapcount[pfn] - 1
                    self.rss_anon -= 1
                    if self.machine.mapcount[pfn] == 0:
                        self.count_vm(NR_ANON_MAPPED, -1)
        self.tlb_flush()

    # ---- MADV_FREE, MADV_COLD, MADV_PAGEOUT (mm/madvise.c) ---------------------------------------

    def madvise_free(self, uint64_t start, uint64_t end, bint zero_remap):
        """madvise_free_pte_range / madvise_free_huge_pmd over [start, end) (R60)."""
        self._madvise_lazy(start, end, 0, zero_remap)

    def madvise_cold(self, uint64_t start, uint64_t end, bint pageout, bint zero_remap):
        """madvise_cold_or_pageout_pte_range over [start, end) (R61)."""
        self._madvise_lazy(start, end, 2 if pageout else 1, zero_remap)

    def _madvise_lazy(self, uint64_t start, uint64_t end, int mode, bint zero_remap):
        """mode 0: free, 1: cold, 2: pageout. A large folio partly covered and not mapped
        shared is split first (split_folio), whether PMD- or PTE-mapped."""
        cdef uint64_t addr = start, next_addr, e
        cdef uint64_t *pmdp
        cdef int64_t pfn
        cdef folio_t *folio
        check_range(start, end)
        self.tlb_flush()
        while addr < end:
            next_addr = umin((addr & PMD_MASK) + PMD_SIZE, end)
            pmdp = self.pmd_entry(addr)
            if pmdp == NULL:
                addr = umin(self.skip_hole(addr), end)
                continue
            e = pmdp[0]
            if not e:
                addr = next_addr
                continue
            if e & _PAGE_PSE:
                pfn = <int64_t>entry_index(e)
                if pfn == self.machine.huge_zero_pfn:
                    addr = next_addr
                    continue
                folio = &self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER]
                if self.machine.folio_maybe_mapped_shared(folio):
                    addr = next_addr
                    continue
                if next_addr - addr == PMD_SIZE:
                    if mode == 0:
                        pmdp[0] = e & ~(<uint64_t>(_PAGE_DIRTY | _PAGE_ACCESSED))
                        folio.flags = folio.flags | PG_LAZYFREE
                    elif mode == 1:
                        pmdp[0] = e & ~(<uint64_t>_PAGE_ACCESSED)
                    else:
                        self.pageout_huge_pmd(pmdp, folio, zero_remap)
                    addr = next_addr
                    continue
                self.machine.split_folio(folio, zero_remap and self.zero_page)
                pmdp = self.pmd_entry(addr)
            self.madvise_pte_range(pmdp, addr, next_addr, mode, zero_remap)
            addr = next_addr
        self.tlb_flush()

    cdef void madvise_pte_range(self, uint64_t *pmdp, uint64_t addr, uint64_t next_addr, int mode,
                                bint zero_remap, int64_t vma=-1, int32_t fid=0) except *:
        """The PTE walk of madvise_free_pte_range (mode 0) and madvise_cold_or_pageout_pte_range
        (1: cold, 2: pageout). A large folio only partly mapped by the batch of PTEs here is
        split unless mapped shared, and the same PTE looked at again. ``fid``: the shmem file
        of ``vma``, a shared mapping (mode 1 only), whose folios split as file folios do."""
        cdef uint64_t *pte = self.pte_entry(pmdp[0], 0)
        cdef int64_t i = pte_index(addr), first = i, last = pte_index(next_addr - 1) + 1, nr, pfn
        cdef uint64_t e
        cdef folio_t *folio
        while i < last:
            e = pte[i]
            if not e or (e & _PAGE_SPECIAL):
                i += 1
                continue
            pfn = <int64_t>entry_index(e)
            folio = self.machine.folio_of(pfn)
            nr = 1 if folio == NULL else folio_pte_batch(pte, i, last, pfn, folio.order)
            if folio != NULL and nr < (1 << folio.order):
                if fid:
                    if self.split_file_folio_alone(vma, fid, folio, pfn, addr + (<uint64_t>(i - first) << PAGE_SHIFT)):
                        if not pmdp[0]:
                            break
                        pte = self.pte_entry(pmdp[0], 0)
                        continue                      # the same PTE: none now
                elif not self.machine.folio_maybe_mapped_shared(folio):
                    self.machine.split_folio(folio, zero_remap and self.zero_page)
                    pte = self.pte_entry(pmdp[0], 0)
                    continue                          # the same PTE, now an order-0 page
            elif mode == 0:
                self.lazyfree_ptes(pte, i, nr, pfn)
            elif (self.machine.mapcount[pfn] if folio == NULL else folio.refcount) != nr:
                pass                                  # mapped elsewhere too: leave it alone
            elif mode == 1:
                self.clear_young(pte, i, nr)
            elif folio != NULL and not (folio.flags & PG_LAZYFREE):
                # no swap: reclaim splits the large folio it cannot swap out (R61)
                self.machine.split_folio(folio, zero_remap and self.zero_page)
                pte = self.pte_entry(pmdp[0], 0)
            else:
                self.reclaim_ptes(pte, i, nr, pfn)
            i += nr

    def madvise_cold_file(self, uint64_t start, uint64_t end):
        """madvise_cold_or_pageout_pte_range (MADV_COLD) over [start, end) of one shared mapping
        (R61): a shmem folio all of whose mappings are this process's and which the range
        covers in part is split (split_folio: to order 0), which unmaps it from every process
        (a file folio is not mapped again); a PMD the range covers whole is made old, and so
        are the PTEs of folios they map once per page (folio_mapcount == folio_nr_pages)."""
        cdef int64_t vma, pfn
        cdef int32_t fid
        cdef uint64_t addr = start, next_addr, e
        cdef uint64_t *pmdp
        cdef folio_t *folio
        check_range(start, end)
        vma = self.find_vma(start)
        if vma < 0 or not self.vm_file[vma] or start < self.vm_start[vma] or end > self.vm_end[vma]:
            raise ValueError("madvise_cold_file: the range must lie in one shared mapping")
        fid = self.vm_file[vma]
        self.tlb_flush()
        while addr < end:
            next_addr = umin((addr & PMD_MASK) + PMD_SIZE, end)
            pmdp = self.pmd_entry(addr)
            if pmdp == NULL:
                addr = umin(self.skip_hole(addr), end)
                continue
            e = pmdp[0]
            if e & _PAGE_PSE:
                pfn = <int64_t>entry_index(e)
                folio = &self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER]
                if next_addr - addr < PMD_SIZE:
                    self.split_file_folio_alone(vma, fid, folio, pfn, addr & PMD_MASK)
                elif self.file_folio_maps_here(fid, pfn, HPAGE_PMD_NR) == folio.refcount:
                    pmdp[0] = e & ~(<uint64_t>_PAGE_ACCESSED)
            elif e:
                self.madvise_pte_range(pmdp, addr, next_addr, 1, False, vma, fid)
            addr = next_addr
        self.tlb_flush()

    cdef bint split_file_folio_alone(self, int64_t vma, int32_t fid, folio_t *folio, int64_t pfn,
                                     uint64_t addr) except -1:
        """split_folio of the shmem folio that maps page ``pfn`` at ``addr`` if no other process
        maps it (folio_maybe_mapped_shared): each PMD map of it is split first (try_to_unmap,
        counted), then it is unmapped everywhere, as file folios are. Whether it was."""
        cdef int64_t head = self.machine.folio_pfn(folio)
        if self.file_folio_maps_here(fid, head, (<int64_t>1) << folio.order) != folio.refcount:
            return False
        self.count_vm(THP_SPLIT_PMD, folio.entire_mapcount)
        self.machine.shmem_split(<ShmemFile>self.machine.files[fid], folio, head,
                                 self.folio_index_at(vma, addr) - (pfn - head), True)
        return True

    cdef int64_t file_folio_maps_here(self, int32_t fid, int64_t head, int64_t nr) noexcept nogil:
        """How many mappings of the folio at frames [head, head + nr) this process has (a PMD
        map counts one, a PTE map one): all of its refcount when no other process maps it
        (folio_maybe_mapped_shared is then false)."""
        cdef int64_t vma, count = 0, i
        cdef uint64_t addr, end, stop, e
        cdef uint64_t *pmdp
        cdef uint64_t *pte
        for vma in range(self.nr_vmas):
            if self.vm_file[vma] != fid:
                continue
            addr, end = self.vm_start[vma], self.vm_end[vma]
            while addr < end:
                stop = umin((addr & PMD_MASK) + PMD_SIZE, end)
                pmdp = self.pmd_entry(addr)
                if pmdp != NULL and pmdp[0]:
                    if pmdp[0] & _PAGE_PSE:
                        if head <= <int64_t>entry_index(pmdp[0]) < head + nr:
                            count += 1
                    else:
                        pte = self.pte_entry(pmdp[0], 0)
                        for i in range(pte_index(addr), pte_index(stop - 1) + 1):
                            e = pte[i]
                            if e and not (e & _PAGE_SPECIAL) and head <= <int64_t>entry_index(e) < head + nr:
                                count += 1
                addr = stop
        return count

    cdef void lazyfree_ptes(self, uint64_t *pte, int64_t i, int64_t nr, int64_t pfn) noexcept nogil:
        """MADV_FREE of one folio mapped by these nr PTEs (whoever else maps it: a fresh
        anonymous folio is not PG_dirty): clean and old entries, the folio lazy-free."""
        cdef int64_t k
        cdef folio_t *folio = self.machine.folio_of(pfn)
        for k in range(i, i + nr):
            pte[k] = pte[k] & ~(<uint64_t>(_PAGE_DIRTY | _PAGE_ACCESSED))
        if folio != NULL:
            folio.flags = folio.flags | PG_LAZYFREE
        else:
            self.machine.flags[pfn] = self.machine.flags[pfn] | PG_LAZYFREE

    cdef void clear_young(self, uint64_t *pte, int64_t i, int64_t nr) noexcept nogil:
        cdef int64_t k
        for k in range(i, i + nr):
            pte[k] = pte[k] & ~(<uint64_t>_PAGE_ACCESSED)

    cdef void pageout_huge_pmd(self, uint64_t *pmdp, folio_t *folio, bint zero_remap) except *:
        """Reclaim of a PMD-mapped THP mapped by this process only, with no swap (as the 6.18
        host does it): try_to_unmap splits the PMD of a lazy-free folio, then discards the
        folio if every PTE is clean (the table stays) or keeps it whole, PTE-mapped, if it was
        written again; an ordinary THP cannot be swapped out and is split into 4K pages."""
        cdef int64_t pfn = self.machine.folio_pfn(folio)
        if not (folio.flags & PG_LAZYFREE):
            self.machine.split_folio(folio, zero_remap and self.zero_page)
            return
        if self.split_huge_pmd(pmdp):
            raise MemoryError("cannot grow the page-table pool")
        self.reclaim_ptes(self.pte_entry(pmdp[0], 0), 0, HPAGE_PMD_NR, pfn)

    cdef void reclaim_ptes(self, uint64_t *pte, int64_t i, int64_t nr, int64_t pfn) noexcept nogil:
        """shrink_folio_list without swap for a folio mapped only by these nr PTEs: a lazy-free
        folio is discarded while every PTE is clean, made ordinary again if one is dirty;
        any other anonymous folio stays."""
        cdef folio_t *folio = self.machine.folio_of(pfn)
        cdef uint8_t *flagp = &self.machine.flags[pfn] if folio == NULL else &folio.flags
        cdef int64_t k
        cdef uint64_t gathered = 0
        if not (flagp[0] & PG_LAZYFREE):
            return
        for k in range(i, i + nr):
            gathered |= pte[k] & (_PAGE_DIRTY | _PAGE_ACCESSED)
        if gathered & _PAGE_DIRTY:
            # try_to_unmap_one cleared the batch (get_and_clear_full_ptes, which gathers the
            # dirty and young bits of all of them) and, the folio dirty again, restores every
            # PTE with the gathered bits: the folio is an ordinary one again
            for k in range(i, i + nr):
                pte[k] = pte[k] | gathered
            flagp[0] &= ~PG_LAZYFREE
            return
        for k in range(i, i + nr):
            pte[k] = 0
        if folio != NULL:
            self.remove_anon_ptes(folio, pfn, nr)
        else:
            self.remove_anon_pte(pfn)

    # ---- MADV_COLLAPSE and khugepaged (mm/khugepaged.c) ------------------------------------------

    cdef int scan_pmd(self, uint64_t *pte, int64_t max_none, int64_t max_shared) noexcept nogil:
        """hpage_collapse_scan_pmd's checks for khugepaged (R69): 0 to collapse, else 1."""
        cdef int64_t none_or_zero = 0, shared = 0, referenced = 0, pfn
        cdef uint64_t e
        cdef bint is_shared
        cdef folio_t *folio
        cdef int i
        for i in range(PTRS_PER_TABLE):
            e = pte[i]
            if not e or (e & _PAGE_SPECIAL):
                none_or_zero += 1
                if none_or_zero > max_none:
                    self.count_vm(THP_SCAN_EXCEED_NONE_PTE, 1)
                    return 1
                continue
            pfn = <int64_t>entry_index(e)
            folio = self.machine.folio_of(pfn)
            if folio != NULL:
                is_shared = self.machine.folio_maybe_mapped_shared(folio)
            else:
                is_shared = self.machine.mapcount[pfn] > 1
            if is_shared:
                shared += 1
                if shared > max_shared:
                    self.count_vm(THP_SCAN_EXCEED_SHARE_PTE, 1)
                    return 1
            if e & _PAGE_ACCESSED:
                referenced += 1
        return 0 if referenced else 1        # SCAN_LACK_REFERENCED_PAGE

    cdef int collapse_huge_page(self, int64_t vma, uint64_t haddr, uint64_t *pmdp, bint khugepaged) noexcept nogil:
        """collapse_huge_page (R64, R70): a new THP holding a copy of the PTE table's pages
        (none and zeropage entries read as zero); the old table becomes its deposit."""
        cdef int64_t pfn = self.machine.alloc_pmd_folio(True), old, nr, i, written = 0
        cdef uint64_t *pte
        cdef uint64_t e, entry
        cdef uint32_t flags = self.vm_flags[vma]
        cdef folio_t *folio
        cdef folio_t *old_folio
        if pfn < 0:
            self.count_vm(THP_COLLAPSE_ALLOC_FAILED, 1)
            return VM_FAULT_OOM
        self.count_vm(THP_COLLAPSE_ALLOC, 1)
        if not self.machine.try_charge(HPAGE_PMD_NR):      # SCAN_CGROUP_CHARGE_FAIL
            self.machine.free_frames(pfn, HPAGE_PMD_ORDER)
            return VM_FAULT_FALLBACK
        folio = &self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER]
        pte = self.pte_entry(pmdp[0], 0)
        for i in range(PTRS_PER_TABLE):
            e = pte[i]
            if e and not (e & _PAGE_SPECIAL) and (self.machine.flags[entry_index(e)] & PG_WRITTEN):
                self.machine.flags[pfn + i] = PG_WRITTEN
                written += 1
        i = 0
        while i < PTRS_PER_TABLE:
            e = pte[i]
            if not e or (e & _PAGE_SPECIAL):
                pte[i] = 0
                i += 1
                continue
            old = <int64_t>entry_index(e)
            old_folio = self.machine.folio_of(old)
            if old_folio != NULL:
                nr = folio_pte_batch(pte, i, PTRS_PER_TABLE, old, old_folio.order)
                for k in range(i, i + nr):
                    pte[k] = 0
                self.remove_anon_ptes(old_folio, old, nr)
            else:
                nr = 1
                pte[i] = 0
                self.remove_anon_pte(old)
            i += nr
        self.pool_release(LVL_PTE, <int64_t>entry_index(pmdp[0]))    # the table ...
        self.deposit(1)                                               # ... is the deposit now
        # a new THP, queued for the deferred-split shrinker uncounted (deferred_split_folio)
        folio.flags = PG_ANON | PG_HEAD | PG_ANON_EXCLUSIVE | PG_DEFERRED \
            | (PG_WRITTEN if written == HPAGE_PMD_NR else 0)
        folio.order = HPAGE_PMD_ORDER
        folio.refcount = 1
        folio.entire_mapcount = 1
        folio.written = <uint16_t>written
        folio.index = self.folio_index_at(vma, haddr)
        self.machine.folio_mm_add(folio, self.mm_id, 1)
        entry = (<uint64_t>pfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_PSE | _PAGE_ACCESSED | _PAGE_DIRTY
        if written == HPAGE_PMD_NR:
            entry |= _PAGE_WRITTEN
        if flags & VM_ACCESS_FLAGS:
            entry |= _PAGE_USER
            if flags & VM_WRITE:
                entry |= _PAGE_RW
        pmdp[0] = entry
        self.rss_anon += HPAGE_PMD_NR
        self.count_vm(NR_ANON_MAPPED, HPAGE_PMD_NR)
        self.count_vm(NR_ANON_THPS, 1)
        self.machine.count_mthp(HPAGE_PMD_ORDER, MTHP_NR_ANON, 1)
        if khugepaged:
            self.machine.pages_collapsed += 1
        self.tlb_flush()
        return 0

    def madvise_collapse(self, uint64_t start, uint64_t end):
        """MADV_COLLAPSE of the aligned 2 MiB blocks of [start, end), which lies in one VMA:
        returns 0, or the errno name of the last block that failed (R64)."""
        cdef int64_t vma
        cdef uint64_t addr
        cdef uint64_t *pmdp
        cdef int ret
        cdef bint ok = True
        last_fail = None
        check_range(start, end)
        if start == end:
            return 0
        vma = self.find_vma(start)
        if vma < 0 or end > self.vm_end[vma]:
            raise ValueError("madvise_collapse: the range must lie in one VMA")
        # thp_vma_allowable_order(TVA_FORCED_COLLAPSE): VM_NOHUGEPAGE, prctl, an anon_vma
        if (self.vm_flags[vma] & VM_NOHUGEPAGE or self.thp_disable == THP_DISABLE_COMPLETELY
                or not self.vm_anon_vma[vma]
                or ((self.vm_start[vma] + PMD_SIZE - 1) & PMD_MASK) + PMD_SIZE > self.vm_end[vma]):
            return "EINVAL"
        if no_whole_block(start, end):
            return "EINVAL"
        addr = (start + PMD_SIZE - 1) & PMD_MASK
        while addr + PMD_SIZE <= end:
            pmdp = self.pmd_entry(addr)
            if pmdp == NULL:
                last_fail = "EINVAL"             # SCAN_PMD_NULL: go on with the next block
            elif not pmdp[0]:
                return "EINVAL"                  # SCAN_PMD_NONE ends the call
            elif not (pmdp[0] & _PAGE_PSE):      # a PMD mapping already: nothing to do
                ret = self.collapse_huge_page(vma, addr, pmdp, False)
                if ret == VM_FAULT_OOM:
                    return "ENOMEM"              # SCAN_ALLOC_HUGE_PAGE_FAIL ends the call
                if ret:
                    return "EBUSY"               # SCAN_CGROUP_CHARGE_FAIL ends it too
            addr += PMD_SIZE
        return 0 if last_fail is None else last_fail

    def khugepaged_vma_range(self, int64_t vma):
        """(hstart, hend) of the VMA's aligned 2 MiB blocks, or None if khugepaged may not
        collapse in it (thp_vma_allowable_order(TVA_KHUGEPAGED))."""
        if not 0 <= vma < self.nr_vmas:
            raise IndexError(f"no VMA {vma}")
        if not self.khugepaged_allowed(vma):
            return None
        return ((self.vm_start[vma] + PMD_SIZE - 1) & PMD_MASK, self.vm_end[vma] & PMD_MASK)

    def khugepaged_scan_pmd(self, int64_t vma, uint64_t haddr, int64_t max_none, int64_t max_shared):
        """hpage_collapse_scan_pmd, then collapse_huge_page: 0 if the block was left alone (or
        the new THP could not be charged), 1 if a collapse made a THP, 2 if its allocation
        failed."""
        cdef uint64_t *pmdp
        cdef int ret
        self._check_open()
        if not 0 <= vma < self.nr_vmas:
            raise IndexError(f"no VMA {vma}")
        if haddr & ~PMD_MASK or haddr < self.vm_start[vma] or haddr + PMD_SIZE > self.vm_end[vma]:
            raise ValueError(f"{haddr:#x} is not an aligned 2 MiB block inside VMA {vma}")
        pmdp = self.pmd_entry(haddr)
        if pmdp == NULL or not pmdp[0] or (pmdp[0] & _PAGE_PSE):
            return 0                              # SCAN_PMD_NULL, SCAN_PMD_NONE, SCAN_PMD_MAPPED
        if self.scan_pmd(self.pte_entry(pmdp[0], 0), max_none, max_shared):
            return 0
        ret = self.collapse_huge_page(vma, haddr, pmdp, True)
        return 2 if ret == VM_FAULT_OOM else (0 if ret else 1)

    # ---- mremap (mm/mremap.c: move_page_tables) ------------------------------------------------

    def move_page_tables(self, uint64_t old_addr, uint64_t new_addr, uint64_t length):
        """Move the entries of [old_addr, old_addr+length) to new_addr as move_page_tables does
        (R67): per 1 GiB where the source has a PMD table, the destination gets its PUD table
        and, for a whole aligned 1 GiB, the PMD table itself (move_normal_pud); per 2 MiB where
        the source has an entry, the destination gets its PMD table and a PMD mapping or a
        whole PTE table moves as one entry when the 2 MiB moves whole; else a PMD mapping is
        split and the PTEs move one by one. Returns 0 or VM_FAULT_HOSTMEM."""
        cdef uint64_t done = 0, extent
        cdef int ret = 0
        check_range(old_addr, old_addr + length)
        check_range(new_addr, new_addr + length)
        self.tlb_flush()
        with nogil:
            while done < length:
                ret = self.move_extent(old_addr + done, new_addr + done, length - done, &extent)
                if ret:
                    break
                done += extent
        self.tlb_flush()
        return ret

    cdef int move_extent(self, uint64_t old_addr, uint64_t new_addr, uint64_t left,
                         uint64_t *extent) noexcept nogil:
        """One step of move_page_tables; extent[0] gets how far it went."""
        cdef uint64_t *old_pgdp = self.pool[LVL_PGD] + pgd_index(old_addr)
        cdef uint64_t *new_pgdp = self.pool[LVL_PGD] + pgd_index(new_addr)
        cdef uint64_t *old_pudp
        cdef uint64_t *new_pudp
        cdef int32_t index
        extent[0] = umin(umin((old_addr | (PUD_SIZE - 1)) + 1 - old_addr,
                              (new_addr | (PUD_SIZE - 1)) + 1 - new_addr), left)
        if not old_pgdp[0]:
            return 0                                     # get_old_pud: none
        old_pudp = self.pool[LVL_PUD] + entry_index(old_pgdp[0]) * PTRS_PER_TABLE + pud_index(old_addr)
        if not old_pudp[0]:
            return 0
        new_pudp = self.table_alloc(LVL_PUD, new_pgdp)   # alloc_new_pud
        if new_pudp == NULL:
            return VM_FAULT_HOSTMEM
        new_pudp += pud_index(new_addr)
        # the PUD pool may have moved
        old_pudp = self.pool[LVL_PUD] + entry_index(old_pgdp[0]) * PTRS_PER_TABLE + pud_index(old_addr)
        if extent[0] == PUD_SIZE and not new_pudp[0]:   # move_normal_pud
            new_pudp[0] = old_pudp[0]
            old_pudp[0] = 0
            return 0
        extent[0] = umin(umin((old_addr | (PMD_SIZE - 1)) + 1 - old_addr,
                              (new_addr | (PMD_SIZE - 1)) + 1 - new_addr), left)
        return self.move_pmd_range(old_addr, new_addr, extent[0])

    cdef int move_pmd_range(self, uint64_t old_addr, uint64_t new_addr, uint64_t extent) noexcept nogil:
        """The 2 MiB step: get_old_pmd, alloc_new_pmd, then move_huge_pmd / move_normal_pmd
        for a whole 2 MiB into a none entry, else split and move_ptes."""
        cdef uint64_t *old_pmdp = self.pmd_entry(old_addr)
        cdef uint64_t *new_pmdp
        cdef uint64_t *old_pte
        cdef uint64_t *new_pte
        cdef int64_t i, n
        cdef int ret
        if old_pmdp == NULL or not old_pmdp[0]:
            return 0
        new_pmdp = self.pmd_alloc(new_addr)
        if new_pmdp == NULL:
            return VM_FAULT_HOSTMEM
        old_pmdp = self.pmd_entry(old_addr)          # the pools may have moved
        if extent == PMD_SIZE and not new_pmdp[0]:
            new_pmdp[0] = old_pmdp[0]                # the PMD mapping (and its deposit) or table
            old_pmdp[0] = 0
            return 0
        if old_pmdp[0] & _PAGE_PSE:
            ret = self.split_huge_pmd(old_pmdp)
            if ret:
                return ret
            if not old_pmdp[0]:
                return 0                             # a shmem PMD: cleared, nothing to move
        new_pte = self.pte_alloc(new_pmdp)
        if new_pte == NULL:
            return VM_FAULT_HOSTMEM
        new_pte = self.pte_entry(new_pmdp[0], new_addr)
        old_pte = self.pte_entry(old_pmdp[0], old_addr)
        n = <int64_t>(extent >> PAGE_SHIFT)
        for i in range(n):
            if old_pte[i]:
                new_pte[i] = old_pte[i]
                old_pte[i] = 0
        return 0

    # ---- observables ---------------------------------------------------------------------------

    def page_states(self, uint64_t start, uint64_t end):
        """One PageState code per 4K page of [start, end)."""
        check_range(start, end)
        cdef cnp.ndarray out = np.zeros((end - start) >> PAGE_SHIFT, np.uint8)
        with nogil:
            self._page_states(start, end, <uint8_t *>cnp.PyArray_DATA(out))
        return out

    cdef void _page_states(self, uint64_t start, uint64_t end, uint8_t *out) noexcept nogil:
        cdef uint64_t addr = start, next_addr, e
        cdef uint64_t *pmdp
        cdef uint64_t *pte
        cdef int64_t i, k = 0, count, pfn
        cdef uint8_t state
        cdef folio_t *folio
        while addr < end:
            next_addr = umin((addr & PMD_MASK) + PMD_SIZE, end)
            count = (next_addr - addr) >> PAGE_SHIFT
            pmdp = self.pmd_entry(addr)
            if pmdp == NULL:
                next_addr = umin(self.skip_hole(addr), end)
                k += (next_addr - addr) >> PAGE_SHIFT     # out is zeroed: PS_NONE
            elif not pmdp[0]:
                k += count
            elif pmdp[0] & _PAGE_PSE:
                pfn = <int64_t>entry_index(pmdp[0])
                if pfn == self.machine.huge_zero_pfn:
                    state = PS_HUGE_ZERO
                elif self.machine.page_is_shmem(pfn, self.machine.folio_of(pfn)):
                    state = PS_SHMEM_THP
                else:
                    state = PS_THP
                memset(out + k, state, count)
                k += count
            else:
                pte = self.pte_entry(pmdp[0], 0)
                for i in range(pte_index(addr), pte_index(addr) + count):
                    e = pte[i]
                    if not e:
                        state = PS_NONE
                    elif e & _PAGE_SPECIAL:
                        state = PS_ZERO
                    else:
                        pfn = <int64_t>entry_index(e)
                        folio = self.machine.folio_of(pfn)
                        if self.machine.page_is_shmem(pfn, folio):
                            state = PS_SHMEM
                        else:
                            state = PS_ANON if folio == NULL else PS_LARGE
                    out[k] = state
                    k += 1
            addr = next_addr

    def contpte_blocks(self, uint64_t start, uint64_t end):
        """64 KiB-aligned blocks inside [start, end) whose 16 PTEs map 16 consecutive pages of
        one large folio from a 16-aligned frame with the same permissions: where arm64 with 4K
        pages sets the contiguous bit (contpte_try_fold). PMD mappings are not counted."""
        cdef uint64_t addr = (start + CONT_PTE_SIZE - 1) & ~(CONT_PTE_SIZE - 1)
        cdef uint64_t *pmdp
        cdef uint64_t *pte
        cdef int64_t count = 0
        check_range(start, end)
        with nogil:
            while addr + CONT_PTE_SIZE <= end:
                pmdp = self.pmd_entry(addr)
                if pmdp == NULL:
                    addr = (self.skip_hole(addr) + CONT_PTE_SIZE - 1) & ~(CONT_PTE_SIZE - 1)
                    continue
                if pmdp[0] and not (pmdp[0] & _PAGE_PSE):
                    pte = self.pte_entry(pmdp[0], addr)
                    if self.contpte_foldable(pte):
                        count += 1
                addr += CONT_PTE_SIZE
        return count

    cdef bint contpte_foldable(self, const uint64_t *pte) noexcept nogil:
        cdef uint64_t e = pte[0], perm = e & (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER)
        cdef int64_t pfn = <int64_t>entry_index(e)
        cdef folio_t *folio
        cdef int i
        if not (e & _PAGE_PRESENT) or (e & _PAGE_SPECIAL) or pfn & (CONT_PTES - 1):
            return False
        folio = self.machine.folio_of(pfn)
        if folio == NULL or folio.order < CONT_PTE_ORDER:
            return False
        for i in range(1, CONT_PTES):
            e = pte[i]
            if (e & _PAGE_SPECIAL) or <int64_t>entry_index(e) != pfn + i \
                    or (e & (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER)) != perm:
                return False
        return True

    def pageinfo(self, uint64_t start, uint64_t end):
        """/proc/pid/pagemap entries, /proc/kpagecount and /proc/kpageflags for each 4K page of
        [start, end), as the kernel shows them for these page states (R9)."""
        check_range(start, end)
        cdef int64_t n = (end - start) >> PAGE_SHIFT
        cdef cnp.ndarray pagemap = np.zeros(n, np.uint64)
        cdef cnp.ndarray kflags = np.zeros(n, np.uint64)
        cdef cnp.ndarray kcount = np.zeros(n, np.int32)
        cdef uint64_t *pm = <uint64_t *>cnp.PyArray_DATA(pagemap)
        cdef uint64_t *kf = <uint64_t *>cnp.PyArray_DATA(kflags)
        cdef int32_t *kc = <int32_t *>cnp.PyArray_DATA(kcount)
        cdef uint64_t addr = start, e
        cdef uint64_t *pmdp
        cdef int64_t k = 0, pfn
        while addr < end:
            pmdp = self.pmd_entry(addr)
            if pmdp != NULL and pmdp[0] & _PAGE_PSE:
                pfn = <int64_t>entry_index(pmdp[0]) + pte_index(addr)
                self.describe_page(pfn, pmdp[0], True, &pm[k], &kf[k], &kc[k])
            elif pmdp != NULL and pmdp[0]:
                e = self.pte_entry(pmdp[0], addr)[0]
                if e:
                    self.describe_page(<int64_t>entry_index(e), e, False, &pm[k], &kf[k], &kc[k])
            addr += PAGE_SIZE
            k += 1
        return pagemap, kflags, kcount

    cdef void describe_page(self, int64_t pfn, uint64_t e, bint pmd_mapped, uint64_t *pagemap,
                            uint64_t *kflags, int32_t *kcount) noexcept nogil:
        """fs/proc/task_mmu.c: pte_to_pagemap_entry / pagemap_pmd_range; fs/proc/page.c:
        stable_page_flags, for one present page."""
        cdef bint head = (pfn & (HPAGE_PMD_NR - 1)) == 0
        cdef int32_t mapcount
        cdef bint exclusive
        cdef folio_t *folio
        pagemap[0] = PM_PRESENT | <uint64_t>pfn
        if e & _PAGE_SPECIAL:                         # the 4K zeropage: no struct page behind it
            kflags[0] = KPF_ZERO_PAGE | KPF_RESERVED | KPF_REFERENCED
            return
        if pmd_mapped and pfn - (pfn & (HPAGE_PMD_NR - 1)) == self.machine.huge_zero_pfn:
            pagemap[0] |= PM_FILE                     # the huge zeropage is not an anon folio
            kflags[0] = KPF_ZERO_PAGE | KPF_THP | (KPF_COMPOUND_HEAD if head else KPF_COMPOUND_TAIL)
            return
        cdef uint8_t folio_flags
        folio = self.machine.folio_of(pfn)
        if self.machine.page_is_shmem(pfn, folio):
            mapcount = self.machine.mapcount[pfn] + (0 if folio == NULL else folio.entire_mapcount)
            kcount[0] = mapcount
            pagemap[0] |= PM_FILE | (PM_MMAP_EXCLUSIVE if mapcount == 1 else 0)
            kflags[0] = KPF_MMAP | KPF_UPTODATE | KPF_SWAPBACKED
            if self.machine.flags[pfn] & PG_DIRTY:
                kflags[0] |= KPF_DIRTY
            if folio != NULL:
                kflags[0] |= KPF_THP | KPF_LRU | (KPF_COMPOUND_HEAD if pfn == self.machine.folio_pfn(folio)
                                                  else KPF_COMPOUND_TAIL)
            return
        if folio != NULL:
            head = pfn == self.machine.folio_pfn(folio)
            # page_mapcount of a subpage: its PTE mappings plus the folio's PMD mappings
            mapcount = folio.entire_mapcount + self.machine.mapcount[pfn]
            folio_flags = folio.flags
            if pmd_mapped:
                exclusive = (folio_flags & PG_ANON_EXCLUSIVE) != 0
            else:
                exclusive = (self.machine.flags[pfn] & PG_ANON_EXCLUSIVE) != 0
            # a large folio goes on the LRU at once (folio_batch_add_and_move)
            kflags[0] = KPF_THP | KPF_LRU | (KPF_COMPOUND_HEAD if head else KPF_COMPOUND_TAIL)
        else:
            mapcount = self.machine.mapcount[pfn]
            folio_flags = self.machine.flags[pfn]
            exclusive = (folio_flags & PG_ANON_EXCLUSIVE) != 0
            # a 4K page waits in the CPU's folio batch before it reaches the LRU; the emulator
            # shows it as the host shows a page just faulted: not yet on the LRU
            kflags[0] = 0
        kcount[0] = mapcount
        if mapcount == 1:
            pagemap[0] |= PM_MMAP_EXCLUSIVE
        kflags[0] |= KPF_ANON | KPF_MMAP | KPF_UPTODATE
        if not (folio_flags & PG_LAZYFREE):
            kflags[0] |= KPF_SWAPBACKED
        if exclusive:
            kflags[0] |= KPF_MAPPEDTODISK             # PG_anon_exclusive shares its bit

    def smaps_counts(self, uint64_t start, uint64_t end):
        """Pages of [start, end) by smaps category (fs/proc/task_mmu.c: smaps_pte_range)."""
        cdef smaps_acc acc
        check_range(start, end)
        memset(&acc, 0, sizeof(acc))
        with nogil:
            self._smaps(start, end, &acc)
        return acc

    def pmd_mapped_pages(self):
        """(anonymous, shmem) pages mapped by PMD leaves in every VMA: smaps_rollup's
        AnonHugePages and ShmemPmdMapped, in pages, read from the PMD level alone, so that a
        workload can sample them after every chunk without walking each PTE."""
        cdef int64_t anon = 0, shmem = 0
        with nogil:
            self._pmd_mapped_pages(&anon, &shmem)
        return anon, shmem

    cdef void _pmd_mapped_pages(self, int64_t *anon, int64_t *shmem) noexcept nogil:
        cdef int64_t v, pfn
        cdef uint64_t addr, end, e
        cdef uint64_t *pmdp
        for v in range(self.nr_vmas):
            addr, end = self.vm_start[v], self.vm_end[v]
            while addr < end:
                pmdp = self.pmd_entry(addr)
                if pmdp == NULL:
                    addr = self.skip_hole(addr)
                    continue
                e = pmdp[0]
                if (e & _PAGE_PSE) and <int64_t>entry_index(e) != self.machine.huge_zero_pfn:
                    pfn = <int64_t>entry_index(e)
                    if self.machine.page_is_shmem(pfn, self.machine.folio_of(pfn)):
                        shmem[0] += HPAGE_PMD_NR
                    else:
                        anon[0] += HPAGE_PMD_NR
                addr = (addr & PMD_MASK) + PMD_SIZE

    cdef void account_page(self, smaps_acc *acc, int64_t pfn, uint64_t e, int64_t nr,
                           bint pmd_mapped) noexcept nogil:
        cdef int32_t mapcount
        cdef uint8_t folio_flags
        cdef folio_t *folio = self.machine.folio_of(pfn)
        cdef bint shmem = self.machine.page_is_shmem(pfn, folio)
        cdef bint dirty = (e & _PAGE_DIRTY) != 0
        if folio != NULL:
            folio_flags = folio.flags
            # the page's mapcount: the folio's PMD mappings and its own PTE mappings (for a
            # PMD mapping, the head page's stands for all 512)
            mapcount = folio.entire_mapcount + self.machine.mapcount[pfn]
        else:
            folio_flags = self.machine.flags[pfn]
            mapcount = self.machine.mapcount[pfn]
        if shmem and (self.machine.flags[pfn] & PG_DIRTY):
            dirty = True                          # smaps_account: pte_dirty || folio_test_dirty
        if (folio_flags & PG_LAZYFREE) and not dirty and not shmem:
            acc.lazyfree += nr
        acc.rss += nr
        if not shmem:
            acc.anonymous += nr
        acc.pss += (nr * (PAGE_SIZE << 12)) // (mapcount if mapcount > 0 else 1)
        if dirty:
            acc.pss_dirty += (nr * (PAGE_SIZE << 12)) // (mapcount if mapcount > 0 else 1)
        if pmd_mapped:
            if shmem:
                acc.shmem_pmd += nr
            else:
                acc.anon_huge += nr
        if e & _PAGE_ACCESSED:
            acc.referenced += nr
        if mapcount > 1:
            if dirty:
                acc.shared_dirty += nr
            else:
                acc.shared_clean += nr
        elif dirty:
            acc.private_dirty += nr
        else:
            acc.private_clean += nr

    cdef void _smaps(self, uint64_t start, uint64_t end, smaps_acc *acc) noexcept nogil:
        cdef uint64_t addr = start, next_addr, e
        cdef uint64_t *pmdp
        cdef uint64_t *pte
        cdef int64_t i, pfn, block
        while addr < end:
            next_addr = umin((addr & PMD_MASK) + PMD_SIZE, end)
            pmdp = self.pmd_entry(addr)
            if pmdp == NULL:
                next_addr = umin(self.skip_hole(addr), end)
            elif pmdp[0]:
                e = pmdp[0]
                if e & _PAGE_PSE:
                    pfn = <int64_t>entry_index(e)
                    block = pfn >> HPAGE_PMD_ORDER
                    if pfn == self.machine.huge_zero_pfn:     # R4: the zeropages never count
                        pass
                    elif self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER].refcount \
                            == self.machine.pmd_folio[pfn >> HPAGE_PMD_ORDER].entire_mapcount:
                        self.account_page(acc, pfn, e, (next_addr - addr) >> PAGE_SHIFT, True)
                    else:
                        # PTE mappings too (another process split its PMD): page by page, each
                        # with its own mapcount (smaps_account)
                        for i in range(HPAGE_PMD_NR):
                            self.account_page(acc, pfn + i, e, 1, True)
                else:
                    pte = self.pte_entry(e, 0)
                    for i in range(pte_index(addr), pte_index(next_addr - 1) + 1):
                        e = pte[i]
                        if e and not (e & _PAGE_SPECIAL):
                            self.account_page(acc, <int64_t>entry_index(e), e, 1, False)
            addr = next_addr

    def counters(self):
        """Per-process counters: rss_anon pages, page-table pages by kind, faults."""
        return dict(rss_anon=self.rss_anon, pte=self.nr_tables_pte, pmd=self.nr_tables_pmd,
                    pud=self.nr_tables_pud, deposited=self.nr_deposited, min_flt=self.min_flt,
                    maj_flt=self.maj_flt)

    @property
    def pgtables_pages(self):
        """mm_pgtables_bytes / 4096: PTE, PMD and PUD tables including deposits (VmPTE)."""
        return self.nr_tables_pte + self.nr_tables_pmd + self.nr_tables_pud + self.nr_deposited

    def entry(self, uint64_t addr):
        """(level, entry) of the leaf for addr: level 1 for a PMD leaf, 0 for a PTE, -1 if the
        walk ends at a none entry (entry 0). For tests and invariant checks."""
        cdef uint64_t *pmdp = self.pmd_entry(addr)
        if addr >= USER_TOP or pmdp == NULL or not pmdp[0]:
            return -1, 0
        if pmdp[0] & _PAGE_PSE:
            return 1, pmdp[0]
        return 0, self.pte_entry(pmdp[0], addr)[0]

    # ---- pickling (mmemu._persist; the state is checked by _load_core) ----------------------------
    # A process pickles as a reference into its machine, whose state carries every process:
    # (machine, mm_id) finds it again after loading. A closed process the machine no longer
    # lists (it exited) carries its own state.

    def __reduce__(self):
        cdef Machine m = self.machine
        if any(c is self for c in m.mms) or any(c is self for c in m.khugepaged_exited):
            return (_machine_core, (m, self.mm_id))
        return (_detached_core, (m, self._getstate()))

    def _getstate(self):
        """This process as plain data: settings, used part of each table pool (sparse), the VMA
        arrays up to nr_vmas, counters and the TLB (its cached PTE table as a pool index)."""
        cdef int level
        cdef int64_t n = self.nr_vmas, pt_table = -1
        P = _persist
        pools = []
        for level in range(NR_LEVELS):
            pools.append({"cap": self.pool_cap[level], "used": self.pool_used[level],
                          "tables": P.pack(self._pools[level][:self.pool_used[level] * PTRS_PER_TABLE]),
                          "free": self._pool_free[level][:self.pool_nfree[level]].copy()})
        if self.pt_tag != TLB_INVALID:
            pt_table = (self.pt_base - self.pool[LVL_PTE]) // PTRS_PER_TABLE
        return {
            "version": P.FORMAT_VERSION,
            "settings": dict(thp_always=self.thp_always, thp_madvise=self.thp_madvise,
                             use_zero_page=self.use_zero_page, zero_page=self.zero_page,
                             huge_zero_write_thp=self.huge_zero_write_thp, pt_reclaim=self.pt_reclaim,
                             arm64=self.arm64, atomic_write_fault=self.atomic_write_fault,
                             reuse_large_folios=self.reuse_large_folios, mthp_always=self.mthp_always,
                             mthp_madvise=self.mthp_madvise, defrag=self.defrag),
            "mm_id": self.mm_id, "khugepaged_seq": self.khugepaged_seq, "thp_disable": self.thp_disable,
            "pools": pools,
            "nr_tables": [self.nr_tables_pte, self.nr_tables_pmd, self.nr_tables_pud, self.nr_deposited],
            "vmas": {"start": self._vm_start[:n].copy(), "end": self._vm_end[:n].copy(),
                     "flags": self._vm_flags[:n].copy(), "anon": self._vm_anon[:n].copy(),
                     "pgoff": self._vm_pgoff[:n].copy(), "file": self._vm_file[:n].copy(),
                     "cap": self.vma_cap, "cache": self.vma_cache, "next_anon_vma": self.next_anon_vma},
            "counters": [self.rss_anon, self.rss_shmem, self.min_flt, self.maj_flt],
            "holds_huge_zero": self.holds_huge_zero, "closed": self.closed,
            "tlb": [self.tlb_tag, self.tlb_mask, self.tlb_perm, self.pt_tag, pt_table],
        }

    def _commit(self, dict rec):
        """Install a state _load_core checked: arrays adopted, every pointer derived from them."""
        cdef int level
        cdef cnp.ndarray table, free
        cdef int64_t pt_table
        self.mm_id, self.khugepaged_seq, self.thp_disable = rec["mm_id"], rec["khugepaged_seq"], rec["thp_disable"]
        for level in range(NR_LEVELS):
            table, free = rec["tables"][level], rec["free"][level]
            self._pools[level], self._pool_free[level] = table, free
            self.pool[level] = <uint64_t *>cnp.PyArray_DATA(table)
            self.pool_free[level] = <int32_t *>cnp.PyArray_DATA(free)
            self.pool_cap[level] = rec["caps"][level]
            self.pool_used[level] = rec["used"][level]
            self.pool_nfree[level] = rec["nfree"][level]
        self.nr_tables_pte, self.nr_tables_pmd, self.nr_tables_pud, self.nr_deposited = rec["nr_tables"]
        v = rec["vmas"]
        self._vm_start, self._vm_end, self._vm_flags = v["start"], v["end"], v["flags"]
        self._vm_anon, self._vm_pgoff, self._vm_file = v["anon"], v["pgoff"], v["file"]
        self.vm_start = <uint64_t *>cnp.PyArray_DATA(self._vm_start)
        self.vm_end = <uint64_t *>cnp.PyArray_DATA(self._vm_end)
        self.vm_flags = <uint32_t *>cnp.PyArray_DATA(self._vm_flags)
        self.vm_anon_vma = <int32_t *>cnp.PyArray_DATA(self._vm_anon)
        self.vm_pgoff = <uint64_t *>cnp.PyArray_DATA(self._vm_pgoff)
        self.vm_file = <int32_t *>cnp.PyArray_DATA(self._vm_file)
        self.vma_cap, self.nr_vmas, self.vma_cache, self.next_anon_vma = v["cap"], v["n"], v["cache"], v["next_anon_vma"]
        self.rss_anon, self.rss_shmem, self.min_flt, self.maj_flt = rec["counters"]
        self.holds_huge_zero, self.closed = rec["holds_huge_zero"], rec["closed"]
        self.tlb_tag, self.tlb_mask, self.tlb_perm, self.pt_tag, pt_table = rec["tlb"]
        self.pt_base = self.pool[LVL_PTE] + (pt_table if pt_table >= 0 else 0) * PTRS_PER_TABLE
        self.last_leaf = NULL                 # only read right after the walk that sets it
        self.last_leaf_pmd = False


# =============================================================================================
# Pickling: loading and checking a state (mmemu._persist keeps the format version and packing)
# =============================================================================================
# The C code above indexes without bounds checks, so a state read back from a pickle is checked
# here before any pointer is derived from it: dtypes and sizes, every page-table entry (a table
# index below its pool's high-water mark, each table referenced or free at most once, frames
# inside RAM, PMD leaves on PMD-order folios), VMAs, folio orders, the shmem page caches (whole,
# contiguous folios) and the ids that tie processes, files and khugepaged together.

cdef folio_t _folio_probe
cdef size_t FOLIO_FLAGS_AT = <size_t>(<char *>&_folio_probe.flags - <char *>&_folio_probe)
cdef size_t FOLIO_ORDER_AT = <size_t>(<char *>&_folio_probe.order - <char *>&_folio_probe)
_CORE_FLAGS = ("thp_always", "thp_madvise", "use_zero_page", "zero_page", "huge_zero_write_thp", "pt_reclaim",
               "arm64", "atomic_write_fault", "reuse_large_folios")


def _machine_core(Machine machine, mm_id):
    """Unpickle a process: the one its machine's state rebuilt."""
    with _persist.guard("MMCore"):
        return machine.core_by_id(_persist.integer(mm_id, "MMCore.mm_id", 1, (1 << 31) - 1))


def _detached_core(Machine machine, state):
    """Unpickle a closed process its machine no longer lists: built on the machine, then taken
    off it again (as unregister_mm left it), with the mm_id counter as it was."""
    cdef MMCore core
    cdef int64_t next_id = machine.next_mm_id
    with _persist.guard("MMCore"):
        pmd_head = _pmd_heads(machine._pmd_folio, machine.nr_blocks)
        rec = _load_core(state, machine.nr_frames, pmd_head, set(machine.files), "MMCore")
        if not rec["closed"]:
            _persist.fail("MMCore", "an open process must be listed by its machine")
    core = MMCore(machine, **rec["settings"])
    machine.mms.remove(core)
    machine.next_mm_id = next_id
    core._commit(rec)
    return core


def _pmd_heads(pmd_folio, int64_t nr_blocks):
    """The blocks that hold a PMD-order folio (PG_HEAD in their descriptor)."""
    return (pmd_folio.reshape(nr_blocks, sizeof(folio_t))[:, FOLIO_FLAGS_AT] & PG_HEAD) != 0


def _check_folios(pmd_folio, mthp_folio, int64_t nr_blocks, packed):
    """Folio descriptors folio_of() and folio_pfn() can trust: a PMD-order folio (PG_HEAD) has
    order 9, an mTHP order 2..8, and every quad of an mTHP carries its order. Returns (the
    blocks that hold a PMD-order folio, a view of the order of each quad). Of the mTHP
    descriptors only the groups of 64 quads (the largest mTHP) that the pickle stored a byte
    of are looked at: the rest is zero, and RAM that never held an mTHP costs nothing."""
    cdef size_t size = sizeof(folio_t), span = 64 * sizeof(folio_t)
    pmd = pmd_folio.reshape(nr_blocks, size)
    order = pmd[:, FOLIO_ORDER_AT]
    pmd_head = _pmd_heads(pmd_folio, nr_blocks)
    if ((order != 0) & (order != HPAGE_PMD_ORDER)).any() or (pmd_head & (order != HPAGE_PMD_ORDER)).any() \
            or pmd_head[0]:
        _persist.fail("Machine", "a PMD-order folio descriptor with a bad order")
    groups = mthp_folio.reshape(-1, span)
    first = packed["index"] * packed["chunk"] // span
    last = ((packed["index"] + 1) * packed["chunk"] - 1) // span
    tail = np.arange(packed["nbytes"] // packed["chunk"] * packed["chunk"] // span, groups.shape[0])
    used = np.unique(np.concatenate([first, last, tail]))
    q = groups[used].reshape(-1, size)[:, FOLIO_ORDER_AT]
    if ((q == 1) | (q >= HPAGE_PMD_ORDER)).any():
        _persist.fail("Machine", "an mTHP descriptor with a bad order")
    for k in range(MIN_MTHP_ORDER + 1, HPAGE_PMD_ORDER):
        group = (q == k).reshape(-1, 1 << (k - 2))
        if (group.any(axis=1) & ~group.all(axis=1)).any():
            _persist.fail("Machine", f"an order-{k} mTHP whose quads disagree on its order")
    return pmd_head, mthp_folio.reshape(-1, size)[:, FOLIO_ORDER_AT]


def _load_files(files, dict s, int64_t nr_frames, pmd_head, mthp_order, mthp_blocks):
    """The shmem files: ids below next_fid, page caches that cover i_size in whole 2 MiB
    blocks, frames inside RAM held by one page cache slot each, large folios whole and in
    order (the truncation and fault-around code steps from a page to its folio's head)."""
    P = _persist
    out, seen, held = [], set(), []
    for i, rec in enumerate(files):
        what = f"Machine.files[{i}]"
        fid = P.integer(rec["fid"], f"{what}.fid", 1, s["next_fid"] - 1)
        if fid in seen:
            P.fail(what, f"file id {fid} twice")
        seen.add(fid)
        size = P.integer(rec["size"], f"{what}.size", 0, 1 << 36)
        raw = rec["pages"]
        if not isinstance(raw, np.ndarray) or raw.ndim != 1:
            P.fail(what, "the page cache must be a vector")
        length = raw.shape[0]
        if not (length == 1 or length % HPAGE_PMD_NR == 0) or length < (size + HPAGE_PMD_NR - 1) // HPAGE_PMD_NR * HPAGE_PMD_NR:
            P.fail(what, f"a page cache of {length} slots for {size} pages")
        pages = P.dense(raw, np.int64, length, f"{what}.pages")
        if ((pages != 0) & ((pages < HPAGE_PMD_NR) | (pages >= nr_frames))).any():
            P.fail(what, "a page cache frame outside RAM")
        _check_page_cache(pages, pmd_head, mthp_order, mthp_blocks, what)
        held.append(pages[pages != 0])
        out.append({"fid": fid, "size": size, "pages": pages,
                    "fallocend": P.integer(rec["fallocend"], f"{what}.fallocend", 0, 1 << 36),
                    "anonymous": P.boolean(rec["anonymous"], f"{what}.anonymous"),
                    "fd_open": P.boolean(rec["fd_open"], f"{what}.fd_open")})
    held = np.concatenate(held) if held else np.zeros(0, np.int64)
    if np.unique(held).shape[0] != held.shape[0]:
        P.fail("Machine", "a frame in two page cache slots")
    return out


def _check_page_cache(pages, pmd_head, mthp_order, mthp_blocks, what):
    """Every cached frame's folio lies whole in the page cache, its pages in order."""
    index = np.flatnonzero(pages)
    pfn = pages[index]
    block = pfn >> HPAGE_PMD_ORDER
    order = np.zeros(pfn.shape[0], np.int64)
    order[pmd_head[block]] = HPAGE_PMD_ORDER
    small = ~pmd_head[block] & (mthp_blocks[block] != 0)
    order[small] = mthp_order[pfn[small] >> 2]
    nr = np.int64(1) << order
    offset = pfn & (nr - 1)
    first = index - offset
    if ((first < 0) | (first + nr > pages.shape[0])).any():
        _persist.fail(what, "a large folio runs past the page cache")
    prev, nxt = offset > 0, offset < nr - 1
    if (pages[index[prev] - 1] != pfn[prev] - 1).any() or (pages[index[nxt] + 1] != pfn[nxt] + 1).any():
        _persist.fail(what, "a large folio's pages are not cached whole and in order")


def _load_settings(s, what):
    """The MMCore constructor's arguments, each of the type and range it takes."""
    P = _persist
    out = {name: P.boolean(s[name], f"{what}.{name}") for name in _CORE_FLAGS}
    for name in ("mthp_always", "mthp_madvise"):
        out[name] = P.integer(s[name], f"{what}.{name}", 0, 0x1fc)
        if out[name] & ~0x1fc:
            P.fail(what, f"{name}: mTHP orders must be 2..8")
    out["defrag"] = P.integer(s["defrag"], f"{what}.defrag", DEFRAG_ALWAYS, DEFRAG_NEVER)
    if len(s) != len(out):
        P.fail(what, f"unknown settings {sorted(set(s) - set(out))}")
    return out


def _load_core(state, int64_t nr_frames, pmd_head, fids, what):
    """One process's state, checked and copied into arrays of its recorded capacities."""
    P = _persist
    P.check_version(state, what)
    rec = {"settings": _load_settings(state["settings"], f"{what}.settings"),
           "mm_id": P.integer(state["mm_id"], f"{what}.mm_id", 1, (1 << 31) - 1),
           "khugepaged_seq": P.integer(state["khugepaged_seq"], f"{what}.khugepaged_seq", 0),
           "thp_disable": P.integer(state["thp_disable"], f"{what}.thp_disable", 0, 2),
           "holds_huge_zero": P.boolean(state["holds_huge_zero"], f"{what}.holds_huge_zero"),
           "closed": P.boolean(state["closed"], f"{what}.closed")}
    if rec["thp_disable"] not in (0, THP_DISABLE_COMPLETELY, THP_DISABLE_EXCEPT_ADVISED):
        P.fail(what, f"bad THP disable mode {rec['thp_disable']}")
    _load_pools(state["pools"], rec, nr_frames, pmd_head, what)
    nr_tables = list(state["nr_tables"])
    if len(nr_tables) != 4:
        P.fail(what, "nr_tables must hold 4 counts")
    rec["nr_tables"] = [P.integer(v, f"{what}.nr_tables") for v in nr_tables]
    counters = list(state["counters"])
    if len(counters) != 4:
        P.fail(what, "counters must hold 4 counts")
    rec["counters"] = [P.integer(v, f"{what}.counters") for v in counters]
    rec["vmas"] = _load_vmas(state["vmas"], fids, what)
    tlb = list(state["tlb"])
    if len(tlb) != 5:
        P.fail(what, "the TLB state must hold 5 values")
    rec["tlb"] = [P.integer(v, f"{what}.tlb", 0, (1 << 64) - 1) for v in tlb[:4]]
    pt_table = P.integer(tlb[4], f"{what}.tlb", -1, rec["used"][LVL_PTE] - 1)
    if rec["tlb"][3] == TLB_INVALID:
        pt_table = -1
    elif pt_table < 0:
        P.fail(what, "a cached PTE table without its index")
    rec["tlb"].append(pt_table)
    return rec


def _load_pools(pools, dict rec, int64_t nr_frames, pmd_head, what):
    """The table pools at their recorded capacity (growth flushes the TLB, so capacity is part
    of the behaviour), then the checks of _check_tables."""
    P = _persist
    if len(pools) != NR_LEVELS:
        P.fail(what, f"{len(pools)} table pools instead of {NR_LEVELS}")
    rec["tables"], rec["free"], rec["caps"], rec["used"], rec["nfree"] = [], [], [], [], []
    for level in range(NR_LEVELS):
        p = pools[level]
        cap = P.integer(p["cap"], f"{what}.pools[{level}].cap", 1, (1 << 31) - 1)
        used = P.integer(p["used"], f"{what}.pools[{level}].used", 0, cap)
        table = huge_zeros(cap * PTRS_PER_TABLE, np.uint64)
        P.unpack(p["tables"], table[:used * PTRS_PER_TABLE], f"{what}.pools[{level}].tables")
        raw = p["free"]
        if not isinstance(raw, np.ndarray) or raw.ndim != 1 or raw.shape[0] > used:
            P.fail(what, f"pool {level}: a free list longer than the tables in use")
        free = np.zeros(cap, np.int32)
        free[:raw.shape[0]] = P.dense(raw, np.int32, raw.shape[0], f"{what}.pools[{level}].free")
        for key, value in (("tables", table), ("free", free), ("caps", cap), ("used", used),
                           ("nfree", raw.shape[0])):
            rec[key].append(value)
    _check_tables(rec, nr_frames, pmd_head, what)


def _check_tables(dict rec, int64_t nr_frames, pmd_head, what):
    """Page tables the walk can follow blindly: one PGD; every entry of an upper table names a
    table below that pool's high-water mark; no table is referenced twice, or both referenced
    and free (a double free would overrun the free list); free tables are zero; leaves map
    frames inside RAM, a PMD leaf the head of a PMD-order folio."""
    P = _persist
    used, free = rec["used"], rec["free"]
    if used[LVL_PGD] != 1 or rec["nfree"][LVL_PGD]:
        P.fail(what, "the PGD pool must hold the PGD alone")
    refs = [None] * NR_LEVELS
    for level in range(NR_LEVELS):
        tables = rec["tables"][level][:used[level] * PTRS_PER_TABLE]
        fl = free[level][:rec["nfree"][level]]
        if ((fl < 0) | (fl >= used[level])).any():
            P.fail(what, f"pool {level}: a free table out of range")
        if fl.shape[0] and tables.reshape(used[level], PTRS_PER_TABLE)[fl].any():
            P.fail(what, f"pool {level}: a free table that is not empty")
        e = tables[tables != 0]
        frame = (e >> np.uint64(PAGE_SHIFT)) & np.uint64(PFN_MASK)
        if level == LVL_PTE:
            if (frame >= np.uint64(nr_frames)).any():
                P.fail(what, "a PTE maps a frame outside RAM")
            continue
        huge = (e & np.uint64(_PAGE_PSE)) != 0
        if level != LVL_PMD and huge.any():
            P.fail(what, f"a huge entry at level {level}")
        if level == LVL_PMD and huge.any():
            leaf = frame[huge]
            if ((leaf & np.uint64(HPAGE_PMD_NR - 1)) != 0).any() or (leaf >= np.uint64(nr_frames)).any() \
                    or not pmd_head[(leaf >> np.uint64(HPAGE_PMD_ORDER)).astype(np.int64)].all():
                P.fail(what, "a PMD leaf that does not map a PMD-order folio")
        index = frame[~huge]
        if (index >= np.uint64(used[level - 1])).any():
            P.fail(what, f"an entry at level {level} names a table past its pool")
        refs[level - 1] = index.astype(np.int64)
    for level in range(LVL_PGD):
        both = np.concatenate([refs[level], free[level][:rec["nfree"][level]].astype(np.int64)])
        if np.unique(both).shape[0] != both.shape[0]:
            P.fail(what, f"pool {level}: a table referenced twice, or referenced and free")


def _load_vmas(v, fids, what):
    """The VMA arrays at their recorded capacity: sorted, disjoint, page-aligned ranges below
    2**47, file offsets that cannot overflow a page index, shmem files that exist."""
    P = _persist
    n = v["start"].shape[0]
    cap = P.integer(v["cap"], f"{what}.vmas.cap", max(n, 1), (1 << 31) - 1)
    out = {"n": n, "cap": cap, "cache": P.integer(v["cache"], f"{what}.vmas.cache"),
           "next_anon_vma": P.integer(v["next_anon_vma"], f"{what}.vmas.next_anon_vma", -(1 << 31), (1 << 31) - 1)}
    for key, dtype in (("start", np.uint64), ("end", np.uint64), ("flags", np.uint32), ("anon", np.int32),
                       ("pgoff", np.uint64), ("file", np.int32)):
        arr = np.zeros(cap, dtype)
        arr[:n] = P.dense(v[key], dtype, n, f"{what}.vmas.{key}")
        out[key] = arr
    start, end, pgoff, file = out["start"][:n], out["end"][:n], out["pgoff"][:n], out["file"][:n]
    if ((start | end) & np.uint64(PAGE_SIZE - 1)).any() or (start >= end).any() or (end > np.uint64(USER_TOP)).any() \
            or (start[1:] < end[:-1]).any():
        P.fail(what, "VMAs that are not sorted, disjoint, page-aligned ranges below 2**47")
    if (pgoff + ((end - start) >> np.uint64(PAGE_SHIFT)) > np.uint64(1 << 40)).any():
        P.fail(what, "a VMA's page offset out of range")
    if not set(np.unique(file[file != 0]).tolist()) <= set(fids):
        P.fail(what, "a VMA maps a shmem file that does not exist")
    return out


def _check_processes(recs, dict s):
    """mm_ids unique and below the machine's counter; khugepaged sequence numbers likewise."""
    ids = [r["mm_id"] for r in recs]
    seqs = [r["khugepaged_seq"] for r in recs if r["khugepaged_seq"]]
    if len(set(ids)) != len(ids) or any(i >= s["next_mm_id"] for i in ids):
        _persist.fail("Machine", "process ids repeat or pass the machine's counter")
    if len(set(seqs)) != len(seqs) or any(q >= s["next_khugepaged_seq"] for q in seqs):
        _persist.fail("Machine", "khugepaged sequence numbers repeat or pass the machine's counter")


# =============================================================================================
# Invariant check (Machine.check_state, MM.check): every reference recounted from scratch
# =============================================================================================
# The engine's reference conventions, which the check asserts (learned from the fault, zap,
# split and fork paths above):
# - an order-0 anonymous page: refcount == mapcount == its PTE mappings (nothing pins pages);
#   it is freed when they reach 0, so a live one has at least one;
# - a large folio (PMD-order THP, mTHP, shmem THP or piece of one): the per-frame refcount is 0;
#   folio.refcount == PTE mappings of its pages + folio.entire_mapcount (PMD mappings); each
#   page's mapcount counts its PTE mappings only; an anonymous one with refcount 0 is leaked;
# - folio.mm_count[s] (MM_ID) never exceeds the mappings process mm_id[s] really has: it can
#   be lower, as a third process's mappings are not tracked until a slot frees;
# - a shmem page is referenced by exactly one page-cache slot; the cache's reference is not in
#   any refcount (refcount 0 for an order-0 shmem page, folio.refcount counts mappings only);
# - the huge zeropage has no refcount or mapcount; each process that ever mapped it holds one
#   reference (holds_huge_zero) until it exits; its PMD maps, like anonymous THP PMD maps, have
#   a deposited PTE table (counted in nr_deposited, NR_PAGETABLE and the memcg); shmem PMD
#   maps have none;
# - page tables live in per-process pools, not in the buddy allocator: they are counted
#   (VmPTE, nr_page_table_pages) and charged to the memcg, the deposits too;
# - the memcg is charged for anonymous and shmem frames and page tables, not for the huge
#   zeropage or fragment_memory's frames.

cdef struct mm_tally:
    int64_t rss_anon, rss_shmem, deposits, anon_pmd, shmem_pmd, hz_pmd
    int64_t tables[NR_LEVELS]

cdef enum:
    CHECK_MAX_PROBLEMS = 200


cdef class _InvariantChecker:
    """One check of one machine: expected counts accumulate in per-frame arrays while the page
    tables and page caches are walked, then one pass over the frames compares. O(frames +
    page-table entries)."""
    cdef Machine m
    cdef list problems
    cdef int64_t nproblems
    cdef cnp.ndarray _pte_maps, _pmd_maps, _mm_maps, _touched, _file_refs, _slots, _fcap, _pinned
    cdef int32_t *pte_maps      # PTE mappings per frame, every process
    cdef int32_t *pmd_maps      # PMD mappings per block (THPs of both kinds; not the huge zeropage)
    cdef int32_t *mm_maps       # mappings of one process per large folio head (reset per process)
    cdef int64_t *touched       # heads with mm_maps > 0
    cdef int64_t ntouched
    cdef int32_t *file_refs     # page-cache slots per frame
    cdef uint8_t *slots         # per folio head: MM_ID slots confirmed by a mapping process
    cdef int64_t *fcap          # page-cache capacity per file id (0: no such file)
    cdef int32_t *pinned        # expected block_pinned
    cdef int64_t tables_total, hz_holders

    def __cinit__(self, Machine m):
        self.m = m
        self.problems = []
        self.nproblems = 0
        self._pte_maps = huge_zeros(m.nr_frames, np.int32)
        self._pmd_maps = np.zeros(m.nr_blocks, np.int32)
        self._mm_maps = huge_zeros(m.nr_frames, np.int32)
        self._touched = huge_zeros(m.nr_frames, np.int64)
        self._file_refs = huge_zeros(m.nr_frames, np.int32)
        self._slots = huge_zeros(m.nr_frames, np.uint8)
        self._fcap = np.zeros(m.file_slots, np.int64)
        self._pinned = np.zeros(m.nr_blocks, np.int32)
        self.pte_maps = <int32_t *>cnp.PyArray_DATA(self._pte_maps)
        self.pmd_maps = <int32_t *>cnp.PyArray_DATA(self._pmd_maps)
        self.mm_maps = <int32_t *>cnp.PyArray_DATA(self._mm_maps)
        self.touched = <int64_t *>cnp.PyArray_DATA(self._touched)
        self.file_refs = <int32_t *>cnp.PyArray_DATA(self._file_refs)
        self.slots = <uint8_t *>cnp.PyArray_DATA(self._slots)
        self.fcap = <int64_t *>cnp.PyArray_DATA(self._fcap)
        self.pinned = <int32_t *>cnp.PyArray_DATA(self._pinned)

    cdef void problem(self, str msg):
        self.nproblems += 1
        if self.nproblems <= CHECK_MAX_PROBLEMS:
            self.problems.append(msg)

    def run(self):
        cdef MMCore mm
        self.walk_files()
        for mm in self.m.mms:
            self.walk_mm(mm, f"process {mm.mm_id}")
        for mm in self.m.khugepaged_exited:
            self.walk_mm(mm, f"exited process {mm.mm_id}")
        self.check_frames()
        if self.nproblems > CHECK_MAX_PROBLEMS:
            self.problems.append(f"... and {self.nproblems - CHECK_MAX_PROBLEMS} more problems")
        return self.problems

    # ---- the page caches ------------------------------------------------------------------------

    cdef void walk_files(self):
        cdef ShmemFile f
        cdef int64_t i, pfn, cap, head, nr
        cdef folio_t *folio
        cdef Machine m = self.m
        for f in m.files.values():
            cap = f._pages.shape[0]
            if f.fid >= m.file_slots or m.file_pages[f.fid] != f.pages or m.file_size[f.fid] != f.size:
                self.problem(f"file {f.fid}: the C table of page caches disagrees with the file")
                continue
            self.fcap[f.fid] = cap
            for i in range(cap):
                pfn = f.pages[i]
                if not pfn:
                    continue
                if pfn < HPAGE_PMD_NR or pfn >= m.nr_frames:
                    self.problem(f"file {f.fid} page {i}: frame {pfn} outside RAM")
                    continue
                self.file_refs[pfn] += 1
                if not (m.flags[pfn] & PG_SHMEM):
                    self.problem(f"file {f.fid} page {i}: frame {pfn} is not a shmem page")
                folio = m.folio_of(pfn)
                if folio != NULL:
                    head = m.folio_pfn(folio)
                    nr = (<int64_t>1) << folio.order
                    if (i - (pfn - head)) % nr:
                        self.problem(f"file {f.fid} page {i}: its folio (head {head}, order "
                                     f"{folio.order}) is not naturally aligned in the file")

    # ---- one process's page tables -------------------------------------------------------------

    cdef int64_t vma_at(self, MMCore mm, uint64_t addr):
        cdef int64_t i = mm.vma_lower_bound(addr)
        if i < mm.nr_vmas and mm.vm_start[i] <= addr:
            return i
        return -1

    cdef int64_t table_of(self, MMCore mm, int level, uint64_t e, uint8_t *seen, str who,
                          uint64_t addr):
        """The index of the table an upper entry points to, or -1 (reported) if it is bad."""
        cdef int64_t idx = <int64_t>entry_index(e)
        if not (e & _PAGE_PRESENT) or e & _PAGE_PSE and level != LVL_PTE:
            self.problem(f"{who}: bad table entry {e:#x} above level {level} at {addr:#x}")
            return -1
        if idx >= mm.pool_used[level]:
            self.problem(f"{who}: entry at {addr:#x} points past the level-{level} pool")
            return -1
        if seen[idx]:
            self.problem(f"{who}: level-{level} table {idx} is referenced twice (again at {addr:#x})")
            return -1
        seen[idx] = 1
        return idx

    cdef void walk_mm(self, MMCore mm, str who):
        cdef mm_tally t
        cdef uint64_t *pud
        cdef uint64_t *pmd
        cdef uint64_t *pte
        cdef uint64_t e, addr
        cdef int64_t i, j, k, l, idx
        cdef int level
        memset(&t, 0, sizeof(t))
        seen = [np.zeros(max(mm.pool_used[level], 1), np.uint8) for level in range(NR_LEVELS)]
        cdef uint8_t *seen_pud = <uint8_t *>cnp.PyArray_DATA(seen[LVL_PUD])
        cdef uint8_t *seen_pmd = <uint8_t *>cnp.PyArray_DATA(seen[LVL_PMD])
        cdef uint8_t *seen_pte = <uint8_t *>cnp.PyArray_DATA(seen[LVL_PTE])
        self.ntouched = 0
        for i in range(PTRS_PER_TABLE):
            e = mm.pool[LVL_PGD][i]
            if not e:
                continue
            addr = <uint64_t>i << PGDIR_SHIFT
            idx = self.table_of(mm, LVL_PUD, e, seen_pud, who, addr)
            if idx < 0:
                continue
            t.tables[LVL_PUD] += 1
            pud = mm.pool[LVL_PUD] + idx * PTRS_PER_TABLE
            for j in range(PTRS_PER_TABLE):
                if not pud[j]:
                    continue
                addr = (<uint64_t>i << PGDIR_SHIFT) | (<uint64_t>j << PUD_SHIFT)
                idx = self.table_of(mm, LVL_PMD, pud[j], seen_pmd, who, addr)
                if idx < 0:
                    continue
                t.tables[LVL_PMD] += 1
                pmd = mm.pool[LVL_PMD] + idx * PTRS_PER_TABLE
                for k in range(PTRS_PER_TABLE):
                    e = pmd[k]
                    if not e:
                        continue
                    addr = (<uint64_t>i << PGDIR_SHIFT) | (<uint64_t>j << PUD_SHIFT) | (<uint64_t>k << PMD_SHIFT)
                    if e & _PAGE_PSE:
                        self.pmd_leaf(mm, &t, e, addr, who)
                        continue
                    idx = self.table_of(mm, LVL_PTE, e, seen_pte, who, addr)
                    if idx < 0:
                        continue
                    t.tables[LVL_PTE] += 1
                    pte = mm.pool[LVL_PTE] + idx * PTRS_PER_TABLE
                    for l in range(PTRS_PER_TABLE):
                        if pte[l]:
                            self.pte_leaf(mm, &t, pte[l], addr | (<uint64_t>l << PAGE_SHIFT), who)
        self.check_pools(mm, &t, seen, who)
        self.check_mm_counters(mm, &t, who)
        self.check_mm_ids(mm, who)

    cdef bint file_page_ok(self, MMCore mm, int64_t vma, uint64_t addr, int64_t pfn, str who):
        """A shmem frame mapped at addr is the page the VMA's file holds at addr's index."""
        cdef int32_t fid
        cdef int64_t index
        if vma < 0:
            return True                                   # reported by the caller
        fid = mm.vm_file[vma]
        index = <int64_t>(mm.vm_pgoff[vma] + ((addr - mm.vm_start[vma]) >> PAGE_SHIFT))
        if fid <= 0 or fid >= self.m.file_slots or not self.fcap[fid]:
            self.problem(f"{who}: shmem frame {pfn} mapped at {addr:#x} in a VMA of no shmem file")
            return False
        if index >= self.fcap[fid] or self.m.file_pages[fid][index] != pfn:
            self.problem(f"{who}: {addr:#x} maps frame {pfn}, not file {fid}'s page {index}")
            return False
        return True

    cdef void anon_vma_ok(self, MMCore mm, int64_t vma, uint64_t addr, str what, str who):
        if vma >= 0 and mm.vm_file[vma]:
            self.problem(f"{who}: {what} at {addr:#x} in a shared mapping")

    cdef void mm_add(self, int64_t head, int32_t nr):
        if self.mm_maps[head] == 0:
            self.touched[self.ntouched] = head
            self.ntouched += 1
        self.mm_maps[head] += nr

    cdef void pte_leaf(self, MMCore mm, mm_tally *t, uint64_t e, uint64_t addr, str who):
        cdef Machine m = self.m
        cdef int64_t vma = self.vma_at(mm, addr)
        cdef int64_t pfn = <int64_t>entry_index(e)
        cdef folio_t *folio
        if not (e & _PAGE_PRESENT):
            self.problem(f"{who}: non-present PTE {e:#x} at {addr:#x}")
            return
        if vma < 0:
            self.problem(f"{who}: PTE at {addr:#x} outside every VMA")
        if e & _PAGE_SPECIAL:
            if pfn != 0:
                self.problem(f"{who}: special PTE at {addr:#x} maps frame {pfn}, not the zeropage")
            self.anon_vma_ok(mm, vma, addr, "zeropage PTE", who)
            return
        if pfn < HPAGE_PMD_NR or pfn >= m.nr_frames:
            self.problem(f"{who}: PTE at {addr:#x} maps frame {pfn} outside RAM")
            return
        if m.area.free_order_of(pfn) >= 0:
            self.problem(f"{who}: PTE at {addr:#x} maps frame {pfn}, which is free")
            return
        folio = m.folio_of(pfn)
        if folio != NULL and folio.order == HPAGE_PMD_ORDER and folio.flags & PG_HUGE_ZERO:
            self.problem(f"{who}: PTE at {addr:#x} maps frame {pfn} of the huge zeropage")
            return
        if folio == NULL and m.flags[pfn] & PG_FOREIGN:
            self.problem(f"{who}: PTE at {addr:#x} maps frame {pfn}, held by fragment_memory")
            return
        self.pte_maps[pfn] += 1
        if m.flags[pfn] & PG_SHMEM:
            t.rss_shmem += 1
            self.file_page_ok(mm, vma, addr, pfn, who)
            return
        t.rss_anon += 1
        self.anon_vma_ok(mm, vma, addr, "anonymous PTE", who)
        if folio != NULL:
            self.mm_add(m.folio_pfn(folio), 1)

    cdef void pmd_leaf(self, MMCore mm, mm_tally *t, uint64_t e, uint64_t addr, str who):
        cdef Machine m = self.m
        cdef int64_t vma = self.vma_at(mm, addr)
        cdef int64_t pfn = <int64_t>entry_index(e), block
        cdef folio_t *folio
        if not (e & _PAGE_PRESENT):
            self.problem(f"{who}: non-present PMD leaf {e:#x} at {addr:#x}")
            return
        if vma < 0 or mm.vm_end[vma] < addr + PMD_SIZE:
            self.problem(f"{who}: PMD mapping at {addr:#x} not inside one VMA")
        if pfn & (HPAGE_PMD_NR - 1) or pfn < HPAGE_PMD_NR or pfn >= m.nr_frames:
            self.problem(f"{who}: PMD at {addr:#x} maps frame {pfn}, no 2 MiB block of RAM")
            return
        block = pfn >> HPAGE_PMD_ORDER
        folio = &m.pmd_folio[block]
        if not (folio.flags & PG_HEAD):
            self.problem(f"{who}: PMD at {addr:#x} maps block {block}, which holds no PMD-order folio")
            return
        if folio.flags & PG_HUGE_ZERO:
            if pfn != m.huge_zero_pfn:
                self.problem(f"{who}: PMD at {addr:#x} maps a huge zeropage that is not the machine's")
            t.hz_pmd += 1
            t.deposits += 1
            self.anon_vma_ok(mm, vma, addr, "huge zeropage PMD", who)
            return
        self.pmd_maps[block] += 1
        if m.flags[pfn] & PG_SHMEM:
            t.shmem_pmd += 1
            t.rss_shmem += HPAGE_PMD_NR
            self.file_page_ok(mm, vma, addr, pfn, who)
            return
        if not (folio.flags & PG_ANON):
            self.problem(f"{who}: PMD at {addr:#x} maps block {block}, neither anonymous nor shmem")
            return
        t.anon_pmd += 1
        t.deposits += 1
        t.rss_anon += HPAGE_PMD_NR
        self.anon_vma_ok(mm, vma, addr, "THP PMD", who)
        self.mm_add(pfn, 1)

    cdef void check_pools(self, MMCore mm, mm_tally *t, list seen, str who):
        """Every table of each pool is reachable once or on the free list, never both."""
        cdef int level
        cdef int64_t k, idx, live
        cdef uint8_t *s
        for level in range(LVL_PUD + 1):
            s = <uint8_t *>cnp.PyArray_DATA(seen[level])
            for k in range(mm.pool_nfree[level]):
                idx = mm.pool_free[level][k]
                if idx < 0 or idx >= mm.pool_used[level]:
                    self.problem(f"{who}: level-{level} free list holds table {idx} past the pool")
                elif s[idx]:
                    self.problem(f"{who}: level-{level} table {idx} is both free and in use")
            live = mm.pool_used[level] - mm.pool_nfree[level]
            if live != t.tables[level]:
                self.problem(f"{who}: level-{level} pool has {live} tables in use, "
                             f"{t.tables[level]} reachable (leaked tables)")

    cdef void check_mm_counters(self, MMCore mm, mm_tally *t, str who):
        cdef int64_t v, anon_pmd, shmem_pmd
        cdef smaps_acc acc, sum_acc
        memset(&sum_acc, 0, sizeof(sum_acc))
        if mm.rss_anon != t.rss_anon:
            self.problem(f"{who}: RssAnon {mm.rss_anon} pages, page tables map {t.rss_anon}")
        if mm.rss_shmem != t.rss_shmem:
            self.problem(f"{who}: RssShmem {mm.rss_shmem} pages, page tables map {t.rss_shmem}")
        for level, name, n in ((LVL_PTE, "PTE", mm.nr_tables_pte), (LVL_PMD, "PMD", mm.nr_tables_pmd),
                               (LVL_PUD, "PUD", mm.nr_tables_pud)):
            if n != t.tables[level]:
                self.problem(f"{who}: {n} {name} tables counted, {t.tables[level]} reachable")
        if mm.nr_deposited != t.deposits:
            self.problem(f"{who}: {mm.nr_deposited} deposited tables counted, "
                         f"{t.deposits} anonymous PMD maps need one")
        self.tables_total += t.tables[LVL_PTE] + t.tables[LVL_PMD] + t.tables[LVL_PUD] + t.deposits
        if t.hz_pmd and not mm.holds_huge_zero:
            self.problem(f"{who}: maps the huge zeropage without holding a reference to it")
        if mm.holds_huge_zero:
            self.hz_holders += 1
        for v in range(mm.nr_vmas):
            memset(&acc, 0, sizeof(acc))
            mm._smaps(mm.vm_start[v], mm.vm_end[v], &acc)
            sum_acc.anon_huge += acc.anon_huge
            sum_acc.shmem_pmd += acc.shmem_pmd
            sum_acc.rss += acc.rss
            sum_acc.anonymous += acc.anonymous
        anon_pmd = shmem_pmd = 0
        mm._pmd_mapped_pages(&anon_pmd, &shmem_pmd)
        if anon_pmd != sum_acc.anon_huge or shmem_pmd != sum_acc.shmem_pmd:
            self.problem(f"{who}: the PMD level shows {anon_pmd}/{shmem_pmd} anonymous/shmem pages mapped "
                         f"huge, smaps {sum_acc.anon_huge}/{sum_acc.shmem_pmd}")
        if sum_acc.anon_huge != t.anon_pmd * HPAGE_PMD_NR:
            self.problem(f"{who}: smaps AnonHugePages adds up to {sum_acc.anon_huge} pages, "
                         f"{t.anon_pmd} THP PMD maps")
        if sum_acc.shmem_pmd != t.shmem_pmd * HPAGE_PMD_NR:
            self.problem(f"{who}: smaps ShmemPmdMapped adds up to {sum_acc.shmem_pmd} pages, "
                         f"{t.shmem_pmd} shmem PMD maps")
        if sum_acc.rss != t.rss_anon + t.rss_shmem or sum_acc.anonymous != t.rss_anon:
            self.problem(f"{who}: smaps Rss/Anonymous add up to {sum_acc.rss}/{sum_acc.anonymous} "
                         f"pages, page tables map {t.rss_anon + t.rss_shmem}/{t.rss_anon}")
        if mm.closed and (t.rss_anon or t.rss_shmem or t.tables[LVL_PTE] or t.tables[LVL_PMD]
                          or t.tables[LVL_PUD] or mm.nr_vmas):
            self.problem(f"{who}: exited, yet still has mappings or tables")

    cdef void check_mm_ids(self, MMCore mm, str who):
        """A folio's MM_ID slot naming this process counts no more mappings than it has."""
        cdef int64_t k, head
        cdef int s
        cdef folio_t *folio
        for k in range(self.ntouched):
            head = self.touched[k]
            folio = self.m.folio_of(head)
            for s in range(2):
                if folio.mm_count[s] > 0 and folio.mm_id[s] == mm.mm_id:
                    self.slots[head] |= 1 << s
                    if folio.mm_count[s] > self.mm_maps[head]:
                        self.problem(f"{who}: folio {head} counts {folio.mm_count[s]} mappings "
                                     f"by it, it has {self.mm_maps[head]}")
            self.mm_maps[head] = 0

    # ---- every frame -----------------------------------------------------------------------------

    cdef void check_frames(self):
        cdef Machine m = self.m
        cdef int64_t pfn = HPAGE_PMD_NR, n, q, block, head
        cdef int k, order
        cdef int64_t nr_free = 0
        cdef folio_t *folio
        # expected counters: [anon_mapped, anon_thps, shmem, shmem_thps, shmem_pmdmapped, memcg, foreign]
        cdef int64_t c[7]
        cdef int64_t mthp_nr[MAX_FOLIO_ORDER + 1]
        cdef int64_t mthp_partial[MAX_FOLIO_ORDER + 1]
        memset(c, 0, sizeof(c))
        memset(mthp_nr, 0, sizeof(mthp_nr))
        memset(mthp_partial, 0, sizeof(mthp_partial))
        while pfn < m.nr_frames:
            k = m.area.free_order_of(pfn)
            if k >= 0:
                n = (<int64_t>1) << k
                if pfn & (n - 1):
                    self.problem(f"frame {pfn}: inside a free block of order {k} not yet reached")
                    n = 1
                self.check_free(pfn, n)
                nr_free += n
                pfn += n
                continue
            block = pfn >> HPAGE_PMD_ORDER
            folio = &m.pmd_folio[block]
            if folio.flags & PG_HEAD:
                if pfn & (HPAGE_PMD_NR - 1):
                    self.problem(f"frame {pfn}: in use before its block's PMD-order folio")
                    pfn = (block + 1) << HPAGE_PMD_ORDER
                    continue
                self.check_large(folio, pfn, HPAGE_PMD_ORDER, c, mthp_nr, mthp_partial)
                pfn += HPAGE_PMD_NR
                continue
            order = m.mthp_folio[pfn >> 2].order if m.mthp_blocks[block] else 0
            if order:
                head = (pfn >> order) << order
                if head != pfn:
                    self.problem(f"frame {pfn}: its mTHP's head {head} is free or another folio")
                    pfn += 1
                    continue
                self.check_large(&m.mthp_folio[pfn >> 2], pfn, order, c, mthp_nr, mthp_partial)
                pfn += (<int64_t>1) << order
                continue
            self.check_page(pfn, c)
            pfn += 1
        self.check_machine_counters(nr_free, c, mthp_nr, mthp_partial)

    cdef void check_free(self, int64_t pfn, int64_t n):
        """A free block: no metadata left, referenced by nothing."""
        cdef Machine m = self.m
        cdef int64_t q
        for q in range(pfn, pfn + n):
            if m.flags[q] or m.mapcount[q] or m.refcount[q]:
                self.problem(f"frame {q}: free, yet flags {m.flags[q]:#x} mapcount {m.mapcount[q]} "
                             f"refcount {m.refcount[q]}")
                return
            if self.file_refs[q]:
                self.problem(f"frame {q}: free, yet in a shmem page cache")
                return
            if m.pmd_folio[q >> HPAGE_PMD_ORDER].flags & PG_HEAD \
                    or m.mthp_blocks[q >> HPAGE_PMD_ORDER] and m.mthp_folio[q >> 2].order:
                self.problem(f"frame {q}: free, yet described as part of a large folio")
                return

    cdef void check_large(self, folio_t *folio, int64_t head, int order, int64_t *c,
                          int64_t *mthp_nr, int64_t *mthp_partial):
        cdef Machine m = self.m
        cdef int64_t nr = (<int64_t>1) << order, q, sum_pte = 0, mapped = 0, written = 0
        cdef int64_t block = head >> HPAGE_PMD_ORDER
        cdef int32_t entire = self.pmd_maps[block] if order == HPAGE_PMD_ORDER else 0
        cdef bint shmem = (m.flags[head] & PG_SHMEM) != 0
        cdef str what = f"{'shmem' if shmem else 'anonymous'} folio {head} (order {order})"
        self.pinned[block] += <int32_t>nr
        if order == HPAGE_PMD_ORDER and folio.flags & PG_HUGE_ZERO:
            if head != m.huge_zero_pfn:
                self.problem(f"block {block}: a huge zeropage that is not the machine's (leaked)")
            for q in range(head, head + nr):
                if m.mapcount[q] or m.refcount[q] or self.pte_maps[q] or self.file_refs[q]:
                    self.problem(f"huge zeropage frame {q}: mapped by a PTE or counted")
                    break
            return
        if folio.order != order:
            self.problem(f"{what}: describes itself as order {folio.order}")
        for q in range(head, head + nr):
            if q != head and m.area.free_order_of(q) >= 0:
                self.problem(f"{what}: frame {q} is free")
            if order < HPAGE_PMD_ORDER and m.mthp_folio[q >> 2].order != order:
                self.problem(f"{what}: frame {q} does not know its folio's order")
            if bool(m.flags[q] & PG_SHMEM) != shmem:
                self.problem(f"{what}: frame {q} is of the other kind")
            if m.mapcount[q] != self.pte_maps[q]:
                self.problem(f"{what}: frame {q} mapcount {m.mapcount[q]}, PTEs map it "
                             f"{self.pte_maps[q]} times")
            if m.refcount[q]:
                self.problem(f"{what}: frame {q} has its own refcount {m.refcount[q]}")
            if self.file_refs[q] != (1 if shmem else 0):
                self.problem(f"{what}: frame {q} is in {self.file_refs[q]} page-cache slots")
            sum_pte += self.pte_maps[q]
            mapped += self.pte_maps[q] > 0
            written += (m.flags[q] & PG_WRITTEN) != 0
        if folio.entire_mapcount != entire:
            self.problem(f"{what}: entire_mapcount {folio.entire_mapcount}, {entire} PMD maps")
        if folio.refcount != sum_pte + entire:
            self.problem(f"{what}: refcount {folio.refcount}, mapped {sum_pte} times by PTEs "
                         f"and {entire} by PMDs")
        if folio.written != written:
            self.problem(f"{what}: counts {folio.written} written pages, {written} are")
        c[5] += nr
        if shmem:
            c[2] += nr
            if order == HPAGE_PMD_ORDER:
                c[3] += 1
                c[4] += entire > 0
            return
        if not (folio.flags & PG_ANON):
            self.problem(f"{what}: neither anonymous nor shmem")
        if folio.refcount <= 0:
            self.problem(f"{what}: mapped nowhere, yet not freed (leaked)")
        c[0] += nr if entire > 0 else mapped
        c[1] += order == HPAGE_PMD_ORDER and entire > 0
        mthp_nr[order] += 1
        if folio.flags & PG_PARTIAL:
            mthp_partial[order] += 1
            if not (folio.flags & PG_DEFERRED):
                self.problem(f"{what}: partially mapped but not on the deferred-split queue")
        for s in range(2):
            if folio.mm_count[s] > 0 and not (self.slots[head] >> s) & 1:
                self.problem(f"{what}: MM_ID slot {s} names process {folio.mm_id[s]}, "
                             f"which does not map it")
        if max(folio.mm_count[0], 0) + max(folio.mm_count[1], 0) > folio.refcount \
                or folio.mm_count[0] < 0 or folio.mm_count[1] < 0:
            self.problem(f"{what}: MM_ID counts {folio.mm_count[0]}+{folio.mm_count[1]} "
                         f"against refcount {folio.refcount}")

    cdef void check_page(self, int64_t pfn, int64_t *c):
        """An order-0 frame in use: anonymous, shmem or held by fragment_memory."""
        cdef Machine m = self.m
        cdef uint8_t f = m.flags[pfn]
        cdef int64_t block = pfn >> HPAGE_PMD_ORDER
        if f & PG_FOREIGN:
            c[6] += 1
            if not (f & PG_FOREIGN_MOVABLE):
                self.pinned[block] += 1
            if self.pte_maps[pfn] or self.file_refs[pfn] or m.mapcount[pfn] or m.refcount[pfn]:
                self.problem(f"frame {pfn}: held by fragment_memory, yet mapped or counted")
            return
        if f & PG_SHMEM:
            c[2] += 1
            c[5] += 1
            self.pinned[block] += 1
            if self.file_refs[pfn] != 1:
                self.problem(f"shmem page {pfn}: in {self.file_refs[pfn]} page-cache slots"
                             + (" (leaked)" if not self.file_refs[pfn] else ""))
            if m.mapcount[pfn] != self.pte_maps[pfn] or m.refcount[pfn]:
                self.problem(f"shmem page {pfn}: mapcount {m.mapcount[pfn]} refcount {m.refcount[pfn]}, "
                             f"PTEs map it {self.pte_maps[pfn]} times")
            return
        if f & PG_ANON:
            c[5] += 1
            if self.pte_maps[pfn] == 0:
                self.problem(f"anonymous page {pfn}: mapped nowhere, yet not freed (leaked)")
            else:
                c[0] += 1
            if m.mapcount[pfn] != self.pte_maps[pfn] or m.refcount[pfn] != self.pte_maps[pfn]:
                self.problem(f"anonymous page {pfn}: mapcount {m.mapcount[pfn]} refcount "
                             f"{m.refcount[pfn]}, PTEs map it {self.pte_maps[pfn]} times")
            if self.file_refs[pfn]:
                self.problem(f"anonymous page {pfn}: also in a shmem page cache")
            return
        self.problem(f"frame {pfn}: allocated, flags {f:#x}, but neither anonymous, shmem nor "
                     f"held (leaked; PTEs map it {self.pte_maps[pfn]} times)")

    cdef void check_machine_counters(self, int64_t nr_free, int64_t *c, int64_t *mthp_nr,
                                     int64_t *mthp_partial):
        cdef Machine m = self.m
        cdef int order
        cdef int64_t block
        if nr_free != m.area.free_pages:
            self.problem(f"buddy allocator: {m.area.free_pages} free pages counted, {nr_free} free")
        for name, item, want in (("nr_anon_pages", NR_ANON_MAPPED, c[0]),
                                 ("nr_anon_transparent_hugepages", NR_ANON_THPS, c[1]),
                                 ("nr_shmem", NR_SHMEM, c[2]), ("nr_shmem_hugepages", NR_SHMEM_THPS, c[3]),
                                 ("nr_shmem_pmdmapped", NR_SHMEM_PMDMAPPED, c[4]),
                                 ("nr_page_table_pages", NR_PAGETABLE, self.tables_total)):
            if m.vmstat[item] != want:
                self.problem(f"vmstat {name} is {m.vmstat[item]}, should be {want}")
        if m.memcg_usage != c[5] + self.tables_total:
            self.problem(f"memory_current is {m.memcg_usage} pages, should be {c[5]} frames + "
                         f"{self.tables_total} page tables")
        if m.nr_foreign != c[6]:
            self.problem(f"fragment_memory holds {c[6]} frames, counted {m.nr_foreign}")
        if m.huge_zero_users != self.hz_holders:
            self.problem(f"the huge zeropage has {m.huge_zero_users} users counted, "
                         f"{self.hz_holders} processes hold it")
        if m.huge_zero_pfn >= 0 and not (m.pmd_folio[m.huge_zero_pfn >> HPAGE_PMD_ORDER].flags & PG_HUGE_ZERO):
            self.problem(f"the huge zeropage {m.huge_zero_pfn} is not described as one")
        for order in range(MIN_MTHP_ORDER, MAX_FOLIO_ORDER + 1):
            if m.mthp_stat[order * NR_MTHP_STAT + MTHP_NR_ANON] != mthp_nr[order]:
                self.problem(f"hugepages-{4 << order}kB nr_anon is "
                             f"{m.mthp_stat[order * NR_MTHP_STAT + MTHP_NR_ANON]}, {mthp_nr[order]} exist")
            if m.mthp_stat[order * NR_MTHP_STAT + MTHP_NR_ANON_PARTIALLY_MAPPED] != mthp_partial[order]:
                self.problem(f"hugepages-{4 << order}kB nr_anon_partially_mapped is "
                             f"{m.mthp_stat[order * NR_MTHP_STAT + MTHP_NR_ANON_PARTIALLY_MAPPED]}, "
                             f"{mthp_partial[order]} are")
        for block in range(m.nr_blocks):
            if m.block_pinned[block] != self.pinned[block]:
                self.problem(f"block {block}: {m.block_pinned[block]} unmovable frames counted, "
                             f"{self.pinned[block]} are")
                break
