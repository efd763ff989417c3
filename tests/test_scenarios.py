"""The rows of the spec's scenario table (section 19) on the emulator.

The rows live in mmemu.scenarios: config, mapping length, MADV_HUGEPAGE or not, steps (in pages
of the mapping), then what the kernel showed: page states, Rss / AnonHugePages (kB), faults,
counter deltas, VmPTE delta.  ISSUE4_ROWS, EXTRA_ROWS and ISSUE5_ROWS were measured on the 6.18
host; the emulator must play every one of them as the host did.
"""
import pytest

from mmemu import MM, Config
from mmemu.scenarios import EXTRA_ROWS, ISSUE4_ROWS, ISSUE5_ROWS, ROWS, mismatches, play_row, short


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_scenario_table_row(row):
    name = row[0]
    run = play_row(MM(Config(**row[1])), row)
    if name in ("S53", "S54"):
        assert run.mm.smaps(run.addr)["THPeligible"] == int(name == "S54")
    assert mismatches(run, row) == []


def played_mismatches(row, base=None):
    """Play a row on a fresh MM; how it differs from the row's expected values."""
    run = play_row(MM(Config(**row[1])), row, base=base)
    try:
        return mismatches(run, row)
    finally:
        if run.child is not None:
            run.child.close()


@pytest.mark.parametrize("row", ISSUE5_ROWS, ids=[short(r[0]) for r in ISSUE5_ROWS])
def test_issue5_row(row):
    """mTHP, shared memory, memfd and the memory cgroup as the 6.18 host showed them (laid out
    where the host run put them: alignments matter here)."""
    assert played_mismatches(row, base=0x500000000000) == []


@pytest.mark.parametrize("row", ISSUE4_ROWS + EXTRA_ROWS, ids=[short(r[0]) for r in ISSUE4_ROWS + EXTRA_ROWS])
def test_issue4_row(row):
    assert played_mismatches(row) == []
