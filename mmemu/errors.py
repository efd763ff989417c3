"""Exceptions raised by mmemu.

The system-call methods fail as the kernel's calls fail: with :class:`SyscallError`,
an :class:`OSError` whose ``errno`` is what the kernel would return.  An access the
kernel answers with SIGSEGV raises :class:`SegmentationFault`; running out of emulated
memory is the kernel's OOM and raises :class:`OutOfMemory` (not the host's
:class:`MemoryError`, so the two cannot be confused).
"""
import errno as _errno
import os as _os

__all__ = ["MMError", "SyscallError", "SegmentationFault", "BusError", "OutOfMemory", "ClosedError",
           "InvariantError", "StateFileError"]


class MMError(Exception):
    """Base class of the errors that describe the emulated process, not bad arguments."""


class SyscallError(OSError):
    """A system call failed as the kernel's would: ``errno`` is the kernel's errno."""

    def __init__(self, err, syscall, detail=""):
        msg = f"{syscall}: {_os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        super().__init__(err, msg)
        self.syscall = syscall
        self.detail = detail

    def __reduce__(self):
        return (type(self), (self.errno, self.syscall, self.detail))

    @property
    def errname(self):
        return _errno.errorcode.get(self.errno, str(self.errno))


class SegmentationFault(MMError):
    """The kernel would have sent SIGSEGV for this access.

    ``address`` is the faulting address; ``index`` is the position of the access in
    the trace given to :meth:`mmemu.MM.access` (None for single accesses).  Every
    access before it has taken effect and none after it.  The faulting access itself
    has taken effect as far as the kernel got: on arm64 an atomic on an untouched page
    of a read-only mapping first maps the zeropage by a read fault, then faults again
    as a write and gets the signal.
    """

    def __init__(self, address, index=None, op=None):
        self.address = int(address)
        self.index = None if index is None else int(index)
        self.op = op
        where = "" if index is None else f" (access {index})"
        super().__init__(f"SIGSEGV at {self.address:#x}{where}")

    def __reduce__(self):
        return (type(self), (self.address, self.index, self.op))


class BusError(SegmentationFault):
    """The kernel would have sent SIGBUS: an access to a shared mapping beyond the end of its
    file.  A subclass of :class:`SegmentationFault` (both kill a process that does not catch
    them), with the same ``address`` and ``index``."""

    def __init__(self, address, index=None, op=None):
        super().__init__(address, index, op)
        where = "" if self.index is None else f" (access {self.index})"
        self.args = (f"SIGBUS at {self.address:#x}{where}",)


class OutOfMemory(MMError):
    """The emulated machine ran out of memory (the kernel's OOM: with no swap, the OOM killer
    would end the process).

    The state is consistent and as the kernel leaves it: the accesses before the
    failing one took effect; the failing fault counted in ``pgfault`` but mapped nothing.
    ``address`` is None when a system call (fallocate) ran out, not an access.
    """

    def __init__(self, address, index=None):
        self.address = None if address is None else int(address)
        self.index = None if index is None else int(index)
        where = "" if index is None else f" (access {index})"
        at = "in a system call" if address is None else f"at {self.address:#x}"
        super().__init__(f"out of emulated memory {at}{where}")

    def __reduce__(self):
        return (type(self), (self.address, self.index))


class ClosedError(MMError, ValueError):
    """The MM was closed (its process exited)."""


class InvariantError(MMError):
    """:meth:`mmemu.MM.check` found the engine's state inconsistent: a refcount, mapcount or
    counter that the page tables and page caches do not bear out, a leaked or doubly used
    frame. ``problems`` lists them, one line each (the message joins them). It is an engine
    bug, never the caller's: please report it with the scenario that led there."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("engine invariants violated:\n" + "\n".join(self.problems))

    def __reduce__(self):
        return (type(self), (self.problems,))
class StateFileError(MMError, ValueError):
    """A saved-state file (:meth:`mmemu.MM.save`) that cannot be loaded: truncated, damaged,
    not an mmemu state, or of a state format version this mmemu does not read.  The message
    names the file and the problem; nothing was loaded."""
