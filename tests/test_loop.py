"""`libraries.training.loop`: the one training loop, through the three commands that run it.

A run killed with SIGKILL, or stopped with SIGINT (at an observed event: its first checkpoint
file appears), and restarted continues exactly as the uninterrupted run: the same checkpointed
state at the step it was killed or stopped after, the same next losses, the same final weights.
The killed run is a
`python -m libraries ...` process; the uninterrupted and the restarted runs are the same command
run in the test's process (`__main__.main`, what `python -m libraries` calls), which saves two
TensorFlow start-ups a test. oneDNN's float32 round-off depends on a process's memory layout
(~1e-7), which Adam and cL2's min over shifts amplify over steps: the comparisons allow a
relative 1e-5 (measured up to 2.5e-6).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from libraries import __main__ as cli, config as config_module
from libraries import checkpoints, dataset, domain, fileio, model, training
from libraries.config import RegNetPretrainConfig, SISRNetPretrainConfig
from libraries.training import loop, pretraining

from helpers import SKIP_STEP, assert_same_state, checkpoint_tensors, logged_losses, prepare_tiny_dataset, subprocess_env, tiny_config, write_config

FINAL = 2 * SKIP_STEP + 2  # checkpoints at 3, 6, 8: all kept (max_to_keep=3)
# The validation value each kind keeps the best of, and how it chooses.
BEST = {"train": ("score", min), "pretrain-sisrnet": ("heldout_loss", min), "pretrain-regnet": ("heldout_accuracy", max)}
BEST_TENSOR = "best/.ATTRIBUTES/VARIABLE_VALUE"
PRETRAIN = dict(lr=1e-3, batch_size=4, steps=FINAL, skip_step=SKIP_STEP, spectral_band="NIR", mu=7754.664,
                sigma=2316.3408, sigma_rescaled=596.982, patch_size=32, n_features=8, seed=3, heldout_fraction=0.3,
                eval_frames=8, xla_kernel_gradients=False)  # not "auto": see the helpers' tiny_config


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    return prepare_tiny_dataset(tmp_path_factory.mktemp("loop_data"))


@pytest.fixture(scope="module")
def frozen_sisrnet(tmp_path_factory, data_path) -> Path:
    """A SISRNet pretraining checkpoint for RegNet's runs (2 steps)."""
    folder = tmp_path_factory.mktemp("frozen_sisrnet")
    pretraining.pretrain_sisrnet(SISRNetPretrainConfig(**{**PRETRAIN, "steps": 2, "skip_step": 2},
                                                       dataset_path=data_path, checkpoint_dir=folder), progress=False)
    return folder


def command_for(kind: str, tmp_path: Path, data_path: Path, sisrnet: Path | None):
    """(arguments(steps, folder) -> `python -m libraries` arguments, config) of a tiny run of `kind`."""
    if kind == "train":
        config = tiny_config(tmp_path, data_path)
        config_file = write_config(config, tmp_path / "config.json")
        return (lambda steps, folder: ["train", "--config", str(config_file), "--steps", str(steps),
                                       "--checkpoint-dir", str(folder), "--no-progress"]), config
    kind_config = SISRNetPretrainConfig if kind == "pretrain-sisrnet" else RegNetPretrainConfig
    extra = {} if kind == "pretrain-sisrnet" else {"SISRNet_pretrain_dir": sisrnet}
    config = kind_config(**PRETRAIN, dataset_path=data_path, checkpoint_dir=tmp_path / "unused", **extra)

    def arguments(steps: int, folder: Path) -> list[str]:  # pretraining takes its folder from the config
        path = fileio.save_json(tmp_path / f"{folder.name}.json", config_module.to_json(config.replace(checkpoint_dir=folder)))
        return [kind, "--config", str(path), "--steps", str(steps), "--no-progress"]

    return arguments, config


@pytest.mark.parametrize("kind, stop", [("train", signal.SIGKILL), ("pretrain-sisrnet", signal.SIGINT),
                                        ("pretrain-regnet", signal.SIGKILL)], ids=["train", "pretrain-sisrnet", "pretrain-regnet"])
def test_a_run_killed_or_stopped_resumes_from_its_last_checkpoint(kind, stop, tmp_path, data_path, frozen_sisrnet,
                                                                   capsys):
    """SIGKILL: the run ends at once, its last checkpoint is the last one due (step 3 or 6).
    SIGINT (Ctrl-C; the loop is the same for all three commands): the step under way finishes and
    is saved, and the command ends with one error line naming that checkpoint."""
    arguments, config = command_for(kind, tmp_path, data_path, frozen_sisrnet)
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"

    process = subprocess.Popen([sys.executable, "-m", "libraries", *arguments(1000, killed)], cwd=tmp_path,
                               env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoint").exists():  # the event: the manager's state file appears
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.05)
        process.send_signal(stop)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
        process.wait()
    killed_at = tf.train.latest_checkpoint(str(killed))
    step = int(killed_at.rsplit("-", 1)[1])
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
        assert step in (SKIP_STEP, 2 * SKIP_STEP), killed_at
    else:
        assert process.returncode == 1, output[-3000:]
        assert output.strip().splitlines()[-1] == (f"error: SISRNet pretraining stopped by SIGINT after step {step}: "
                                                   f"saved as {killed_at}; the same command resumes from there")
        assert SKIP_STEP <= step < 1000
        assert cli.main(arguments(step, uninterrupted)) == 0  # a checkpoint at that step (ends its run) to compare
    final = max(FINAL, step + 2)
    assert cli.main(arguments(final, uninterrupted)) == 0
    assert int(tf.train.load_checkpoint(killed_at).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == step
    if kind == "train":  # a restart restores exactly the killed run's weights, Adam state and step
        resumed = training.Trainer(config.replace(checkpoint_dir=killed), progress=False)
        assert resumed.resumed_from == killed_at and not resumed.pretrained
        assert int(resumed.step) == step and int(resumed.optimizer.iterations) == step
        saved = tf.train.load_checkpoint(killed_at)
        slots = [(index, variable) for index, variable in enumerate(resumed.optimizer.variables)
                 if saved.has_tensor(f"optimizer/_variables/{index}/.ATTRIBUTES/VARIABLE_VALUE")]
        assert len(slots) == 2 * len(resumed.variables)  # Adam's two moments per variable
        for index, variable in slots:
            np.testing.assert_array_equal(variable.numpy(),
                                          saved.get_tensor(f"optimizer/_variables/{index}/.ATTRIBUTES/VARIABLE_VALUE"))
        resumed.loop.release()  # a Trainer holds its folder until it runs; the restarted command below takes it
    # The killed run had the uninterrupted run's state at its checkpoint (two processes: measured
    # up to 2.5e-6 apart in an Adam moment after 3 steps, the round-off named in the docstring)...
    assert_same_state_and_best(killed_at, uninterrupted / f"ckpt-{step}", kind, range(SKIP_STEP, step + 1, SKIP_STEP))
    # ...and the restarted command computes the uninterrupted run's next losses and weights.
    assert cli.main(arguments(final, killed)) == 0
    if kind != "train":  # where DeepSUM's config must point to start from it (not where the shipped ones do)
        key = {"pretrain-sisrnet": "SISRNet_pretrain_dir", "pretrain-regnet": "RegNet_pretrain_dir"}[kind]
        assert (f'DeepSUM starts from it with "{key}": "{killed}" in its config (the shipped configs name '
                f'{getattr(config_module.default_config(), key)})') in capsys.readouterr().out.splitlines()
    resumed_losses, uninterrupted_losses = logged_losses(killed), logged_losses(uninterrupted)
    assert set(range(step + 1, final + 1)) <= set(resumed_losses)
    for later in range(step + 1, final + 1):
        assert resumed_losses[later] == pytest.approx(uninterrupted_losses[later], rel=1e-5), later
    assert_same_state_and_best(killed / f"ckpt-{final}", uninterrupted / f"ckpt-{final}", kind,
                               [*range(SKIP_STEP, final + 1, SKIP_STEP), final])
    if kind == "train":  # the same command once more: it says the run is done and writes nothing
        files = {path: path.stat().st_mtime_ns for path in killed.rglob("*") if path.is_file()}
        assert cli.main(arguments(final, killed)) == 0
        printed = capsys.readouterr().out
        assert f"train NIR: already at step {final} of {final} in {killed}; nothing to train" in printed, printed[-600:]
        assert {path: path.stat().st_mtime_ns for path in killed.rglob("*") if path.is_file()} == files


def assert_same_state_and_best(checkpoint: str | Path, uninterrupted: Path, kind: str, validated) -> None:
    """`checkpoint` holds the state of the uninterrupted run's checkpoint of the same step, and the
    best validation value the uninterrupted run logged at the steps `validated` (those at which the
    stopped run validated: a stop saves without validating, a run reaching its --steps validates at
    its end, so the uninterrupted run's own `best` may have seen one validation more)."""
    actual, expected = checkpoint_tensors(str(checkpoint)), checkpoint_tensors(str(uninterrupted))
    best = actual.pop(BEST_TENSOR)
    expected.pop(BEST_TENSOR)
    assert_same_state(actual, expected)
    key, choose = BEST[kind]
    logged = {entry["step"]: entry[key] for entry in loop.logged_history(uninterrupted.parent)["validation"]}
    assert best == pytest.approx(choose(logged[step] for step in validated), rel=1e-5)


def test_a_second_run_on_the_same_checkpoint_folder_stops_at_once_and_touches_nothing(tmp_path, data_path):
    config = tiny_config(tmp_path, data_path)
    first = training.Trainer(config, progress=False)  # holds the folder from here until its run ends
    folder = Path(config.checkpoint_dir)

    def contents() -> dict:
        return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}

    before = contents()  # the lock's note of the holder's process; config.json comes at the first step
    assert before == {Path(".lock"): f"{os.getpid()}\n".encode()}
    config_file = write_config(config.replace(lr=0.5), tmp_path / "other.json")
    run = subprocess.run([sys.executable, "-m", "libraries", "train", "--config", str(config_file), "--steps", "1"],
                         cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == (f"error: {folder}: this checkpoint folder is in use by another run "
                                                   f"(process {os.getpid()}); wait for it to end or use another folder")
    assert contents() == before
    first.loop.release()  # as the run does when it ends: the folder is free again (and, unwritten, removed)
    assert not folder.exists()
    second = training.Trainer(config, progress=False)
    assert second.resumed_from is None and (folder / ".lock").read_text() == f"{os.getpid()}\n"
    second.loop.release()


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_and_kept(tmp_path, data_path, caplog):
    config = tiny_config(tmp_path, data_path)
    first = training.Trainer(config, progress=False)
    for step in (SKIP_STEP, 2 * SKIP_STEP):  # ckpt-3 and ckpt-6, as a run saves them (the weights need no training)
        first.step.assign(step)
        first.save()
    first.loop.release()
    folder = Path(config.checkpoint_dir)
    newest = folder / f"ckpt-{2 * SKIP_STEP}.data-00000-of-00001"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut off mid-write
    with caplog.at_level("WARNING", logger="libraries.training"):
        resumed = training.Trainer(config, progress=False)
    assert resumed.resumed_from == str(folder / f"ckpt-{SKIP_STEP}") and int(resumed.step) == SKIP_STEP
    assert f"{folder / f'ckpt-{2 * SKIP_STEP}'}: damaged checkpoint, left in place and skipped" in caplog.text
    assert newest.is_file()
    resumed.loop.release()
    # inference given the damaged checkpoint names its files
    with pytest.raises(checkpoints.CheckpointError, match=rf"ckpt-{2 * SKIP_STEP}: not a readable TensorFlow "
                                                          rf"checkpoint \(files .*ckpt-{2 * SKIP_STEP}\.index"):
        checkpoints.restore_weights(model.DeepSUM(config), folder / f"ckpt-{2 * SKIP_STEP}")
    older = folder / f"ckpt-{SKIP_STEP}.data-00000-of-00001"
    older.write_bytes(older.read_bytes()[:100])
    with pytest.raises(training.TrainingError, match=rf"{folder}: no checkpoint reads back intact "
                                                     rf"\(ckpt-6, ckpt-3 damaged\)"):
        training.Trainer(config, progress=False)


@tf.function
def checked_log(value: tf.Tensor) -> tf.Tensor:
    """log(value) through `tf.debugging.check_numerics`, as the training and validation losses
    are checked: -1 gives NaN, 0 gives -Inf."""
    return tf.debugging.check_numerics(tf.math.log(value), "log of the batch")


def loop_in(folder: Path) -> training.TrainingLoop:
    """A fresh loop over one weight, validating and saving every 2 steps."""
    loop = training.TrainingLoop(folder, {"weight": tf.Variable(1.0)}, skip_step=2, progress=False)
    loop.restore()
    return loop


def numbered(batches: int):
    """`batches(start)` of a loop over one weight: the numbers 1..`batches`, from `start` on."""
    return lambda start: iter([tf.constant(float(value)) for value in range(1, batches + 1)][start:])


@pytest.mark.parametrize("damage", ["deleted", "garbage", "names a missing checkpoint"])
def test_a_checkpoint_file_deleted_or_damaged_by_hand_is_written_again_and_the_run_resumes(damage, tmp_path, caplog):
    """The manager's `checkpoint` file only indexes the checkpoints; without it TensorFlow sees
    none and a resumed run would start again at step 0 over them."""
    folder = tmp_path / "run"
    loop = loop_in(folder)
    loop.run(lambda batch: {"loss": batch}, numbered(6), 6)  # checkpoints at steps 2, 4 and 6
    state = folder / "checkpoint"
    if damage == "deleted":
        state.unlink()
    elif damage == "garbage":
        state.write_text("garbage {{\n")
    else:
        state.write_text('model_checkpoint_path: "ckpt-8"\nall_model_checkpoint_paths: "ckpt-8"\n')
    newest = folder / "ckpt-6.data-00000-of-00001"
    newest.write_bytes(newest.read_bytes()[:10])  # and the newest checkpoint cut short: not named again
    with caplog.at_level("WARNING", logger="libraries.training"):
        resumed = loop_in(folder)
    assert int(resumed.step) == 4
    assert f"{folder}: its `checkpoint` file was missing or unreadable; written again naming the intact " \
           f"checkpoints found (ckpt-2, ckpt-4)" in caplog.text
    state_file = tf.train.get_checkpoint_state(str(folder))
    assert [Path(path).name for path in state_file.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-4"]
    resumed.run(lambda batch: {"loss": batch}, numbered(8), 8)
    assert tf.train.latest_checkpoint(str(folder)) == str(folder / "ckpt-8")


def test_a_folder_whose_only_checkpoint_was_cut_short_before_its_checkpoint_file_starts_afresh(tmp_path):
    """A run killed while writing its first checkpoint leaves no `checkpoint` file and an unreadable
    `ckpt-2`: the next run starts at step 0 (nothing intact to lose) and writes over it."""
    folder = tmp_path / "run"
    loop_in(folder).run(lambda batch: {"loss": batch}, numbered(2), 2)
    (folder / "checkpoint").unlink()
    data = folder / "ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:10])
    fresh = loop_in(folder)
    assert int(fresh.step) == 0 and not (folder / "checkpoint").exists()
    fresh.run(lambda batch: {"loss": batch}, numbered(2), 2)
    assert checkpoints.checkpoint_problem(str(folder / "ckpt-2")) is None


def test_a_nan_or_inf_found_by_a_numerics_check_is_one_error_naming_the_step_and_nothing_is_saved(tmp_path):
    """A failed numerics check raises TensorFlow's InvalidArgumentError with a graph traceback of
    many lines; the loop turns it into one TrainingError naming the step or the validation
    (a diverging run's usual end), and saves nothing of that step."""
    batches = lambda start: iter([tf.constant(value) for value in (1.0, 2.0, -1.0, 4.0)][start:])  # noqa: E731
    loop = loop_in(tmp_path / "step")
    with pytest.raises(training.TrainingError) as raised:
        loop.run(lambda batch: {"loss": checked_log(batch)}, batches, 4)
    assert str(raised.value) == "train step 3: log of the batch (NaN values; lower the learning rate, or check the data)"
    assert tf.train.latest_checkpoint(str(tmp_path / "step")).endswith("ckpt-2")  # the last good state

    loop = loop_in(tmp_path / "validation")
    with pytest.raises(training.TrainingError) as raised:
        loop.run(lambda batch: {"loss": batch}, batches, 4, lambda step: {"loss": float(checked_log(tf.constant(0.0)))})
    assert str(raised.value) == ("train validation at step 2: log of the batch (Inf values; lower the learning rate, "
                                 "or check the data)")
    assert tf.train.latest_checkpoint(str(tmp_path / "validation")) is None

    def other_error(batch):
        raise tf.errors.InvalidArgumentError(None, None, "not a numerics check")

    with pytest.raises(tf.errors.InvalidArgumentError, match="not a numerics check"):  # left as it is
        loop_in(tmp_path / "other").run(other_error, batches, 4)


@pytest.mark.parametrize("failure, expected", [
    (OSError(5, "Input/output error", "/data/NIR/best9/train/chunk_1/frames.npy"),
     "train step 3: OSError: [Errno 5] Input/output error: '/data/NIR/best9/train/chunk_1/frames.npy'"),
    (training.TrainingDataError("training chunk 1 of /data (NIR): frames holds NaN or Inf in rows [4]"),
     "train step 3: training chunk 1 of /data (NIR): frames holds NaN or Inf in rows [4]"),
], ids=["OSError", "TrainingDataError"])
def test_a_batch_that_cannot_be_read_mid_run_is_one_error_naming_the_step_and_the_loaders_message(
        tmp_path, failure, expected):
    """A loader's exception inside `tf.data` reaches the loop as an OpError of a graph traceback
    and the loader's Python traceback; the loop keeps the loader's own line (the file, the rows)."""
    def batch_of_step(step: int) -> tuple[np.ndarray]:
        if step == 2:  # the batch of the third step
            raise failure
        return (np.float32(step + 1),)

    loop = loop_in(tmp_path / "run")
    with pytest.raises(training.TrainingError) as raised:
        loop.run(lambda batch: {"loss": batch[0]},
                 lambda start: iter(training.data.step_dataset(batch_of_step, [tf.float32], [[]], start)), 4)
    assert str(raised.value) == expected
    assert int(loop.step) == 2 and tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-2")


def test_a_non_finite_value_a_step_returns_is_one_error_naming_the_step_and_nothing_is_saved(tmp_path):
    """Steps without a numerics check of their own (the pretrainings') return their loss as it
    is: the loop checks every value a step returns before it counts the step."""
    loop = loop_in(tmp_path / "run")
    batches = lambda start: iter([1.0, 2.0, float("inf"), 4.0][start:])  # noqa: E731
    with pytest.raises(training.TrainingError) as raised:
        loop.run(lambda batch: {"loss": batch, "scale": 2.0}, batches, 4)
    assert str(raised.value) == ("train step 3: non-finite values {'loss': inf, 'scale': 2.0} (lower the learning rate, "
                                 "or check the data)")
    assert int(loop.step) == 2 and tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-2")


def test_logged_history_reads_every_run_of_a_folder_and_a_redone_step_keeps_its_last_value(tmp_path):
    def run(offset: float, last_batch: int) -> dict:
        loop = training.TrainingLoop(tmp_path / "run", {"weight": tf.Variable(1.0)}, skip_step=2, progress=False)
        loop.restore()
        history = {}
        # the batch of step s is s; after the last batch the data end, as a killed run's would
        batches = lambda start: (tf.constant(float(step)) for step in range(start + 1, last_batch + 1))

        def validate(step: int) -> dict:
            values = {"loss": 10.0 * step + offset}
            loop.log_validation(step, values)  # a validation writes its own summaries
            return values

        try:
            history = loop.run(lambda batch: {"loss": batch + offset, "scale": 2 * batch}, batches, 6, validate)
        except StopIteration:
            pass
        return history

    assert run(0.0, 5) == {}  # validated and checkpointed at steps 2 and 4; step 5 logged, then stopped
    second = run(0.5, 6)  # resumes from ckpt-4, so step 5 is logged a second time, with other values
    assert second["step"] == [5, 6]
    logged = training.loop.logged_history(tmp_path / "run")
    assert logged["step"] == [1, 2, 3, 4, 5, 6]
    assert logged["loss"] == [1.0, 2.0, 3.0, 4.0, 5.5, 6.5]
    assert logged["scale"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert [(entry["step"], entry["loss"]) for entry in logged["validation"]] == [(2, 20.0), (4, 40.0), (6, 60.5)]


@pytest.mark.parametrize("mode, best_step", [("min", 6), ("max", 4)])
def test_best_holds_the_checkpoint_of_the_best_validation_in_either_direction(tmp_path, mode, best_step):
    """A loss is kept at its lowest (DeepSUM's score), an accuracy at its highest (RegNet
    pretraining): validations at steps 2, 4, 6 give 0.5, 0.9, 0.2."""
    weight = tf.Variable(0.0)
    loop = training.TrainingLoop(tmp_path / "run", {"weight": weight}, skip_step=2, best_key="value", best_mode=mode,
                                 progress=False)
    values = {2: 0.5, 4: 0.9, 6: 0.2}

    def step(batch):
        weight.assign(batch)
        return {"loss": batch}

    history = loop.run(step, lambda start: (tf.constant(float(s)) for s in range(start + 1, 7)), 6,
                       lambda step: {"value": values[step]})
    improved = {"min": [True, False, True], "max": [True, True, False]}[mode]
    assert [entry["improved"] for entry in history["validation"]] == improved
    assert float(loop.best) == pytest.approx(values[best_step])
    best = tf.train.latest_checkpoint(str(tmp_path / "run" / "best"))
    assert best == str(tmp_path / "run" / "best" / f"ckpt-{best_step}")
    assert float(tf.train.load_checkpoint(best).get_tensor("weight/.ATTRIBUTES/VARIABLE_VALUE")) == best_step


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_lets_the_step_finish_saves_it_and_ends_the_run_with_one_error(tmp_path, number, request):
    """The signal arrives during step 4 (the step sends it to its own process): the loop finishes
    that step, saves it although no checkpoint is due, and stops; its handlers are then gone."""
    weight = tf.Variable(0.0)
    loop = training.TrainingLoop(tmp_path / "run", {"weight": weight}, skip_step=3, title="toy", progress=False)

    def reached_the_test(*_):  # without the loop's handler the signal would end pytest itself
        raise AssertionError(f"{signal.Signals(number).name} reached the test: the loop caught no signal")

    before = signal.signal(number, reached_the_test)
    request.addfinalizer(lambda: signal.signal(number, before))

    def step(batch):
        weight.assign_add(batch)
        if float(batch) == 4.0:
            os.kill(os.getpid(), number)
        return {"loss": weight.read_value()}

    batches = lambda start: (tf.constant(float(step)) for step in range(start + 1, 1000))  # noqa: E731
    with pytest.raises(training.TrainingError) as raised:
        loop.run(step, batches, 0)  # 0: until interrupted
    saved = tmp_path / "run" / "ckpt-4"
    assert str(raised.value) == (f"toy stopped by {signal.Signals(number).name} after step 4: saved as {saved}; "
                                 f"the same command resumes from there")
    assert tf.train.latest_checkpoint(str(tmp_path / "run")) == str(saved)
    reader = tf.train.load_checkpoint(str(saved))
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 4
    assert float(reader.get_tensor("weight/.ATTRIBUTES/VARIABLE_VALUE")) == 1 + 2 + 3 + 4
    assert signal.getsignal(number) is reached_the_test
    # a second signal stops at once, as Python's own Ctrl-C: the step is neither finished nor saved
    resumed = training.TrainingLoop(tmp_path / "run", {"weight": weight}, skip_step=3, progress=False)
    assert resumed.restore() == str(saved)

    def stuck(batch):
        os.kill(os.getpid(), number)
        os.kill(os.getpid(), number)
        return {"loss": weight.read_value()}

    with pytest.raises(KeyboardInterrupt):
        resumed.run(stuck, batches, 0)
    assert tf.train.latest_checkpoint(str(tmp_path / "run")) == str(saved)
    assert signal.getsignal(number) is reached_the_test


def test_a_folder_of_another_network_is_refused_and_left_unlocked(tmp_path):
    """A checkpoint folder whose variables do not fit (another width): one error naming the
    checkpoint, the folder released so that a run with the right network can take it."""
    first = training.TrainingLoop(tmp_path / "run", {"weight": tf.Variable([1.0, 2.0])}, skip_step=2, progress=False)
    first.run(lambda batch: {"loss": tf.constant(float(batch))}, lambda start: iter(range(start + 1, 100)), 2)
    saved = tmp_path / "run" / "ckpt-2"
    other = training.TrainingLoop(tmp_path / "run", {"weight": tf.Variable([1.0, 2.0, 3.0])}, skip_step=2,
                                  progress=False)
    with pytest.raises(training.TrainingError, match=rf"^{re.escape(str(saved))}: cannot resume from this checkpoint "
                                                     r"\(.*\); use another checkpoint_dir for a different network$"):
        other.restore()
    same = training.TrainingLoop(tmp_path / "run", {"weight": tf.Variable([0.0, 0.0])}, skip_step=2, progress=False)
    assert same.restore() == str(saved)  # not refused as locked by the refused one
    same.release()


def test_prepare_cannot_replace_the_data_set_a_run_reads_nor_a_run_read_one_being_prepared(tmp_path, data_path):
    """A run holds its data set folder shared: `prepare` into it stops at once (it would swap the
    chunks under the run, which would go on with a mix of two data sets); and a run does not
    start on a folder that `prepare` is writing."""
    probav_dir = data_path.parent / "probav"
    before = {path: path.stat().st_mtime_ns for path in data_path.rglob("*") if path.is_file()}
    refused = []

    def step(batch):
        with pytest.raises(domain.DeepSUMError) as error:
            dataset.prepare(probav_dir, data_path, bands=("NIR",), n_chunks=1, patch_size=48, processes=1,
                            progress=False)
        refused.append(str(error.value))
        return {"loss": tf.constant(1.0)}

    run = training.TrainingLoop(tmp_path / "run", {"weight": tf.Variable(1.0)}, skip_step=5, progress=False,
                                reads=data_path)
    run.run(step, lambda start: iter(range(start, 100)), 1)
    assert refused == [f"{data_path}: this prepared data set folder is in use by another run (a run that reads it, "
                       "e.g. train); wait for it to end or use another folder"]
    assert {path: path.stat().st_mtime_ns for path in data_path.rglob("*") if path.is_file()} == before
    with fileio.FolderLock(data_path, "prepared data set folder"):  # `prepare` under way in this process
        waiting = training.TrainingLoop(tmp_path / "later", {"weight": tf.Variable(1.0)}, skip_step=5,
                                        progress=False, reads=data_path)
        with pytest.raises(domain.DeepSUMError, match=rf"^{re.escape(str(data_path))}: this prepared data set "
                                                             rf"folder is in use by another run \(process {os.getpid()}, "
                                                             r"this one: an earlier object still holds it;"):
            waiting.run(step, lambda start: iter(range(start, 100)), 1)
    assert not (tmp_path / "later").exists()  # refused before anything was written
