"""Scenario files: a scenario of the library's kind, written down by a user, for ``mmemu run``.

TOML (or JSON with the same keys)::

    name = "arm64: atomic on an untouched THP range"
    length = "2M"              # the mapping (bytes, or with K/M/G)
    hugepage = true            # MADV_HUGEPAGE on it
    mapping = "private"        # or "shared" (MAP_SHARED|MAP_ANONYMOUS), or "memfd"
    file_pages = 512           # memfd only: its size in pages (default: the mapping's)
    prctl_thp_disable = 0      # PR_SET_THP_DISABLE before mapping: 0, 1, or 2 (except advised)

    [config]                   # mmemu.Config fields; kernel = "6.12" brings that version's behaviour
    arch = "arm64"

    steps = [                  # pages are counted from the mapping's start
      ["atomic", 0],
      ["read", 5],
      ["madvise", "dontneed", 0, 512],
      ["mprotect", 0, 512, "r"],
      ["fork"], ["child", "write", 3],
      ["khugepaged", 1], ["drop_caches"],
    ]

Steps are those of mmemu.scenarios.Run (read/write/atomic PAGE..., read_all/write_all FIRST
COUNT, an advice name FIRST COUNT, mprotect, munmap, mremap, map, fork, child, child_exit,
prctl, khugepaged, drop_caches, mlock, munlock, punch, fallocate, truncate, memory_headroom);
``["madvise", ADVICE, FIRST, COUNT]`` is accepted as a spelling of ``[ADVICE, FIRST, COUNT]``.
"""
from __future__ import annotations

import dataclasses
import json
import sys

from .config import Config

_MAPPINGS = ("private", "shared", "memfd")
_KEYS = {"name", "length", "hugepage", "mapping", "file_pages", "prctl_thp_disable", "config", "steps"}


@dataclasses.dataclass
class Scenario:
    name: str
    config: dict
    length: int
    hugepage: bool
    steps: list
    before: list


def load_scenario(path) -> Scenario:
    """Read and check a scenario file (.toml, or .json)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if str(path).endswith(".json"):
            data = json.loads(raw)
        else:
            import tomllib
            data = tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid scenario file: {exc}") from None
    return parse_scenario(data, str(path))


def parse_scenario(data: dict, where="scenario") -> Scenario:
    from .cli import parse_size
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a scenario is a table of keys")
    unknown = set(data) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_KEYS))})")
    length = parse_size(data.get("length", "2M"))
    if length <= 0 or length % 4096:
        raise ValueError(f"{where}: length must be a positive multiple of 4096")
    mapping = data.get("mapping", "private")
    if mapping not in _MAPPINGS:
        raise ValueError(f"{where}: mapping must be one of {', '.join(_MAPPINGS)}, not {mapping!r}")
    steps = data.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, list) and s and isinstance(s[0], str) for s in steps):
        raise ValueError(f"{where}: steps must be a list of [OP, ARGS...] lists")
    steps = [_normal_step(s) for s in steps]
    before = []
    if data.get("prctl_thp_disable"):
        flavour = data["prctl_thp_disable"]
        if flavour not in (1, 2):
            raise ValueError(f"{where}: prctl_thp_disable is 0, 1 or 2")
        before.append(("prctl", 1, 2 if flavour == 2 else 0))
    if mapping == "shared":
        before.append(("shared",))
    elif mapping == "memfd":
        before.append(("memfd", data["file_pages"]) if "file_pages" in data else ("memfd",))
    config = data.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config must be a table of Config fields")
    _config_of(config)                                  # checked now
    return Scenario(str(data.get("name", where)), config, length, bool(data.get("hugepage", False)),
                    steps, before)


def _normal_step(step):
    if step[0] == "madvise" and len(step) >= 2:
        return tuple([step[1], *step[2:]])
    return tuple(step)


def _config_of(fields: dict, overrides: dict | None = None) -> Config:
    fields = {**fields, **(overrides or {})}
    if "hugepages" in fields:
        fields["hugepages"] = {int(k): v for k, v in fields["hugepages"].items()}
    try:
        return Config.from_fields(fields)
    except TypeError as exc:
        raise ValueError(f"bad config: {exc}") from None


@dataclasses.dataclass
class Report:
    scenario: Scenario
    trail: list
    end: dict
    host: object = None          # a conformance Result when run with host=True

    @property
    def exit_status(self):
        return 1 if self.host is not None and self.host.status in ("differs", "host differs") else 0

    def as_dict(self):
        out = {"name": self.scenario.name,
               "steps": [{"step": list(step), "outcome": outcome, "pages": states, "faults": faults,
                          "vmpte_change_kb": pte} for step, outcome, states, faults, pte, _ in self.trail],
               "end": self.end}
        if self.host is not None:
            out["host"] = {"status": self.host.status, "detail": self.host.detail}
        return out

    def print(self, out=None):
        from .cli import print_table
        out = out or sys.stdout
        print(self.scenario.name, file=out)
        print_table([{"step": " ".join(map(str, step)), "outcome": outcome, "faults": "" if faults is None else faults,
                      "VmPTE +kB": "" if pte is None else pte, "pages": states or ""}
                     for step, outcome, states, faults, pte, _ in self.trail], out)
        counters = self.end.get("counters", {})
        if counters:
            print("\ncounters: " + ", ".join(f"{k} {v:+d}" for k, v in counters.items()), file=out)
        if "Rss/AnonHugePages" in self.end:
            rss, ahp = self.end["Rss/AnonHugePages"]
            print(f"Rss {rss} kB, AnonHugePages {ahp} kB", file=out)
        if self.host is not None:
            print(f"this kernel: {self.host.status}" + (f" ({self.host.detail})" if self.host.detail else ""),
                  file=out)

    def plot(self, path):
        from .workloads.result import WorkloadResult
        import numpy as np
        faults = np.cumsum([f or 0 for _, _, _, f, _, _ in self.trail])
        n = len(self.trail)
        timeline = {"done": np.arange(1, n + 1), "rss_kb": np.zeros(n, np.int64), "anon_kb": np.zeros(n, np.int64),
                    "shmem_kb": np.zeros(n, np.int64), "huge_kb": np.zeros(n, np.int64),
                    "pte_kb": np.cumsum([p or 0 for *_, p, _ in self.trail]), "faults": faults}
        WorkloadResult(self.scenario.name, {"unit": "steps"}, {}, timeline, {}).plot(path)


def run_scenario(scenario: Scenario, overrides: dict | None = None, host: bool = False) -> Report:
    """Play ``scenario`` on the emulator (and, with ``host``, on this kernel, compared)."""
    from .conformance import compare, play
    from .mm import MM
    config = _config_of(scenario.config, overrides)
    trail, end, _ = play(MM(config), scenario.name, scenario.length, scenario.hugepage, scenario.steps,
                         before=scenario.before)
    result = None
    if host:
        from .host import host_supported
        ok, why = host_supported()
        if not ok:
            raise RuntimeError(f"this machine cannot show page states: {why}")
        result = compare(scenario.name, config.as_dict(), scenario.length, scenario.hugepage, scenario.steps,
                         Config.from_host(), before=scenario.before)
    return Report(scenario, trail, end, result)
