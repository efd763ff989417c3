"""Pickling support shared by the core's classes: the format version, compact array packing and
the checks a loaded state must pass before C code trusts it.

Why a module of its own: the core's C code indexes its arrays without bounds checks, so a state
read back from a pickle is validated here, with numpy, before any pointer is derived from it.
Every failure is a ValueError that names what is wrong (a truncated array, an index out of
range, an unknown format version), never a crash later in the fault path.

Arrays are stored sparsely: most of a machine's per-frame arrays are zero (RAM nobody touched,
page-table slots never used), so an array is cut into chunks of ``CHUNK`` bytes and only the
chunks that hold a nonzero byte are kept.  Loading always copies into fresh, zero-filled,
writable arrays that the loaded object alone owns: nothing it writes through its C pointers can
alias the pickle's buffers or another object's memory.
"""
from __future__ import annotations

import contextlib
import weakref

import numpy as np

#: the version of the pickled state of Machine, MMCore, FreeArea, MM and Memfd; a state of any
#: other version is refused (bump it whenever a field is added, removed or changes meaning)
FORMAT_VERSION = 1

#: bytes per chunk of a sparsely stored array (one page-table page, 1024 int32 frame entries)
CHUNK = 4096


class CorruptState(ValueError):
    """A pickled mmemu state that fails validation (truncated, tampered with, or of an unknown
    format version)."""


def fail(what, problem):
    raise CorruptState(f"cannot unpickle {what}: {problem}")


@contextlib.contextmanager
def guard(what):
    """Turn the errors a malformed state raises while it is taken apart (a missing key, a wrong
    type, an integer too large for its C field) into the one ValueError unpickling promises."""
    try:
        yield
    except CorruptState:
        raise
    except (KeyError, TypeError, OverflowError, IndexError, AttributeError) as exc:
        raise CorruptState(f"cannot unpickle {what}: malformed state ({type(exc).__name__}: {exc})") from None


def check_version(state, what):
    """The state is a dict of this format's version."""
    if not isinstance(state, dict):
        fail(what, f"the state must be a dict, not {type(state).__name__}")
    version = state.get("version")
    if version != FORMAT_VERSION:
        raise CorruptState(f"cannot unpickle {what}: pickle format version {version!r} is not supported "
                           f"(this mmemu reads version {FORMAT_VERSION}); it was written by another "
                           "mmemu version")


def integer(value, what, lo=-(1 << 63), hi=(1 << 63) - 1):
    """A Python or numpy integer in [lo, hi], as an int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        fail(what, f"expected an integer, got {type(value).__name__}")
    value = int(value)
    if not lo <= value <= hi:
        fail(what, f"{value} is outside [{lo}, {hi}]")
    return value


def boolean(value, what):
    if not isinstance(value, (bool, np.bool_)):
        fail(what, f"expected a bool, got {type(value).__name__}")
    return bool(value)


def dense(value, dtype, length, what):
    """A one-dimensional array of exactly this dtype and length, copied into memory of its own."""
    if not isinstance(value, np.ndarray):
        fail(what, f"expected a numpy array, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype) or value.shape != (length,):
        fail(what, f"expected {np.dtype(dtype)}[{length}], got {value.dtype}{list(value.shape)}")
    return np.array(value, dtype=dtype, copy=True, order="C")


# ---- sparse arrays -------------------------------------------------------------------------

def pack(a, chunk=CHUNK):
    """The nonzero chunks of a contiguous array: {"nbytes", "chunk", "index", "data", "tail"}
    (the bytes past the last whole chunk are kept as they are). The data are copies."""
    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    full = b.shape[0] // chunk
    head = b[:full * chunk].reshape(full, chunk)
    if full:
        words = head.view(np.uint64) if chunk % 8 == 0 else head
        index = np.flatnonzero(words.any(axis=1))
    else:
        index = np.zeros(0, np.int64)
    return {"nbytes": b.shape[0], "chunk": chunk, "index": index.astype(np.int64),
            "data": head[index], "tail": b[full * chunk:].copy()}


def unpack(packed, out, what):
    """Fill ``out`` (zero-filled, contiguous, of the expected size) from pack()'s dict, checking
    every index and shape first."""
    b = out.reshape(-1).view(np.uint8)
    if not isinstance(packed, dict):
        fail(what, "expected a packed array")
    nbytes = integer(packed["nbytes"], f"{what}.nbytes")
    chunk = integer(packed["chunk"], f"{what}.chunk", 1, 1 << 30)
    if nbytes != b.shape[0]:
        fail(what, f"holds {nbytes} bytes where {b.shape[0]} are expected")
    full = nbytes // chunk
    index, data, tail = packed["index"], packed["data"], packed["tail"]
    for name, arr in (("index", index), ("data", data), ("tail", tail)):
        if not isinstance(arr, np.ndarray):
            fail(what, f"{name} is not a numpy array")
    if index.dtype != np.int64 or index.ndim != 1:
        fail(what, "the chunk index must be an int64 vector")
    if data.dtype != np.uint8 or data.shape != (index.shape[0], chunk):
        fail(what, f"the chunk data must be uint8[{index.shape[0]}, {chunk}], not {data.dtype}{list(data.shape)}")
    if tail.dtype != np.uint8 or tail.shape != (nbytes - full * chunk,):
        fail(what, "the tail has the wrong size")
    if index.shape[0] and (index[0] < 0 or index[-1] >= full or (np.diff(index) <= 0).any()):
        fail(what, "chunk indices out of range or not strictly increasing")
    if full:
        b[:full * chunk].reshape(full, chunk)[index] = data
    b[full * chunk:] = tail
    return out


def packed_size(packed):
    """Bytes of array data a packed array carries (for reports)."""
    return packed["index"].nbytes + packed["data"].nbytes + packed["tail"].nbytes


# ---- the lock an MM and its forks share ------------------------------------------------------

class _LockToken:
    """Stands for one threading.Lock in a pickle: pickle memoizes the token, so every MM and
    Memfd that shared a lock share one new lock after loading (a lock itself is not picklable,
    and its state, held or not, means nothing in another process)."""

    __slots__ = ("__weakref__",)

    def __reduce__(self):
        return (new_lock, ())

    def __deepcopy__(self, memo):
        return new_lock()


_tokens: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def lock_token(lock):
    """The token of a lock: the same object for as long as the lock lives."""
    token = _tokens.get(lock)
    if token is None:
        token = _tokens[lock] = _LockToken()
    return token


def new_lock():
    import threading
    return threading.Lock()


def check_lock(value, what):
    import threading
    if not isinstance(value, type(threading.Lock())):
        fail(what, "the lock did not unpickle as a lock")
    return value
