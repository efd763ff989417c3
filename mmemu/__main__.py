"""``mmemu`` / ``python -m mmemu``: the command line."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mmemu", description="Emulate Linux anonymous-memory management.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="show what the kernel does for atomics and huge-zeropage writes")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        from .demo import main as demo
        demo()
        return 0
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
