"""``mmemu`` / ``python -m mmemu``: the command line (mmemu.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
