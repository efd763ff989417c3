"""Shared by the examples: a size argument and a table printer."""
import argparse
import sys

from mmemu.cli import UsageError, parse_size, print_table  # noqa: F401  (print_table: for the examples)


def size_argument(description, default, small):
    """Parse ``--size`` (default ``default``; ``--small`` gives ``small``, for CI)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", default=default, help=f"memory to work on (default {default})")
    parser.add_argument("--small", action="store_true", help=f"a quick run ({small})")
    args = parser.parse_args()
    try:
        return parse_size(small if args.small else args.size)
    except UsageError as exc:
        parser.error(str(exc))


def main_guard(fn):
    try:
        fn()
    except BrokenPipeError:
        sys.exit(0)
