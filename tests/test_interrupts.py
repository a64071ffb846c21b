"""`libraries.interrupts` with worker processes: a stop while `prepare` starts its workers, and
Ctrl-C (sent by a terminal to every process of the group) while they work."""

from __future__ import annotations

import gc
import multiprocessing.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from libraries import interrupts, synthetic
from libraries.dataset import creation

from helpers import subprocess_env


def _workers(parent: int) -> set[int]:
    """The process ids of the worker processes `parent` spawned (not its resource tracker)."""
    found = set()
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(int(pid))
            except FileNotFoundError:  # ended meanwhile
                pass
    return found


def _status(pid: int, field: str) -> str:
    """A field of /proc/PID/status ("" once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(field + ":")), "")


def _holds(mask: str, number: int) -> bool:
    """Whether the hexadecimal signal set `mask` of /proc/PID/status holds signal `number`."""
    return bool(int(mask or "0", 16) >> (number - 1) & 1)


def test_a_stop_while_workers_start_waits_until_they_have_started(capfd, monkeypatch):
    """SIGTERM between a worker's start and the bootstrap data its parent then writes to it:
    raised there, it left the pipe empty and the worker printed an EOFError traceback after the
    command's error line. Held until the workers have started, it ends the map with Terminated and no worker
    prints anything."""
    spawn, sent = multiprocessing.util.spawnv_passfds, []

    def spawn_then_stop(path, arguments, *rest):  # the worker runs; its bootstrap data is not yet written
        pid = spawn(path, arguments, *rest)
        if not sent and any("spawn_main" in str(argument) for argument in arguments):  # not the resource tracker
            sent.append(pid)
            os.kill(os.getpid(), signal.SIGTERM)
            (lambda: None)()  # Python runs a signal's handler as it enters a Python function
        return pid

    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", spawn_then_stop)
    before = _workers(os.getpid())
    with pytest.raises(interrupts.Terminated), interrupts.sigterm_raises():
        with creation.worker_pool(2) as pool:
            list(creation._parallel_map(abs, [-1, -2, -3, -4], pool, "numbers", False))
    gc.collect()  # a worker whose start was cut short reads its pipe until the parent's end is closed
    deadline = time.monotonic() + 60
    for pid in _workers(os.getpid()) - before:  # every worker started here has ended and said what it had to
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, f"worker {pid} still running"
            time.sleep(0.05)
    assert sent and capfd.readouterr().err == ""
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # pytest's own handler, put back


def test_workers_leave_stops_to_the_parent_and_ctrl_c_ends_prepare_with_one_line(tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the workers ignore it (set before
    their first scene) and `prepare` stops them, removes what it wrote and says so in one line."""
    synthetic.write_dataset(tmp_path / "probav", seed=2, n_scenes=24, n_test_scenes=2, lr_size=48, progress=False)
    out = tmp_path / "prepared"
    process = subprocess.Popen([sys.executable, "-m", "libraries", "prepare", "--data", str(tmp_path / "probav"),
                                "--out", str(out), "--band", "NIR", "--processes", "2", "--quiet",
                                "--patch-size", "48"], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while True:  # the event: two workers, each ignoring SIGINT and SIGTERM (its initializer ran)
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no worker ready in time"
            try:
                workers = _workers(process.pid)
            except FileNotFoundError:
                continue
            ignored = [_status(pid, "SigIgn") for pid in workers]
            if len(workers) == 2 and all(_holds(mask, signal.SIGINT) and _holds(mask, signal.SIGTERM)
                                         for mask in ignored):
                break
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130
    assert output.strip().splitlines() == ["error: prepare interrupted (Ctrl-C); nothing half-written is left, "
                                           "the same command starts it again"]
    assert not out.exists()  # made by the command, removed with its temporary folders
    for pid in workers:  # ended with their parent (a zombie is ended: no init reaps it in a container)
        assert _status(pid, "State")[:1] in ("", "Z"), pid


def test_a_process_started_while_stops_are_held_starts_with_them_blocked(tmp_path):
    """A terminal's Ctrl-C reaches a worker still importing its modules (before its initializer
    ignores it): started within `deferred`, it holds the signal blocked until then."""
    code = "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(60)"
    started = tmp_path / "started"
    with interrupts.deferred():
        child = subprocess.Popen([sys.executable, "-c", code, str(started)])
    try:
        deadline = time.monotonic() + 30
        while not started.exists():  # the event: the child runs its own code
            assert time.monotonic() < deadline and child.poll() is None, "the child did not start"
            time.sleep(0.01)
        blocked = _status(child.pid, "SigBlk")
        assert _holds(blocked, signal.SIGINT) and _holds(blocked, signal.SIGTERM), blocked
    finally:
        child.kill()
        child.wait()
    assert not _holds(_status(os.getpid(), "SigBlk"), signal.SIGTERM)  # this process's mask put back


def test_a_stop_another_thread_receives_within_the_block_is_raised_as_it_ends():
    """The block's mask holds a stop sent to this thread; one the kernel gives another thread
    (TensorFlow's, tqdm's, whose masks do not hold it) runs the Python handler at once, in this
    thread: `deferred` records it, lets the block finish and raises it as the block ends."""
    gate = threading.Event()
    other = threading.Thread(target=gate.wait)  # started before the block: its mask lets stops in
    other.start()
    finished = []
    try:
        with pytest.raises(interrupts.Terminated), interrupts.sigterm_raises():
            with interrupts.deferred() as held:
                signal.pthread_kill(other.ident, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while not held:  # the event: the handler ran here and recorded the stop
                    assert time.monotonic() < deadline, "the stop was not recorded"
                    time.sleep(0.001)
                finished.append(held[:])
    finally:
        gate.set()
        other.join()
    assert finished == [[signal.SIGTERM]]  # the block ran to its end before Terminated
