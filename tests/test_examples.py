"""The examples run (small sizes) and print the numbers the kernel's rules give."""
import os
import subprocess
import sys

import pytest

import mmemu

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(mmemu.__file__)), EXAMPLES]))
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), "--small", *args], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines(), out.stdout


def rows_of(stdout):
    """The printed table as lists of cells (split on runs of 2+ spaces)."""
    import re
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()[2:] if line.strip()]


def test_arm64_atomics_example_prints_one_fault_on_x86_and_two_on_arm64():
    _, out = run_example("arm64_atomics.py")
    faults = {(r[0], r[1]): int(r[2]) for r in rows_of(out)}
    assert faults[("x86_64", "no")] == 1024 and faults[("arm64", "no")] == 2048
    assert faults[("arm64 + atomic_write_fault", "no")] == 1024
    assert faults[("arm64", "madvise")] == 4 and faults[("x86_64", "madvise")] == 2


def test_huge_zero_write_example_prints_splits_before_6_13():
    _, out = run_example("huge_zero_write.py")
    rows = {r[0]: r for r in rows_of(out)}
    assert rows["6.12"][3:6] == ["2048", "0", "4"] and rows["6.18"][3:6] == ["4", "4", "0"]


def test_populate_cost_example_prints_equal_faults_in_one_call():
    _, out = run_example("populate_cost.py")
    rows = {(r[0], r[1]): r for r in rows_of(out)}
    assert rows[("no", "populate_read")][2:4] == ["1", "4096"] and rows[("no", "touch: read")][3] == "4096"
    assert rows[("madvise", "populate_read")][6] == "1"            # the huge zeropage


def test_page_table_cost_example_prints_a_table_per_2m_touched():
    _, out = run_example("page_table_cost.py")
    rows = {(r[0], r[1]): r for r in rows_of(out)}
    assert rows[("no", "one page per 2M")][4] == "32" and rows[("madvise", "every 4K page")][5] == "32"


def test_jvm_pretouch_example_prints_the_cases():
    _, out = run_example("jvm_pretouch.py")
    rows = {r[0]: r for r in rows_of(out)}
    assert rows["arm64"][1] == "8" and rows["arm64, 6.12 (huge zeropage split)"][1] == str(4 * 513)


@pytest.mark.parametrize("name", ["arm64_atomics.py", "jvm_pretouch.py"])
def test_an_example_refuses_a_bad_size(name):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(mmemu.__file__)), EXAMPLES]))
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), "--size", "lots"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "not a size" in out.stderr and "Traceback" not in out.stderr


def test_qemu_read_before_write_example_shows_zero_pages_cost_nothing_on_anon_memory():
    _, out = run_example("qemu_read_before_write.py")
    rss = {(r[0], r[1]): int(r[2]) for r in rows_of(out)}
    assert rss[("anon", "precopy-write")] == 64 and rss[("anon", "precopy")] < 30
    assert rss[("memfd", "precopy")] == 64                   # shmem has no zeropage
    assert rss[("anon, 6.18", "precopy, zero pages scattered")] > rss[("anon, 6.12", "precopy, zero pages scattered")]
