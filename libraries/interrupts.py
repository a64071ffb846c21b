"""Signals that stop a command: handlers set for a block and put back after it.

`handled` serves the training loop (SIGINT and SIGTERM recorded, the step under way finished and
saved: `training.loop.stop_requests`) and every command (SIGTERM raised as `Terminated`, as
Ctrl-C raises KeyboardInterrupt: `sigterm_raises`). `deferred` holds both while worker processes
start, and `leave_stops_to_the_parent` makes those workers ignore them. Handlers can be set only
in the main thread; elsewhere (a notebook's worker thread) nothing changes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterable, Iterator


STOPS = (signal.SIGINT, signal.SIGTERM)


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


@contextlib.contextmanager
def deferred() -> Iterator[list[int]]:
    """Within the block SIGINT and SIGTERM wait: their handlers run as it ends. For what a stop
    must not cut midway: a worker process whose start is cut short (its parent's pipe closed
    before the child has read its bootstrap data) prints a traceback of its own after the
    command's error line. Processes started within the block inherit the signals blocked, so a
    terminal's Ctrl-C, sent to the whole process group, cannot interrupt their imports either
    (`leave_stops_to_the_parent` then ignores and unblocks them). Yields the list of the stops
    recorded so far: those another thread received (the mask holds those sent to this one)."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    caught: list[int] = []
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
        # a signal another thread receives still runs the Python handler here: record it
        with handled(STOPS, lambda number, frame: caught.append(number)):
            yield caught
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # signals held by the mask run their handlers now
        for number in caught[:1]:
            signal.raise_signal(number)


def leave_stops_to_the_parent() -> None:
    """Initializer of worker processes: SIGINT and SIGTERM ignored, then unblocked (`deferred`).
    The parent owns the stop: it cancels the queued work, waits for the items under way and
    removes what it wrote; a worker stopped by Ctrl-C would print its own traceback."""
    for number in STOPS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
