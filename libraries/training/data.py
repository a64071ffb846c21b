"""The data of DeepSUM training: batches of prepared patches and whole validation scenes.

Both come from the prepared data set of `python -m libraries prepare`, normalised as
`(v - mu) / sigma` (inputs) and `(v - mu) / sigma_rescaled` (targets). Training batches are a
pure function of the global step (`BatchPlan`): epoch by epoch, the chunks in a seeded order
and the patches of each chunk in a seeded permutation, `batch_size` at a time (the authors
shuffled within each chunk and dropped the remainder). A resumed run therefore sees exactly the
batches the uninterrupted run would have seen, without checkpointing an iterator.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from libraries import config as config_module
from libraries import domain
from libraries.dataset import store

TRAINING_KEYS = ("frames", "masks", "hr", "hr_clear")
CHECK_BLOCK = 256


class TrainingDataError(domain.DeepSUMError):
    """Prepared data that cannot be trained on (NaN/Inf, wrong shape); names the chunk and scenes."""


def _describe_rows(arrays: Mapping[str, np.ndarray], rows: np.ndarray, scene_names: Any = None) -> str:
    """'rows [..] (scenes [..])' for an error message: the scene names of the rows, from the
    arrays' `names`, or from `scene_names` (the train store's) indexed by the arrays' `scene`."""
    rows = rows[:5]
    text = f"rows {rows.tolist()}"
    if "names" in arrays:
        text += f" (scenes {[str(arrays['names'][r]) for r in rows]})"
    elif "scene" in arrays and scene_names is not None:
        text += f" (scenes {[str(scene_names[int(arrays['scene'][r])]) for r in rows]})"
    elif "scene" in arrays:
        text += f" (scene indices {np.asarray(arrays['scene'])[rows].tolist()})"
    return text


def check_arrays(arrays: Mapping[str, np.ndarray], source: str, frames: int, patch: int | None = None,
                 scene_names: Any = None) -> None:
    """Check the shapes of prepared arrays, that frames and HR images are finite, that every HR
    image has a clear pixel and that baselines (where present) are positive and finite.

    arrays: `frames` [N,T,H,W] float, `masks` [N,T,H,W] bool, `hr` [N,H,W], `hr_clear` [N,H,W],
    `shifts` [N,T,2] (optional here), as `libraries.dataset` writes them. Raises
    `TrainingDataError` naming `source` (the chunk or file) and the first offending scenes
    (by name: `names`, or `scene_names` indexed by `scene`).
    """
    missing = [key for key in TRAINING_KEYS if key not in arrays]
    if missing:
        raise TrainingDataError(f"{source}: missing arrays {missing}; expected {list(TRAINING_KEYS)}")
    if np.ndim(arrays["frames"]) != 4 or not np.issubdtype(np.asarray(arrays["frames"]).dtype, np.number):
        raise TrainingDataError(f"{source}: frames of shape {np.shape(arrays['frames'])} and dtype "
                                f"{np.asarray(arrays['frames']).dtype}; expected numbers [scenes, frames, height, width]")
    count, found_frames, height, width = np.shape(arrays["frames"])
    expected = {"frames": (count, frames, height, width), "masks": (count, frames, height, width),
                "hr": (count, height, width), "hr_clear": (count, height, width)}
    if "shifts" in arrays:
        expected["shifts"] = (count, frames, 2)
    expected.update({key: (count,) for key in ("baseline", "scene", "names") if key in arrays})
    for key, shape in expected.items():
        if tuple(np.shape(arrays[key])) != shape:
            raise TrainingDataError(f"{source}: {key} has shape {tuple(np.shape(arrays[key]))}, expected {shape} "
                                    f"({frames} frames per input, as T_in in the config)")
    if scene_names is not None and "scene" in arrays:  # `scene` indexes the train store's scenes
        scene = np.asarray(arrays["scene"])
        integers = scene.dtype.kind in "iu"
        outside = np.flatnonzero((scene < 0) | (scene >= len(scene_names))) if integers else np.arange(min(1, count))
        if outside.size:
            row = int(outside[0])
            raise TrainingDataError(f"{source}: scene is {scene[row].item()!r} in row {row}; expected the integer "
                                    f"index of one of the {len(scene_names)} scenes of the train store "
                                    f"(re-run `python -m libraries prepare`)")
    if patch is not None and (height, width) != (patch, patch):
        raise TrainingDataError(f"{source}: patches are {height}x{width}, the config's patch_size_HR is {patch}x{patch}")
    for key in ("frames", "hr"):
        values = arrays[key]
        for start in range(0, count, CHECK_BLOCK):
            block = np.asarray(values[start:start + CHECK_BLOCK])
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)  # [block]
            if not finite.all():
                bad = start + np.flatnonzero(~finite)
                raise TrainingDataError(f"{source}: {key} holds NaN or Inf in {_describe_rows(arrays, bad, scene_names)}; "
                                        f"prepared data must be finite (re-run `python -m libraries prepare`)")
    # the cL2 loss and cPSNR are means over clear HR pixels: a target without one has neither
    cloudy = np.flatnonzero(~np.asarray(arrays["hr_clear"]).reshape(count, -1).any(axis=1))
    if cloudy.size:
        raise TrainingDataError(f"{source}: hr_clear has no clear pixel in "
                                f"{_describe_rows(arrays, cloudy, scene_names)}; the loss needs at least one "
                                f"(re-run `python -m libraries prepare`)")
    if "baseline" in arrays:  # the score divides by the norm.csv baseline
        baseline = np.asarray(arrays["baseline"], dtype=np.float64).reshape(-1)
        bad = np.flatnonzero(~(np.isfinite(baseline) & (baseline > 0)))
        if bad.size:
            raise TrainingDataError(f"{source}: baseline is {float(baseline[bad[0]])!r} in "
                                    f"{_describe_rows(arrays, bad, scene_names)}; expected the positive finite "
                                    f"cPSNR of norm.csv (re-run `python -m libraries prepare`)")


def check_chunk_count(dataset_path: Any, band: str, n_chunks: int, full: bool = False) -> None:
    """Raise `TrainingDataError` naming the config key when `n_chunks` is more than the data set
    holds (a missing folder is left to the reader, which names the file)."""
    band_dir = store.band_folder(dataset_path, band)
    folder = band_dir / "train" if full else band_dir / store.BEST9 / "train"
    prepared = len(list(folder.glob("chunk_*"))) if folder.is_dir() else None
    if prepared is not None and prepared < n_chunks:
        raise TrainingDataError(f"n_chunks: {n_chunks} in the config, but {folder} holds {prepared} "
                                f"chunks; expected n_chunks <= {prepared} (or prepare --chunks {n_chunks})")


class TrainingChunks:
    """The training chunks, read on demand; the two most recently used stay in memory.

    items: chunk indices (read with `libraries.dataset.store.load_training_chunk`) or in-memory
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
        if items is None:
            check_chunk_count(config.dataset_path, config.spectral_band, config.n_chunks, config.full)
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
            names = None
            if isinstance(item, Mapping):
                arrays = item
            else:
                arrays = store.load_training_chunk(self.config.dataset_path, self.config.spectral_band,
                                                   item, full=self.config.full)
                train = store.band_folder(self.config.dataset_path, self.config.spectral_band) / "train"
                names = store.load_arrays(train, ["names"])["names"]  # the scenes `scene` indexes
            check_arrays(arrays, self.name(index), self.config.T_in, self.config.patch_size_HR[0], names)
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
    x = domain.normalise(arrays["frames"][rows], config.mu, config.sigma)[..., None]  # [b,T,H,W] -> [b,T,H,W,1]
    masks = np.asarray(arrays["masks"][rows], dtype=bool)[..., None]  # [b,T,H,W] -> [b,T,H,W,1]
    y = domain.normalise(arrays["hr"][rows], config.mu, config.sigma_rescaled)[:, None, :, :, None]  # [b,H,W] -> [b,1,H,W,1]
    y_mask = np.asarray(arrays["hr_clear"][rows], dtype=np.float32)[:, None, :, :, None]  # [b,H,W] -> [b,1,H,W,1]
    return x, masks, y, y_mask


def step_dataset(batch_of_step: Callable[[int], tuple[np.ndarray, ...]], dtypes: Sequence[tf.DType],
                 shapes: Sequence[Sequence[int]], start_step: int = 0) -> tf.data.Dataset:
    """Endless batches, the batch of global step s being `batch_of_step(s)`, from `start_step` on.

    batch_of_step: a pure function of the step (NumPy; seeded by the step), so a run resumed at
    any step sees the batches the uninterrupted run would have seen. One `tf.numpy_function`
    call per batch, several batches in parallel (`AUTOTUNE`), in order, prefetched.
    """
    def load(step: tf.Tensor) -> tuple[tf.Tensor, ...]:
        tensors = tf.numpy_function(lambda value: batch_of_step(int(value)), [step], list(dtypes), stateful=False,
                                    name="load_batch")
        for tensor, shape in zip(tensors, shapes):
            tensor.set_shape(shape)
        return tuple(tensors)

    dataset = tf.data.Dataset.counter(start=start_step)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # Multi-worker: every worker reads the same step and keeps its share of the batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_training_dataset(config: config_module.DeepSUMConfig, chunks: Sequence[int | Mapping[str, np.ndarray]] | None = None,
                          start_step: int = 0) -> tf.data.Dataset:
    """Endless training batches `(x, masks, y, y_mask)` from global step `start_step` on.

    x `[b,T,P,P,1]` float32 normalised `(v - mu) / sigma`; masks `[b,T,P,P,1]` bool
    (registered); y `[b,1,P,P,1]` float32 `(v - mu) / sigma_rescaled`; y_mask `[b,1,P,P,1]`
    float32; b = config.batch_size, P = config.patch_size_HR.

    chunks: chunk indices (default: all `config.n_chunks`) or in-memory chunk dicts.
    Shuffling and batching are done by `BatchPlan` (seeded permutations, a pure function of
    the step) rather than `Dataset.shuffle(...).batch(...)`: a buffer shuffle over 2.6 GB
    chunks would hold them twice, and the plan lets a resumed run start at any step. Each
    batch gathers its rows from the chunk arrays (memory-mapped or in memory).
    """
    source = TrainingChunks(config, chunks)
    plan = BatchPlan(source.sizes, config.batch_size, config.seed)
    batch, frames, patch = config.batch_size, config.T_in, config.patch_size_HR[0]

    def batch_of_step(step: int) -> tuple[np.ndarray, ...]:
        chunk, rows = plan.rows(step)
        # Sorted rows read a memory-mapped chunk front to back; order inside a batch does not
        # matter (the loss is a batch mean).
        return normalise_inputs(source.get(chunk), np.sort(rows), config)

    shapes = [[batch, frames, patch, patch, 1]] * 2 + [[batch, 1, patch, patch, 1]] * 2
    return step_dataset(batch_of_step, [tf.float32, tf.bool, tf.float32, tf.float32], shapes, start_step)


def load_validation_arrays(config: config_module.DeepSUMConfig) -> Mapping[str, np.ndarray]:
    """The validation set of `config.dataset_path` (whole scenes), checked (`check_arrays`)."""
    arrays = store.load_validation(config.dataset_path, config.spectral_band, full=config.full)
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
