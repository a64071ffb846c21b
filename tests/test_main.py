"""`libraries.__main__`: the command dispatcher and its quiet import of TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

from libraries import __main__ as cli

from helpers import REPOSITORY_ROOT


def test_a_command_prints_no_tensorflow_import_lines():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-m", "libraries", "pretrain-regnet", "--help"], cwd=REPOSITORY_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: python -m libraries pretrain-regnet")
    assert run.stderr == ""


def test_only_the_known_import_lines_are_dropped(capfd):
    with cli._without_import_noise():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"a real error line\n")
        os.write(2, b"I0000 00:00:1.0  1 port.cc:153] oneDNN custom operations are on. You may see ...\n")
        os.write(2, b"another line\n")
    assert capfd.readouterr().err == "a real error line\nanother line\n"


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 0
    printed = capsys.readouterr().out
    assert all(f"  {name} " in printed for name in cli.COMMANDS)
    assert cli.main(["no-such-command"]) == 2
