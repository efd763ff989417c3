"""The rows of the spec's scenario table (section 19) that the core engine covers.

Each row: config, mapping length, MADV_HUGEPAGE or not, steps (in pages of the mapping), then
what the kernel showed: page states, Rss / AnonHugePages (kB), faults, counter deltas, VmPTE
delta.  Counter deltas not listed must be zero (pgfault is checked through the faults).
The table assumes the huge zeropage already exists; on a fresh emulated machine its first use
adds thp_zero_page_alloc +1, written here as HZA.
"""
import pytest

from mmemu import MM, Config
from scenario_dsl import MB, Run, describe, expand

HZA = {"thp_zero_page_alloc": 1}
THP_FAULT = {"thp_fault_alloc": 1, "2048kB/anon_fault_alloc": 1, "2048kB/nr_anon": 1,
             "nr_anon_transparent_hugepages": 1, "nr_anon_pages": 512}


def cfg(**kw):
    return kw


# id, config kwargs, length, hp, steps, states, (rss, ahp), faults, deltas, vmpte delta
ROWS = [
    ("S1", {}, 2 * MB, False, [("read", 0)], "Z N*511", (0, 0), 1, {}, 4),
    ("S2", {}, 2 * MB, False, [("write", 0)], "a N*511", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S3", {}, 2 * MB, False, [("read", 0), ("write", 0)], "a N*511", (4, 0), 2, {"nr_anon_pages": 1}, 4),
    ("S4", {}, 2 * MB, False, [("read_all",)], "Z*512", (0, 0), 512, {}, 4),
    ("S5", {}, 2 * MB, False, [("atomic", 0)], "a N*511", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S7", {}, 2 * MB, False, [("populate_read",)], "Z*512", (0, 0), 512, {}, 4),
    ("S8", {}, 2 * MB, False, [("populate_write",)], "a*512", (2048, 0), 512, {"nr_anon_pages": 512}, 4),
    ("S9", {}, 4 * MB, False, [("write_all", 0, 512), ("dontneed", 0, 512)], "N*1024", (0, 0), 512, {}, 0),
    ("S10", {}, 4 * MB, False, [("write_all", 0, 512), ("dontneed", 0, 256)], "N*256 a*256 N*512",
     (1024, 0), 512, {"nr_anon_pages": 256}, 4),
    ("S11", {}, 4 * MB, False, [("write_all", 256, 512), ("dontneed", 256, 512)], "N*1024", (0, 0), 512, {}, 8),
    ("S12", {}, 2 * MB, False, [("read_all",), ("dontneed",)], "N*512", (0, 0), 512, {}, 0),
    ("S13", {}, 2 * MB, True, [("read", 1)], "H*512", (0, 0), 1, HZA, 4),
    ("S14", {}, 2 * MB, True, [("write", 0)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S15", {}, 2 * MB, True, [("read", 0), ("write", 5)], "T*512", (2048, 2048), 2, {**HZA, **THP_FAULT}, 4),
    ("S15-6.12", {"huge_zero_write": "split"}, 2 * MB, True, [("read", 0), ("write", 5)], "Z*5 a Z*506",
     (4, 0), 2, {**HZA, "thp_split_pmd": 1, "nr_anon_pages": 1}, 4),
    ("S16", {}, 2 * MB, True, [("populate_read",)], "H*512", (0, 0), 1, HZA, 4),
    ("S17", {}, 2 * MB, True, [("populate_write",)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S18", {}, 2 * MB, True, [("populate_read",), ("populate_write",)], "T*512", (2048, 2048), 2,
     {**HZA, **THP_FAULT}, 4),
    ("S20", {}, 2 * MB, True, [("write", 0), ("dontneed",)], "N*512", (0, 0), 1,
     {"thp_fault_alloc": 1, "2048kB/anon_fault_alloc": 1}, 0),
    ("S23", {}, 4 * MB, True, [("write", 0), ("mprotect", 0, 512, "r")], "T*512 N*512", (2048, 2048), 1,
     THP_FAULT, 4),
    ("S24", {}, 4 * MB, True, [("write", 0, 512), ("munmap", 0, 512)], "N*512 T*512", (2048, 2048), 2,
     {"thp_fault_alloc": 2, "2048kB/anon_fault_alloc": 2, "2048kB/nr_anon": 1,
      "nr_anon_transparent_hugepages": 1, "nr_anon_pages": 512}, 4),
    ("S25", {}, 2 * MB, True, [("read", 0), ("mprotect", 256, 1, "r")], "Z*512", (0, 0), 1,
     {**HZA, "thp_split_pmd": 1}, 4),
    ("S26", {}, 2 * MB, True, [("read", 0), ("dontneed", 256, 1)], "Z*256 N Z*255", (0, 0), 1,
     {**HZA, "thp_split_pmd": 1}, 4),
    ("S27", {}, 2 * MB, True, [("read", 0), ("dontneed",)], "N*512", (0, 0), 1, HZA, 0),
    ("S28", {}, 2 * MB, True, [("read", 0), ("dontneed", 256, 1), ("write", 0, 256)], "a Z*255 a Z*255",
     (8, 0), 3, {**HZA, "thp_split_pmd": 1, "nr_anon_pages": 2}, 4),
    ("S50", {}, 4 * MB, True, [("write_all",)], "a*511 T*512 a", (4096, 2048), 513,
     {**THP_FAULT, "nr_anon_pages": 1024}, 12),
    ("S51", {}, 1 * MB, True, [("write", 0)], "a N*255", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S52", {}, 4 * MB, True, [("write", 0), ("nohugepage",), ("write", 512)], "T*512 a N*511",
     (2052, 2048), 2, {**THP_FAULT, "nr_anon_pages": 513}, 8),
    ("S53", {}, 2 * MB, True, [("write", 0)], "a N*511", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S54", {}, 2 * MB, True, [("write", 0)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S55", {}, 2 * MB, True, [("read", 0), ("prctl", 1, 0), ("write", 1)], "T*512", (2048, 2048), 2,
     {**HZA, **THP_FAULT}, 4),
    ("S56", {"thp": "always"}, 4 * MB, False, [("read", 0), ("nohugepage",), ("write", 1)], "T*512 N*512",
     (2048, 2048), 2, {**HZA, **THP_FAULT}, 4),
    ("S57", {"use_zero_page": False}, 2 * MB, True, [("read", 0)], "T*512", (2048, 2048), 1, THP_FAULT, 4),
    ("S58", {"thp": "never"}, 2 * MB, True, [("write", 0)], "a N*511", (4, 0), 1, {"nr_anon_pages": 1}, 4),
    ("S59", {"hugepages": {2048: "never"}}, 2 * MB, True, [("write", 0), ("read", 256)], "a N*255 Z N*255",
     (4, 0), 2, {"nr_anon_pages": 1}, 4),
    ("S60", {"hugepages": {2048: "always"}}, 2 * MB, False, [("write", 0)], "T*512", (2048, 2048), 1,
     THP_FAULT, 4),
    ("S61", {"thp": "never", "hugepages": {2048: "madvise"}}, 2 * MB, True, [("write", 0)], "T*512",
     (2048, 2048), 1, THP_FAULT, 4),
    ("S77", {}, 4 * MB, False, [("populate_write",)], "a*1024", (4096, 0), 1024, {"nr_anon_pages": 1024}, 8),
]

OFFSETS = {"S50": 4096}
#: steps run before the mapping is made: prctl(PR_SET_THP_DISABLE, arg2, arg3)
BEFORE = {"S53": [("prctl", 1, 0)], "S54": [("prctl", 1, 2)]}


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


# Rows that need a PMD split of a THP (issue 4): they must refuse, leaving everything as it was.
SPLIT_ROWS = [
    ("S19", [("dontneed", 256, 1)]),
    ("S21", [("munmap", 256, 1)]),
    ("S22", [("mprotect", 256, 1, "r")]),
]


@pytest.mark.parametrize("name,steps", SPLIT_ROWS, ids=[r[0] for r in SPLIT_ROWS])
def test_thp_pmd_split_rows_refuse_and_leave_state(name, steps):
    run = Run(MM(), 2 * MB, hp=True)
    run.step("write", 0)
    before = (run.states().copy(), run.mm.vmstat, run.mm.status, run.mm.maps())
    with pytest.raises(NotImplementedError, match="issue 4"):
        run.step(*steps[0])
    assert (run.states() == before[0]).all()
    assert (run.mm.vmstat, run.mm.status, run.mm.maps()) == before[1:]
