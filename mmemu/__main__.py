"""``mmemu`` / ``python -m mmemu``: the command line."""
import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mmemu", description="Emulate Linux anonymous-memory management.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="show what the kernel does for atomics and huge-zeropage writes")
    conf = sub.add_parser("conformance", help="run the scenario library on the emulator and on this "
                                              "machine's kernel (Linux, root) and compare")
    conf.add_argument("only", nargs="*", help="scenario ids to run (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.command in (None, "demo"):
            from .demo import main as demo
            demo()
        elif args.command == "conformance":
            return conformance(args.only)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (mmemu demo | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def conformance(only=()):
    from .conformance import format_table, run_all
    from .host import host_supported
    ok, why = host_supported()
    if not ok:
        print(f"mmemu conformance: this machine cannot show page states: {why}", file=sys.stderr)
        return 2
    def progress(i, n, name):
        if sys.stderr.isatty():
            print(f"\r[{i + 1}/{n}] {name:<12}", end="", file=sys.stderr, flush=True)
    results = run_all(progress, only=set(only))
    if sys.stderr.isatty():
        print("\r" + " " * 30 + "\r", end="", file=sys.stderr)
    print(format_table(results))
    return 1 if any(r.status in ("differs", "host differs") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
