"""Benchmarks: pytest-benchmark, outside the default test run (pytest benchmarks/)."""
import os
import resource

import pytest


def pytest_configure(config):
    # numpy's OpenBLAS threads spin on the second core after BLAS calls and steal it from the
    # single-threaded loops measured here; none of the code measured uses BLAS.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture
def rss_kb():
    """Resident set size of this process in kB (VmRSS)."""
    def read():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return read
