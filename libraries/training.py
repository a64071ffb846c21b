"""Training DeepSUM: the data pipeline, the distributed train step, checkpoints, validation.

The authors' `SR_network.train` in TensorFlow 2 form:

- Data (`make_training_dataset`, `make_validation_dataset`): the prepared chunks of
  `python -m libraries prepare`, normalised as `(v - mu) / sigma` (inputs) and
  `(v - mu) / sigma_rescaled` (targets). Training batches are a pure function of the global
  step (`BatchPlan`): epoch by epoch, the chunks in a seeded order and the patches of each
  chunk in a seeded permutation, `batch_size` at a time (the authors shuffled within each
  chunk and dropped the remainder). A resumed run therefore sees exactly the batches the
  uninterrupted run would have seen, without checkpointing an iterator.
- `Trainer`: DeepSUM and Adam under a `tf.distribute` strategy; SISRNet and RegNet loaded
  from the pretraining checkpoints before the first step, or everything (weights, Adam
  state, step, best validation score) restored from `checkpoint_dir` when it holds a
  checkpoint; every `skip_step` steps a validation on the whole validation set and a
  checkpoint; TensorBoard logs in `checkpoint_dir/logs/{train,validation}`.
- `evaluate(model, config)`: mean cL2 loss, cPSNR, normalised score and RegNet accuracy on
  the validation set (384x384 scenes, batch 1), printed next to the bicubic baseline.
- CLI: `python -m libraries train --config C [--steps N] [--checkpoint-dir D] ...`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tqdm.auto import tqdm

from libraries import config as config_module
from libraries import fileio, metrics, optimization

LOG = logging.getLogger(__name__)

# The training batch: x [b,T,P,P,1] float32, masks [b,T,P,P,1] bool, y [b,1,P,P,1], y_mask [b,1,P,P,1].
TRAINING_KEYS = ("frames", "masks", "hr", "hr_clear")
# Patches of one chunk that are checked for NaN/Inf at a time (bounds the temporary memory).
CHECK_BLOCK = 256


class TrainingDataError(ValueError):
    """Prepared data that cannot be trained on (NaN/Inf, wrong shape); names the chunk and scenes."""


# ---------------------------------------------------------------------------------------------
# Data


def _dataset_module():
    return importlib.import_module("libraries.dataset")


def _describe_rows(arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> str:
    """'rows [..], scenes [..]' for an error message (scene names when the arrays have them)."""
    rows = rows[:5]
    text = f"rows {rows.tolist()}"
    if "names" in arrays:
        text += f" (scenes {[str(arrays['names'][r]) for r in rows]})"
    elif "scene" in arrays:
        text += f" (scene indices {np.asarray(arrays['scene'])[rows].tolist()})"
    return text


def check_arrays(arrays: Mapping[str, np.ndarray], source: str, frames: int, patch: int | None = None) -> None:
    """Check the shapes of prepared arrays and that frames and HR images are finite.

    arrays: `frames` [N,T,H,W] float, `masks` [N,T,H,W] bool, `hr` [N,H,W], `hr_clear` [N,H,W],
    `shifts` [N,T,2] (optional here), as `libraries.dataset` writes them. Raises
    `TrainingDataError` naming `source` (the chunk or file) and the first offending scenes.
    """
    missing = [key for key in TRAINING_KEYS if key not in arrays]
    if missing:
        raise TrainingDataError(f"{source}: missing arrays {missing}; expected {list(TRAINING_KEYS)}")
    count, found_frames, height, width = np.shape(arrays["frames"])
    expected = {"frames": (count, frames, height, width), "masks": (count, frames, height, width),
                "hr": (count, height, width), "hr_clear": (count, height, width)}
    if "shifts" in arrays:
        expected["shifts"] = (count, frames, 2)
    for key, shape in expected.items():
        if tuple(np.shape(arrays[key])) != shape:
            raise TrainingDataError(f"{source}: {key} has shape {tuple(np.shape(arrays[key]))}, expected {shape} "
                                    f"({frames} frames per input, as T_in in the config)")
    if patch is not None and (height, width) != (patch, patch):
        raise TrainingDataError(f"{source}: patches are {height}x{width}, the config's patch_size_HR is {patch}x{patch}")
    for key in ("frames", "hr"):
        values = arrays[key]
        for start in range(0, count, CHECK_BLOCK):
            block = np.asarray(values[start:start + CHECK_BLOCK])
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)  # [block]
            if not finite.all():
                bad = start + np.flatnonzero(~finite)
                raise TrainingDataError(f"{source}: {key} holds NaN or Inf in {_describe_rows(arrays, bad)}; "
                                        f"prepared data must be finite (re-run `python -m libraries prepare`)")


class TrainingChunks:
    """The training chunks, read on demand; the two most recently used stay in memory.

    items: chunk indices (read with `libraries.dataset.load_training_chunk`) or in-memory
    chunk dicts of the same layout. Every chunk is read and checked once here to learn its
    size, so a NaN or a shape error is a `TrainingDataError` before training starts. Two
    chunks are cached because parallel batch loading straddles the boundary between two
    consecutive chunks; a real chunk (8000 patches of 9x96x96 float32) is about 2.6 GB.
    """

    def __init__(self, config: config_module.DeepSUMConfig, items: Sequence[int | Mapping[str, np.ndarray]] | None = None):
        self.config = config
        self.items = list(range(config.n_chunks) if items is None else items)
        if not self.items:
            raise TrainingDataError("no training chunk given")
        self._cache: OrderedDict[int, Mapping[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.sizes = [len(self.get(index)["frames"]) for index in range(len(self.items))]

    def name(self, index: int) -> str:
        item = self.items[index]
        if isinstance(item, Mapping):
            return f"training chunk #{index} (in memory)"
        return f"training chunk {item} of {self.config.dataset_path} ({self.config.spectral_band})"

    def get(self, index: int) -> Mapping[str, np.ndarray]:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            item = self.items[index]
            if isinstance(item, Mapping):
                arrays = item
            else:
                arrays = _dataset_module().load_training_chunk(self.config.dataset_path, self.config.spectral_band,
                                                               item, full=self.config.full)
            check_arrays(arrays, self.name(index), self.config.T_in, self.config.patch_size_HR[0])
            self._cache[index] = arrays
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
            return arrays


@functools.lru_cache(maxsize=16)
def _permutation(seed: tuple[int, ...], size: int) -> np.ndarray:
    return np.random.default_rng(list(seed)).permutation(size)


class BatchPlan:
    """Which patches form the batch of each global step (a pure function of the step).

    Epoch e visits the chunks in the order `permutation(seed, e)`; within chunk c it takes
    the patches in the order `permutation(seed, e, c)`, `batch_size` at a time, dropping the
    remainder. sizes: patches per chunk.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int):
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.seed = seed
        self.batches = np.array([size // batch_size for size in self.sizes])  # [chunks]
        self.steps_per_epoch = int(self.batches.sum())
        if self.steps_per_epoch == 0:
            raise TrainingDataError(f"the training chunks hold {self.sizes} patches, fewer than one batch of {batch_size}")

    def rows(self, step: int) -> tuple[int, np.ndarray]:
        """(chunk index, patch rows `[batch_size]`) of global step `step` (0-based)."""
        epoch, within = divmod(int(step), self.steps_per_epoch)
        order = _permutation((self.seed, epoch), len(self.sizes))  # chunk order of this epoch
        ends = np.cumsum(self.batches[order])  # [chunks]
        position = int(np.searchsorted(ends, within, side="right"))
        chunk = int(order[position])
        batch = within - (ends[position] - self.batches[chunk])
        patches = _permutation((self.seed, epoch, chunk), self.sizes[chunk])
        return chunk, patches[batch * self.batch_size:(batch + 1) * self.batch_size]


def normalise_inputs(arrays: Mapping[str, np.ndarray], rows: np.ndarray, config: config_module.DeepSUMConfig) -> tuple[np.ndarray, ...]:
    """Rows of prepared arrays as network tensors.

    Returns x `[b,T,H,W,1]` float32 `(v - mu) / sigma`, masks `[b,T,H,W,1]` bool,
    y `[b,1,H,W,1]` float32 `(v - mu) / sigma_rescaled`, y_mask `[b,1,H,W,1]` float32.
    """
    frames = np.asarray(arrays["frames"][rows], dtype=np.float32)
    x = ((frames - np.float32(config.mu)) / np.float32(config.sigma))[..., None]  # [b,T,H,W] -> [b,T,H,W,1]
    masks = np.asarray(arrays["masks"][rows], dtype=bool)[..., None]  # [b,T,H,W] -> [b,T,H,W,1]
    hr = np.asarray(arrays["hr"][rows], dtype=np.float32)
    y = ((hr - np.float32(config.mu)) / np.float32(config.sigma_rescaled))[:, None, :, :, None]  # [b,H,W] -> [b,1,H,W,1]
    y_mask = np.asarray(arrays["hr_clear"][rows], dtype=np.float32)[:, None, :, :, None]  # [b,H,W] -> [b,1,H,W,1]
    return x, masks, y, y_mask


def make_training_dataset(config: config_module.DeepSUMConfig, chunks: Sequence[int | Mapping[str, np.ndarray]] | None = None,
                          start_step: int = 0) -> tf.data.Dataset:
    """Endless training batches `(x, masks, y, y_mask)` from global step `start_step` on.

    x `[b,T,P,P,1]` float32 normalised `(v - mu) / sigma`; masks `[b,T,P,P,1]` bool
    (registered); y `[b,1,P,P,1]` float32 `(v - mu) / sigma_rescaled`; y_mask `[b,1,P,P,1]`
    float32; b = config.batch_size, P = config.patch_size_HR.

    chunks: chunk indices (default: all `config.n_chunks`) or in-memory chunk dicts.
    Shuffling and batching are done by `BatchPlan` (seeded permutations, a pure function of
    the step) rather than `Dataset.shuffle(...).batch(...)`: a buffer shuffle over 2.6 GB
    chunks would hold them twice, and the plan lets a resumed run start at any step. One
    `tf.numpy_function` call per *batch* gathers its rows from the chunk arrays (memory-mapped
    or in memory), several batches in parallel (`AUTOTUNE`), prefetched.
    """
    source = TrainingChunks(config, chunks)
    plan = BatchPlan(source.sizes, config.batch_size, config.seed)
    batch, frames, patch = config.batch_size, config.T_in, config.patch_size_HR[0]

    def load(step: np.ndarray) -> tuple[np.ndarray, ...]:
        chunk, rows = plan.rows(int(step))
        # Sorted rows read a memory-mapped chunk front to back; order inside a batch does not
        # matter (the loss is a batch mean).
        return normalise_inputs(source.get(chunk), np.sort(rows), config)

    def load_batch(step: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x, masks, y, y_mask = tf.numpy_function(load, [step], [tf.float32, tf.bool, tf.float32, tf.float32],
                                                stateful=False, name="load_training_batch")
        x.set_shape([batch, frames, patch, patch, 1])
        masks.set_shape([batch, frames, patch, patch, 1])
        y.set_shape([batch, 1, patch, patch, 1])
        y_mask.set_shape([batch, 1, patch, patch, 1])
        return x, masks, y, y_mask

    dataset = tf.data.Dataset.counter(start=start_step)
    dataset = dataset.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # Multi-worker: every worker reads the same step and keeps its share of the batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def load_validation_arrays(config: config_module.DeepSUMConfig) -> Mapping[str, np.ndarray]:
    """The validation set of `config.dataset_path` (whole scenes), checked (`check_arrays`)."""
    arrays = _dataset_module().load_validation(config.dataset_path, config.spectral_band, full=config.full)
    check_arrays(arrays, f"validation set of {config.dataset_path} ({config.spectral_band})", config.T_in)
    for key in ("shifts", "baseline"):
        if key not in arrays:
            raise TrainingDataError(f"validation set of {config.dataset_path}: missing array {key!r}")
    return arrays


def make_validation_dataset(config: config_module.DeepSUMConfig, arrays: Mapping[str, np.ndarray] | None = None) -> tf.data.Dataset:
    """Validation scenes one at a time: `(x, masks, y, y_mask, baseline, shifts)`.

    x, masks `[1,T,H,W,1]`, y, y_mask `[1,1,H,W,1]` as `make_training_dataset` (H = W = 384
    for PROBA-V), baseline `[1]` float32 (norm.csv cPSNR), shifts `[1,T,2]` int32
    (registration shift of every frame). arrays: as `libraries.dataset.load_validation`
    returns them (default: read from `config.dataset_path`).
    """
    if arrays is None:
        arrays = load_validation_arrays(config)
    else:
        check_arrays(arrays, "validation arrays", config.T_in)
    count, frames, height, width = np.shape(arrays["frames"])

    def load(index: np.ndarray) -> tuple[np.ndarray, ...]:
        rows = np.array([int(index)])
        baseline = np.asarray(arrays["baseline"][rows], dtype=np.float32)  # [1]
        shifts = np.asarray(arrays["shifts"][rows], dtype=np.int32)  # [1,T,2]
        return (*normalise_inputs(arrays, rows, config), baseline, shifts)

    def load_scene(index: tf.Tensor) -> tuple[tf.Tensor, ...]:
        outputs = tf.numpy_function(load, [index], [tf.float32, tf.bool, tf.float32, tf.float32, tf.float32, tf.int32],
                                    stateful=False, name="load_validation_scene")
        shapes = ([1, frames, height, width, 1], [1, frames, height, width, 1], [1, 1, height, width, 1],
                  [1, 1, height, width, 1], [1], [1, frames, 2])
        for tensor, shape in zip(outputs, shapes):
            tensor.set_shape(shape)
        return tuple(outputs)

    dataset = tf.data.Dataset.range(count).map(load_scene, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(2)


# ---------------------------------------------------------------------------------------------
# TensorBoard records. `tf.summary.scalar`/`image` need the `tensorboard` package, which the
# CPU TensorFlow wheel does not install; these write the same records with core TensorFlow
# (`tf.summary.write` plus the metadata the TensorBoard plugins read).


def summary_scalar(name: str, value: float) -> None:
    """A scalar for TensorBoard's scalars plugin (inside `writer.as_default(step=...)`)."""
    metadata = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(value, tf.float32), metadata=metadata)


def summary_images(name: str, images: np.ndarray) -> None:
    """Images `[n, H, W, 1]` in [0, 1] for TensorBoard's images plugin, as PNGs."""
    metadata = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_BLOB_SEQUENCE)
    metadata.plugin_data.plugin_name = "images"
    pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)  # [n,H,W,1]
    pngs = [tf.io.encode_png(image) for image in tf.unstack(pixels)]
    height, width = images.shape[1:3]
    tf.summary.write(name, tf.stack([tf.as_string(width), tf.as_string(height), *pngs]), metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Evaluation


def registration_taps(shifts: tf.Tensor, filter_size: int = 9) -> tf.Tensor:
    """Filter tap of each shift: `filter_size * (dy + h) + (dx + h)`, h = filter_size // 2.

    shifts: `[..., 2]` integer (dy, dx) as stored by dataset creation (the shift that
    registers the frame to the reference; the authors put the one-hot RegNet label there).
    Returns `[...]` int32.
    """
    half = filter_size // 2
    shifts = tf.cast(shifts, tf.int32)
    return filter_size * (shifts[..., 0] + half) + (shifts[..., 1] + half)


def _display(images: np.ndarray) -> np.ndarray:
    """`[n,H,W]` -> `[n,H,W,1]` in [0,1], each image stretched between its min and max."""
    low = images.min(axis=(1, 2), keepdims=True)
    high = images.max(axis=(1, 2), keepdims=True)
    return ((images - low) / np.maximum(high - low, 1e-12))[..., None].astype(np.float32)


def filter_strip(filters: np.ndarray, zoom: int = 4) -> np.ndarray:
    """Registration filters `[frames, k, k]` side by side as one image `[k*zoom, frames*k*zoom]`."""
    count, size, _ = filters.shape
    strip = filters.transpose(1, 0, 2).reshape(size, count * size)  # [f,k,k] -> [k,f,k] -> [k,f*k]
    return np.kron(strip, np.ones((zoom, zoom), dtype=strip.dtype))


class Evaluator:
    """Validation of one model on whole scenes (batch 1); its `tf.function` is traced once.

    model: a DeepSUM (`model(x, masks) -> {"sr", "filters", "filter_logits", ...}`).
    """

    def __init__(self, model: tf.Module, config: config_module.DeepSUMConfig):
        self.model = model
        self.config = config
        self._step = tf.function(self._scene, reduce_retracing=True)

    def _scene(self, x, masks, y, y_mask, baseline, shifts):
        config = self.config
        outputs = self.model(x, masks, training=False)
        loss = tf.debugging.check_numerics(metrics.cl2_loss(y, outputs["sr"], y_mask, border=config.border),
                                           "validation loss (non-finite network output)")
        psnr = metrics.cpsnr(y, outputs["sr"], y_mask, border=config.border, mu=config.mu,
                             sigma_rescaled=config.sigma_rescaled)  # [1]
        score = metrics.normalized_score(psnr, baseline)  # [1]
        taps = registration_taps(shifts[:, 1:], config.filter_size)  # [1,T-1]
        correct = tf.equal(tf.argmax(outputs["filter_logits"], axis=-1, output_type=tf.int32), taps)  # [1,T-1]
        return loss, psnr, score, correct, outputs["sr"], outputs["filters"]

    def __call__(self, dataset: tf.data.Dataset, writer: tf.summary.SummaryWriter | None = None, step: int = 0,
                 progress: bool = True) -> dict[str, float]:
        """See `evaluate`."""
        losses, psnrs, scores, baselines, correct = [], [], [], [], []
        images: dict[str, list[np.ndarray]] = {"sr": [], "hr": [], "filters": []}
        for x, masks, y, y_mask, baseline, shifts in tqdm(dataset, desc="validation", leave=False, disable=not progress):
            loss, psnr, score, hits, sr, filters = self._step(x, masks, y, y_mask, baseline, shifts)
            losses.append(float(loss))
            psnrs.append(float(psnr[0]))
            scores.append(float(score[0]))
            baselines.append(float(baseline[0]))
            correct.append(hits.numpy().ravel())
            if len(images["sr"]) < self.config.validation_images:
                images["sr"].append(sr.numpy()[0, 0, :, :, 0])  # [1,1,H,W,1] -> [H,W]
                images["hr"].append(y.numpy()[0, 0, :, :, 0])  # [1,1,H,W,1] -> [H,W]
                images["filters"].append(filter_strip(filters.numpy()[0]))  # [T-1,k,k] -> [k*4, (T-1)*k*4]
        if not losses:
            raise TrainingDataError("the validation set holds no scene")
        results = {"loss": float(np.mean(losses)), "cpsnr": float(np.mean(psnrs)), "score": float(np.mean(scores)),
                   "baseline_cpsnr": float(np.mean(baselines)),
                   "regnet_accuracy": float(np.mean(np.concatenate(correct))), "scenes": len(losses)}
        if writer is not None:
            with writer.as_default(step=step):
                for name in ("loss", "cpsnr", "score", "baseline_cpsnr", "regnet_accuracy"):
                    summary_scalar(name, results[name])
                for name, values in images.items():
                    if values:
                        summary_images(name, _display(np.stack(values)))
            writer.flush()
        return results


def evaluate(model: tf.Module, config: config_module.DeepSUMConfig, dataset: tf.data.Dataset | None = None,
             writer: tf.summary.SummaryWriter | None = None, step: int = 0, progress: bool = True) -> dict[str, float]:
    """Validate `model` on whole scenes (batch 1); optionally log to a TensorBoard `writer`.

    dataset: as `make_validation_dataset` (default: the validation set of `config.dataset_path`).
    Returns the means over scenes of `loss` (cL2), `cpsnr` (dB) and `score` (baseline /
    cPSNR, lower is better), `baseline_cpsnr` (norm.csv, the bicubic baseline to compare
    with), `regnet_accuracy` (share of frames 1..T-1 whose arg-max filter tap is the tap of
    their registration shift, as the authors' `accuracy`) and `scenes`. With a writer these
    scalars, the first `config.validation_images` SR and HR images and their registration
    filters are written at `step`.
    """
    dataset = make_validation_dataset(config) if dataset is None else dataset
    return Evaluator(model, config)(dataset, writer, step, progress)


# ---------------------------------------------------------------------------------------------
# Strategy, pretrained weights


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


def has_checkpoint(folder: Path) -> bool:
    """True when `folder` holds a TensorFlow checkpoint (an `.index` file)."""
    return Path(folder).is_dir() and any(Path(folder).glob("*.index"))


def load_pretrained(model: tf.Module, config: config_module.DeepSUMConfig, required: bool = False) -> dict[str, list[str]]:
    """Load SISRNet and RegNet from `config.SISRNet_pretrain_dir` and `config.RegNet_pretrain_dir`.

    Both folders may hold the authors' TF1 checkpoints or ours; the pretraining module's
    `load_pretrained_weights` reads both formats when it is there, else the authors' TF1
    format is read with `libraries.tf1_checkpoint.load_tf1_checkpoint`. A folder without a
    checkpoint is a logged warning (that sub-network starts from its initialisation, as the
    authors' code silently did), or a `FileNotFoundError` when `required`.
    Returns {sub-network: names of the variables loaded}.
    """
    folders = {"sisrnet": Path(config.SISRNet_pretrain_dir), "regnet": Path(config.RegNet_pretrain_dir)}
    present = {name: folder for name, folder in folders.items() if has_checkpoint(folder)}
    missing = [name for name in folders if name not in present]
    messages = [f"no {name} pretraining checkpoint in {folders[name]} (config "
                f"{'SISRNet' if name == 'sisrnet' else 'RegNet'}_pretrain_dir)" for name in missing]
    if required and missing:
        commands = " and ".join(f"`python -m libraries pretrain-{name}`" for name in missing)
        raise FileNotFoundError(f"{'; '.join(messages)}: run {commands} or `python -m libraries fetch-weights` first")
    for name, message in zip(missing, messages):
        LOG.warning("%s: %s starts from its random initialisation", message, name)
    if not present:
        return {}
    try:
        pretraining = importlib.import_module("libraries.pretraining")
    except ModuleNotFoundError:
        pretraining = None
    if pretraining is not None and hasattr(pretraining, "load_pretrained_weights"):
        loaded = pretraining.load_pretrained_weights(model, present.get("sisrnet"), present.get("regnet"))
        return {name: list(names) for name, names in dict(loaded).items()}
    tf1_checkpoint = importlib.import_module("libraries.tf1_checkpoint")
    return {name: list(tf1_checkpoint.load_tf1_checkpoint(model, str(folder))) for name, folder in present.items()}


# ---------------------------------------------------------------------------------------------
# Trainer


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
        model_module = importlib.import_module("libraries.model")
        self.config = config
        self.strategy = strategy or choose_strategy()
        self.chunks = chunks
        self.progress = progress
        self._validation_arrays = validation
        self.is_chief = _is_chief(self.strategy)
        with self.strategy.scope():
            self.model = model_module.DeepSUM(config, recompute=config.recompute)
            size = config.patch_size_HR[0]
            # Create every variable now (one small forward pass) so weights can be loaded.
            self.model(tf.zeros([1, config.T_in, size, size, 1]), tf.ones([1, config.T_in, size, size, 1], tf.bool))
            self.variables = self._trained_variables()
            self.optimizer = tf.keras.optimizers.Adam(config.lr)
            self.optimizer.build(self.variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.best_score = tf.Variable(np.inf, dtype=tf.float32, trainable=False, name="best_score")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step,
                                              best_score=self.best_score)
        folder = Path(config.checkpoint_dir)
        # Non-chief workers must save too (a save may involve every worker) but into a scratch
        # folder; every worker restores from the chief's folder.
        self._save_dir = folder if self.is_chief else folder / f".worker_{self.strategy.cluster_resolver.task_id}"
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self._save_dir), max_to_keep=3 if self.is_chief else 1)
        self.best_manager = tf.train.CheckpointManager(self.checkpoint, str(self._save_dir / "best"), max_to_keep=1)
        self.pretrained: dict[str, list[str]] = {}
        self.resumed_from = self._restore(require_pretrained, init_from)
        if self.is_chief:
            fileio.save_json(folder / "config.json", config_module.to_json(config))
            self.train_writer = tf.summary.create_file_writer(str(folder / "logs" / "train"))
            self.validation_writer = tf.summary.create_file_writer(str(folder / "logs" / "validation"))
        else:
            self.train_writer = self.validation_writer = tf.summary.create_noop_writer()
        self._train_step = self._make_train_step()
        self.evaluator = Evaluator(self.model, config)

    def _trained_variables(self) -> list:
        """Trainable variables minus those of the sub-networks named in `config.freeze`."""
        frozen = {id(variable) for name in self.config.freeze for variable in getattr(self.model, name).trainable_variables}
        return [variable for variable in self.model.trainable_variables if id(variable) not in frozen]

    def _restore(self, require_pretrained: bool, init_from: str | os.PathLike | None) -> str | None:
        latest = tf.train.latest_checkpoint(str(self.config.checkpoint_dir))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            LOG.info("resuming from %s (step %d)", latest, int(self.step))
            return latest
        if init_from is not None:
            importlib.import_module("libraries.checkpoints").restore_weights(self.model, init_from)
            LOG.info("initialised every weight from %s", init_from)
        else:
            self.pretrained = load_pretrained(self.model, self.config, required=require_pretrained)
        return None

    def _make_train_step(self):
        model, optimizer, variables, config = self.model, self.optimizer, self.variables, self.config
        strategy = self.strategy

        def scene_loss(x, masks, y, y_mask):
            loss = metrics.cl2_loss(y, model(x, masks, training=True)["sr"], y_mask, border=config.border)
            return tf.debugging.check_numerics(loss, "training loss (cL2) is NaN or Inf")

        def replica_step(x, masks, y, y_mask):
            # A replica holds a slice of the global batch and the optimiser sums the replicas'
            # gradients: each part's batch mean is weighted by its share of the global batch.
            loss, gradients = optimization.batch_gradients(scene_loss, variables, (x, masks, y, y_mask),
                                                           config.batch_size, config.micro_batch,
                                                           config.jit_compile)
            optimizer.apply_gradients(zip(gradients, variables))
            return loss

        @tf.function
        def train_step(batch):
            per_replica = strategy.run(replica_step, args=batch)
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return train_step

    def validation_dataset(self) -> tf.data.Dataset:
        if self._validation_arrays is None:
            self._validation_arrays = load_validation_arrays(self.config)
        return make_validation_dataset(self.config, self._validation_arrays)

    def validate(self) -> dict[str, float]:
        """`evaluate` at the current step, logged to `logs/validation`; keeps the best score."""
        step = int(self.step)
        results = self.evaluator(self.validation_dataset(), self.validation_writer, step, progress=self.progress)
        results["step"] = step
        results["improved"] = bool(results["score"] < float(self.best_score))
        if results["improved"]:
            self.best_score.assign(results["score"])
        tqdm.write(f"step {step}: validation loss {results['loss']:.5g}, cPSNR {results['cpsnr']:.3f} dB "
                   f"(bicubic baseline {results['baseline_cpsnr']:.3f} dB), score {results['score']:.4f}, "
                   f"RegNet accuracy {results['regnet_accuracy']:.3f}")
        return results

    def save(self) -> str:
        """Checkpoint the model, Adam, step and best score (non-chief workers: scratch copy)."""
        return self.manager.save(checkpoint_number=int(self.step))

    def train(self, steps: int | None = None) -> dict[str, list]:
        """Train until global step `steps` (default `config.max_steps`; 0 = until interrupted).

        Every `config.skip_step` steps: validate (chief), checkpoint, and keep the best
        model in `checkpoint_dir/best`. Returns {"step": [...], "loss": [...], "seconds": [...],
        "validation": [evaluate results with "step"]} for the steps run by this call.
        """
        target = self.config.max_steps if steps is None else steps
        start = int(self.step)
        history: dict[str, list] = {"step": [], "loss": [], "seconds": [], "validation": []}
        if target and start >= target:
            return history
        dataset = make_training_dataset(self.config, self.chunks, start_step=start)
        batches = iter(self.strategy.experimental_distribute_dataset(dataset))
        bar = tqdm(total=target or None, initial=start, desc="train", disable=not self.progress)
        try:
            while not target or int(self.step) < target:
                began = time.perf_counter()
                loss = float(self._train_step(next(batches)))
                self.step.assign_add(1)
                step = int(self.step)
                history["step"].append(step)
                history["loss"].append(loss)
                history["seconds"].append(time.perf_counter() - began)
                with self.train_writer.as_default(step=step):
                    summary_scalar("loss", loss)
                bar.set_postfix(loss=f"{loss:.4g}")
                bar.update()
                if step % self.config.skip_step == 0:
                    self._validate_and_save(history)
        finally:
            bar.close()
            self.train_writer.flush()
        if int(self.step) % self.config.skip_step:
            self.save()
        return history

    def _validate_and_save(self, history: dict[str, list]) -> None:
        results = self.validate() if self.is_chief else None
        self.save()
        if results is not None:
            history["validation"].append(results)
            if results["improved"]:
                self.best_manager.save(checkpoint_number=int(self.step))


def plot_history(history: Mapping[str, Sequence], ax=None):
    """Training loss per step and validation loss per validation of `Trainer.train`'s history.

    Returns the matplotlib Axes (a new figure when `ax` is None).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["loss"], lw=1, label="training batch")
    validation = history.get("validation", [])
    if validation:
        ax.plot([v["step"] for v in validation], [v["loss"] for v in validation], "o-", label="validation set")
    ax.set_xlabel("step")
    ax.set_ylabel("cL2 loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


# ---------------------------------------------------------------------------------------------
# Command line


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="JSON config (config_files/DeepSUM_config_NIR.json)")
    parser.add_argument("--steps", type=int, default=None,
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


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
    return config_module.load_config(config_path).replace(**changes)


def config_from_arguments(args: argparse.Namespace) -> config_module.DeepSUMConfig:
    """The config file of `--config` with the command-line overrides applied."""
    changes = {field: getattr(args, field) for field in ("skip_step", "batch_size", "lr") if getattr(args, field) is not None}
    if args.freeze:
        changes["freeze"] = tuple(args.freeze)
    return load_training_config(args.config, args.dataset_path, args.checkpoint_dir, **changes)


def run_train(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("libraries").setLevel(logging.INFO)
    config = config_from_arguments(args)
    trainer = Trainer(config, require_pretrained=args.require_pretrained, init_from=args.init_from,
                      progress=not args.no_progress)
    history = trainer.train(args.steps)
    summary = {"step": int(trainer.step), "checkpoint_dir": str(config.checkpoint_dir),
               "last_loss": history["loss"][-1] if history["loss"] else None,
               "validation": history["validation"][-1] if history["validation"] else None}
    print(json.dumps(summary, indent=2))
    return 0
