"""Saved state: ``mm.save(path)`` / ``mmemu.load(path)`` restore an MM exactly, and a damaged file
is refused with a StateFileError that names it.

The file holds the state pickling produces, so the checks here are those of test_pickle.py
through a file: everything observable agrees after loading and after the same further
operations; then every way a file can be damaged (cut short, bytes flipped, a member removed or
of the wrong dtype, another format version, not an mmemu file at all) raises the documented
error, and never a crash or a half-loaded MM.
"""
import json
import os
import tempfile

import numpy as np
import pytest
import test_differential as diff_test
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pickle import CONFIG, assert_same, check_machine, observe, rich, run_both

import mmemu
from mmemu import MM, Config, _persist, _savefile
from mmemu.errors import ClosedError, MMError, StateFileError

MB = 1 << 20
PAGE = 4096


def saved(mm, tmp_path, name="state.npz"):
    path = tmp_path / name
    mm.save(path)
    return path


def loaded_like(lm, procs, memfds):
    """The loaded processes and memfds in the order of the originals (matched by mm_id and file
    id; a memfd closed before saving gets a closed handle)."""
    by_id = {p._core.mm_id: p for p in lm.processes}
    fds = [lm.memfds.get(fd._fid) or _savefile.memfd_handle(lm.mm, fd._fid) for fd in memfds]
    return [by_id[p._core.mm_id] for p in procs], fds


def members(path):
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def rewrite(path, arrays):
    """Write ``arrays`` as the file's members (an .npz as save writes it, but edited)."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def skeleton(arrays):
    return json.loads(arrays[_savefile.SKELETON].tobytes())


def with_skeleton(arrays, sk):
    arrays = dict(arrays)
    arrays[_savefile.SKELETON] = np.frombuffer(json.dumps(sk).encode(), np.uint8)
    return arrays


# ---- round trips -----------------------------------------------------------------------------------

def test_fresh_mm_round_trip(tmp_path):
    mm = MM()
    path = saved(mm, tmp_path)
    copy_ = MM.load(path)
    assert copy_ is not mm and copy_._machine is not mm._machine
    assert copy_.config == mm.config
    assert_same(observe([mm]), observe([copy_]))
    check_machine(copy_)
    a, b = mm.mmap(4 * MB), copy_.mmap(4 * MB)
    assert a == b and mm.write(a) == copy_.write(b)
    assert_same(observe([mm]), observe([copy_]))


def test_rich_round_trip_then_same_future(tmp_path):
    procs, fds, r = rich()
    lm = mmemu.load_machine(saved(procs[0], tmp_path))
    assert lm.mm is lm.processes[0] and len(lm.processes) == 2
    assert lm.mm._lock is lm.processes[1]._lock is lm.memfds[fds[0]._fid]._lock
    check_machine(lm.mm)
    run_both(procs, fds, *loaded_like(lm, procs, fds), r)
    check_machine(lm.mm)


def test_saved_from_the_child(tmp_path):
    """The file records which process it was saved from; the parent comes back too."""
    procs, fds, _ = rich()
    lm = mmemu.load_machine(saved(procs[1], tmp_path))
    assert lm.mm._core.mm_id == procs[1]._core.mm_id and lm.mm is lm.processes[1]
    assert mmemu.load(tmp_path / "state.npz").maps() == procs[1].maps()
    assert_same(observe(procs, fds), observe(*loaded_like(lm, procs, fds)))


def test_closed_mm_saved_closed(tmp_path):
    procs, _, r = rich()
    procs[1].close()                      # its machine lets go of it: it carries its own state
    child = mmemu.load(saved(procs[1], tmp_path))
    assert child.closed and child.rusage == procs[1].rusage and child.status == procs[1].status
    assert child._core not in child._machine.mms
    with pytest.raises(ClosedError):
        child.write(r["a"])
    lm = mmemu.load_machine(tmp_path / "state.npz")
    assert lm.processes[0].maps() == procs[0].maps()


def test_memfds_come_back_open_ones_as_handles(tmp_path):
    mm = MM(Config(memory=32 * MB, shmem_enabled="always"))
    kept, closed = mm.memfd_create("kept"), mm.memfd_create("closed")
    kept.ftruncate(MB)
    kept.fallocate(0, 4 * MB, keep_size=True)   # fallocend past i_size
    closed.ftruncate(MB)
    mm.mmap(MB, fd=closed)                      # the file lives on in the mapping
    closed.close()
    lm = mmemu.load_machine(saved(mm, tmp_path))
    assert list(lm.memfds) == [kept._fid]
    fd = lm.memfds[kept._fid]
    assert fd.size == MB and fd.name == f"memfd:{kept._fid}" and fd._mm is lm.mm
    for m, f in ((mm, kept), (lm.mm, fd)):
        f.fallocate(600 * PAGE, 10 * PAGE, punch_hole=True)
    assert lm.mm.vmstat == mm.vmstat and lm.mm.buddyinfo().tolist() == mm.buddyinfo().tolist()


def test_save_overwrites_atomically(tmp_path, monkeypatch):
    mm = MM(Config(memory=8 * MB))
    path = saved(mm, tmp_path, "state")         # used as given: no .npz appended
    assert os.listdir(tmp_path) == ["state"]
    mm.write(mm.mmap(MB))
    mm.save(str(path))
    assert mmemu.load(path).rusage == mm.rusage
    good = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        mm.save(path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["state"]


def test_saved_file_gets_the_usual_permissions(tmp_path):
    """As any new file: 0o666 less the umask (not a temporary file's 0o600)."""
    umask = os.umask(0o022)
    try:
        path = saved(MM(Config(memory=8 * MB)), tmp_path)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_the_file_holds_no_pickle(tmp_path):
    """np.load(allow_pickle=False) reads every member; none is an object array; the skeleton
    names every member by its path in the state, with its dtype and shape."""
    procs, _, _ = rich()
    arrays = members(saved(procs[0], tmp_path))
    assert all(a.dtype != object for a in arrays.values())
    sk = skeleton(arrays)
    assert sk["format"] == "mmemu-state" and sk["format_version"] == _persist.FORMAT_VERSION
    assert sk["mmemu_version"] == mmemu.__version__
    hugepages = {int(k): v for k, v in sk["config"]["hugepages"].items()}
    assert Config(**{**sk["config"], "hugepages": hugepages}) == CONFIG
    assert sk["mm"] == {"mm_id": procs[0]._core.mm_id, "closed": False}
    refs = []

    def walk(node):
        if isinstance(node, dict) and "__array__" in node:
            refs.append(node)
        elif isinstance(node, dict):
            [walk(v) for v in node.values()]
        elif isinstance(node, list):
            [walk(v) for v in node]
    walk(sk["machine"])
    assert sorted(ref["__array__"] for ref in refs) == sorted(set(arrays) - {_savefile.SKELETON})
    assert "machine/files/0/pages" in arrays
    for ref in refs:
        a = arrays[ref["__array__"]]
        assert (a.dtype.str, list(a.shape)) == (ref["dtype"], ref["shape"])


def test_unknown_mm_attribute_is_not_lost_silently(tmp_path):
    mm = MM(Config(memory=8 * MB))
    mm._something_new = 1
    with pytest.raises(TypeError, match="_something_new"):
        mm.save(tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


# ---- damaged files -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A small machine with a bit of everything, saved once for the damage tests."""
    mm = MM(Config(memory=16 * MB, shmem_enabled="always"))
    a = mm.mmap(4 * MB)
    mm.madvise(a, 4 * MB, "hugepage")
    mm.write(a)
    mm.write(a + 2 * MB + 5 * PAGE)
    fd = mm.memfd_create()
    fd.ftruncate(MB)
    mm.write(mm.mmap(MB, fd=fd))
    mm.fork().write(a + PAGE)
    path = tmp_path_factory.mktemp("small") / "state.npz"
    mm.save(path)
    return path, observe([mm])


def refused(path, match=None):
    with pytest.raises(StateFileError, match=match) as info:
        mmemu.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_error_class():
    assert issubclass(StateFileError, ValueError) and issubclass(StateFileError, MMError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        mmemu.load(tmp_path / "nothing.npz")


@pytest.mark.parametrize("keep", [0, 1, 10, 100, 0.25, 0.5, 0.9, 0.99, -22, -1])
def test_truncated_file(small_file, tmp_path, keep):
    data = small_file[0].read_bytes()
    keep = int(keep * len(data)) if isinstance(keep, float) else keep % len(data) if keep < 0 else keep
    path = tmp_path / "cut.npz"
    path.write_bytes(data[:keep])
    refused(path)


def test_flipped_bytes(small_file, tmp_path):
    """A byte flipped anywhere: refused, or (a byte zip and numpy ignore, such as a timestamp)
    the very same state."""
    data = small_file[0].read_bytes()
    path = tmp_path / "flipped.npz"
    outcomes = {"refused": 0, "same": 0}
    for at in np.unique(np.linspace(0, len(data) - 1, 150).astype(int)):
        bad = bytearray(data)
        bad[at] ^= 0x5A
        path.write_bytes(bytes(bad))
        try:
            mm = mmemu.load(path)
        except StateFileError as exc:
            assert str(path) in str(exc)
            outcomes["refused"] += 1
        else:
            assert_same(observe([mm]), small_file[1])
            outcomes["same"] += 1
    assert outcomes["refused"] > 100, outcomes


def test_member_removed(small_file, tmp_path):
    arrays = members(small_file[0])
    del arrays["machine/files/0/pages"]
    path = tmp_path / "removed.npz"
    rewrite(path, arrays)
    refused(path, "machine/files/0/pages.*missing")


def test_skeleton_removed(small_file, tmp_path):
    arrays = members(small_file[0])
    del arrays[_savefile.SKELETON]
    path = tmp_path / "noskeleton.npz"
    rewrite(path, arrays)
    refused(path, "not an mmemu state file")


def test_extra_member(small_file, tmp_path):
    arrays = members(small_file[0])
    arrays["machine/extra"] = np.zeros(3)
    path = tmp_path / "extra.npz"
    rewrite(path, arrays)
    refused(path, "unexpected members")


@pytest.mark.parametrize("name,change", [
    ("machine/vmstat", lambda a: a.astype(np.float64)),
    ("machine/vmstat", lambda a: a[:-1]),
    ("machine/refcount/data", lambda a: a.view(np.int8)),
    ("machine/mms/0/vmas/start", lambda a: a.astype(np.int64)),
])
def test_member_of_the_wrong_dtype_or_shape(small_file, tmp_path, name, change):
    arrays = members(small_file[0])
    arrays[name] = change(arrays[name])
    path = tmp_path / "dtype.npz"
    rewrite(path, arrays)
    refused(path, f"member '{name}' is")


def test_consistent_but_wrong_state(small_file, tmp_path):
    """Skeleton and members agree, but the state fails the checks unpickling applies."""
    arrays = members(small_file[0])
    for edit in (lambda sk: sk["machine"]["scalars"].update(compact_defer_shift=100),
                 lambda sk: sk["machine"]["mms"][0]["vmas"].update(cap=0),
                 lambda sk: sk["mm"].update(mm_id=77),
                 lambda sk: sk["mm"].update(closed=True),
                 lambda sk: sk["config"].update(memory=32 * MB),
                 lambda sk: sk["config"].update(memory=1 << 50),    # refused before allocating it
                 lambda sk: sk["config"].update(thp="sometimes"),
                 lambda sk: sk["machine"].pop("files")):
        sk = skeleton(arrays)
        edit(sk)
        path = tmp_path / "wrong.npz"
        rewrite(path, with_skeleton(arrays, sk))
        refused(path)
    arrays["machine/files/0/pages"] = arrays["machine/files/0/pages"] + (1 << 40)
    rewrite(path, arrays)
    refused(path, "Machine")


def test_not_a_zip_says_so(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello")
    refused(path, "not an .npz file")


def test_wrong_version(small_file, tmp_path):
    arrays = members(small_file[0])
    sk = skeleton(arrays)
    sk.update(format_version=99, mmemu_version="9.9")
    path = tmp_path / "v99.npz"
    rewrite(path, with_skeleton(arrays, sk))
    message = refused(path, "version 99")
    assert f"reads version {_persist.FORMAT_VERSION}" in message and "9.9" in message


@pytest.mark.parametrize("content", [
    b"", b"hello", b"PK\x03\x04 garbage",
    "npy", "npz of something else", "json garbage", "json list", "skeleton as text",
])
def test_not_an_mmemu_file(tmp_path, content):
    path = tmp_path / "other.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.arange(3))
    elif content == "npz of something else":
        rewrite(path, {"a": np.arange(3)})
    elif content == "json garbage":
        rewrite(path, {_savefile.SKELETON: np.frombuffer(b"{not json", np.uint8)})
    elif content == "json list":
        rewrite(path, {_savefile.SKELETON: np.frombuffer(b"[1, 2]", np.uint8)})
    elif content == "skeleton as text":
        rewrite(path, {_savefile.SKELETON: np.array('{"format": "mmemu-state"}')})
    else:
        path.write_bytes(content)
    refused(path)


def test_a_pickle_in_the_file_is_not_run(tmp_path):
    """An object array (a pickle inside the .npy) is refused, not unpickled."""
    path = tmp_path / "pickled.npz"
    sk = np.frombuffer(b'{"format": "mmemu-state", "format_version": 1}', np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **{_savefile.SKELETON: sk, "machine/x": np.array([object()], dtype=object)})
    refused(path, "pickle")


# ---- random scripts: save mid-run, continue both -------------------------------------------------------

@settings(max_examples=int(os.environ.get("MMEMU_SAVELOAD_EXAMPLES", "50")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], phases=diff_test.PHASES)
@given(config=diff_test.configs, memory_max=diff_test.memory_maxes, prologue=diff_test.prologues,
       body=st.lists(diff_test.steps, min_size=1, max_size=20), cut=st.integers(0, 19), who=st.integers(0, 2))
def test_random_scripts_continue_alike(config, memory_max, prologue, body, cut, who):
    """Run a random script, save one of its processes at a random step, load the file and go on
    with the rest of the script on the original and on the loaded machine: outcomes and
    observables agree."""
    script = prologue + body
    cut = len(prologue) + cut % len(body)         # at least one step runs after loading
    procs = diff_test.machine(MM, config, memory_max)
    for step, action in script[:cut]:
        diff_test.run(procs, step, action)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mid-run.npz")
        procs[who % len(procs)].save(path)
        lm = mmemu.load_machine(path)
    loaded_procs, loaded_fds = loaded_like(lm, procs, procs.memfds)
    loaded = diff_test.Machine(loaded_procs)
    loaded.memfds = loaded_fds
    loaded[0]._machine.area.check_invariants()
    assert lm.mm.config == procs[0].config and lm.mm._core.mm_id == procs[who % len(procs)]._core.mm_id
    assert diff_test.observe(loaded) == diff_test.observe(procs)
    for i, (step, action) in enumerate(script[cut:]):
        got, want = diff_test.run(loaded, step, action), diff_test.run(procs, step, action)
        assert got == want, f"step {cut + i} {(step, action)}"
        seen, expected = diff_test.observe(loaded), diff_test.observe(procs)
        assert seen == expected, f"step {cut + i} {(step, action)}: {diff_test.diff(seen, expected)}"
