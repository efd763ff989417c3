"""The command line: `mmemu demo` prints the table of the README."""
import os
import subprocess
import sys

import mmemu
from mmemu.demo import demo_rows, pressure_rows


def test_demo_rows_answer_the_arm64_atomics_questions():
    rows = {r["case"]: r for r in demo_rows()}
    assert rows["x86_64: atomic on an untouched page"]["faults"] == "1"
    assert rows["arm64: atomic on an untouched page"]["faults"] == "2"
    assert rows["arm64 + atomic_write_fault: atomic"]["faults"] == "1"
    assert rows["arm64 THP: atomic on untouched 2M [6.13+]"]["pages"] == "512 THP"
    assert rows["arm64 THP: atomic on untouched 2M [<6.13]"]["pages"] == "511 ZERO + 1 ANON"
    assert rows["THP: read (huge zeropage), write [<6.13]"]["thp_split_pmd"] == 1


def test_pressure_rows_show_the_fallbacks_the_kernel_counts():
    rows = {r["case"]: r for r in pressure_rows()}
    assert rows["plenty of free memory"]["pages"] == "512 THP"
    assert rows["fragmented, defrag=never"]["thp_fault_fallback"] == 1
    assert rows["fragmented (movable), defrag=madvise"]["compact_stall/success"] == "1/1"
    assert rows["fragmented (unmovable), defrag=madvise"]["pages"] == "1 ANON"
    assert rows["fragmented, 64K mTHP enabled"]["pages"] == "16 LARGE"
    assert rows["memory.max 1M above usage"]["..._charge"] == 1
    assert rows["MAP_SHARED (shmem): read"]["Rss kB"] == 4
    assert rows["private: read (huge zeropage)"]["Rss kB"] == 0


def test_mmemu_demo_runs_from_the_command_line(tmp_path):
    # the same mmemu the tests import (installed, or built in place), whatever the folder
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(mmemu.__file__)))
    out = subprocess.run([sys.executable, "-m", "mmemu", "demo"], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env=env)
    assert "arm64 + atomic_write_fault" in out.stdout and out.stderr == ""
