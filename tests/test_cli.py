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


# ---- issue 6: the subcommands ----------------------------------------------------------------

import json  # noqa: E402

import pytest  # noqa: E402

from mmemu.cli import main, parse_settings, parse_size  # noqa: E402

SCENARIO = '''
name = "arm64: atomic on an untouched THP range"
length = "2M"
hugepage = true
steps = [["atomic", 0], ["atomic", 1], ["madvise", "dontneed", 0, 512], ["read", 3]]

[config]
arch = "arm64"
'''


def _run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_run_plays_a_scenario_file_step_by_step(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    status, out, err = _run(capsys, "run", str(path))
    assert status == 0 and err == ""
    lines = {line.split("  ")[0]: line.split() for line in out.splitlines()}
    assert lines["atomic 0"][2:4] == ["ok", "2"] and lines["atomic 1"][2:4] == ["ok", "0"]
    assert "thp_fault_alloc +1" in out


def test_run_takes_settings_and_json_and_a_json_scenario(tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"length": 2 << 20, "hugepage": True, "config": {"arch": "arm64"},
                                "steps": [["atomic", 0], ["atomic", 1]]}))
    status, out, _ = _run(capsys, "run", str(path), "--set", "kernel=6.12", "--json")
    doc = json.loads(out)
    assert status == 0 and [s["faults"] for s in doc["steps"]] == [2, 1]   # 6.12: the PMD is split
    assert doc["steps"][0]["pages"] == "a Z*511"


@pytest.mark.parametrize("argv, message", [
    (["run", "/nonexistent.toml"], "No such file"),
    (["run", "{bad}"], "not a valid scenario"),
    (["pretouch", "--heap", "3M", "--case", "arm64"], "multiple of 2 MiB"),
    (["pretouch", "--heap", "lots"], "not a size"),
    (["pretouch", "--heap", "2M", "--set", "arch=sparc"], "arch"),
    (["pretouch", "--heap", "2M", "--set", "frobnicate=1"], "unknown setting"),
    (["pretouch", "--heap", "2M", "--case", "vax"], "unknown case"),
    (["sweep", "nosuch", "--grid", "arch=arm64"], "unknown workload"),
    (["sweep", "pretouch", "--grid", "arch"], "a grid axis is"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, argv, message):
    if argv[:2] == ["run", "{bad}"]:
        bad = tmp_path / "bad.toml"
        bad.write_text("steps = [[")
        argv = ["run", str(bad)]
    status, out, err = _run(capsys, *argv)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_scenario_file_with_an_unknown_key_is_refused(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('lenght = "2M"\n')
    status, _, err = _run(capsys, "run", str(path))
    assert status == 2 and "unknown key 'lenght'" in err


def test_pretouch_prints_the_cases_and_json(capsys):
    status, out, _ = _run(capsys, "pretouch", "--heap", "4M", "--case", "arm64", "--case", "x86_64", "--json")
    doc = json.loads(out)
    assert status == 0 and doc["arm64"]["final"]["faults"] == 4 and doc["x86_64"]["final"]["faults"] == 2
    status, out, _ = _run(capsys, "pretouch", "--heap", "2M", "--set", "arch=arm64", "--set", "kernel=6.12")
    assert status == 0 and "513" in out


def test_pretouch_plots_rss_and_faults(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    status, _, err = _run(capsys, "pretouch", "--heap", "4M", "--plot", str(png))
    assert status == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_prints_a_table_and_writes_csv(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    status, out, _ = _run(capsys, "sweep", "pretouch", "--grid", "arch=x86_64,arm64", "--grid", "kernel=6.12,6.18",
                          "--param", "heap=2M", "--workers", "1", "--json", "--csv", str(csv))
    rows = json.loads(out)
    assert status == 0 and [r["faults"] for r in rows] == [1, 1, 513, 2]
    assert csv.read_text().splitlines()[0].startswith("arch,kernel,heap,faults")


def test_settings_and_sizes_parse_as_the_kernel_names_them():
    assert parse_size("2M") == 2 << 20 and parse_size("1.5G") == 3 << 29 and parse_size("64KiB") == 65536
    assert parse_settings(["arch=arm64", "atomic_write_fault=true", "hugepages=64:always,2048:never",
                           "khugepaged_max_ptes_none=0"]) == {
        "arch": "arm64", "atomic_write_fault": True, "hugepages": {64: "always", 2048: "never"},
        "khugepaged_max_ptes_none": 0}


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(mmemu.__file__)))
    out = subprocess.run([sys.executable, "-m", "mmemu", "pretouch", "--heap", "8M", "--case", "arm64"],
                         capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    assert out.stderr == "" and "arm64" in out.stdout


def test_migrate_compares_the_strategies(capsys):
    status, out, _ = _run(capsys, "migrate", "--size", "64M", "--zero", "0.5", "--json")
    doc = json.loads(out)
    assert status == 0 and set(doc) == {"precopy-write", "precopy", "multifd", "postcopy"}
    assert doc["precopy-write"]["final"]["rss_kb"] == 64 * 1024
    assert doc["precopy"]["final"]["rss_kb"] == 32 * 1024            # zero 2 MiB runs: huge zeropage
    status, out, _ = _run(capsys, "migrate", "--size", "64M", "--zero", "0.5", "--backing", "memfd",
                          "--strategy", "precopy", "--json")
    assert json.loads(out)["precopy"]["final"]["rss_kb"] == 64 * 1024  # shmem: a read allocates


def test_record_and_replay_a_program(tmp_path, capsys):
    import shutil
    if not shutil.which("valgrind"):
        pytest.skip("valgrind is not installed")
    out = tmp_path / "true.npz"
    assert main(["record", "-o", str(out), "--", "/bin/true"]) == 0
    capsys.readouterr()
    status, stdout, _ = _run(capsys, "replay", str(out), "--json")
    final = json.loads(stdout)["true.npz"]["final"]
    assert status == 0 and final["faults"] > 0 and final["RssAnon"] > 0
    status, _, err = _run(capsys, "record", "-o", str(tmp_path / "x.npz"))
    assert status == 2 and "needs a program" in err


def test_a_progress_bar_on_a_terminal(tmp_path):
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(mmemu.__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "mmemu", "pretouch", "--heap", "256M", "--case", "arm64"],
                            stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait() == 0, out.decode(errors="replace")
    assert b"arm64:" in out and b"%|" in out
