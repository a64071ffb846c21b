"""The data of the two pretrainings: registered single frames (SISRNet), planted shifts (RegNet).

Both read the training chunks of a prepared data set and keep the scenes of a seeded
`heldout_fraction` out of training for the evaluation. Batches are, as in DeepSUM's training,
a pure function of the global step (`training.data.BatchPlan` over the samples, crops drawn
from `default_rng([seed, step])`), so a resumed run continues with the batches the
uninterrupted one would have seen.

Shift convention: a frame's registration shift (dy, dx) is the one that moves it onto the
reference grid, `out[y, x] = frame[y + dy, x + dx]` (`translate_frames`); the registration
filter with its mass at `domain.tap_index((dy, dx))` does the same (`model.register_frames`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import tensorflow as tf

from libraries import domain, preprocessing, probav
from libraries.config import PretrainConfig
from libraries.dataset import store
from libraries.training.data import BatchPlan, check_arrays, check_chunk_count, step_dataset

MIN_CLEAR_FRACTION = 0.5  # single-frame samples with fewer clear target pixels are not used


class PretrainingError(domain.DeepSUMError):
    """Pretraining cannot go on (no data, too few scenes); the message says why."""


def random_shifts(batch: int, frames: int, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
    """Uniform integer shifts in [-max_shift, max_shift]: int32 `[batch, frames, 2]`.

    seed: `[2]` integer (stateless: the same seed gives the same shifts, e.g. (seed, step)).
    """
    return tf.random.stateless_uniform([batch, frames, 2], seed=seed, minval=-max_shift,
                                       maxval=max_shift + 1, dtype=tf.int32)


def planted_shift_stack(features: tf.Tensor, shifts: tf.Tensor, max_shift: int) -> tf.Tensor:
    """The reference features and copies translated by known shifts, cut `max_shift` inside.

    features: `[batch, H, W, F]` of one frame; shifts: `[batch, T-1, 2]` integer (dy, dx) with
    |dy|, |dx| <= max_shift. Returns `[batch, T, H - 2m, W - 2m, F]` (m = max_shift): frame 0 is
    `features[:, m:H-m, m:W-m]`; frame t satisfies `frame_t[y + dy, x + dx] = frame_0[y, x]`,
    so the registration filter with its mass at `tap_index((dy, dx))` maps it onto frame 0.
    """
    shape = tf.shape(features)
    height, width = shape[1] - 2 * max_shift, shape[2] - 2 * max_shift
    shifts = tf.cast(shifts, tf.int32)
    all_shifts = tf.concat([tf.zeros_like(shifts[:, :1]), shifts], axis=1)  # [b, T, 2], frame 0 unshifted
    starts = max_shift - all_shifts  # [b, T, 2]: corner of each frame's window in the features
    rows = starts[..., :1] + tf.range(height)  # [b, T, h]
    cols = starts[..., 1:] + tf.range(width)  # [b, T, w]
    stack = tf.gather(features, rows, axis=1, batch_dims=1)  # [b, H, W, F] -> [b, T, h, W, F]
    return tf.gather(stack, cols, axis=3, batch_dims=2)  # [b, T, h, W, F] -> [b, T, h, w, F]


def translate_frames(frames: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each frame onto the reference grid: `out[y, x] = frame[y + dy, x + dx]`.

    frames: `[n, H, W]`; shifts: `[n, 2]` integer (dy, dx), the dataset's registration shifts
    (`preprocessing.translate_masks` moves masks the same way, also circularly). Returns
    (translated `[n, H, W]`, inside `[n, H, W]` bool: false on the rows and columns that
    wrapped around from the other side).
    """
    frames, shifts = np.asarray(frames), np.asarray(shifts, dtype=np.int64)
    height, width = frames.shape[1:3]
    rows = np.arange(height)[None, :] + shifts[:, :1]  # [n, H]
    cols = np.arange(width)[None, :] + shifts[:, 1:]  # [n, W]
    moved = np.take_along_axis(frames, (rows % height)[:, :, None], axis=1)  # [n, H, W]
    moved = np.take_along_axis(moved, (cols % width)[:, None, :], axis=2)  # [n, H, W]
    return moved, unwrapped(shifts, height, width)


def unwrapped(shifts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Where `translate_frames` by `shifts` `[n, 2]` moves in real content: `[n, H, W]` bool, false
    on the rows and columns that wrap around from the other side."""
    shifts = np.asarray(shifts, dtype=np.int64)
    rows = np.arange(height)[None, :] + shifts[:, :1]  # [n, H]
    cols = np.arange(width)[None, :] + shifts[:, 1:]  # [n, W]
    return ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]


def read_training_patches(config: PretrainConfig) -> dict[str, np.ndarray]:
    """The first `n_chunks` training chunks of `config.dataset_path`, concatenated.

    Returns the arrays of `dataset.load_training_chunk` (frames [N, 9, P, P] float32 DN,
    masks [N, 9, P, P] bool registered, shifts [N, 9, 2] int32, hr [N, P, P], hr_clear, scene [N]).
    """
    check_chunk_count(config.dataset_path, config.spectral_band, config.n_chunks)
    train = store.band_folder(config.dataset_path, config.spectral_band) / "train"
    names = store.load_arrays(train, ["names"])["names"]  # the scenes `scene` indexes
    chunks = []
    for chunk in range(config.n_chunks):
        arrays = store.load_training_chunk(config.dataset_path, config.spectral_band, chunk)
        check_arrays(arrays, f"training chunk {chunk} of {config.dataset_path} ({config.spectral_band})",
                     domain.T_IN, scene_names=names)
        chunks.append(arrays)
    keys = ("frames", "masks", "shifts", "hr", "hr_clear", "scene")
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in keys}


def check_patches(patches: Mapping[str, np.ndarray], config: PretrainConfig, keys: tuple[str, ...]) -> None:
    """Raise `PretrainingError` unless `patches` hold `keys` and frames `[N, T, P, P]` with P >= patch_size."""
    for key in keys:
        if key not in patches:
            raise PretrainingError(f"training patches: missing array {key!r} (expected {keys})")
    frames = patches["frames"]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise PretrainingError(f"training patches: expected frames [patches, frames, P, P], got {frames.shape}")
    if min(frames.shape[2:]) < config.patch_size:
        raise PretrainingError(f"patch_size {config.patch_size} is larger than the prepared patches "
                               f"{frames.shape[2]}x{frames.shape[3]} of {config.dataset_path}")


def split_scenes(scene: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the patches of held-out scenes: a seeded `fraction` of the scene ids.

    scene: `[patches]` scene id of each patch. At least one scene is held out and one kept.
    """
    ids = np.unique(scene)
    if len(ids) < 2:
        raise PretrainingError(f"the held-out evaluation needs patches of at least 2 scenes, got {len(ids)}")
    count = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    heldout = np.random.default_rng(seed).choice(ids, size=count, replace=False)
    return np.isin(scene, heldout)


def random_corners(rng: np.random.Generator, count: int, side: int, size: int) -> np.ndarray:
    """`count` top-left corners `[count, 2]` of `size` windows in a `side` x `side` image."""
    return rng.integers(0, side - size + 1, size=(count, 2))


def crop(images: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """Window i of `images[i]` `[n, H, W, ...]` at `corners[i]`: `[n, size, size, ...]`."""
    return np.stack([image[top:top + size, left:left + size] for image, (top, left) in zip(images, corners)])


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """The central `size` x `size` window of `[N, H, W, ...]`."""
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return images[:, top:top + size, left:left + size]


# --------------------------------------------------------------------------- SISRNet


class SingleFrames:
    """The single-frame samples of SISRNet pretraining: every frame of every patch, registered.

    A sample is (patch, frame): x the frame `(v - mu) / sigma` translated onto the reference
    grid, y the HR patch `(v - mu) / sigma_rescaled`, mask true where HR and the registered
    frame are clear and the translation did not wrap. Samples less than MIN_CLEAR_FRACTION
    clear are not used. `heldout` selects the samples of held-out scenes (True) or the others.
    """

    def __init__(self, patches: Mapping[str, np.ndarray], config: PretrainConfig, heldout: bool):
        check_patches(patches, config, ("frames", "masks", "shifts", "hr", "hr_clear", "scene"))
        self.patches, self.config = patches, config
        in_split = split_scenes(patches["scene"], config.heldout_fraction, config.seed) == heldout
        count, frames = patches["frames"].shape[:2]
        candidates = np.argwhere(np.broadcast_to(in_split[:, None], (count, frames)))  # [n, 2] (patch, frame)
        clear = np.concatenate([self._clear(block).mean(axis=(1, 2))
                                for block in np.array_split(candidates, max(1, len(candidates) // 512))])
        self.index = candidates[clear >= MIN_CLEAR_FRACTION]  # [samples, 2]
        if len(self.index) == 0:
            raise PretrainingError(f"no single frame of {config.dataset_path} is {MIN_CLEAR_FRACTION:.0%} clear "
                                   f"({'held-out' if heldout else 'training'} scenes)")

    def _clear(self, index: np.ndarray) -> np.ndarray:
        """The loss mask `[n, P, P]` bool of the samples `index` `[n, 2]` (patch, frame)."""
        p, t = index[:, 0], index[:, 1]
        height, width = self.patches["masks"].shape[2:]
        inside = unwrapped(self.patches["shifts"][p, t], height, width)
        return np.asarray(self.patches["masks"][p, t]) & np.asarray(self.patches["hr_clear"][p]) & inside

    def _samples(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, mask), each `[n, P, P, 1]` float32 (mask bool), of the samples `index` `[n, 2]`."""
        p, t = index[:, 0], index[:, 1]
        config = self.config
        frames, _ = translate_frames(self.patches["frames"][p, t], self.patches["shifts"][p, t])  # [n, P, P]
        x = domain.normalise(frames, config.mu, config.sigma)
        y = domain.normalise(self.patches["hr"][p], config.mu, config.sigma_rescaled)
        return x[..., None], y[..., None], self._clear(index)[..., None]

    def batch(self, rows: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, ...]:
        """Samples `rows` as network tensors `[n, 1, p, p, 1]` (x, y float32; mask bool),
        random `patch_size` windows when `rng` is given, else the whole patches."""
        x, y, mask = self._samples(self.index[np.sort(rows)])
        if rng is not None:
            corners = random_corners(rng, len(x), x.shape[1], self.config.patch_size)
            x, y, mask = (crop(values, corners, self.config.patch_size) for values in (x, y, mask))
        return x[:, None], y[:, None], mask[:, None]


def sisrnet_dataset(samples: SingleFrames, start_step: int = 0) -> tf.data.Dataset:
    """Endless batches (x, y, mask) `[batch, 1, p, p, 1]` of the training samples, from `start_step`."""
    config = samples.config
    plan = BatchPlan([len(samples.index)], config.batch_size, config.seed)
    size = config.patch_size

    def batch_of_step(step: int) -> tuple[np.ndarray, ...]:
        return samples.batch(plan.rows(step)[1], np.random.default_rng([config.seed, step]))

    shape = [config.batch_size, 1, size, size, 1]
    return step_dataset(batch_of_step, [tf.float32, tf.float32, tf.bool], [shape] * 3, start_step)


# --------------------------------------------------------------------------- RegNet


def normalised_frames(frames: np.ndarray, config: PretrainConfig) -> np.ndarray:
    """`[patches, T, P, P]` DN -> single frames `[patches*T, P, P, 1]` float32 `(v - mu) / sigma`."""
    frames = np.asarray(frames)
    flat = frames.reshape(-1, frames.shape[-2], frames.shape[-1], 1)  # [patches*T, P, P, 1]
    return domain.normalise(flat, config.mu, config.sigma)


def regnet_dataset(frames: np.ndarray, config: PretrainConfig, start_step: int = 0) -> tf.data.Dataset:
    """Endless batches of random `patch_size` windows of single frames `[batch, p, p, 1]`.

    frames: `[N, P, P, 1]` normalised (`normalised_frames`). The planted shifts of each step are
    drawn in the train step from (seed, step).
    """
    plan = BatchPlan([len(frames)], config.batch_size, config.seed)
    size = config.patch_size

    def batch_of_step(step: int) -> tuple[np.ndarray]:
        rows = np.sort(plan.rows(step)[1])
        corners = random_corners(np.random.default_rng([config.seed, step]), len(rows), frames.shape[1], size)
        return (crop(frames[rows], corners, size),)  # float32, as `normalised_frames` gives them

    # one-tensor elements, not 1-tuples: the train step takes the frames themselves
    return step_dataset(batch_of_step, [tf.float32], [[config.batch_size, size, size, 1]], start_step).map(
        lambda x: x)


def read_real_frames(data_dir: str | os.PathLike, size: int = 96, frames_per_scene: int = 4,
                     mu: float = domain.PROBAV_MU, sigma: float = domain.PROBAV_SIGMA) -> tuple[np.ndarray, list[str]]:
    """Central `size` x `size` windows of bicubic-upsampled real PROBA-V LR frames, normalised.

    data_dir: a PROBA-V folder (`train/{NIR,RED}/imgsetNNNN/LR*.png`; QM files not needed).
    Corrupt frames (a pixel > 60000) are dropped; the first `frames_per_scene` others of every
    scene are kept. Returns (frames `[N, size, size, 1]` float32 `(v - mu) / sigma`, names).
    """
    windows, names = [], []
    folders = sorted(Path(data_dir).glob("*/*/imgset*"))
    if not folders:
        raise PretrainingError(f"{data_dir}: no scene folders (expected SPLIT/BAND/imgsetNNNN/LR*.png)")
    for folder in folders:
        scene = probav.read_scene(folder, masks="assume_clear")
        lr, _, kept = preprocessing.drop_corrupt_frames(scene.lr, scene.clear)
        upsampled = preprocessing.upsample_frames(lr[:frames_per_scene])  # [k, 3h, 3w]
        windows.append(center_crop(upsampled[..., None], size))
        names += [f"{scene.band}/{scene.name}/{scene.frame_names[i]}" for i in kept[:frames_per_scene]]
    return domain.normalise(np.concatenate(windows), mu, sigma), names
