"""mmemu: an emulator of the Linux kernel's anonymous-memory management.

>>> from mmemu import MM, Config, PageState, READ, WRITE, ATOMIC
>>> mm = MM()
>>> a = mm.mmap(2 << 20)
>>> mm.read(a), mm.write(a)
(1, 1)
"""
from .config import Config
from .constants import ATOMIC, READ, WRITE, PageState
from ._savefile import LoadedMachine, load, load_machine
from .errors import (BusError, ClosedError, InvariantError, MMError, OutOfMemory, SegmentationFault,
                     StateFileError, SyscallError)
from .mm import MM, Memfd

try:
    from ._version import version as __version__
except ImportError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["MM", "Memfd", "Config", "PageState", "READ", "WRITE", "ATOMIC", "SegmentationFault",
           "BusError", "OutOfMemory", "SyscallError", "MMError", "ClosedError", "InvariantError", "StateFileError",
           "load", "load_machine", "LoadedMachine", "__version__"]
