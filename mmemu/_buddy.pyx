# cython: language_level=3
"""The buddy allocator of emulated RAM: one zone's ``struct free_area`` per order, as bitmaps.

Named after mm/page_alloc.c so both read side by side: ``alloc`` is __rmqueue_smallest (the
smallest order with a free block, then expand()), ``free`` is __free_one_page (merge with the
buddy while it is free at the same order), ``take`` is what compaction's isolation and
memblock reservations do to a specific block.

The kernel's free lists are linked lists in LIFO order; here a free list is a bitmap, and the
block handed out is the lowest-addressed one of its order.  That makes the policy deterministic
and easy to state for the reference model, and costs no more: bit i of order k stands for the
block [i << k, (i + 1) << k), so order k's bitmap has nr_frames >> k bits and all eleven come
to about two bits per frame.  A per-order hint (no set bit in the words below it) usually
points at the word to take from.  When that word is empty the lowest block may be far away
(one lone free page and a free that moved the hint back would cost a scan of the whole bitmap,
16 us on a 16 GiB machine), so each order also has a summary bitmap, one bit per bitmap word
that is not zero: the search is then a scan 64 times shorter and two ctz's.  The summaries add
1/64 to the memory.

alloc(0) and free(pfn, 0) run once per emulated page fault: they are plain C over the bitmaps,
touch no Python object and need no GIL.
"""
import numpy as np
cimport numpy as cnp
from mmemu import _persist
from libc.stdint cimport int64_t, uint64_t

cnp.import_array()

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil


cdef inline bint test_bit(const uint64_t *bits, int64_t i) noexcept nogil:
    return (bits[i >> 6] >> (i & 63)) & 1


cdef inline uint64_t range_mask(int64_t lo, int64_t hi) noexcept nogil:
    """The bits [lo, hi) of one word, 0 <= lo < hi <= 64."""
    cdef uint64_t upper = ~(<uint64_t>0) if hi == 64 else ((<uint64_t>1) << hi) - 1
    return upper & ~(((<uint64_t>1) << lo) - 1)


cdef bint range_any(const uint64_t *bits, int64_t lo, int64_t hi) noexcept nogil:
    """Whether any bit of [lo, hi) is set."""
    cdef int64_t w
    if lo >= hi:
        return False
    if (lo >> 6) == ((hi - 1) >> 6):
        return (bits[lo >> 6] & range_mask(lo & 63, ((hi - 1) & 63) + 1)) != 0
    if bits[lo >> 6] & range_mask(lo & 63, 64):
        return True
    for w in range((lo >> 6) + 1, (hi - 1) >> 6):
        if bits[w]:
            return True
    return (bits[(hi - 1) >> 6] & range_mask(0, ((hi - 1) & 63) + 1)) != 0


cdef void range_set(uint64_t *bits, int64_t lo, int64_t hi) noexcept nogil:
    """Set the bits [lo, hi): whole words at a time, so order 10 of a 4 TiB machine (a million
    blocks) is 16K word stores."""
    cdef int64_t w
    if lo >= hi:
        return
    if (lo >> 6) == ((hi - 1) >> 6):
        bits[lo >> 6] |= range_mask(lo & 63, ((hi - 1) & 63) + 1)
        return
    bits[lo >> 6] |= range_mask(lo & 63, 64)
    for w in range((lo >> 6) + 1, (hi - 1) >> 6):
        bits[w] = ~(<uint64_t>0)
    bits[(hi - 1) >> 6] |= range_mask(0, ((hi - 1) & 63) + 1)


cdef int require(bint ok, str what) except -1:
    """An invariant check that ``python -O`` does not strip."""
    if not ok:
        raise AssertionError(what)
    return 0


cdef int check_order(int order) except -1:
    if order < 0 or order > MAX_PAGE_ORDER:
        raise ValueError(f"order must be in 0..{MAX_PAGE_ORDER} (got {order})")
    return 0


cdef int check_block(FreeArea area, int64_t pfn, int order) except -1:
    """The Python layer's boundary check: a valid order, inside RAM, aligned to its order."""
    check_order(order)
    if pfn < 0 or pfn > area.nr_frames - ((<int64_t>1) << order):     # no overflow near 2**63
        raise ValueError(f"block [{pfn}, {pfn} + 2**{order}) is outside RAM "
                         f"({area.nr_frames} frames)")
    if pfn & (((<int64_t>1) << order) - 1):
        raise ValueError(f"pfn {pfn} is not aligned to order {order}")
    return 0


cdef class FreeArea:
    """The free lists of one zone (``struct free_area free_area[NR_PAGE_ORDERS]``).

    ``FreeArea(nr_frames, reserved=0)``: frames [0, reserved) are never free (memblock's
    reservations: frame 0 is the zeropage); the rest starts free as maximal naturally aligned
    blocks, as memblock_free_all hands memory to the buddy allocator.  nr_frames is a multiple
    of 512.  The bitmaps are zero-filled lazily by the host, so RAM the emulation never
    fragments costs no host memory.

    Blocks are given by the pfn of their head frame and their order; the C-level methods trust
    their arguments, the ``*_py`` ones check them and raise ValueError rather than corrupt the
    free lists.
    """

    def __cinit__(self, int64_t nr_frames, int64_t reserved=0):
        cdef int k
        cdef int64_t total = 0
        cdef uint64_t *base
        if nr_frames <= 0 or nr_frames % 512 or nr_frames > (<int64_t>1 << 40):
            raise ValueError(f"nr_frames must be a positive multiple of 512, at most 2**40 "
                             f"(got {nr_frames})")
        if reserved < 0 or reserved > nr_frames:
            raise ValueError(f"reserved must be in [0, {nr_frames}] (got {reserved})")
        self.nr_frames = nr_frames
        self.reserved = reserved
        self.free_pages = 0
        # One spare word per order: the buddy of the last block of an order with an odd number
        # of blocks, and order 10 of a machine smaller than one order-10 block, then still have
        # a (never set) bit to test, so no merge or lookup needs a bounds check.
        for k in range(NR_PAGE_ORDERS):
            self.nwords[k] = (nr_frames >> k >> 6) + 1
            self.nsummary[k] = (self.nwords[k] >> 6) + 1
            total += self.nwords[k] + self.nsummary[k]
        self._bits = np.zeros(total, np.uint64)
        base = <uint64_t *>cnp.PyArray_DATA(self._bits)
        for k in range(NR_PAGE_ORDERS):
            self.map[k] = base
            base += self.nwords[k]
            self.summary[k] = base
            base += self.nsummary[k]
            self.nr_free[k] = 0
            self.hint[k] = self.nwords[k]
        with nogil:
            self.free_range(reserved, nr_frames)

    # ---- one bit of a free list -------------------------------------------------------------
    # Every change of map[k] goes through these two, which keep summary[k] and the hint with it.

    cdef inline void set_free(self, int k, int64_t i) noexcept nogil:
        """Block i of order k goes on its free list (nr_free is the caller's)."""
        cdef int64_t w = i >> 6
        self.map[k][w] |= (<uint64_t>1) << (i & 63)
        self.summary[k][w >> 6] |= (<uint64_t>1) << (w & 63)
        if w < self.hint[k]:
            self.hint[k] = w

    cdef inline void clear_free(self, int k, int64_t i) noexcept nogil:
        """Block i of order k comes off its free list (nr_free is the caller's)."""
        cdef int64_t w = i >> 6
        cdef uint64_t word = self.map[k][w] & ~((<uint64_t>1) << (i & 63))
        self.map[k][w] = word
        if word == 0:
            self.summary[k][w >> 6] &= ~((<uint64_t>1) << (w & 63))

    # ---- building: memblock_free_all -> __free_pages_core ---------------------------------

    cdef inline void mark_free(self, int64_t pfn, int order) noexcept nogil:
        """Put the block on its free list without looking for its buddy (the caller knows it
        is not free at this order)."""
        self.set_free(order, pfn >> order)
        self.nr_free[order] += 1
        self.free_pages += (<int64_t>1) << order

    cdef void free_range(self, int64_t start, int64_t end) noexcept nogil:
        """Free the frames [start, end), none free so far and with no free neighbours at either
        end, as maximal naturally aligned blocks (__free_pages_memory): the ragged head and
        tail a block at a time, the order-10 middle as whole bitmap words."""
        cdef int64_t lo, hi, pfn
        cdef int k
        lo = (start + (1 << MAX_PAGE_ORDER) - 1) >> MAX_PAGE_ORDER << MAX_PAGE_ORDER
        hi = end >> MAX_PAGE_ORDER << MAX_PAGE_ORDER
        if lo >= hi:                  # no whole order-10 block: all of it is ragged
            lo = hi = end
        pfn = start
        while pfn < end:
            if pfn == lo:             # the middle
                range_set(self.map[MAX_PAGE_ORDER], lo >> MAX_PAGE_ORDER, hi >> MAX_PAGE_ORDER)
                range_set(self.summary[MAX_PAGE_ORDER], lo >> MAX_PAGE_ORDER >> 6,
                          ((hi >> MAX_PAGE_ORDER) + 63) >> 6)
                if (lo >> MAX_PAGE_ORDER >> 6) < self.hint[MAX_PAGE_ORDER]:
                    self.hint[MAX_PAGE_ORDER] = lo >> MAX_PAGE_ORDER >> 6
                self.nr_free[MAX_PAGE_ORDER] += (hi - lo) >> MAX_PAGE_ORDER
                self.free_pages += hi - lo
                pfn = hi
                continue
            # the largest block aligned at pfn that ends by the next boundary
            k = MAX_PAGE_ORDER if pfn == 0 else min(__builtin_ctzll(pfn), MAX_PAGE_ORDER)
            while pfn + ((<int64_t>1) << k) > end:
                k -= 1
            self.mark_free(pfn, k)
            pfn += (<int64_t>1) << k

    # ---- the hot path -----------------------------------------------------------------------

    cdef int64_t alloc(self, int order) noexcept nogil:
        """__rmqueue_smallest: the lowest free block of the smallest order k >= order that has
        one, split by expand() down to ``order`` keeping the lower half (the upper halves go on
        the free lists of orders k-1 .. order).  Returns its head pfn, or -1."""
        cdef int k = order
        cdef int64_t s, w, pfn
        cdef uint64_t word, sword
        cdef uint64_t *summary
        while self.nr_free[k] == 0:
            k += 1
            if k > MAX_PAGE_ORDER:
                return -1
        w = self.hint[k]
        word = self.map[k][w]
        if word == 0:
            # nr_free[k] > 0 and the words below the hint are zero (so are their summary
            # bits): the summary's first set bit from here names the lowest nonzero word
            summary = self.summary[k]
            s = w >> 6
            sword = summary[s]
            while sword == 0:
                s += 1
                sword = summary[s]
            w = (s << 6) | __builtin_ctzll(sword)
            self.hint[k] = w
            word = self.map[k][w]
        self.map[k][w] = word & (word - 1)
        if (word & (word - 1)) == 0:
            self.summary[k][w >> 6] &= ~((<uint64_t>1) << (w & 63))
        self.nr_free[k] -= 1
        pfn = ((w << 6) | __builtin_ctzll(word)) << k
        # expand(): the upper half of every split is the buddy of the half we keep
        while k > order:
            k -= 1
            self.set_free(k, (pfn >> k) | 1)
            self.nr_free[k] += 1
        self.free_pages -= (<int64_t>1) << order
        return pfn

    cdef void free(self, int64_t pfn, int order) noexcept nogil:
        """__free_one_page: while the buddy (pfn ^ (1 << k)) is free at the same order k, take it
        off its list and merge, up to MAX_PAGE_ORDER; then put the result on its list.  The
        block must be in use, outside the reserved frames and aligned to its order."""
        cdef int k = order
        cdef int64_t i = pfn >> order
        self.free_pages += (<int64_t>1) << order
        while k < MAX_PAGE_ORDER:
            # the buddy's bit always exists (the spare word) and is never set for a block that
            # runs past the end of RAM or into the reserved frames: no range check here
            if not test_bit(self.map[k], i ^ 1):
                break
            self.clear_free(k, i ^ 1)
            self.nr_free[k] -= 1
            i >>= 1
            k += 1
        self.set_free(k, i)
        self.nr_free[k] += 1

    # ---- specific blocks --------------------------------------------------------------------

    cdef bint take(self, int64_t pfn, int order) noexcept nogil:
        """Take the aligned block [pfn, pfn + 2**order) off the free lists if all of it is free
        (isolate a free range for compaction, reserve frames).  Merging is complete, so that is
        the case exactly when one free block of order >= order contains it; that block is split
        as expand() would, but keeping the half that holds pfn.  False: nothing changed."""
        cdef int k
        cdef int64_t i
        for k in range(order, NR_PAGE_ORDERS):
            i = pfn >> k
            if test_bit(self.map[k], i):
                break
        else:
            return False
        self.clear_free(k, i)
        self.nr_free[k] -= 1
        while k > order:
            k -= 1
            self.set_free(k, (pfn >> k) ^ 1)      # the half that does not hold pfn stays free
            self.nr_free[k] += 1
        self.free_pages -= (<int64_t>1) << order
        return True

    cdef int free_order_of(self, int64_t pfn) noexcept nogil:
        """The order of the free block that contains pfn (as PageBuddy/buddy_order on its head
        would tell), or -1 when pfn is in use."""
        cdef int k
        for k in range(NR_PAGE_ORDERS):
            if test_bit(self.map[k], pfn >> k):
                return k
        return -1

    cdef bint has_free(self, int order) noexcept nogil:
        """Whether alloc(order) would succeed: some free block of order >= order."""
        cdef int k
        for k in range(order, NR_PAGE_ORDERS):
            if self.nr_free[k]:
                return True
        return False

    cdef bint any_free(self, int64_t pfn, int order) noexcept nogil:
        """Whether any frame of the aligned block [pfn, pfn + 2**order) is free: a free block
        contains it, or one of the smaller free blocks lies inside it."""
        cdef int k
        for k in range(order, NR_PAGE_ORDERS):
            if test_bit(self.map[k], pfn >> k):
                return True
        for k in range(order):
            if range_any(self.map[k], pfn >> k, (pfn >> k) + ((<int64_t>1) << (order - k))):
                return True
        return False

    # ---- Python layer: checked arguments ----------------------------------------------------

    def alloc_py(self, int order):
        """alloc(order): the head pfn of a block of 2**order frames, or -1 if none is free."""
        check_order(order)
        return self.alloc(order)

    def free_py(self, int64_t pfn, int order):
        """free(pfn, order): give a block in use back to the free lists, merging buddies."""
        check_block(self, pfn, order)
        if pfn < self.reserved:
            raise ValueError(f"pfn {pfn} is reserved (frames below {self.reserved})")
        if self.any_free(pfn, order):
            raise ValueError(f"block [{pfn}, {pfn} + 2**{order}) is already (partly) free")
        self.free(pfn, order)

    def take_py(self, int64_t pfn, int order):
        """take(pfn, order): take this block off the free lists if all of it is free."""
        check_block(self, pfn, order)
        return self.take(pfn, order)

    def free_order_py(self, int64_t pfn):
        """The order of the free block containing pfn, -1 when pfn is in use."""
        check_block(self, pfn, 0)
        return self.free_order_of(pfn)

    def is_free(self, int64_t pfn):
        """Whether frame pfn is free (in some free block)."""
        check_block(self, pfn, 0)
        return self.free_order_of(pfn) >= 0

    def has_free_py(self, int order):
        """has_free(order): whether alloc(order) would succeed."""
        check_order(order)
        return self.has_free(order)

    def buddyinfo(self):
        """Free blocks per order 0..10, as a /proc/buddyinfo line: numpy int64[11]."""
        cdef cnp.ndarray out = np.empty(NR_PAGE_ORDERS, np.int64)
        cdef int64_t *p = <int64_t *>cnp.PyArray_DATA(out)
        cdef int k
        for k in range(NR_PAGE_ORDERS):
            p[k] = self.nr_free[k]
        return out

    def free_blocks(self, int order):
        """Head pfns of the blocks free at exactly this order, ascending: numpy int64."""
        cdef cnp.ndarray out
        cdef int64_t *p
        cdef int64_t n = 0, w
        cdef uint64_t word
        cdef const uint64_t *bits
        check_order(order)
        out = np.empty(self.nr_free[order], np.int64)
        p = <int64_t *>cnp.PyArray_DATA(out)
        bits = self.map[order]
        with nogil:
            for w in range(self.hint[order], self.nwords[order]):
                word = bits[w]
                while word:
                    p[n] = ((w << 6) | __builtin_ctzll(word)) << order
                    n += 1
                    word &= word - 1
        assert n == self.nr_free[order]
        return out

    def check_invariants(self):
        """Raise AssertionError unless the free lists are consistent: counts and free_pages
        match the bitmaps, the summaries match the bitmaps, no bit lies below its hint or past
        the end of RAM, no frame is free twice or reserved, and no two buddies are both free
        below MAX_PAGE_ORDER (merging is complete).  O(nr_frames): for tests and debugging."""
        cdef int k
        cdef int64_t pages = 0
        covered = np.zeros(self.nr_frames, np.bool_)
        for k in range(NR_PAGE_ORDERS):
            words = self._bits[self.map[k] - self.map[0]:][:self.nwords[k]]
            summary = self._bits[self.summary[k] - self.map[0]:][:self.nsummary[k]]
            nonzero = np.zeros(self.nsummary[k] * 64, np.bool_)
            nonzero[:self.nwords[k]] = words != 0
            require((np.packbits(nonzero, bitorder="little").view(np.uint64) == summary).all(),
                    f"order {k}: the summary is not the bitmap's nonzero words")
            require(not words[:self.hint[k]].any(), f"order {k}: a bit below the hint")
            bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(np.bool_)
            require(not bits[self.nr_frames >> k:].any(), f"order {k}: a block past the end")
            bits = bits[:self.nr_frames >> k]
            heads = np.flatnonzero(bits)
            require(len(heads) == self.nr_free[k],
                    f"order {k}: nr_free {self.nr_free[k]} != {len(heads)} blocks")
            if k < MAX_PAGE_ORDER:
                pairs = bits[:len(bits) & ~1].reshape(-1, 2)
                require(not pairs.all(axis=1).any(), f"order {k}: two free buddies not merged")
            frames = ((heads << k)[:, None] + np.arange(1 << k)).ravel()
            require(not covered[frames].any(), f"order {k}: a frame free twice")
            covered[frames] = True
            pages += len(heads) << k
        require(pages == self.free_pages, f"free_pages {self.free_pages} != {pages}")
        require(not covered[:self.reserved].any(), "a reserved frame is free")

    def __repr__(self):
        return (f"FreeArea(nr_frames={self.nr_frames}, reserved={self.reserved}, "
                f"free_pages={self.free_pages}, buddyinfo={self.buddyinfo().tolist()})")

    # ---- pickling ---------------------------------------------------------------------------
    # The free lists pickle as their bitmaps, stored sparsely (mostly zero words); the pointers
    # into them are derived again on load, after mmemu._persist-style checks of everything
    # alloc() and free() trust without looking: no bit past the end of RAM or in the reserved
    # frames, counts and summaries that match the bitmaps, no frame free twice.

    def __reduce__(self):
        return (FreeArea, (self.nr_frames, self.reserved), self._getstate())

    def _getstate(self):
        return {"version": _persist.FORMAT_VERSION, "free_pages": self.free_pages,
                "nr_free": np.array([self.nr_free[k] for k in range(NR_PAGE_ORDERS)], np.int64),
                "hint": np.array([self.hint[k] for k in range(NR_PAGE_ORDERS)], np.int64),
                "bits": _persist.pack(self._bits)}

    def __setstate__(self, state):
        cdef int k
        cdef uint64_t *base
        with _persist.guard("FreeArea"):
            _persist.check_version(state, "FreeArea")
            bits = _persist.unpack(state["bits"], np.zeros(self._bits.shape[0], np.uint64), "FreeArea.bits")
            nr_free = _persist.dense(state["nr_free"], np.int64, NR_PAGE_ORDERS, "FreeArea.nr_free")
            hint = _persist.dense(state["hint"], np.int64, NR_PAGE_ORDERS, "FreeArea.hint")
            free_pages = _persist.integer(state["free_pages"], "FreeArea.free_pages", 0, self.nr_frames)
            self._check_loaded(bits, nr_free, hint, free_pages)
        self._bits = bits
        base = <uint64_t *>cnp.PyArray_DATA(self._bits)
        for k in range(NR_PAGE_ORDERS):
            self.map[k] = base
            base += self.nwords[k]
            self.summary[k] = base
            base += self.nsummary[k]
            self.nr_free[k] = nr_free[k]
            self.hint[k] = hint[k]
        self.free_pages = free_pages

    def _check_loaded(self, bits, nr_free, hint, free_pages):
        """Raise ValueError unless loaded bitmaps are ones alloc() and free() can trust. Costs
        O(words + free blocks), not O(frames): the free blocks are listed from the nonzero
        words only."""
        cdef int k
        cdef int64_t off = 0, nw, ns
        starts, ends = [], []
        total = 0
        for k in range(NR_PAGE_ORDERS):
            nw, ns = self.nwords[k], self.nsummary[k]
            words, summary = bits[off:off + nw], bits[off + nw:off + nw + ns]
            off += nw + ns
            nonzero = np.zeros(ns * 64, np.bool_)
            nonzero[:nw] = words != 0
            if not (np.packbits(nonzero, bitorder="little").view(np.uint64) == summary).all():
                _persist.fail("FreeArea", f"order {k}: the summary does not match the bitmap")
            if not 0 <= hint[k] <= nw or words[:hint[k]].any():
                _persist.fail("FreeArea", f"order {k}: the hint {hint[k]} is past a free block")
            w = np.flatnonzero(words)
            set_bits = np.unpackbits(words[w].view(np.uint8), bitorder="little").reshape(-1, 64)
            rows, cols = np.nonzero(set_bits)
            heads = (w[rows] << 6) | cols
            if heads.shape[0] != nr_free[k]:
                _persist.fail("FreeArea", f"order {k}: nr_free {nr_free[k]} but {heads.shape[0]} free blocks")
            if heads.shape[0] and (heads[-1] >= (self.nr_frames >> k) or (heads[0] << k) < self.reserved):
                _persist.fail("FreeArea", f"order {k}: a free block outside RAM or in the reserved frames")
            if k < MAX_PAGE_ORDER and np.isin(heads[(heads & 1) == 0] + 1, heads).any():
                _persist.fail("FreeArea", f"order {k}: two free buddies not merged")
            starts.append(heads << k)
            ends.append((heads + 1) << k)
            total += heads.shape[0] << k
        if total != free_pages:
            _persist.fail("FreeArea", f"free_pages {free_pages} but the free lists hold {total}")
        starts, ends = np.concatenate(starts), np.concatenate(ends)
        order = np.argsort(starts, kind="stable")
        if (ends[order][:-1] > starts[order][1:]).any():
            _persist.fail("FreeArea", "a frame is free twice")
