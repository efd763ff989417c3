"""Real programs' memory traces: read them, record them under valgrind, replay them on an MM.

Reading valgrind's lackey output
--------------------------------
``valgrind --tool=lackey --trace-mem=yes PROGRAM`` prints one line per memory access::

    I  04016b0,3          instruction fetch   -> ignored, or READ with instructions=True
     L 1ffefffb48,8       load                -> READ
     S 1ffefffb40,8       store               -> WRITE
     M 0421050,4          modify              -> ATOMIC

An ``M`` is one instruction that loads and stores the same location (``add [mem], reg``, a
``lock``-prefixed RMW).  mmemu's ATOMIC is exactly "one access that faults as the
architecture's read-modify-write does": on x86_64 a single write fault (the CPU reports an RMW
as a write), on arm64 a read fault then a write fault unless ``atomic_write_fault``.  Replaying
``M`` as a READ then a WRITE would instead count the x86_64 read fault the hardware never takes.

An access whose last byte lies in the next 4K page becomes two accesses, one per page (the
second at the start of its page), as the CPU touches both.  Lines starting with ``==`` are
valgrind's messages; those and anything else that does not parse are skipped and counted.
:func:`iter_lackey` streams: it reads blocks of 2 MiB, cuts them at a newline and parses
each block with vectorised numpy (no Python per line), so a trace of any size passes through
in bounded memory.

The compact format (.npz)
-------------------------
A trace file is a zip of .npy members (the layout ``numpy.load`` reads), written *stored*,
not compressed, so that its big members can be memory-mapped in place:

=============  =================================================================================
``addrs``      uint64 (N,): the addresses, in program order
``ops``        uint8 (N,): READ (0), WRITE (1), ATOMIC (2)
``pages``      uint64: the touched 4K page numbers, sorted and unique (what ``addrs`` covers)
``regions``    uint64 (K, 2): [start, end) byte ranges derived from ``pages`` (see below)
``maps``       str (M,): /proc/PID/maps lines captured while the program ran (may be empty)
``meta``       str (): JSON: ``format_version``, ``program``, ``argv``, ``recorded_at``, the
               parse counters and whatever else the writer knew
=============  =================================================================================

:class:`TraceWriter` writes chunk by chunk: ``addrs`` and ``ops`` stream into two raw
temporary files beside the output, and :meth:`TraceWriter.close` assembles the zip from them
(one sequential copy; np.savez would need both arrays whole in memory).  :func:`open_trace`
memory-maps stored members (``np.memmap`` at the member's offset inside the zip) and streams
compressed ones (an ``np.savez_compressed`` file) through the zip's decompressor, chunk by
chunk; either way nothing is loaded whole.

Plain ``.npy`` traces are accepted too, memory-mapped: a structured array with fields
``addr`` (unsigned 64-bit) and ``op`` (uint8), or an (N, 2) integer array of (address, op)
rows.  A bare 1-D address array is refused: it does not say what each access was.  An
``.npz`` needs ``addrs`` and ``ops``; every other member is optional.

Mappings, and what the replay maps
----------------------------------
A trace has no mmap/munmap/brk events, so a replay must set the address space up first.  Two
sources, both stored by :func:`record`:

* *derived regions* (always): the touched pages grouped into regions, merging neighbours with
  at most ``gap`` (1 MiB) untouched between them.  They cover every touched page, but their
  extents are guesses: a VMA's real ends (which decide THP eligibility) are unknown.
* *a maps snapshot* (best effort): valgrind runs the program inside its own process, at the
  program's own addresses, so /proc/<valgrind's pid>/maps shows the program's mappings mixed
  with valgrind's.  :func:`record` reads it every ``poll_interval`` while the program runs and
  keeps the union of the snapshots (a later snapshot wins where they overlap), so a mapping
  that was unmapped before exit is still known; one that lived between two polls is missed.
  A replay keeps only the entries the trace touches, which drops valgrind's own mappings (the
  tool, its translation caches, the host stack): lackey traces only the program's accesses.
  Touched pages that no kept entry covers get derived regions.

mmemu models anonymous memory (and shmem); a program's code, libraries and other file mappings
are page cache in the kernel.  With a snapshot, :func:`replay` therefore skips accesses to
file-backed entries by default and counts them (``include_file_backed=True`` maps them as
private anonymous memory instead: "what if all of it were anonymous").  Without a snapshot
nothing is known to be file-backed and everything is replayed as anonymous memory.  One
approximation remains either way: a store to a private file mapping (.data, the GOT) makes an
anonymous copy-on-write page in the kernel, which the default skips.  Every region is mapped
read-write whatever its recorded protection (mprotect calls are not in the trace and an access
that happened must not fault with SIGSEGV); shared anonymous entries (``s`` with no file, or
SysV/memfd shmem) are mapped MAP_SHARED.

Since nothing is ever unmapped, the replay's RSS at the end counts every page the program ever
wrote (pages only read map the zeropage): an upper bound of its real peak.  Addresses no
process can map (below mmap_min_addr, 64 KiB, or from TASK_SIZE up) are skipped and counted.
Valgrind runs a program's threads one at a time: the trace interleaves them as they ran.
Forked children are not traced.  Valgrind also lays out memory its own way (the program's
heap mmaps near 0x4000000, its stack near 0x1fff000000), so 2 MiB alignments, and with them
THP placement, are valgrind's, not those of a native run.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import functools
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import zipfile
from typing import Callable, Iterator, Optional

import numpy as np

from .constants import ATOMIC, PAGE_SIZE, READ, TASK_SIZE, WRITE
from .workloads.result import jsonable as _jsonable

__all__ = ["iter_lackey", "LackeyReader", "TraceWriter", "write_trace", "open_trace", "Trace",
           "record", "replay", "derive_regions", "parse_maps", "plan_mappings", "Layout",
           "TraceError", "TraceNotFoundError", "FORMAT_VERSION", "DEFAULT_CHUNK", "DEFAULT_GAP",
           "REPORT_COLUMNS"]

FORMAT_VERSION = 1
#: accesses per chunk handed out by the readers and replayed per mm.access call
DEFAULT_CHUNK = 1 << 20
#: derived regions: touched pages with at most this many untouched bytes between share a region
DEFAULT_GAP = 1 << 20
PAGE_SHIFT = 12
#: bytes of lackey text parsed per step (about 130,000 lines): the numpy temporaries of a block
#: stay in the caches, and the parse's memory stays near 50 MB whatever the trace's size
_BLOCK = 1 << 21
#: a "line" longer than this is not lackey's: it is dropped (and counted) rather than buffered
_MAX_LINE = 1 << 16
#: lackey's largest access is 512 bytes (MAX_DSIZE); a bigger size is a malformed line
_MAX_SIZE = 1 << 16
#: valgrind messages kept per trace (the header and the closing summary are a few dozen)
_MAX_MESSAGES = 1000
#: the lowest address mmap accepts with MAP_FIXED (mm.MMAP_MIN_ADDR, /proc/sys/vm/mmap_min_addr)
MMAP_MIN_ADDR = 65536

Progress = Optional[Callable[[int, Optional[int]], None]]


class TraceError(ValueError):
    """A trace that cannot be read or replayed (malformed file, bad ops, uncovered access)."""


class TraceNotFoundError(FileNotFoundError, TraceError):
    """The trace file does not exist (a FileNotFoundError and a TraceError at once)."""


# ---- lackey text ------------------------------------------------------------------------------

def _table(ranges, fill=255):
    t = np.full(256, fill, np.uint8)
    for chars, first in ranges:
        for i, ch in enumerate(chars):
            t[ord(ch)] = first + i
    return t


def _pair_table(table):
    """For every two characters (a little-endian uint16: the first is the low byte): the low
    byte holds their digit values as two nibbles, the high byte 0xF0/0x0F where the first/second
    is not a digit."""
    c = np.arange(1 << 16)
    first, second = table[c & 0xFF].astype(np.uint16), table[c >> 8].astype(np.uint16)
    value = ((first & 15) << 4) | (second & 15)
    invalid = np.where(first > 15, 0xF0, 0) | np.where(second > 15, 0x0F, 0)
    return (value | (invalid << 8)).astype(np.uint16)


_HEX = _table((("0123456789", 0), ("abcdef", 10), ("ABCDEF", 10)))
_DEC = _table((("0123456789", 0),))
_HEX2, _DEC2 = _pair_table(_HEX), _pair_table(_DEC)
#: the op of a data line by its kind letter; 255: not a data line
_DATA_OP = _table((("L", READ), ("S", WRITE), ("M", ATOMIC)))
_PAD = 16           # bytes before a block, so a 16-byte window left of any comma stays inside


@dataclasses.dataclass
class LackeyStats:
    """What a lackey parse saw: lines read, accesses made (page-split ones included),
    instruction lines, valgrind ``==`` messages, lines skipped as unparseable, and the extra
    accesses that page-crossing ones added."""
    lines: int = 0
    accesses: int = 0
    instructions: int = 0
    messages: int = 0
    skipped: int = 0
    split: int = 0

    def add(self, other: "LackeyStats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _line_bounds(b):
    """(starts, ends) of the lines of a block that ends with a newline; ends exclude a '\\r'."""
    nl = np.flatnonzero(b == 10)
    starts = np.empty_like(nl)
    starts[0] = _PAD
    starts[1:] = nl[:-1] + 1
    ends = nl - ((b[nl - 1] == 13) & (nl > starts))
    return starts, ends


def _window(b, width):
    """Every ``width``-byte window of b as a row (a view: fancy-indexing it gathers rows)."""
    return np.lib.stride_tricks.as_strided(b, shape=(b.size - width + 1, width), strides=(1, 1),
                                           writeable=False)


def _digits(b, last, count, width, pairs):
    """The ``width`` characters ending before ``last`` of each line as packed nibbles (two
    digits a byte, big-endian) in one uint of ``width // 2`` bytes a row, and the rows whose
    rightmost ``count`` characters are not all digits.  The characters left of those (the kind
    field, the end of the previous line) are garbage the callers mask off.

    The lookup goes two characters at a time through a 64K-entry table (``pairs``), which
    gives the packed byte and an invalid-digit nibble mask at once: half the lookups of a
    per-character table, and no packing pass."""
    looked = pairs[_window(b, width)[last - width].view("<u2")].view(np.uint8)
    uint = f">u{width // 2}"
    values = np.ascontiguousarray(looked[:, 0::2]).view(uint).ravel()
    invalid = np.ascontiguousarray(looked[:, 1::2]).view(uint).ravel()
    native = values.dtype.newbyteorder("=")
    mask = _low_bits(4 * count, native)
    return values.astype(native) & mask, (invalid & mask) != 0


def _low_bits(nbits, dtype):
    """Masks of the low ``nbits`` bits (1 <= nbits <= the width of ``dtype``)."""
    width = np.iinfo(dtype).bits
    return np.iinfo(dtype).max >> (width - nbits).astype(dtype)


def _hex_values(b, comma, count):
    """The hex numbers of 1-16 digits ending before each comma, as uint64."""
    return _digits(b, comma, count, 16, _HEX2)


def _dec_values(b, end, count):
    """The decimal numbers of 1-8 digits ending before each line's end: the digits come as BCD
    nibbles, folded pairwise to binary (no per-digit multiply pass)."""
    x, bad = _digits(b, end, count, 8, _DEC2)
    x = (x & 0x0F0F0F0F) + ((x >> 4) & 0x0F0F0F0F) * 10
    x = (x & 0x00FF00FF) + ((x >> 8) & 0x00FF00FF) * 100
    x = (x & 0xFFFF) + (x >> 16) * 10000
    return x.astype(np.int64), bad


#: the first three characters of a line, as the low bytes of a little-endian uint32
_INSTR_PREFIX = 0x202049          # "I  "
_DATA_PREFIX = 0x200020           # " ?" + " ": a data line, its kind letter masked off
_MSG_PREFIX = 0x3D3D              # "=="


def _parse_block(data: bytes, instructions: bool):
    """Parse a block of whole lackey lines: (addrs, ops, LackeyStats, messages)."""
    b = np.frombuffer(b"\0" * _PAD + data, np.uint8)
    starts, ends = _line_bounds(b)
    stats = LackeyStats(lines=starts.size)
    long_ = np.flatnonzero(ends - starts >= 6)          # "I  0,1" is the shortest line
    head = _window(b, 4)[starts[long_]].view("<u4").ravel()
    is_msg = (head & 0xFFFF) == _MSG_PREFIX
    is_instr = (head & 0xFFFFFF) == _INSTR_PREFIX
    op = _DATA_OP[(head >> 8) & 0xFF]
    is_data = ((head & 0xFF00FF) == _DATA_PREFIX) & (op != 255)
    stats.messages, stats.instructions = int(is_msg.sum()), int(is_instr.sum())
    messages = [bytes(b[starts[i]:ends[i]]).decode("utf-8", "replace")
                for i in long_[is_msg][:_MAX_MESSAGES]]
    take = is_data | is_instr if instructions else is_data
    sel = long_[take]
    addrs, sizes, ok = _parse_fields(b, starts[sel], ends[sel])
    op = op[take][ok]
    if instructions:
        op[is_instr[take][ok]] = READ
    addrs, ops, split = _split_pages(addrs, sizes, op)
    stats.skipped = stats.lines - stats.messages - addrs.size + split
    if not instructions:
        stats.skipped -= stats.instructions
    stats.split, stats.accesses = split, ops.size
    return addrs, ops, stats, messages


def _parse_fields(b, s, e):
    """The address and size of lines known to start with a 3-character kind field, and ``ok``:
    which lines have a hex address of 1-16 digits, a comma and a size (the values are those of
    the ``ok`` lines only)."""
    commas = np.flatnonzero(b == 44)
    j = np.searchsorted(commas, s + 4)
    comma = commas[np.minimum(j, commas.size - 1)] if commas.size else s + 4
    alen = comma - (s + 3)
    slen = e - comma - 1
    ok = (j < commas.size) & (comma < e) & (alen >= 1) & (alen <= 16) & (slen >= 1) & (slen <= 8)
    comma, alen, slen, e = comma[ok], alen[ok], slen[ok], e[ok]
    addrs, bad_a = _hex_values(b, comma, alen)
    sizes, bad_s = _dec_values(b, e, slen)
    good = ~bad_a & ~bad_s & (sizes >= 1) & (sizes <= _MAX_SIZE)
    ok[ok] = good
    return addrs[good], sizes[good], ok


def _split_pages(addrs, sizes, ops):
    """An access that ends in a later page than it starts becomes one access per page, the
    later ones at the start of their pages: (addrs, ops, accesses added)."""
    first = addrs >> np.uint64(PAGE_SHIFT)
    last = (addrs + (sizes - 1).astype(np.uint64)) >> np.uint64(PAGE_SHIFT)
    extra = np.where(last > first, last - first, np.uint64(0))     # wrapped past 2**64: one page
    crossing = np.flatnonzero(extra)
    if not crossing.size:
        return addrs, ops, 0
    if (extra[crossing] == 1).all():        # lackey's accesses are at most 512 bytes: two pages
        second = (first[crossing] + np.uint64(1)) << np.uint64(PAGE_SHIFT)
        return (np.insert(addrs, crossing + 1, second), np.insert(ops, crossing + 1, ops[crossing]),
                crossing.size)
    counts = (extra + np.uint64(1)).astype(np.intp)
    out = np.repeat(addrs, counts)
    k = (np.arange(out.size) - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.uint64)
    later = k > 0
    out[later] = (np.repeat(first, counts)[later] + k[later]) << np.uint64(PAGE_SHIFT)
    return out, np.repeat(ops, counts), int(extra.sum())


class _Source:
    """A lackey source opened for binary block reads, with its progress position."""

    def __init__(self, source):
        self.raw = self.file = None
        self.total = None
        self.owned = False
        if isinstance(source, (str, os.PathLike)):
            self._open_path(os.fspath(source))
        elif hasattr(source, "read"):
            self.file = source
        else:
            raise TypeError(f"source must be a path or a file object, not {type(source).__name__}")

    def _open_path(self, path):
        try:
            self.raw = open(path, "rb")
        except FileNotFoundError:
            raise TraceNotFoundError(2, f"no such trace file: {path}") from None
        self.owned = True
        self.total = os.fstat(self.raw.fileno()).st_size
        gz = path.endswith(".gz") or self.raw.read(2) == b"\x1f\x8b"
        self.raw.seek(0)
        self.file = gzip.GzipFile(fileobj=self.raw, mode="rb") if gz else self.raw

    def position(self):
        return self.raw.tell() if self.raw is not None else None

    def read(self, n):
        data = self.file.read(n)
        return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data

    def close(self):
        if self.owned:
            if self.file is not self.raw:
                self.file.close()
            self.raw.close()


def _line_blocks(read, block, stats):
    """Blocks of whole lines from ``read(n)``; an over-long line is dropped and counted."""
    carry, dropping = b"", False
    while True:
        data = read(block)
        if not data:
            if carry:
                yield carry + b"\n"
            return
        if dropping:
            cut = data.find(b"\n")
            if cut < 0:
                continue
            data, dropping = data[cut + 1:], False
        data = carry + data if carry else data
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if len(carry) > _MAX_LINE:
            carry, dropping = b"", True
            stats.lines += 1
            stats.skipped += 1
        if cut:
            yield data[:cut]


class LackeyReader:
    """An iterator of ``(addrs uint64, ops uint8)`` chunks parsed from lackey text.

    ``stats`` (:class:`LackeyStats`) counts what it saw so far; ``messages`` holds valgrind's
    ``==`` lines (the first thousand)."""

    def __init__(self, source, chunk=DEFAULT_CHUNK, instructions=False, progress: Progress = None):
        self.chunk = _positive(chunk, "chunk")
        self.instructions = _flag(instructions, "instructions")
        self.progress = progress
        self.stats = LackeyStats()
        self.messages: list[str] = []
        self._source = _Source(source)
        self._it = self._chunks()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self):
        self._it.close()
        self._source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _parsed(self):
        for block in _line_blocks(self._source.read, _BLOCK, self.stats):
            addrs, ops, stats, messages = _parse_block(block, self.instructions)
            self.stats.add(stats)
            self.messages.extend(messages[:_MAX_MESSAGES - len(self.messages)])
            if self.progress is not None:
                self.progress(self._source.position() or self.stats.lines, self._source.total)
            yield addrs, ops

    def _chunks(self):
        """Regroup the blocks' accesses into chunks of exactly ``chunk`` (the last shorter)."""
        try:
            pending, have = [], 0
            for addrs, ops in self._parsed():
                pending.append((addrs, ops))
                have += addrs.size
                while have >= self.chunk:
                    a, o = _concat(pending)
                    yield a[:self.chunk], o[:self.chunk]
                    pending, have = [(a[self.chunk:], o[self.chunk:])], have - self.chunk
            if have:
                yield _concat(pending)
        finally:
            self._source.close()


def _concat(pairs):
    if len(pairs) == 1:
        return pairs[0]
    return np.concatenate([a for a, _ in pairs]), np.concatenate([o for _, o in pairs])


def iter_lackey(source, chunk: int = DEFAULT_CHUNK, instructions: bool = False,
                progress: Progress = None) -> LackeyReader:
    """Stream valgrind lackey ``--trace-mem=yes`` output as ``(addrs, ops)`` chunks.

    ``source``: a path (gzip-compressed when it ends in .gz or starts with gzip's magic) or a
    text or binary file object.  Chunks hold exactly ``chunk`` accesses, the last one fewer.
    ``instructions=True`` replays instruction fetches as READs (their pages are file-backed
    code in a real process).  ``progress(done, total)``: bytes of the file read so far and its
    size (lines parsed and None for a file object).  The returned reader's ``stats`` counts
    lines, accesses, skipped lines and page splits."""
    return LackeyReader(source, chunk, instructions, progress)


def _positive(value, name, least=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, not {value}")
    return int(value)


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return bool(value)


# ---- touched pages and derived regions ---------------------------------------------------------

class _PageSet:
    """The distinct 4K page numbers of a stream of addresses, kept sorted and unique with
    amortised merging (each chunk's unique pages wait until they outweigh the merged set)."""

    def __init__(self):
        self._merged = np.zeros(0, np.uint64)
        self._pending: list = []
        self._waiting = 0

    def add(self, addrs):
        pages = np.unique(addrs >> np.uint64(PAGE_SHIFT))
        self._pending.append(pages)
        self._waiting += pages.size
        if self._waiting > max(self._merged.size, 1 << 20):
            self._merge()

    def _merge(self):
        if self._pending:
            self._merged = np.unique(np.concatenate([self._merged, *self._pending]))
            self._pending, self._waiting = [], 0

    def pages(self):
        self._merge()
        return self._merged


def derive_regions(pages, gap: int = DEFAULT_GAP, barriers=None) -> np.ndarray:
    """Group sorted unique page numbers into [start, end) byte ranges, (K, 2) uint64: pages with
    at most ``gap`` untouched bytes between them share a range (``gap=0``: runs of adjacent
    pages), and no range extends across one of the sorted addresses in ``barriers`` (the starts
    and ends of mappings known otherwise)."""
    pages = np.asarray(pages, np.uint64)
    gap = _positive(gap, "gap", 0)
    if not pages.size:
        return np.zeros((0, 2), np.uint64)
    breaks = np.diff(pages) > np.uint64(gap // PAGE_SIZE + 1)
    if barriers is not None and len(barriers):
        slot = np.searchsorted(np.asarray(barriers, np.uint64), pages << np.uint64(PAGE_SHIFT), "right")
        breaks |= np.diff(slot) != 0
    first = np.concatenate([[0], np.flatnonzero(breaks) + 1])
    last = np.concatenate([first[1:] - 1, [pages.size - 1]])
    return np.stack([pages[first] << np.uint64(PAGE_SHIFT),
                     (pages[last] + np.uint64(1)) << np.uint64(PAGE_SHIFT)], axis=1)


# ---- /proc/PID/maps ------------------------------------------------------------------------------

#: what a maps entry is to the replay
ANON, SHMEM, FILE, SPECIAL = "anon", "shmem", "file", "special"
_SHMEM_PATHS = ("/dev/zero", "/SYSV", "/memfd:", "/dev/shm/")


def _classify(perms, path):
    """anon (private anonymous: heap, stack, anonymous mmap, a private /dev/zero), shmem
    (MAP_SHARED anonymous, SysV shm, memfd, /dev/shm), file, or special ([vdso], [vvar]...)."""
    shared = perms.endswith("s")
    if path in ("", "[heap]", "[stack]") or path.startswith(("[anon:", "[stack:")):
        return SHMEM if shared else ANON
    if path.startswith("[anon_shmem:"):
        return SHMEM
    if path.startswith("["):
        return SPECIAL
    if path.startswith("/dev/zero"):
        return SHMEM if shared else ANON
    if shared and path.startswith(_SHMEM_PATHS):
        return SHMEM
    return FILE


def parse_maps(lines) -> list:
    """/proc/PID/maps lines as (start, end, perms, path, kind) tuples, sorted by start; lines
    that do not parse are ignored (a snapshot can be cut short by the process exiting)."""
    out = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 5 or "-" not in parts[0]:
            continue
        try:
            start, end = (int(x, 16) for x in parts[0].split("-", 1))
        except ValueError:
            continue
        path = parts[5].strip() if len(parts) > 5 else ""
        out.append((start, end, parts[1], path, _classify(parts[1], path)))
    out.sort()
    return out


class _MapsHistory:
    """The union of successive maps snapshots: a later snapshot's entries replace the earlier
    entries they overlap, so mappings gone before the end are still known."""

    def __init__(self):
        self.entries: list = []           # (start, end, line), sorted, not overlapping
        self.snapshots = 0

    def update(self, text):
        new = self._entries(text)
        if not new:
            return
        self.snapshots += 1
        starts = np.array([n[0] for n in new], np.uint64)
        ends = np.array([n[1] for n in new], np.uint64)
        kept = [old for old in self.entries if not _overlaps(old[0], old[1], starts, ends)]
        self.entries = sorted(kept + new)

    @staticmethod
    def _entries(text):
        out = []
        for line in text.splitlines():
            parsed = parse_maps([line])
            if parsed:
                out.append((parsed[0][0], parsed[0][1], line))
        return out

    def lines(self):
        return [line for _, _, line in self.entries]


def _overlaps(start, end, starts, ends):
    i = np.searchsorted(ends, np.uint64(start), "right")
    return bool(i < starts.size and starts[i] < end)


# ---- the compact format: writing ----------------------------------------------------------------

def _checked_chunk(addrs, ops, offset=0):
    """A chunk as contiguous (uint64 addrs, uint8 ops), or TraceError naming the first bad
    access (``offset``: the position of the chunk in its trace)."""
    a, o = np.asarray(addrs), np.asarray(ops)
    if a.ndim != 1 or o.shape != a.shape:
        raise TraceError(f"addrs and ops must be 1-D of one length, not {a.shape} and {o.shape}")
    if a.dtype.kind not in "iu" or o.dtype.kind not in "iu":
        raise TraceError(f"addrs and ops must be integers, not {a.dtype} and {o.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise TraceError(f"negative address at access {offset + int(np.argmax(a < 0))}")
    if o.size and (o.max() > ATOMIC or (o.dtype.kind == "i" and o.min() < 0)):
        bad = (o > ATOMIC) | (o < 0)
        i = int(np.argmax(bad))
        raise TraceError(f"ops must be READ (0), WRITE (1) or ATOMIC (2): {int(o[i])} at access {offset + i}")
    return (np.ascontiguousarray(a, dtype=np.uint64), np.ascontiguousarray(o, dtype=np.uint8))


class TraceWriter:
    """Write a trace in the compact format chunk by chunk (see the module documentation).

    ``write(addrs, ops)`` appends a chunk; ``close()`` assembles the file and returns its path;
    used as a context manager, an exception discards everything instead.  ``maps``: the maps
    snapshot lines; ``meta``: JSON-able facts stored beside the trace; ``gap``: the grouping of
    the stored derived regions."""

    def __init__(self, path, meta: Optional[dict] = None, maps=None, gap: int = DEFAULT_GAP):
        self.path = os.fspath(path)
        self.meta = dict(meta or {})
        self.maps = list(maps or [])
        self.gap = _positive(gap, "gap", 0)
        self.count = 0
        self._pages = _PageSet()
        folder, name = os.path.split(os.path.abspath(self.path))
        self._raw = {key: tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=f".{key}",
                                                      delete=False)
                     for key in ("addrs", "ops")}
        self._done = False

    def write(self, addrs, ops) -> None:
        a, o = _checked_chunk(addrs, ops, self.count)
        self._raw["addrs"].write(a.astype("<u8", copy=False).data)
        self._raw["ops"].write(o.data)
        self._pages.add(a)
        self.count += a.size

    def close(self) -> str:
        """Assemble the file from the raw chunks (one sequential copy) and return its path."""
        if self._done:
            return self.path
        try:
            for f in self._raw.values():
                f.close()
            self._assemble()
        finally:
            self._discard()
        return self.path

    def abort(self) -> None:
        """Throw the chunks away; nothing is written."""
        for f in self._raw.values():
            f.close()
        self._discard()

    def _discard(self):
        self._done = True
        for f in self._raw.values():
            if os.path.exists(f.name):
                os.unlink(f.name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _small_members(self):
        pages = self._pages.pages()
        meta = {"program": None, "argv": None, "recorded_at": _now(), **self.meta,
                "format_version": FORMAT_VERSION, "accesses": self.count, "pages": int(pages.size),
                "gap": self.gap}
        return {"meta": np.array(json.dumps(meta, default=_jsonable)),
                "maps": np.array(self.maps, dtype=str) if self.maps else np.zeros(0, "<U1"),
                "pages": pages, "regions": derive_regions(pages, self.gap)}

    def _assemble(self):
        tmp = self._raw["addrs"].name + ".npz"
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, array in self._small_members().items():
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, array, allow_pickle=False)
                    zf.writestr(name + ".npy", buf.getvalue())
                for name, dtype in (("addrs", "<u8"), ("ops", "u1")):
                    _stream_member(zf, name + ".npy", np.dtype(dtype), self.count, self._raw[name].name)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _stream_member(zf, name, dtype, count, raw_path):
    """A 1-D .npy member whose data is copied from a raw file, without loading it."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
    with zf.open(name, "w", force_zip64=True) as out, open(raw_path, "rb") as src:
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(src, out, 1 << 22)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")




def write_trace(path, source, maps=None, meta: Optional[dict] = None, gap: int = DEFAULT_GAP,
                progress: Progress = None) -> "Trace":
    """Write ``source`` into the compact format at ``path`` and open the result.

    ``source``: a :class:`Trace` (converting a .npy or lackey trace), a :class:`LackeyReader`
    (its parse counters and valgrind messages go into the metadata), or any iterable of
    ``(addrs, ops)`` chunks.  ``progress(accesses written, total or None)``."""
    meta = dict(meta or {})
    if isinstance(source, Trace):
        maps = source.maps if maps is None else maps
        total, chunks = source.length, source.chunks()
    else:
        total, chunks = None, source
    with TraceWriter(path, meta, maps, gap) as writer:
        for addrs, ops in chunks:
            writer.write(addrs, ops)
            if progress is not None:
                progress(writer.count, total)
        if isinstance(source, Trace):             # a lackey trace's counters come with its pass
            writer.meta = {**source.meta, **meta}
        if isinstance(source, LackeyReader):
            writer.meta["lackey"] = dataclasses.asdict(source.stats)
            writer.meta["valgrind_messages"] = source.messages
    return open_trace(path)


# ---- the compact format: reading ----------------------------------------------------------------

class _Column:
    """One array of a trace, handed out in copied chunks: a memory map (a .npy file, or a
    stored member of a zip) or, for a compressed member, the zip's decompressing stream."""

    def __init__(self, array=None, opener=None, dtype=None, length=0):
        self.array, self.opener = array, opener
        self.dtype = array.dtype if array is not None else dtype
        self.length = array.shape[0] if array is not None else length

    def chunks(self, chunk):
        if self.array is not None:
            for i in range(0, self.length, chunk):
                yield np.array(self.array[i:i + chunk])
            return
        with self.opener() as f:
            _read_npy_header(f)
            for i in range(0, self.length, chunk):
                n = min(chunk, self.length - i)
                data = f.read(n * self.dtype.itemsize)
                if len(data) != n * self.dtype.itemsize:
                    raise TraceError("trace member ends early")
                yield np.frombuffer(data, self.dtype).copy()


def _read_npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream at f, which is left at the data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise TraceError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise TraceError(f"malformed .npy data: {exc}") from None
    if dtype.hasobject:
        raise TraceError("a trace array must not hold Python objects")
    return shape, fortran, dtype


def _zip_column(path, zf, name):
    """A 1-D member of an .npz: memory-mapped in place when stored, streamed when compressed."""
    info = zf.getinfo(name)
    with zf.open(name) as f:
        shape, _, dtype = _read_npy_header(f)
    if len(shape) != 1:
        raise TraceError(f"{name} must be one-dimensional, not of shape {shape}")
    if info.compress_type != zipfile.ZIP_STORED:
        return _Column(opener=functools.partial(_zip_member, path, name), dtype=dtype, length=shape[0])
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise TraceError(f"malformed zip member {name}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        _read_npy_header(f)
        offset = f.tell()
    if not shape[0]:
        return _Column(np.zeros(0, dtype))
    try:
        return _Column(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape))
    except ValueError as exc:
        raise TraceError(f"{path}: member {name} is cut short ({exc})") from None


@contextlib.contextmanager
def _zip_member(path, name):
    with zipfile.ZipFile(path) as zf, zf.open(name) as f:
        yield f


class Trace:
    """A memory trace, read in chunks: an .npz of the compact format, an .npy, or lackey text.

    ``length``: accesses (None for lackey text until a pass has counted them); ``meta``: the
    stored metadata; ``maps``: the /proc/PID/maps snapshot lines (empty when none was taken);
    ``pages``: the touched 4K page numbers (computed by a pass over the trace when not stored);
    :meth:`chunks` hands out ``(addrs uint64, ops uint8)`` arrays, checked."""

    def __init__(self, path, columns=None, lackey=None, meta=None, maps=(), pages=None):
        self.path = path
        self._columns = columns
        self._lackey = lackey              # (instructions,) for a lackey text trace
        self.length = columns[0].length if columns else None
        self.meta = dict(meta or {})
        self.maps = list(maps)
        self._pages = pages

    def __len__(self):
        if self.length is None:
            _ = self.pages                  # a pass counts them
        return self.length

    def __repr__(self):
        return f"Trace({self.path!r}, length={self.length}, maps={len(self.maps)} lines)"

    def __str__(self):
        """One line for people: accesses, pages, the snapshot, the program and its exit."""
        parts = [f"{self.length if self.length is not None else '?'} accesses"]
        if self._pages is not None:
            parts.append(f"{self._pages.size} pages touched")
        parts.append(f"maps snapshot of {len(self.maps)} lines" if self.maps else "no maps snapshot")
        if self.meta.get("program"):
            exit_code = self.meta.get("exit_code")
            parts.append(self.meta["program"] + ("" if exit_code is None else f" (exit status {exit_code})"))
        return ", ".join(parts)

    def chunks(self, chunk: int = DEFAULT_CHUNK, progress: Progress = None) -> Iterator:
        """``(addrs, ops)`` chunks of at most ``chunk`` accesses, in order; bad ops or addresses
        raise TraceError.  ``progress(accesses so far, length or None)``."""
        chunk = _positive(chunk, "chunk")
        done = 0
        for addrs, ops in self._raw_chunks(chunk):
            addrs, ops = _checked_chunk(addrs, ops, done)
            done += addrs.size
            if progress is not None:
                progress(done, self.length)
            yield addrs, ops

    def _raw_chunks(self, chunk):
        if self._lackey is not None:
            reader = iter_lackey(self.path, chunk, instructions=self._lackey[0])
            yield from reader
            self.meta["lackey"] = dataclasses.asdict(reader.stats)
            self.length = reader.stats.accesses
            return
        if self._columns is None:
            raise ValueError("this trace is closed")
        yield from zip(*(column.chunks(chunk) for column in self._columns), strict=True)

    @property
    def pages(self) -> np.ndarray:
        """The touched 4K page numbers, sorted and unique."""
        if self._pages is None:
            pages = _PageSet()
            for addrs, _ in self.chunks():
                pages.add(addrs)
            self._pages = pages.pages()
        return self._pages

    def regions(self, gap: int = DEFAULT_GAP) -> np.ndarray:
        """The touched pages grouped into [start, end) ranges, (K, 2) uint64."""
        return derive_regions(self.pages, gap)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Let go of the memory maps (a lackey text trace has none to let go)."""
        if self._lackey is None:
            self._columns = None


def open_trace(path, instructions: bool = False) -> Trace:
    """Open a trace file, whatever its format (told by its first bytes): the compact .npz, an
    .npy (structured addr/op, or (N, 2) rows), or lackey text (``instructions`` as in
    :func:`iter_lackey`), gzip-compressed or not."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise TraceNotFoundError(2, f"no such trace file: {path}") from None
    if magic.startswith(b"PK"):
        return _open_npz(path)
    if magic == b"\x93NUMPY":
        return _open_npy(path)
    return Trace(path, lackey=(bool(instructions),), meta={"format": "lackey"})


def _open_npz(path):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise TraceError(f"{path}: not a readable .npz ({exc})") from None
    with zf:
        names = set(zf.namelist())
        missing = {"addrs.npy", "ops.npy"} - names
        if missing:
            raise TraceError(f"{path}: an .npz trace needs members addrs and ops; missing {sorted(missing)}")
        columns = [_zip_column(path, zf, "addrs.npy"), _zip_column(path, zf, "ops.npy")]
        small = {name: _small_member(zf, name + ".npy") for name in ("meta", "maps", "pages")
                 if name + ".npy" in names}
    _check_columns(path, columns)
    meta = json.loads(str(small["meta"])) if "meta" in small else {}
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise TraceError(f"{path}: format version {meta['format_version']} is newer than this mmemu reads")
    maps = [str(x) for x in small.get("maps", ())]
    pages = small.get("pages")
    if pages is not None:
        pages = np.asarray(pages, np.uint64)
    return Trace(path, columns, meta=meta, maps=maps, pages=pages)


def _small_member(zf, name):
    with zf.open(name) as f:
        try:
            return np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as exc:
            raise TraceError(f"malformed member {name}: {exc}") from None


def _check_columns(path, columns):
    addrs, ops = columns
    if addrs.length != ops.length:
        raise TraceError(f"{path}: addrs has {addrs.length} accesses, ops {ops.length}")
    if addrs.dtype.kind not in "iu" or ops.dtype.kind not in "iu":
        raise TraceError(f"{path}: addrs and ops must be integers, not {addrs.dtype} and {ops.dtype}")


def _open_npy(path):
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise TraceError(f"{path}: malformed .npy ({exc})") from None
    if array.dtype.names:
        if not {"addr", "op"} <= set(array.dtype.names) or array.ndim != 1:
            raise TraceError(f"{path}: a structured .npy trace needs fields 'addr' and 'op', one-dimensional")
        columns = [_Column(array["addr"]), _Column(array["op"])]
    elif array.ndim == 2 and array.shape[1] == 2:
        columns = [_Column(array[:, 0]), _Column(array[:, 1])]
    else:
        raise TraceError(f"{path}: an .npy trace is a structured array with fields addr and op, or (N, 2) "
                         f"rows of (address, op), not an array of shape {array.shape} and dtype {array.dtype}")
    _check_columns(path, columns)
    return Trace(path, columns, meta={"format": "npy"})


# ---- the mappings a replay sets up ----------------------------------------------------------------

@dataclasses.dataclass
class Layout:
    """The regions a replay knows, sorted and disjoint: [starts, ends) in bytes, each region's
    ``kinds`` (anon, shmem, file, special), ``sources`` ("maps" or "derived") and whether it is
    ``mapped``; ``unmappable_pages``: touched pages outside [mmap_min_addr, TASK_SIZE)."""
    starts: np.ndarray
    ends: np.ndarray
    kinds: list
    sources: list
    mapped: np.ndarray
    unmappable_pages: int = 0

    def select(self, addrs):
        """(mask of the accesses to replay, or None for all; skipped accesses by reason)."""
        if self.mapped.all() and not self.unmappable_pages:
            return None, {}
        if not self.starts.size:
            return np.zeros(addrs.size, bool), {"skipped_unmappable": int(addrs.size)}
        i = np.searchsorted(self.starts, addrs, "right") - 1
        j = np.maximum(i, 0)
        inside = (i >= 0) & (addrs < self.ends[j])
        keep = inside & self.mapped[j]
        skipped = {"skipped_unmappable": int(addrs.size - np.count_nonzero(inside))}
        region = j[inside & ~keep]
        kinds = np.array(self.kinds)
        for kind in (FILE, SPECIAL):
            skipped[f"skipped_{kind}"] = int(np.count_nonzero(kinds[region] == kind))
        return keep, skipped


def plan_mappings(pages, maps=(), include_file_backed: bool = False, gap: int = DEFAULT_GAP) -> Layout:
    """The regions to map for a trace touching ``pages`` (sorted unique 4K page numbers):
    the entries of the maps snapshot it touches (anonymous and shared ones mapped, file-backed
    ones too with ``include_file_backed``, [vdso]-like ones never), and derived regions (see
    :func:`derive_regions`) for the touched pages no such entry covers."""
    pages = np.asarray(pages, np.uint64)
    include_file_backed = _flag(include_file_backed, "include_file_backed")
    low, high = MMAP_MIN_ADDR >> PAGE_SHIFT, TASK_SIZE >> PAGE_SHIFT
    ok = (pages >= np.uint64(low)) & (pages < np.uint64(high))
    unmappable = int((~ok).sum())
    pages = pages[ok]
    entries = _touched_entries(parse_maps(maps), pages)
    starts = np.array([e[0] for e in entries], np.uint64)
    ends = np.array([e[1] for e in entries], np.uint64)
    addr = pages << np.uint64(PAGE_SHIFT)
    i = np.searchsorted(starts, addr, "right") - 1
    covered = (i >= 0) & (addr < ends[np.maximum(i, 0)]) if entries else np.zeros(addr.size, bool)
    barriers = np.sort(np.concatenate([starts, ends]))
    derived = derive_regions(pages[~covered], gap, barriers)
    regions = sorted([(s, e, kind, "maps") for s, e, kind in entries] +
                     [(int(s), int(e), ANON, "derived") for s, e in derived])
    mapped = [kind in (ANON, SHMEM) or (kind == FILE and include_file_backed) for _, _, kind, _ in regions]
    return Layout(np.array([r[0] for r in regions], np.uint64), np.array([r[1] for r in regions], np.uint64),
                  [r[2] for r in regions], [r[3] for r in regions], np.array(mapped, bool), unmappable)


def _touched_entries(entries, pages):
    """(start, end, kind) of the maps entries that hold a touched page, clipped to the mappable
    range; an entry overlapping an earlier one is dropped (a snapshot is disjoint)."""
    addr = pages << np.uint64(PAGE_SHIFT)
    out, last_end = [], 0
    for start, end, _, _, kind in entries:
        start, end = max(start, MMAP_MIN_ADDR), min(end, TASK_SIZE)
        if start >= end or start < last_end:
            continue
        lo, hi = np.searchsorted(addr, np.uint64(start)), np.searchsorted(addr, np.uint64(end))
        if hi > lo:
            out.append((start, end, kind))
            last_end = end
    return out


# ---- replay -------------------------------------------------------------------------------------

def replay(trace, config=None, mm=None, chunk: int = DEFAULT_CHUNK, progress: Progress = None,
           thp: Optional[str] = None, include_file_backed: bool = False, gap: int = DEFAULT_GAP):
    """Replay a trace on an emulated process; returns a WorkloadResult ("trace").

    ``trace``: a :class:`Trace` or a path :func:`open_trace` opens.  A new ``MM(config)`` is
    made (``thp`` overrides the config's THP mode) and closed at the end, unless ``mm`` is given:
    then the trace's regions are mapped into it with MAP_FIXED (replacing what was there) and it
    is left open to inspect.  Every region of :func:`plan_mappings` is mapped read-write, then the
    chunks are replayed with ``mm.access``; the timeline is sampled after each chunk (``done``:
    trace accesses consumed, skipped ones included) and ``progress(done, length)`` called.

    ``final`` holds the vmstat changes, the smaps_rollup Rss and AnonHugePages, VmRSS, RssAnon,
    RssShmem and VmPTE, the accesses replayed by kind, the faults they took, and the accesses
    skipped (file-backed or special mappings, addresses no process can map)."""
    from .workloads.result import Timeline, WorkloadResult, rollup, vmstat_delta
    t = trace if isinstance(trace, Trace) else open_trace(trace)
    chunk = _positive(chunk, "chunk")
    mm, config, own = _replay_mm(config, mm, thp)
    try:
        layout = plan_mappings(t.pages, t.maps, include_file_backed, gap)
        _map_layout(mm, layout)
        before = mm.vmstat
        timeline = Timeline(mm)
        timeline.sample(0)
        counts = _replay_chunks(mm, t, layout, chunk, timeline, progress)
        final = {**{k: counts.pop(k) for k in _FIRST}, **_memory_figures(mm, rollup), **counts,
                 **_layout_figures(layout, t), **vmstat_delta(before, mm.vmstat)}
        params = {"trace": os.fspath(t.path), "program": t.meta.get("program"), "chunk": chunk,
                  "include_file_backed": include_file_backed, "gap": gap,
                  "mappings": "maps" if "maps" in layout.sources else "derived", "unit": "trace accesses"}
        return WorkloadResult("trace", params, _config_dict(config), timeline.columns(), final)
    finally:
        if own:
            mm.close()


#: the figures a replay's ``final`` starts with
_FIRST = ("trace_accesses", "accesses", "reads", "writes", "atomics", "faults")
#: what a table of replays shows (``final`` holds more: the vmstat changes, the regions)
REPORT_COLUMNS = ("trace_accesses", "accesses", "faults", "RssAnon", "AnonHugePages", "VmPTE", "thp_fault_alloc",
                  "skipped_file")


def _config_dict(config):
    return config.as_dict()


def _replay_mm(config, mm, thp):
    """(the MM to replay on, its config, whether replay made it)."""
    from .config import Config
    from .mm import MM
    if mm is not None:
        if config is not None or thp is not None:
            raise ValueError("give config and thp, or mm, not both")
        if not isinstance(mm, MM):
            raise TypeError(f"mm must be a mmemu.MM, not {type(mm).__name__}")
        return mm, mm.config, False
    config = Config() if config is None else config
    if not isinstance(config, Config):
        raise TypeError(f"config must be a mmemu.Config, not {type(config).__name__}")
    if thp is not None:
        config = config.replace(thp=thp)
    return MM(config), config, True


def _map_layout(mm, layout):
    from .errors import SyscallError
    for start, end, kind, mapped in zip(layout.starts.tolist(), layout.ends.tolist(), layout.kinds,
                                        layout.mapped.tolist(), strict=True):
        if not mapped:
            continue
        try:
            mm.mmap(end - start, "rw", addr=start, fixed=True, shared=kind == SHMEM)
        except SyscallError as exc:
            raise TraceError(f"cannot map the trace's region {start:#x}-{end:#x}: {exc}") from None


def _replay_chunks(mm, trace, layout, chunk, timeline, progress):
    """Feed the chunks to mm.access: the counters of what was replayed and skipped."""
    counts = collections.Counter(skipped_file=0, skipped_special=0, skipped_unmappable=0)
    done = 0
    for addrs, ops in trace.chunks(chunk):
        keep, skipped = layout.select(addrs)
        counts.update(skipped)
        a, o = (addrs, ops) if keep is None else (addrs[keep], ops[keep])
        faults = _access(mm, a, o, keep, done, trace)
        counts["faults"] += int(faults.sum(dtype=np.int64))
        per_op = np.bincount(o, minlength=3)
        counts["reads"] += int(per_op[READ])
        counts["writes"] += int(per_op[WRITE])
        counts["atomics"] += int(per_op[ATOMIC])
        done += addrs.size
        timeline.sample(done)
        if progress is not None:
            progress(done, trace.length)
    counts["trace_accesses"] = done
    counts["accesses"] = counts["reads"] + counts["writes"] + counts["atomics"]
    return dict(counts)


def _access(mm, addrs, ops, keep, done, trace):
    """mm.access, with a SIGSEGV or an OOM told in the trace's terms."""
    from .errors import OutOfMemory, SegmentationFault
    try:
        return mm.access(addrs, ops)
    except (SegmentationFault, OutOfMemory) as exc:
        index = exc.index if keep is None else int(np.flatnonzero(keep)[exc.index])
        where = f"access {done + index} of {trace.path} (at {int(addrs[exc.index]):#x})"
        if isinstance(exc, OutOfMemory):
            exc.add_note(f"replaying {where}: give Config(memory=...) more emulated RAM")
            raise
        raise TraceError(f"{where} got SIGSEGV in the replay: the trace's pages or maps do not cover it") from None


def _layout_figures(layout, trace):
    mapped = layout.mapped
    sources = np.array(layout.sources, dtype=str)
    return {"regions": int(mapped.sum()),
            "regions_from_maps": int(np.count_nonzero(mapped & (sources == "maps"))),
            "regions_derived": int(np.count_nonzero(mapped & (sources == "derived"))),
            "mapped_kb": int(((layout.ends - layout.starts)[mapped]).sum()) // 1024,
            "touched_pages": int(trace.pages.size)}


def _memory_figures(mm, rollup):
    smaps = rollup(mm)
    status = mm.status
    return {"Rss": smaps.get("Rss", 0), "AnonHugePages": smaps.get("AnonHugePages", 0),
            "VmRSS": status["VmRSS"], "RssAnon": status["RssAnon"], "RssShmem": status["RssShmem"],
            "VmPTE": status["VmPTE"]}


# ---- record -------------------------------------------------------------------------------------

class _Watcher(threading.Thread):
    """While valgrind runs: snapshot its /proc/PID/maps every ``interval`` seconds and kill it
    past ``timeout``.  Once it has exited, until the recorder says it got past opening the log
    FIFO (``opened``), keep opening and closing the FIFO's write end: a reader blocked in open()
    (valgrind died before opening its log) is then released and reads an empty log.  Until the
    reader is in open() there is nobody to release (ENXIO), hence the retries."""

    def __init__(self, proc, fifo, interval, timeout):
        super().__init__(daemon=True, name="mmemu-record-watcher")
        self.proc, self.fifo, self.interval = proc, fifo, interval
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.history = _MapsHistory()
        self.opened = threading.Event()
        self.timed_out = False

    def run(self):
        maps = f"/proc/{self.proc.pid}/maps"
        while self.proc.poll() is None:
            try:
                with open(maps) as f:
                    text = f.read()
            except OSError:
                text = ""                 # between exit and reaping: nothing to read
            if "/lackey-" in text:        # the tool, which hosts the program; not the launcher
                self.history.update(text)
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.timed_out = True
                self.proc.kill()
            time.sleep(self.interval)
        while not self.opened.wait(self.interval):
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass                      # ENXIO: the reader is not in open() yet


def _program(argv):
    if isinstance(argv, (str, bytes)) or not all(isinstance(a, str) for a in argv) or not argv:
        raise TypeError("argv must be a non-empty list of str, like ['ls', '-l']")
    argv = list(argv)
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(2, f"program not found: {argv[0]}")
    return argv


def record(argv, out_path, progress: Progress = None, *, instructions: bool = False,
           valgrind: str = "valgrind", poll_interval: float = 0.02, timeout: Optional[float] = None,
           chunk: int = DEFAULT_CHUNK, gap: int = DEFAULT_GAP, stdin=subprocess.DEVNULL, stdout=None,
           stderr=None, cwd=None, env=None) -> Trace:
    """Run ``argv`` under ``valgrind --tool=lackey --trace-mem=yes``, stream its trace into the
    compact format at ``out_path`` and return it opened.

    Lackey writes into a FIFO (valgrind opens it itself, so the program does not inherit it) that
    :func:`iter_lackey` parses as it comes; the maps snapshot is taken meanwhile (see the module
    documentation).  Forked children run silently (``--child-silent-after-fork``): the trace is
    the first process's, but a child still running holds the log open, and the recording ends
    when it exits.  ``progress(accesses so far, None)``; ``stdin`` (no input by default),
    ``stdout``, ``stderr``, ``cwd``, ``env`` go to the program as to subprocess.Popen;
    ``timeout`` (seconds) kills valgrind and raises TimeoutError.  The program's exit status is
    stored in the metadata (``exit_code``), not judged."""
    argv = _program(argv)
    tool = shutil.which(valgrind)
    if tool is None:
        raise FileNotFoundError(2, f"{valgrind} not found: recording needs valgrind installed")
    folder = os.path.dirname(os.path.abspath(os.fspath(out_path)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(2, f"no such folder for the trace: {folder}")
    started, began = _now(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mmemu-record-") as tmp:
        fifo = os.path.join(tmp, "lackey.log")
        os.mkfifo(fifo)
        cmd = [tool, "--tool=lackey", "--trace-mem=yes", "--child-silent-after-fork=yes",
               f"--log-file={fifo}", *argv]
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env)
        watcher = _Watcher(proc, fifo, poll_interval, timeout)
        watcher.start()
        try:
            meta = {"program": shutil.which(argv[0]), "argv": argv, "recorded_at": started,
                    "tool": "valgrind lackey", "instructions": bool(instructions)}
            _record_stream(fifo, proc, watcher, out_path, meta, progress, instructions, chunk, gap, began)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            watcher.opened.set()          # whatever happened, nobody waits on the FIFO now
            watcher.join()
    return open_trace(out_path)


def _record_stream(fifo, proc, watcher, out_path, meta, progress, instructions, chunk, gap, began):
    """Parse the FIFO into a TraceWriter until valgrind closes it; then add what it told."""
    with open(fifo, "rb") as log:           # waits for valgrind to open it (or the watcher)
        watcher.opened.set()
        reader = iter_lackey(log, chunk, instructions)
        with TraceWriter(out_path, meta, gap=gap) as writer:
            for addrs, ops in reader:
                writer.write(addrs, ops)
                if progress is not None:
                    progress(writer.count, None)
            status = proc.wait()
            watcher.join()
            if watcher.timed_out:
                raise TimeoutError(f"recording {meta['argv'][0]} took too long: valgrind was killed")
            if not writer.count:
                last = reader.messages[-3:] or ["(no message)"]
                raise RuntimeError(f"valgrind exited with status {status} without a trace: {' | '.join(last)}")
            writer.maps = watcher.history.lines()
            writer.meta.update(exit_code=status, duration_s=round(time.monotonic() - began, 3),
                               maps_snapshots=watcher.history.snapshots, valgrind=_valgrind_version(reader.messages),
                               lackey=dataclasses.asdict(reader.stats), valgrind_messages=reader.messages)


def _valgrind_version(messages):
    for line in messages[:10]:
        if "Using Valgrind-" in line:
            return line.split("Using Valgrind-", 1)[1].split()[0]
    return None
