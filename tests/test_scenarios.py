"""The rows of the spec's scenario table (section 19) that the core engine covers.

The rows live in mmemu.scenarios: config, mapping length, MADV_HUGEPAGE or not, steps (in pages
of the mapping), then what the kernel showed: page states, Rss / AnonHugePages (kB), faults,
counter deltas, VmPTE delta.
"""
import pytest

from mmemu import MM, Config
from mmemu.scenarios import BEFORE, MB, OFFSETS, PMD_SPLIT_ROWS, ROWS, Run, describe, expand


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_scenario_table_row(row):
    name, config, length, hp, steps, states, (rss, ahp), faults, deltas, vmpte = row
    run = Run(MM(Config(**config)), length, hp, offset=OFFSETS.get(name, 0), before=BEFORE.get(name, ()))
    for step in steps:
        run.step(*step)
    if name in ("S53", "S54"):
        assert run.mm.smaps(run.addr)["THPeligible"] == int(name == "S54")
    assert describe(run.states()) == describe(expand(states))
    assert run.rss_ahp() == (rss, ahp)
    assert run.faults() == faults
    expected = dict(deltas)
    expected["nr_page_table_pages"] = vmpte // 4
    if not expected["nr_page_table_pages"]:
        del expected["nr_page_table_pages"]
    assert run.deltas() == expected
    assert run.vmpte_delta() == vmpte


@pytest.mark.parametrize("name,steps", PMD_SPLIT_ROWS, ids=[r[0] for r in PMD_SPLIT_ROWS])
def test_thp_pmd_split_rows_refuse_and_leave_state(name, steps):
    run = Run(MM(), 2 * MB, hp=True)
    run.step("write", 0)
    before = (run.states().copy(), run.mm.vmstat, run.mm.status, run.mm.maps())
    with pytest.raises(NotImplementedError, match="issue 4"):
        run.step(*steps[0])
    assert (run.states() == before[0]).all()
    assert (run.mm.vmstat, run.mm.status, run.mm.maps()) == before[1:]
