"""mmemu's pytest plugin and mmemu.testing: a project pins its memory behaviour in its tests."""
import importlib.metadata

import pytest

from mmemu import MM, Config
from mmemu.testing import assert_pages, counting, expect_counters, expect_faults, page_counts

pytest_plugins = ["pytester"]
MB = 1 << 20


def _plugin_args():
    """-p the plugin unless it is installed (then its entry point loads it already)."""
    installed = any(ep.value == "mmemu.pytest_plugin" for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "mmemu.pytest_plugin"]


def test_the_mm_fixture_takes_ini_command_line_and_marker_settings(pytester):
    pytester.makeini("[pytest]\nmmemu_config =\n    arch=arm64\n    thp=always\n")
    pytester.makepyfile('''
        import pytest
        from mmemu.testing import assert_pages, expect_faults

        def test_ini(mm, mmemu_config):
            assert mmemu_config.arch == "arm64" and mmemu_config.thp == "always"
            a = mm.mmap(2 << 20)
            with expect_faults(mm, 2):               # arm64: read fault, then write fault
                mm.atomic(a)
            assert_pages(mm, a, 2 << 20, ZERO=511, ANON=1)     # 6.12 splits the huge zeropage

        @pytest.mark.mmemu(arch="x86_64")
        def test_marker(mm):
            a = mm.mmap(2 << 20)
            with expect_faults(mm, 1):
                mm.atomic(a)

        def test_command_line(mmemu_config):
            assert mmemu_config.huge_zero_write == "split"     # kernel=6.12 from --mmemu-set
    ''')
    result = pytester.runpytest(*_plugin_args(), "--mmemu-set", "kernel=6.12")
    result.assert_outcomes(passed=3)


def test_a_failing_expectation_says_what_happened(pytester):
    pytester.makepyfile('''
        from mmemu.testing import expect_faults
        def test_wrong(mm):
            a = mm.mmap(4096)
            with expect_faults(mm, 2):
                mm.write(a)
    ''')
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expected 2 page faults, took 1*"])


def test_a_bad_setting_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(mm):\n    pass\n")
    result = pytester.runpytest(*_plugin_args(), "--mmemu-set", "arch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*mmemu: a setting is KEY=VALUE*"])


def test_assert_pages_and_counters_pass_and_fail_as_the_kernel_did():
    mm = MM(Config(arch="arm64"))
    a = mm.mmap(2 * MB)
    mm.madvise(a, 2 * MB, "hugepage")
    with expect_counters(mm, thp_fault_alloc=1, thp_zero_page_alloc=1, **{"2048kB/anon_fault_alloc": 1}) as c:
        mm.atomic(a)
    assert c.faults == 2 and c.delta("RssAnon") == 2048 and c.delta("nosuch") == 0
    assert_pages(mm, a, 2 * MB, THP=512)
    assert page_counts(mm, a, 2 * MB) == {"THP": 512}
    with pytest.raises(AssertionError, match="expected.*ANON.*got.*THP"):
        assert_pages(mm, a, 2 * MB, ANON=512)
    with pytest.raises(AssertionError, match="thp_split_pmd: expected \\+1, got \\+0"):
        with expect_counters(mm, thp_split_pmd=1):
            mm.write(a)
    with pytest.raises(ValueError, match="unknown page state"):
        assert_pages(mm, a, 2 * MB, HUGE=1)
    with counting(mm) as c:
        mm.munmap(a, 4096)
    assert c.delta("thp_split_pmd") == 1
