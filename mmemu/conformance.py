"""Run the scenario library on the emulator and on this machine's kernel, and compare.

``mmemu conformance`` prints one line per scenario: whether the two agree, and for a
disagreement the first step and field that differ, side by side.

* After every step: the outcome (ok, errno, SIGSEGV), the page states, the faults and the VmPTE
  change of the step, and, while a forked child lives, the child's page states and faults.
* A step that runs out of memory ("OOM") ends the scenario on both sides: on the host the
  memcg OOM killer has killed the worker.
* At the end: the VMAs, the smaps of each, Rss/AnonHugePages, and the counters a real machine
  shows exactly (mmemu.scenarios.host_view: the thp_* events, the 2048 kB stats,
  nr_anon_transparent_hugepages and khugepaged's pages_collapsed; thp_scan_exceed_* only as
  happened or not, since khugepaged's passes on the host are not counted exactly).
* Rows with expected values (ROWS, ISSUE4_ROWS, EXTRA_ROWS) also hold the host to them.

Statuses: "agrees"; "differs" (emulator and host part); "host differs" (the host does not show
the row's expected values); "pending" (the emulator lacks a feature the scenario uses:
NotImplementedError or a missing method; the host side still runs and is held to the expected
values); "skipped" (needs settings the host cannot be given here).

The host is a live machine: the THP counters are system-wide, khugepaged and the shrinkers run
for everyone, and a DAMON monitor (kdamond, as on the machines mmemu is developed on) clears the
accessed bits of the pages it samples, so smaps' Referenced may drop at any moment.  A scenario
that parts is therefore played once more on the host before it is reported (``host_retries``).
"""
from __future__ import annotations

import dataclasses

from .config import Config
from .errors import OutOfMemory, SegmentationFault, SyscallError
from .mm import MM
from .scenarios import (BEFORE, EXTRA_ROWS, HOST_ORACLE_SCENARIOS, ISSUE4_ROWS, ISSUE5_ROWS, NO_ANCHOR, OFFSETS, PAGE, ROWS,
                        Run, describe, host_view, mismatches, needs)

#: where both sides lay a scenario out: an empty, 512 GiB-aligned part of the address space
BASE = 0x500000000000
#: the knobs a scenario may set; it runs only when they equal the host's, or can be given to it
KNOBS = ("thp", "hugepages", "use_zero_page", "zero_page", "huge_zero_write", "pt_reclaim",
         "mmap_thp_align", "arch", "khugepaged_max_ptes_none", "khugepaged_max_ptes_swap",
         "khugepaged_max_ptes_shared", "khugepaged_pages_to_scan", "shrink_underused",
         "remap_zero_subpages", "reuse_large_folios", "shmem_enabled")

STATUSES = ("agrees", "differs", "host differs", "pending", "skipped")


@dataclasses.dataclass
class Result:
    name: str
    status: str          # one of STATUSES
    detail: str = ""


class EmulatorLacks(Exception):
    """The emulator does not have a feature a scenario uses (yet)."""


def play(mm, name, length, hp, steps, row=None, before=None):
    """(per step: (step, outcome, page states, faults, VmPTE change, child view), end-of-run
    figures, how the run differs from ``row``'s expected values) of one scenario.
    ``before``: the steps before the mapping is made (default: the library's BEFORE)."""
    run = Run(mm, length, hp, offset=OFFSETS.get(name, 0), before=BEFORE.get(name, ()) if before is None else before,
              base=BASE, anchor=name not in NO_ANCHOR)
    run.errors = []
    trail = []
    try:
        for step in steps:
            faults_before = run.faults()
            pte_before = run.vmpte_delta()
            child_before = run.child.rusage["min_flt"] if run.child is not None else 0
            try:
                run.step(*step)
                outcome = "ok"
            except SyscallError as exc:
                outcome = f"errno {exc.errname}"
                run.errors.append((step[0], exc.errname))
            except SegmentationFault as exc:
                outcome = f"SIGSEGV at page {(exc.address - run.addr) // PAGE}"
            except OutOfMemory:
                # the OOM killer ends the process (a host worker is gone): so does the scenario
                trail.append((step, "OOM", None, None, None, None))
                return trail, {"end": "killed by the OOM killer"}, []
            except (NotImplementedError, AttributeError) as exc:
                if isinstance(mm, MM) or getattr(mm, "_emulated", False):
                    raise EmulatorLacks(f"{step[0]}: {exc}") from exc
                raise
            # the counters first: reading page states allocates (and may add page tables) on a host
            faults, pte = run.faults() - faults_before, run.vmpte_delta() - pte_before
            child = None
            if run.child is not None:
                child = (describe(run.child.page_states(run.addr, run.length)),
                         run.child.rusage["min_flt"] - (0 if step[0] == "fork" else child_before))
            trail.append((step, outcome, describe(run.states()), faults, pte, child))
        maps = [(s, e) for s, e, _, _ in run.mm.maps() if e > run.addr and s < run.addr + run.length]
        end = {
            "VMAs": [(s - run.addr, e - run.addr, perms[:3]) for s, e, perms, _ in run.mm.maps()
                     if e > run.addr and s < run.addr + run.length],
            "smaps": [run.mm.smaps(s) for s, _ in maps],
            "Rss/AnonHugePages": run.rss_ahp(),
            "counters": host_view(run.deltas()),
        }
        wrong = mismatches(run, row, host=True) if row is not None else []
    finally:
        if run.child is not None:
            run.child.close()
    return trail, end, wrong


def _dict_difference(ours, theirs):
    """The keys where two dicts (or lists of dicts, as smaps of several VMAs) part, as text."""
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        parts = [f"[{i}] {d}" for i, (a, b) in enumerate(zip(ours, theirs)) if (d := _dict_difference(a, b))]
        return "; ".join(parts)
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = [k for k in {**ours, **theirs} if ours.get(k) != theirs.get(k)]
        return ", ".join(f"{k} emulator {ours.get(k)} | host {theirs.get(k)}" for k in keys)
    return f"emulator {ours} | host {theirs}" if ours != theirs else ""


def first_difference(emulated, real):
    """Where two plays part, as text, or "" if they agree."""
    for (step, outcome, states, faults, pte, child), (_, r_outcome, r_states, r_faults, r_pte, r_child) in zip(
            emulated[0], real[0]):
        if outcome != r_outcome:
            return f"after {step}: outcome emulator {outcome} | host {r_outcome}"
        if states != r_states:
            return f"after {step}: page states emulator {states} | host {r_states}"
        if faults != r_faults:
            return f"after {step}: faults emulator {faults} | host {r_faults}"
        if pte != r_pte:
            return f"after {step}: VmPTE change emulator {pte} kB | host {r_pte} kB"
        if child != r_child:
            return f"after {step}: child (states, faults) emulator {child} | host {r_child}"
    for key in emulated[1]:
        if emulated[1][key] != real[1][key]:
            return f"at the end: {key} {_dict_difference(emulated[1][key], real[1][key])}"
    return ""


def _setting(knob, want, host):
    if knob == "hugepages":
        return ", ".join(f"hugepages-{kb}kB={mode}" for kb, mode in want.items() if host[kb] != mode)
    return f"{knob}={want}"


def compare(name, config, length, hp, steps, host_config, row=None, change_settings=None, before=None,
            host_retries=1):
    """Play one scenario on both sides (``row``: its expected values, held to the host).
    A run that parts is played again on the host, up to ``host_retries`` times: an agreement
    then is reported as "agrees", with the first run's difference in the detail.
    Settings the host does not have are applied for the scenario and restored
    (mmemu.host.host_settings) when ``change_settings`` (default: when running as root) and they
    are sysfs knobs; otherwise the scenario is skipped."""
    import os

    from .host import SETTABLE, HostMM, host_settings
    want = Config(**config)
    changed = [k for k in KNOBS if getattr(want, k) != getattr(host_config, k)]
    if change_settings is None:
        change_settings = os.geteuid() == 0
    settable = set(SETTABLE) | {"hugepages", "shmem_enabled"}
    if changed and not (change_settings and set(changed) <= settable):
        return Result(name, "skipped", "needs host settings " + ", ".join(
            _setting(k, getattr(want, k), getattr(host_config, k)) for k in changed))
    target = dataclasses.replace(host_config, **{k: getattr(want, k) for k in changed})
    memcg = any(s[0] == "memory_headroom" for s in steps)

    def play_host():
        # before the emulator: no emulator's arrays are then in this process to be copied by forks
        with host_settings(target), HostMM(memcg=memcg) as host:
            return play(host, name, length, hp, steps, row, before)

    real = play_host()
    try:
        emulated = play(MM(dataclasses.replace(target, memory=16 << 30)), name, length, hp, steps, before=before)
        lacks = ""
    except (EmulatorLacks, NotImplementedError) as exc:
        emulated, lacks = None, str(exc)
    result = _judge(name, steps, row, emulated, lacks, real)
    for _ in range(host_retries):
        if result.status not in ("differs", "host differs"):
            break
        # the host is a live machine: another process, a shrinker or kswapd may have acted
        # inside the run.  The emulator is deterministic, so only the host is played again; a
        # difference the model has shows the same way every time.
        again = _judge(name, steps, row, emulated, lacks, play_host())
        if again.status == "agrees":
            return dataclasses.replace(again, detail=f"agreed when the host was played again (first run: "
                                                     f"{result.status}: {result.detail})")
        result = again
    return result


def _judge(name, steps, row, emulated, lacks, real):
    if real[2]:
        return Result(name, "host differs", "host vs expected: " + "; ".join(real[2]))
    if emulated is None:
        uses = ", ".join(needs(steps))
        return Result(name, "pending", f"emulator lacks {uses or 'a feature'} ({lacks}); host "
                                       + ("as expected" if row is not None else "ran"))
    where = first_difference(emulated, real)
    return Result(name, "differs" if where else "agrees", where)


def cases():
    """Every scenario: (name, config, length, hp, steps, expected row or None)."""
    out = [(*r[:5], r) for r in ROWS + ISSUE4_ROWS + EXTRA_ROWS + ISSUE5_ROWS]
    out += [(*s, None) for s in HOST_ORACLE_SCENARIOS]
    return out


def run_all(progress=None, only=None):
    """Compare every scenario (``only``: names or ids to keep); ``progress(i, n, name)`` is
    called before each."""
    from .scenarios import short
    host_config = Config.from_host()
    todo = [c for c in cases() if not only or c[0] in only or short(c[0]) in only]
    results = []
    for i, (name, config, length, hp, steps, row) in enumerate(todo):
        if progress:
            progress(i, len(todo), name)
        results.append(compare(name, config, length, hp, steps, host_config, row))
    return results


def format_table(results):
    width = max(len(r.name) for r in results)
    lines = [f"{'scenario':<{width}}  {'result':<12}  first difference / reason", "-" * (width + 60)]
    lines += [f"{r.name:<{width}}  {r.status:<12}  {r.detail}" for r in results]
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
