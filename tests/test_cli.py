"""The command line: `mmemu demo` prints the table of the README."""
import os
import subprocess
import sys

import mmemu
from mmemu.demo import demo_rows


def test_demo_rows_answer_the_arm64_atomics_questions():
    rows = {r["case"]: r for r in demo_rows()}
    assert rows["x86_64: atomic on an untouched page"]["faults"] == "1"
    assert rows["arm64: atomic on an untouched page"]["faults"] == "2"
    assert rows["arm64 + atomic_write_fault: atomic"]["faults"] == "1"
    assert rows["arm64 THP: atomic on untouched 2M [6.13+]"]["pages"] == "512 THP"
    assert rows["arm64 THP: atomic on untouched 2M [<6.13]"]["pages"] == "511 ZERO + 1 ANON"
    assert rows["THP: read (huge zeropage), write [<6.13]"]["thp_split_pmd"] == 1


def test_mmemu_demo_runs_from_the_command_line(tmp_path):
    # the same mmemu the tests import (installed, or built in place), whatever the folder
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(mmemu.__file__)))
    out = subprocess.run([sys.executable, "-m", "mmemu", "demo"], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env=env)
    assert "arm64 + atomic_write_fault" in out.stdout and out.stderr == ""
