"""The ``mmemu`` command.

    mmemu demo                                  the README's demonstration
    mmemu run SCENARIO.toml [--host]            a scenario file, step by step (and on this kernel)
    mmemu pretouch --heap 1G [--case NAME]...   atomic pretouch, as the JVM's AlwaysPreTouch
    mmemu migrate --size 4G --zero 0.6 ...      the destination of a QEMU live migration
    mmemu record -o TRACE.npz -- PROGRAM ARGS   a program's memory trace, under valgrind lackey
    mmemu replay TRACE                          a trace replayed on the emulator
    mmemu sweep WORKLOAD --grid arch=x86_64,arm64 ...   a workload over a grid of settings
    mmemu conformance [IDS]                     the scenario library, emulator against this kernel

Settings: ``--set KEY=VALUE`` (repeatable) sets a :class:`mmemu.Config` field (``kernel=6.12``
brings that version's behaviour; ``hugepages=64:always,2048:madvise``). Long runs show a
progress bar on a terminal; ``--plot FILE.png`` draws RSS and faults over the run;
``--json`` prints a machine-readable result. Bad input is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import Config
from .errors import MMError

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class UsageError(Exception):
    """Bad input on the command line: reported in one line, exit status 2."""


def parse_size(text: str) -> int:
    """'4G', '512M', '2m', '4096', '1.5G' -> bytes."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    suffix = t[-1] if t and t[-1] in SIZE_SUFFIXES else ""
    number = t[:-1] if suffix else t
    try:
        value = float(number) * SIZE_SUFFIXES[suffix]
    except ValueError:
        raise UsageError(f"not a size: {text!r} (say 4096, 64K, 2M, 1G)") from None
    if value < 0 or value != int(value):
        raise UsageError(f"not a whole number of bytes: {text!r}")
    return int(value)


def parse_value(text: str):
    """A setting's value: true/false, an integer, a number, else the text."""
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_settings(pairs) -> dict:
    """``KEY=VALUE`` strings -> Config fields (``hugepages=64:always,2048:never`` a dict)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"a setting is KEY=VALUE, not {pair!r}")
        if key == "hugepages":
            sizes = {}
            for item in value.split(","):
                kb, _, mode = item.partition(":")
                try:
                    sizes[int(kb.removesuffix("kB").removesuffix("K"))] = mode
                except ValueError:
                    raise UsageError(f"hugepages is SIZE_KB:MODE[,...], not {value!r}") from None
            out[key] = sizes
        else:
            out[key] = value if key in _TEXT_SETTINGS else parse_value(value)
    return out


#: settings whose values stay text ("6.10" is a version, not a number)
_TEXT_SETTINGS = ("kernel",)


def make_config(pairs) -> Config:
    """The Config of ``--set`` pairs (a ``kernel`` brings that version's behaviour)."""
    try:
        return Config.from_fields(parse_settings(pairs))
    except TypeError as exc:
        raise UsageError(f"unknown setting: {exc}") from None


class Progress:
    """A tqdm progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, desc, unit="it", enabled=None):
        from tqdm import tqdm
        enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = tqdm(desc=desc, unit=unit, unit_scale=True, disable=not enabled, file=sys.stderr,
                        leave=False, dynamic_ncols=True)

    def __call__(self, done, total=None):
        if total is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()                 # show the percentage from the first report on
        self.bar.update(done - self.bar.n)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- output -------------------------------------------------------------------------------

def print_table(rows, out=None):
    """rows (dicts with the same keys) as an aligned text table."""
    out = out or sys.stdout
    if not rows:
        return
    keys = list(rows[0])
    cells = [[_cell(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip(), file=out)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def print_final(final: dict, out=None):
    """A result's final figures, one per line."""
    out = out or sys.stdout
    width = max(map(len, final), default=0)
    for key, value in final.items():
        print(f"{key.ljust(width)}  {_cell(value)}", file=out)


def emit_results(args, results: dict, keys=None):
    """Print ``results`` (name -> WorkloadResult): --json, or a table of final figures; --plot."""
    if args.plot:
        from .workloads.result import plot_timelines
        plot_timelines(list(results.values()), args.plot, labels=list(results))
    if args.json:
        print(json.dumps({name: json.loads(r.to_json()) for name, r in results.items()}))
        return
    rows = []
    for name, r in results.items():
        final = {k: v for k, v in r.final.items() if keys is None or k in keys}
        rows.append({"case": name, **final})
    print_table(rows)
    if args.plot:
        print(f"plot: {args.plot}", file=sys.stderr)


# ---- subcommands --------------------------------------------------------------------------

def cmd_demo(args):
    from .demo import main as demo
    demo()
    return 0


def cmd_conformance(args):
    from .conformance import format_table, run_all
    from .host import host_supported
    ok, why = host_supported()
    if not ok:
        raise UsageError(f"this machine cannot show page states: {why}")
    with Progress("scenarios") as bar:
        results = run_all(lambda i, n, name: bar(i, n), only=set(args.only))
    print(format_table(results))
    return 1 if any(r.status in ("differs", "host differs") for r in results) else 0


def cmd_pretouch(args):
    from .workloads.pretouch import PRETOUCH_CASES, atomic_pretouch
    heap = parse_size(args.heap)
    if args.case:
        unknown = [c for c in args.case if c not in PRETOUCH_CASES]
        if unknown:
            raise UsageError(f"unknown case {unknown[0]!r}: one of {', '.join(map(repr, PRETOUCH_CASES))}")
        cases = {name: Config.for_kernel(*PRETOUCH_CASES[name][:1], **{**PRETOUCH_CASES[name][1],
                                                                      **parse_settings(args.set)})
                 for name in args.case}
    elif args.set:
        cases = {"pretouch": make_config(args.set)}
    else:
        cases = {name: Config.for_kernel(kernel, **fields) for name, (kernel, fields) in PRETOUCH_CASES.items()}
    results = {}
    for name, config in cases.items():
        with Progress(name, "page") as bar:
            stride = parse_size(args.stride)
            results[name] = atomic_pretouch(heap, config, stride=stride, hugepage=not args.no_hugepage,
                                            chunk_pages=max(256, heap // max(stride, 1) // 100),
                                            khugepaged_scans=args.khugepaged, progress=bar)
    emit_results(args, results)
    return 0


def cmd_migrate(args):
    from .workloads import migration
    size = parse_size(args.size)
    config = make_config(args.set)
    strategies = migration.STRATEGIES if args.strategy == ["all"] else args.strategy
    image = migration.GuestImage(size=size, zero=args.zero, layout=args.layout, discarded=args.discarded,
                                 seed=args.seed)
    results = {}
    for strategy in strategies:
        with Progress(strategy, "page") as bar:
            results[strategy] = migration.migrate(image, strategy=strategy, backing=args.backing,
                                                  config=config if args.set else None, chunk_pages=args.chunk,
                                                  progress=bar, precopy_fraction=args.precopy_fraction
                                                  if strategy == "postcopy" else 0)
    emit_results(args, results, keys=MIGRATION_COLUMNS)
    return 0


#: what `mmemu migrate` prints of each result (--json prints everything)
MIGRATION_COLUMNS = ("pages_written", "pages_zero_checked", "pages_zero_skipped", "uffd_copy", "uffd_zeropage",
                     "faults", "rss_kb", "huge_kb", "pte_kb", "thp_ranges", "huge_zero_ranges",
                     "vmstat_thp_split_pmd")


def cmd_record(args):
    from . import trace
    if not args.program:
        raise UsageError("record needs a program: mmemu record -o TRACE.npz -- PROGRAM ARGS")
    with Progress("recording", "access") as bar:
        info = trace.record(args.program, args.output, progress=bar)
    print(f"{args.output}: {info}" if info is not None else args.output)
    return 0


def cmd_replay(args):
    from . import trace
    config = make_config(args.set)
    recorded = trace.open_trace(args.trace)
    chunk = args.chunk or max(1024, recorded.length // 100)      # a hundred points to plot
    with Progress("replaying", "access") as bar:
        result = trace.replay(recorded, config=config, chunk=chunk, progress=bar)
    emit_results(args, {os.path.basename(args.trace): result}, keys=trace.REPORT_COLUMNS)
    return 0


def cmd_sweep(args):
    from .sweep import WORKLOADS, sweep
    if args.workload not in WORKLOADS:
        raise UsageError(f"unknown workload {args.workload!r}: one of {', '.join(WORKLOADS)}")
    grid = {}
    for axis in args.grid:
        key, sep, values = axis.partition("=")
        if not sep or not key or not values:
            raise UsageError(f"a grid axis is KEY=V1,V2,..., not {axis!r}")
        grid[key] = [_workload_value(key, v) for v in values.split(",")]
    for key, value in parse_settings(args.param).items():
        grid[key] = [_workload_value(key, value) if isinstance(value, str) else value]
    with Progress("sweep", "point") as bar:
        rows = sweep(args.workload, grid, max_workers=args.workers, progress=bar, as_frame=False)
    if args.csv:
        import csv
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        print_table(rows)
    return 0


def _workload_value(key, text):
    """A grid value: sizes for the size-like arguments, else as a setting."""
    if not isinstance(text, str) or key in _TEXT_SETTINGS:
        return text
    if key in ("heap", "size", "stride"):
        return parse_size(text)
    return parse_value(text)


def cmd_run(args):
    from .scenario_file import load_scenario, run_scenario
    scenario = load_scenario(args.file)
    overrides = parse_settings(args.set)
    report = run_scenario(scenario, overrides, host=args.host)
    if args.plot:
        report.plot(args.plot)
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
    else:
        report.print()
    return report.exit_status


# ---- the parser ---------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(prog="mmemu", description="Emulate Linux anonymous-memory management: "
                                     "what the kernel would do, and what it would cost.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, helptext, fn, settings=True, output=True):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(fn=fn)
        if settings:
            p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                           help="a Config field (repeatable): arch=arm64, thp=always, kernel=6.12, "
                                "hugepages=64:always")
        if output:
            p.add_argument("--json", action="store_true", help="print the result as JSON")
            p.add_argument("--plot", metavar="FILE.png", help="draw RSS and faults over the run (matplotlib)")
        return p

    command("demo", "show what the kernel does for atomics and huge-zeropage writes", cmd_demo,
            settings=False, output=False)
    p = command("conformance", "run the scenario library on the emulator and on this machine's kernel "
                "(Linux, root) and compare", cmd_conformance, settings=False, output=False)
    p.add_argument("only", nargs="*", help="scenario ids to run (default: all)")

    p = command("run", "play a scenario file (TOML or JSON) step by step", cmd_run)
    p.add_argument("file", help="the scenario file")
    p.add_argument("--host", action="store_true", help="play it on this machine's kernel too and compare")

    p = command("pretouch", "atomic pretouch of a heap, as the JVM's AlwaysPreTouch", cmd_pretouch)
    p.add_argument("--heap", default="1G", help="heap size (a multiple of 2M; default 1G)")
    p.add_argument("--stride", default="4K", help="bytes between touches (default 4K)")
    p.add_argument("--case", action="append", help="one of the thread's cases (repeatable; default: all)")
    p.add_argument("--no-hugepage", action="store_true", help="no MADV_HUGEPAGE on the heap")
    p.add_argument("--khugepaged", type=int, default=0, metavar="N", help="full khugepaged passes afterwards")

    p = command("migrate", "the destination of a QEMU live migration", cmd_migrate)
    p.add_argument("--size", default="4G", help="guest RAM (default 4G)")
    p.add_argument("--zero", type=float, default=0.5, help="fraction of zero pages (default 0.5)")
    p.add_argument("--layout", default="clustered", help="where the zero pages are: random, clustered, tail")
    p.add_argument("--discarded", type=float, default=0.0, help="fraction discarded by the balloon")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", action="append", default=None,
                   help="precopy-write, precopy, multifd, postcopy or all (repeatable; default all)")
    p.add_argument("--backing", default="anon", help="anon (private) or memfd (shared)")
    p.add_argument("--chunk", type=int, default=1 << 15, help="pages per timeline sample")
    p.add_argument("--precopy-fraction", type=float, default=0.0,
                   help="postcopy: the part of the pages sent by precopy before the switch")

    p = command("record", "record a program's memory trace under valgrind lackey", cmd_record,
                settings=False, output=False)
    p.add_argument("-o", "--output", default="trace.npz", help="the trace file (default trace.npz)")
    p.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS")

    p = command("replay", "replay a recorded (or lackey, .npy) trace", cmd_replay)
    p.add_argument("trace", help="the trace file")
    p.add_argument("--chunk", type=int, default=0, help="accesses per timeline sample (default: 1%% of the trace)")

    p = command("sweep", "run a workload over a grid of settings on a process pool", cmd_sweep, output=False)
    p.add_argument("workload", help="pretouch, migration or trace")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="an axis of the grid (repeatable): a Config field or a workload argument")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a fixed workload argument")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV too")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo"])
    if getattr(args, "program", None) and args.program[0] == "--":
        args.program = args.program[1:]
    if getattr(args, "strategy", 1) is None:
        args.strategy = ["all"]
    try:
        status = args.fn(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # the reader went away (mmemu demo | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("mmemu: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, OSError, MMError, RuntimeError) as exc:
        if os.environ.get("MMEMU_TRACEBACK"):          # for debugging mmemu itself
            raise
        print(f"mmemu {args.command}: error: {exc}", file=sys.stderr)
        return 2
