"""Saved state: an MM's whole machine in a numpy ``.npz`` file (``MM.save`` / ``mmemu.load``).

Why this is not a second serialisation: the file holds exactly the state pickling produces
(``Machine._getstate()``, the nested dict of numpy arrays and scalars that mmemu._persist packs
and checks), so loading goes through the same checks as unpickling (``Machine.__setstate__``,
``MM.__setstate__``) and a file cannot reach the core's unchecked C code any more than a pickle
can.  Why a file format besides pickle: an ``.npz`` is read with ``np.load(allow_pickle=False)``,
so opening a saved state never runs code from the file, and any numpy can list and read it.

Layout of the file (a zip archive, as ``np.savez_compressed`` writes it):

``mmemu.json``
    a uint8 vector holding UTF-8 JSON, the skeleton: ``format`` ("mmemu-state"),
    ``format_version`` (mmemu._persist.FORMAT_VERSION), ``mmemu_version``, ``config``
    (Config.as_dict()), ``mm`` (which process the file was saved from: its ``mm_id``, and its
    own state under ``detached`` when it had exited and its machine no longer lists it) and
    ``machine``: the machine's state with scalars inline and each array replaced by
    ``{"__array__": member, "dtype": ..., "shape": [...]}``.
one member per array
    named by the array's path in the state, e.g. ``machine/files/0/pages`` or
    ``machine/mms/0/pools/0/tables/data``; its dtype and shape must be the skeleton's.

Compression: np.savez_compressed (zlib).  The stored arrays are already sparse (only the nonzero
4 KiB chunks of the per-frame arrays and page-table pools), and what remains compresses 15-30
times: 1 GiB touched with 4K pages saves to 0.29 MiB against 4.3 MiB with np.savez, for about
0.15 s more save time and the same load time (docs/saved-state.md,
benchmarks/saveload_sizes.py).

Everything that goes wrong while reading a file raises :class:`mmemu.errors.StateFileError`
(a ValueError) naming the file and the problem, before any MM is returned: a file either loads
whole or not at all.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from typing import NamedTuple

import numpy as np

from . import _core, _persist
from .config import Config
from .constants import PAGE_SIZE, PMD_SIZE
from .errors import StateFileError

#: the JSON member holding the skeleton
SKELETON = "mmemu.json"
#: the skeleton's ``format`` value: tells an mmemu state file from any other .npz
MAGIC = "mmemu-state"
#: the first bytes of a zip archive's first member (an .npz is a zip archive)
ZIP_MAGIC = b"PK\x03\x04"
#: MM attributes the file carries (the machine's state stands for _machine and _core)
_MM_ATTRS = {"_config", "_machine", "_core", "_closed", "_lock"}


class LoadedMachine(NamedTuple):
    """What :func:`load_machine` returns: the saved process, every open process of its
    machine (``mm`` among them, in the machine's order: the first process, then its forks),
    and a :class:`~mmemu.Memfd` for each memfd whose fd was open, by file id."""
    mm: object
    processes: list
    memfds: dict


# ---- saving ------------------------------------------------------------------------------------

def save(mm, path, compress=True) -> None:
    """Write ``mm``'s machine to ``path`` (used as given: no ``.npz`` is appended), atomically:
    the file is written next to it under a temporary name, then renamed over it, so a reader
    never sees a half-written file and a failed save leaves the old one in place.
    (``compress=False``, np.savez, is there for the benchmark that chose compression.)"""
    path = os.fspath(path)
    skeleton, arrays = snapshot(mm)
    members = {SKELETON: np.frombuffer(json.dumps(skeleton, separators=(",", ":")).encode(), np.uint8)}
    members.update(arrays)
    fd, tmp = _temporary_next_to(path)
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _temporary_next_to(path):
    """A new file in ``path``'s directory (so that os.replace is a rename on one file system),
    created with mode 0o666 so that the umask gives it the permissions any new file gets
    (tempfile.mkstemp's 0o600 would stay on the saved file)."""
    folder, base = os.path.split(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path!r}")


def snapshot(mm):
    """The skeleton (JSON-ready) and the arrays (member name -> array) of ``mm``'s state."""
    from . import __version__
    extra = set(mm.__dict__) - _MM_ATTRS
    if extra:       # an attribute this format does not know would be lost on load: refuse
        raise TypeError(f"MM.save does not know how to save the attributes {sorted(extra)}")
    arrays = {}
    core, machine = mm._core, mm._machine
    listed = any(c is core for c in machine.mms) or any(c is core for c in machine.khugepaged_exited)
    process = {"mm_id": int(core.mm_id), "closed": bool(mm._closed)}
    if not listed:                # it exited and its machine let go of it: it carries its state
        process["detached"] = _flatten(core._getstate(), ["mm", "detached"], arrays)
    skeleton = {"format": MAGIC, "format_version": _persist.FORMAT_VERSION, "mmemu_version": __version__,
                "config": mm._config.as_dict(), "mm": process,
                "machine": _flatten(machine._getstate(), ["machine"], arrays)}
    return skeleton, arrays


def _flatten(value, path, arrays):
    """The state with each array moved into ``arrays`` under its path and left as a reference."""
    if isinstance(value, np.ndarray):
        name = "/".join(path)
        arrays[name] = value
        return {"__array__": name, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"state dict at {'/'.join(path)} has non-str keys")
        return {k: _flatten(v, path + [k], arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, path + [str(i)], arrays) for i, v in enumerate(value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if value is None or isinstance(value, (float, str)):
        return value
    raise TypeError(f"cannot save {type(value).__name__} at {'/'.join(path)}")


# ---- loading -----------------------------------------------------------------------------------

def load(path):
    """The MM saved in ``path``, on its whole machine (see :func:`load_machine`)."""
    return load_machine(path).mm


def load_machine(path) -> LoadedMachine:
    """Read a file :func:`save` wrote: the saved MM, its machine's other processes and its
    memfds, all sharing one new lock (as forks do)."""
    path = os.fspath(path)
    skeleton, members = _read(path)
    with _file_errors(path, "the skeleton"):
        config = _config(skeleton["config"])
        process = skeleton["mm"]
        state = _unflatten(skeleton["machine"], members)
        _check_size(config, state)
        detached = process.get("detached")
        detached = None if detached is None else _unflatten(detached, members)
        if members:
            raise StateFileError(f"unexpected members {sorted(members)[:3]}")
    return _build(path, config, process, state, detached)


def _read(path):
    """The skeleton and every array member, read in full (a zip is checked by its CRCs as its
    members are read), with the format and version checked before anything else."""
    with open(path, "rb") as f:           # the host's errors (no such file...) as they are
        if f.read(4) != ZIP_MAGIC:
            raise _refused(path, "not an .npz file (it does not start as a zip archive does)")
    try:
        npz = np.load(path, allow_pickle=False)
    except OSError as exc:
        if exc.errno is not None:         # the host's error (no such file, permission, I/O)
            raise
        raise _unreadable(path, exc) from None
    except Exception as exc:              # zipfile and numpy raise many kinds on a damaged file
        raise _unreadable(path, exc) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _refused(path, "a single .npy array, not an .npz file")
    with npz, _file_errors(path, "the file"):
        if SKELETON not in npz.files:
            raise _refused(path, f"no {SKELETON} member (not an mmemu state file)")
        skeleton = _skeleton(path, npz[SKELETON])
        members = {name: npz[name] for name in npz.files if name != SKELETON}
    return skeleton, members


def _refused(path, problem):
    """The one-line error for a file that does not load."""
    return StateFileError(f"cannot load mmemu state from {path!r}: {problem}")


def _unreadable(path, exc):
    return _refused(path, f"not a readable .npz file ({type(exc).__name__}: {exc})")


def _skeleton(path, raw):
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _refused(path, f"{SKELETON} is not a uint8 vector")
    try:
        skeleton = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refused(path, f"{SKELETON} is not valid JSON ({exc})") from None
    if not isinstance(skeleton, dict) or skeleton.get("format") != MAGIC:
        raise _refused(path, f"{SKELETON} does not describe an mmemu state")
    version = skeleton.get("format_version")
    if version != _persist.FORMAT_VERSION:
        from . import __version__
        raise _refused(
            path, f"it has state format version {version!r} (written by "
            f"mmemu {skeleton.get('mmemu_version')!r}); this mmemu ({__version__}) reads version "
            f"{_persist.FORMAT_VERSION} only")
    return skeleton


def _unflatten(value, members):
    """The state again: each array reference replaced by its member, whose dtype and shape must
    be the ones the skeleton recorded. Members are taken out of ``members`` as they are used,
    so that a reference used twice or a member left over shows."""
    if isinstance(value, dict):
        if "__array__" in value:
            return _member(value, members)
        return {k: _unflatten(v, members) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, members) for v in value]
    return value


def _member(ref, members):
    name = ref["__array__"]
    if not isinstance(name, str) or name not in members:
        raise StateFileError(f"the member {name!r} is missing")
    array = members.pop(name)
    if array.dtype.str != ref["dtype"] or list(array.shape) != ref["shape"]:
        raise StateFileError(f"the member {name!r} is {array.dtype.str}{list(array.shape)}, "
                             f"not {ref['dtype']}{ref['shape']}")
    return array


def _config(fields):
    """The Config the file recorded (JSON turned the per-size hugepages keys into strings)."""
    fields = dict(fields)
    fields["hugepages"] = {int(k): v for k, v in fields["hugepages"].items()}
    try:
        return Config(**fields)
    except (TypeError, ValueError) as exc:
        raise StateFileError(f"the config is invalid ({exc})") from None


def _check_size(config, state):
    """The machine's RAM, as its per-frame arrays record it, is the config's: checked before a
    machine of that size is allocated (an edited config must not ask for a petabyte)."""
    frames = (config.memory // PMD_SIZE + 1) * (PMD_SIZE // PAGE_SIZE)   # with the reserved block
    nbytes = state["refcount"]["nbytes"] if isinstance(state, dict) else None
    if nbytes != frames * 4:
        raise StateFileError(f"the config's {config.memory} bytes of RAM disagree with the machine's state")


def _build(path, config, process, state, detached):
    """The machine and its processes, each through the checks unpickling uses."""
    from .mm import MM
    with _file_errors(path, "the state"):
        if not isinstance(state, dict):
            raise StateFileError("the machine's state is not a dict")
        machine = _core.Machine(config.memory)
        machine.__setstate__(state)
        mm_id = _persist.integer(process["mm_id"], "mm.mm_id", 1, (1 << 31) - 1)
        if detached is None:
            core = _core._machine_core(machine, mm_id)
        else:
            core = _core._detached_core(machine, detached)
        lock = threading.Lock()
        wrap = {id(c): _mm(MM, config, machine, c, lock) for c in machine.mms}
        mm = wrap[id(core)] if id(core) in wrap else _mm(MM, config, machine, core, lock)
        if _persist.boolean(process["closed"], "mm.closed") != mm.closed:
            raise StateFileError("the saved process's closed flag disagrees with its state")
        processes = [wrap[id(c)] for c in machine.mms]
        memfds = {fid: memfd_handle(mm, fid) for fid, f in machine.files.items()
                  if not f.anonymous and f.fd_open}
    return LoadedMachine(mm, processes, memfds)


def _mm(cls, config, machine, core, lock):
    mm = cls.__new__(cls)
    mm.__setstate__({"_config": config, "_machine": machine, "_core": core, "_closed": bool(core.closed),
                     "_lock": lock, "_version": _persist.FORMAT_VERSION})
    return mm


def memfd_handle(mm, fid, name=None):
    """A Memfd for shmem file ``fid`` of ``mm``'s machine (names are not part of the machine's
    state: a loaded memfd is called ``memfd:<fid>`` unless a name is given)."""
    from .mm import Memfd
    fd = Memfd.__new__(Memfd)
    fd.__setstate__({"_mm": mm, "_machine": mm._machine, "_lock": mm._lock, "_fid": fid,
                     "name": f"memfd:{fid}" if name is None else name, "_version": _persist.FORMAT_VERSION})
    return fd


class _file_errors:
    """Turn whatever a damaged file raises while it is read or checked into one StateFileError
    that names the file and the problem (the cause stays chained for debugging)."""

    def __init__(self, path, what):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None or issubclass(kind, (MemoryError, KeyboardInterrupt, SystemExit)):
            return False
        if isinstance(exc, StateFileError) and str(exc).startswith("cannot load"):
            return False
        if isinstance(exc, Exception):
            problem = str(exc).removeprefix("cannot unpickle ")
            if not isinstance(exc, (StateFileError, _persist.CorruptState)):
                problem = f"{self.what} is damaged ({type(exc).__name__}: {problem})"
            raise _refused(self.path, problem) from exc
        return False
