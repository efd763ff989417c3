"""Public constants: access ops, page states, the names of counters mmemu keeps."""
import enum

__all__ = ["READ", "WRITE", "ATOMIC", "OPS", "PageState", "VMSTAT_NAMES", "MTHP_STAT_NAMES",
           "KHUGEPAGED_STAT_NAMES", "ADVICE", "PAGE_SIZE", "PMD_SIZE", "TASK_SIZE"]

PAGE_SIZE = 4096
PMD_SIZE = 2 << 20
#: x86-64 4-level paging: the top of user space (TASK_SIZE_MAX)
TASK_SIZE = (1 << 47) - PAGE_SIZE

#: a load
READ = 0
#: a store
WRITE = 1
#: an atomic read-modify-write (x86 LOCK XADD/CMPXCHG, arm64 LDADD/CAS/SWP)
ATOMIC = 2
OPS = {"read": READ, "write": WRITE, "atomic": ATOMIC}


class PageState(enum.IntEnum):
    """What backs one 4K page of virtual memory (spec section 0.2)."""

    NONE = 0        #: no page-table entry
    ZERO = 1        #: the shared 4K zeropage, mapped read-only
    HUGE_ZERO = 2   #: the huge zeropage, mapped by a PMD
    ANON = 3        #: a 4K anonymous page
    LARGE = 4       #: a 4K PTE into a large folio (an mTHP, or part of a PTE-mapped THP)
    THP = 5         #: part of a PMD-mapped anonymous THP
    SHMEM = 6       #: a 4K PTE to a shmem page (MAP_SHARED|MAP_ANONYMOUS, memfd)
    SHMEM_THP = 7   #: part of a PMD-mapped shmem THP


#: /proc/vmstat names mmemu keeps (system-wide: all MMs of a machine)
VMSTAT_NAMES = (
    "nr_anon_pages",
    "nr_anon_transparent_hugepages",
    "nr_page_table_pages",
    "pgfault",
    "pgmajfault",
    "thp_fault_alloc",
    "thp_fault_fallback",
    "thp_fault_fallback_charge",
    "thp_split_pmd",
    "thp_zero_page_alloc",
    "thp_zero_page_alloc_failed",
    "thp_collapse_alloc",
    "thp_collapse_alloc_failed",
    "thp_split_page",
    "thp_split_page_failed",
    "thp_deferred_split_page",
    "thp_underused_split_page",
    "thp_scan_exceed_none_pte",
    "thp_scan_exceed_swap_pte",
    "thp_scan_exceed_share_pte",
    "pgmigrate_success",
    "compact_stall",
    "compact_fail",
    "compact_success",
    "nr_shmem",
    "nr_shmem_hugepages",
    "nr_shmem_pmdmapped",
    "thp_file_alloc",
    "thp_file_fallback",
    "thp_file_fallback_charge",
    "thp_file_mapped",
)

#: files of /sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/stats/ that mmemu keeps
MTHP_STAT_NAMES = (
    "anon_fault_alloc",
    "anon_fault_fallback",
    "anon_fault_fallback_charge",
    "split",
    "split_failed",
    "split_deferred",
    "nr_anon",
    "nr_anon_partially_mapped",
    "shmem_alloc",
    "shmem_fallback",
    "shmem_fallback_charge",
)

#: khugepaged's own statistics (/sys/kernel/mm/transparent_hugepage/khugepaged/)
KHUGEPAGED_STAT_NAMES = ("pages_collapsed", "full_scans")

#: madvise advice by the kernel's name without MADV_, with the kernel's numbers
ADVICE = {
    "normal": 0,
    "random": 1,
    "sequential": 2,
    "willneed": 3,
    "dontneed": 4,
    "free": 8,
    "remove": 9,
    "dontfork": 10,
    "dofork": 11,
    "mergeable": 12,
    "unmergeable": 13,
    "hugepage": 14,
    "nohugepage": 15,
    "dontdump": 16,
    "dodump": 17,
    "wipeonfork": 18,
    "keeponfork": 19,
    "cold": 20,
    "pageout": 21,
    "populate_read": 22,
    "populate_write": 23,
    "dontneed_locked": 24,
    "collapse": 25,
}
