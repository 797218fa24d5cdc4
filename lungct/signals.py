"""SIGTERM handled like Ctrl-C: the one helper every command that writes runs its work under.

A scheduler's time limit, ``timeout``, ``docker stop`` and ``kill`` send SIGTERM, whose default action
ends the process at once: no ``finally``, so temporary files and folders stay behind and a running
trial stays RUNNING. Under :func:`sigterm_as_interrupt` a SIGTERM raises :class:`Terminated` in the main
thread instead, a ``KeyboardInterrupt``, so every cleanup written for Ctrl-C (``except
KeyboardInterrupt``, ``finally``, ``lungct.files.atomic_path``) runs unchanged, and the command exits
143 (128 + SIGTERM, what a shell reports for a process that SIGTERM ended) where Ctrl-C exits 130.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

_received = False


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where Ctrl-C's ``KeyboardInterrupt`` would be, so the same cleanup runs."""


def raise_terminated(signum: int = signal.SIGTERM, frame: object = None) -> None:
    """A SIGTERM handler: note it, ignore any further SIGTERM (the cleanup must not be cut short), raise."""
    global _received
    _received = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def stopped_by_sigterm(error: BaseException) -> bool:
    """Whether ``error``, the ``KeyboardInterrupt`` that stopped some work, came from a SIGTERM to this process.

    False for Ctrl-C. False too in a ``multiprocessing`` worker: there a SIGTERM is how its parent asks it
    to stop, for the parent's own Ctrl-C as for a SIGTERM, so the worker cannot tell which it was.
    """
    return isinstance(error, Terminated) and multiprocessing.parent_process() is None


def terminated() -> bool:
    """Whether a SIGTERM reached :func:`raise_terminated` since :func:`sigterm_as_interrupt` began."""
    return _received


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the old handler after it.

    Off the main thread (where Python cannot set a handler) the block runs with SIGTERM as it was.
    """
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = False
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(code: int) -> int:
    """``code``, with a Ctrl-C's 130 told apart as 143 when it was SIGTERM that stopped the work."""
    return EXIT_TERMINATED if code == EXIT_INTERRUPTED and terminated() else code


def run_terminable(body: Callable[[], int]) -> int:
    """Run a command's ``body`` (which answers Ctrl-C itself, with 130) under :func:`sigterm_as_interrupt`.

    Returns:
        The body's exit code, 143 in place of 130 after a SIGTERM, and 143 for a SIGTERM the body did
        not catch (one that came during its own cleanup).
    """
    with sigterm_as_interrupt():
        try:
            code = body()
        except Terminated:
            return EXIT_TERMINATED
        return exit_status(code)
