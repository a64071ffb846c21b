"""Signals that stop a command: handlers set for a block and put back after it.

`handled` serves the training loop (SIGINT and SIGTERM recorded, the step under way finished and
saved: `training.loop.stop_requests`) and `superresolve` (SIGTERM raised as `Terminated`, as
Ctrl-C raises KeyboardInterrupt: `sigterm_raises`). Handlers can be set only in the main thread;
elsewhere (a notebook's worker thread) nothing changes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterable, Iterator


class Terminated(BaseException):
    """SIGTERM arrived (a batch scheduler's notice before it kills the job, or `kill`). Not an
    `Exception`, as KeyboardInterrupt is not: no `except Exception` on the way may swallow it."""


@contextlib.contextmanager
def handled(numbers: Iterable[int], handler: Callable) -> Iterator[None]:
    """Within the block `handler(number, frame)` handles the signals `numbers`; the previous
    handlers come back after it. Outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in numbers}
    for number in previous:
        signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, signal.SIG_DFL if old is None else old)  # None: set outside Python


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` where Python is, so that a command stopped by a
    scheduler can say what it kept."""
    def terminated(number, frame):
        raise Terminated

    with handled((signal.SIGTERM,), terminated):
        yield
