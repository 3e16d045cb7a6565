"""Interruptions that unwind: SIGTERM raised as an exception (so `finally` blocks remove temporary
files, as they do for Ctrl-C), and a short window in which neither signal can land (moving finished
outputs into place)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process was: handled like Ctrl-C (clean up, exit 143)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` instead of killing the process outright.

    Only in the main thread and only where SIGTERM still has its default action (an application's own
    handler is left alone); elsewhere it does nothing.
    """
    if not _main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM are held back (delivered on exit) while inside: for a few renames that must
    happen together. Only the main thread receives Python's signals, so other threads need nothing."""
    if not _main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
