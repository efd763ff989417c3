"""The scenario library on the emulator and on this machine's real kernel (mmemu.host.HostMM).

After every step the page states and the faults of that step must be identical; at the end
smaps Rss / AnonHugePages and the changes of VmPTE, thp_fault_alloc and thp_split_pmd too
(mmemu.conformance).  Scenarios that need settings other than the host's are skipped until the
sysfs-changing runner exists; those that need a feature planned for a later issue are expected
to fail, with the reason.  Skipped where the host cannot show page states (not Linux, not root,
no PAGEMAP_SCAN).
"""
import numpy as np
import pytest

from mmemu import Config, SegmentationFault, _host
from mmemu.conformance import compare, format_table, run_all
from mmemu.host import HostMM, host_supported
from mmemu.scenarios import MB, PMD_SPLIT_ROWS, ROWS

SUPPORTED, WHY = host_supported()
pytestmark = pytest.mark.skipif(not SUPPORTED, reason=WHY)


@pytest.fixture(scope="module")
def host_config():
    return Config.from_host()


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_scenario_agrees_with_the_host(row, host_config):
    result = compare(*row[:5], host_config)
    if result.status == "skipped":
        pytest.skip(result.detail)
    assert result.status == "agrees", result.detail


@pytest.mark.parametrize("name,steps", PMD_SPLIT_ROWS, ids=[r[0] for r in PMD_SPLIT_ROWS])
def test_split_scenario_is_expected_to_differ_until_issue_4(name, steps, host_config):
    result = compare(name, {}, 2 * MB, True, [("write", 0)] + list(steps), host_config,
                     "THP PMD split arrives with issue 4")
    assert result.status == "expected to differ" and "issue 4" in result.detail


def test_the_table_reports_every_scenario():
    results = run_all()
    assert len(results) == len(ROWS) + len(PMD_SPLIT_ROWS)
    assert not [r for r in results if r.status == "differs"]
    assert format_table(results).splitlines()[-1].startswith(
        f"{sum(r.status == 'agrees' for r in results)} agrees")


def test_hostmm_leaves_the_process_as_it_found_it(host_config):
    before = _host.prctl(42, 0, 0)
    with HostMM() as host:
        a = host.mmap(2 * MB)
        host.prctl("PR_SET_THP_DISABLE", 1)
        host.write(a)
    assert _host.prctl(42, 0, 0) == before
    assert Config.from_host() == host_config


def test_hostmm_never_touches_memory_it_did_not_map():
    with HostMM() as host:
        foreign = np.zeros(4096, np.uint8)              # the interpreter's memory
        with pytest.raises(SegmentationFault):
            host.write(foreign.ctypes.data)
        with pytest.raises(ValueError):
            host.munmap(foreign.ctypes.data & ~4095, 4096)
        assert not foreign.any()


def test_hostmm_counts_the_faults_of_its_accesses_exactly():
    with HostMM() as host:
        a = host.mmap(2 * MB)
        host.madvise(a, 2 * MB, "nohugepage")
        assert host.access(a + np.arange(0, 2 * MB, 4096, dtype=np.uint64), 1).sum() == 512
        assert host.rusage["min_flt"] == 512
        assert host.access(a + np.arange(0, 2 * MB, 4096, dtype=np.uint64), 2).sum() == 0
