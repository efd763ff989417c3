"""The scenario library on the emulator and on this machine's real kernel (mmemu.host.HostMM).

After every step the outcome (ok, errno, SIGSEGV), the page states, the faults and the VmPTE
change of that step, and a forked child's page states and faults, must be identical; at the end
the VMAs, the smaps of each, and the counters a real machine shows exactly (mmemu.conformance).
Rows with expected values hold the host to them too.  Scenarios that need other THP or
khugepaged settings get them for their run (root; restored after, checked by the last test);
those that need a kernel version's behaviour the host lacks are skipped; those whose features
the emulator lacks yet are "pending" (the host side still runs and is checked).  Skipped where the host cannot show page states (not Linux, not root,
no PAGEMAP_SCAN).
"""
import warnings

import numpy as np
import pytest

from mmemu import ClosedError, Config, SegmentationFault, _host, conformance
from mmemu.conformance import STATUSES, cases, format_table, run_all
from mmemu.host import HostMM, host_settings, host_supported
from mmemu.scenarios import EXTRA_ROWS, HOST_ORACLE_SCENARIOS, ISSUE4_ROWS, ISSUE5_ROWS, MB, ROWS, short

SUPPORTED, WHY = host_supported()
pytestmark = pytest.mark.skipif(not SUPPORTED, reason=WHY)


#: scenarios where the emulator is known to part from the host (none at present; C4, L4 and L5,
#: MADV_PAGEOUT of a whole THP, were until the model followed what the host showed)
EMULATOR_DIFFERS = set()


#: the result of each scenario played by a test above the table's, by name
PLAYED = {}


def compare(name, *args, **kwargs):
    """conformance.compare, remembered for the table's test; a run that agreed only when the host
    was played again is reported as a warning (the host was disturbed, or is not deterministic)."""
    result = PLAYED[name] = conformance.compare(name, *args, **kwargs)
    if result.status == "agrees" and result.detail:
        warnings.warn(f"{name}: {result.detail}")
    return result


@pytest.fixture(scope="module")
def host_config():
    return Config.from_host()


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_scenario_agrees_with_the_host(row, host_config):
    result = compare(*row[:5], host_config, row)
    if result.status == "skipped":
        pytest.skip(result.detail)
    assert result.status == "agrees", result.detail


@pytest.mark.parametrize("scenario", HOST_ORACLE_SCENARIOS, ids=[short(s[0]) for s in HOST_ORACLE_SCENARIOS])
def test_host_oracle_scenario_agrees(scenario, host_config):
    result = compare(*scenario, host_config)
    assert result.status == "agrees", result.detail


@pytest.mark.parametrize("row", ISSUE4_ROWS + EXTRA_ROWS, ids=[short(r[0]) for r in ISSUE4_ROWS + EXTRA_ROWS])
def test_issue4_scenario(row, host_config):
    # the host always shows the row's values; the emulator agrees with it once it has the
    # features the scenario uses ("pending" until then)
    result = compare(*row[:5], host_config, row)
    if short(row[0]) in EMULATOR_DIFFERS and result.status == "differs":
        pytest.xfail(result.detail)
    assert result.status in ("agrees", "pending"), result.detail


@pytest.mark.parametrize("row", ISSUE5_ROWS, ids=[short(r[0]) for r in ISSUE5_ROWS])
def test_issue5_scenario(row, host_config):
    # mTHP, shared memory and the memory cgroup, measured on the 6.18 host
    result = compare(*row[:5], host_config, row)
    assert result.status == "agrees", result.detail


def test_the_table_reports_every_scenario(monkeypatch):
    # the scenarios the tests above played are not played again
    monkeypatch.setattr(conformance, "compare",
                        lambda name, *args, **kwargs: PLAYED.get(name) or compare(name, *args, **kwargs))
    results = run_all()
    assert len(results) == len(cases())
    assert not [r for r in results if r.status == "host differs"
                or (r.status == "differs" and short(r.name) not in EMULATOR_DIFFERS)]
    assert format_table(results).splitlines()[-1] == ", ".join(
        f"{sum(r.status == s for r in results)} {s}" for s in STATUSES)


def test_run_all_keeps_the_scenarios_asked_for():
    assert [r.name for r in run_all(only={"S1", "K1"})] == ["S1", "K1 max_ptes_none 255: 256 none PTEs"]


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


def test_hostmm_mremap_moves_ownership_with_the_mapping():
    with HostMM() as host:
        a = host.mmap(2 * MB, addr=0x500000000000, fixed=True)
        host.write(a)
        b = host.mremap(a, 2 * MB, 4 * MB, maymove=True, new_addr=a + 64 * MB)
        assert b == a + 64 * MB and host.page_states(b, 4096).tolist() == [3]
        with pytest.raises(SegmentationFault):         # the old range is no longer ours
            host.read(a)
        assert host.mremap(b, 4 * MB, 1 * MB) == b
        assert [(s - b, e - b) for s, e, _, _ in host.maps()] == [(0, 1 * MB)]
        with pytest.raises(ValueError):                # MREMAP_FIXED onto memory not ours
            host.mremap(b, 1 * MB, 1 * MB, True, host._drain_page)


def test_hostmm_writes_and_atomics_leave_non_zero_contents():
    # a folio split maps zero-filled subpages to the zeropage (R52): a written page must not be zero
    with HostMM() as host:
        a = host.mmap(2 * MB)
        host.madvise(a, 2 * MB, "hugepage")
        host.write(a)
        host.atomic(a + 4096)
        host.madvise(a, 1 * MB, "cold")                    # splits the THP
        assert host.page_states(a, 3 * 4096).tolist() == [3, 3, 1]


def test_khugepaged_scan_waits_for_full_passes_and_restores_the_sleep():
    path = "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"
    before = open(path).read()
    with HostMM() as host:
        start = host.khugepaged["full_scans"]
        host.khugepaged_scan(full_scans=2)
        assert host.khugepaged["full_scans"] >= start + 3
        with pytest.raises(NotImplementedError):
            host.khugepaged_scan(pages=512)
    assert open(path).read() == before


def test_host_settings_apply_the_khugepaged_knobs(host_config):
    other = host_config.replace(khugepaged_max_ptes_none=100, khugepaged_max_ptes_shared=7,
                                shrink_underused=not host_config.shrink_underused)
    with host_settings(other):
        got = Config.from_host()
        assert (got.khugepaged_max_ptes_none, got.khugepaged_max_ptes_shared, got.shrink_underused) == (
            100, 7, not host_config.shrink_underused)
    assert Config.from_host() == host_config


def test_hostchild_runs_system_calls():
    with HostMM() as host:
        a = host.mmap(2 * MB)
        host.write(a)
        with host.fork() as child:
            child.madvise(a, 4096, "dontneed")
            assert child.page_states(a, 4096).tolist() == [0]
            assert host.page_states(a, 4096).tolist() == [3]
            assert child.rusage["min_flt"] == 0 and "VmPTE" in child.status


def test_a_run_killed_inside_host_settings_puts_the_settings_back(host_config, tmp_path):
    # a CI timeout or a kill ends a run with SIGTERM: the host must not keep the scenario's knobs
    import os
    import signal
    import subprocess
    import sys

    import mmemu
    code = ("import sys, time\n"
            "from mmemu import Config\n"
            "from mmemu.host import host_settings\n"
            "with host_settings(Config.from_host().replace(khugepaged_max_ptes_none=100)):\n"
            "    print('in', flush=True)\n"
            "    time.sleep(60)\n")
    # the mmemu this test imported (installed, or the built tree), not a source checkout in cwd
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(mmemu.__file__))}
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        assert worker.stdout.readline() == "in\n"
        assert Config.from_host().khugepaged_max_ptes_none == 100
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        worker.kill()
    assert Config.from_host() == host_config
