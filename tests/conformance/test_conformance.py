"""The same scenarios on the emulator and on this machine's real kernel (mmemu.host.HostMM).

After every step the page states and the faults of that step must be identical; at the end
smaps Rss / AnonHugePages, the change of VmPTE and of thp_fault_alloc / thp_split_pmd too.
Rows that need settings other than the host's are left to the sysfs-changing runner (issue 3);
rows that need a feature planned for a later issue are expected to fail, with the reason.

Skipped where the host cannot show page states (not Linux, not root, no PAGEMAP_SCAN).
"""
import dataclasses

import pytest

from mmemu import MM, Config
from mmemu.host import HostMM, host_supported
from scenario_dsl import MB, Run, describe
from test_scenarios import BEFORE, OFFSETS, ROWS, SPLIT_ROWS

SUPPORTED, WHY = host_supported()
pytestmark = pytest.mark.skipif(not SUPPORTED, reason=WHY)

#: where both sides lay the scenario out: an empty, 512 GiB-aligned part of the address space
BASE = 0x500000000000
#: the knobs a row may set; a row runs only when they equal the host's
KNOBS = ("thp", "hugepages", "use_zero_page", "zero_page", "huge_zero_write", "pt_reclaim",
         "mmap_thp_align", "arch")


def host_config():
    return Config.from_host() if SUPPORTED else Config()


def runnable(config):
    want, host = Config(**config), host_config()
    return all(getattr(want, k) == getattr(host, k) for k in KNOBS)


def play(mm, name, length, hp, steps):
    run = Run(mm, length, hp, offset=OFFSETS.get(name, 0), before=BEFORE.get(name, ()), base=BASE)
    trail = []
    for step in steps:
        before = run.faults()
        run.step(*step)
        trail.append((step, describe(run.states()), run.faults() - before))
    vm = run.mm.vmstat
    end = {
        "rss_ahp": run.rss_ahp(),
        "VmPTE": run.vmpte_delta(),
        "thp_fault_alloc": vm["thp_fault_alloc"] - run.base_vmstat["thp_fault_alloc"],
        "thp_split_pmd": vm["thp_split_pmd"] - run.base_vmstat["thp_split_pmd"],
    }
    return trail, end


def host_run(name, length, hp, steps):
    with HostMM() as host:
        return play(host, name, length, hp, steps)


CASES = [pytest.param(r, id=r[0], marks=() if runnable(r[1]) else pytest.mark.skip(
    reason="needs host settings " + ", ".join(f"{k}={v}" for k, v in r[1].items())))
    for r in ROWS]


@pytest.mark.parametrize("row", CASES)
def test_scenario_agrees_with_the_host(row):
    name, config, length, hp, steps = row[:5]
    emulated = play(MM(dataclasses.replace(host_config(), memory=16 << 30)), name, length, hp, steps)
    real = host_run(name, length, hp, steps)
    for (step, states, faults), (_, real_states, real_faults) in zip(emulated[0], real[0]):
        assert (states, faults) == (real_states, real_faults), f"{name} after {step}"
    assert emulated[1] == real[1], name


@pytest.mark.parametrize("name,steps", [pytest.param(
    n, s, id=n, marks=pytest.mark.xfail(raises=NotImplementedError, strict=True,
                                        reason="THP PMD split arrives with issue 4"))
    for n, s in SPLIT_ROWS])
def test_split_scenario_agrees_with_the_host(name, steps):
    steps = [("write", 0)] + list(steps)
    emulated = play(MM(dataclasses.replace(host_config(), memory=16 << 30)), name, 2 * MB, True, steps)
    assert emulated == host_run(name, 2 * MB, True, steps)


def test_hostmm_leaves_the_process_as_it_found_it():
    before = (host_config(), hostmm_prctl_state())
    with HostMM() as host:
        a = host.mmap(2 * MB)
        host.prctl("PR_SET_THP_DISABLE", 1)
        host.write(a)
    assert (host_config(), hostmm_prctl_state()) == before


def hostmm_prctl_state():
    from mmemu import _host
    return _host.prctl(42, 0, 0)


def test_hostmm_never_touches_memory_it_did_not_map():
    import numpy as np
    from mmemu import SegmentationFault
    with HostMM() as host:
        foreign = np.zeros(4096, np.uint8)              # the interpreter's memory
        with pytest.raises(SegmentationFault):
            host.write(foreign.ctypes.data)
        with pytest.raises(ValueError):
            host.munmap(foreign.ctypes.data & ~4095, 4096)
        assert not foreign.any()
