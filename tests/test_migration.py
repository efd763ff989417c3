"""The live-migration workload: each strategy and backing on small images, with the figures
computed by hand from the kernel's rules (spec R4, R11, R30, R33, R38, R41, R43, R57, R80, R81,
R86-R89) and QEMU's destination code (see mmemu/workloads/migration.py)."""
import json

import numpy as np
import pytest

from mmemu import Config
from mmemu.workloads.migration import STRATEGIES, GuestImage, compare_strategies, migrate

MB = 1 << 20
PAGES = 16384                      # 64 MiB: 32 ranges of 2 MiB
#: half the ranges all zero, half all data, chosen at random (aligned runs of 512 pages)
IMAGE = GuestImage(size=64 * MB, zero=0.5, layout="clustered", seed=1)
#: 2 MiB ranges whose first page is zero and one later page holds data, then one whose first
#: page holds data and the rest is zero
MIXED = np.ones(1024, bool)
MIXED[5] = MIXED[512] = False


def memory(result):
    """The figures that describe the destination's memory and faults."""
    keys = ("rss_kb", "anon_kb", "shmem_kb", "huge_kb", "pte_kb", "faults", "thp_ranges", "huge_zero_ranges")
    out = {k: result.final[k] for k in keys}
    out.update({k: v for k, v in result.final.items() if k.startswith(("pages_", "vmstat_", "page_tables_"))})
    return out


# ---- the image --------------------------------------------------------------------------------

def test_fractions_give_exact_counts_in_each_layout():
    ranges = IMAGE.zero.reshape(-1, 512)
    assert IMAGE.counts() == {"image_pages": PAGES, "image_zero_pages": 8192, "image_discarded_pages": 0,
                              "image_data_pages": 8192}
    assert ranges.all(axis=1).sum() == 16 and (~ranges).all(axis=1).sum() == 16
    tail = GuestImage(1000, zero=0.25, layout="tail")
    assert tail.zero[750:].all() and not tail.zero[:750].any()
    rand = GuestImage(1000, zero=0.3, layout="random", discarded=0.2, discard_layout="random")
    assert rand.zero.sum() == 300 and rand.discarded.sum() == 200 and not (rand.zero & rand.discarded).any()
    part = GuestImage(1000, zero=0.6, layout="clustered", run_pages=256)
    assert part.zero.sum() == 600 and part.zero.reshape(-1, 8)[:, 0].sum() >= 1   # whole runs and a part
    same = GuestImage(1000, zero=0.3, layout="random", seed=4)
    assert same == GuestImage(1000, zero=0.3, layout="random", seed=4) != GuestImage(1000, zero=0.3, layout="random")


def test_a_packbits_bitmap_a_bool_mask_and_a_0_1_array_are_the_same_image():
    mask = np.random.default_rng(7).random(PAGES) < 0.4
    images = [GuestImage(zero=mask), GuestImage(PAGES, zero=mask.astype(np.uint8)),
              GuestImage(PAGES, zero=np.packbits(mask)), GuestImage.from_bitmap(np.packbits(mask), PAGES),
              GuestImage(PAGES, zero=np.packbits(mask, bitorder="little"), bitorder="little")]
    assert all(image == images[0] for image in images)
    results = [memory(migrate(image)) for image in (images[0], images[3])]
    assert results[0] == results[1]


def test_discarded_pages_arrive_as_zero_pages_or_not_at_all():
    freed = np.zeros(PAGES, bool)
    freed[::3] = True                                       # a third of the pages, spread out
    zero = IMAGE.zero & ~freed
    as_zero = GuestImage(PAGES, zero=zero, discarded=IMAGE.zero & freed)
    assert as_zero.counts()["image_zero_pages"] + as_zero.counts()["image_discarded_pages"] == 8192
    for strategy in STRATEGIES:
        assert memory(migrate(as_zero, strategy)) == memory(migrate(IMAGE, strategy))
    unsent = migrate(as_zero, "precopy", discarded_as="unsent")
    hzp = migrate(IMAGE, "precopy")
    assert unsent.final["pages_unsent"] == as_zero.counts()["image_discarded_pages"]
    assert unsent.final["pages_received"] == PAGES - unsent.final["pages_unsent"]
    # a zero range's first page is discarded: its second page maps the huge zeropage all the same
    assert unsent.final["rss_kb"] == hzp.final["rss_kb"] and unsent.final["pages_huge_zero"] == 8192


# ---- precopy ----------------------------------------------------------------------------------

def test_precopy_writing_every_page_makes_every_range_a_thp():
    f = migrate(IMAGE, "precopy-write").final
    assert f["rss_kb"] == f["anon_huge_kb"] == 64 * 1024
    assert f["pages_thp"] == PAGES and f["thp_ranges"] == 32
    assert f["faults"] == f["vmstat_pgfault"] == 32 and f["vmstat_thp_fault_alloc"] == 32
    assert f["page_tables_deposited"] == 32 and f["page_tables_pte"] == 0
    assert f["pages_written"] == PAGES and f["pages_zero_checked"] == 0


def test_precopy_reads_zero_ranges_onto_the_huge_zeropage():
    f = migrate(IMAGE).final
    assert f["rss_kb"] == f["anon_huge_kb"] == 32 * 1024
    assert f["pages_huge_zero"] == 8192 and f["huge_zero_ranges"] == 16 and f["thp_ranges"] == 16
    assert f["faults"] == 32                                # one per range: a read or a write
    assert f["vmstat_thp_fault_alloc"] == 16 and f["page_tables_deposited"] == 32   # the HZP's too
    assert f["pages_zero_checked"] == 8192 and f["pages_written"] == 8192


def test_precopy_without_madv_hugepage_maps_4k_pages_and_zeropages():
    f = migrate(IMAGE, thp_advise=False).final              # THP "madvise": no THP at all
    assert f["rss_kb"] == 32 * 1024 and f["huge_kb"] == 0
    assert f["pages_zero"] == 8192 and f["pages_anon"] == 8192
    assert f["faults"] == PAGES and f["page_tables_pte"] == 32


@pytest.mark.parametrize("kernel", ["6.18", "6.12"])
def test_a_data_page_after_a_zero_page_finds_the_huge_zeropage(kernel):
    image = GuestImage(zero=MIXED)
    f = migrate(image, config=Config.for_kernel(kernel)).final
    assert f["faults"] == 3                                 # read p0, write p5, write p512
    if kernel == "6.18":                                    # R41: the write allocates a THP
        assert f["pages_thp"] == 1024 and f["rss_kb"] == 4096
        assert f["vmstat_thp_fault_alloc"] == 2 and f["vmstat_thp_split_pmd"] == 0
    else:                                                   # R43: the write splits the PMD
        assert (f["pages_zero"], f["pages_anon"], f["pages_thp"]) == (511, 1, 512)
        assert f["rss_kb"] == 2048 + 4 and f["anon_huge_kb"] == 2048
        assert f["vmstat_thp_fault_alloc"] == 1 and f["vmstat_thp_split_pmd"] == 1
    multifd = migrate(image, "multifd", config=Config.for_kernel(kernel)).final
    assert multifd["pages_thp"] == 1024 and multifd["faults"] == 2   # no read before: a THP at once


def test_qemu_aligns_anonymous_ram_even_where_the_kernel_would_not():
    f = migrate(IMAGE, "precopy-write", config=Config.for_kernel("6.6")).final   # no mmap alignment
    assert f["thp_ranges"] == 32


# ---- multifd ----------------------------------------------------------------------------------

def test_multifd_never_touches_a_zero_page_received_once():
    f = migrate(IMAGE, "multifd").final
    assert f["pages_none"] == 8192 and f["pages_thp"] == 8192
    assert f["rss_kb"] == 32 * 1024 and f["faults"] == 16
    assert f["pages_zero_skipped"] == 8192 and f["page_tables_deposited"] == 16


# ---- postcopy ---------------------------------------------------------------------------------

def test_postcopy_places_4k_pages_and_zeropages_and_takes_no_fault():
    f = migrate(IMAGE, "postcopy").final
    assert f["pages_anon"] == 8192 and f["pages_zero"] == 8192 and f["pages_huge_zero"] == 0
    assert f["rss_kb"] == 32 * 1024 and f["huge_kb"] == 0 and f["vmstat_thp_fault_alloc"] == 0
    assert f["uffd_copy"] == 8192 and f["uffd_zeropage"] == 8192
    assert f["faults"] == 0 and f["vmstat_pgfault"] == 0 and f["emulated_faults"] == PAGES
    assert f["page_tables_pte"] == 32 and f["page_tables_deposited"] == 0


def test_postcopy_keeps_the_precopied_thps_and_splits_the_one_a_discard_cuts():
    tail = GuestImage(size=64 * MB, zero=0.5, layout="tail")  # data first, zero pages after
    f = migrate(tail, "postcopy", precopy_fraction=0.25).final      # 8 ranges precopied
    assert f["pages_thp"] == 4096 and f["anon_huge_kb"] == 16 * 1024 and f["faults"] == 8
    assert f["pages_anon"] == 4096 and f["pages_zero"] == 8192 and f["rss_kb"] == 32 * 1024
    cut = migrate(tail, "postcopy", precopy_fraction=256 / PAGES).final   # half of range 0
    assert f["discard_ranges"] == cut["discard_ranges"] == 1
    assert cut["pages_discarded"] == PAGES - 256 and cut["faults"] == 1
    assert cut["vmstat_thp_split_pmd"] == 1 and cut["vmstat_thp_deferred_split_page"] == 1
    assert (cut["pages_large"], cut["pages_anon"], cut["pages_thp"]) == (256, 8192 - 256, 0)
    assert cut["rss_kb"] == 32 * 1024 and cut["huge_kb"] == 0


def test_postcopy_dirtied_pages_are_discarded_and_khugepaged_collapses_them_back():
    tail = GuestImage(size=64 * MB, zero=0.5, layout="tail")
    r = migrate(tail, "postcopy", precopy_fraction=0.5, dirty_fraction=0.01, khugepaged_scans=1)
    f = r.final
    assert f["redirtied_pages"] == 82 and f["pages_discarded"] == 8192 + 82
    assert f["pages_received"] == PAGES + 82 and f["uffd_copy"] == 82 and f["uffd_zeropage"] == 8192
    assert f["vmstat_thp_split_pmd"] == f["thp_ranges_after_khugepaged"] == 16   # MADV_HUGEPAGE again


def test_postcopy_with_a_multifd_precopy_phase_writes_every_zero_page():
    multifd = migrate(IMAGE, "postcopy", precopy_fraction=1.0, precopy_phase="multifd").final
    assert multifd["pages_thp"] == PAGES and multifd["rss_kb"] == 64 * 1024
    assert multifd["pages_zero_skipped"] == 0 and multifd["uffd_copy"] == 0


def test_without_the_huge_zeropage_a_read_allocates_a_thp_but_uffdio_zeropage_maps_the_zeropage():
    config = Config(use_zero_page=False)                    # S57; R81: the 4K zero pfn regardless
    precopy = migrate(IMAGE, config=config).final
    assert precopy["pages_thp"] == PAGES and precopy["rss_kb"] == 64 * 1024
    postcopy = migrate(IMAGE, "postcopy", config=config).final
    assert postcopy["pages_zero"] == 8192 and postcopy["rss_kb"] == 32 * 1024
    forbidden = migrate(IMAGE, "postcopy", config=Config(zero_page=False)).final   # R85: a page
    assert forbidden["pages_anon"] == PAGES and forbidden["faults"] == 0


# ---- shared memory ----------------------------------------------------------------------------

@pytest.mark.parametrize("backing", ["memfd", "anon-shared"])
def test_shared_memory_pays_a_page_for_every_zero_page_it_reads(backing):
    got = {r.params["strategy"]: r.final for r in compare_strategies(IMAGE, backing=backing)}
    for strategy in ("precopy-write", "precopy", "postcopy"):
        f = got[strategy]
        assert f["shmem_kb"] == f["rss_kb"] == 64 * 1024 and f["anon_kb"] == 0 and f["huge_kb"] == 0
        assert f["pages_shmem"] == PAGES
    assert got["precopy"]["faults"] == PAGES and got["postcopy"]["faults"] == 0
    assert got["multifd"]["shmem_kb"] == 32 * 1024 and got["multifd"]["pages_none"] == 8192


# ---- the timeline and the result ---------------------------------------------------------------

@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backing", ["anon", "memfd"])
def test_the_timeline_is_monotone_and_ends_at_the_final_figures(strategy, backing):
    kw = {"precopy_fraction": 0.3, "dirty_fraction": 0.05} if strategy == "postcopy" else {}
    seen = []
    r = migrate(IMAGE, strategy, backing, chunk_pages=1000, order="random",
                progress=lambda done, total: seen.append((done, total)), **kw)
    t, f = r.timeline, r.final
    assert t["done"][0] == 0 and (np.diff(t["done"]) > 0).all() and (np.diff(t["faults"]) >= 0).all()
    assert t["done"][-1] == f["pages_received"] and seen[-1] == (f["pages_received"],) * 2
    assert len(seen) == len(t["done"]) - 1
    for column, key in (("rss_kb", "rss_kb"), ("huge_kb", "huge_kb"), ("pte_kb", "pte_kb"),
                        ("faults", "faults"), ("anon_kb", "anon_kb"), ("shmem_kb", "shmem_kb")):
        assert t[column][-1] == f[key], column
    assert json.loads(r.to_json())["workload"] == "migration"


def test_compare_strategies_takes_image_parameters_and_gives_postcopy_its_own():
    results = compare_strategies({"pages": 2048, "zero": 0.5}, strategies=("multifd", "postcopy"),
                                 precopy_fraction=0.5)
    assert [r.params["strategy"] for r in results] == ["multifd", "postcopy"]
    assert results[1].final["precopied_pages"] == 1024 and "precopy_fraction" not in results[0].params
    assert {k: results[0].params[k] for k in ("pages", "zero", "zero_layout", "discarded")} == \
        {"pages": 2048, "zero": 0.5, "zero_layout": "clustered", "discarded": 0.0}


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: GuestImage(100, zero=np.zeros(99, bool)), "one entry per page"),
    (lambda: GuestImage(100, zero=np.zeros(7, np.uint8)), "13 bytes"),
    (lambda: GuestImage(100, zero=np.full(100, 2)), "only 0 and 1"),
    (lambda: GuestImage(100, zero=1.5), "fraction from 0 to 1"),
    (lambda: GuestImage(100, zero=-0.1), "fraction from 0 to 1"),
    (lambda: GuestImage(100, zero=0.7, discarded=0.5), "add up to more than 1"),
    (lambda: GuestImage(100, zero=0.5, layout="striped"), "layout must be one of"),
    (lambda: GuestImage(size=5000), "multiple of 4096"),
    (lambda: GuestImage(zero=0.5), "give pages or size"),
    (lambda: GuestImage.from_bitmap(np.zeros(12, np.uint8), 100), "13 bytes"),
    (lambda: migrate(IMAGE, "stopcopy"), "strategy must be one of"),
    (lambda: migrate(IMAGE, backing="hugetlbfs"), "backing must be one of"),
    (lambda: migrate(IMAGE, order="backwards"), "order must be one of"),
    (lambda: migrate(IMAGE, chunk_pages=0), "chunk_pages must be at least 1"),
    (lambda: migrate(IMAGE, "postcopy", precopy_fraction=2), "precopy_fraction must be a fraction"),
    (lambda: migrate(IMAGE, "precopy", precopy_fraction=0.5), "strategy='postcopy' only"),
    (lambda: migrate(IMAGE, "postcopy", precopy_phase="postcopy"), "precopy_phase must be one of"),
    (lambda: migrate(IMAGE, discarded_as="dropped"), "discarded_as must be one of"),
])
def test_bad_input_is_a_value_error_that_says_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()
