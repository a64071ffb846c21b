"""The one training loop: DeepSUM training and both pretrainings run it with their own step.

A `TrainingLoop` owns what every training needs and nothing a particular one does:

- one `tf.train.Checkpoint` holding the caller's objects (the network under `model`, the
  optimiser, anything else) plus the global `step` and the `best` validation metric, written
  by a `tf.train.CheckpointManager` every `skip_step` steps and at the end; the checkpoint
  with the best metric is kept in `best/` beside them;
- resume: `restore()` reads the newest checkpoint of the folder, so a run killed at any
  moment (even by SIGKILL, mid-write: the manager's `checkpoint` file is replaced last)
  continues from the last checkpoint (a `checkpoint` file deleted or damaged by hand is written
  again from the intact checkpoints of the folder, never read as "no checkpoint"; a rerun of a
  finished run says so and trains nothing). The data position is the step: every pipeline of the
  project yields the batch of step s as a pure function of (seed, s), so the resumed run sees
  the batches the uninterrupted one would have seen;
- logs through `tf.summary` in `logs/train` (every step's values) and `logs/validation`;
- a tqdm bar, a finite check of every step's values, and the validation every `skip_step`;
- a stop on request: SIGINT (Ctrl-C, a notebook's "interrupt") or SIGTERM (a job scheduler)
  lets the step under way finish, saves it, and ends the run with one `TrainingError` naming
  the checkpoint, so `max_steps: 0` ("until interrupted") loses no step. A second signal stops
  at once, as Python would (a stuck step can still be interrupted).

Several workers (`tf.distribute.MultiWorkerMirroredStrategy`): every worker saves (a save is
collective), the non-chief ones into a scratch folder `.worker_<id>` inside the chief's; all
restore from the chief's folder; only the chief writes logs and the config. A worker that dies
makes the others' next collective fail (UNAVAILABLE: at once when its process is gone, as its
socket closes or its port refuses); `run` turns that into one `TrainingError`, and the cluster
resumes when every worker is started again with the same command. A cluster keeps the default
signals (a save is collective: one worker cannot save alone); it resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from libraries import config as config_module
from libraries import checkpoints, domain, fileio, interrupts
from libraries.checkpoints import CONFIG_FILE
from libraries.training.optimization import without_remapper

LOG = logging.getLogger("libraries.training")
KEEP_CHECKPOINTS = 3

StepFunction = Callable[[Any], Mapping[str, tf.Tensor]]  # batch -> {name: scalar}
Validation = Callable[[int], Mapping[str, Any]]  # step -> {name: value}; summaries by the callee


class TrainingError(domain.DeepSUMError):
    """Training cannot go on (a NaN or infinite loss, a checkpoint that does not fit)."""


# The error of a failed `tf.debugging.check_numerics` (the training and validation losses) ends
# with its message and what it found: "<message> : Tensor had NaN values", after a graph
# traceback of many lines.
NUMERICS_CHECK = re.compile(r"([^\n]+) : Tensor had (NaN|Inf|NaN and Inf) values")
# the Python exception of a batch loader (`tf.numpy_function` in a `tf.data` map), as TensorFlow
# reports it: "...Error in user-defined function passed to <op> ... Iterator::...: OSError: text"
LOADER_ERROR = re.compile(r"Error in user-defined function passed to [^\n]*?Iterator::[\w:]+: (\w+): ([^\n]*)")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _error_names(kind: type) -> set[str]:
    """Names of `kind` and of its subclasses: the project's errors, whose messages stand alone."""
    return {kind.__name__}.union(*(_error_names(sub) for sub in kind.__subclasses__()))


@contextlib.contextmanager
def stop_requests(enabled: bool = True):
    """Catch SIGINT and SIGTERM while the block runs; yields the list of those received.

    The first signal is only recorded, for the loop to stop after its step; a second one raises
    `KeyboardInterrupt` at once. The previous handlers come back when the block ends. Signal
    handlers can only be set in the main thread: elsewhere, or when not `enabled`, nothing changes.
    """
    received: list[int] = []
    if not enabled:
        yield received
        return

    def record(number, frame):
        if received:
            raise KeyboardInterrupt
        received.append(number)

    with interrupts.handled(STOP_SIGNALS, record):
        yield received


class TrainingLoop:
    """Checkpoints, resume, logs, progress and validation around a caller's train step.

    folder: checkpoints, `best/`, `logs/` and `config.json` go here.
    objects: what the checkpoint holds besides `step` and `best` (e.g. model=..., optimizer=...).
    optional: objects the checkpoint also holds but that a checkpoint may lack, restored when
    present (the loss scale of `mixed_float16`: a checkpoint of another precision has none).
    skip_step: steps between validation + checkpoint.
    best_key: the validation value whose best is kept (`best_mode` "min" or "max").
    config: saved as JSON to `folder/config.json` (chief only) at the first step or validation.
    worker: None for the chief (or a single process), else the task id of a non-chief worker.
    cluster: one of several workers (its saves are collective: SIGINT and SIGTERM keep their
    default effect).
    reads: the prepared data set folder the run reads, locked shared while it runs.
    """

    def __init__(self, folder: str | Path, objects: Mapping[str, Any], skip_step: int, title: str = "train",
                 optional: Mapping[str, Any] | None = None, best_key: str | None = None, best_mode: str = "min",
                 config: Any = None, worker: int | None = None, progress: bool = True, cluster: bool = False,
                 reads: str | Path | None = None):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode: expected 'min' or 'max', got {best_mode!r}")
        self.folder = Path(folder)
        self.skip_step = int(skip_step)
        self.title = title
        self.best_key, self.best_mode = best_key, best_mode
        self.is_chief = worker is None
        self.cluster = cluster or worker is not None
        self.progress = progress
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.best = tf.Variable(np.inf if best_mode == "min" else -np.inf, dtype=tf.float32, trainable=False,
                                name="best")
        # written with every object; read back without the optional ones, then those alone
        self.checkpoint = tf.train.Checkpoint(step=self.step, best=self.best, **objects, **(optional or {}))
        self._required = tf.train.Checkpoint(step=self.step, best=self.best, **objects)
        self._optional = tf.train.Checkpoint(**optional) if optional else None
        save_dir = self.folder if self.is_chief else self.folder / f".worker_{worker}"
        # one run per folder: taken before anything is written, dropped when `run` ends (or
        # when the process dies), so a second run on the folder cannot overwrite this one's files
        self.save_dir = save_dir
        self.reads = None if reads is None else Path(reads)
        self._created = fileio.folders_to_create(save_dir)
        self.lock: fileio.FolderLock | None = fileio.FolderLock(save_dir, "checkpoint folder")
        for folder in (save_dir, save_dir / "best"):
            rebuilt = checkpoints.rebuild_state(folder)
            if rebuilt:
                LOG.warning("%s: its `checkpoint` file was missing or unreadable; written again naming the "
                            "intact checkpoints found (%s)", folder, ", ".join(Path(path).name for path in rebuilt))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(save_dir),
                                                  max_to_keep=KEEP_CHECKPOINTS if self.is_chief else 1)
        self.best_manager = tf.train.CheckpointManager(self.checkpoint, str(save_dir / "best"), max_to_keep=1)
        self._config = config
        self._writers: tuple[Any, Any] | None = None

    def _started(self) -> tuple[Any, Any]:
        """(train, validation) summary writers; the first call writes `config.json` and opens the
        logs, so a run that stops before its first step (bad data) leaves nothing behind."""
        if self._writers is None:
            if self.is_chief:
                if self._config is not None:
                    fileio.save_json(self.folder / CONFIG_FILE, config_module.to_json(self._config))
                self._writers = (tf.summary.create_file_writer(str(self.folder / "logs" / "train")),
                                 tf.summary.create_file_writer(str(self.folder / "logs" / "validation")))
            else:
                self._writers = (tf.summary.create_noop_writer(),) * 2
        return self._writers

    @property
    def train_writer(self) -> Any:
        return self._started()[0]

    @property
    def validation_writer(self) -> Any:
        return self._started()[1]

    def latest(self) -> str | None:
        """The newest checkpoint of the chief's folder, or None."""
        return tf.train.latest_checkpoint(str(self.folder)) if self.folder.is_dir() else None

    def restore(self) -> str | None:
        """Restore the newest checkpoint of the folder that reads back intact (every object, step
        and best); its path, or None when the folder holds none.

        A damaged checkpoint (truncated, a shard missing) is named in a warning with the reason
        and left in place; when every checkpoint is damaged, `TrainingError` names the folder.
        """
        latest = self.latest()
        if latest is None:
            return None
        state = tf.train.get_checkpoint_state(str(self.folder))
        prefixes = [os.path.join(self.folder, path) for path in reversed(state.all_model_checkpoint_paths)]
        damaged = []
        for prefix in prefixes or [latest]:
            problem = checkpoints.checkpoint_problem(prefix)
            if problem is None:
                latest = prefix
                break
            LOG.warning("%s: damaged checkpoint, left in place and skipped (%s)", prefix, problem)
            damaged.append(Path(prefix).name)
        else:
            self.release()
            raise TrainingError(f"{self.folder}: no checkpoint reads back intact ({', '.join(damaged)} damaged); "
                                "move them away to start again")
        try:
            self._required.restore(latest).expect_partial().assert_existing_objects_matched()
            if self._optional is not None:
                self._optional.restore(latest).expect_partial()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            message = str(error).splitlines()[0][:240]
            self.release()
            raise TrainingError(f"{latest}: cannot resume from this checkpoint ({message}); "
                                f"use another checkpoint_dir for a different network") from None
        return latest

    def log_validation(self, step: int, values: Mapping[str, float]) -> None:
        """Write validation scalars to `logs/validation` at `step` (for validations without their own writer)."""
        with self.validation_writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def save(self) -> str:
        return self.manager.save(checkpoint_number=int(self.step))

    def run(self, train_step: StepFunction, batches: Callable[[int], Iterable], steps: int,
            validate: Validation | None = None) -> dict[str, list]:
        """Train from the current step until global step `steps` (0: until interrupted).

        train_step: runs one step on a batch and returns its scalars (e.g. {"loss": ...}).
        batches: `batches(start_step)` -> the batches from that step on.
        validate: `validate(step)` -> validation values (chief only), every `skip_step` steps
        and at the last step.
        Returns the history of this call: {"step": [...], each scalar: [...], "seconds": [...],
        "validation": [{"step": s, ...}, ...]}. A SIGINT or SIGTERM ends the run after its step
        is saved, with a `TrainingError` naming the checkpoint (see the module docstring).
        """
        start = int(self.step)
        history: dict[str, list] = {"step": [], "seconds": [], "validation": []}
        if self.lock is None:
            self.lock = fileio.FolderLock(self.save_dir, "checkpoint folder")
        if steps and start >= steps:
            self.release()
            # a rerun of a finished command: say so, rather than end in silence
            tqdm.write(f"{self.title}: already at step {start} of {steps} in {self.folder}; nothing to train")
            return history
        bar = tqdm(total=steps or None, initial=start, desc=self.title, unit="step", disable=not self.progress)
        doing = f"step {start + 1}"  # what a failed numerics check names
        data_lock = None
        try:
            # held shared while the run reads the data set: `prepare` (which takes it exclusively)
            # cannot replace the chunks under a run, which would go on with a mix of two data sets
            if self.reads is not None and self.reads.is_dir():
                data_lock = fileio.FolderLock(self.reads, "prepared data set folder", shared=True)
            iterator = iter(batches(start))
            with stop_requests(not self.cluster) as stop:
                while not steps or int(self.step) < steps:
                    doing = f"step {int(self.step) + 1}"
                    began = time.perf_counter()
                    with without_remapper():
                        values = {name: float(value) for name, value in train_step(next(iterator)).items()}
                    step = int(self.step) + 1
                    if not all(math.isfinite(value) for value in values.values()):
                        raise TrainingError(f"{self.title} step {step}: non-finite values {values} (lower the "
                                            f"learning rate, or check the data)")
                    self.step.assign(step)
                    history["step"].append(step)
                    history["seconds"].append(time.perf_counter() - began)
                    with self.train_writer.as_default(step=step):
                        for name, value in values.items():
                            history.setdefault(name, []).append(value)
                            tf.summary.scalar(name, value)
                    bar.set_postfix({name: f"{value:.4g}" for name, value in values.items()})
                    bar.update()
                    if step % self.skip_step == 0 or step == steps:
                        doing = f"validation at step {step}"
                        self._validate_and_save(validate, history)
                    elif stop:
                        self.save()  # no validation: a stop is asked to be quick
                    if stop:
                        raise TrainingError(f"{self.title} stopped by {signal.Signals(stop[0]).name} after step {step}: "
                                            f"saved as {self.latest()}; the same command resumes from there")
        except tf.errors.UnavailableError as error:  # only collectives of a multi-worker cluster raise it
            raise self._cluster_error(error) from None
        except tf.errors.OpError as error:
            # nothing of this step or validation is saved: the last checkpoint is the last good state
            numerics, loader = NUMERICS_CHECK.search(error.message), LOADER_ERROR.search(error.message)
            if numerics and isinstance(error, tf.errors.InvalidArgumentError):
                raise TrainingError(f"{self.title} {doing}: {numerics[1]} ({numerics[2]} values; lower the "
                                    f"learning rate, or check the data)") from None
            if loader:  # reading a batch failed (a damaged or vanished file): the loader's own message
                ours = loader[1] in _error_names(domain.DeepSUMError)
                raise TrainingError(f"{self.title} {doing}: {'' if ours else loader[1] + ': '}{loader[2]}") from None
            raise
        finally:
            bar.close()
            if self._writers is not None:
                self.train_writer.flush()
            if data_lock is not None:
                data_lock.release()
            self.release()
        return history

    def _cluster_error(self, error: tf.errors.UnavailableError) -> TrainingError:
        """What a worker prints when another worker of the cluster is gone: TensorFlow's message
        spans many lines; the task it names (gRPC's `remote target /job:worker/replica:0/task:N`)
        is what the user needs, with the checkpoint the restarted cluster takes."""
        task = re.search(r"remote target /job:(\w+)/replica:\d+/task:(\d+)", str(error))
        who = f"{task[1]} {task[2]}" if task else "a worker of the cluster"
        latest = self.latest()
        resume = f"the chief's last checkpoint {latest}" if latest else "the start (no checkpoint yet)"
        return TrainingError(f"{self.title} after step {int(self.step)}: {who} stopped or cannot be reached; "
                             f"start every worker again with the same command: they resume from {resume}")

    def release(self) -> None:
        """Free the checkpoint folder for another run (`run` does it when it returns); the folders
        this loop created (the checkpoint folder and its missing parents) and never wrote to are removed."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            fileio.remove_empty_folders(self._created)

    def _validate_and_save(self, validate: Validation | None, history: dict[str, list]) -> None:
        step = int(self.step)
        results = dict(validate(step)) if validate is not None and self.is_chief else None
        improved = False
        if results is not None:
            results["step"] = step
            if self.best_key is not None:
                value = float(results[self.best_key])
                better = value < float(self.best) if self.best_mode == "min" else value > float(self.best)
                if better:
                    self.best.assign(value)
                improved = results["improved"] = bool(better)
            history["validation"].append(results)
        self.save()
        if improved:
            self.best_manager.save(checkpoint_number=step)


def logged_history(folder: str | Path) -> dict[str, Any]:
    """The history of a training folder read back from its `tf.summary` logs, shaped as
    `TrainingLoop.run` returns it ({"step", "loss", ..., "validation": [{"step", ...}]}) but over
    every run of the folder (a resumed or rerun training draws the whole of it); a step logged
    twice (redone after a resume) keeps its last value."""
    logged: dict[str, dict[int, dict[str, float]]] = {}
    for part in ("train", "validation"):
        paths = sorted((Path(folder) / "logs" / part).glob("events.out.tfevents.*"))
        events = [tf.compat.v1.Event.FromString(record.numpy()) for path in paths
                  for record in tf.data.TFRecordDataset(str(path))]
        logged[part] = {}
        for event in sorted(events, key=lambda event: event.wall_time):  # stable: file order within a run
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    scalar = float(tf.make_ndarray(value.tensor))
                    logged[part].setdefault(int(event.step), {})[value.tag] = scalar
    train = logged["train"]
    steps = sorted(train)
    keys = set.intersection(*(set(values) for values in train.values())) if steps else set()
    history: dict[str, Any] = {"step": steps, **{key: [train[step][key] for step in steps] for key in sorted(keys)}}
    history["validation"] = [{"step": step, **logged["validation"][step]} for step in sorted(logged["validation"])]
    return history
