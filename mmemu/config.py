"""Config: the kernel's knobs and the behaviours that differ by version or architecture.

Every field mirrors a setting a kernel developer knows by name:

=====================  =====================================================================
field                  kernel counterpart
=====================  =====================================================================
``thp``                /sys/kernel/mm/transparent_hugepage/enabled
``defrag``             /sys/kernel/mm/transparent_hugepage/defrag
``use_zero_page``      /sys/kernel/mm/transparent_hugepage/use_zero_page (the huge zeropage)
``hugepages``          /sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/enabled
``shmem_enabled``      /sys/kernel/mm/transparent_hugepage/shmem_enabled (shmem THPs)
``zero_page``          False models mm_forbids_zeropage() (s390x KVM guests with storage keys)
``huge_zero_write``    write fault on the huge zeropage: "thp" allocates a THP (6.13+),
                       "split" splits the PMD and maps one 4K page (before 6.13)
``pt_reclaim``         MADV_DONTNEED frees empty PTE tables (CONFIG_PT_RECLAIM, 6.14+)
``mmap_thp_align``     2 MiB alignment of anonymous mmaps: "none" (before 6.7), "any"
                       (6.7-6.11: any length >= 2 MiB), "pmd_multiple" (6.12+: lengths
                       that are multiples of 2 MiB)
``arch``               "x86_64" or "arm64" (how atomics fault)
``atomic_write_fault`` arm64: the unmerged patch "force write fault for atomic RMW
                       instructions" (one write fault instead of read then write)
``khugepaged_*``       /sys/kernel/mm/transparent_hugepage/khugepaged/{max_ptes_none,
                       max_ptes_swap, max_ptes_shared, pages_to_scan}
``shrink_underused``   /sys/kernel/mm/transparent_hugepage/shrink_underused (6.12+)
``remap_zero_subpages`` a folio split maps zero-filled subpages to the zeropage (6.12+)
``reuse_large_folios`` a write fault reuses a PTE-mapped large folio mapped by this process
                       only (6.15+; before, a non-exclusive subpage is copied)
``memory``             bytes of emulated RAM
``max_map_count``      /proc/sys/vm/max_map_count
=====================  =====================================================================

``Config()`` is the validation host: Linux 6.18 on x86_64 with THP "madvise".
``Config.for_kernel("6.6")`` gives the behaviour of an older kernel.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

__all__ = ["Config", "HUGEPAGE_SIZES_KB", "KNOWN_KERNELS"]

GiB = 1 << 30
MiB = 1 << 20

THP_MODES = ("always", "madvise", "never")
DEFRAG_MODES = ("always", "defer", "defer+madvise", "madvise", "never")
HUGEPAGE_MODES = ("always", "inherit", "madvise", "never")
HUGE_ZERO_WRITE = ("thp", "split")
SHMEM_ENABLED = ("never", "always", "within_size", "advise")
MMAP_THP_ALIGN = ("none", "any", "pmd_multiple")
ARCHES = ("x86_64", "arm64")
#: the per-size THP directories of a 4K-page kernel (hugepages-<kB>kB); 8 kB has no anon knob
HUGEPAGE_SIZES_KB = (16, 32, 64, 128, 256, 512, 1024, 2048)
#: kernel versions whose behaviour the presets know (any X.Y >= 5.14 is accepted)
KNOWN_KERNELS = ("6.1", "6.6", "6.8", "6.12", "6.13", "6.14", "6.18")


def _default_hugepages():
    return {kb: ("inherit" if kb == 2048 else "never") for kb in HUGEPAGE_SIZES_KB}


def _parse_version(version):
    if isinstance(version, tuple):
        parts = version
    elif isinstance(version, str):
        try:
            parts = tuple(int(p) for p in version.split(".")[:2])
        except ValueError:
            parts = ()
    else:
        raise TypeError(f"kernel version must be a str like '6.18', not {type(version).__name__}")
    if len(parts) != 2 or parts < (5, 14):
        raise ValueError(f"Config.kernel must be a version 'X.Y' of 5.14 or later, not {version!r}")
    return parts


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Config.{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def _boolean(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"Config.{name} must be True or False, not {value!r}")


@dataclass(frozen=True)
class Config:
    """The settings of one emulated machine (frozen; use :func:`dataclasses.replace`)."""

    kernel: str = "6.18"
    arch: str = "x86_64"
    thp: str = "madvise"
    defrag: str = "madvise"
    use_zero_page: bool = True
    hugepages: Mapping[int, str] = field(default_factory=_default_hugepages)
    shmem_enabled: str = "never"
    zero_page: bool = True
    huge_zero_write: str = "thp"
    pt_reclaim: bool = True
    mmap_thp_align: str = "pmd_multiple"
    atomic_write_fault: bool = False
    khugepaged_max_ptes_none: int = 511
    khugepaged_max_ptes_swap: int = 64
    khugepaged_max_ptes_shared: int = 256
    khugepaged_pages_to_scan: int = 4096
    shrink_underused: bool = True
    remap_zero_subpages: bool = True
    reuse_large_folios: bool = True
    memory: int = 16 * GiB
    max_map_count: int = 65530

    def __post_init__(self):
        _parse_version(self.kernel)
        _choice("arch", self.arch, ARCHES)
        _choice("thp", self.thp, THP_MODES)
        _choice("defrag", self.defrag, DEFRAG_MODES)
        _choice("huge_zero_write", self.huge_zero_write, HUGE_ZERO_WRITE)
        _choice("shmem_enabled", self.shmem_enabled, SHMEM_ENABLED)
        _choice("mmap_thp_align", self.mmap_thp_align, MMAP_THP_ALIGN)
        for name in ("use_zero_page", "zero_page", "pt_reclaim", "atomic_write_fault",
                     "shrink_underused", "remap_zero_subpages", "reuse_large_folios"):
            _boolean(name, getattr(self, name))
        for name in ("khugepaged_max_ptes_none", "khugepaged_max_ptes_swap", "khugepaged_max_ptes_shared"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 511:
                raise ValueError(f"Config.{name} must be an int from 0 to 511, not {value!r}")
        value = self.khugepaged_pages_to_scan
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= (1 << 32) - 1:
            raise ValueError(f"Config.khugepaged_pages_to_scan must be a positive int, not {value!r}")
        self._check_hugepages()
        for name, lo in (("memory", 2 * MiB), ("max_map_count", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"Config.{name} must be an int of at least {lo}, not {value!r}")
        if self.memory % (2 * MiB):
            raise ValueError(f"Config.memory must be a multiple of 2 MiB, not {self.memory!r}")
        if self.memory > (1 << 50):
            raise ValueError(f"Config.memory must be at most 1 PiB, not {self.memory!r}")

    def _check_hugepages(self):
        if not isinstance(self.hugepages, Mapping):
            raise ValueError("Config.hugepages must be a mapping of size in kB to mode")
        merged = _default_hugepages()
        for kb, mode in self.hugepages.items():
            if kb not in HUGEPAGE_SIZES_KB:
                raise ValueError(f"Config.hugepages: size must be one of {HUGEPAGE_SIZES_KB} (kB), not {kb!r}")
            _choice(f"hugepages[{kb}]", mode, HUGEPAGE_MODES)
            merged[kb] = mode
        if _parse_version(self.kernel) < (6, 8):
            small = [kb for kb, mode in merged.items() if kb != 2048 and mode != "never"]
            if small:
                raise ValueError(f"Config.hugepages: kernel {self.kernel} has no multi-size THP (6.8+), "
                                 f"but sizes {small} are enabled")
        object.__setattr__(self, "hugepages", MappingProxyType(merged))

    # The mapping proxy is not hashable or picklable; compare and pickle it as a dict.
    def __hash__(self):
        return hash(tuple((f.name, self._field_key(f.name)) for f in dataclasses.fields(self)))

    def __eq__(self, other):
        if not isinstance(other, Config):
            return NotImplemented
        return all(self._field_key(f.name) == other._field_key(f.name) for f in dataclasses.fields(self))

    def _field_key(self, name):
        value = getattr(self, name)
        return tuple(sorted(value.items())) if name == "hugepages" else value

    def __reduce__(self):
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kwargs["hugepages"] = dict(self.hugepages)
        return (_rebuild_config, (kwargs,))

    def as_dict(self) -> dict:
        """The fields as a plain dict (``hugepages`` a dict of its own): for JSON, tables and
        ``Config(**d)``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["hugepages"] = dict(self.hugepages)
        return out

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (validated again)."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kwargs["hugepages"] = dict(self.hugepages)
        if "hugepages" in changes:
            kwargs["hugepages"].update(changes.pop("hugepages"))
        kwargs.update(changes)
        return Config(**kwargs)

    @classmethod
    def for_kernel(cls, version: str, **overrides) -> "Config":
        """The defaults of the validation host, with the behaviour of kernel ``version``.

        ``Config.for_kernel("6.6")`` splits the huge zeropage on a write fault, never
        reclaims PTE tables on MADV_DONTNEED and does not align anonymous mmaps.
        """
        v = _parse_version(version)
        preset = dict(
            kernel=f"{v[0]}.{v[1]}",
            huge_zero_write="thp" if v >= (6, 13) else "split",
            pt_reclaim=v >= (6, 14),
            mmap_thp_align="pmd_multiple" if v >= (6, 12) else ("any" if v >= (6, 7) else "none"),
            shrink_underused=v >= (6, 12),
            remap_zero_subpages=v >= (6, 12),
            reuse_large_folios=v >= (6, 15),
        )
        preset.update(overrides)
        return cls(**preset)

    @classmethod
    def from_fields(cls, fields: dict) -> "Config":
        """A Config from a dict of fields, as a user writes them (a scenario file, ``--set``,
        a sweep's grid point): a ``kernel`` brings that version's behaviour (for_kernel),
        the other fields override it."""
        fields = dict(fields)
        if "kernel" in fields:
            return cls.for_kernel(str(fields.pop("kernel")), **fields)
        return cls(**fields)

    @classmethod
    def from_host(cls, sysfs: str = "/sys/kernel/mm/transparent_hugepage") -> "Config":
        """The running kernel's settings: its version and architecture, THP enabled/defrag,
        use_zero_page, the per-size enabled knobs, RAM size and max_map_count (Linux)."""
        import os
        import platform

        def bracketed(path):
            with open(path) as f:
                words = f.read().split()
            return next(w[1:-1] for w in words if w.startswith("["))

        release = platform.release()
        version = ".".join(release.split(".")[:2])
        hugepages = {}
        for kb in HUGEPAGE_SIZES_KB:
            path = f"{sysfs}/hugepages-{kb}kB/enabled"
            hugepages[kb] = bracketed(path) if os.path.exists(path) else "never"
        with open(f"{sysfs}/use_zero_page") as f:
            use_zero_page = f.read().strip() == "1"
        with open("/proc/meminfo") as f:
            mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        with open("/proc/sys/vm/max_map_count") as f:
            max_map_count = int(f.read())
        khugepaged = {}
        for knob in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared", "pages_to_scan"):
            path = f"{sysfs}/khugepaged/{knob}"
            if os.path.exists(path):
                with open(path) as f:
                    khugepaged[f"khugepaged_{knob}"] = int(f.read())
        if os.path.exists(f"{sysfs}/shmem_enabled"):
            mode = bracketed(f"{sysfs}/shmem_enabled")
            if mode in SHMEM_ENABLED:               # "deny" and "force" are not modelled
                khugepaged["shmem_enabled"] = mode
        if os.path.exists(f"{sysfs}/shrink_underused"):
            with open(f"{sysfs}/shrink_underused") as f:
                khugepaged["shrink_underused"] = f.read().strip() == "1"

        arch = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
        if arch is None:
            raise ValueError(f"Config.from_host: architecture {platform.machine()!r} is not modelled")
        return cls.for_kernel(
            version, arch=arch, thp=bracketed(f"{sysfs}/enabled"), defrag=bracketed(f"{sysfs}/defrag"),
            use_zero_page=use_zero_page, hugepages=hugepages,
            memory=mem_kb * 1024 // (2 * MiB) * (2 * MiB), max_map_count=max_map_count, **khugepaged)

    # ---- derived views used by the core -------------------------------------------------

    def pmd_thp_modes(self):
        """(always, madvise): whether order 9 is enabled for every VMA / for VM_HUGEPAGE VMAs."""
        mode = self.hugepages[2048]
        if mode == "inherit":
            mode = self.thp
        return mode == "always", mode in ("always", "madvise")

    def mthp_modes(self):
        """(always, madvise): bitmasks of the orders 2..8 enabled for every VMA / for
        VM_HUGEPAGE VMAs (R19), "inherit" resolved against the top-level mode."""
        always = madvise = 0
        for kb in HUGEPAGE_SIZES_KB[:-1]:
            mode = self.hugepages[kb]
            if mode == "inherit":
                mode = self.thp
            order = (kb // 4).bit_length() - 1
            if mode == "always":
                always |= 1 << order
            elif mode == "madvise":
                madvise |= 1 << order
        return always, madvise

    def mthp_enabled(self):
        """The sizes below 2 MiB whose per-size knob can enable them."""
        out = []
        for kb in HUGEPAGE_SIZES_KB[:-1]:
            mode = self.hugepages[kb]
            if mode == "inherit":
                mode = self.thp
            if mode != "never":
                out.append(kb)
        return out


def _rebuild_config(kwargs):
    return Config(**kwargs)
