# cython: language_level=3
"""C-level layout of the buddy allocator, for other Cython code to cimport.

One zone's free lists (mm/page_alloc.c), as bitmaps: bit i of order k is set when the block of
2**k frames starting at pfn i << k is free and on the order-k free list.  Merging on free is
always complete (no two buddies are free at the same order below MAX_PAGE_ORDER), so a frame is
free exactly when one free block contains it.  A summary bitmap per order (one bit per bitmap
word that is not zero) keeps the search for the lowest free block short.

    from mmemu._buddy cimport FreeArea
    cdef FreeArea area = FreeArea(nr_frames, reserved)
    pfn = area.alloc(0)           # -1: no free block of that order or above
    area.free(pfn, 0)
"""
cimport cython
from libc.stdint cimport int64_t, uint64_t
cimport numpy as cnp

cdef enum:
    MAX_PAGE_ORDER = 10          # include/linux/mmzone.h (MAX_ORDER before 6.8)
    NR_PAGE_ORDERS = 11


@cython.final
cdef class FreeArea:
    """The free lists of one zone (struct free_area[NR_PAGE_ORDERS]) as one bitmap per order."""
    cdef readonly int64_t nr_frames
    cdef readonly int64_t reserved          # frames [0, reserved) are never free
    cdef readonly int64_t free_pages        # NR_FREE_PAGES
    cdef int64_t nr_free[NR_PAGE_ORDERS]    # free blocks per order (free_area[k].nr_free)
    cdef cnp.ndarray _bits                  # every order's bitmap and summary, one zero-filled array
    cdef uint64_t *map[NR_PAGE_ORDERS]      # order k's bitmap: (nr_frames >> k >> 6) + 1 words
    cdef uint64_t *summary[NR_PAGE_ORDERS]  # bit w set: word w of map[k] is not zero
    cdef int64_t nwords[NR_PAGE_ORDERS]
    cdef int64_t nsummary[NR_PAGE_ORDERS]   # (nwords >> 6) + 1
    cdef int64_t hint[NR_PAGE_ORDERS]       # no bit of map[k] is set in the words below this

    cdef int64_t alloc(self, int order) noexcept nogil
    cdef void free(self, int64_t pfn, int order) noexcept nogil
    cdef bint take(self, int64_t pfn, int order) noexcept nogil
    cdef int free_order_of(self, int64_t pfn) noexcept nogil
    cdef bint has_free(self, int order) noexcept nogil
    cdef bint any_free(self, int64_t pfn, int order) noexcept nogil
    cdef void set_free(self, int k, int64_t i) noexcept nogil
    cdef void clear_free(self, int k, int64_t i) noexcept nogil
    cdef void mark_free(self, int64_t pfn, int order) noexcept nogil
    cdef void free_range(self, int64_t start, int64_t end) noexcept nogil
