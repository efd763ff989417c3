# cython: language_level=3
"""C-level layout of the mmemu core, for other Cython code to cimport.

Page tables are 4-level radix trees of 512-entry tables of uint64 entries, one packed pool of
tables per level.  Entries use the x86-64 bit layout: a present entry holds the index of the
next-level table (upper levels) or a frame number (leaves) in bits 12..51.

Physical memory (a Machine) is shared by every MM forked from one MM: frames carry a refcount,
a mapcount, flags and the folio order; a THP is one aligned 2 MiB block of 512 frames.
"""
cimport cython
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
cimport numpy as cnp
from mmemu._buddy cimport FreeArea, MAX_PAGE_ORDER

# ---- geometry ---------------------------------------------------------------------------
cdef enum:
    PAGE_SHIFT = 12
    PMD_SHIFT = 21
    PUD_SHIFT = 30
    PGDIR_SHIFT = 39
    PTRS_PER_TABLE = 512
    HPAGE_PMD_ORDER = 9
    HPAGE_PMD_NR = 512

# levels of the table pools
cdef enum:
    LVL_PTE = 0
    LVL_PMD = 1
    LVL_PUD = 2
    LVL_PGD = 3
    NR_LEVELS = 4

# ---- page-table entry bits (arch/x86/include/asm/pgtable_types.h) -----------------------
cdef enum:
    _PAGE_PRESENT = 1 << 0
    _PAGE_RW = 1 << 1
    _PAGE_USER = 1 << 2        # cleared for PROT_NONE (the kernel's protnone entries)
    _PAGE_ACCESSED = 1 << 5
    _PAGE_DIRTY = 1 << 6
    _PAGE_PSE = 1 << 7         # a PMD leaf: a huge mapping
    _PAGE_SPECIAL = 1 << 9     # no struct page behind it: the zeropage
    _PAGE_WRITTEN = 1 << 10    # software bit: the page(s) behind this entry hold written data

# what an access needs of an entry
cdef enum:
    NEED_READ = _PAGE_PRESENT | _PAGE_USER
    NEED_WRITE = _PAGE_PRESENT | _PAGE_USER | _PAGE_RW

# ---- ops, page states ---------------------------------------------------------------------
cdef enum:
    OP_READ = 0
    OP_WRITE = 1
    OP_ATOMIC = 2
    NR_OPS = 3

cdef enum:
    PS_NONE = 0
    PS_ZERO = 1
    PS_HUGE_ZERO = 2
    PS_ANON = 3
    PS_LARGE = 4
    PS_THP = 5
    PS_SHMEM = 6
    PS_SHMEM_THP = 7

# ---- VMA flags (include/linux/mm.h) -------------------------------------------------------
cdef enum:
    VM_READ = 0x1
    VM_WRITE = 0x2
    VM_EXEC = 0x4
    VM_SHARED = 0x8
    VM_MAYSHARE = 0x80
    VM_MAYREAD = 0x10
    VM_MAYWRITE = 0x20
    VM_MAYEXEC = 0x40
    VM_LOCKED = 0x2000          # mlock
    VM_SEQ_READ = 0x8000
    VM_RAND_READ = 0x10000
    VM_DONTCOPY = 0x20000       # MADV_DONTFORK
    VM_ACCOUNT = 0x100000
    VM_WIPEONFORK = 0x2000000   # MADV_WIPEONFORK
    VM_DONTDUMP = 0x4000000
    VM_HUGEPAGE = 0x20000000
    VM_NOHUGEPAGE = 0x40000000
    VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC

cdef enum:
    THP_DISABLE_COMPLETELY = 1
    THP_DISABLE_EXCEPT_ADVISED = 2

# ---- frame flags ---------------------------------------------------------------------------
cdef enum:
    PG_ANON = 1 << 0
    PG_ANON_EXCLUSIVE = 1 << 1   # PageAnonExclusive: may be reused without copy on a write fault
    PG_HEAD = 1 << 2             # (block) the block is one PMD-order folio
    PG_WRITTEN = 1 << 3          # (page) holds written, non-zero data; (block) every subpage does
    PG_HUGE_ZERO = 1 << 4        # (block) the huge zeropage
    PG_LAZYFREE = 1 << 5         # MADV_FREE: !PG_swapbacked, may be discarded while clean
    PG_PARTIAL = 1 << 6          # (block) partially mapped (folio_test_partially_mapped)
    PG_DEFERRED = 1 << 7         # (block) on the deferred-split queue
    # frames held by Machine.fragment (another tenant's memory), never mapped
    PG_FOREIGN = 1 << 4
    PG_FOREIGN_MOVABLE = 1 << 6  # compaction may migrate it
    # (page) a page of a shmem file's page cache, and its folio's dirty bit; a shmem THP is
    # a PMD-order folio with PG_HEAD and neither PG_ANON nor PG_HUGE_ZERO
    PG_SHMEM = 1 << 2
    PG_DIRTY = 1 << 7
    PG_FALLOCATED = 1 << 5       # (shmem page) fallocated, not uptodate until faulted (bit of PG_LAZYFREE)

# /sys/kernel/mm/transparent_hugepage/shmem_enabled
cdef enum:
    SHMEM_HUGE_NEVER = 0
    SHMEM_HUGE_ALWAYS = 1
    SHMEM_HUGE_WITHIN_SIZE = 2
    SHMEM_HUGE_ADVISE = 3

# /sys/kernel/mm/transparent_hugepage/defrag
cdef enum:
    DEFRAG_ALWAYS = 0
    DEFRAG_DEFER = 1
    DEFRAG_DEFER_MADVISE = 2
    DEFRAG_MADVISE = 3
    DEFRAG_NEVER = 4

cdef enum:
    COMPACT_MAX_DEFER_SHIFT = 6  # mm/compaction.c

# ---- fault results (include/linux/mm_types.h: vm_fault_reason) -----------------------------
cdef enum:
    VM_FAULT_OK = 0
    VM_FAULT_OOM = 1
    VM_FAULT_SIGSEGV = 2
    VM_FAULT_FALLBACK = 4
    VM_FAULT_HOSTMEM = 8        # the host could not grow a table pool (a Python MemoryError)
    VM_FAULT_NOTIMPL = 16       # a path planned for a later issue (a PMD split of a THP)
    VM_FAULT_SIGBUS = 32        # a shared mapping's page beyond the file's end

# ---- counters: /proc/vmstat (order of mmemu.constants.VMSTAT_NAMES) -------------------------
cdef enum:
    NR_ANON_MAPPED = 0
    NR_ANON_THPS = 1
    NR_PAGETABLE = 2
    PGFAULT = 3
    PGMAJFAULT = 4
    THP_FAULT_ALLOC = 5
    THP_FAULT_FALLBACK = 6
    THP_FAULT_FALLBACK_CHARGE = 7
    THP_SPLIT_PMD = 8
    THP_ZERO_PAGE_ALLOC = 9
    THP_ZERO_PAGE_ALLOC_FAILED = 10
    THP_COLLAPSE_ALLOC = 11
    THP_COLLAPSE_ALLOC_FAILED = 12
    THP_SPLIT_PAGE = 13
    THP_SPLIT_PAGE_FAILED = 14
    THP_DEFERRED_SPLIT_PAGE = 15
    THP_UNDERUSED_SPLIT_PAGE = 16
    THP_SCAN_EXCEED_NONE_PTE = 17
    THP_SCAN_EXCEED_SWAP_PTE = 18
    THP_SCAN_EXCEED_SHARE_PTE = 19
    PGMIGRATE_SUCCESS = 20
    COMPACT_STALL = 21
    COMPACT_FAIL = 22
    COMPACT_SUCCESS = 23
    NR_SHMEM = 24
    NR_SHMEM_THPS = 25
    NR_SHMEM_PMDMAPPED = 26
    THP_FILE_ALLOC = 27
    THP_FILE_FALLBACK = 28
    THP_FILE_FALLBACK_CHARGE = 29
    THP_FILE_MAPPED = 30
    NR_VMSTAT = 31

# per-size THP stats (order of mmemu.constants.MTHP_STAT_NAMES), for order 9 only so far
cdef enum:
    MTHP_ANON_FAULT_ALLOC = 0
    MTHP_ANON_FAULT_FALLBACK = 1
    MTHP_ANON_FAULT_FALLBACK_CHARGE = 2
    MTHP_SPLIT = 3
    MTHP_SPLIT_FAILED = 4
    MTHP_SPLIT_DEFERRED = 5
    MTHP_NR_ANON = 6
    MTHP_NR_ANON_PARTIALLY_MAPPED = 7
    MTHP_SHMEM_ALLOC = 8
    MTHP_SHMEM_FALLBACK = 9
    MTHP_SHMEM_FALLBACK_CHARGE = 10
    NR_MTHP_STAT = 11

# per-size THP stats are kept for orders 0..MAX_FOLIO_ORDER (2..9 used: 16 kB .. 2 MiB)
cdef enum:
    MIN_MTHP_ORDER = 2          # order 1 has no anonymous mTHP (spec 0.1)
    MAX_FOLIO_ORDER = 9

# A large folio as the kernel's struct folio keeps it (the fields of its head and first tail
# pages): one per PMD-order folio (indexed by 2 MiB block) and one per possible mTHP head
# (indexed by pfn >> 2; every quad of an mTHP carries its order so any page finds its head).
cdef struct folio_t:
    int64_t index               # folio->index: the page offset the anon rmap finds it at
    int32_t refcount            # mappings (PTE and PMD; nothing pins pages here)
    int32_t entire_mapcount     # PMD mappings
    int32_t mm_id[2]            # MM_ID: the two processes that may map it ...
    int32_t mm_count[2]         # ... and how often each does
    uint16_t written            # subpages holding written data
    uint8_t flags               # PG_* of the folio
    uint8_t order

# what one smaps walk adds up, in pages
cdef struct smaps_acc:
    int64_t pss            # bytes << PSS_SHIFT (12), as fs/proc/task_mmu.c keeps it
    int64_t pss_dirty
    int64_t rss
    int64_t private_clean
    int64_t private_dirty
    int64_t shared_clean
    int64_t shared_dirty
    int64_t referenced
    int64_t anonymous
    int64_t anon_huge
    int64_t lazyfree
    int64_t shmem_pmd


@cython.final
cdef class ShmemFile:
    """A shmem inode (MAP_SHARED|MAP_ANONYMOUS's object, or a memfd): its page cache."""
    cdef readonly int32_t fid
    cdef readonly int64_t size             # i_size, in pages
    cdef public int64_t fallocend          # the end of what fallocate reserved, maybe past i_size
    cdef readonly bint anonymous           # MAP_SHARED|MAP_ANONYMOUS: no fd, gone with its last VMA
    cdef public bint fd_open
    cdef cnp.ndarray _pages                # frame per page index (0: none)
    cdef int64_t *pages


@cython.final
cdef class Machine:
    """Emulated physical memory: frames, their allocator, the zeropages, system-wide counters."""
    cdef readonly int64_t nr_blocks        # 2 MiB blocks of RAM (block 0 is reserved)
    cdef readonly int64_t nr_frames
    cdef readonly FreeArea area            # the buddy allocator's free lists
    cdef cnp.ndarray _refcount, _mapcount, _flags
    cdef cnp.ndarray _vmstat, _mthp_stat, _pmd_folio, _mthp_folio, _mthp_blocks, _block_pinned
    cdef int32_t *refcount
    cdef int32_t *mapcount          # PTE mappings of each page
    cdef uint8_t *flags
    cdef int32_t *block_pinned      # frames per 2 MiB pageblock that compaction cannot move
    # A PMD-order folio (a THP, the huge zeropage) fills one block and is described per block;
    # an mTHP is described at its head's quad of pages
    cdef folio_t *pmd_folio
    cdef folio_t *mthp_folio
    cdef uint8_t *mthp_blocks         # blocks that hold (or held) an mTHP
    # the memory cgroup every process of the machine is in (pages)
    cdef int64_t memcg_usage, memcg_max
    # compaction deferral (struct zone: compact_considered, compact_defer_shift, ...)
    cdef int64_t compact_considered
    cdef int compact_defer_shift, compact_order_failed
    cdef readonly int64_t nr_foreign        # pages held by fragment()
    # shmem files by id, and the C view of their page caches for the fault path
    cdef public dict files
    cdef int32_t next_fid
    cdef cnp.ndarray _file_pages, _file_size
    cdef int64_t **file_pages
    cdef int64_t *file_size
    cdef int64_t file_slots
    cdef public int shmem_enabled           # SHMEM_HUGE_*
    cdef public bint folio_split_nonuniform # 6.15+: truncation splits a large folio around the cut
    cdef int64_t *vmstat
    cdef int64_t *mthp_stat
    cdef readonly int64_t huge_zero_pfn  # -1: not allocated
    cdef readonly int64_t huge_zero_users
    # the processes on this machine (the rmap walk's anon_vma tree, in spirit), and khugepaged
    cdef public list mms
    cdef public list khugepaged_exited   # exited while khugepaged was positioned on them
    cdef int32_t next_mm_id
    # khugepaged: registration order is a sequence number; the scan resumes at (mm, address)
    cdef int64_t next_khugepaged_seq
    cdef public int64_t khugepaged_cursor_seq, pages_collapsed, full_scans
    cdef public uint64_t khugepaged_cursor_addr

    cdef int64_t alloc_page(self) noexcept nogil
    cdef int64_t alloc_pages(self, int order, bint compact) noexcept nogil
    cdef void free_frames(self, int64_t pfn, int order) noexcept nogil
    cdef int64_t alloc_pmd_folio(self, bint compact) noexcept nogil
    cdef folio_t *new_mthp(self, int64_t pfn, int order) noexcept nogil
    cdef bint try_charge(self, int64_t nr) noexcept nogil
    cdef void uncharge(self, int64_t nr) noexcept nogil
    cdef bint compaction_deferred(self, int order) noexcept nogil
    cdef bint compact_zone(self, int order) noexcept nogil
    cdef int64_t used_frames(self, int64_t lo, int order) noexcept nogil
    cdef int migrate_block(self, int64_t lo, int order) except -1
    cdef void free_page(self, int64_t pfn) noexcept nogil
    cdef void free_pmd_folio(self, int64_t pfn) noexcept nogil
    cdef void clear_folio(self, int64_t block) noexcept nogil
    cdef int64_t get_huge_zero_folio(self) noexcept nogil
    cdef folio_t *folio_of(self, int64_t pfn) noexcept nogil
    cdef bint page_is_shmem(self, int64_t pfn, folio_t *folio) noexcept nogil
    cdef int64_t folio_pfn(self, folio_t *folio) noexcept nogil
    cdef void count_mthp(self, int order, int item, int64_t delta) noexcept nogil
    cdef void folio_mm_add(self, folio_t *folio, int32_t mm_id, int32_t nr) noexcept nogil
    cdef void folio_mm_sub(self, folio_t *folio, int32_t mm_id, int32_t nr) noexcept nogil
    cdef bint folio_maybe_mapped_shared(self, folio_t *folio) noexcept nogil
    cdef void free_large_folio(self, folio_t *folio) noexcept nogil
    cdef void forget_mthp(self, int64_t head, int order) noexcept nogil
    cdef void deferred_split_folio(self, folio_t *folio, bint partially_mapped) noexcept nogil
    cdef void folio_mark_written(self, int64_t pfn) noexcept nogil
    cdef int split_folio(self, folio_t *folio, bint zero_remap) except -1
    cdef void register_mm(self, MMCore mm)
    cdef bint folio_mlocked(self, int64_t head) except -1
    cdef int64_t shmem_alloc_folio(self, int32_t fid, int64_t index, bint huge, bint compact) noexcept nogil
    cdef void shmem_free_page(self, int64_t pfn) noexcept nogil
    cdef void shmem_free_folio(self, folio_t *folio) noexcept nogil
    cdef void shmem_free_whole(self, ShmemFile f, int64_t first, int64_t last) noexcept nogil
    cdef void shmem_mark_uptodate(self, int64_t pfn, folio_t *folio) noexcept nogil
    cdef void shmem_folio_dirty(self, int64_t pfn) noexcept nogil
    cdef void bind_arrays(self)
    cdef int64_t folio_pages_from(self, int64_t pfn) noexcept nogil
    cdef void shmem_mark_fallocated(self, int64_t pfn) noexcept nogil
    cdef int shmem_undo_falloc(self, ShmemFile f, int64_t first, int64_t last) except -1
    cdef int shmem_drop_past_eof(self, ShmemFile f, int64_t hidx, int64_t nr) except -1
    cdef void shmem_remove(self, ShmemFile f, int64_t hidx, int64_t nr, int64_t pfn) noexcept nogil
    cdef int shmem_split(self, ShmemFile f, folio_t *folio, int64_t at, int64_t hidx, bint uniform=*) except -1
    cdef void shmem_split_folio_at(self, folio_t *folio, int64_t at, bint uniform=*) noexcept nogil
    cdef folio_t *shmem_describe_folio(self, int64_t head, int order) noexcept nogil
    cdef bint unmap_leaves_partial(self, folio_t *folio, int64_t head) noexcept nogil


@cython.final
cdef class MMCore:
    """One process: its page tables, VMAs and per-process counters."""
    cdef readonly Machine machine
    # settings (from Config)
    cdef bint thp_always, thp_madvise, use_zero_page, zero_page, huge_zero_write_thp
    cdef uint32_t mthp_always, mthp_madvise     # orders below 9 enabled always / in VM_HUGEPAGE VMAs
    cdef int defrag                             # DEFRAG_*
    cdef bint pt_reclaim, arm64, atomic_write_fault, reuse_large_folios
    cdef readonly int32_t mm_id
    cdef readonly int64_t khugepaged_seq     # 0: not on khugepaged's list
    # prctl(PR_SET_THP_DISABLE): 0 off, THP_DISABLE_COMPLETELY, THP_DISABLE_EXCEPT_ADVISED
    cdef readonly int thp_disable
    # table pools, per level
    cdef list _pools
    cdef list _pool_free
    cdef uint64_t *pool[NR_LEVELS]
    cdef int32_t *pool_free[NR_LEVELS]
    cdef int64_t pool_cap[NR_LEVELS]
    cdef int64_t pool_used[NR_LEVELS]
    cdef int64_t pool_nfree[NR_LEVELS]
    cdef readonly int64_t nr_tables_pte, nr_tables_pmd, nr_tables_pud, nr_deposited
    # VMAs, sorted by start
    cdef cnp.ndarray _vm_start, _vm_end, _vm_flags, _vm_anon, _vm_pgoff, _vm_file
    cdef int32_t *vm_file           # shmem file id of a shared mapping (0: private anonymous)
    cdef uint64_t *vm_start
    cdef uint64_t *vm_end
    cdef uint64_t *vm_pgoff         # page offset of vm_start: the anon rmap's linear index
    cdef uint32_t *vm_flags
    cdef int32_t *vm_anon_vma
    cdef readonly int64_t nr_vmas
    cdef int64_t vma_cap
    cdef int64_t vma_cache
    cdef int32_t next_anon_vma
    # counters
    cdef readonly int64_t rss_anon, rss_shmem, min_flt, maj_flt
    cdef readonly bint holds_huge_zero
    cdef readonly bint closed
    # one-entry software TLB
    cdef uint64_t tlb_tag, tlb_mask, tlb_perm
    # the PTE table of the last walk (a paging-structure cache) and the 2 MiB it maps
    cdef uint64_t pt_tag
    cdef uint64_t *pt_base
    # the leaf entry of the last walk (for the access that completes on it)
    cdef uint64_t *last_leaf
    cdef bint last_leaf_pmd

    cdef int _grow_pool(self, int level, int64_t new_cap) except -1
    cdef int32_t pool_alloc(self, int level) noexcept nogil
    cdef void count_vm(self, int item, int64_t delta) noexcept nogil
    cdef void count_table(self, int level, int delta) noexcept nogil
    cdef void pool_release(self, int level, int64_t index) noexcept nogil
    cdef void deposit(self, int delta) noexcept nogil
    cdef uint64_t *pmd_entry(self, uint64_t addr) noexcept nogil
    cdef uint64_t *table_alloc(self, int level, uint64_t *entryp) noexcept nogil
    cdef uint64_t *pmd_alloc(self, uint64_t addr) noexcept nogil
    cdef uint64_t skip_hole(self, uint64_t addr) noexcept nogil
    cdef uint64_t *pte_entry(self, uint64_t pmdval, uint64_t addr) noexcept nogil
    cdef void tlb_flush(self) noexcept nogil
    cdef uint64_t walk(self, uint64_t addr, uint64_t need) noexcept nogil
    cdef int _grow_vmas(self, int64_t new_cap) except -1
    cdef int64_t find_vma(self, uint64_t addr) noexcept nogil
    cdef int64_t vma_lower_bound(self, uint64_t addr) noexcept nogil
    cdef bint thp_allowed(self, uint32_t vm_flags) noexcept nogil
    cdef bint thp_direct_compact(self, uint32_t vm_flags) noexcept nogil
    cdef uint32_t mthp_orders(self, uint32_t vm_flags) noexcept nogil
    cdef int64_t alloc_anon_folio(self, int64_t vma, uint64_t addr, uint64_t *pte, int *order_out) noexcept nogil
    cdef void map_anon_folio_pte(self, int64_t vma, uint64_t start, uint64_t *pmdp, int64_t pfn, int order) noexcept nogil
    cdef int64_t alloc_anon_page(self) noexcept nogil
    cdef bint contpte_foldable(self, const uint64_t *pte) noexcept nogil
    cdef int handle_shmem_fault(self, int64_t vma, uint64_t addr, uint64_t *pmdp, bint write) noexcept nogil
    cdef bint shmem_huge_allowed(self, int64_t vma, uint64_t addr, int64_t index) noexcept nogil
    cdef bint shmem_pmd_suitable(self, int64_t vma, uint64_t addr) noexcept nogil
    cdef bint shmem_pmd_mappable(self, int64_t vma, uint64_t addr, folio_t *folio) noexcept nogil
    cdef void shmem_map_pmd(self, int64_t vma, uint64_t *pmdp, int64_t head, bint write) noexcept nogil
    cdef void shmem_map_ptes(self, int64_t vma, uint64_t *pte, int64_t pfn, int64_t nr, bint write) noexcept nogil
    cdef int shmem_fault_around(self, int64_t vma, uint64_t addr, uint64_t *pmdp) noexcept nogil
    cdef bint cached_uptodate(self, const int64_t *pages, int64_t size, int64_t index) noexcept nogil
    cdef bint folio_fits(self, int64_t vma, uint64_t start, int64_t nr) noexcept nogil
    cdef void zap_shmem_pte(self, uint64_t e) noexcept nogil
    cdef void zap_shmem_pmd(self, uint64_t *pmdp) noexcept nogil
    cdef bint anon_vma_compatible(self, int64_t a, int64_t b) noexcept nogil
    cdef void anon_vma_prepare(self, int64_t vma) noexcept nogil
    cdef void new_anon_page(self, int64_t pfn) noexcept nogil
    cdef void remove_anon_pte(self, int64_t pfn) noexcept nogil
    cdef void remove_anon_ptes(self, folio_t *folio, int64_t pfn, int64_t nr) noexcept nogil
    cdef bint khugepaged_allowed(self, int64_t vma) noexcept nogil
    cdef void khugepaged_enter_vma(self, int64_t vma) noexcept nogil
    cdef void madvise_pte_range(self, uint64_t *pmdp, uint64_t addr, uint64_t next_addr, int mode, bint zero_remap,
                                int64_t vma=*, int32_t fid=*) except *
    cdef void lazyfree_ptes(self, uint64_t *pte, int64_t i, int64_t nr, int64_t pfn) noexcept nogil
    cdef void clear_young(self, uint64_t *pte, int64_t i, int64_t nr) noexcept nogil
    cdef void reclaim_ptes(self, uint64_t *pte, int64_t i, int64_t nr, int64_t pfn) noexcept nogil
    cdef void pageout_huge_pmd(self, uint64_t *pmdp, folio_t *folio, bint zero_remap) except *
    cdef int move_pmd_range(self, uint64_t old_addr, uint64_t new_addr, uint64_t extent) noexcept nogil
    cdef int move_extent(self, uint64_t old_addr, uint64_t new_addr, uint64_t left, uint64_t *extent) noexcept nogil
    cdef void page_dup_pte(self, int64_t pfn) noexcept nogil
    cdef void zap_pmd_mapping(self, int64_t block) noexcept nogil
    cdef void mark_written(self, uint64_t addr) noexcept nogil
    cdef int split_huge_pmd(self, uint64_t *pmdp) noexcept nogil
    cdef int split_pmd_at(self, uint64_t addr) noexcept nogil
    cdef uint64_t *pte_alloc(self, uint64_t *pmdp) noexcept nogil
    cdef int64_t folio_index_at(self, int64_t vma, uint64_t addr) noexcept nogil
    cdef bint rmap_vma_range(self, int64_t vma, folio_t *folio, uint64_t *lo, uint64_t *hi) noexcept nogil
    cdef folio_t *anon_folio_at(self, int64_t head) except NULL
    cdef int64_t rmap_pfn(self, uint64_t addr) noexcept nogil
    cdef void khugepaged_enter(self) noexcept nogil
    cdef int copy_range(self, MMCore child, uint64_t start, uint64_t end) noexcept nogil
    cdef int copy_huge_pmd(self, MMCore child, uint64_t *src, uint64_t *dst) noexcept nogil
    cdef int collapse_huge_page(self, int64_t vma, uint64_t haddr, uint64_t *pmdp, bint khugepaged) noexcept nogil
    cdef int scan_pmd(self, uint64_t *pte, int64_t max_none, int64_t max_shared) noexcept nogil
    cdef void map_anon_folio_pmd(self, int64_t vma, uint64_t haddr, uint64_t *pmdp, int64_t pfn) noexcept nogil
    cdef int64_t alloc_anon_folio_pmd(self, int64_t vma) noexcept nogil
    cdef int handle_mm_fault(self, int64_t vma, uint64_t addr, bint write) noexcept nogil
    cdef int _handle_mm_fault(self, int64_t vma, uint64_t addr, bint write) noexcept nogil
    cdef int do_huge_pmd_anonymous_page(self, int64_t vma, uint64_t addr, uint64_t *pmdp, bint write) noexcept nogil
    cdef int do_huge_pmd_wp_page(self, int64_t vma, uint64_t addr, uint64_t *pmdp) noexcept nogil
    cdef int do_huge_zero_wp_pmd(self, int64_t vma, uint64_t addr, uint64_t *pmdp) noexcept nogil
    cdef int split_huge_zero_pmd(self, uint64_t *pmdp) noexcept nogil
    cdef int handle_pte_fault(self, int64_t vma, uint64_t addr, uint64_t *pmdp, bint write) noexcept nogil
    cdef int do_anonymous_page(self, int64_t vma, uint64_t addr, uint64_t *pmdp, bint write) noexcept nogil
    cdef int do_wp_page(self, int64_t vma, uint64_t addr, uint64_t *ptep) noexcept nogil
    cdef int wp_page_copy(self, int64_t vma, uint64_t *ptep, int64_t old_pfn) noexcept nogil
    cdef int access_slow(self, uint64_t addr, int op, int *faults) noexcept nogil
    cdef void tlb_tags(self, uint64_t *tags) noexcept nogil
    cdef int64_t access_trace(self, const uint64_t *addrs, const uint8_t *ops, uint8_t op0,
                              int64_t n, uint8_t *out, int *err) noexcept nogil
    cdef void _check_open(self) except *
    cdef int _populate(self, uint64_t *paddr, uint64_t end, bint write, bint force) noexcept nogil
    cdef void zap_huge_pmd(self, uint64_t *pmdp) noexcept nogil
    cdef void zap_pte_range(self, uint64_t *pte, int64_t first, int64_t last) noexcept nogil
    cdef int _zap(self, uint64_t start, uint64_t end, bint reclaim) noexcept nogil
    cdef void free_table_tree(self, int level, int64_t index) noexcept nogil
    cdef void _free_pgtables(self, int level, uint64_t *entries, uint64_t base, uint64_t start,
                             uint64_t end, uint64_t floor, uint64_t ceiling) noexcept nogil
    cdef uint64_t change_entry(self, uint64_t e, uint32_t vm_flags, bint pmd) noexcept nogil
    cdef void _page_states(self, uint64_t start, uint64_t end, uint8_t *out) noexcept nogil
    cdef void account_page(self, smaps_acc *acc, int64_t pfn, uint64_t e, int64_t nr,
                           bint pmd_mapped) noexcept nogil
    cdef void _smaps(self, uint64_t start, uint64_t end, smaps_acc *acc) noexcept nogil
    cdef void _pmd_mapped_pages(self, int64_t *anon, int64_t *shmem) noexcept nogil
    cdef bint split_file_folio_alone(self, int64_t vma, int32_t fid, folio_t *folio, int64_t pfn,
                                     uint64_t addr) except -1
    cdef int64_t file_folio_maps_here(self, int32_t fid, int64_t head, int64_t nr) noexcept nogil
    cdef void describe_page(self, int64_t pfn, uint64_t e, bint pmd_mapped, uint64_t *pagemap,
                            uint64_t *kflags, int32_t *kcount) noexcept nogil
