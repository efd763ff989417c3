"""``mmemu`` / ``python -m mmemu``: the command line."""
import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mmemu", description="Emulate Linux anonymous-memory management.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="show what the kernel does for atomics and huge-zeropage writes")
    args = parser.parse_args(argv)
    try:
        if args.command in (None, "demo"):
            from .demo import main as demo
            demo()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (mmemu demo | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
