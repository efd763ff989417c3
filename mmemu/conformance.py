"""Run the scenario library on the emulator and on this machine's kernel, and compare.

``mmemu conformance`` prints one line per scenario: whether the two agree, and for a
disagreement the first step and field that differ, side by side.  Scenarios that need kernel
settings other than the host's are listed as skipped (changing them needs the sysfs runner of
issue 3); those that need a feature planned for a later issue are listed as expected to differ.
"""
from __future__ import annotations

import dataclasses

from .config import Config
from .mm import MM
from .errors import OutOfMemory, SegmentationFault, SyscallError
from .scenarios import (BEFORE, COLLAPSE_SCENARIOS, FORK_SCENARIOS, HOST_ORACLE_SCENARIOS, MB, NO_ANCHOR,
                        OFFSETS, PAGE, PMD_SPLIT_ROWS, ROWS, Run,
                        describe)

#: where both sides lay a scenario out: an empty, 512 GiB-aligned part of the address space
BASE = 0x500000000000
#: the knobs a scenario may set; it runs only when they equal the host's
KNOBS = ("thp", "hugepages", "use_zero_page", "zero_page", "huge_zero_write", "pt_reclaim",
         "mmap_thp_align", "arch")


@dataclasses.dataclass
class Result:
    name: str
    status: str          # "agrees", "differs", "skipped" or "expected to differ"
    detail: str = ""


def play(mm, name, length, hp, steps):
    """(per step: (step, outcome, page states, faults and VmPTE change of the step), end-of-run
    figures) of one scenario."""
    run = Run(mm, length, hp, offset=OFFSETS.get(name, 0), before=BEFORE.get(name, ()), base=BASE,
              anchor=name not in NO_ANCHOR)
    trail = []
    for step in steps:
        before = run.faults()
        pte_before = run.vmpte_delta()
        try:
            run.step(*step)
            outcome = "ok"
        except SyscallError as exc:
            outcome = f"errno {exc.errname}"
        except SegmentationFault as exc:
            outcome = f"SIGSEGV at page {(exc.address - run.addr) // PAGE}"
        except OutOfMemory:
            outcome = "OOM"
        # the counters first: reading page states allocates (and may add page tables) on a host
        faults, pte = run.faults() - before, run.vmpte_delta() - pte_before
        trail.append((step, outcome, describe(run.states()), faults, pte))
    vm = run.mm.vmstat
    end = {
        "VMAs": [(s - run.addr, e - run.addr, perms[:3]) for s, e, perms, _ in run.mm.maps()
                 if e > run.addr and s < run.addr + length],
        "smaps": [{k: v for k, v in run.mm.smaps(s).items() if k != "VmFlags"} | {"VmFlags": run.mm.smaps(s)["VmFlags"]}
                  for s, e, _, _ in run.mm.maps() if e > run.addr and s < run.addr + length],
        "Rss/AnonHugePages": run.rss_ahp(),
        "thp_fault_alloc": vm["thp_fault_alloc"] - run.base_vmstat["thp_fault_alloc"],
        "thp_split_pmd": vm["thp_split_pmd"] - run.base_vmstat["thp_split_pmd"],
    }
    return trail, end


def first_difference(emulated, real):
    """Where two plays part, as text, or "" if they agree."""
    for (step, outcome, states, faults, pte), (_, real_outcome, real_states, real_faults, real_pte) in zip(
            emulated[0], real[0]):
        if outcome != real_outcome:
            return f"after {step}: outcome emulator {outcome} | host {real_outcome}"
        if states != real_states:
            return f"after {step}: page states emulator {states} | host {real_states}"
        if faults != real_faults:
            return f"after {step}: faults emulator {faults} | host {real_faults}"
        if pte != real_pte:
            return f"after {step}: VmPTE change emulator {pte} kB | host {real_pte} kB"
    for key in emulated[1]:
        if emulated[1][key] != real[1][key]:
            return f"at the end: {key} emulator {emulated[1][key]} | host {real[1][key]}"
    return ""


def _setting(knob, want, host):
    if knob == "hugepages":
        return ", ".join(f"hugepages-{kb}kB={mode}" for kb, mode in want.items() if host[kb] != mode)
    return f"{knob}={want}"


def compare(name, config, length, hp, steps, host_config, expected_to_differ="", change_settings=None):
    """Play one scenario on both sides.  Settings the host does not have are applied for the
    scenario and restored (mmemu.host.host_settings) when ``change_settings`` (default: when
    running as root) and they are sysfs knobs; otherwise the scenario is skipped."""
    import os

    from .host import SETTABLE, HostMM, host_settings
    want = Config(**config)
    changed = [k for k in KNOBS if getattr(want, k) != getattr(host_config, k)]
    if change_settings is None:
        change_settings = os.geteuid() == 0
    settable = set(SETTABLE) | {"hugepages"}
    if changed and not (change_settings and set(changed) <= settable):
        return Result(name, "skipped", "needs host settings " + ", ".join(
            _setting(k, getattr(want, k), getattr(host_config, k)) for k in changed))
    target = dataclasses.replace(host_config, **{k: getattr(want, k) for k in changed})
    try:
        emulated = play(MM(dataclasses.replace(target, memory=16 << 30)), name, length, hp, steps)
    except NotImplementedError as exc:
        status = "expected to differ" if expected_to_differ else "differs"
        return Result(name, status, f"emulator: {exc}")
    with host_settings(target), HostMM() as host:
        real = play(host, name, length, hp, steps)
    where = first_difference(emulated, real)
    return Result(name, "differs" if where else "agrees", where)


def run_all(progress=None):
    """Compare every scenario; ``progress(i, n, name)`` is called before each."""
    host_config = Config.from_host()
    cases = [(r[0], r[1], r[2], r[3], r[4], "") for r in ROWS]
    cases += [(n, {}, 2 * MB, True, [("write", 0)] + list(s), "THP PMD split arrives with issue 4")
              for n, s in PMD_SPLIT_ROWS]
    cases += [(*s, "") for s in HOST_ORACLE_SCENARIOS]
    cases += [(*s, "MADV_COLLAPSE arrives with issue 4") for s in COLLAPSE_SCENARIOS]
    cases += [(*s, "fork arrives with issue 4") for s in FORK_SCENARIOS]
    results = []
    for i, (name, config, length, hp, steps, why) in enumerate(cases):
        if progress:
            progress(i, len(cases), name)
        results.append(compare(name, config, length, hp, steps, host_config, why))
    return results


def format_table(results):
    width = max(len(r.name) for r in results)
    lines = [f"{'scenario':<{width}}  {'result':<18}  first difference / reason", "-" * (width + 60)]
    lines += [f"{r.name:<{width}}  {r.status:<18}  {r.detail}" for r in results]
    counts = {s: sum(r.status == s for r in results) for s in ("agrees", "differs", "expected to differ", "skipped")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
