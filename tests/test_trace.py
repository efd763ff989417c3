"""Traces: lackey parsing, the compact format, the mappings a replay sets up, replay, and
recording real programs under valgrind."""
import gzip
import io
import shutil
import subprocess

import numpy as np
import pytest

from mmemu import ATOMIC, MM, READ, WRITE, Config, PageState
from mmemu import trace as T

KB, MB = 1 << 10, 1 << 20
HEAP = 0x4A1A000                    # where valgrind puts a program's heap mmaps
STACK = 0x1FFEFFE000


def parse(text, **kwargs):
    """The whole of a lackey text as (addrs, ops), and the reader (for its counters)."""
    reader = T.iter_lackey(io.StringIO(text), **kwargs)
    chunks = list(reader)
    if not chunks:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint8), reader
    return np.concatenate([a for a, _ in chunks]), np.concatenate([o for _, o in chunks]), reader


def lackey_text(n, seed=0):
    """``n`` lackey lines of every kind, a few crossing pages, with valgrind messages between."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["I  ", " L ", " S ", " M "], n)
    addrs = rng.integers(0x4000000, 0x4100000, n)
    sizes = rng.choice([1, 2, 4, 8, 16, 32], n)
    lines = [f"{k}{a:08x},{s}" for k, a, s in zip(kinds, addrs, sizes, strict=True)]
    lines[::997] = ["==4242== a message, with a comma"] * len(lines[::997])
    return "\n".join(lines) + "\n"


# ---- parsing lackey ---------------------------------------------------------------------------

def test_each_line_kind_becomes_its_op():
    text = "I  04016b0,3\n L 1ffefffb48,8\n S 1ffefffb40,8\n M 0421050,4\n"
    addrs, ops, reader = parse(text)
    assert addrs.tolist() == [0x1FFEFFFB48, 0x1FFEFFFB40, 0x421050]
    assert ops.tolist() == [READ, WRITE, ATOMIC]
    assert addrs.dtype == np.uint64 and ops.dtype == np.uint8
    assert (reader.stats.lines, reader.stats.instructions, reader.stats.skipped) == (4, 1, 0)
    addrs, ops, _ = parse(text, instructions=True)
    assert addrs.tolist() == [0x4016B0, 0x1FFEFFFB48, 0x1FFEFFFB40, 0x421050]
    assert ops.tolist() == [READ, READ, WRITE, ATOMIC]


def test_an_access_crossing_a_page_becomes_one_per_page():
    text = " L 0000ffe,4\n S 0001ff8,8\n M 1ffefffffc,16\n L 0002fff,1\n"
    addrs, ops, reader = parse(text)
    assert [hex(a) for a in addrs.tolist()] == ["0xffe", "0x1000", "0x1ff8", "0x1ffefffffc", "0x1fff000000", "0x2fff"]
    assert ops.tolist() == [READ, READ, WRITE, ATOMIC, ATOMIC, READ]
    assert reader.stats.split == 2 and reader.stats.accesses == 6


def test_a_large_access_touches_every_page_it_spans():
    addrs, _, reader = parse(" S 0000800,9000\n")
    assert addrs.tolist() == [0x800, 0x1000, 0x2000]
    assert reader.stats.split == 2


def test_three_chunks_concatenate_to_the_one_chunk_parse():
    text = lackey_text(9000)
    whole_a, whole_o, _ = parse(text)
    chunks = list(T.iter_lackey(io.StringIO(text), chunk=2500))
    assert [a.size for a, _ in chunks][:-1] == [2500] * (len(chunks) - 1) and len(chunks) == 3
    assert np.array_equal(np.concatenate([a for a, _ in chunks]), whole_a)
    assert np.array_equal(np.concatenate([o for _, o in chunks]), whole_o)


def test_lines_cut_between_read_blocks_parse_the_same(monkeypatch):
    text = lackey_text(3000, seed=1)
    whole_a, whole_o, whole = parse(text)
    monkeypatch.setattr(T, "_BLOCK", 37)        # every block ends inside a line
    a, o, cut = parse(text)
    assert np.array_equal(a, whole_a) and np.array_equal(o, whole_o)
    assert cut.stats == whole.stats


def test_the_parse_matches_a_line_by_line_reading():
    text = lackey_text(5000, seed=2)
    want_a, want_o = [], []
    for line in text.splitlines():
        if line[:3] in (" L ", " S ", " M "):
            addr, size = (int(x, 16) if i == 0 else int(x) for i, x in enumerate(line[3:].split(",")))
            for page in range(addr >> 12, ((addr + size - 1) >> 12) + 1):
                want_a.append(addr if page == addr >> 12 else page << 12)
                want_o.append("LSM".index(line[1]))
    a, o, _ = parse(text)
    assert a.tolist() == want_a and o.tolist() == want_o


def test_unparseable_lines_are_skipped_and_counted():
    bad = ["garbage", " L zz,8", " S 12,", " M ,4", " L 1234", "I  ", " X 1234,4", " L 12345678901234567,4",
           " L 1000,0", " L 1000,4 trailing", " L 1000,4,4", "", " L 0x1000,4", " S -100,4", "L  1000,4"]
    text = "==7== Command: ./a.out\n L 1000,4\n" + "\n".join(bad) + "\n S 2000,8\n==7== Exit code: 0\n"
    addrs, ops, reader = parse(text)
    assert addrs.tolist() == [0x1000, 0x2000] and ops.tolist() == [READ, WRITE]
    assert reader.stats.messages == 2 and reader.stats.skipped == len(bad)
    assert reader.messages == ["==7== Command: ./a.out", "==7== Exit code: 0"]


def test_uppercase_hex_crlf_and_a_missing_last_newline_parse():
    addrs, ops, reader = parse(" L 00ABCDEF,4\r\n S FFFF,2")
    assert addrs.tolist() == [0xABCDEF, 0xFFFF, 0x10000] and reader.stats.skipped == 0


def test_an_overlong_line_is_dropped_not_buffered(monkeypatch):
    monkeypatch.setattr(T, "_BLOCK", 64)
    monkeypatch.setattr(T, "_MAX_LINE", 100)
    addrs, _, reader = parse(" L 1000,4\n" + "x" * 1000 + "\n S 2000,4\n")
    assert addrs.tolist() == [0x1000, 0x2000] and reader.stats.skipped == 1


def test_gzip_paths_and_binary_files_read_like_text(tmp_path):
    text = lackey_text(4000, seed=3)
    want, _, _ = parse(text)
    plain, packed = tmp_path / "t.lackey", tmp_path / "t.lackey.gz"
    plain.write_text(text)
    with gzip.open(packed, "wt") as f:
        f.write(text)
    seen = []
    for source in (plain, str(packed), io.BytesIO(text.encode())):
        reader = T.iter_lackey(source, progress=lambda done, total: seen.append((done, total)))
        assert np.array_equal(np.concatenate([a for a, _ in reader]), want)
    assert seen[0] == (plain.stat().st_size, plain.stat().st_size)
    assert seen[1] == (packed.stat().st_size, packed.stat().st_size)


def test_iter_lackey_refuses_bad_arguments(tmp_path):
    with pytest.raises(T.TraceNotFoundError) as missing:
        T.iter_lackey(tmp_path / "nothing.txt")
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, ValueError)
    with pytest.raises(ValueError, match="chunk"):
        T.iter_lackey(io.StringIO(""), chunk=0)
    with pytest.raises(TypeError, match="source"):
        T.iter_lackey(42)
    with pytest.raises(TypeError, match="instructions"):
        T.iter_lackey(io.StringIO(""), instructions="yes")


def test_replay_refuses_bad_arguments(tmp_path):
    trace = T.write_trace(tmp_path / "t.npz", [(np.array([HEAP], np.uint64), np.array([WRITE], np.uint8))])
    with pytest.raises(ValueError, match="gap"):
        T.replay(trace, gap=-1)
    with pytest.raises(TypeError, match="include_file_backed"):
        T.replay(trace, include_file_backed=1)
    with pytest.raises(ValueError, match="thp"):
        T.replay(trace, thp="sometimes")
    with pytest.raises(TypeError, match="config"):
        T.replay(trace, config={"thp": "never"})
    with pytest.raises(ValueError, match="chunk"):
        T.replay(trace, chunk=0)


# ---- the compact format ------------------------------------------------------------------------

def chunks_of(addrs, ops, size):
    return [(addrs[i:i + size], ops[i:i + size]) for i in range(0, addrs.size, size)]


def read_all(trace, chunk=T.DEFAULT_CHUNK):
    parts = list(trace.chunks(chunk))
    return np.concatenate([a for a, _ in parts]), np.concatenate([o for _, o in parts])


def test_npz_round_trip_is_written_in_chunks_and_read_memory_mapped(tmp_path):
    rng = np.random.default_rng(4)
    addrs = rng.integers(0x10000, 1 << 46, 10_000, dtype=np.uint64)
    ops = rng.integers(0, 3, 10_000).astype(np.uint8)
    maps = ["00400000-00401000 r-xp 00000000 fe:00 1 /bin/x", "01000000-01100000 rw-p 00000000 00:00 0"]
    trace = T.write_trace(tmp_path / "t.npz", chunks_of(addrs, ops, 3000), maps=maps,
                          meta={"program": "/bin/x", "argv": ["x"]})
    assert isinstance(trace._columns[0].array, np.memmap)        # nothing loaded whole
    a, o = read_all(trace, chunk=4096)
    assert np.array_equal(a, addrs) and np.array_equal(o, ops) and len(trace) == 10_000
    assert [c[0].size for c in trace.chunks(4096)] == [4096, 4096, 1808]
    assert trace.maps == maps and trace.meta["program"] == "/bin/x"
    assert trace.meta["format_version"] == T.FORMAT_VERSION and trace.meta["accesses"] == 10_000
    assert np.array_equal(trace.pages, np.unique(addrs >> np.uint64(12)))
    with np.load(tmp_path / "t.npz") as plain:                    # an ordinary .npz to numpy
        assert np.array_equal(plain["addrs"], addrs) and plain["regions"].shape[1] == 2
    assert not list(tmp_path.glob(".t.npz.*"))                    # the raw chunk files are gone


def test_a_compressed_npz_streams_through_the_zip(tmp_path):
    addrs = np.arange(0x10000, 0x10000 + 5000 * 4096, 4096, dtype=np.uint64)
    ops = (np.arange(5000) % 3).astype(np.uint8)
    np.savez_compressed(tmp_path / "c.npz", addrs=addrs, ops=ops)
    trace = T.open_trace(tmp_path / "c.npz")
    assert trace._columns[0].array is None                       # streamed, not mapped
    a, o = read_all(trace, chunk=1234)
    assert np.array_equal(a, addrs) and np.array_equal(o, ops)
    assert trace.pages.size == 5000 and trace.maps == []


def test_npy_traces_structured_or_rows(tmp_path):
    addrs = np.array([0x10000, 0x20000, 0x20008], np.uint64)
    ops = np.array([WRITE, READ, ATOMIC], np.uint8)
    rec = np.zeros(3, [("addr", "<u8"), ("op", "u1")])
    rec["addr"], rec["op"] = addrs, ops
    np.save(tmp_path / "s.npy", rec)
    np.save(tmp_path / "r.npy", np.stack([addrs, ops.astype(np.uint64)], axis=1))
    for name in ("s.npy", "r.npy"):
        a, o = read_all(T.open_trace(tmp_path / name), chunk=2)
        assert np.array_equal(a, addrs) and np.array_equal(o, ops)
    np.save(tmp_path / "bare.npy", addrs)
    with pytest.raises(T.TraceError, match="structured"):
        T.open_trace(tmp_path / "bare.npy")


def test_a_lackey_file_opens_as_a_trace_and_converts(tmp_path):
    path = tmp_path / "t.lackey"
    path.write_text(lackey_text(3000, seed=5))
    want, _, _ = parse(path.read_text())
    trace = T.open_trace(path)
    assert trace.length is None and len(trace) == want.size
    converted = T.write_trace(tmp_path / "t.npz", trace)
    assert np.array_equal(read_all(converted)[0], want)
    assert converted.meta["lackey"]["accesses"] == want.size


def test_bad_traces_are_refused_with_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such trace"):
        T.open_trace(tmp_path / "missing.npz")
    np.savez(tmp_path / "no-ops.npz", addrs=np.zeros(3, np.uint64))
    with pytest.raises(T.TraceError, match="ops"):
        T.open_trace(tmp_path / "no-ops.npz")
    np.savez(tmp_path / "short.npz", addrs=np.zeros(3, np.uint64), ops=np.zeros(2, np.uint8))
    with pytest.raises(T.TraceError, match="3 accesses, ops 2"):
        T.open_trace(tmp_path / "short.npz")
    np.savez(tmp_path / "floats.npz", addrs=np.zeros(3), ops=np.zeros(3, np.uint8))
    with pytest.raises(T.TraceError, match="integers"):
        T.open_trace(tmp_path / "floats.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(T.TraceError, match="not a readable"):
        T.open_trace(tmp_path / "junk.npz")
    np.savez(tmp_path / "op3.npz", addrs=np.full(5, 0x10000, np.uint64), ops=np.array([0, 1, 2, 3, 0], np.uint8))
    with pytest.raises(T.TraceError, match="3 at access 3"):
        read_all(T.open_trace(tmp_path / "op3.npz"))
    with pytest.raises(T.TraceError, match="ATOMIC"):
        T.write_trace(tmp_path / "w.npz", [(np.zeros(2, np.uint64), np.array([0, 7]))])
    assert not (tmp_path / "w.npz").exists()


# ---- the mappings ------------------------------------------------------------------------------

def test_derived_regions_cover_every_touched_page():
    rng = np.random.default_rng(6)
    pages = np.unique(rng.integers(0x10, 0x100000, 3000).astype(np.uint64))
    regions = T.derive_regions(pages)
    assert (regions[1:, 0] > regions[:-1, 1]).all()               # sorted, disjoint, gaps between
    addr = pages << np.uint64(12)
    i = np.searchsorted(regions[:, 0], addr, "right") - 1
    assert (i >= 0).all() and (addr < regions[i, 1]).all()
    assert ((regions[1:, 0] - regions[:-1, 1]) > MB).all()        # gaps of more than 1 MiB split


def test_derived_regions_merge_within_the_gap_only():
    pages = np.array([16, 17, 16 + 256 + 1, 16 + 1024], np.uint64)  # 1 MiB untouched, then 3 MiB
    assert T.derive_regions(pages).tolist() == [[16 << 12, (16 + 258) << 12], [(16 + 1024) << 12, (16 + 1025) << 12]]
    assert len(T.derive_regions(pages, gap=0)) == 3


MAPS = [
    "00108000-00109000 r--p 00000000 fe:00 11 /tmp/prog",
    "0010c000-0010d000 rw-p 00003000 fe:00 11 /tmp/prog",
    "04a1a000-0522b000 rw-p 00000000 00:00 0 ",
    "58000000-58001000 r--p 00000000 fe:00 12 /usr/libexec/valgrind/lackey-amd64-linux",
    "58232000-58c25000 rw-p 00000000 00:00 0",
    "60000000-60001000 rw-s 00000000 00:01 5 /dev/zero (deleted)",
    "7f0000000000-7f0000002000 r--p 00000000 00:00 0                          [vvar]",
    "1ffeffe000-1fff001000 rw-p 00000000 00:00 0",
]


def test_a_maps_snapshot_is_kept_where_the_trace_touches_it():
    touched = [0x108000, 0x10C000, HEAP + 5 * 4096, 0x60000000, 0x7F0000000000, STACK + 8, 0x30000000]
    pages = np.unique(np.array(touched, np.uint64) >> np.uint64(12))
    layout = T.plan_mappings(pages, MAPS)
    rows = list(zip([hex(s) for s in layout.starts.tolist()], layout.kinds, layout.sources, layout.mapped.tolist(),
                    strict=True))
    assert rows == [("0x108000", "file", "maps", False), ("0x10c000", "file", "maps", False),
                    ("0x4a1a000", "anon", "maps", True), ("0x30000000", "anon", "derived", True),
                    ("0x60000000", "shmem", "maps", True), ("0x1ffeffe000", "anon", "maps", True),
                    ("0x7f0000000000", "special", "maps", False)]
    assert layout.ends[2] == 0x522B000                           # the mapping's own extent
    with_files = T.plan_mappings(pages, MAPS, include_file_backed=True)
    assert with_files.mapped.tolist() == [True] * 6 + [False]


def test_derived_regions_stop_at_a_snapshot_entry():
    pages = np.array([0x4A10, 0x4A19, 0x522B, 0x5230], np.uint64)    # around the heap entry
    layout = T.plan_mappings(pages, MAPS)
    assert [(hex(s), hex(e)) for s, e in zip(layout.starts.tolist(), layout.ends.tolist(), strict=True)] == [
        ("0x4a10000", "0x4a1a000"), ("0x522b000", "0x5231000")]
    assert layout.sources == ["derived", "derived"]              # the heap itself is untouched


def test_pages_no_process_can_map_are_left_out():
    pages = np.array([0x1, 0x10, (1 << 47 >> 12) + 5], np.uint64)
    layout = T.plan_mappings(pages)
    assert layout.unmappable_pages == 2 and layout.starts.tolist() == [0x10000]


# ---- replay ------------------------------------------------------------------------------------

def npz(tmp_path, addrs, ops, maps=None, name="t.npz"):
    return T.write_trace(tmp_path / name, [(np.asarray(addrs, np.uint64), np.asarray(ops, np.uint8))], maps=maps)


def test_ten_writes_on_distinct_pages_take_ten_faults(tmp_path):
    trace = npz(tmp_path, HEAP + 4096 * np.arange(10), np.full(10, WRITE))
    result = T.replay(trace, thp="never")
    f = result.final
    assert (f["faults"], f["pgfault"], f["RssAnon"], f["Rss"], f["VmRSS"]) == (10, 10, 40, 40, 40)
    assert (f["writes"], f["accesses"], f["trace_accesses"], f["regions"]) == (10, 10, 10, 1)
    assert f["nr_anon_pages"] == 10 and f["AnonHugePages"] == 0 and f["VmPTE"] > 0
    assert result.workload == "trace" and result.config["thp"] == "never"
    assert set(T.REPORT_COLUMNS) <= set(f) and list(f)[:6] == ["trace_accesses", "accesses", "reads", "writes",
                                                             "atomics", "faults"]
    assert result.timeline["done"].tolist() == [0, 10] and result.timeline["rss_kb"].tolist() == [0, 40]


def test_reads_map_the_zeropage_and_atomics_fault_as_the_architecture_does(tmp_path):
    addrs = HEAP + 4096 * np.arange(4)
    trace = npz(tmp_path, addrs, [READ, READ, ATOMIC, ATOMIC])
    x86 = T.replay(trace, config=Config(thp="never")).final
    assert (x86["faults"], x86["RssAnon"], x86["reads"], x86["atomics"]) == (4, 8, 2, 2)
    arm = T.replay(trace, config=Config(thp="never", arch="arm64")).final
    assert (arm["faults"], arm["RssAnon"]) == (6, 8)              # an atomic: read fault, then write


def test_thp_always_fills_the_huge_pages_a_region_can_hold(tmp_path):
    trace = npz(tmp_path, 0x40000000 + 4096 * np.arange(1024), np.full(1024, WRITE))
    f = T.replay(trace, thp="always").final
    assert (f["thp_fault_alloc"], f["AnonHugePages"], f["faults"]) == (2, 4096, 2)


def test_file_backed_accesses_are_skipped_unless_asked_for(tmp_path):
    addrs = [0x108010, 0x10C000, HEAP, HEAP + 4096, 0x7F0000000000, 0x8]
    trace = npz(tmp_path, addrs, [READ, WRITE, WRITE, WRITE, READ, READ], maps=MAPS)
    f = T.replay(trace).final
    assert (f["skipped_file"], f["skipped_special"], f["skipped_unmappable"]) == (2, 1, 1)
    assert (f["accesses"], f["faults"], f["RssAnon"], f["trace_accesses"]) == (2, 2, 8, 6)
    g = T.replay(trace, include_file_backed=True).final
    assert (g["skipped_file"], g["accesses"], g["faults"], g["RssAnon"]) == (0, 4, 4, 12)


def test_replay_into_a_given_mm_leaves_it_open(tmp_path):
    trace = npz(tmp_path, HEAP + 4096 * np.arange(3), np.full(3, WRITE), maps=MAPS)
    mm = MM(Config(thp="never"))
    seen = []
    T.replay(trace, mm=mm, chunk=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 3), (3, 3)]
    assert (mm.page_states(HEAP, 3 * 4096) == PageState.ANON).all()
    assert mm.smaps(HEAP)["Size"] == (0x522B000 - HEAP) // KB       # the snapshot's VMA
    mm.close()
    with pytest.raises(ValueError, match="not both"):
        T.replay(trace, mm=MM(), thp="always")


def test_an_access_no_mapping_covers_is_a_trace_error(tmp_path):
    np.savez(tmp_path / "lying.npz", addrs=np.array([HEAP, HEAP + (8 << 20)], np.uint64),
             ops=np.array([WRITE, WRITE], np.uint8), pages=np.array([HEAP >> 12], np.uint64))
    with pytest.raises(T.TraceError, match=r"access 1 of .* SIGSEGV"):
        T.replay(tmp_path / "lying.npz")


def test_replay_reads_a_lackey_file_directly(tmp_path):
    path = tmp_path / "t.lackey.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(f" S {HEAP + 4096 * i:08x},8\n" for i in range(5)) + f" L {HEAP:08x},8\n")
    f = T.replay(path, thp="never").final
    assert (f["faults"], f["RssAnon"], f["trace_accesses"]) == (5, 20, 6)


# ---- recording real programs -------------------------------------------------------------------

needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")

TOUCH_8M = r"""
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    size_t n = 8 << 20;
    volatile char *p = malloc(n);
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    long sum = 0;
    for (size_t i = 0; i < n; i += 64 * 4096) sum += p[i];
    printf("%p %ld\n", (void *)p, sum);
    return 0;
}
"""


@pytest.fixture(scope="module")
def touch_8m(tmp_path_factory):
    """A small C program that mallocs 8 MiB and writes a byte of every page, recorded."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    folder = tmp_path_factory.mktemp("touch")
    (folder / "touch.c").write_text(TOUCH_8M)
    subprocess.run(["gcc", "-O1", "-o", str(folder / "touch"), str(folder / "touch.c")], check=True)
    seen = []
    with open(folder / "out.txt", "w") as out:
        trace = T.record([str(folder / "touch")], folder / "touch.npz", progress=lambda d, t: seen.append((d, t)),
                         stdout=out)
    pointer, total = (folder / "out.txt").read_text().split()
    assert int(total) == 32                       # the program ran as it does natively
    return trace, int(pointer, 16), seen


def test_a_recorded_program_replays_with_its_heap_faulted_in(touch_8m):
    trace, pointer, seen = touch_8m
    assert trace.meta["exit_code"] == 0 and trace.meta["program"].endswith("touch")
    assert str(trace).endswith("touch (exit status 0)") and f"{len(trace)} accesses" in str(trace)
    assert trace.meta["lackey"]["skipped"] == 0 and trace.meta["lackey"]["accesses"] == len(trace)
    assert seen and seen[-1] == (len(trace), None)
    heap = pointer & ~4095
    mm = MM(Config(thp="never"))
    f = T.replay(trace, mm=mm).final
    states = mm.page_states(heap, 2048 * 4096)
    assert (states == PageState.ANON).sum() == 2048                # every written page, 4K each
    assert 2048 <= f["faults"] <= 2048 + 200 and f["writes"] >= 2048
    assert 8 * KB <= f["RssAnon"] <= 8 * KB + 1024                 # 8 MiB, and a little stack and data
    assert f["skipped_unmappable"] == 0
    mm.close()


def test_a_recorded_program_has_its_mappings_snapshot(touch_8m):
    trace, pointer, _ = touch_8m
    if not trace.maps:
        pytest.skip("no /proc/PID/maps snapshot was caught while the program ran")
    layout = T.plan_mappings(trace.pages, trace.maps)
    i = int(np.searchsorted(layout.starts, pointer, "right")) - 1
    assert layout.starts[i] <= pointer < layout.ends[i] and layout.kinds[i] == "anon"
    assert "file" in layout.kinds                                  # the program's code and libc


def test_a_recorded_program_replays_on_derived_regions_alone(touch_8m, tmp_path):
    trace, _, _ = touch_8m
    derived = T.write_trace(tmp_path / "derived.npz", trace, maps=[])
    result = T.replay(derived, thp="never")
    f = result.final
    assert result.params["mappings"] == "derived" and f["skipped_file"] == 0
    assert f["accesses"] == len(trace) and 2048 <= f["faults"] <= 2048 + 400
    assert 8 * KB <= f["RssAnon"] <= 8 * KB + 2048


@needs_valgrind
def test_ls_records_and_replays(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with open(tmp_path / "out.txt", "w") as out:
        trace = T.record(["ls", "-l", str(tmp_path)], tmp_path / "ls.npz", stdout=out, timeout=60)
    assert "a-file" in (tmp_path / "out.txt").read_text()
    assert trace.meta["argv"] == ["ls", "-l", str(tmp_path)] and trace.meta["exit_code"] == 0
    assert len(trace) > 10_000 and trace.meta["valgrind"]
    f = T.replay(trace).final
    assert f["accesses"] + f["skipped_file"] + f["skipped_special"] == len(trace)
    assert 0 < f["faults"] <= f["accesses"] and 0 < f["RssAnon"] < 64 * KB
    assert f["skipped_unmappable"] == 0


@needs_valgrind
def test_record_refuses_a_missing_program(tmp_path):
    with pytest.raises(FileNotFoundError, match="program not found"):
        T.record(["/nonexistent/program"], tmp_path / "x.npz")
    with pytest.raises(TypeError, match="argv"):
        T.record("ls", tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_a_valgrind_that_never_opens_its_log_fails_cleanly(tmp_path):
    # `false` stands in for a valgrind that dies before opening the FIFO: the reader waiting
    # to open it must be released, not left hanging
    with pytest.raises(RuntimeError, match="status 1 without a trace"):
        T.record(["ls"], tmp_path / "x.npz", valgrind="false")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="valgrind-nowhere not found"):
        T.record(["ls"], tmp_path / "x.npz", valgrind="valgrind-nowhere")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        T.record(["ls"], tmp_path / "nowhere" / "x.npz")


@needs_valgrind
def test_a_recording_past_its_timeout_is_killed(tmp_path):
    with pytest.raises(TimeoutError, match="killed"):
        T.record(["sleep", "30"], tmp_path / "x.npz", timeout=0.3)
    assert list(tmp_path.iterdir()) == []


@needs_valgrind
def test_a_failing_program_is_recorded_with_its_exit_status(tmp_path):
    trace = T.record(["sh", "-c", "exit 3"], tmp_path / "sh.npz")
    assert trace.meta["exit_code"] == 3 and len(trace) > 0
