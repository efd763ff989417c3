"""Live migration, the destination side: what receiving a guest's memory costs the QEMU process
that receives it (RSS, huge mappings, page tables, faults), by strategy and backing.

The guest image is a :class:`GuestImage`: its pages, which of them are zero, and which the
guest gave back (ballooning, free-page reporting: discarded on the source, so they read as zero
and are sent as zero pages, or with free-page hinting not sent at all).

What QEMU does with each page it receives, as its sources have it (read in QEMU's git history,
9.x-10.x era; functions cited so that a reader can hold the two side by side; the kernel's side
is in the project's spec, ``shared/spec/linux-mm-semantics.md``, R1-R89):

* **The RAM.** ``system/physmem.c: ram_block_add`` madvises every RAM block
  ``QEMU_MADV_HUGEPAGE`` (``thp_advise=True`` here; a ``Config(thp="always")`` host makes it
  moot, ``thp="never"`` makes it void). Anonymous guest RAM (``-machine memory-backend`` of
  type ``memory-backend-ram``) comes from ``util/oslib-posix.c: qemu_anon_ram_alloc`` ->
  ``util/mmap-alloc.c: qemu_ram_mmap`` with ``QEMU_VMALLOC_ALIGN`` (2 MiB on x86-64 and arm64
  Linux, ``include/qemu/osdep.h``): a PROT_NONE anonymous reservation of size + alignment, the
  RAM mapped MAP_FIXED at the first aligned address inside it, the head unmapped and one
  PROT_NONE guard page kept after the RAM. ``memory-backend-memfd`` (``share=on``) maps a memfd
  MAP_SHARED through the same ``qemu_ram_mmap``, but ``file_ram_alloc`` aligns it only to the
  fd's page size (4 KiB for tmpfs; ``mmap_reserve`` still reserves anonymous memory), so where
  it lands follows the kernel's anonymous placement (on 6.12+ a size + 4 KiB reservation is not
  2 MiB-aligned: no shmem PMD mappings unless by chance). ``backing="anon-shared"`` is
  ``memory-backend-ram,share=on`` (MAP_SHARED|MAP_ANONYMOUS, 2 MiB-aligned). All of this is
  replayed here with :class:`mmemu.MM` calls, so the engine decides every consequence.

* **strategy="precopy"** (the default; QEMU since commit 211ea740 "migration: do not overwrite
  zero pages", 2013). ``migration/ram.c: ram_load_precopy`` gets a zero page as
  ``RAM_SAVE_FLAG_ZERO`` and calls ``ram_handle_zero``, which writes zeros only
  ``if (!buffer_is_zero(host, size))``: on untouched RAM the page is only *read*. A read of
  anonymous memory maps the shared zeropage, or in a THP-eligible 2 MiB range whose PMD is none
  the huge zeropage (R86): no RSS. A data page is copied in (``qemu_get_buffer``): a write
  fault, a THP when it is the first touch of an eligible 2 MiB range. The famous consequence
  (R87): a data page arriving after a zero page in the same 2 MiB finds the huge zeropage;
  since 6.13 the write fault allocates a THP in its place (2 MiB of RSS for one page of data),
  before 6.13 it splits the PMD (``Config.huge_zero_write="split"``,
  ``Config.for_kernel("6.12")``): one 4K page, 511 zeropage PTEs, every later data page of the
  range a fault of its own, and khugepaged may collapse it later. On shmem (memfd) a read fault
  allocates a page (``shmem_fault`` -> ``shmem_get_folio_gfp(SGP_CACHE)``): the read before
  write saves nothing there, every zero page costs 4 KiB (measured by a third party,
  martins3.github.io, "share memory auto touch", on QEMU 10.2.2: a 5 GiB all-zero guest into
  memfd share=on: RssShmem 0 -> 5 GiB, +1.31M minor faults; with multifd: 0 -> 0; into
  anonymous RAM: RSS about unchanged, +2.7k faults, about one per 2 MiB).

* **strategy="precopy-write"**: QEMU before that commit (``ram_handle_compressed`` then memset
  every zero page): every page is written.

* **strategy="multifd"** with ``zero-page-detection=multifd`` (the default with multifd since
  QEMU 9.0/9.1, commit 5ef7e26bdb7e; ``migration/multifd-zero-page.c``): the source finds the
  zero pages (``multifd_send_zero_page_detect``); the destination's
  ``multifd_recv_zero_page_process`` memsets a zero page only if
  ``ramblock_recv_bitmap_test_byte_offset`` says it was received before, or (later QEMU) if
  postcopy is enabled (``migrate_postcopy_ram()``: a page skipped but marked received would
  leave a postcopy fault unserved); otherwise it only sets the page's bit in the receive
  bitmap. A zero page received once is not touched at all. Data pages are written (``readv``
  into guest RAM: a fault taken by the kernel's copy, counted as the process's). One pass: no
  page is received twice here, so every zero page is skipped.

* **strategy="postcopy"** (``migration/postcopy-ram.c``). ``postcopy_ram_incoming_init`` ->
  ``init_range`` discards every block (``ram_discard_range``). An optional precopy phase
  (``precopy_fraction`` of the pages, received as ``precopy_phase`` says; with multifd every
  zero page is memset since postcopy is enabled) runs with the RAM still MADV_HUGEPAGE
  ("leaving it until after precopy means that most of the precopy data is still THPd"). At the
  switch ``postcopy_ram_prepare_discard`` -> ``nhp_range`` madvises every block
  ``QEMU_MADV_NOHUGEPAGE``, then the source's discard bitmap (every page not yet sent, and
  every page sent but dirtied since, ``dirty_fraction``) arrives as ``ram_discard_range``
  calls: ``system/physmem.c: ram_block_discard_range`` does MADV_DONTNEED for private anonymous
  RAM, fallocate(PUNCH_HOLE|KEEP_SIZE) and then MADV_DONTNEED for a file (memfd), MADV_REMOVE
  for shared anonymous RAM. A discard inside a THP splits its PMD. ``ram_block_enable_notify``
  registers the blocks with userfaultfd MISSING. The remaining pages (unsent first, then the
  dirtied ones) are placed by ``ram_load_postcopy``: ``postcopy_place_page`` (UFFDIO_COPY) for
  data, ``postcopy_place_page_zero`` for an all-zero host page: UFFDIO_ZEROPAGE when the block
  is ``uf_zeroable`` (the registration offered the ioctl: anonymous memory and shmem do,
  hugetlbfs does not). At the end ``cleanup_range`` madvises the blocks ``QEMU_MADV_HUGEPAGE``
  again (unconditionally).

  The kernel (R80, R81; ``mm/userfaultfd.c``): UFFDIO_COPY allocates one 4K anonymous page (a
  uffd-armed VMA gets order 0 only, and this one is VM_NOHUGEPAGE anyway), copies and maps it;
  UFFDIO_ZEROPAGE (``mfill_atomic_pte_zeropage``) maps the shared zeropage, one PTE per page,
  never the huge zeropage; on shmem both allocate a page
  (``mm/shmem.c: shmem_mfill_atomic_pte``: ``clear_highpage`` for ZEROPAGE). mmemu's core has
  no userfaultfd, so each UFFDIO_COPY is replayed as a write of the page and each
  UFFDIO_ZEROPAGE as a read of it, in the VM_NOHUGEPAGE VMA: they leave what the ioctls leave
  (a 4K page or a zeropage PTE, the page tables they need; on shmem a page). But an ioctl is
  not a page fault: the faults those stand-in accesses take are counted in ``emulated_faults``
  and *subtracted* from ``faults``, from the timeline's ``faults`` column and from the reported
  ``pgfault``, which therefore mean the faults the destination process took itself (the kernel
  counts neither ioctl in ``pgfault`` nor in ``min_flt``; mmemu's vmstat does, hence the
  subtraction; the ``thp_*`` counters are untouched: no THP in a VM_NOHUGEPAGE VMA). Not
  modelled: the guest's own vCPU faults on missing pages during postcopy (each counted once, as
  a minor fault, when UFFDIO_COPY wakes it: R3), which depend on what the guest touches; a real
  ``pgfault``/``min_flt`` is higher by that much.

* **Discarded pages** (``GuestImage.discarded``: balloon, free-page reporting) arrive as zero
  pages (``discarded_as="zero"``: the source's discarded memory reads as zero) or, with
  free-page hinting or a RamDiscardManager (virtio-mem), are never sent
  (``discarded_as="unsent"``: left untouched on the destination; postcopy would place a
  zeropage only if the guest touched one, ``postcopy_request_page``).

Simplifications: one RAM block; pages are received once, in ``order`` (QEMU's bulk stage is
linear; "random" stands for guest-driven postcopy requests), carrying their final content: no
dirty rounds in precopy (a page sent first as zero and again as data would first map the
zeropage, then be written); postcopy's re-sent pages are the one exception; chunks of
``chunk_pages`` received pages are replayed with one bulk :meth:`mmemu.MM.access` each, and the
timeline is sampled after each.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping

import numpy as np

from ..config import Config
from ..constants import READ, WRITE, PageState
from ..mm import MM
from .result import SUMMARY_VMSTAT, TIMELINE_COLUMNS, Timeline, WorkloadResult, rollup, vmstat_delta

__all__ = ["BACKINGS", "LAYOUTS", "ORDERS", "STRATEGIES", "GuestImage", "compare_strategies", "migrate"]

PAGE = 4096
PMD = 2 << 20
PMD_PAGES = PMD // PAGE
#: QEMU_VMALLOC_ALIGN on x86-64/arm64 Linux: the alignment of anonymous RAM blocks
VMALLOC_ALIGN = PMD

STRATEGIES = ("precopy-write", "precopy", "multifd", "postcopy")
#: the strategies a postcopy migration's precopy phase can use
PRECOPY_PHASES = ("precopy-write", "precopy", "multifd")
#: anonymous private (memory-backend-ram), memfd share=on (memory-backend-memfd), shared
#: anonymous (memory-backend-ram,share=on)
BACKINGS = ("anon", "memfd", "anon-shared")
LAYOUTS = ("random", "clustered", "tail")
ORDERS = ("linear", "random")
DISCARDED_AS = ("zero", "unsent")
DEFAULT_CHUNK = 1 << 15

#: a page the destination leaves alone (a multifd zero page received for the first time)
_SKIP = np.uint8(255)
#: the vmstat counters reported (their change over the migration)
_VMSTAT = SUMMARY_VMSTAT + ("thp_deferred_split_page", "thp_split_page")


# ---- the guest image -------------------------------------------------------------------------

class GuestImage:
    """A guest's memory as the migration sees it: ``pages`` 4K pages, which are zero, and which
    were discarded (ballooned, or reported free by the guest).

    ``zero`` and ``discarded`` are each a fraction of all pages (laid out by ``layout`` and
    ``discard_layout``) or a per-page mask: a bool array, an integer array of 0/1 with one entry
    per page, or a bitmap in ``np.packbits`` format (uint8, ``ceil(pages / 8)`` bytes, bit order
    ``bitorder``: "big" as ``np.packbits`` by default, "little" for QEMU's and Linux's bitmaps;
    bits past the last page are ignored). An integer array as long as ``pages`` is a mask, not a
    bitmap. Give ``pages`` or ``size`` (bytes, a multiple of 4096); a bool ``zero`` array gives
    its own length.

    Layouts: "random" (pages drawn at random, seeded by ``seed``), "clustered" (whole aligned
    runs of ``run_pages`` pages, 2 MiB by default, drawn at random; the remainder fills part of
    one more run), "tail" (the last pages). Discarded pages drawn by fraction are drawn among the
    pages that are not zero, so the fractions add up; free-page reporting reports free memory in
    2 MiB pageblocks (``mm/page_reporting.c``: PAGE_REPORTING_MIN_ORDER is pageblock_order), hence
    ``discard_layout="clustered"``; a balloon inflates 4K pages ("random").

    The masks are read-only bool arrays; ``zero`` and ``discarded`` never overlap (a page given
    as both counts as discarded)."""

    def __init__(self, pages: int | None = None, *, size: int | None = None, zero=0.0,
                 layout: str = "clustered", discarded=0.0, discard_layout: str = "clustered",
                 run_pages: int = PMD_PAGES, seed: int = 0, bitorder: str = "big"):
        pages = _image_pages(pages, size, zero)
        _choice("layout", layout, LAYOUTS)
        _choice("discard_layout", discard_layout, LAYOUTS)
        _choice("bitorder", bitorder, ("big", "little"))
        run_pages = _positive_int("run_pages", run_pages)
        seed = _nonneg_int("seed", seed)
        for name, value in (("zero", zero), ("discarded", discarded)):
            if _is_fraction(value):
                _fraction(name, value)
        if _is_fraction(zero) and _is_fraction(discarded) and zero + discarded > 1:
            raise ValueError(f"zero ({zero}) and discarded ({discarded}) fractions add up to more than 1")
        self.pages = pages
        self._describe = {"pages": pages}
        zero_mask = self._mask("zero", zero, layout, np.ones(pages, bool), run_pages, seed, 0, bitorder)
        disc_mask = self._mask("discarded", discarded, discard_layout, ~zero_mask, run_pages, seed, 1, bitorder)
        zero_mask &= ~disc_mask
        for mask in (zero_mask, disc_mask):
            mask.setflags(write=False)
        self.zero, self.discarded = zero_mask, disc_mask

    @classmethod
    def from_bitmap(cls, zero_bitmap, pages: int, discarded_bitmap=None, bitorder: str = "big") -> GuestImage:
        """An image from packed bitmaps (``np.packbits`` format, ``ceil(pages / 8)`` bytes)."""
        pages = _positive_int("pages", pages)
        for name, bitmap in (("zero_bitmap", zero_bitmap), ("discarded_bitmap", discarded_bitmap)):
            if bitmap is not None:
                b = np.asarray(bitmap)
                if b.dtype != np.uint8 or b.ndim != 1 or b.shape[0] != (pages + 7) // 8:
                    raise ValueError(f"{name} must be a uint8 np.packbits bitmap of {(pages + 7) // 8} bytes "
                                     f"for {pages} pages, not {b.dtype} of shape {b.shape}")
        return cls(pages, zero=zero_bitmap, discarded=0.0 if discarded_bitmap is None else discarded_bitmap,
                   bitorder=bitorder)

    def _mask(self, name, value, layout, candidates, run_pages, seed, stream, bitorder):
        if _is_fraction(value):
            fraction = _fraction(name, value)
            k = round(fraction * self.pages)
            if k > int(candidates.sum()):
                raise ValueError(f"{name}: {k} pages wanted, only {int(candidates.sum())} are not zero")
            rng = np.random.default_rng([seed, stream])
            self._describe.update({name: fraction, f"{name}_layout": layout})
            return _lay_out(self.pages, k, layout, rng, run_pages, candidates)
        mask = _as_mask(name, value, self.pages, bitorder)
        self._describe[name] = "mask"
        return mask

    @property
    def data(self) -> np.ndarray:
        """The pages that hold data (neither zero nor discarded)."""
        return ~(self.zero | self.discarded)

    def counts(self) -> dict:
        """Pages by kind."""
        z, d = int(self.zero.sum()), int(self.discarded.sum())
        return {"image_pages": self.pages, "image_zero_pages": z, "image_discarded_pages": d,
                "image_data_pages": self.pages - z - d}

    def describe(self) -> dict:
        """How the image was made (JSON-able), for a result's parameters."""
        return dict(self._describe)

    def __eq__(self, other):
        if not isinstance(other, GuestImage):
            return NotImplemented
        return (self.pages == other.pages and np.array_equal(self.zero, other.zero)
                and np.array_equal(self.discarded, other.discarded))

    __hash__ = None

    def __repr__(self):
        c = self.counts()
        return (f"<GuestImage {self.pages} pages ({self.pages * PAGE >> 20} MiB): {c['image_zero_pages']} zero, "
                f"{c['image_discarded_pages']} discarded>")


def _image_pages(pages, size, zero):
    if pages is not None and size is not None:
        raise ValueError("give pages or size, not both")
    if size is not None:
        size = _positive_int("size", size)
        if size % PAGE:
            raise ValueError(f"size must be a multiple of 4096, not {size}")
        return size // PAGE
    if pages is not None:
        return _positive_int("pages", pages)
    if not _is_fraction(zero) and np.asarray(zero).dtype == bool:
        if np.asarray(zero).ndim != 1 or not len(zero):
            raise ValueError("zero must be a non-empty one-dimensional mask")
        return len(zero)
    raise ValueError("give pages or size (or zero as a bool mask, one entry per page)")


def _as_mask(name, value, pages, bitorder):
    """A per-page bool mask from a bool/0-1 array or an np.packbits bitmap."""
    a = np.asarray(value)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, not of shape {a.shape}")
    nbytes = (pages + 7) // 8
    if a.dtype == bool:
        if a.shape[0] != pages:
            raise ValueError(f"{name} must have one entry per page ({pages}), not {a.shape[0]}")
        return a.copy()
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a fraction, a bool or 0/1 integer array, or a packbits bitmap, "
                        f"not {a.dtype}")
    if a.shape[0] == pages:
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"{name}: a per-page integer mask must hold only 0 and 1")
        return a.astype(bool)
    if a.dtype == np.uint8 and a.shape[0] == nbytes:
        return np.unpackbits(a, count=pages, bitorder=bitorder).astype(bool)
    raise ValueError(f"{name} must have one entry per page ({pages}) or be a uint8 np.packbits bitmap of "
                     f"{nbytes} bytes, not {a.dtype} with {a.shape[0]} entries")


def _lay_out(n, k, layout, rng, run_pages, candidates):
    """A mask of ``k`` of the ``candidates`` pages, laid out as ``layout``."""
    mask = np.zeros(n, bool)
    if k == 0:
        return mask
    if layout == "random":
        mask[rng.choice(np.flatnonzero(candidates), k, replace=False)] = True
    elif layout == "tail":
        mask[np.flatnonzero(candidates)[-k:]] = True
    else:
        mask[_clustered_order(n, rng, run_pages, candidates)[:k]] = True
    return mask


def _clustered_order(n, rng, run_pages, candidates):
    """The candidate pages, run by run: whole runs of candidates in random order first, then
    the runs only partly made of candidates."""
    runs = -(-n // run_pages)
    padded = np.ones(runs * run_pages, bool)       # a run cut short by the image's end can be whole
    padded[:n] = candidates
    whole = padded.reshape(runs, run_pages).all(axis=1)
    order = np.concatenate([rng.permutation(np.flatnonzero(whole)), rng.permutation(np.flatnonzero(~whole))])
    pages = (order[:, None] * run_pages + np.arange(run_pages)).ravel()
    pages = pages[pages < n]
    return pages[candidates[pages]]


def _as_image(image) -> GuestImage:
    if isinstance(image, GuestImage):
        return image
    if isinstance(image, Mapping):
        return GuestImage(**image)
    raise TypeError(f"image must be a GuestImage or a dict of its parameters, not {type(image).__name__}")


# ---- argument checks ---------------------------------------------------------------------------

def _is_fraction(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def _nonneg_int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _positive_int(name, value):
    value = _nonneg_int(name, value)
    if value == 0:
        raise ValueError(f"{name} must be at least 1")
    return value


def _fraction(name, value):
    if not _is_fraction(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a fraction from 0 to 1, not {value!r}")
    return float(value)


# ---- the plan: which pages arrive, in which order, and what the destination does ------------------

@dataclasses.dataclass
class _Plan:
    """The pages in the order they are received (``stream``: page indices), whether each
    arrives as a zero page, how many the precopy phase takes, and the pages a postcopy
    migration sends again after the switch (dirtied since they were precopied)."""

    stream: np.ndarray
    zero: np.ndarray
    n_precopy: int
    redirtied: np.ndarray
    unsent: int


def _make_plan(image, strategy, order, discarded_as, precopy_fraction, dirty_fraction, seed):
    rng = np.random.default_rng([seed, 2])
    arrives_zero = image.zero | image.discarded if discarded_as == "zero" else image.zero
    sent = ~image.discarded if discarded_as == "unsent" else np.ones(image.pages, bool)
    pages = np.arange(image.pages, dtype=np.int64) if order == "linear" else rng.permutation(image.pages)
    stream = pages[sent[pages]]
    n_precopy = stream.shape[0] if strategy != "postcopy" else round(precopy_fraction * stream.shape[0])
    precopied = stream[:n_precopy]
    k = round(dirty_fraction * n_precopy)
    redirtied = np.sort(rng.choice(precopied, k, replace=False)) if k else np.zeros(0, np.int64)
    return _Plan(stream, arrives_zero, n_precopy, redirtied, int((~sent).sum()))


def _precopy_ops(zero, strategy, postcopy):
    """What a precopy receiver does with each page: WRITE, READ (ram_handle_zero's
    buffer_is_zero) or nothing (a multifd zero page never received before)."""
    if strategy == "precopy-write":
        return np.full(zero.shape, WRITE, np.uint8)
    if strategy == "precopy":
        return np.where(zero, np.uint8(READ), np.uint8(WRITE))
    # multifd: memset only with postcopy enabled (each page arrives once here)
    return np.where(zero, np.uint8(WRITE) if postcopy else _SKIP, np.uint8(WRITE))


# ---- the destination's RAM, as QEMU maps it ------------------------------------------------------

class _Ram:
    """One RAM block mapped as QEMU's qemu_ram_mmap does: ``base``, ``size``, the memfd if any."""

    def __init__(self, mm: MM, size: int, backing: str, thp_advise: bool):
        self.mm, self.size, self.backing = mm, size, backing
        self.memfd = None
        if backing == "memfd":
            self.memfd = mm.memfd_create("guest-ram")        # memfd_backend_memory_alloc
            self.memfd.ftruncate(size)
        align = PAGE if backing == "memfd" else VMALLOC_ALIGN  # file_ram_alloc: the fd's page size
        self.base = self._qemu_ram_mmap(align)
        if thp_advise:
            mm.madvise(self.base, size, "hugepage")           # ram_block_add

    def _qemu_ram_mmap(self, align):
        """util/mmap-alloc.c: reserve size + align PROT_NONE, map the RAM MAP_FIXED at the first
        aligned address, unmap the head and all but one guard page of the tail."""
        mm, size = self.mm, self.size
        total = size + align
        guard = mm.mmap(total, "none")                        # mmap_reserve: anonymous, private
        ptr = (guard + align - 1) & ~(align - 1)
        if self.backing == "memfd":
            mm.mmap(size, "rw", addr=ptr, fixed=True, fd=self.memfd)
        else:
            mm.mmap(size, "rw", addr=ptr, fixed=True, shared=self.backing == "anon-shared")
        if ptr > guard:
            mm.munmap(guard, ptr - guard)
        rest = total - (ptr - guard)
        if rest > size + PAGE:
            mm.munmap(ptr + size + PAGE, rest - size - PAGE)
        return ptr

    def discard(self, first, count):
        """ram_block_discard_range of pages [first, first+count)."""
        addr, length = self.base + first * PAGE, count * PAGE
        if self.backing == "memfd":
            self.memfd.fallocate(first * PAGE, length, punch_hole=True)
            self.mm.madvise(addr, length, "dontneed")
        elif self.backing == "anon-shared":
            self.mm.madvise(addr, length, "remove")
        else:
            self.mm.madvise(addr, length, "dontneed")


# ---- the run ---------------------------------------------------------------------------------------

class _Timeline(Timeline):
    """A Timeline whose faults column leaves out the faults mmemu took to stand in for the
    UFFDIO_COPY and UFFDIO_ZEROPAGE ioctls (``emulated``, kept up to date by the run)."""

    _FAULTS = TIMELINE_COLUMNS.index("faults")

    def __init__(self, mm):
        super().__init__(mm)
        self.emulated = 0

    def sample(self, done: int) -> None:
        super().sample(done)
        row = list(self.rows[-1])
        row[self._FAULTS] -= self.emulated
        self.rows[-1] = tuple(row)


class _Receiver:
    """Replays the received pages chunk by chunk on one MM and counts what it did."""

    def __init__(self, mm, ram, chunk_pages, total, progress):
        self.mm, self.ram, self.chunk_pages = mm, ram, chunk_pages
        self.total, self.progress = total, progress
        self.timeline = _Timeline(mm)
        self.done = 0
        self.counts = dict.fromkeys(("pages_written", "pages_zero_checked", "pages_zero_skipped",
                                     "uffd_copy", "uffd_zeropage"), 0)

    def receive(self, pages, ops, uffd=False):
        """Receive ``pages`` (indices) whose handling is ``ops`` (READ, WRITE or skip), in
        chunks; ``uffd``: they are UFFDIO_ZEROPAGE (READ) and UFFDIO_COPY (WRITE) placements,
        whose stand-in faults are not the process's."""
        for start in range(0, pages.shape[0], self.chunk_pages):
            chunk_ops = ops[start:start + self.chunk_pages]
            touched = chunk_ops != _SKIP
            addrs = (pages[start:start + self.chunk_pages][touched] * PAGE + self.ram.base).astype(np.uint64)
            faults = self.mm.access(addrs, chunk_ops[touched])
            self._count(chunk_ops, uffd, int(faults.sum(dtype=np.int64)))
            self.done += chunk_ops.shape[0]
            self.timeline.sample(self.done)
            if self.progress:
                self.progress(self.done, self.total)

    def _count(self, ops, uffd, faults):
        writes = int(np.count_nonzero(ops == WRITE))
        reads = int(np.count_nonzero(ops == READ))
        if uffd:
            self.counts["uffd_copy"] += writes
            self.counts["uffd_zeropage"] += reads
            self.timeline.emulated += faults
        else:
            self.counts["pages_written"] += writes
            self.counts["pages_zero_checked"] += reads
            self.counts["pages_zero_skipped"] += ops.shape[0] - writes - reads


def migrate(image, strategy: str = "precopy", backing: str = "anon", config: Config | None = None,
            chunk_pages: int = DEFAULT_CHUNK, order: str = "linear", progress=None, thp_advise: bool = True, *,
            precopy_fraction: float = 0.0, precopy_phase: str = "precopy", dirty_fraction: float = 0.0,
            discarded_as: str = "zero", seed: int = 0, khugepaged_scans: int = 0) -> WorkloadResult:
    """Receive ``image`` (a :class:`GuestImage` or a dict of its parameters) into a fresh QEMU
    destination process; return its memory over time and at the end (workload "migration").

    ``strategy``: "precopy" (read before write), "precopy-write", "multifd" or "postcopy";
    ``backing``: "anon", "memfd" or "anon-shared"; ``config``: the host (default: mmemu's
    defaults, with RAM raised to hold the guest); ``order``: "linear" or "random" (seeded by
    ``seed``); ``thp_advise``: QEMU's MADV_HUGEPAGE on the RAM. Postcopy only:
    ``precopy_fraction`` of the pages first received by ``precopy_phase``, of which
    ``dirty_fraction`` are dirtied again, discarded at the switch and sent again.
    ``discarded_as``: "zero" or "unsent". ``progress(done, total)`` after each chunk.
    ``khugepaged_scans``: full khugepaged passes after the migration (their effect goes to
    ``*_after_khugepaged`` figures only). The module docstring says what each step does, after
    which QEMU and kernel code."""
    image = _as_image(image)
    _check(strategy, backing, order, precopy_phase, discarded_as, chunk_pages, progress, thp_advise,
           khugepaged_scans)
    precopy_fraction = _fraction("precopy_fraction", precopy_fraction)
    dirty_fraction = _fraction("dirty_fraction", dirty_fraction)
    if strategy != "postcopy" and (precopy_fraction or dirty_fraction):
        raise ValueError("precopy_fraction and dirty_fraction apply to strategy='postcopy' only")
    seed = _nonneg_int("seed", seed)
    plan = _make_plan(image, strategy, order, discarded_as, precopy_fraction, dirty_fraction, seed)
    config = _host_config(config, image)
    mm = MM(config)
    try:
        ram = _Ram(mm, image.pages * PAGE, backing, thp_advise)
        before = mm.vmstat
        total = plan.stream.shape[0] + plan.redirtied.shape[0]
        rx = _Receiver(mm, ram, chunk_pages, total, progress)
        rx.timeline.sample(0)
        extra = _run(strategy, precopy_phase, plan, ram, rx)
        final = _figures(mm, ram, before, rx, plan, image, extra)
        if khugepaged_scans:
            mm.khugepaged_scan(full_scans=khugepaged_scans)
            final.update(_after_khugepaged(mm, ram))
        params = {**image.describe(), "strategy": strategy, "backing": backing, "order": order,
                  "chunk_pages": chunk_pages, "thp_advise": thp_advise, "discarded_as": discarded_as,
                  "seed": seed, "unit": "pages received"}
        if strategy == "postcopy":
            params.update(precopy_fraction=precopy_fraction, precopy_phase=precopy_phase,
                          dirty_fraction=dirty_fraction)
        if khugepaged_scans:
            params["khugepaged_scans"] = khugepaged_scans
        return WorkloadResult("migration", params, _config_dict(config), rx.timeline.columns(), final)
    finally:
        mm.close()


def _check(strategy, backing, order, precopy_phase, discarded_as, chunk_pages, progress, thp_advise, scans):
    _choice("strategy", strategy, STRATEGIES)
    _choice("backing", backing, BACKINGS)
    _choice("order", order, ORDERS)
    _choice("precopy_phase", precopy_phase, PRECOPY_PHASES)
    _choice("discarded_as", discarded_as, DISCARDED_AS)
    _positive_int("chunk_pages", chunk_pages)
    _nonneg_int("khugepaged_scans", scans)
    if not isinstance(thp_advise, bool):
        raise TypeError(f"thp_advise must be True or False, not {thp_advise!r}")
    if progress is not None and not callable(progress):
        raise TypeError("progress must be callable as progress(done, total), or None")


def _host_config(config, image):
    """The host: the given Config, or mmemu's defaults with enough RAM for the guest and its
    page tables (a destination host is sized for the guests it takes)."""
    if config is not None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a mmemu.Config, not {type(config).__name__}")
        return config
    config = Config()
    need = image.pages * PAGE * 9 // 8 + (64 << 20)
    need = -(-need // PMD) * PMD
    return config if need <= config.memory else config.replace(memory=need)


def _run(strategy, precopy_phase, plan, ram, rx):
    """The migration's steps; returns the strategy's own figures."""
    if strategy != "postcopy":
        rx.receive(plan.stream, _precopy_ops(plan.zero[plan.stream], strategy, False))
        return {}
    ram.discard(0, ram.size // PAGE)                          # postcopy_ram_incoming_init
    head = plan.stream[:plan.n_precopy]
    rx.receive(head, _precopy_ops(plan.zero[head], precopy_phase, True))
    ranges, discarded = _switch_to_postcopy(plan, ram)
    rest = np.concatenate([plan.stream[plan.n_precopy:], plan.redirtied])
    _check_missing(ram, rest)
    rx.receive(rest, np.where(plan.zero[rest], np.uint8(READ), np.uint8(WRITE)), uffd=True)
    ram.mm.madvise(ram.base, ram.size, "hugepage")            # cleanup_range
    return {"precopied_pages": int(head.shape[0]), "postcopied_pages": int(rest.shape[0]),
            "redirtied_pages": int(plan.redirtied.shape[0]), "discard_ranges": ranges,
            "pages_discarded": discarded}


def _switch_to_postcopy(plan, ram):
    """postcopy_ram_prepare_discard (MADV_NOHUGEPAGE), then the discard bitmap: every page not
    yet sent and every page dirtied since it was sent. Returns (ranges QEMU discards, pages).

    The ranges are QEMU's runs of set bits; mmemu issues only those (clipped to the 2 MiB
    blocks) where something is mapped: before the switch nothing was ever discarded, so a
    2 MiB block with no mapping has no page table either and a discard there changes nothing."""
    mm, n = ram.mm, ram.size // PAGE
    mm.madvise(ram.base, ram.size, "nohugepage")
    dirty = np.ones(n, bool)
    dirty[plan.stream[:plan.n_precopy]] = False
    dirty[plan.redirtied] = True
    if plan.unsent:
        sent = np.zeros(n, bool)
        sent[plan.stream] = True
        dirty &= sent                                       # never sent: not in the bitmap
    ranges = len(_runs(dirty))
    blocks = -(-n // PMD_PAGES)
    states = np.zeros(blocks * PMD_PAGES, np.uint8)
    states[:n] = mm.page_states(ram.base, ram.size)
    mapped = np.repeat((states.reshape(blocks, PMD_PAGES) != PageState.NONE).any(axis=1), PMD_PAGES)[:n]
    for first, count in _runs(dirty & mapped):
        ram.discard(first, count)
    return ranges, int(dirty.sum())


def _runs(mask):
    """(first, length) of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), (edges[1::2] - edges[0::2]).tolist()))


def _check_missing(ram, pages):
    """Every page postcopy places must be missing (a none PTE), as UFFDIO_COPY and
    UFFDIO_ZEROPAGE require (EEXIST otherwise): the discards saw to it."""
    if pages.shape[0]:
        states = ram.mm.page_states(ram.base, ram.size)[pages]
        if (states != PageState.NONE).any():
            raise RuntimeError("postcopy would place a page over a present one (the discard missed it)")


# ---- figures -----------------------------------------------------------------------------------

def _figures(mm, ram, before, rx, plan, image, extra):
    """The final figures: image, what the receiver did, faults, memory, page states."""
    emulated = rx.timeline.emulated
    delta = vmstat_delta(before, mm.vmstat, _VMSTAT)
    delta["pgfault"] -= emulated
    smaps = rollup(mm)
    status = mm.status
    states = mm.page_states(ram.base, ram.size)
    final = {**image.counts(),
             "pages_received": int(rx.done),
             "zero_pages_received": int(np.count_nonzero(plan.zero[plan.stream])),
             "pages_unsent": plan.unsent,
             **rx.counts,
             "faults": mm.rusage["min_flt"] - rx.timeline.base_faults - emulated,
             "emulated_faults": emulated,
             "rss_kb": status["VmRSS"], "anon_kb": status["RssAnon"], "shmem_kb": status["RssShmem"],
             "pte_kb": status["VmPTE"],
             "huge_kb": smaps.get("AnonHugePages", 0) + smaps.get("ShmemPmdMapped", 0),
             "anon_huge_kb": smaps.get("AnonHugePages", 0), "shmem_pmd_kb": smaps.get("ShmemPmdMapped", 0),
             "smaps_rss_kb": smaps.get("Rss", 0),
             **{f"page_tables_{k}": v for k, v in mm.page_tables.items()},
             **_state_counts(states),
             "thp_ranges": _whole_ranges(states, PageState.THP),
             "huge_zero_ranges": _whole_ranges(states, PageState.HUGE_ZERO),
             **{f"vmstat_{k}": v for k, v in delta.items()},
             **extra}
    return final


def _state_counts(states):
    counts = np.bincount(states, minlength=len(PageState))
    return {f"pages_{s.name.lower()}": int(counts[s]) for s in PageState}


def _whole_ranges(states, state):
    """Aligned 2 MiB ranges whose every page is in ``state``."""
    whole = states.shape[0] // PMD_PAGES * PMD_PAGES
    return int((states[:whole].reshape(-1, PMD_PAGES) == state).all(axis=1).sum())


def _after_khugepaged(mm, ram):
    states = mm.page_states(ram.base, ram.size)
    return {"thp_ranges_after_khugepaged": _whole_ranges(states, PageState.THP),
            "rss_kb_after_khugepaged": mm.status["VmRSS"],
            "pages_collapsed_by_khugepaged": mm.khugepaged["pages_collapsed"]}


def _config_dict(config):
    return config.as_dict()


#: migrate()'s arguments that only a postcopy migration takes
_POSTCOPY_ONLY = ("precopy_fraction", "precopy_phase", "dirty_fraction")


def compare_strategies(image, strategies=STRATEGIES, **kwargs) -> list:
    """:func:`migrate` of one image under each of ``strategies`` with the same keyword
    arguments (the postcopy-only ones, ``precopy_fraction``, ``precopy_phase`` and
    ``dirty_fraction``, go to "postcopy" alone): a list of WorkloadResults in that order."""
    image = _as_image(image)
    if isinstance(strategies, str):
        strategies = (strategies,)
    others = {k: v for k, v in kwargs.items() if k not in _POSTCOPY_ONLY}
    return [migrate(image, strategy, **(kwargs if strategy == "postcopy" else others)) for strategy in strategies]
