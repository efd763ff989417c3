"""Pickling an MM: the copy is exact and independent, and a tampered state is refused.

An unpickled MM must behave as the original would from then on, so every test compares
everything observable right after loading and again after the same further operations on both;
MMs pickled together must come back on one machine; and a state that was cut short or edited must
raise ValueError (the core's C code trusts the indices it loads: a crash here is a failure too).
"""
import copy
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmemu import MM, Config
from mmemu import _core, _persist
from mmemu.errors import ClosedError

import test_differential as diff_test

MB = 1 << 20
PAGE = 4096


# ---- observables --------------------------------------------------------------------------------

def observe(procs, memfds=()):
    """Everything a user can read of a machine and its processes, as comparable values."""
    head = next((p for p in procs if not p.closed), procs[0])
    out = {"vmstat": head.vmstat, "mthp": head.mthp_stats, "khugepaged": head.khugepaged,
           "buddyinfo": head.buddyinfo().tolist(), "memory_current": head.memory_current,
           "memory_max": head.memory_max,
           "memfds": [(fd.size, fd.closed) for fd in memfds]}
    for i, mm in enumerate(procs):
        out[f"{i}.closed"] = mm.closed
        out[f"{i}.rusage"] = mm.rusage
        out[f"{i}.status"] = mm.status
        out[f"{i}.page_tables"] = mm.page_tables
        if mm.closed:
            continue
        out[f"{i}.maps"] = maps = mm.maps()
        for start, end, *_ in maps:
            pagemap, kcount, kflags = mm.pagemap(start, end - start)
            out[f"{i}.{start:#x}.states"] = mm.page_states(start, end - start).tobytes()
            out[f"{i}.{start:#x}.pagemap"] = (pagemap.tobytes(), kcount.tobytes(), kflags.tobytes())
            out[f"{i}.{start:#x}.smaps"] = mm.smaps(start)
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def check_machine(mm):
    """The loaded allocator passes its own O(frames) consistency check too."""
    mm._machine.area.check_invariants()


# ---- scenarios ----------------------------------------------------------------------------------

CONFIG = Config(hugepages={64: "always"}, shmem_enabled="advise", memory=96 * MB)


def rich():
    """A machine with most of what the state holds: THPs, the huge zeropage, 64 kB mTHPs, a
    forked child sharing pages copy-on-write, MADV_FREE pages, a khugepaged collapse, shared
    anonymous memory and a memfd (fallocated, mapped), a memory.max and held fragmentation."""
    mm = MM(CONFIG, memory_max=80 * MB)
    a = mm.mmap(8 * MB)
    mm.madvise(a, 8 * MB, "hugepage")
    mm.write(a)                                   # a THP
    mm.read(a + 2 * MB)                           # the huge zeropage
    mm.write(a + 4 * MB + 5 * PAGE)
    b = mm.mmap(MB)
    mm.access(np.arange(b, b + MB // 2, 3 * PAGE, dtype=np.uint64), 1)   # 64 kB mTHPs
    c = mm.mmap(4 * MB, addr=0x600000000000, fixed=True)
    mm.access(np.arange(c, c + 4 * MB, 5 * PAGE, dtype=np.uint64), 1)    # 4K pages
    child = mm.fork()
    child.write(a + PAGE)                         # copy-on-write
    mm.write(b + 2 * PAGE)
    mm.madvise(b + 256 * 1024, 256 * 1024, "free")
    mm.madvise(c, 4 * MB, "hugepage")
    mm.khugepaged_scan(full_scans=1)
    s = mm.mmap(4 * MB, shared=True)
    mm.madvise(s, 4 * MB, "hugepage")
    mm.write(s)
    mm.read(s + 2 * MB + 7 * PAGE)
    fd = mm.memfd_create("pickled")
    fd.ftruncate(4 * MB)
    fd.fallocate(0, MB)
    m = mm.mmap(4 * MB, fd=fd)
    mm.write(m + 3 * PAGE)
    child.read(child.mmap(4 * MB, fd=fd) + 2 * MB)   # the file, shared by both processes
    child.prctl("PR_SET_THP_DISABLE", 1)
    mm.fragment_memory(0.5, 9, movable=True)
    return [mm, child], [fd], {"a": a, "b": b, "c": c, "s": s, "m": m}


def further(procs, memfds, r):
    """The same operations for the original and the copy; yields after each, to compare."""
    mm, child = procs[0], procs[1]
    fd = memfds[0]
    mm.access(np.arange(r["a"], r["a"] + 8 * MB, 9 * PAGE, dtype=np.uint64), 1)
    yield "writes"
    mm.munmap(r["a"] + 6 * MB, 2 * MB)
    yield "munmap"
    grandchild = mm.fork()
    procs.append(grandchild)
    grandchild.write(r["b"])
    mm.write(r["c"] + PAGE)
    yield "fork"
    mm.access(np.arange(r["c"], r["c"] + 4 * MB, 11 * PAGE, dtype=np.uint64), 1)
    mm.madvise(r["c"], 4 * MB, "collapse")
    yield "collapse"
    mm.madvise(r["a"], 2 * MB, "dontneed")
    mm.drop_caches()
    yield "drop_caches"
    d = mm.mmap(4 * MB, addr=0x610000000000, fixed=True)
    mm.madvise(d, 4 * MB, "hugepage")
    mm.access(np.arange(d, d + 4 * MB, 13 * PAGE, dtype=np.uint64), 0)
    mm.khugepaged_scan(full_scans=2)
    yield "khugepaged"
    e = child.mmap(4 * MB)
    child.madvise(e, 4 * MB, "hugepage")
    child.write(e + 2 * MB)                       # no THP: the child disabled them
    yield "prctl"
    child.close()
    fd.fallocate(MB, MB, punch_hole=True)
    fd.close()
    mm.release_fragmentation()
    mm.write(r["s"] + 3 * MB)
    yield "close"


def run_both(orig, orig_fds, copy_, copy_fds, r):
    assert_same(observe(orig, orig_fds), observe(copy_, copy_fds))
    for (step, _) in zip(further(orig, orig_fds, r), further(copy_, copy_fds, r)):
        assert_same(observe(orig, orig_fds), observe(copy_, copy_fds)), step


def dumps_loads(obj, how):
    if how == "deepcopy":
        return copy.deepcopy(obj)
    return pickle.loads(pickle.dumps(obj, protocol=how))


HOWS = [pickle.DEFAULT_PROTOCOL, 5, "deepcopy"]


# ---- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOWS)
def test_fresh_mm_round_trip(how):
    mm = MM()
    copy_ = dumps_loads(mm, how)
    assert copy_ is not mm and copy_._machine is not mm._machine
    assert copy_.config == mm.config
    assert_same(observe([mm]), observe([copy_]))
    check_machine(copy_)
    a, b = mm.mmap(4 * MB), copy_.mmap(4 * MB)
    assert a == b
    assert mm.write(a) == copy_.write(b)
    assert_same(observe([mm]), observe([copy_]))


@pytest.mark.parametrize("how", HOWS)
def test_rich_round_trip_then_same_future(how):
    procs, fds, r = rich()
    loaded_procs, loaded_fds = dumps_loads((procs, fds), how)
    check_machine(loaded_procs[0])
    run_both(procs, fds, loaded_procs, loaded_fds, r)
    check_machine(loaded_procs[0])


def test_copy_is_independent():
    procs, fds, r = rich()
    before = observe(procs, fds)
    other, other_fds = pickle.loads(pickle.dumps((procs, fds), protocol=5))
    for _ in further(other, other_fds, r):
        pass
    other[0].munmap(r["b"], MB)
    assert_same(observe(procs, fds), before)
    assert copy.copy(procs[0])._machine is not procs[0]._machine      # no shallow copies


def test_pickled_together_share_one_machine():
    procs, fds, r = rich()
    parent, child, fd = pickle.loads(pickle.dumps((procs[0], procs[1], fds[0])))
    assert parent._machine is child._machine is fd._machine
    assert parent._lock is child._lock is fd._lock
    assert fd._mm is parent
    assert parent._core in parent._machine.mms and child._core in parent._machine.mms
    # a copy-on-write fault in the child shows in the machine-wide counters both read
    before = parent.vmstat
    procs[1].write(r["a"] + 9 * PAGE)
    child.write(r["a"] + 9 * PAGE)
    assert parent.vmstat == child.vmstat == procs[0].vmstat != before
    assert_same(observe([parent, child], [fd]), observe(procs, fds))


def test_one_process_brings_its_machine():
    procs, fds, r = rich()
    child = pickle.loads(pickle.dumps(procs[1]))
    assert len(child._machine.mms) == 2           # the parent came along, unreachable otherwise
    assert child.vmstat == procs[1].vmstat
    assert_same(observe([child]), observe([procs[1]]))
    fd = pickle.loads(pickle.dumps(fds[0]))
    assert fd.size == fds[0].size and fd._mm.maps() == procs[0].maps()


def test_closed_mm_pickles_closed():
    procs, fds, r = rich()
    procs[1].close()
    parent, child = pickle.loads(pickle.dumps((procs[0], procs[1])))
    assert child.closed and not parent.closed
    assert child.rusage == procs[1].rusage
    with pytest.raises(ClosedError):
        child.write(r["a"])
    alone = pickle.loads(pickle.dumps(procs[1]))  # no longer on its machine's lists
    assert alone.closed and alone.rusage == procs[1].rusage and alone.status == procs[1].status
    assert alone._core not in alone._machine.mms
    assert_same(observe(procs, fds), observe([parent, child], fds))


def test_memfd_closed_and_file_gone():
    mm = MM(Config(memory=32 * MB))
    fd = mm.memfd_create()
    fd.ftruncate(MB)
    fd.close()
    mm2, fd2 = pickle.loads(pickle.dumps((mm, fd)))
    assert fd2.closed and fd2.size == 0 and fd2._machine is mm2._machine


def test_compact_sizes():
    """A fresh 16 GiB machine pickles to kilobytes (untouched RAM is not stored); a touched 4K
    page costs about its page-table entry and frame metadata."""
    assert len(pickle.dumps(MM(), protocol=5)) < 64 * 1024
    mm = MM(Config(memory=1 << 30))
    a = mm.mmap(64 * MB)
    mm.access(np.arange(a, a + 64 * MB, PAGE, dtype=np.uint64), 1)
    assert len(pickle.dumps(mm, protocol=5)) < 16384 * 40


# ---- tampered states -------------------------------------------------------------------------------

def machine_state(mm):
    fn, args, state = mm._machine.__reduce__()
    return fn, args, copy.deepcopy(state)


def load_state(fn, args, state):
    machine = fn(*args)
    machine.__setstate__(state)
    return machine


def drop_last_chunk(packed):
    packed["data"] = packed["data"][:-1]


def shorten(core, key):
    core["vmas"][key] = core["vmas"][key][:-1]


def pte_past_ram(core):
    """A PTE (pool 0) that maps a frame far outside RAM."""
    data = core["pools"][0]["tables"]["data"].view(np.uint64).reshape(-1)
    data[np.flatnonzero(data)[0]] = (np.uint64(1 << 39) << np.uint64(12)) | np.uint64(0x67)


def pmd_entries(core):
    """The stored PMD-table entries that point to PTE tables, and the (uint64) view of them."""
    data = core["pools"][1]["tables"]["data"].view(np.uint64).reshape(-1)
    tables = np.flatnonzero((data != 0) & ((data & np.uint64(0x80)) == 0))
    return data, tables


def table_twice(core):
    """A second PMD entry naming a PTE table another entry names."""
    data, tables = pmd_entries(core)
    data[np.flatnonzero(data == 0)[0]] = data[tables[0]]


def table_past_pool(core):
    data, tables = pmd_entries(core)
    used = core["pools"][0]["used"]
    data[tables[0]] = (data[tables[0]] & np.uint64(0xFFF)) | (np.uint64(used + 5) << np.uint64(12))


def bad_mthp_order(packed):
    """Order 1 (no anonymous mTHP has it) in the first mTHP descriptor that is stored."""
    size, at = 40, 35                       # sizeof(folio_t), offsetof(folio_t, order) on x86-64
    base = int(packed["index"][0]) * packed["chunk"]
    offset = (at - base) % size
    packed["data"][0, offset] = 1


TAMPERS = {
    "version": lambda s: s.update(version=99),
    "truncated refcount": lambda s: drop_last_chunk(s["refcount"]),
    "refcount size": lambda s: s["refcount"].update(nbytes=s["refcount"]["nbytes"] - 4),
    "vmstat dtype": lambda s: s.update(vmstat=s["vmstat"].astype(np.float64)),
    "vmstat short": lambda s: s.update(vmstat=s["vmstat"][:-1]),
    "missing key": lambda s: s.pop("mthp_stat"),
    "vma count": lambda s: shorten(s["mms"][0], "end"),
    "vma cap": lambda s: s["mms"][0]["vmas"].update(cap=1),
    "vma order": lambda s: s["mms"][0]["vmas"].update(start=s["mms"][0]["vmas"]["start"][::-1].copy()),
    "vma file": lambda s: s["mms"][0]["vmas"]["file"].__setitem__(0, 77),
    "pool used": lambda s: s["mms"][0]["pools"][0].update(used=1),
    "pool cap": lambda s: s["mms"][0]["pools"][1].update(cap=0),
    "pte frame": lambda s: pte_past_ram(s["mms"][0]),
    "free table in use": lambda s: s["mms"][0]["pools"][0].update(free=np.array([0], np.int32)),
    "table referenced twice": lambda s: table_twice(s["mms"][0]),
    "table past its pool": lambda s: table_past_pool(s["mms"][0]),
    "pt cache": lambda s: s["mms"][0]["tlb"].__setitem__(4, 1 << 20),
    "mm ids": lambda s: s["mms"][1].update(mm_id=s["mms"][0]["mm_id"]),
    "setting type": lambda s: s["mms"][0]["settings"].update(thp_always="yes"),
    "mthp orders": lambda s: s["mms"][0]["settings"].update(mthp_always=1 << 9),
    "file frame": lambda s: s["files"][0]["pages"].__setitem__(0, 1 << 40),
    "file short": lambda s: s["files"][0].update(pages=s["files"][0]["pages"][:100]),
    "free list count": lambda s: s["area"]["nr_free"].__setitem__(3, 12345),
    "huge zero": lambda s: s["scalars"].update(huge_zero_pfn=513),
    "defer shift": lambda s: s["scalars"].update(compact_defer_shift=100),
    "scalar type": lambda s: s["scalars"].update(memcg_max="lots"),
    "folio order": lambda s: bad_mthp_order(s["mthp_folio"]),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampered_state_is_refused(name):
    procs, fds, r = rich()
    fn, args, state = machine_state(procs[0])
    load_state(fn, args, copy.deepcopy(state))        # the untouched state loads
    TAMPERS[name](state)
    with pytest.raises(ValueError):
        load_state(fn, args, state)


def test_tampered_pickle_stream_is_refused():
    """The same through pickle.loads: a Pickler that writes a doctored machine state."""
    procs, fds, r = rich()

    class Doctor(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, _core.Machine):
                fn, args, state = obj.__reduce__()
                state["mms"][0]["vmas"]["cap"] = 0
                return fn, args, state
            return NotImplemented

    import io
    buf = io.BytesIO()
    Doctor(buf, protocol=5).dump(procs[0])
    with pytest.raises(ValueError, match="MMCore|Machine"):
        pickle.loads(buf.getvalue())


def test_unknown_version_is_named():
    fn, args, state = machine_state(MM(Config(memory=4 * MB)))
    state["version"] = 2
    with pytest.raises(ValueError, match="format version 2"):
        load_state(fn, args, state)


def test_mm_state_checked():
    mm, other = MM(Config(memory=4 * MB)), MM(Config(memory=4 * MB))
    state = mm.__getstate__()
    state["_lock"] = _persist.new_lock()
    state["_core"] = other._core                      # a process of another machine
    with pytest.raises(ValueError):
        MM.__new__(MM).__setstate__(state)


def test_setstate_only_on_a_new_machine():
    mm = MM(Config(memory=4 * MB))
    fn, args, state = machine_state(mm)
    with pytest.raises(RuntimeError):
        mm._machine.__setstate__(state)


# ---- random scripts ---------------------------------------------------------------------------------

def procs_list(procs):
    out = diff_test.Machine(list(procs[0]))
    out.memfds = list(procs[1])
    return out


@settings(max_examples=int(os.environ.get("MMEMU_PICKLE_EXAMPLES", 100)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], phases=diff_test.PHASES)
@given(config=diff_test.configs, memory_max=diff_test.memory_maxes, prologue=diff_test.prologues,
       body=st.lists(diff_test.steps, min_size=1, max_size=20), cut=st.integers(0, 19),
       protocol=st.sampled_from([pickle.DEFAULT_PROTOCOL, 5]))
def test_random_scripts_continue_alike(config, memory_max, prologue, body, cut, protocol):
    """Run a random script, pickle every process and memfd at a random step, and go on with the
    rest of the script on the original and on the copy: outcomes and observables agree."""
    script = prologue + body
    cut = len(prologue) + cut % len(body)         # at least one step runs after the copy
    procs = diff_test.machine(MM, config, memory_max)
    for who, action in script[:cut]:
        diff_test.run(procs, who, action)
    loaded = procs_list(pickle.loads(pickle.dumps((list(procs), procs.memfds), protocol=protocol)))
    loaded[0]._machine.area.check_invariants()
    assert diff_test.observe(loaded) == diff_test.observe(procs)
    for i, (who, action) in enumerate(script[cut:]):
        got, want = diff_test.run(loaded, who, action), diff_test.run(procs, who, action)
        assert got == want, f"step {cut + i} {(who, action)}"
        seen, expected = diff_test.observe(loaded), diff_test.observe(procs)
        assert seen == expected, f"step {cut + i} {(who, action)}: {diff_test.diff(seen, expected)}"


def test_parts_pickle_with_their_machine():
    """A process core pickles as a reference into its machine; a shmem file does not pickle
    alone (its page cache is the machine's), and says what to pickle instead."""
    mm = MM(Config(memory=8 * MB))
    fd = mm.memfd_create()
    core = pickle.loads(pickle.dumps(mm._core))
    assert core.machine.core_by_id(core.mm_id) is core and len(core.machine.mms) == 1
    with pytest.raises(TypeError, match="Machine"):
        pickle.dumps(mm._machine.files[fd._fid])
    area = pickle.loads(pickle.dumps(mm._machine.area))
    assert area.buddyinfo().tolist() == mm.buddyinfo().tolist()
    area.check_invariants()


def test_out_of_band_buffers():
    """Protocol 5 with out-of-band buffers (as dask and multiprocessing's shared memory use):
    the loaded machine copies what it keeps, so read-only buffers do, and reusing them for a
    second load gives a second independent machine."""
    procs, fds, r = rich()
    buffers = []
    blob = pickle.dumps((procs, fds), protocol=5, buffer_callback=buffers.append)
    frozen = [bytes(b.raw()) for b in buffers]             # read-only memory
    one = pickle.loads(blob, buffers=frozen)
    two = pickle.loads(blob, buffers=frozen)
    assert_same(observe(*one), observe(procs, fds))
    for _ in further(*one, r):
        pass
    assert_same(observe(*two), observe(procs, fds))


def test_a_memfds_fallocend_survives_pickling():
    """fallocend decides which pieces a split keeps past i_size: it must come back."""
    mm = MM(Config(shmem_enabled="always"))
    f = mm.memfd_create()
    f.ftruncate(768 * 4096)
    f.fallocate(0, 4 << 20, keep_size=True)
    mm2, f2 = pickle.loads(pickle.dumps((mm, f)))
    for m, fd in ((mm, f), (mm2, f2)):
        fd.fallocate(600 * 4096, 10 * 4096, punch_hole=True)
    assert mm2.vmstat == mm.vmstat and mm2.buddyinfo().tolist() == mm.buddyinfo().tolist()
