"""MM: one emulated process, the thin Python layer over the Cython core.

Arguments are checked here, named as the kernel names them, and turned into the core's
integers; the system calls sequence the core's primitives the way mm/mmap.c, mm/vma.c,
mm/mprotect.c and mm/madvise.c do, and fail with the kernel's errno.
"""
from __future__ import annotations

import copy
import errno
import functools
import numbers
import threading
from typing import Optional

import numpy as np

from . import _core, _persist
from .config import Config
from .constants import (ADVICE, ATOMIC, MTHP_STAT_NAMES, PAGE_SIZE, PMD_SIZE, READ, TASK_SIZE,
                        VMSTAT_NAMES, WRITE)
from .errors import BusError, ClosedError, InvariantError, OutOfMemory, SegmentationFault, SyscallError

__all__ = ["MM", "Memfd"]

_F = _core.VM_FLAG_VALUES
VM_READ, VM_WRITE, VM_EXEC = _F["VM_READ"], _F["VM_WRITE"], _F["VM_EXEC"]
VM_ACCESS = VM_READ | VM_WRITE | VM_EXEC
VM_MAYWRITE = _F["VM_MAYWRITE"]
VM_MAY = _F["VM_MAYREAD"] | VM_MAYWRITE | _F["VM_MAYEXEC"]
VM_ACCOUNT = _F["VM_ACCOUNT"]
VM_HUGEPAGE, VM_NOHUGEPAGE = _F["VM_HUGEPAGE"], _F["VM_NOHUGEPAGE"]
VM_LOCKED = _F["VM_LOCKED"]
VM_SHARED = _F["VM_SHARED"] | _F["VM_MAYSHARE"]
#: advice refused on mlocked VMAs (madvise_dontneed_free_valid_vma, can_madv_lru_vma)
_NOT_ON_LOCKED = {"dontneed", "free", "cold", "pageout"}

MMAP_MIN_ADDR = 65536
#: TASK_SIZE minus the 128 MiB minimum stack gap, without ASLR (arch/x86/mm/mmap.c)
MMAP_BASE = TASK_SIZE - (128 << 20)
#: where the bottom-up fallback search starts (TASK_UNMAPPED_BASE)
TASK_UNMAPPED_BASE = (TASK_SIZE // 3) & ~(PAGE_SIZE - 1)
USER_TOP = 1 << 47
U64_MAX = (1 << 64) - 1

# fs/proc/task_mmu.c: show_smap_vma_flags, in the kernel's order
_VMFLAG_LETTERS = ((VM_READ, "rd"), (VM_WRITE, "wr"), (VM_EXEC, "ex"), (_F["VM_SHARED"], "sh"),
                   (_F["VM_MAYREAD"], "mr"), (_F["VM_MAYWRITE"], "mw"), (_F["VM_MAYEXEC"], "me"),
                   (_F["VM_MAYSHARE"], "ms"), (_F["VM_LOCKED"], "lo"),
                   (_F["VM_SEQ_READ"], "sr"),
                   (_F["VM_RAND_READ"], "rr"), (_F["VM_DONTCOPY"], "dc"), (VM_ACCOUNT, "ac"),
                   (_F["VM_WIPEONFORK"], "wf"), (_F["VM_DONTDUMP"], "dd"),
                   (VM_HUGEPAGE, "hg"), (VM_NOHUGEPAGE, "nh"))

#: madvise advice that only sets and clears VMA flags: (set, clear) (mm/madvise.c)
_FLAG_ADVICE = {
    "normal": (0, _F["VM_SEQ_READ"] | _F["VM_RAND_READ"]),
    "random": (_F["VM_RAND_READ"], _F["VM_SEQ_READ"]),
    "sequential": (_F["VM_SEQ_READ"], _F["VM_RAND_READ"]),
    "dontfork": (_F["VM_DONTCOPY"], 0),
    "dofork": (0, _F["VM_DONTCOPY"]),
    "wipeonfork": (_F["VM_WIPEONFORK"], 0),
    "keeponfork": (0, _F["VM_WIPEONFORK"]),
    "dontdump": (_F["VM_DONTDUMP"], 0),
    "dodump": (0, _F["VM_DONTDUMP"]),
    "hugepage": (VM_HUGEPAGE, VM_NOHUGEPAGE),
    "nohugepage": (VM_NOHUGEPAGE, VM_HUGEPAGE),
}

#: prctl options mmemu models, with the kernel's numbers (include/uapi/linux/prctl.h)
_DEFRAG = _core.DEFRAG_MODES
_PRCTL = {"PR_SET_THP_DISABLE": 41, "PR_GET_THP_DISABLE": 42}
PR_THP_DISABLE_EXCEPT_ADVISED = 1 << 1


def _version(kernel):
    major, minor = kernel.split(".")[:2]
    return int(major), int(minor)


#: advice that changes nothing for anonymous memory (beyond ENOMEM for holes)
_NOOP_ADVICE = {"willneed"}
#: advice mmemu models
_MODELLED_ADVICE = _NOOP_ADVICE | set(_FLAG_ADVICE) | {
    "dontneed", "dontneed_locked", "free", "cold", "pageout", "populate_read", "populate_write", "collapse",
    "remove"}
#: advice that private anonymous memory only takes (EINVAL on a shared mapping)
_PRIVATE_ONLY = {"free", "wipeonfork", "keeponfork"}
#: advice mmemu does not model on shared memory yet
_NOT_ON_SHARED = {"pageout"}


def _page_align(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


U32_MAX = (1 << 32) - 1


def _uint(value, name):
    """An unsigned 64-bit argument, as the syscall ABI takes it."""
    # (numpy counts a timedelta64 as an integer: a duration is no address or length)
    if isinstance(value, (bool, np.timedelta64)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{name} must be between 0 and 2**64-1, not {value}")
    return value


#: the PROT_* bits mprotect accepts (arch_validate_prot: READ, WRITE, EXEC, SEM)
PROT_VALID = 0xF


def _prot_bits(prot):
    """PROT_* bits of a protection given as letters ('rw', 'r-x', '', 'none') or an int; an
    int's unknown bits are kept for the caller to judge as its syscall does."""
    if isinstance(prot, str):
        if prot.lower() in ("", "none", "---"):
            return 0
        bits = 0
        for ch in prot.lower():
            bit = {"r": VM_READ, "w": VM_WRITE, "x": VM_EXEC, "-": 0}.get(ch)
            if bit is None or bits & bit:
                raise ValueError(f"prot must be letters from 'rwx', each once (or 'none'), not {prot!r}")
            bits |= bit
        return bits
    if isinstance(prot, bool) or not isinstance(prot, numbers.Integral):
        raise TypeError(f"prot must be a str like 'rw' or an int of PROT_* bits, not {type(prot).__name__}")
    prot = int(prot)
    if not 0 <= prot <= 0xFFFFFFFF:
        raise ValueError(f"prot must be a 32-bit PROT_* mask, not {prot}")
    return prot       # PROT_READ/WRITE/EXEC have the VM_* values


_U64 = np.dtype(np.uint64)
_U8 = np.dtype(np.uint8)


def _trace_addrs(addrs):
    """addrs as a contiguous native uint64 vector (no copy when it already is one)."""
    if type(addrs) is np.ndarray and addrs.dtype == _U64 and addrs.ndim == 1 and addrs.flags.c_contiguous:
        return addrs
    a = np.asarray(addrs)
    if a.ndim != 1:
        raise ValueError(f"addrs must be one-dimensional, not of shape {a.shape}")
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise TypeError(f"addrs must be integers, not {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError("addrs must not be negative")
    return np.ascontiguousarray(a, dtype=np.uint64)


def _trace_ops(ops, shape):
    """(ops vector or None, the op for all): the ops of a trace, checked."""
    if isinstance(ops, (int, np.integer)) and not isinstance(ops, (bool, np.bool_)):
        if ops not in (READ, WRITE, ATOMIC):
            raise ValueError(f"ops must be READ (0), WRITE (1) or ATOMIC (2), not {int(ops)}")
        return None, int(ops)
    if np.ndim(ops) == 0:
        raise TypeError(f"ops must be READ, WRITE, ATOMIC or an array of them, not {ops!r}")
    o = np.asarray(ops)
    if o.shape != shape:
        raise ValueError(f"ops must have the shape of addrs {shape}, not {o.shape}")
    if o.dtype.kind not in "iu":
        raise TypeError(f"ops must be integers, not {o.dtype}")
    if o.dtype != _U8 and o.size and (o.min() < 0 or o.max() > ATOMIC):   # before the cast wraps
        raise ValueError("ops must be READ (0), WRITE (1) or ATOMIC (2)")
    return np.ascontiguousarray(o, dtype=np.uint8), READ      # the core checks uint8 values


def _serialized(method):
    """Run the method under the MM's lock: calls on one MM from several threads take turns
    (as numpy.random's generators do), since the core releases the GIL while it works. MMs
    forked from one another share one machine, and so one lock."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class MM:
    """One emulated process: map memory, touch it, advise it, read back what Linux shows.

    ``MM(Config(...))`` starts a process on a new emulated machine.  Addresses are plain ints;
    lengths are rounded up to 4 KiB as the kernel does.  See the package documentation for the
    full contract.
    """

    def __init__(self, config: Optional[Config] = None, memory_max: Optional[int] = None):
        if config is None:
            config = Config()
        if not isinstance(config, Config):
            raise TypeError(f"config must be a mmemu.Config, not {type(config).__name__}")
        self._config = config
        self._machine = _core.Machine(config.memory)
        self._core = self._new_core()
        self._closed = False
        self._lock = threading.Lock()
        self._machine.shmem_enabled = _core.SHMEM_ENABLED_MODES[config.shmem_enabled]
        self._machine.folio_split_nonuniform = _version(config.kernel) >= (6, 15)
        if memory_max is not None:
            self.memory_max = memory_max

    def _new_core(self):
        config = self._config
        always, madvise = config.pmd_thp_modes()
        mthp_always, mthp_madvise = config.mthp_modes()
        return _core.MMCore(
            self._machine, thp_always=always, thp_madvise=madvise,
            use_zero_page=config.use_zero_page, zero_page=config.zero_page,
            huge_zero_write_thp=config.huge_zero_write == "thp", pt_reclaim=config.pt_reclaim,
            arm64=config.arch == "arm64", atomic_write_fault=config.atomic_write_fault,
            reuse_large_folios=config.reuse_large_folios, mthp_always=mthp_always,
            mthp_madvise=mthp_madvise, defrag=_DEFRAG[config.defrag])

    # ---- life ------------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    @property
    def closed(self) -> bool:
        return self._closed

    @_serialized
    def close(self) -> None:
        """The process exits: every mapping goes, and its huge-zeropage reference."""
        if self._closed:
            return
        start, end, _, _ = self._core.vmas()
        for s, e in zip(start.tolist(), end.tolist()):
            self._check(self._core.zap(s, e, False), "exit")
        self._core.vma_delete(0, self._core.nr_vmas)
        self._core.free_pgtables(0, USER_TOP, 0, USER_TOP)
        self._core.drop_huge_zero()
        self._core.set_closed()
        self._machine.unregister_mm(self._core)
        self._closed = True
        _release_files(self._machine)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @_serialized
    def fork(self) -> "MM":
        """fork(): a child process on the same machine, sharing every anonymous page
        copy-on-write (kernel/fork.c: dup_mmap; R74-R76). Both are independent MMs from then
        on; close the child when its process exits."""
        self._ensure_open()
        child = MM.__new__(MM)
        child._config = self._config
        child._machine = self._machine
        child._core = child._new_core()
        child._closed = False
        child._lock = self._lock      # one machine: its frames and counters are shared
        ret = self._core.fork_into(child._core)
        if ret:
            child.close()
            self._check(ret, "fork")
        return child

    def _ensure_open(self):
        if self._closed:
            raise ClosedError("this MM is closed (its process exited)")

    def _check(self, ret, what, address=0, index=None):
        """Turn a core result code into the exception the kernel's outcome calls for."""
        if not ret:
            return
        if ret & _core.FAULT_SIGSEGV:
            raise SegmentationFault(address, index)
        if ret & _core.FAULT_SIGBUS:
            raise BusError(address, index)
        if ret & _core.FAULT_OOM:
            raise OutOfMemory(address, index)
        if ret & _core.FAULT_HOSTMEM:
            raise MemoryError(f"{what}: the host cannot grow the page-table pool")
        raise RuntimeError(f"{what}: unexpected core result {ret}")

    # ---- accesses --------------------------------------------------------------------------

    @_serialized
    def read(self, addr) -> int:
        """One load at addr; returns the faults it took."""
        return self._access_one(addr, READ)

    @_serialized
    def write(self, addr) -> int:
        """One store at addr; returns the faults it took."""
        return self._access_one(addr, WRITE)

    @_serialized
    def atomic(self, addr) -> int:
        """One atomic read-modify-write at addr; returns the faults it took (arch-dependent)."""
        return self._access_one(addr, ATOMIC)

    def _access_one(self, addr, op):
        addr = _uint(addr, "addr")
        self._ensure_open()
        faults, err = self._core.access_one(addr, op)
        self._check(err, "access", addr)
        return faults

    @_serialized
    def access(self, addrs, ops=READ) -> np.ndarray:
        """Replay a trace: ``addrs`` (integers), ``ops`` (READ/WRITE/ATOMIC per access, or one
        for all).  Returns the faults each access took, as uint8.

        On SIGSEGV raises SegmentationFault with ``index``; the accesses before it took effect,
        none after it; the exception's ``faults`` holds the array up to that point.
        """
        self._ensure_open()
        a = _trace_addrs(addrs)
        o, op0 = _trace_ops(ops, a.shape)
        out = np.zeros(a.shape[0], np.uint8)
        stopped, err = self._core.access(a, o, op0, out)
        if err:
            try:
                self._check(err, "access", int(a[stopped]), stopped)
            except (SegmentationFault, OutOfMemory) as exc:
                exc.faults = out[:stopped + 1]
                raise
        return out

    # ---- mmap and munmap (mm/mmap.c, mm/vma.c) ------------------------------------------------

    @_serialized
    def mmap(self, length, prot="rw", addr=None, fixed=False, shared=False, fd=None, offset=0) -> int:
        """A mapping of ``length`` bytes; returns its address.

        MAP_PRIVATE|MAP_ANONYMOUS by default; ``shared=True`` is MAP_SHARED|MAP_ANONYMOUS (a
        shmem object of its own, gone with its last mapping); ``fd=`` a :class:`Memfd` (from
        :meth:`memfd_create`) maps that file MAP_SHARED from byte ``offset``.  ``addr`` is a
        hint, or with ``fixed=True`` the address (MAP_FIXED: whatever was mapped there is
        unmapped first).
        """
        length = _uint(length, "length")
        bits = _prot_bits(prot) & VM_ACCESS       # do_mmap ignores PROT bits it does not know
        if addr is not None:
            addr = _uint(addr, "addr")
        if not isinstance(fixed, bool):
            raise TypeError("fixed must be True or False")
        if not isinstance(shared, bool):
            raise TypeError("shared must be True or False")
        offset = _uint(offset, "offset")
        if fd is not None:
            if not isinstance(fd, Memfd):
                raise TypeError(f"fd must be a mmemu Memfd, not {type(fd).__name__}")
            if fd._machine is not self._machine:
                raise ValueError("fd belongs to another emulated machine")
            if fd.closed:
                raise SyscallError(errno.EBADF, "mmap", "the memfd is closed")
        elif offset:
            raise ValueError("offset needs fd (an anonymous mapping has none)")
        if offset % PAGE_SIZE:
            raise SyscallError(errno.EINVAL, "mmap", "offset not page aligned")
        self._ensure_open()
        if length == 0:
            raise SyscallError(errno.EINVAL, "mmap", "length 0")
        size = _page_align(length)
        if size > TASK_SIZE:
            raise SyscallError(errno.ENOMEM, "mmap", "length beyond the address space")
        if self._core.nr_vmas > self._config.max_map_count:
            raise SyscallError(errno.ENOMEM, "mmap", "max_map_count")
        if fixed:
            if addr is None:
                raise ValueError("fixed=True needs addr")
            if addr > TASK_SIZE - size:           # __get_unmapped_area's order of checks
                raise SyscallError(errno.ENOMEM, "mmap", "beyond TASK_SIZE")
            if addr % PAGE_SIZE:
                raise SyscallError(errno.EINVAL, "mmap", "MAP_FIXED address not page aligned")
            if addr < MMAP_MIN_ADDR:
                raise SyscallError(errno.EPERM, "mmap", "below mmap_min_addr")
            self._unmap(addr, addr + size, "mmap")
            start = addr
        else:
            start = self._get_unmapped_area(addr or 0, size, shmem=shared or fd is not None, pgoff=offset // PAGE_SIZE)
        if fd is not None or shared:
            return self._mmap_shared(start, size, bits, fd, offset // PAGE_SIZE)
        flags = bits | VM_MAY | (VM_ACCOUNT if bits & VM_WRITE else 0)
        i = self._core.vma_insert(start, start + size, flags)
        self._merge_around(i, i)
        self._core.khugepaged_enter_at(start)    # a merge into a VMA with an anon_vma can register
        return start

    def _mmap_shared(self, start, size, bits, fd, pgoff):
        """shmem_zero_setup (a new object the size of the mapping) or a memfd's mmap."""
        if fd is None:
            fid = self._machine.new_file(True, size // PAGE_SIZE)     # MemoryError: no file left
        else:
            fid = fd._fid
        flags = bits | VM_MAY | VM_SHARED
        i = self._core.vma_insert(start, start + size, flags, 0, pgoff, fid)
        self._merge_around(i, i)
        return start

    def _gaps_topdown(self, high):
        """Free gaps [lo, hi) below ``high``, highest first."""
        starts, ends, _, _ = self._core.vmas()
        hi = high
        for s, e in zip(reversed(starts.tolist()), reversed(ends.tolist())):
            if s >= hi:
                continue
            if e < hi:
                yield max(e, MMAP_MIN_ADDR), hi
            hi = min(hi, s)
        if hi > MMAP_MIN_ADDR:
            yield MMAP_MIN_ADDR, hi

    def _search_topdown(self, size):
        for lo, hi in self._gaps_topdown(MMAP_BASE):
            if hi - lo >= size:
                return hi - size
        # A failed top-down search falls back to bottom-up from TASK_UNMAPPED_BASE.
        starts, ends, _, _ = self._core.vmas()
        lo = TASK_UNMAPPED_BASE
        for s, e in zip(starts.tolist(), ends.tolist()):
            if e <= lo:
                continue
            if s - lo >= size:
                return lo
            lo = max(lo, e)
        if TASK_SIZE - lo >= size:
            return lo
        return None

    def _is_free(self, start, end):
        i = self._core.vma_first_after(start)
        return i == self._core.nr_vmas or int(self._core.vmas()[0][i]) >= end

    def _thp_aligned_placement(self, size):
        mode = self._config.mmap_thp_align
        return (mode == "pmd_multiple" and size % PMD_SIZE == 0) or (mode == "any" and size >= PMD_SIZE)

    def _get_unmapped_area(self, hint, size, shmem=False, pgoff=0):
        hint &= ~(PAGE_SIZE - 1)                                 # round_hint_to_min: a hint in
        if hint:                                                 # the first page is no hint
            hint = max(hint, MMAP_MIN_ADDR)
            if hint <= TASK_SIZE - size and self._is_free(hint, hint + size):
                return hint
        if shmem:
            return self._shmem_unmapped_area(size, pgoff)
        if not hint and self._thp_aligned_placement(size):
            ret = self._search_topdown(size + PMD_SIZE)          # __thp_get_unmapped_area
            if ret is not None:
                off_sub = -ret & (PMD_SIZE - 1)          # pgoff 0: anonymous memory
                return ret + PMD_SIZE if off_sub == 0 else ret + off_sub
        ret = self._search_topdown(size)
        if ret is None:
            raise SyscallError(errno.ENOMEM, "mmap", "no free address range")
        return ret

    def _shmem_unmapped_area(self, size, pgoff):
        """shmem_get_unmapped_area: with shmem THPs possible, an address whose offset in 2 MiB
        matches the file offset's, so that the pages can be mapped by PMDs."""
        ret = self._search_topdown(size)
        if ret is None:
            raise SyscallError(errno.ENOMEM, "mmap", "no free address range")
        offset = (pgoff * PAGE_SIZE) & (PMD_SIZE - 1)
        if (self._config.shmem_enabled == "never" or size < PMD_SIZE
                or (offset and offset + size < 2 * PMD_SIZE) or ret & (PMD_SIZE - 1) == offset):
            return ret
        inflated = self._search_topdown(size + PMD_SIZE - PAGE_SIZE)
        if inflated is None:
            return ret
        addr = inflated - (inflated & (PMD_SIZE - 1)) + offset
        return addr + PMD_SIZE if (inflated & (PMD_SIZE - 1)) > offset else addr

    @_serialized
    def munmap(self, addr, length) -> None:
        """Unmap [addr, addr+length)."""
        addr = _uint(addr, "addr")
        length = _uint(length, "length")
        self._ensure_open()
        size = _page_align(length)
        if addr % PAGE_SIZE or length == 0 or size > TASK_SIZE or addr > TASK_SIZE - size:
            raise SyscallError(errno.EINVAL, "munmap")
        self._unmap(addr, addr + size, "munmap")

    def _unmap(self, start, end, syscall):
        core = self._core
        first = core.vma_first_after(start)
        if first == core.nr_vmas or int(core.vmas()[0][first]) >= end:
            return
        i = core.vma_index(start)
        if i >= 0 and core.vma_index(end) == i and int(core.vmas()[0][i]) < start:
            if core.nr_vmas >= self._config.max_map_count:
                raise SyscallError(errno.ENOMEM, syscall, "max_map_count")
        core.vma_split(start)
        core.vma_split(end)
        starts, ends, _, _ = core.vmas()
        first = core.vma_first_after(start)
        last = core.vma_first_after(end)
        floor = int(ends[first - 1]) if first > 0 else 0
        ceiling = int(starts[last]) if last < core.nr_vmas else USER_TOP
        for s, e in zip(starts[first:last].tolist(), ends[first:last].tolist()):
            self._check(core.zap(s, e, False), syscall)
        files = core.vma_files()[first:last]
        core.vma_delete(first, last)
        core.free_pgtables(start, end, floor, ceiling)
        if files.any():
            _release_files(self._machine)

    # ---- VMA flag changes (mm/vma.c: vma_modify_flags) -----------------------------------------

    def _vma_pieces(self, start, end):
        """(piece_start, piece_end, flags, anon_vma) for each VMA part inside [start, end), and
        whether the range has a hole."""
        starts, ends, flags, anon = self._core.vmas()
        pieces, hole, cursor = [], False, start
        for i in range(self._core.vma_first_after(start), self._core.nr_vmas):
            s, e = int(starts[i]), int(ends[i])
            if s >= end:
                break
            if s > cursor:
                hole = True
            pieces.append((max(s, start), min(e, end), int(flags[i]), int(anon[i])))
            cursor = e
        if cursor < end:
            hole = True
        return pieces, hole

    def _modify_flags(self, start, end, new_flags, syscall, split_errno):
        """Give [start, end) (inside one VMA) new flags: split at the ends, change, merge."""
        core = self._core
        i = core.vma_index(start)
        starts, ends, _, _ = core.vmas()
        if int(starts[i]) < start:
            if core.nr_vmas >= self._config.max_map_count:
                raise SyscallError(split_errno, syscall, "max_map_count")
            core.vma_split(start)
            i = core.vma_index(start)
            ends = core.vmas()[1]
        if end < int(ends[i]):
            if core.nr_vmas >= self._config.max_map_count:
                raise SyscallError(split_errno, syscall, "max_map_count")
            core.vma_split(end)
        core.vma_set_flags(i, new_flags)
        self._merge_around(i, i)

    def _merge_around(self, first, last):
        """Merge VMAs first..last with their neighbours where compatible (vma_merge)."""
        core = self._core
        i = max(first - 1, 0)
        stop = last + 1
        while i < stop and i < core.nr_vmas - 1:
            if core.vma_try_merge(i):
                stop -= 1
            else:
                i += 1

    @_serialized
    def mprotect(self, addr, length, prot) -> None:
        """Change the protection of [addr, addr+length) (mm/mprotect.c)."""
        addr = _uint(addr, "addr")
        length = _uint(length, "length")
        bits = _prot_bits(prot)
        self._ensure_open()
        if addr % PAGE_SIZE:
            raise SyscallError(errno.EINVAL, "mprotect", "address not page aligned")
        if length == 0:
            return
        size = _page_align(length)
        end = addr + size
        if size == 0 or end > U64_MAX:
            raise SyscallError(errno.ENOMEM, "mprotect")
        if bits & ~PROT_VALID:                       # arch_validate_prot, after the length checks
            raise SyscallError(errno.EINVAL, "mprotect", f"unknown PROT bits {bits:#x}")
        bits &= VM_ACCESS                            # PROT_SEM changes nothing here
        pieces, hole = self._vma_pieces(addr, end)
        if not pieces or pieces[0][0] != addr:
            raise SyscallError(errno.ENOMEM, "mprotect", "range not mapped")
        changes = []
        cursor = addr
        for s, e, flags, anon in pieces:
            if s != cursor:
                break                        # the kernel stops at the first hole
            new = (flags & ~VM_ACCESS) | bits
            if bits & VM_WRITE:
                if not flags & (VM_ACCOUNT | VM_WRITE | VM_SHARED):   # private writable only
                    new |= VM_ACCOUNT
            elif flags & VM_ACCOUNT and not anon:
                new &= ~VM_ACCOUNT           # a private anon VMA never written: unaccount
            if new != flags:
                changes.append((s, e, new))
            cursor = e
        for s, e, new in changes:
            self._modify_flags(s, e, new, "mprotect", errno.ENOMEM)
            self._core.change_protection(s, e, new)
        if hole:
            raise SyscallError(errno.ENOMEM, "mprotect", "range not fully mapped")

    # ---- madvise (mm/madvise.c) -------------------------------------------------------------

    @_serialized
    def madvise(self, addr, length, advice) -> None:
        """Advise [addr, addr+length): advice as the kernel names it without MADV_
        (hugepage, nohugepage, dontneed, populate_read, populate_write, ...)."""
        addr = _uint(addr, "addr")
        length = _uint(length, "length")
        if not isinstance(advice, str):
            raise TypeError(f"advice must be a str such as 'dontneed', not {type(advice).__name__}")
        name = advice.lower().removeprefix("madv_")
        if name not in ADVICE:
            raise ValueError(f"advice must be one of {', '.join(ADVICE)}, not {advice!r}")
        self._ensure_open()
        if addr % PAGE_SIZE:
            raise SyscallError(errno.EINVAL, "madvise", "address not page aligned")
        size = _page_align(length)
        if length and not size or addr + size > U64_MAX:
            raise SyscallError(errno.EINVAL, "madvise")
        end = addr + size
        if end == addr:
            return
        if name not in _MODELLED_ADVICE:
            raise NotImplementedError(f"MADV_{name.upper()} is not modelled")
        if name.startswith("populate"):
            return self._populate(addr, end, name == "populate_write")
        pieces, hole = self._vma_pieces(addr, end)
        zero_remap = self._config.remap_zero_subpages
        if any(flags & VM_SHARED for _, _, flags, _ in pieces):
            if name in _PRIVATE_ONLY:
                raise SyscallError(errno.EINVAL, "madvise", f"MADV_{name.upper()} on a shared mapping")
            if name in _NOT_ON_SHARED:
                raise NotImplementedError(f"MADV_{name.upper()} of shared memory is not modelled")
        if name == "remove":
            return self._madvise_remove(pieces, hole)
        if name in _NOT_ON_LOCKED:
            for i, (_, _, flags, _) in enumerate(pieces):
                if flags & VM_LOCKED:                # the VMAs before it are advised
                    pieces, hole = pieces[:i], False
                    locked = True
                    break
            else:
                locked = False
        if name in ("dontneed", "dontneed_locked"):     # R57, R59
            for s, e, _, _ in pieces:
                self._check(self._core.zap(s, e, True), "madvise")
        elif name == "free":
            for s, e, _, _ in pieces:
                self._core.madvise_free(s, e, zero_remap)
        elif name in ("cold", "pageout"):
            for s, e, flags, _ in pieces:
                if flags & VM_SHARED:
                    self._core.madvise_cold_file(s, e)
                else:
                    self._core.madvise_cold(s, e, name == "pageout", zero_remap)
        elif name == "collapse":
            self._collapse(addr, end, pieces, hole)
        elif name in _FLAG_ADVICE:
            if name == "hugepage":                 # hugepage_madvise: khugepaged_enter_vma
                for s, _, flags, _ in pieces:
                    self._core.khugepaged_enter_flags(s, (flags & ~VM_NOHUGEPAGE) | VM_HUGEPAGE)
            self._flag_madvise(pieces, *_FLAG_ADVICE[name])
        if name in _NOT_ON_LOCKED and locked:
            raise SyscallError(errno.EINVAL, "madvise", f"MADV_{name.upper()} on an mlocked mapping")
        if hole:
            raise SyscallError(errno.ENOMEM, "madvise", "range not fully mapped")

    def _madvise_remove(self, pieces, hole):
        """MADV_REMOVE (madvise_remove -> fallocate PUNCH_HOLE of the shmem file), VMA by VMA:
        the pages go from the file and from every mapping of them, in every process, until a
        VMA refuses (mlocked or private: EINVAL; not VM_MAYWRITE: EACCES; vma_is_shared_maywrite
        asks for the right to write, so an mprotect to read-only does not refuse it)."""
        for s, e, flags, _ in pieces:
            if flags & VM_LOCKED:
                raise SyscallError(errno.EINVAL, "madvise", "MADV_REMOVE on an mlocked mapping")
            if not flags & VM_SHARED:
                raise SyscallError(errno.EINVAL, "madvise", "MADV_REMOVE needs a shared mapping")
            if not flags & VM_MAYWRITE:
                raise SyscallError(errno.EACCES, "madvise", "MADV_REMOVE needs a mapping that may write")
            i = self._core.vma_index(s)
            fid = int(self._core.vma_files()[i])
            first = int(self._core.vma_pgoffs()[i]) + (s - int(self._core.vmas()[0][i])) // PAGE_SIZE
            _punch_hole(self._machine, fid, first, first + (e - s) // PAGE_SIZE)
        if hole:
            raise SyscallError(errno.ENOMEM, "madvise", "range not fully mapped")

    def _collapse(self, addr, end, pieces, hole):
        """MADV_COLLAPSE, VMA by VMA; the first VMA that fails ends the call (R64)."""
        for s, e, flags, _ in pieces:
            if flags & VM_SHARED:
                ret = self._collapse_file(s, e)
            else:
                ret = self._core.madvise_collapse(s, e)
            if ret:
                raise SyscallError(getattr(errno, ret), "madvise", "MADV_COLLAPSE")

    def _collapse_file(self, start, end):
        """MADV_COLLAPSE of a shared mapping, 2 MiB by 2 MiB; the first failure ends it."""
        if self._core.file_collapse_refused(start, end):
            return "EINVAL"
        vma = self._core.vma_index(start)
        addr = (start + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
        while addr + PMD_SIZE <= end:
            ret = self._core.collapse_file(vma, addr)
            if ret:
                return ret
            addr += PMD_SIZE
        return 0

    def _flag_madvise(self, pieces, set_bits, clear_bits):
        """madvise_update_vma: new flags on each piece, splitting and merging VMAs."""
        changes = []
        for s, e, flags, _ in pieces:
            new = (flags & ~clear_bits) | set_bits
            if new != flags:
                changes.append((s, e, new))
        for s, e, new in changes:
            self._modify_flags(s, e, new, "madvise", errno.EAGAIN)

    def _populate(self, start, end, write):
        err, where = self._core.populate(min(start, USER_TOP), min(end, USER_TOP), write)
        if not err and end > USER_TOP:
            err, where = _core.POPULATE_HOLE, max(start, USER_TOP)
        if err == _core.POPULATE_HOLE:
            raise SyscallError(errno.ENOMEM, "madvise", f"no mapping at {where:#x}")
        if err == _core.POPULATE_BADVMA:
            raise SyscallError(errno.EINVAL, "madvise", f"mapping at {where:#x} does not permit it")
        if err & _core.FAULT_OOM:
            raise SyscallError(errno.ENOMEM, "madvise", "out of memory")
        if err & (_core.FAULT_SIGBUS | _core.FAULT_SIGSEGV):
            raise SyscallError(errno.EFAULT, "madvise", f"SIGBUS at {where:#x}")
        self._check(err, "madvise", where)

    # ---- mlock (mm/mlock.c) ------------------------------------------------------------------

    @_serialized
    def mlock(self, addr, length) -> None:
        """mlock(2): lock [addr, addr+length) (VM_LOCKED, splitting and merging VMAs) and fault
        it in, as written for writable mappings and as read otherwise (R79). Nothing is ever
        reclaimed here, so the lock shows in smaps (`Locked`, VmFlags `lo`) and in which madvise
        calls the mapping refuses."""
        start, end = self._mlock_range(addr, length)
        if start == end:
            return
        self._set_locked(start, end, True, "mlock")
        for s, e, flags, _ in self._vma_pieces(start, end)[0]:
            if not flags & VM_ACCESS:           # populate finds no permission: EFAULT -> ENOMEM
                raise SyscallError(errno.ENOMEM, "mlock", f"mapping at {s:#x} is PROT_NONE")
            err, where = self._core.populate(s, e, _populate_writes(flags), True)
            if err & _core.FAULT_OOM:            # __mlock_posix_error_return: ENOMEM -> EAGAIN
                raise SyscallError(errno.EAGAIN, "mlock", "out of memory")
            if err & (_core.FAULT_SIGBUS | _core.FAULT_SIGSEGV):     # GUP's EFAULT -> ENOMEM
                raise SyscallError(errno.ENOMEM, "mlock", f"SIGBUS at {where:#x} while populating")
            self._check(err, "mlock", where)

    @_serialized
    def munlock(self, addr, length) -> None:
        """munlock(2): clear VM_LOCKED on [addr, addr+length); the pages stay."""
        start, end = self._mlock_range(addr, length)
        if start != end:
            self._set_locked(start, end, False, "munlock")

    def _mlock_range(self, addr, length):
        addr = _uint(addr, "addr")
        length = _uint(length, "length")
        self._ensure_open()
        start = addr & ~(PAGE_SIZE - 1)
        end = start + _page_align(length + (addr - start))
        if end > U64_MAX:
            raise SyscallError(errno.EINVAL, "mlock")
        return start, end

    def _set_locked(self, start, end, lock, syscall):
        """apply_vma_lock_flags: the VMAs up to the first hole; a hole is ENOMEM."""
        pieces, hole = self._vma_pieces(start, end)
        if not pieces or pieces[0][0] != start:
            raise SyscallError(errno.ENOMEM, syscall, "range not mapped")
        cursor = start
        for s, e, flags, _ in pieces:
            if s != cursor:
                break
            new = (flags | VM_LOCKED) if lock else (flags & ~VM_LOCKED)
            if new != flags:
                self._modify_flags(s, e, new, syscall, errno.ENOMEM)
            cursor = e
        if hole:
            raise SyscallError(errno.ENOMEM, syscall, "range not fully mapped")

    # ---- mremap (mm/mremap.c) ------------------------------------------------------------------

    @_serialized
    def mremap(self, addr, old_size, new_size, maymove=False, new_addr=None) -> int:
        """Resize (and with ``maymove``, MREMAP_MAYMOVE, possibly move) the mapping at
        [addr, addr+old_size); ``new_addr`` (with maymove) is MREMAP_FIXED. Returns the address
        of the mapping afterwards (R67)."""
        addr = _uint(addr, "addr")
        old_size = _uint(old_size, "old_size")
        new_size = _uint(new_size, "new_size")
        if not isinstance(maymove, bool):
            raise TypeError("maymove must be True or False")
        if new_addr is not None:
            new_addr = _uint(new_addr, "new_addr")
        self._ensure_open()
        core = self._core
        if addr % PAGE_SIZE or (new_addr is not None and not maymove):
            raise SyscallError(errno.EINVAL, "mremap")
        old_len, new_len = _page_align(old_size), _page_align(new_size)
        if not new_len or new_len > TASK_SIZE or old_len > TASK_SIZE:
            raise SyscallError(errno.EINVAL, "mremap")
        if new_addr is not None:
            if new_addr % PAGE_SIZE or new_addr > TASK_SIZE - new_len:
                raise SyscallError(errno.EINVAL, "mremap")
            if new_addr < addr + old_len and addr < new_addr + new_len:
                raise SyscallError(errno.EINVAL, "mremap", "new range overlaps the old")
            if new_addr < MMAP_MIN_ADDR:
                raise SyscallError(errno.EPERM, "mremap", "below mmap_min_addr")
        i = core.vma_index(addr)
        if i < 0:
            raise SyscallError(errno.EFAULT, "mremap", f"no mapping at {addr:#x}")
        starts, ends, _, _ = core.vmas()
        if old_len == 0:
            if not int(core.vmas()[2][i]) & VM_SHARED or not maymove:
                raise SyscallError(errno.EINVAL, "mremap", "old_size 0 needs a shared mapping and MREMAP_MAYMOVE")
            return self._mremap_dup(i, addr, new_len, new_addr)
        if addr + old_len > int(ends[i]):
            raise SyscallError(errno.EFAULT, "mremap", "the old range spans more than one mapping")
        if new_addr is not None:
            return self._mremap_to(addr, old_len, new_addr, new_len)
        if new_len <= old_len:
            if new_len < old_len:
                self._unmap(addr + new_len, addr + old_len, "mremap")
            return addr
        end = int(ends[i])
        nxt = i + 1
        if addr + old_len == end and (nxt == core.nr_vmas or int(starts[nxt]) >= addr + new_len) \
                and addr + new_len <= TASK_SIZE:
            core.vma_set_end(i, addr + new_len)            # vma_expand in place
            self._merge_around(i, i)
            core.khugepaged_enter_at(addr)
            self._populate_locked(addr + old_len, addr + new_len)
            return addr
        if not maymove:
            raise SyscallError(errno.ENOMEM, "mremap", "cannot grow in place")
        dest = self._get_unmapped_area(0, new_len)   # pgoff 0 for anonymous memory
        self._move_vma(addr, old_len, dest, new_len)
        self._populate_locked(dest + old_len, dest + new_len)
        return dest

    def _mremap_to(self, addr, old_len, new_addr, new_len):
        """MREMAP_FIXED: unmap the target, shrink the source if asked, move."""
        self._unmap(new_addr, new_addr + new_len, "mremap")
        if old_len > new_len:
            self._unmap(addr + new_len, addr + old_len, "mremap")
            old_len = new_len
        self._move_vma(addr, old_len, new_addr, new_len)
        self._populate_locked(new_addr + old_len, new_addr + new_len)
        return new_addr

    def _mremap_dup(self, i, addr, new_len, new_addr):
        """mremap(old_size=0) of a shared mapping: a second mapping of the same file pages."""
        core = self._core
        flags = int(core.vmas()[2][i])
        fid = int(core.vma_files()[i])
        pgoff = int(core.vma_pgoffs()[i]) + (addr - int(core.vmas()[0][i])) // PAGE_SIZE
        if new_addr is None:
            new_addr = self._get_unmapped_area(0, new_len, shmem=True, pgoff=pgoff)
        else:
            self._unmap(new_addr, new_addr + new_len, "mremap")
        j = core.vma_insert(new_addr, new_addr + new_len, flags & ~VM_LOCKED, 0, pgoff, fid)
        self._merge_around(j, j)
        return new_addr

    def _populate_locked(self, start, end):
        """mremap grew an mlocked mapping: mm_populate the new part, errors ignored."""
        i = self._core.vma_index(start) if start < end else -1
        if i >= 0:
            flags = int(self._core.vmas()[2][i])
            if flags & VM_LOCKED and flags & VM_ACCESS:
                self._core.populate(start, end, _populate_writes(flags), True)

    def _move_vma(self, addr, old_len, new_addr, new_len):
        """move_vma: a VMA at new_addr with the old one's flags, anon_vma and page offset; the
        entries move; the old range is unmapped; the rest of a grown VMA is empty."""
        core = self._core
        if core.nr_vmas >= self._config.max_map_count - 3:
            raise SyscallError(errno.ENOMEM, "mremap", "max_map_count")
        core.vma_split(addr)
        core.vma_split(addr + old_len)
        i = core.vma_index(addr)
        _, _, flags, anon = core.vmas()
        # copy_vma: a VMA never faulted takes its new address as page offset; a file
        # mapping keeps its file offset
        fid = int(core.vma_files()[i])
        pgoff = int(core.vma_pgoffs()[i]) if anon[i] or fid else new_addr // PAGE_SIZE
        core.vma_insert(new_addr, new_addr + new_len, int(flags[i]), int(anon[i]), pgoff, fid)
        ret = core.move_page_tables(addr, new_addr, old_len)
        self._check(ret, "mremap")
        self._unmap(addr, addr + old_len, "mremap")
        self._merge_around(core.vma_index(new_addr), core.vma_index(new_addr))
        core.khugepaged_enter_at(new_addr)
        return new_addr

    # ---- khugepaged and the shrinkers ------------------------------------------------------------

    @_serialized
    def khugepaged_scan(self, pages=None, full_scans=None) -> None:
        """Run khugepaged now, for the whole machine (R68-R73): ``pages`` PTE slots (one
        wake-up scans ``Config.khugepaged_pages_to_scan``), or until ``full_scans`` more full
        passes over the registered processes have completed. Deterministic; never runs by
        itself."""
        if pages is not None and full_scans is not None:
            raise ValueError("give pages or full_scans, not both")
        # both are the kernel's unsigned ints (pages_to_scan, full_scans): a count past 2**32
        # is no request khugepaged could be given
        if full_scans is not None:
            full_scans = _uint(full_scans, "full_scans")
            if full_scans > U32_MAX:
                raise ValueError(f"full_scans must be at most 2**32-1, not {full_scans}")
        pages = self._config.khugepaged_pages_to_scan if pages is None else _uint(pages, "pages")
        if not 1 <= pages <= U32_MAX:
            raise ValueError(f"pages must be 1..2**32-1 (as khugepaged/pages_to_scan), not {pages}")
        self._ensure_open()
        _khugepaged_scan(self._machine, self._config, pages, full_scans)

    @property
    @_serialized
    def khugepaged(self) -> dict:
        """/sys/kernel/mm/transparent_hugepage/khugepaged/{pages_collapsed,full_scans}."""
        return {"pages_collapsed": self._machine.pages_collapsed, "full_scans": self._machine.full_scans}

    @_serialized
    def drop_caches(self, mode=2) -> None:
        """echo mode > /proc/sys/vm/drop_caches: 2 (and 3) run the slab shrinkers, among them
        the deferred-split shrinker (R54) and the huge-zeropage shrinker (R56); 1 drops the page
        cache, which anonymous memory does not use."""
        if isinstance(mode, bool) or mode not in (1, 2, 3):
            raise ValueError(f"mode must be 1, 2 or 3, not {mode!r}")
        self._ensure_open()
        if mode & 2:
            c = self._config
            self._machine.shrink_slab(c.shrink_underused, c.khugepaged_max_ptes_none,
                                      c.remap_zero_subpages and c.zero_page)

    # ---- prctl (kernel/sys.c) ------------------------------------------------------------------

    @_serialized
    def prctl(self, option, arg2=0, arg3=0, arg4=0, arg5=0) -> int:
        """prctl for the options that change anonymous memory: PR_SET_THP_DISABLE (arg2 1 or 0,
        arg3 0 or PR_THP_DISABLE_EXCEPT_ADVISED, 6.18+) and PR_GET_THP_DISABLE (returns 0, 1,
        or 3 for except-advised).  ``option`` is the kernel's name or number."""
        number = _PRCTL.get(option, option) if isinstance(option, str) else option
        if isinstance(number, str):
            raise ValueError(f"option must be one of {', '.join(_PRCTL)} or a number, not {option!r}")
        number = _uint(number, "option")
        args = [_uint(v, name) for v, name in ((arg2, "arg2"), (arg3, "arg3"), (arg4, "arg4"), (arg5, "arg5"))]
        self._ensure_open()
        if number == _PRCTL["PR_GET_THP_DISABLE"]:
            if any(args):
                raise SyscallError(errno.EINVAL, "prctl")
            mode = self._core.thp_disable
            return 0 if not mode else (1 if mode == _core.DISABLE_COMPLETELY else 1 | PR_THP_DISABLE_EXCEPT_ADVISED)
        if number != _PRCTL["PR_SET_THP_DISABLE"]:
            raise NotImplementedError(f"prctl option {number} is not modelled")
        disable, flags = args[0], args[1]
        except_supported = _version(self._config.kernel) >= (6, 18)
        if (args[2] or args[3] or flags & ~PR_THP_DISABLE_EXCEPT_ADVISED or (flags and not disable)
                or (flags and not except_supported)):
            raise SyscallError(errno.EINVAL, "prctl")
        if not disable:
            self._core.set_thp_disable(0)
        elif flags:
            self._core.set_thp_disable(_core.DISABLE_EXCEPT_ADVISED)
        else:
            self._core.set_thp_disable(_core.DISABLE_COMPLETELY)
        return 0

    # ---- what the kernel shows -------------------------------------------------------------

    @property
    @_serialized
    def vmstat(self) -> dict:
        """/proc/vmstat counters kept by mmemu, for the whole emulated machine."""
        return dict(zip(VMSTAT_NAMES, self._machine.vmstat_values().tolist()))

    @property
    @_serialized
    def mthp_stats(self) -> dict:
        """/sys/kernel/mm/transparent_hugepage/hugepages-<kB>kB/stats, by size in kB."""
        rows = self._machine.mthp_values()
        return {4 << order: dict(zip(MTHP_STAT_NAMES, rows[order].tolist()))
                for order in _core.STAT_ORDERS}

    @_serialized
    def memfd_create(self, name: str = "mmemu") -> "Memfd":
        """memfd_create(2): a new, empty shmem file (size 0: ``ftruncate`` it, then ``mmap``
        it with ``fd=``)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self._ensure_open()
        return Memfd(self, name)

    # ---- physical memory and the memory cgroup -----------------------------------------------

    @_serialized
    def buddyinfo(self) -> np.ndarray:
        """Free blocks of each order 0..10 of the machine's RAM, as /proc/buddyinfo shows them
        (one zone): an int64 array of 11 counts."""
        return self._machine.buddyinfo()

    @_serialized
    def fragment_memory(self, free_fraction: float = 0.5, order: int = 9, movable: bool = False) -> int:
        """Bring the machine's free memory into a fragmented state, as other tenants would: in
        every wholly free, naturally aligned block of ``2**order`` pages, hold
        ``max(1, round((1 - free_fraction) * 2**order))`` pages spread evenly, so that no free
        block of that order is left.  Held pages belong to no process and are not charged.
        ``movable=False`` pins them (slab, page tables of others): compaction cannot use their
        2 MiB pageblock; ``movable=True`` lets compaction migrate them.  Returns the pages held.
        """
        self._ensure_open()
        order = _uint(order, "order")
        if isinstance(free_fraction, bool) or not isinstance(free_fraction, (int, float)) \
                or not 0 <= free_fraction <= 1:
            raise ValueError(f"free_fraction must be a number from 0 to 1, not {free_fraction!r}")
        if order > 10:
            raise ValueError(f"order must be 0..10, not {order}")
        if not isinstance(movable, bool):
            raise TypeError(f"movable must be True or False, not {movable!r}")
        return self._machine.fragment(float(free_fraction), order, movable)

    @_serialized
    def release_fragmentation(self) -> int:
        """Free every page :meth:`fragment_memory` holds. Returns how many."""
        self._ensure_open()
        return self._machine.release_fragmentation()

    @property
    @_serialized
    def memory_current(self) -> int:
        """memory.current of the memory cgroup the process (and its fork children) is in,
        in bytes: its anonymous pages and page tables."""
        return self._machine.memory_current * PAGE_SIZE

    @property
    @_serialized
    def memory_max(self) -> Optional[int]:
        """memory.max in bytes (None: no limit). A THP or mTHP that cannot be charged falls
        back to a smaller order (``thp_fault_fallback_charge``); a 4K page that cannot be
        charged is an :class:`OutOfMemory` (no swap: nothing can be reclaimed). Setting it
        below ``memory_current`` raises ValueError and keeps the old limit."""
        pages = self._machine.memory_max
        return None if pages is None else pages * PAGE_SIZE

    @memory_max.setter
    def memory_max(self, value: Optional[int]) -> None:
        with self._lock:
            self._ensure_open()
            if value is not None:
                value = _uint(value, "memory_max")
            pages = None if value is None else value // PAGE_SIZE
            if not self._machine.set_memory_max(pages):
                raise ValueError(f"memory_max {value} is below memory_current "
                                 f"{self._machine.memory_current * PAGE_SIZE}: with nothing to reclaim "
                                 "the kernel would OOM-kill the cgroup, which mmemu does not model")

    @property
    @_serialized
    def rusage(self) -> dict:
        """This process's fault counters (getrusage ru_minflt, ru_majflt)."""
        return {"min_flt": self._core.min_flt, "maj_flt": self._core.maj_flt}

    @property
    @_serialized
    def status(self) -> dict:
        """/proc/pid/status memory fields mmemu keeps, in kB."""
        anon, shmem = self._core.rss_anon * 4, self._core.rss_shmem * 4
        return {"VmRSS": anon + shmem, "RssAnon": anon, "RssShmem": shmem,
                "VmPTE": self._core.pgtables_pages * 4}

    @property
    @_serialized
    def page_tables(self) -> dict:
        """Page-table pages of this process by kind: PTE, PMD and PUD tables, and the PTE tables
        deposited behind PMD mappings (their sum times 4 kB is VmPTE)."""
        c = self._core.counters()
        return {"pte": c["pte"], "pmd": c["pmd"], "pud": c["pud"], "deposited": c["deposited"]}

    @_serialized
    def maps(self) -> list:
        """The VMAs as (start, end, perms, vm_flags), like /proc/pid/maps."""
        starts, ends, flags, _ = self._core.vmas()
        out = []
        for s, e, f in zip(starts.tolist(), ends.tolist(), flags.tolist()):
            perms = ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") + \
                    ("x" if f & VM_EXEC else "-") + ("s" if f & VM_SHARED else "p")
            out.append((s, e, perms, f))
        return out

    def _thp_eligible(self, start, end, flags, pgoff=0):
        """smaps THPeligible: some THP order allowed, with an aligned block of it inside the VMA
        (R21); for a shared mapping, shmem_enabled's say, the prctl veto (the except-advised
        flavour too, unless MADV_HUGEPAGE) and file offsets aligned like the addresses."""
        if flags & VM_SHARED:
            mode = self._config.shmem_enabled
            if mode == "within_size":                 # covered, or on to advise's test
                fid = int(self._core.vma_files()[self._core.vma_index(start)])
                covered = (pgoff + 1 + 511) // 512 * 512 <= self._machine.files[fid].size
                mode = "always" if covered else "advise"
            veto = self._core.thp_disable       # vma_thp_disabled, as for a fault
            if veto == _core.DISABLE_COMPLETELY or (veto == _core.DISABLE_EXCEPT_ADVISED and not flags & VM_HUGEPAGE):
                return 0
            if mode == "never" or flags & VM_NOHUGEPAGE or (mode == "advise" and not flags & VM_HUGEPAGE) \
                    or ((start // PAGE_SIZE - pgoff) % 512):
                return 0
            return int(((start + PMD_SIZE - 1) & ~(PMD_SIZE - 1)) + PMD_SIZE <= end)
        orders = self._core.mthp_orders_for(flags) | (1 << 9 if self._core.thp_allowed_for(flags) else 0)
        for order in range(9, 1, -1):
            block = PAGE_SIZE << order
            if not orders >> order & 1:
                continue
            if ((start + block - 1) & ~(block - 1)) + block <= end:
                return 1
        return 0

    @_serialized
    def pmd_mapped_kb(self) -> dict:
        """smaps_rollup's two huge-mapping fields, AnonHugePages and ShmemPmdMapped (kB), read from
        the PMD level alone: cheap enough to sample after every chunk of a long run, where
        summing :meth:`smaps` would walk every PTE."""
        self._ensure_open()
        anon, shmem = self._core.pmd_mapped_pages()
        return {"AnonHugePages": anon * 4, "ShmemPmdMapped": shmem * 4}

    @_serialized
    def smaps(self, addr) -> dict:
        """/proc/pid/smaps fields of the VMA containing addr (sizes in kB)."""
        addr = _uint(addr, "addr")
        self._ensure_open()
        i = self._core.vma_index(addr)
        if i < 0:
            raise ValueError(f"no mapping contains {addr:#x}")
        starts, ends, flags, _ = self._core.vmas()
        s, e, f = int(starts[i]), int(ends[i]), int(flags[i])
        pgoff = int(self._core.vma_pgoffs()[i])
        c = self._core.smaps_counts(s, e)
        kb = 4
        return {
            "Size": (e - s) // 1024,
            "KernelPageSize": 4,
            "MMUPageSize": 4,
            "Rss": c["rss"] * kb,
            "Pss": c["pss"] >> 22,
            "Pss_Dirty": c["pss_dirty"] >> 22,
            "Shared_Clean": c["shared_clean"] * kb,
            "Shared_Dirty": c["shared_dirty"] * kb,
            "Private_Clean": c["private_clean"] * kb,
            "Private_Dirty": c["private_dirty"] * kb,
            "Referenced": c["referenced"] * kb,
            "Anonymous": c["anonymous"] * kb,
            "KSM": 0,
            "LazyFree": c["lazyfree"] * kb,
            "AnonHugePages": c["anon_huge"] * kb,
            "ShmemPmdMapped": c["shmem_pmd"] * kb,
            "FilePmdMapped": 0,
            "Shared_Hugetlb": 0,
            "Private_Hugetlb": 0,
            "Swap": 0,
            "SwapPss": 0,
            "Locked": (c["pss"] >> 22) if f & VM_LOCKED else 0,
            "THPeligible": self._thp_eligible(s, e, f, pgoff),
            "VmFlags": " ".join(letters for bit, letters in _VMFLAG_LETTERS if f & bit),
        }

    @_serialized
    def pagemap(self, addr, length):
        """What /proc/pid/pagemap, /proc/kpagecount and /proc/kpageflags show for each 4K page of
        [addr, addr+length) (R9): three arrays, ``pagemap`` (uint64: bit 63 present, 61 file or
        shared-anonymous, 56 exclusively mapped, bits 0-54 the emulated PFN), ``kpagecount``
        (int32) and ``kpageflags`` (uint64, KPF_* bits), returned in that order, as the host
        shows them right after the fault: a THP is on the LRU, a 4K page not yet (the kernel
        batches 4K pages per CPU before adding them to the LRU, so on a real run all but the
        last few show LRU); ACTIVE, REFERENCED and IDLE, which reclaim moves, are not modelled."""
        start, end = self._page_range(addr, length)
        pagemap, kflags, kcount = self._core.pageinfo(start, end)
        return pagemap, kcount, kflags

    @_serialized
    def contpte_blocks(self, addr, length) -> int:
        """How many 64 KiB blocks of [addr, addr+length) arm64 (4K pages) would map with the
        contiguous-PTE bit: 16 PTEs to 16 consecutive pages of one large folio (an mTHP of
        64 kB or more, or a PTE-mapped THP), 16-aligned, with the same permissions."""
        start, end = self._page_range(addr, length)
        return self._core.contpte_blocks(start, end)

    @_serialized
    def page_states(self, addr, length) -> np.ndarray:
        """One :class:`PageState` code per 4K page of [addr, addr+length), as uint8."""
        return self._core.page_states(*self._page_range(addr, length))

    def _page_range(self, addr, length):
        """[start, end) of a per-page view: whole pages below 2**47."""
        addr = _uint(addr, "addr")
        length = _uint(length, "length")
        if addr % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError("addr and length must be multiples of 4096")
        if addr + length > USER_TOP:
            raise ValueError("the range must lie below 2**47")
        self._ensure_open()
        return addr, addr + length

    def __repr__(self):
        state = "closed" if self._closed else f"{self._core.nr_vmas} VMAs, RssAnon {self._core.rss_anon * 4} kB"
        return f"<MM {self._config.kernel} {self._config.arch} thp={self._config.thp}: {state}>"

    # ---- pickling ------------------------------------------------------------------------------
    # An MM pickles with its whole machine: frames, counters, shmem files and every process on it
    # (the rmap and shared pages tie them together). MMs and Memfds pickled in one dump come back
    # on one machine, sharing one new lock; a lone MM brings its siblings along, unreachable
    # except through the machine.

    def __getstate__(self):
        # (not under the lock: pickle takes the machine's state later, after this returns, so
        # pickle an MM while no other thread is calling it, as with any other call sequence)
        return _pickled_state(self)

    def __setstate__(self, state):
        with _persist.guard("MM"):
            _check_pickled(state, "MM")
            if not isinstance(state["_config"], Config) or not isinstance(state["_core"], _core.MMCore) \
                    or state["_core"].machine is not state["_machine"] \
                    or state["_config"].memory != (state["_machine"].nr_blocks - 1) * PMD_SIZE:
                _persist.fail("MM", "the config, machine and process do not belong together")
            if _persist.boolean(state["_closed"], "MM._closed") != state["_core"].closed:
                _persist.fail("MM", "closed, but its process is not (or the other way round)")
        self.__dict__.update({k: v for k, v in state.items() if k != "_version"})

    def __copy__(self):
        """An MM owns its process: any copy of it is a deep one (copy.deepcopy)."""
        return copy.deepcopy(self)

    # ---- self-check ------------------------------------------------------------------------------

    @_serialized
    def check(self) -> None:
        """Verify the engine's internal invariants over the whole machine this MM runs on (every
        process forked from the same MM, every shmem file): each frame's refcount and mapcount
        against the page tables and page caches that reference it, no frame leaked or used
        twice, and the counters (RssAnon, RssShmem, VmPTE, smaps AnonHugePages and
        ShmemPmdMapped, vmstat nr_anon_pages, nr_anon_transparent_hugepages,
        nr_page_table_pages, nr_shmem, nr_shmem_hugepages, nr_shmem_pmdmapped, mTHP nr_anon,
        memory_current) against the state. Returns None when all holds; raises
        mmemu.InvariantError listing every problem otherwise. It reads only, in time linear in
        RAM frames plus page-table entries; works on a closed MM too (its machine lives on).
        For tests and debugging: a failure is an engine bug."""
        problems = self._machine.check_state()
        if problems:
            raise InvariantError(problems)

    # ---- saved state (mmemu._savefile: the pickled state, in an .npz file) ----------------------

    @_serialized
    def save(self, path) -> None:
        """Write this process's whole machine (every process, shmem file and frame on it) to
        ``path``, an ``.npz`` file readable with ``np.load(path, allow_pickle=False)``; written
        atomically (a temporary file, then a rename). ``mmemu.load(path)`` gives back an MM
        that goes on exactly as this one would. Under the lock: the state is taken whole."""
        from . import _savefile
        _savefile.save(self, path)

    @staticmethod
    def load(path) -> "MM":
        """The MM saved in ``path`` by :meth:`save`, with its machine (``mmemu.load``; see
        ``mmemu.load_machine`` for the machine's other processes and memfds). A damaged file
        or one of another state format raises :class:`mmemu.errors.StateFileError`."""
        from . import _savefile
        return _savefile.load(path)


# ---- khugepaged (mm/khugepaged.c), driven synchronously ---------------------------------------

SCAN_LEFT_ALONE, SCAN_COLLAPSED, SCAN_ALLOC_FAILED = 0, 1, 2


def _populate_writes(flags):
    """populate_vma_page_range: FOLL_WRITE for private writable mappings only (a shared
    mapping is populated by reads: no copy-on-write to break)."""
    return bool(flags & VM_WRITE) and not flags & VM_SHARED


def _pickled_state(obj):
    """An MM's or a Memfd's attributes for pickle: its lock as a token (the objects pickled
    together share one new lock) and the format version."""
    state = dict(obj.__dict__)
    state["_lock"] = _persist.lock_token(obj._lock)
    state["_version"] = _persist.FORMAT_VERSION
    return state


def _punch_hole(machine, fid, first, last):
    """shmem_fallocate(PUNCH_HOLE): unmap pages [first, last) of the file from every process
    (unmap_mapping_range), then free them from the page cache."""
    f = machine.files[fid]
    if first < f.fallocend <= last:               # shmem_undo_range pulls fallocend back
        f.fallocend = first
    last = min(last, f.capacity)
    if first >= last:
        return
    for core in list(machine.mms):
        ret = core.unmap_file_range(fid, first, last)
        if ret:
            raise MemoryError("the host cannot grow the page-table pool")
    machine.file_free_range(fid, first, last)


def _release_files(machine):
    """Free every shmem file no fd and no mapping holds any more (the last fput)."""
    live = set()
    for core in machine.mms:
        live.update(core.vma_files().tolist())
    for fid, f in list(machine.files.items()):
        if not f.fd_open and fid not in live:
            machine.file_forget(fid)


class Memfd:
    """A memfd (memfd_create(2)): a shmem file of the emulated machine, mapped with
    ``mm.mmap(length, fd=memfd, offset=...)`` by any process of that machine.  Its pages live
    while the fd is open or a mapping holds the file."""

    def __init__(self, mm: "MM", name: str):
        self._mm = mm
        self._machine = mm._machine
        self._lock = mm._lock
        self.name = name
        self._fid = self._machine.new_file(False)

    @property
    def closed(self) -> bool:
        return self._fid not in self._machine.files or not self._machine.files[self._fid].fd_open

    @property
    def size(self) -> int:
        """i_size in bytes."""
        return self._machine.files[self._fid].size * PAGE_SIZE if self._fid in self._machine.files else 0

    def _file(self, call):
        if self.closed:
            raise SyscallError(errno.EBADF, call, "the memfd is closed")
        return self._machine.files[self._fid]

    def ftruncate(self, size: int) -> None:
        """ftruncate(2): set the size; pages beyond a smaller size are unmapped and freed."""
        size = _uint(size, "size")
        with self._lock:
            f = self._file("ftruncate")
            pages = _page_align(size) // PAGE_SIZE
            if size > TASK_SIZE:
                raise SyscallError(errno.EFBIG, "ftruncate")
            if pages < f.size:                       # truncation goes to the very end
                _punch_hole(self._machine, self._fid, pages, f.capacity)
            self._machine.file_set_size(self._fid, pages)

    def fallocate(self, offset: int, length: int, punch_hole: bool = False, keep_size: bool = False) -> None:
        """fallocate(2).  ``punch_hole=True`` (FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE): the
        whole pages of [offset, offset+length) are unmapped from every process and freed (a
        large folio partly inside is split around the hole first).  Otherwise the pages are
        allocated without data (they are not "uptodate", so fault-around skips them until a
        fault touches them), and the file grows to offset+length unless ``keep_size`` (pages
        past the end are then not allocated: the kernel would allocate them beyond i_size).
        Running out of memory (the memory cgroup's limit, or RAM) frees what the call added
        and raises :class:`OutOfMemory`: the kernel's OOM killer would end the process."""
        offset = _uint(offset, "offset")
        length = _uint(length, "length")
        for name, value in (("punch_hole", punch_hole), ("keep_size", keep_size)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False")
        with self._lock:
            f = self._file("fallocate")
            if length == 0:
                raise SyscallError(errno.EINVAL, "fallocate", "length 0")
            if offset + length > TASK_SIZE:
                raise SyscallError(errno.EFBIG, "fallocate")
            if punch_hole:
                first = (offset + PAGE_SIZE - 1) // PAGE_SIZE      # partial pages are zeroed, not freed
                last = (offset + length) // PAGE_SIZE
                _punch_hole(self._machine, self._fid, first, last)
                return
            end = _page_align(offset + length) // PAGE_SIZE
            old_size = f.size
            if end > f.size and not keep_size:
                self._machine.file_set_size(self._fid, end)
            # pages past i_size (FALLOC_FL_KEEP_SIZE) are not kept here: the kernel allocates
            # them, mmemu's page cache ends at i_size
            # no VMA, so no MADV_HUGEPAGE: a THP compacts only with defrag=always
            if not self._machine.file_fallocate(self._fid, min(offset // PAGE_SIZE, f.size), min(end, f.size),
                                                self._mm.config.defrag == "always", end):
                self._machine.file_set_size(self._fid, old_size, False)
                raise OutOfMemory(None)         # the memcg (or global) OOM killer's turn

    def close(self) -> None:
        """close(2): the file lives on while a mapping holds it."""
        with self._lock:
            if self.closed:
                return
            self._machine.files[self._fid].fd_open = False
            _release_files(self._machine)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"{self.size} bytes"
        return f"<Memfd {self.name!r}: {state}>"

    # ---- pickling: with its MM and machine (see MM.__getstate__) -------------------------------

    def __getstate__(self):
        return _pickled_state(self)

    def __setstate__(self, state):
        with _persist.guard("Memfd"):
            _check_pickled(state, "Memfd")
            if not isinstance(state["_mm"], MM) or state["_mm"]._machine is not state["_machine"]:
                _persist.fail("Memfd", "the memfd and its MM are not on one machine")
            _persist.integer(state["_fid"], "Memfd._fid", 1, (1 << 31) - 1)
            if not isinstance(state["name"], str):
                _persist.fail("Memfd", "the name must be a str")
        self.__dict__.update({k: v for k, v in state.items() if k != "_version"})

    def __copy__(self):
        """A Memfd belongs to its machine: any copy of it is a deep one (copy.deepcopy)."""
        return copy.deepcopy(self)


def _check_pickled(state, what):
    """The parts every pickled MM and Memfd has: this format's version, a machine, a lock."""
    if not isinstance(state, dict):
        _persist.fail(what, "the state must be a dict")
    _persist.check_version({"version": state.get("_version")}, what)
    if not isinstance(state["_machine"], _core.Machine):
        _persist.fail(what, "no machine")
    _persist.check_lock(state["_lock"], f"{what}._lock")


def _khugepaged_scan(machine, config, pages, full_scans):
    """Wake khugepaged once (khugepaged_do_scan with ``pages`` slots), or until ``full_scans``
    more full passes have completed. khugepaged has no work while no process is registered or
    order 9 is disabled in sysfs (khugepaged_has_work)."""
    if full_scans is None:
        _khugepaged_do_scan(machine, config, pages)
        return
    target = machine.full_scans + full_scans
    while machine.full_scans < target and _khugepaged_has_work(machine, config):
        _khugepaged_do_scan(machine, config, config.khugepaged_pages_to_scan, target)


def _khugepaged_slots(machine):
    """The mm slots on khugepaged's list, in registration order."""
    mms = [mm for mm in machine.mms if mm.khugepaged_seq] + machine.khugepaged_exited
    return sorted(mms, key=lambda mm: mm.khugepaged_seq)


def _khugepaged_has_work(machine, config):
    return config.hugepages[2048] != "never" and (config.hugepages[2048] != "inherit"
                                                   or config.thp != "never") \
        and bool(_khugepaged_slots(machine))


def _khugepaged_do_scan(machine, config, pages, full_scans_target=None):
    """One wake-up: scan mm slots until ``pages`` slots are spent, the scan has passed the
    head of the list twice, or a second THP allocation failed (or, when asked, the moment
    khugepaged's full_scans reaches a target)."""
    progress, pass_through_head, alloc_failed = 0, 0, False
    while True:
        if not machine.khugepaged_cursor_seq:
            pass_through_head += 1
        if _khugepaged_has_work(machine, config) and pass_through_head < 2:
            done, result = _khugepaged_scan_mm_slot(machine, config, pages - progress)
            progress += done
        else:
            progress, result = pages, SCAN_LEFT_ALONE
        if progress >= pages:
            break
        if full_scans_target is not None and machine.full_scans >= full_scans_target:
            break
        if result == SCAN_ALLOC_FAILED:
            if alloc_failed:
                break
            alloc_failed = True                   # khugepaged_alloc_sleep, then one more try


def _khugepaged_scan_mm_slot(machine, config, pages):
    """khugepaged_scan_mm_slot: scan the positioned mm (the first one if none) from the
    remembered address. Returns (slots spent, the last block's result)."""
    slots = _khugepaged_slots(machine)
    core = next((mm for mm in slots if mm.khugepaged_seq == machine.khugepaged_cursor_seq), None)
    if core is None:
        core = slots[0]
        machine.khugepaged_cursor_seq, machine.khugepaged_cursor_addr = core.khugepaged_seq, 0
    progress, result = 1, SCAN_LEFT_ALONE
    exited = core in machine.khugepaged_exited
    finished = True
    if not exited:
        max_none, max_shared = config.khugepaged_max_ptes_none, config.khugepaged_max_ptes_shared
        addr = machine.khugepaged_cursor_addr
        for i in range(core.vma_first_after(addr), core.nr_vmas):
            blocks = core.khugepaged_vma_range(i)
            if blocks is None or addr > blocks[1]:
                progress += 1
                continue
            addr = max(addr, blocks[0])
            while addr < blocks[1]:
                result = core.khugepaged_scan_pmd(i, addr, max_none, max_shared)
                addr += PMD_SIZE
                progress += 512
                machine.khugepaged_cursor_addr = addr
                if result != SCAN_LEFT_ALONE:     # collapse_huge_page dropped the mmap lock
                    return progress, result
                if progress >= pages:
                    finished = False
                    break
            if not finished:
                break
        machine.khugepaged_cursor_addr = addr
    if finished:                                  # the mm is done (or exited): on to the next
        later = [mm for mm in slots if mm.khugepaged_seq > core.khugepaged_seq]
        if later:
            machine.khugepaged_cursor_seq, machine.khugepaged_cursor_addr = later[0].khugepaged_seq, 0
        else:
            machine.khugepaged_cursor_seq, machine.khugepaged_cursor_addr = 0, 0
            machine.full_scans += 1
        if exited:                                # collect_mm_slot
            machine.khugepaged_exited.remove(core)
            core.khugepaged_forget()
    return progress, result
