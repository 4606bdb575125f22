"""Ctrl-C and SIGTERM, owned by the execution layer: both raise :class:`Interrupted` in the main
thread, the executor in use cancels its work and stops what it started, and the command prints
one line and exits 128 + the signal number (130 / 143).

Ray installs its own SIGTERM handler when it starts a driver; :func:`reinstall` puts ours back. An
exception raised by a handler inside a C extension's blocking call can reach Python wrapped in
another error (Ray's ``wait`` turns it into a SystemError), so :func:`received` tells whatever
error surfaces whether a signal caused it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_installed = False
_received: int | None = None


class Interrupted(BaseException):
    """The job was asked to stop (a BaseException, like KeyboardInterrupt: nothing swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, _frame) -> None:
    global _received
    _received = signum
    raise Interrupted(signum)


def received() -> int | None:
    """The signal that interrupted this process, if one did."""
    return _received


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only; elsewhere a no-op)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    for signum in _SIGNALS:
        signal.signal(signum, _raise)
    _installed = True
    try:
        yield
    finally:
        _installed = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def reinstall() -> None:
    """Put our handlers back after a library (Ray) replaced them, when :func:`interrupts_raise` is active."""
    if _installed and threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            signal.signal(signum, _raise)


def ignore_interrupts() -> None:
    """In a worker process: Ctrl-C reaches the whole process group, but only the driver decides."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
