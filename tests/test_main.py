"""`libraries.__main__`: the command dispatcher and its quiet import of TensorFlow."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from libraries import __main__ as cli
from libraries import checkpoints, config, model, probav
from libraries.model import SISRNet

from helpers import REPOSITORY_ROOT, subprocess_env


def test_a_command_prints_no_tensorflow_import_lines():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-m", "libraries", "pretrain-regnet", "--help"], cwd=REPOSITORY_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: python -m libraries pretrain-regnet")
    assert run.stderr == ""


def test_a_command_says_what_the_auto_settings_chose_and_the_measurement_behind_it(tmp_path):
    """`superresolve --frames` of a user on a 2-thread CPU: frame by frame, each image's
    convolutions in strips or whole, the element-wise work fused by XLA or not, each choice one
    INFO line on stderr with the probe's timings (here of whatever this machine measures)."""
    cfg = config.default_config(n_features=4)  # every hardware choice `auto`, as shipped
    weights = checkpoints.save_model_checkpoint(model.DeepSUM(cfg), tmp_path / "weights", cfg)
    rng = np.random.default_rng(0)
    (tmp_path / "frames").mkdir()
    for index in range(9):
        probav.write_png(tmp_path / "frames" / f"LR{index:03d}.png", rng.integers(7000, 9000, (16, 16), dtype=np.uint16))
    run = subprocess.run([sys.executable, "-m", "libraries", "superresolve", "--config", str(weights / "config.json"),
                          "--checkpoint", str(weights), "--frames", str(tmp_path / "frames"),
                          "--out", str(tmp_path / "sr.tif")], cwd=tmp_path,
                         env={**subprocess_env(), "TF_NUM_INTRAOP_THREADS": "2"}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    number = r"\d+\.\d+ s"
    lines = run.stderr.splitlines()
    strips = [line for line in lines if line.startswith("INFO libraries.model.strips: ")]
    assert len(strips) == 1 and re.fullmatch(rf"INFO libraries.model.strips: frame_strips auto: whole image {number}, "
                                             rf"2 strips {number} on \(1, 386, 386, 64\) -> (2 strips|whole images)",
                                             strips[0]), run.stderr
    fused = [line for line in lines if line.startswith("INFO libraries.model.fusion: ")]
    assert len(fused) == 1 and re.fullmatch(rf"INFO libraries.model.fusion: xla_elementwise auto, element-wise work in "
                                            rf"float32: separate ops {number}, XLA {number} on \(1, 384, 384, 64\) "
                                            rf"-> (XLA|separate ops)", fused[0]), run.stderr


def test_a_refused_checkpoint_is_not_followed_by_tensorflows_warnings_of_unread_values(tmp_path, caplog):
    """A checkpoint whose shapes do not fit fails midway through TensorFlow's restore; as its
    objects are collected TensorFlow warns of every value left unread (4 lines here, hundreds for
    a whole DeepSUM). The command line drops them; other TensorFlow warnings pass."""
    folder = checkpoints.save_model_checkpoint(SISRNet(8), tmp_path / "sisrnet")
    tensorflow_logger = logging.getLogger("tensorflow")

    def refused_then_collected() -> str:
        caplog.clear()
        with pytest.raises(checkpoints.CheckpointError, match="does not fit SISRNet"):
            checkpoints.restore_weights(SISRNet(16), folder)  # 16 features: no shape fits
        gc.collect()
        tensorflow_logger.warning("another warning")
        return caplog.text

    installed = cli.UNREAD_CHECKPOINT_VALUES in tensorflow_logger.filters  # by an earlier `main` in this process
    tensorflow_logger.removeFilter(cli.UNREAD_CHECKPOINT_VALUES)
    try:
        assert "Value in checkpoint could not be found" in refused_then_collected()  # what TensorFlow writes
        tensorflow_logger.addFilter(cli.UNREAD_CHECKPOINT_VALUES)  # as `main` does
        logged = refused_then_collected()
    finally:
        tensorflow_logger.removeFilter(cli.UNREAD_CHECKPOINT_VALUES)
        if installed:
            tensorflow_logger.addFilter(cli.UNREAD_CHECKPOINT_VALUES)
    assert "could not be found" not in logged and "unrestored values" not in logged and "another warning" in logged


def test_only_the_known_import_lines_are_dropped(capfd):
    with cli.without_import_noise():
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


# command, its arguments (under tmp_path), and what the one error line must name
BAD_INPUTS = [
    ("demo", ["--data", "{tmp}/no_probav", "--out", "{tmp}/demo"], "no_probav"),
    ("synth", ["--out", "{tmp}/file.txt/synthetic", "--seed", "0", "--scenes", "1", "--test-scenes", "1"], "file.txt"),
    ("prepare", ["--data", "{tmp}/no_probav", "--out", "{tmp}/prepared"], "no_probav"),
    ("convert-tf1", ["{tmp}/no_checkpoint", "{tmp}/converted"], "no_checkpoint"),
    ("fetch-weights", ["--dest", "{tmp}/repo", "--url-base", "{tmp}/no_copy"], "no_copy"),
    ("train", ["--config", "{tmp}/no_config.json"], "no_config.json"),
    ("pretrain-sisrnet", ["--config", "{tmp}/no_config.json"], "no_config.json"),
    ("pretrain-regnet", ["--config", "{tmp}/no_config.json"], "no_config.json"),
    ("superresolve", ["--config", "{tmp}/no_config.json", "--checkpoint", "{tmp}/none", "--data", "{tmp}",
                      "--out", "{tmp}/out.zip"], "no_config.json"),
    ("score", ["--data", "{tmp}", "--submission", "{tmp}/no_submission.zip"], "train/NIR: no such folder"),
]


@pytest.mark.parametrize("command, arguments, named", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_is_one_error_line_and_exit_code_1(command, arguments, named, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    before = sorted(path.name for path in tmp_path.iterdir())
    status = cli.main([command] + [argument.format(tmp=tmp_path) for argument in arguments])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1, error
    assert len(error) == 1 and error[0].startswith("error: ") and named in error[0], error
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # nothing written


USAGE_ERRORS = [
    (["train"], "the following arguments are required: --config"),
    (["train", "--config", "c.json", "--steps", "-5"], "argument --steps: expected an integer >= 0, got -5"),
    # a pretraining has no "until interrupted": its config's steps are >= 1 too
    (["pretrain-sisrnet", "--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
    (["pretrain-regnet", "--steps", "-3"], "argument --steps: expected an integer >= 1, got -3"),
    (["superresolve", "--out", "x.zip", "--n-slide", "-1"], "argument --n-slide: expected an integer >= 0, got -1"),
    (["superresolve", "--out", "x.zip", "--windows-per-call", "0"],
     "argument --windows-per-call: expected an integer >= 1, got 0"),
    (["train", "--config", "c.json", "--batch-size", "two"], "argument --batch-size: invalid int value: 'two'"),
    # the demo's NIR training would run "until interrupted" (max_steps 0)
    (["demo", "--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
    (["demo", "--n-slide", "-1"], "argument --n-slide: expected an integer >= 0, got -1"),
]


@pytest.mark.parametrize("arguments, message", USAGE_ERRORS, ids=[" ".join(case[0]) for case in USAGE_ERRORS])
def test_a_usage_error_keeps_argparse_exit_code_2(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments)
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_an_output_that_is_a_folder_or_not_a_zip_is_refused_before_any_work(tmp_path, capsys):
    """`superresolve` would find a folder only at the final rename, after computing every scene."""
    assert cli.main(["superresolve", "--config", "c.json", "--checkpoint", "none", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: --out {tmp_path}: is a folder; expected the path of the file to write"
    assert cli.main(["superresolve", "--config", "c.json", "--checkpoint", "none", "--out", "submission.txt"]) == 1
    assert capsys.readouterr().err.strip() == "error: --out submission.txt: expected the path of a .zip file (the submission)"


def _readme_flags() -> dict[str, set[str]]:
    """{command: the --flags the README shows for it}, from its `python -m libraries` lines, their
    continuation lines and the comment lines under them."""
    flags: dict[str, set[str]] = {}
    command = None
    for line in (REPOSITORY_ROOT / "README.md").read_text().splitlines():
        match = re.search(r"python -m libraries ([a-z][a-z0-9-]+)", line)
        if match and match.group(1) in cli.COMMANDS:
            command = match.group(1)
        elif line.startswith("```") or not line.strip():
            command = None
        if command is not None:
            flags.setdefault(command, set()).update(re.findall(r"(--[a-z][a-z0-9-]+)", line))
    return flags


def test_every_command_and_flag_the_readme_shows_is_run_by_a_test():
    flags = _readme_flags()
    assert {"synth", "prepare", "train", "superresolve", "score", "fetch-weights"} <= set(flags)
    sources = {path.name: path.read_text() for path in (REPOSITORY_ROOT / "tests").glob("test_*.py")}
    unused = sorted((command, flag) for command, command_flags in flags.items() for flag in command_flags
                    if not any(f'"{command}"' in text and f'"{flag}"' in text for text in sources.values()))
    assert not unused, f"README flags no test passes to their command: {unused}"


def test_sigterm_unwinds_a_command_and_leaves_nothing_half_written(tmp_path):
    """SIGTERM while `synth` writes its set (the event: a scene in its temporary folder): one
    error line, the shells' exit code 143, and neither the set nor its temporary folder left."""
    process = subprocess.Popen([sys.executable, "-m", "libraries", "synth", "--out", str(tmp_path / "set"), "--seed",
                                "1", "--scenes", "40", "--lr-size", "128"], cwd=tmp_path, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a safety net only
        while not list(tmp_path.glob(".set.*.tmp/*/*/imgset*")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no scene written in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, error = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 143, error[-2000:]
    assert error.strip().splitlines()[-1] == ("error: synth stopped by SIGTERM; nothing half-written is left, the same "
                                              "command starts it again")
    assert list(tmp_path.iterdir()) == []
