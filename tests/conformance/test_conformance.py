"""The scenario library on the emulator and on this machine's real kernel (mmemu.host.HostMM).

After every step the outcome (ok, errno, SIGSEGV), the page states, the faults and the VmPTE
change of that step must be identical; at the end the VMAs, the smaps of each, and the changes
of thp_fault_alloc and thp_split_pmd too (mmemu.conformance).  Scenarios that need other THP settings get them for their run (root; restored
after, checked by the last test); those that need a kernel version's behaviour the host lacks
are skipped; those that need a feature planned for a later issue are expected to differ, with
the reason.  Skipped where the host cannot show page states (not Linux, not root,
no PAGEMAP_SCAN).
"""
import numpy as np
import pytest

from mmemu import ClosedError, Config, SegmentationFault, _host
from mmemu.conformance import compare, format_table, run_all
from mmemu.host import HostMM, host_settings, host_supported
from mmemu.scenarios import COLLAPSE_SCENARIOS, FORK_SCENARIOS, HOST_ORACLE_SCENARIOS, MB, PMD_SPLIT_ROWS, ROWS

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


@pytest.mark.parametrize("scenario", HOST_ORACLE_SCENARIOS, ids=[s[0].split()[0] for s in HOST_ORACLE_SCENARIOS])
def test_host_oracle_scenario_agrees(scenario, host_config):
    result = compare(*scenario, host_config)
    assert result.status == "agrees", result.detail


@pytest.mark.parametrize("name,steps", PMD_SPLIT_ROWS, ids=[r[0] for r in PMD_SPLIT_ROWS])
def test_split_scenario_is_expected_to_differ_until_issue_4(name, steps, host_config):
    result = compare(name, {}, 2 * MB, True, [("write", 0)] + list(steps), host_config,
                     "THP PMD split arrives with issue 4")
    assert result.status == "expected to differ" and "issue 4" in result.detail


@pytest.mark.parametrize("scenario", COLLAPSE_SCENARIOS + FORK_SCENARIOS,
                         ids=[s[0] for s in COLLAPSE_SCENARIOS + FORK_SCENARIOS])
def test_collapse_and_fork_scenarios_are_expected_to_differ_until_issue_4(scenario, host_config):
    result = compare(*scenario, host_config, "needs MADV_COLLAPSE or fork (issue 4)")
    assert result.status == "expected to differ" and "issue 4" in result.detail


def test_the_table_reports_every_scenario():
    results = run_all()
    assert len(results) == (len(ROWS) + len(PMD_SPLIT_ROWS) + len(HOST_ORACLE_SCENARIOS)
                            + len(COLLAPSE_SCENARIOS) + len(FORK_SCENARIOS))
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


def test_host_settings_are_applied_and_always_restored(host_config):
    other = "always" if host_config.thp != "always" else "never"
    with pytest.raises(RuntimeError):
        with host_settings(host_config.replace(thp=other, use_zero_page=not host_config.use_zero_page)):
            changed = Config.from_host()
            assert (changed.thp, changed.use_zero_page) == (other, not host_config.use_zero_page)
            raise RuntimeError("a step failed")
    assert Config.from_host() == host_config


def test_zz_the_suite_leaves_the_host_settings_as_it_found_them(host_config):
    # runs last in this file: every scenario above that changed a setting put it back
    assert Config.from_host() == host_config


def test_hostmm_fork_shares_pages_copy_on_write():
    # S30 on the real kernel: the child's write copies 4K out of the shared THP; after the child
    # exits the parent's write reuses the whole THP (one fault, no split)
    with HostMM() as host:
        a = host.mmap(2 * MB)
        host.madvise(a, 2 * MB, "hugepage")
        host.write(a)
        with host.fork() as child:
            assert child.write(a + 4096) == 1
            assert child.page_states(a, 2 * 4096).tolist() == [4, 3]      # LARGE, ANON
            assert host.page_states(a, 2 * 4096).tolist() == [5, 5]       # THP
        assert host.write(a + 4096) == 1
        assert host.smaps(a)["AnonHugePages"] == 2048


def test_hostmm_child_reports_errors_and_exits():
    with HostMM() as host:
        a = host.mmap(4096, "r")
        child = host.fork()
        with pytest.raises(SegmentationFault):
            child.write(a)
        child.close()
        with pytest.raises(ClosedError):
            child.read(a)
