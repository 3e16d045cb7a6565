"""Interruptions that unwind: SIGTERM raised as an exception (so `finally` blocks remove temporary
files, as they do for Ctrl-C), interruptions that land where Python cannot raise them sent again, and a
short window in which neither signal can land (making, moving and removing temporary outputs)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
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


#: Delay before an interruption that was swallowed is sent again: long enough for the interpreter to
#: leave the finalizer or callback it landed in (the main thread keeps the GIL for up to 5 ms).
RESEND_DELAY_S = 0.02


@contextlib.contextmanager
def interruptions_not_lost() -> Iterator[None]:
    """While inside, Ctrl-C or SIGTERM that lands in a finalizer or a weakref callback (importlib's
    module locks have one) is sent again instead of being printed as "Exception ignored ... Traceback"
    and dropped, which would let an interrupted command run on to the end.

    Python cannot raise from such a place, so `sys.unraisablehook` sees the exception; a helper thread
    sends the same signal a moment later, when the main thread is back in ordinary code. On the way
    out, a signal still being sent is waited for, so it lands inside (where the caller handles it).
    """
    if not _main_thread():
        yield
        return
    previous = sys.unraisablehook
    senders: list[threading.Thread] = []

    def hook(unraisable) -> None:
        if unraisable.exc_type is None or not issubclass(unraisable.exc_type, KeyboardInterrupt):
            previous(unraisable)
            return
        signum = signal.SIGTERM if issubclass(unraisable.exc_type, Terminated) else signal.SIGINT
        sender = threading.Thread(target=_send_later, args=(os.getpid(), signum), daemon=True)
        senders.append(sender)
        sender.start()

    sys.unraisablehook = hook
    try:
        yield
        for sender in senders:
            sender.join()  # (the signal's handler runs as this call returns)
    finally:
        sys.unraisablehook = previous


def _send_later(pid: int, signum: int) -> None:
    time.sleep(RESEND_DELAY_S)
    os.kill(pid, signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM are held back (delivered on exit) while inside: for a few file operations that
    must not be cut short (making, moving, removing temporary outputs).

    Their Python handlers are swapped for one that only records the signal; on exit the first recorded
    one is handed to the handler that was there. (Blocking the signals with `pthread_sigmask` is not
    enough: it holds them back from the main thread only, and a signal delivered to one of the threads
    that onnxruntime or torch start still runs Python's handler in the main thread.) Python runs
    handlers only in the main thread, so other threads need nothing.
    """
    if not _main_thread():
        yield
        return
    caught: list[int] = []

    def record(signum, frame) -> None:
        caught.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # (None: a handler not set from Python, left alone)
            previous[signum] = signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])  # the default action, as if it had not been held back
