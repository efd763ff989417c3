"""The buddy allocator (mmemu._buddy.FreeArea): the exact policy of the design's "Buddy allocator"
section, unit by unit, then random alloc/free/take sequences against a pure-Python buddy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mmemu._buddy import FreeArea

MAX_ORDER = 10


def free_lists(area):
    """Every order's free block heads, as lists."""
    return [area.free_blocks(k).tolist() for k in range(MAX_ORDER + 1)]


def snapshot(area):
    return (area.free_pages, area.buddyinfo().tolist(), free_lists(area))


# ---- a reference buddy: one set of head pfns per order ----------------------------------------

class RefBuddy:
    """The policy, stated as plainly as possible.  Built by freeing every frame one at a time, so
    it also checks that FreeArea starts as maximal naturally aligned blocks."""

    def __init__(self, nr_frames, reserved):
        self.nr_frames = nr_frames
        self.reserved = reserved
        self.free = [set() for _ in range(MAX_ORDER + 1)]
        for pfn in range(reserved, nr_frames):
            self.release(pfn, 0)

    def alloc(self, order):
        for k in range(order, MAX_ORDER + 1):
            if self.free[k]:
                pfn = min(self.free[k])
                self.free[k].remove(pfn)
                for j in range(k - 1, order - 1, -1):     # expand(): upper halves stay free
                    self.free[j].add(pfn + (1 << j))
                return pfn
        return -1

    def release(self, pfn, order):
        k = order
        while k < MAX_ORDER and (pfn ^ (1 << k)) in self.free[k]:
            self.free[k].remove(pfn ^ (1 << k))
            pfn &= ~(1 << k)
            k += 1
        self.free[k].add(pfn)

    def take(self, pfn, order):
        for k in range(order, MAX_ORDER + 1):
            head = pfn >> k << k
            if head in self.free[k]:
                self.free[k].remove(head)
                for j in range(k - 1, order - 1, -1):     # the half without pfn stays free
                    self.free[j].add((pfn >> j ^ 1) << j)
                return True
        return False

    def any_free(self, pfn, order):
        end = pfn + (1 << order)
        return any(h < end and pfn < h + (1 << k)
                   for k in range(MAX_ORDER + 1) for h in self.free[k])

    def snapshot(self):
        lists = [sorted(s) for s in self.free]
        return (sum(len(s) << k for k, s in enumerate(lists)), [len(s) for s in lists], lists)


# ---- the initial free lists --------------------------------------------------------------------

def test_ram_starts_free_as_maximal_aligned_blocks_after_the_reserved_frames():
    area = FreeArea(4096, 512)
    assert area.buddyinfo().tolist() == [0] * 9 + [1, 3]
    assert free_lists(area)[9:] == [[512], [1024, 2048, 3072]]
    assert area.free_pages == 4096 - 512
    area.check_invariants()


@pytest.mark.parametrize("nr_frames,reserved", [(4608, 3), (4096, 0), (512, 0), (512, 511),
                                                (1536, 1025), (4096, 4096), (12800, 1000)])
def test_ragged_ends_start_as_the_blocks_freeing_each_frame_would_merge_into(nr_frames, reserved):
    area = FreeArea(nr_frames, reserved)
    assert snapshot(area) == RefBuddy(nr_frames, reserved).snapshot()
    area.check_invariants()


def test_a_4tib_machine_is_built_in_words_and_allocates_from_its_low_end():
    area = FreeArea(1 << 30, 512)
    assert area.buddyinfo()[10] == (1 << 20) - 1
    assert area.free_pages == (1 << 30) - 512
    assert area.alloc_py(10) == 1024
    assert area.alloc_py(0) == 512
    area.free_py(512, 0)
    area.free_py(1024, 10)
    assert area.buddyinfo().tolist() == [0] * 9 + [1, (1 << 20) - 1]


# ---- alloc -------------------------------------------------------------------------------------

def test_alloc_splits_keeping_the_lower_half_and_frees_the_upper_halves():
    area = FreeArea(4096, 512)
    assert area.alloc_py(0) == 512
    assert free_lists(area)[:9] == [[512 + (1 << k)] for k in range(9)]
    assert area.alloc_py(3) == 520
    assert area.alloc_py(0) == 513


def test_alloc_takes_the_lowest_block_of_the_smallest_order_that_has_one():
    area = FreeArea(4096, 512)
    pages = [area.alloc_py(0) for _ in range(512)]        # all of block 512..1023
    assert pages == list(range(512, 1024))
    area.free_py(900, 0)
    area.free_py(700, 0)
    area.free_py(600, 0)
    assert area.alloc_py(0) == 600                        # lowest address of order 0
    area.free_py(602, 0)
    area.free_py(603, 0)                                  # an order-1 block at 602, lower than 700
    assert area.free_blocks(1).tolist() == [602]
    assert area.alloc_py(0) == 700                        # order 0 before the lower order-1 block
    assert area.alloc_py(0) == 900
    assert area.alloc_py(0) == 602                        # then the order-1 block, split
    assert area.free_blocks(0).tolist() == [603]
    area.check_invariants()


def test_alloc_finds_a_lone_block_far_above_where_the_last_free_moved_the_hint():
    area = FreeArea(1 << 16, 512)
    while area.alloc_py(0) >= 0:
        pass
    for pfn in (65000, 1000, 40000):
        area.free_py(pfn, 0)
    assert [area.alloc_py(0) for _ in range(4)] == [1000, 40000, 65000, -1]
    area.free_py(64001, 0)                                 # one word, one summary bit away
    area.free_py(600, 0)
    assert [area.alloc_py(0) for _ in range(3)] == [600, 64001, -1]
    area.check_invariants()


def test_exhaustion_returns_minus_one_per_order():
    area = FreeArea(4608, 512)                            # order 10: 1024, 2048, 3072; order 9: 512, 4096
    assert [area.alloc_py(10) for _ in range(4)] == [1024, 2048, 3072, -1]
    assert area.has_free_py(9) and not area.has_free_py(10)
    assert [area.alloc_py(9) for _ in range(3)] == [512, 4096, -1]
    assert area.free_pages == 0 and not area.has_free_py(0)
    assert area.alloc_py(0) == -1
    assert area.buddyinfo().tolist() == [0] * 11
    area.free_py(4096 + 5, 0)
    assert area.alloc_py(1) == -1 and area.alloc_py(0) == 4101


def test_reserved_frames_are_never_handed_out():
    area = FreeArea(4096, 512)
    got = []
    while (pfn := area.alloc_py(0)) >= 0:
        got.append(pfn)
    assert got == list(range(512, 4096))
    for pfn in (0, 1, 511):
        assert not area.is_free(pfn)
        assert not area.take_py(pfn, 0)
        with pytest.raises(ValueError):
            area.free_py(pfn, 0)
    area.free_py(512, 9)                                  # its buddy (0, order 9) is reserved
    assert area.free_blocks(9).tolist() == [512]
    assert not area.take_py(0, 10)


# ---- free --------------------------------------------------------------------------------------

def test_free_merges_with_free_buddies_up_to_order_10_and_no_further():
    area = FreeArea(4096, 0)
    pages = [area.alloc_py(0) for _ in range(4096)]
    assert area.alloc_py(0) == -1
    for pfn in np.random.default_rng(5).permutation(pages):
        area.free_py(int(pfn), 0)
    assert area.buddyinfo().tolist() == [0] * 10 + [4]   # four order-10 buddies stay apart
    area.check_invariants()


def test_free_of_part_of_a_block_merges_only_what_is_free():
    area = FreeArea(4096, 512)
    assert area.alloc_py(10) == 1024
    area.free_py(1024 + 256, 8)                           # its buddy 1024+256^256 = 1024 is in use
    area.free_py(1024 + 512, 9)
    assert free_lists(area)[8:10] == [[1280], [512, 1536]]
    area.free_py(1024, 8)                                 # merges 8 -> 9 -> 10
    assert area.buddyinfo().tolist() == [0] * 9 + [1, 3]


# ---- take --------------------------------------------------------------------------------------

def test_take_of_a_sub_block_leaves_the_rest_of_its_block_free():
    area = FreeArea(4096, 512)
    assert area.take_py(2048 + 64, 6)
    lists = free_lists(area)
    assert lists[6:11] == [[2048], [2176], [2304], [512, 2560], [1024, 3072]]
    assert area.free_pages == 4096 - 512 - 64
    assert all(not area.is_free(p) for p in range(2112, 2176))
    assert area.is_free(2111) and area.is_free(2176)
    assert area.free_order_py(2111) == 6 and area.free_order_py(2112) == -1
    area.check_invariants()
    area.free_py(2112, 6)
    assert area.buddyinfo().tolist() == [0] * 9 + [1, 3]


def test_take_of_a_block_not_wholly_free_changes_nothing():
    area = FreeArea(4096, 512)
    pfn = area.alloc_py(0)                                # 512
    before = snapshot(area)
    assert not area.take_py(512, 9)
    assert not area.take_py(512, 0)
    assert not area.take_py(0, 10)                        # reserved
    assert snapshot(area) == before
    assert area.take_py(513, 0) and area.take_py(514, 1)
    area.free_py(pfn, 0)
    area.free_py(513, 0)
    area.free_py(514, 1)
    assert area.buddyinfo().tolist() == [0] * 9 + [1, 3]


# ---- what the Python layer reports and refuses -------------------------------------------------

def test_buddyinfo_after_an_alloc_free_pattern():
    area = FreeArea(8192, 512)
    a = area.alloc_py(0)          # 512: order 9 at 512 split into 0..8
    b = area.alloc_py(2)          # 516
    c = area.alloc_py(9)          # 1024: order 10 at 1024 split, 1536 free at 9
    d = area.alloc_py(10)         # 2048
    assert (a, b, c, d) == (512, 516, 1024, 2048)
    assert area.buddyinfo().tolist() == [1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 5]
    area.free_py(a, 0)            # 512+513 -> order 1; its buddy 514 is free: order 2 at 512
    assert area.buddyinfo().tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 5]
    area.free_py(c, 9)            # 1024 + 1536 -> order 10
    area.free_py(d, 10)
    assert area.buddyinfo().tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 7]
    assert area.buddyinfo().dtype == np.int64
    assert area.free_pages == 8192 - 512 - 4


def test_free_blocks_lists_heads_in_ascending_order():
    area = FreeArea(16384, 512)
    pages = [area.alloc_py(0) for _ in range(2000)]
    for pfn in reversed(pages[::3]):
        area.free_py(pfn, 0)
    heads = area.free_blocks(0)
    assert heads.dtype == np.int64
    assert heads.tolist() == sorted(p for p in pages[::3] if p ^ 1 not in pages[::3])


@pytest.mark.parametrize("call", [
    lambda a: a.alloc_py(-1), lambda a: a.alloc_py(11), lambda a: a.free_py(1024, 11),
    lambda a: a.free_py(-1024, 10), lambda a: a.free_py(4096, 0), lambda a: a.free_py(4096, 9),
    lambda a: a.free_py(1026, 2), lambda a: a.free_py(3072 + 512, 10),
    lambda a: a.take_py(4096, 0), lambda a: a.take_py(1, 1), lambda a: a.take_py(0, -1),
    lambda a: a.is_free(-1), lambda a: a.is_free(4096), lambda a: a.free_blocks(11),
    lambda a: a.free_order_py(1 << 40), lambda a: a.has_free_py(12),
    lambda a: a.free_py(2**63 - 1024, 10), lambda a: a.take_py(2**63 - 512, 9),
    lambda a: a.free_py(4000, 0),                 # free: double free
    lambda a: a.free_py(2048, 10),                # partly free: 2048..2049 are in use
    lambda a: a.free_py(100, 0),                  # reserved
])
def test_python_methods_refuse_bad_arguments_and_change_nothing(call):
    area = FreeArea(4096, 512)
    area.take_py(2048, 1)
    before = snapshot(area)
    with pytest.raises(ValueError):
        call(area)
    assert snapshot(area) == before
    area.check_invariants()


@pytest.mark.parametrize("nr_frames,reserved", [(0, 0), (1000, 0), (-512, 0), (4096, -1),
                                                (4096, 4097), (1 << 41, 0)])
def test_constructor_refuses_a_bad_geometry(nr_frames, reserved):
    with pytest.raises(ValueError):
        FreeArea(nr_frames, reserved)


# ---- random sequences against the reference ------------------------------------------------------

class BuddyMachine(RuleBasedStateMachine):
    """alloc / free (whole blocks or parts of them) / take / bad frees, on FreeArea and RefBuddy
    side by side; after every step, the same free lists."""

    @initialize(geometry=st.sampled_from([(4096, 512), (8192, 512), (16384, 512), (4608, 512),
                                          (12800, 512), (4096, 3), (8192, 1000)]))
    def build(self, geometry):
        self.area = FreeArea(*geometry)
        self.ref = RefBuddy(*geometry)
        self.used = []            # blocks handed out: (pfn, order)

    @rule(order=st.integers(0, MAX_ORDER) | st.just(0))
    def alloc(self, order):
        pfn = self.area.alloc_py(order)
        assert pfn == self.ref.alloc(order)
        if pfn >= 0:
            self.used.append((pfn, order))

    @rule(n=st.integers(1, 600))
    def alloc_many_pages(self, n):
        for _ in range(n):
            pfn = self.area.alloc_py(0)
            assert pfn == self.ref.alloc(0)
            if pfn < 0:
                break
            self.used.append((pfn, 0))

    @precondition(lambda self: self.used)
    @rule(data=st.data())
    def free(self, data):
        pfn, order = self.used.pop(data.draw(st.integers(0, len(self.used) - 1)))
        self.area.free_py(pfn, order)
        self.ref.release(pfn, order)

    @precondition(lambda self: self.used)
    @rule(data=st.data())
    def free_part(self, data):
        """Free one aligned sub-block of a used block (split_page, then free): the rest of the
        block stays in use as the halves along the way."""
        pfn, order = self.used.pop(data.draw(st.integers(0, len(self.used) - 1)))
        sub = data.draw(st.integers(0, order))
        part = pfn + (data.draw(st.integers(0, (1 << (order - sub)) - 1)) << sub)
        for j in range(sub, order):
            self.used.append(((part >> j ^ 1) << j, j))
        self.area.free_py(part, sub)
        self.ref.release(part, sub)

    @rule(data=st.data(), order=st.integers(0, MAX_ORDER))
    def take(self, data, order):
        pfn = data.draw(st.integers(0, (self.area.nr_frames >> order) - 1)) << order
        taken = self.area.take_py(pfn, order)
        assert taken == self.ref.take(pfn, order)
        if taken:
            self.used.append((pfn, order))

    @rule(data=st.data(), order=st.integers(0, MAX_ORDER))
    def refused_free(self, data, order):
        """Freeing a block with a free (or reserved) frame raises and changes nothing."""
        pfn = data.draw(st.integers(0, (self.area.nr_frames >> order) - 1)) << order
        if pfn >= self.ref.reserved and not self.ref.any_free(pfn, order):
            return                                 # a legal free of someone's frames: not here
        before = snapshot(self.area)
        with pytest.raises(ValueError):
            self.area.free_py(pfn, order)
        assert snapshot(self.area) == before

    @rule(pfn=st.integers(0, 16383))
    def lookups_agree(self, pfn):
        pfn %= self.area.nr_frames
        orders = [k for k in range(MAX_ORDER + 1) if pfn >> k << k in self.ref.free[k]]
        assert self.area.free_order_py(pfn) == (orders[0] if orders else -1)
        assert self.area.is_free(pfn) == bool(orders)
        for k in range(MAX_ORDER + 1):
            assert self.area.has_free_py(k) == any(self.ref.free[j] for j in range(k, MAX_ORDER + 1))

    @invariant()
    def same_free_lists(self):
        assert snapshot(self.area) == self.ref.snapshot()

    @invariant()
    def consistent(self):
        self.area.check_invariants()


BuddyMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_buddy_matches_the_reference = BuddyMachine.TestCase


@settings(max_examples=100, deadline=None)
@given(orders=st.lists(st.integers(0, MAX_ORDER), min_size=1, max_size=80), seed=st.integers(0, 2**32 - 1))
def test_freeing_everything_in_any_order_restores_the_initial_free_lists(orders, seed):
    area = FreeArea(8192, 512)
    initial = snapshot(area)
    blocks = [(p, k) for k in orders if (p := area.alloc_py(k)) >= 0]
    for i in np.random.default_rng(seed).permutation(len(blocks)):
        area.free_py(*blocks[i])
    assert snapshot(area) == initial
