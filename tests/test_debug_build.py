"""The test suite once more, against a build of the core with Cython bounds checking and C
assertions on (setup.py's MMEMU_DEBUG=1), to catch an out-of-bounds access the optimized build
would let pass silently. It runs in CI (where CI is set) or when MMEMU_DEBUG_SUITE=1; it builds
a copy of the sources in a temporary folder, so the build under test is never touched."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: the differential and fuzz tests run fewer examples here: the build is slower, not the logic
EXAMPLES = {"MMEMU_EXAMPLES": "300", "MMEMU_FUZZ_EXAMPLES": "1000"}

pytestmark = pytest.mark.skipif(not (os.environ.get("CI") or os.environ.get("MMEMU_DEBUG_SUITE")),
                                reason="runs in CI, or with MMEMU_DEBUG_SUITE=1 (a debug build and the whole suite)")


def _copy_sources(dest):
    ignore = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.egg-info", ".hypothesis")
    for name in ("mmemu", "tests", "examples", "docs", "benchmarks"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)


def test_the_suite_passes_on_a_bounds_checked_build(tmp_path):
    pytest.importorskip("Cython")
    src = tmp_path / "src"
    src.mkdir()
    _copy_sources(src)
    env = dict(os.environ, MMEMU_DEBUG="1", PYTHONPATH=str(src), **EXAMPLES)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "tests", "-x", "-q", "-p", "no:cacheprovider",
                          "--ignore=tests/test_debug_build.py"], cwd=src, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
