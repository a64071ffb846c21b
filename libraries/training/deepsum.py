"""DeepSUM training: the authors' `SR_network.train` in TensorFlow 2, on the one training loop.

`Trainer`: DeepSUM and Adam under a `tf.distribute` strategy. Before the first step SISRNet
and RegNet are loaded from the pretraining checkpoints (or every weight from `init_from`, e.g.
the NIR model to fine-tune RED); a run whose `checkpoint_dir` holds a checkpoint resumes from
it instead (weights, Adam, step, best validation score). Every `skip_step` steps the loop
(`libraries.training.loop`) validates on the whole validation set (`evaluation.evaluate`),
checkpoints, and keeps the best score's checkpoint in `checkpoint_dir/best`.

CLI: `python -m libraries train --config C [--steps N] [--checkpoint-dir D] ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from libraries import arguments, checkpoints, fileio, metrics
from libraries import config as config_module
from libraries.model import DeepSUM
from libraries.training import data, evaluation, optimization
from libraries.training.loop import TrainingError, TrainingLoop

LOG = logging.getLogger(__name__)
PRETRAINED = (("sisrnet", "SISRNet_pretrain_dir"), ("regnet", "RegNet_pretrain_dir"))


def choose_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG is set, MirroredStrategy when several GPUs
    are visible, else the default (one device) strategy. Call it before other TF work."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True except on the non-chief workers of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def load_pretrained(model: DeepSUM, config: config_module.DeepSUMConfig, required: bool = False) -> dict[str, list[str]]:
    """Load SISRNet and RegNet from `config.SISRNet_pretrain_dir` and `config.RegNet_pretrain_dir`.

    Either folder may hold the authors' TF1 checkpoint or ours; both are read by
    `checkpoints.restore_weights`. A folder without a checkpoint is a logged warning (that
    sub-network starts from its initialisation, as the authors' code silently did), or a
    `FileNotFoundError` when `required`. Returns {sub-network: names of the variables loaded}.
    """
    folders = {name: Path(getattr(config, key)) for name, key in PRETRAINED}
    present = {name: checkpoints.has_checkpoint(folder) for name, folder in folders.items()}
    missing = [(name, key) for name, key in PRETRAINED if not present[name]]
    messages = [f"no {name} pretraining checkpoint in {folders[name]} (config {key})" for name, key in missing]
    if required and missing:
        commands = " and ".join(f"`python -m libraries pretrain-{name}`" for name, _ in missing)
        raise FileNotFoundError(f"{'; '.join(messages)}: run {commands} or `python -m libraries fetch-weights` first")
    for (name, _), message in zip(missing, messages):
        LOG.warning("%s: %s starts from its random initialisation", message, name)
    loaded = {}
    for name, _ in PRETRAINED:
        if present[name]:
            network = getattr(model, name)
            checkpoints.restore_weights(network, folders[name])
            loaded[name] = sorted(network.tf1_variables())
    return loaded


class Trainer:
    """DeepSUM training with resumable checkpoints (see the module docstring).

    config: the resolved config (its JSON is written to `config.checkpoint_dir/config.json`).
    strategy: a `tf.distribute` strategy (default `choose_strategy()`).
    require_pretrained: raise instead of warning when a pretraining folder has no checkpoint.
    init_from: start from these full-model weights (ours or the authors' TF1, e.g. the NIR
    model to fine-tune RED) instead of the pretraining checkpoints.
    chunks, validation: in-memory training chunks / validation arrays instead of
    `config.dataset_path` (tests, notebooks).
    """

    def __init__(self, config: config_module.DeepSUMConfig, strategy: tf.distribute.Strategy | None = None, *,
                 require_pretrained: bool = False, init_from: str | os.PathLike | None = None,
                 chunks: Sequence[int | Mapping[str, np.ndarray]] | None = None,
                 validation: Mapping[str, np.ndarray] | None = None, progress: bool = True):
        self.config = config
        self.strategy = strategy or choose_strategy()
        self.chunks = chunks
        self.progress = progress
        self._validation_arrays = validation
        self.is_chief = _is_chief(self.strategy)
        with self.strategy.scope():
            self.model = DeepSUM(config, recompute=config.recompute)
            self.variables = self._trained_variables()
            self.optimizer = optimization.adam(config.lr)
            # `applier` applies the gradients: Adam itself, or Adam with loss scaling (mixed_float16)
            self.applier, loss_scale_state = optimization.with_loss_scaling(self.optimizer, config.precision,
                                                                            self.variables)
        worker = None if self.is_chief else self.strategy.cluster_resolver.task_id
        cluster = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.loop = TrainingLoop(config.checkpoint_dir, {"model": self.model, "optimizer": self.optimizer},
                                 config.skip_step, title=f"train {config.spectral_band}", optional=loss_scale_state,
                                 best_key="score", best_mode="min", config=config, worker=worker, progress=progress,
                                 cluster=cluster, reads=config.dataset_path)
        self.step, self.best_score = self.loop.step, self.loop.best
        self.pretrained: dict[str, list[str]] = {}
        try:  # a start refused (weights missing or unfit) frees the folder and removes it if it made it
            self.resumed_from = self.loop.restore()
            if self.resumed_from:
                LOG.info("resuming from %s (step %d)", self.resumed_from, int(self.step))
            elif init_from is not None:
                try:
                    checkpoints.restore_weights(self.model, init_from)
                except checkpoints.CheckpointError as error:
                    raise checkpoints.CheckpointError(f"{error} (given by --init-from)") from None
                LOG.info("initialised every weight from %s", init_from)
            else:
                self.pretrained = load_pretrained(self.model, config, required=require_pretrained)
            if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
                self._check_workers_start_alike()
        except BaseException:
            self.loop.release()
            raise
        self._train_step = self._make_train_step()
        self.evaluator = evaluation.Evaluator(self.model, config)

    def _check_workers_start_alike(self) -> None:
        """Raise `TrainingError` on every worker unless all start from the same state.

        Each worker restores its own copy of the variables, from the chief's `checkpoint_dir`
        and the pretraining folders at its own paths: a worker that cannot see them (no shared
        file system) would train other weights from step 0 beside the chief's. One all-gather
        of what each worker started from makes that an error instead.
        """
        start = [int(self.step) if self.resumed_from else -1] + [int(name in self.pretrained) for name, _ in PRETRAINED]
        strategy = self.strategy

        @tf.function(autograph=False)  # the strategy's collectives run eagerly only with a warning
        def gathered(start):  # [3] -> [replicas, 3], the replicas of worker 0 first, then worker 1's...
            return strategy.gather(strategy.run(lambda: start[None]), axis=0)

        rows = gathered(tf.constant(start, tf.int64)).numpy()
        if (rows == rows[0]).all():
            return

        def described(row) -> str:
            if row[0] >= 0:
                return f"checkpoint of step {row[0]}"
            loaded = [name for (name, _), flag in zip(PRETRAINED, row[1:]) if flag]
            return f"no checkpoint, pretrained {' and '.join(loaded)}" if loaded else "no checkpoint, no pretraining"

        self.loop.release()
        per_worker = len(self.strategy.extended.worker_devices)
        starts = "; ".join(f"worker {index}: {described(row)}" for index, row in enumerate(rows[::per_worker]))
        raise TrainingError(f"{self.config.checkpoint_dir}: the workers did not start from the same state ({starts}); "
                            "every worker must see the chief's checkpoint_dir and the pretraining folders at the same paths "
                            "(a shared file system)")

    def _trained_variables(self) -> list:
        """Trainable variables minus those of the sub-networks named in `config.freeze`."""
        frozen = {id(variable) for name in self.config.freeze for variable in getattr(self.model, name).trainable_variables}
        return [variable for variable in self.model.trainable_variables if id(variable) not in frozen]

    def _make_train_step(self):
        model, applier, variables, config = self.model, self.applier, self.variables, self.config
        strategy = self.strategy
        scale = optimization.loss_scale(applier)
        micro_batch = optimization.resolve_micro_batch(config.micro_batch)

        def scene_loss(x, masks, y, y_mask):
            loss = metrics.cl2_loss(y, model(x, masks, training=True)["sr"], y_mask, border=config.border)
            return tf.debugging.check_numerics(loss, "training loss (cL2) is NaN or Inf")

        def replica_step(x, masks, y, y_mask):
            # A replica holds a slice of the global batch and the optimiser sums the replicas'
            # gradients: each part's batch mean is weighted by its share of the global batch.
            loss, gradients = optimization.batch_gradients(scene_loss, variables, (x, masks, y, y_mask),
                                                           config.batch_size, micro_batch,
                                                           config.jit_compile, scale)
            applier.apply_gradients(zip(gradients, variables))
            return loss

        @tf.function(autograph=False)  # no Python control flow on tensors: see docs/design.md
        def train_step(batch):
            per_replica = strategy.run(replica_step, args=batch)
            return {"loss": strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)}

        return train_step

    def validation_dataset(self) -> tf.data.Dataset:
        if self._validation_arrays is None:
            self._validation_arrays = data.load_validation_arrays(self.config)
        return data.make_validation_dataset(self.config, self._validation_arrays)

    def validate(self, step: int | None = None) -> dict[str, Any]:
        """`evaluate` at the current step, logged to `logs/validation`."""
        step = int(self.step) if step is None else step
        results = self.evaluator(self.validation_dataset(), self.loop.validation_writer, step, progress=self.progress)
        tqdm.write(f"step {step}: validation loss {results['loss']:.5g}, cPSNR {results['cpsnr']:.3f} dB "
                   f"(bicubic baseline {results['baseline_cpsnr']:.3f} dB), score {results['score']:.4f}, "
                   f"RegNet accuracy {results['regnet_accuracy']:.3f}")
        return results

    def save(self) -> str:
        """Checkpoint the model, Adam, step and best score (non-chief workers: scratch copy)."""
        return self.loop.save()

    def train(self, steps: int | None = None) -> dict[str, list]:
        """Train until global step `steps` (default `config.max_steps`; 0 = until interrupted).

        Returns the loop's history of this call: {"step", "loss", "seconds": [...],
        "validation": [evaluate results with "step" and "improved"]}.
        """
        target = self.config.max_steps if steps is None else steps

        def batches(start: int):
            if self.is_chief and self._validation_arrays is None:  # checked before the first step writes
                self._validation_arrays = data.load_validation_arrays(self.config)
            dataset = data.make_training_dataset(self.config, self.chunks, start_step=start)
            return self.strategy.experimental_distribute_dataset(dataset)

        return self.loop.run(self._train_step, batches, target, self.validate)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="JSON config (config_files/DeepSUM_config_NIR.json)")
    parser.add_argument("--steps", type=arguments.integer_at_least(0), default=None,
                        help="train until this global step (default: the config's max_steps; 0: until interrupted)")
    parser.add_argument("--checkpoint-dir", type=Path, help="override checkpoint_dir (checkpoints, logs, config.json)")
    parser.add_argument("--dataset-path", type=Path, help="override dataset_path (folder written by `prepare`)")
    parser.add_argument("--skip-step", type=int, help="override skip_step (steps between validation + checkpoint)")
    parser.add_argument("--batch-size", type=int, help="override batch_size")
    parser.add_argument("--lr", type=float, help="override the learning rate")
    parser.add_argument("--freeze", nargs="+", choices=config_module.SUB_NETWORKS, help="sub-networks not trained")
    parser.add_argument("--init-from", type=Path, help="start from these full-model weights (e.g. NIR to fine-tune RED)")
    parser.add_argument("--require-pretrained", action="store_true",
                        help="fail (instead of warning) when a pretraining checkpoint folder is empty")
    arguments.add_precision_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# every kind of config file: (dataclass, what it is called, the command that reads it, an example)
CONFIG_KINDS = (
    (config_module.DeepSUMConfig, "a DeepSUM config", "train", "config_files/DeepSUM_config_NIR.json"),
    (config_module.SISRNetPretrainConfig, "a SISRNet pretraining config", "pretrain-sisrnet",
     "config_files/SISRNet_pretrain_config.json"),
    (config_module.RegNetPretrainConfig, "a RegNet pretraining config", "pretrain-regnet",
     "config_files/RegNet_pretrain_config.json"),
)


def _keys_unknown_to(kind: type, content: Mapping[str, Any]) -> list[str]:
    """The keys of the two-section config `content` that `kind` has no field for in their section."""
    sections = {field.name: field.metadata["section"] for field in dataclasses.fields(kind)}
    return [key for section, keys in content.items() if isinstance(keys, dict)
            for key in keys if sections.get(key) != section]


def load_config_of_kind(path: str | os.PathLike, kind: type) -> Any:
    """`config.load_config(path, kind)`, where a config file of another kind (a pretraining config
    given to `train`, a DeepSUM config to `pretrain-sisrnet`...) is one error saying which kind
    the file is and which kind the command expects, rather than its first key `kind` lacks."""
    path = config_module.config_path(path)  # where load_config finds it
    try:
        return config_module.load_config(path, kind)
    except config_module.ConfigError as error:
        content = fileio.read_json(path, "a JSON config", config_module.ConfigError)  # read fine: a key refused
        unknown = _keys_unknown_to(kind, content) if isinstance(content, dict) else []
        kinds = [name for other, name, _, _ in CONFIG_KINDS
                 if unknown and other is not kind and not _keys_unknown_to(other, content)]
        if not kinds:  # a misspelt key, a wrong value: the loader's own message
            raise error
        expected, command, example = next(row[1:] for row in CONFIG_KINDS if row[0] is kind)
        listed = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise config_module.ConfigError(f"{path}: {kinds[0]} (it has {listed}); {command} expects {expected} "
                                        f"like {example}") from None


def load_training_config(config_path: str | os.PathLike, dataset_path: str | os.PathLike | None = None,
                         checkpoint_dir: str | os.PathLike | None = None, **changes: Any) -> config_module.DeepSUMConfig:
    """The config file at `config_path` with overrides (None keeps the file's value).

    dataset_path, checkpoint_dir: relative to the current directory; changes: other fields.
    """
    for field, value in (("dataset_path", dataset_path), ("checkpoint_dir", checkpoint_dir)):
        if value is not None:
            changes[field] = Path(value).absolute()
    for field, value in list(changes.items()):
        if isinstance(value, list):  # JSON-like lists for tuple fields (patch sizes, freeze)
            changes[field] = tuple(value)
    return load_config_of_kind(config_path, config_module.DeepSUMConfig).replace(**changes)


def config_from_arguments(args: argparse.Namespace) -> config_module.DeepSUMConfig:
    """The config file of `--config` with the command-line overrides applied."""
    changes = {field: getattr(args, field) for field in ("skip_step", "batch_size", "lr", "precision")
               if getattr(args, field, None) is not None}
    if args.freeze:
        changes["freeze"] = tuple(args.freeze)
    return load_training_config(args.config, args.dataset_path, args.checkpoint_dir, **changes)


def run_train(args: argparse.Namespace) -> int:
    config = config_from_arguments(args)
    trainer = Trainer(config, require_pretrained=args.require_pretrained, init_from=args.init_from,
                      progress=not args.no_progress)
    history = trainer.train(args.steps)
    summary = {"step": int(trainer.step), "checkpoint_dir": str(config.checkpoint_dir),
               "last_loss": history["loss"][-1] if history.get("loss") else None,
               "validation": history["validation"][-1] if history["validation"] else None}
    print(json.dumps(summary, indent=2))
    return 0
