"""MM.check(): the engine's invariants hold after rich scenarios, and corruption is caught.

Corruption is injected honestly, without a test-only door into the core: a machine is pickled,
one number of its state is edited so that loading (which checks only what the C code needs to
stay memory-safe) still succeeds, and check() on the loaded machine must name the problem.
"""
import copy
import threading

import numpy as np
import pytest

from mmemu import MM, Config, InvariantError, MMError, OutOfMemory
from mmemu import _core, _persist
from test_pickle import further, rich

MB = 1 << 20
PAGE = 4096


def check_all(procs):
    for p in procs:
        p.check()


def test_check_after_rich_scenarios():
    procs, fds, r = rich()
    check_all(procs)
    for step in further(procs, fds, r):
        check_all(procs)
    for p in reversed(procs):
        p.close()
    procs[0].check()                      # a closed MM checks what is left of its machine


def test_check_thp_mremap_mlock_pageout():
    mm = MM(Config(thp="always", memory=64 * MB))
    a = mm.mmap(8 * MB)
    mm.access(np.arange(a, a + 8 * MB, 3 * PAGE, dtype=np.uint64), 1)
    mm.read(mm.mmap(4 * MB) + 2 * MB)                         # the huge zeropage
    child = mm.fork()
    child.write(a + 5 * PAGE)                                 # splits the child's PMD
    mm.madvise(a + 2 * MB, MB, "cold")
    mm.madvise(a + 3 * MB, MB, "pageout")
    mm.madvise(a + 4 * MB + PAGE, 2 * PAGE, "dontneed")       # a partially mapped THP
    mm.madvise(a + 6 * MB, MB, "free")
    b = mm.mremap(a, 2 * MB, 4 * MB, maymove=True)
    mm.mlock(b, 2 * MB)
    mm.madvise(a + 2 * MB, 4 * MB, "collapse")
    mm.drop_caches()
    check_all([mm, child])
    child.close()
    mm.khugepaged_scan(full_scans=2)
    mm.check()


def test_check_shmem_memfd():
    mm = MM(Config(shmem_enabled="always", hugepages={64: "always"}, memory=64 * MB))
    s = mm.mmap(4 * MB, shared=True)
    mm.write(s)
    mm.read(s + 2 * MB + 9 * PAGE)
    fd = mm.memfd_create()
    fd.ftruncate(6 * MB)
    fd.fallocate(0, 3 * MB)
    m = mm.mmap(6 * MB, fd=fd)
    mm.access(np.arange(m, m + 6 * MB, 7 * PAGE, dtype=np.uint64), 1)
    child = mm.fork()
    child.read(m + 5 * PAGE)
    fd.fallocate(MB + 3 * PAGE, 5 * PAGE, punch_hole=True)
    fd.ftruncate(5 * MB - 3 * PAGE)
    check_all([mm, child])
    mm.munmap(s, 4 * MB)
    child.close()
    fd.close()
    mm.check()


def test_check_fragmentation_and_oom():
    mm = MM(Config(thp="always", memory=32 * MB), memory_max=12 * MB)
    mm.fragment_memory(0.5, 9)
    a = mm.mmap(32 * MB)
    with pytest.raises(OutOfMemory):
        mm.access(np.arange(a, a + 32 * MB, PAGE, dtype=np.uint64), 1)
    mm.check()
    mm.release_fragmentation()
    mm.check()


# ---- corruption is caught ---------------------------------------------------------------------

def loaded(mm, edit):
    """A copy of mm's machine with ``edit`` applied to its pickled state, as an MM (the process
    with mm's id on it)."""
    fn, args, state = mm._machine.__reduce__()
    state = copy.deepcopy(state)
    edit(state)
    machine = fn(*args)
    machine.__setstate__(state)
    out = MM.__new__(MM)
    out.__dict__.update(_config=mm.config, _machine=machine, _core=machine.core_by_id(mm._core.mm_id),
                        _closed=False, _lock=threading.Lock())
    return out


def edit_frames(key, dtype, change):
    """An edit of one per-frame array (refcount, mapcount, flags) of a pickled machine."""
    def edit(state):
        size = state[key]["nbytes"] // np.dtype(dtype).itemsize
        arr = _persist.unpack(state[key], np.zeros(size, dtype), key)
        change(arr)
        state[key] = _persist.pack(arr)
    return edit


def edit_ptes(change):
    """An edit of process 0's PTE tables (its pool of level 0)."""
    def edit(state):
        packed = state["mms"][0]["pools"][0]["tables"]
        size = packed["nbytes"] // 8
        arr = _persist.unpack(packed, np.zeros(size, np.uint64), "ptes")
        change(arr)
        state["mms"][0]["pools"][0]["tables"] = _persist.pack(arr)
    return edit


def anon_page(mm):
    """An order-0 anonymous page the scenario maps once (a frame with refcount 1)."""
    m = mm._machine
    return next(pfn for pfn in range(512, m.nr_frames) if m.frame_info(pfn)[:2] == (1, 1))


def first_present_pte(ptes):
    return int(np.flatnonzero((ptes != 0) & ((ptes & np.uint64(0x200)) == 0))[0])



@pytest.fixture(scope="module")
def victim():
    mm = MM(Config(thp="always", memory=32 * MB))
    a = mm.mmap(8 * MB)
    mm.write(a)                                              # a THP
    for i in range(1, 40):
        mm.write(a + 2 * MB + i * PAGE)                      # THP too: split them to 4K pages
    mm.madvise(a + 2 * MB + 100 * PAGE, PAGE, "dontneed")
    mm.drop_caches()
    b = mm.mmap(MB)
    mm.madvise(b, MB, "nohugepage")
    for i in range(16):
        mm.write(b + i * PAGE)                               # 4K pages
    mm.check()
    return mm


CORRUPTIONS = {
    "refcount": (lambda mm: edit_frames("refcount", np.int32, lambda a: a.__setitem__(anon_page(mm), 2)),
                 "anonymous page"),
    "mapcount": (lambda mm: edit_frames("mapcount", np.int32, lambda a: a.__setitem__(anon_page(mm), 2)),
                 "mapcount 2"),
    "leaked page": (lambda mm: edit_ptes(lambda t: t.__setitem__(first_present_pte(t), 0)),
                    "leaked"),
    "mapped free frame": (lambda mm: edit_ptes(lambda t: t.__setitem__(
        first_present_pte(t), (np.uint64(mm._machine.nr_frames - 1) << np.uint64(12)) | np.uint64(0x67))),
        "which is free"),
    "rss": (lambda mm: lambda s: s["mms"][0]["counters"].__setitem__(0, s["mms"][0]["counters"][0] + 1),
            "RssAnon"),
    "vmstat": (lambda mm: lambda s: s["vmstat"].__setitem__(0, s["vmstat"][0] - 1), "nr_anon_pages"),
    "memcg": (lambda mm: lambda s: s["scalars"].update(memcg_usage=s["scalars"]["memcg_usage"] + 3),
              "memory_current"),
    "deposit": (lambda mm: lambda s: s["mms"][0]["nr_tables"].__setitem__(3, s["mms"][0]["nr_tables"][3] + 1),
                "deposited"),
    "thp refcount": (lambda mm: edit_frames("pmd_folio", np.uint8, lambda a: a.view(np.int32).__setitem__(
        (next(b for b in range(1, mm._machine.nr_blocks) if mm._machine.pmd_folio_info(b)[0]) * 40 + 8) // 4,
        99)), "refcount 99"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_check_catches_corruption(victim, name):
    make_edit, words = CORRUPTIONS[name]
    loaded(victim, lambda s: None).check()                   # the untouched copy passes
    bad = loaded(victim, make_edit(victim))
    with pytest.raises(InvariantError) as info:
        bad.check()
    assert isinstance(info.value, MMError) and info.value.problems
    assert words in str(info.value), str(info.value)


def test_check_state_is_a_list():
    assert MM()._machine.check_state() == []
