"""Pretraining of SISRNet and RegNet (spec section 6; the authors ship only the checkpoints).

**SISRNet** learns single-image super-resolution. A pretraining head `conv_up_8` (1x1x1,
F -> 1) turns SISRNet's features of one bicubic frame into the residual that brings the frame
to the HR image. Normalisation (the same as DeepSUM's): the input is x = (frame - mu) / sigma,
the target y = (HR - mu) / sigma_rescaled, and the prediction, on the target's scale, is

    prediction = (x + conv_up_8(SISRNet(x))) * sigma / sigma_rescaled

i.e. `conv_up_8` predicts (HR - frame) / sigma, in the input's units. That is the authors'
pretraining graph (its `.meta` adds `conv_up_8`'s output to `x`), so their `conv_up_8` is
reused as it is; the factor sigma / sigma_rescaled is DeepSUM's residual scale, so the loss
is the cL2 loss on the sigma_rescaled scale, as in DeepSUM's training. Every 9-frame training
patch gives 9 single-frame samples; each frame is first translated by its registration shift
onto the reference grid (on which the HR patch lies, up to the loss's +-3 pixel search), and
the loss uses HR pixels that are clear in HR and in the registered frame, away from the rows
and columns that the translation wrapped around.

**RegNet** learns to register features. SISRNet is frozen (loaded from a pretraining
checkpoint). From one frame's features, 8 copies are translated by known random integer shifts
(dy, dx) in [-max_shift, max_shift]; with the untranslated features as frame 0 they form the
9-frame stack RegNet sees. Copy t is built so that the model's registration filter with all
its mass at tap `9*(dy+4) + (dx+4)` moves it back onto frame 0 (`libraries.model.register_frames`:
a one-hot filter at that tap gives out[y, x] = in[y + dy, x + dx]), which is the same label the
dataset's registration shifts give. All 9 frames are cut `max_shift` pixels inside the
feature map, so no copy contains wrapped or padded content. Loss: softmax cross-entropy of the
81 logits of each frame against its true tap (the authors' `softmax_cross_entropy_with_logits`).

Checkpoints of both are name-based, in the authors' TF1 layout: the network variables under
their TF1 names (`conv_up_{0..8}/W,b`, `inst_norm_up_{0..7}/gamma,beta`; `Rconv*/W,b`), Adam's
moments as `NAME/Adam` and `NAME/Adam_1`, `beta1_power`, `beta2_power` and `global_step`, in
`model.ckpt-STEP` files with a `checkpoint` state file written last. So the authors'
checkpoints and ours are read by the same code (`libraries.tf1_checkpoint`), and either can
initialise DeepSUM (`load_pretrained_weights`) or continue a pretraining run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf
import tqdm

from libraries import config as config_module
from libraries import fileio, metrics, model
from libraries.config import ConfigError, hyper, other

SISRNET_HEAD = "conv_up_8"  # the pretraining-only output layer of SISRNet
SISRNET_PREFIXES = ("conv_up_", "inst_norm_up_")
REGNET_PREFIXES = ("Rconv",)
MIN_CLEAR_FRACTION = 0.5  # single-frame samples with fewer clear target pixels are skipped
KEEP_CHECKPOINTS = 3
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8  # TF1 AdamOptimizer's default (the authors'); Keras' is 1e-7
PROBAV_SIGMA = 2316.3408  # input scale of the authors' configs (both bands)


class PretrainingError(ValueError):
    """Pretraining cannot go on (bad checkpoint, no data, NaN loss); the message says why."""


# --------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Settings shared by both pretrainings (the original two-section JSON layout)."""

    lr: float = hyper(doc="Adam learning rate")
    batch_size: int = hyper(doc="frames (SISRNet) or 9-frame stacks (RegNet) per step")
    steps: int = other(doc="total training steps; a resumed run stops there too")
    skip_step: int = other(doc="steps between checkpoints (and RegNet's held-out evaluation)")
    dataset_path: Path = other(doc="folder written by `python -m libraries prepare`")
    spectral_band: str = other(doc="NIR or RED")
    mu: float = other(doc="input and target mean")
    sigma: float = other(doc="input scale: x = (v - mu) / sigma")
    sigma_rescaled: float = other(doc="target scale: y = (v - mu) / sigma_rescaled")

    patch_size: int = other(96, "side of the training windows cut (at random) from the prepared patches")
    border: int = other(3, "largest shift searched by the cL2 loss (3 -> 7x7 offsets)")
    n_chunks: int = other(1, "training chunks of the prepared data set that are read")
    checkpoint_dir: Path = other(Path("pretraining_checkpoints/pretraining"), "checkpoints and TensorBoard logs")
    init_checkpoint: Path | None = other(None, "start from this checkpoint (ours or the authors') when "
                                               "checkpoint_dir holds none: weights, Adam moments and step")
    seed: int = other(42, "seed of every random choice (initialisation, shuffles, crops, shifts)")
    n_features: int = other(64, "feature width F of SISRNet and RegNet")

    def __post_init__(self) -> None:
        if self.spectral_band not in ("NIR", "RED"):
            raise ConfigError(f"spectral_band: expected 'NIR' or 'RED', got {self.spectral_band!r}")
        for name in ("lr", "sigma", "sigma_rescaled"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        for name in ("batch_size", "steps", "skip_step", "n_chunks", "n_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.border < 0 or self.patch_size <= 2 * self.border:
            raise ConfigError(f"patch_size: expected more than 2*border = {2 * self.border}, got {self.patch_size}")

    def replace(self, **changes: Any) -> "PretrainConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class SISRNetPretrainConfig(PretrainConfig):
    """`config_files/SISRNet_pretrain_config.json` (authors: lr 5e-5, batch 16)."""


@dataclasses.dataclass(frozen=True)
class RegNetPretrainConfig(PretrainConfig):
    """`config_files/RegNet_pretrain_config.json` (authors: lr 1e-3, batch 16)."""

    SISRNet_pretrain_dir: Path = other(Path("pretraining_checkpoints/SISRNet"),
                                       "frozen SISRNet: a pretraining checkpoint (ours or the authors')")
    max_shift: int = other(4, "planted shifts are integers in [-max_shift, max_shift] on both axes")
    filter_size: int = other(9, "side of RegNet's registration filters")
    heldout_fraction: float = other(0.1, "share of scenes kept out of training to measure tap accuracy")
    eval_frames: int = other(256, "held-out frames used per evaluation (at most)")
    eval_size: int = other(0, "side of the central held-out windows whose tap accuracy is measured; 0: the "
                              "whole prepared patches (the windows RegNet sees inside DeepSUM's training)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.filter_size % 2 != 1:
            raise ConfigError(f"filter_size: expected an odd number, got {self.filter_size}")
        if not 0 <= self.max_shift <= self.filter_size // 2:
            raise ConfigError(f"max_shift: expected 0..{self.filter_size // 2} (filter_size // 2), got {self.max_shift}")
        if self.patch_size <= 2 * self.max_shift + 2:
            raise ConfigError(f"patch_size: expected more than 2*max_shift + 2, got {self.patch_size}")
        if self.eval_size and self.eval_size <= 2 * self.max_shift + 2:
            raise ConfigError(f"eval_size: expected 0 or more than 2*max_shift + 2, got {self.eval_size}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction: expected a number in (0, 1), got {self.heldout_fraction}")


# --------------------------------------------------------------------------- networks


class SingleFrameSR(tf.Module):
    """SISRNet plus its pretraining head `conv_up_8`: one bicubic frame -> one HR estimate.

    `net(x)`: x `[batch, frames, H, W, 1]` `(v - mu) / sigma` -> `[batch, frames, H, W, 1]` on the
    `(v - mu) / sigma_rescaled` scale (see the module docstring).
    """

    def __init__(self, n_features: int, residual_scale: float, seed: int):
        super().__init__(name="SingleFrameSR")
        self.sisrnet = model.SISRNet(n_features, channels=1, seed=seed)
        self.head = model.Conv(SISRNET_HEAD, [1, 1, 1, n_features, 1], seed)
        self.residual_scale = float(residual_scale)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        features = self.sisrnet(x)  # [b, T, H, W, F]
        # 1x1x1 convolution = a matrix product over the feature axis
        residual = tf.tensordot(features, self.head.W[0, 0, 0], axes=1) + self.head.b  # [b, T, H, W, 1]
        return (x + residual) * self.residual_scale

    def tf1_variables(self) -> dict[str, tf.Variable]:
        return dict(sorted({**self.sisrnet.tf1_variables(), **self.head.tf1_variables()}.items()))


def single_frame_network(config: PretrainConfig) -> SingleFrameSR:
    """A freshly initialised (seeded) SISRNet + `conv_up_8` for `config`."""
    return SingleFrameSR(config.n_features, config.sigma / config.sigma_rescaled, config.seed)


def _is_sisrnet_name(name: str) -> bool:
    return name.startswith(SISRNET_PREFIXES) and not name.startswith(SISRNET_HEAD)


def _is_regnet_name(name: str) -> bool:
    return name.startswith(REGNET_PREFIXES)


# --------------------------------------------------------------------------- shifts


def translate_frames(frames: tf.Tensor, shifts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Move each frame onto the reference grid: `out[y, x] = frame[y + dy, x + dx]`.

    frames: `[T, H, W]`; shifts: `[T, 2]` integer (dy, dx), the dataset's registration shifts
    (`libraries.preprocessing.translate_masks` moves masks the same way, also circularly).
    Returns (translated `[T, H, W]`, inside `[T, H, W]` bool: false on the rows and columns
    that wrapped around from the other side).
    """
    shape = tf.shape(frames)
    height, width = shape[1], shape[2]
    shifts = tf.cast(shifts, tf.int32)
    rows = tf.range(height)[None, :] + shifts[:, :1]  # [T, H]
    cols = tf.range(width)[None, :] + shifts[:, 1:]  # [T, W]
    moved = tf.gather(frames, tf.math.floormod(rows, height), axis=1, batch_dims=1)  # [T, H, W]
    moved = tf.gather(moved, tf.math.floormod(cols, width), axis=2, batch_dims=1)  # [T, H, W]
    inside_rows = (rows >= 0) & (rows < height)  # [T, H]
    inside_cols = (cols >= 0) & (cols < width)  # [T, W]
    return moved, inside_rows[:, :, None] & inside_cols[:, None, :]


def tap_index(shifts: tf.Tensor, filter_size: int = 9) -> tf.Tensor:
    """Flat filter tap of each shift: `filter_size * (dy + r) + (dx + r)`, r = filter_size // 2.

    shifts: `[..., 2]` integer (dy, dx). Returns int32 `[...]`.
    """
    radius = filter_size // 2
    shifts = tf.cast(shifts, tf.int32)
    return filter_size * (shifts[..., 0] + radius) + (shifts[..., 1] + radius)


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


# --------------------------------------------------------------------------- data


def read_training_patches(config: PretrainConfig) -> dict[str, np.ndarray]:
    """The first `n_chunks` training chunks of `config.dataset_path`, concatenated.

    Returns the arrays of `libraries.dataset.load_training_chunk` (frames [N, 9, P, P] float32 DN,
    masks [N, 9, P, P] bool registered, shifts [N, 9, 2] int32, hr [N, P, P], hr_clear, scene [N]).
    """
    from libraries import dataset  # imported here: the CLI's --help of this module stays light

    chunks = [dataset.load_training_chunk(config.dataset_path, config.spectral_band, chunk)
              for chunk in range(config.n_chunks)]
    keys = ("frames", "masks", "shifts", "hr", "hr_clear", "scene")
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in keys}


def _check_patches(patches: Mapping[str, np.ndarray], config: PretrainConfig, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in patches:
            raise PretrainingError(f"training patches: missing array {key!r} (expected {keys})")
    frames = patches["frames"]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise PretrainingError(f"training patches: expected frames [patches, frames, P, P], got {frames.shape}")
    if min(frames.shape[2:]) < config.patch_size:
        raise PretrainingError(f"patch_size {config.patch_size} is larger than the prepared patches "
                               f"{frames.shape[2]}x{frames.shape[3]} of {config.dataset_path}")


def _random_crop(images: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """One random `size` x `size` window of `[T, H, W, C]`, the same for every T and C."""
    shape = tf.shape(images)
    return tf.image.stateless_random_crop(images, tf.stack([shape[0], size, size, shape[3]]), seed)


def single_frame_dataset(patches: Mapping[str, np.ndarray], config: PretrainConfig) -> tf.data.Dataset:
    """Endless shuffled batches of registered single frames for SISRNet pretraining.

    Yields (x, y, mask), each `[batch, 1, P, P, 1]` (P = config.patch_size): x the frame
    `(v - mu) / sigma` translated onto the reference grid, y the HR patch `(v - mu) / sigma_rescaled`,
    mask true where HR and the registered frame are clear and the translation did not wrap.
    """
    _check_patches(patches, config, ("frames", "masks", "shifts", "hr", "hr_clear"))
    frames_per_patch = patches["frames"].shape[1]

    def split_frames(patch: dict[str, tf.Tensor], seed: tf.Tensor):
        frames, inside = translate_frames(patch["frames"], patch["shifts"])  # [T, P, P]
        x = (frames - config.mu) / config.sigma
        y = tf.broadcast_to((patch["hr"] - config.mu) / config.sigma_rescaled, tf.shape(x))  # [T, P, P]
        clear = patch["masks"] & patch["hr_clear"][None] & inside  # [T, P, P]
        stacked = tf.stack([x, y, tf.cast(clear, tf.float32)], axis=-1)  # [T, P, P, 3]
        stacked = _random_crop(stacked, config.patch_size, seed)  # [T, p, p, 3]
        return stacked[:, None, :, :, :1], stacked[:, None, :, :, 1:2], stacked[:, None, :, :, 2:] > 0.5

    def clear_enough(x, y, mask):
        return tf.reduce_mean(tf.cast(mask, tf.float32)) >= MIN_CLEAR_FRACTION

    arrays = {key: patches[key] for key in ("frames", "masks", "shifts", "hr", "hr_clear")}
    patch_stream = (tf.data.Dataset.from_tensor_slices(arrays).repeat()
                    .shuffle(min(len(patches["frames"]), 4096), seed=config.seed))
    crop_seeds = tf.data.Dataset.random(seed=config.seed).batch(2)  # [2] stateless seed per patch
    return (tf.data.Dataset.zip((patch_stream, crop_seeds))
            .map(split_frames, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .unbatch()  # one element per frame: [1, p, p, 1]
            .filter(clear_enough)
            .shuffle(4 * frames_per_patch * config.batch_size, seed=config.seed + 1)
            .batch(config.batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def split_scenes(scene: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the patches of held-out scenes: a seeded `fraction` of the scene ids.

    scene: `[patches]` scene id of each patch. At least one scene is held out and one kept.
    """
    ids = np.unique(scene)
    if len(ids) < 2:
        raise PretrainingError(f"held-out accuracy needs patches of at least 2 scenes, got {len(ids)}")
    count = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    heldout = np.random.default_rng(seed).choice(ids, size=count, replace=False)
    return np.isin(scene, heldout)


def normalised_frames(frames: np.ndarray, config: PretrainConfig) -> np.ndarray:
    """`[patches, T, P, P]` DN -> single frames `[patches*T, P, P, 1]` float32 `(v - mu) / sigma`."""
    frames = np.asarray(frames, dtype=np.float32)
    flat = frames.reshape(-1, frames.shape[-2], frames.shape[-1], 1)  # [patches*T, P, P, 1]
    return (flat - np.float32(config.mu)) / np.float32(config.sigma)


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """The central `size` x `size` window of `[N, H, W, C]`."""
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return images[:, top:top + size, left:left + size]


def frame_dataset(frames: np.ndarray, config: PretrainConfig) -> tf.data.Dataset:
    """Endless shuffled batches of random `patch_size` windows of single frames `[batch, p, p, 1]`."""
    crop_seeds = tf.data.Dataset.random(seed=config.seed).batch(2)  # [2] stateless seed per frame
    frame_stream = (tf.data.Dataset.from_tensor_slices(frames).repeat()
                    .shuffle(min(len(frames), 8192), seed=config.seed))

    def crop(frame, seed):
        return _random_crop(frame[None], config.patch_size, seed)[0]  # [p, p, 1]

    return (tf.data.Dataset.zip((frame_stream, crop_seeds))
            .map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(config.batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


# --------------------------------------------------------------------------- checkpoints


def checkpoint_prefix(path: str | os.PathLike) -> str:
    """The checkpoint a path names: a folder's latest (its `checkpoint` file) or a prefix as is."""
    path = Path(path)
    if path.is_dir():
        latest = tf.train.latest_checkpoint(str(path))
        if latest is None:
            raise PretrainingError(f"{path}: no checkpoint in this folder (expected a 'checkpoint' state "
                                   f"file naming model.ckpt-STEP files)")
        return latest
    if Path(f"{path}.index").is_file():
        return str(path)
    raise PretrainingError(f"{path}: not a checkpoint folder nor a checkpoint prefix (no {path}.index)")


def _adam(learning_rate: float, variables: Mapping[str, tf.Variable]) -> tf.keras.optimizers.Adam:
    """Adam with TF1's defaults, built for `variables` (in their order)."""
    optimizer = tf.keras.optimizers.Adam(learning_rate, beta_1=ADAM_BETAS[0], beta_2=ADAM_BETAS[1],
                                         epsilon=ADAM_EPSILON)
    optimizer.build(list(variables.values()))
    return optimizer


def _adam_slots(optimizer: tf.keras.optimizers.Adam, variables: Mapping[str, tf.Variable]) -> dict[str, Any]:
    """Adam's moments under their TF1 names: `NAME/Adam` (first), `NAME/Adam_1` (second).

    Keras keeps them in lists aligned with the variables given to `build` (see `_adam`)."""
    slots: dict[str, Any] = {}
    for (name, _), first, second in zip(variables.items(), optimizer._momentums, optimizer._velocities):
        slots[f"{name}/Adam"], slots[f"{name}/Adam_1"] = first, second
    return slots


def save_checkpoint(folder: str | os.PathLike, variables: Mapping[str, tf.Variable],
                    optimizer: tf.keras.optimizers.Adam, config: Any = None) -> Path:
    """Write `model.ckpt-STEP` (STEP = optimizer.iterations) in the authors' TF1 layout.

    Holds `variables` under their names, Adam's moments, `beta1_power`, `beta2_power` and
    `global_step`. The folder's `checkpoint` state file is replaced last (atomically), so a run
    stopped while writing still resumes from the previous checkpoint; older ones beyond
    KEEP_CHECKPOINTS are deleted. The resolved config goes to `config.json` beside it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    step = int(optimizer.iterations)
    tensors = {**variables, **_adam_slots(optimizer, variables)}
    tensors = {name: tf.convert_to_tensor(value) for name, value in tensors.items()}
    tensors["beta1_power"] = tf.constant(ADAM_BETAS[0] ** (step + 1), tf.float32)  # as TF1 after `step` updates
    tensors["beta2_power"] = tf.constant(ADAM_BETAS[1] ** (step + 1), tf.float32)
    tensors["global_step"] = tf.constant(step, tf.int64)
    prefix = folder / f"model.ckpt-{step}"
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[name] for name in names])
    if config is not None:
        fileio.save_json(folder / "config.json", config_module.to_json(config))
    state = tf.train.get_checkpoint_state(str(folder))
    kept = [Path(p).name for p in (state.all_model_checkpoint_paths if state else [])]
    kept = [name for name in kept if name != prefix.name] + [prefix.name]
    lines = [f'model_checkpoint_path: "{prefix.name}"'] + [f'all_model_checkpoint_paths: "{name}"'
                                                           for name in kept[-KEEP_CHECKPOINTS:]]
    fileio.save_bytes(folder / "checkpoint", ("\n".join(lines) + "\n").encode())
    for name in kept[:-KEEP_CHECKPOINTS]:
        for file in folder.glob(f"{name}.*"):
            file.unlink()
    return prefix


def _assign_from_checkpoint(reader: Any, values: Mapping[str, Any], source: str) -> list[str]:
    """Assign every entry of `values` present in the checkpoint; check shapes. Returns the names."""
    shapes = reader.get_variable_to_shape_map()
    loaded = []
    for name, variable in values.items():
        if name not in shapes:
            continue
        if list(shapes[name]) != list(variable.shape):
            raise PretrainingError(f"{source}: {name} has shape {shapes[name]}, expected {list(variable.shape)} "
                                   f"(a checkpoint of another n_features?)")
        variable.assign(reader.get_tensor(name))
        loaded.append(name)
    return loaded


def load_network(variables: Mapping[str, tf.Variable], path: str | os.PathLike) -> list[str]:
    """Load network `variables` (TF1 names) from a checkpoint folder or prefix, ours or the authors'.

    Every variable must be in the checkpoint (extra entries, e.g. Adam's, are ignored).
    """
    from libraries import tf1_checkpoint

    prefix = checkpoint_prefix(path)
    loaded = tf1_checkpoint.load_tf1_variables(dict(variables), prefix)
    missing = sorted(set(variables) - set(loaded))
    if missing:
        raise PretrainingError(f"{prefix}: missing {len(missing)} of the {len(variables)} variables needed, "
                               f"e.g. {missing[:3]} (a checkpoint of another sub-network?)")
    return loaded


def restore_checkpoint(path: str | os.PathLike, variables: Mapping[str, tf.Variable],
                       optimizer: tf.keras.optimizers.Adam) -> int:
    """Continue from a pretraining checkpoint (ours or the authors'): weights, Adam's moments when
    present, and the step (`global_step`). Returns the step."""
    prefix = checkpoint_prefix(path)
    load_network(variables, prefix)
    reader = tf.train.load_checkpoint(prefix)
    _assign_from_checkpoint(reader, _adam_slots(optimizer, variables), prefix)
    shapes = reader.get_variable_to_shape_map()
    step = int(reader.get_tensor("global_step")) if "global_step" in shapes else 0
    optimizer.iterations.assign(step)
    return step


def load_pretrained_weights(deepsum: model.DeepSUM, sisrnet_dir: str | os.PathLike | None,
                            regnet_dir: str | os.PathLike | None) -> dict[str, list[str]]:
    """Initialise DeepSUM's SISRNet and RegNet from pretraining checkpoints (ours or the authors').

    Either directory may be None (that sub-network keeps its weights). Returns the TF1 names
    loaded per sub-network, e.g. `{"sisrnet": [...16 names], "regnet": [...10 names]}`.
    """
    loaded: dict[str, list[str]] = {}
    for part, folder, network in (("sisrnet", sisrnet_dir, deepsum.sisrnet), ("regnet", regnet_dir, deepsum.regnet)):
        if folder is not None:
            loaded[part] = list(load_network(network.tf1_variables(), folder))
    return loaded


# --------------------------------------------------------------------------- the training loop


def _record(history: dict[str, list], values: Mapping[str, float], step: int, prefix: str = "") -> None:
    """Append `values` to the history and write them to the default TensorBoard writer."""
    from libraries.training import summary_scalar  # TensorBoard records without the tensorboard package

    history.setdefault(f"{prefix}step", []).append(step)
    tf.summary.experimental.set_step(step)
    for name, value in values.items():
        history.setdefault(name, []).append(value)
        summary_scalar(name, value)


def _run(config: PretrainConfig, title: str, variables: Mapping[str, tf.Variable],
         optimizer: tf.keras.optimizers.Adam, train_step: Callable[..., Mapping[str, tf.Tensor]],
         batches: tf.data.Dataset, steps: int | None,
         evaluate: Callable[[], Mapping[str, float]] | None = None) -> dict[str, list]:
    """Resume (or start from `init_checkpoint`), train to `steps`, log and checkpoint.

    Returns the history: `step` and the training metrics per step; `eval_step` and the
    evaluation metrics every `skip_step` steps and at the end.
    """
    folder = Path(config.checkpoint_dir)
    latest = tf.train.latest_checkpoint(str(folder)) if folder.is_dir() else None
    source = latest or config.init_checkpoint
    start = restore_checkpoint(source, variables, optimizer) if source is not None else 0
    total = config.steps if steps is None else steps
    history: dict[str, list] = {"step": []}
    writer = tf.summary.create_file_writer(str(folder / "logs"))
    batch_iterator: Iterator = iter(batches)
    with writer.as_default(), tqdm.tqdm(total=total, initial=min(start, total), desc=title, unit="step") as bar:
        for step in range(start, total):
            values = {name: float(value) for name, value in train_step(next(batch_iterator)).items()}
            if not all(math.isfinite(value) for value in values.values()):
                raise PretrainingError(f"{title} step {step}: non-finite training values {values} "
                                       f"(lower lr={config.lr}, or check the data in {config.dataset_path})")
            _record(history, values, step + 1)
            bar.update(1)
            bar.set_postfix(values)
            if (step + 1) % config.skip_step == 0 or step + 1 == total:
                if evaluate is not None:
                    _record(history, evaluate(), step + 1, prefix="eval_")
                save_checkpoint(folder, variables, optimizer, config)
    writer.flush()
    return history


# --------------------------------------------------------------------------- SISRNet


def pretrain_sisrnet(config: SISRNetPretrainConfig, steps: int | None = None,
                     patches: Mapping[str, np.ndarray] | None = None) -> dict[str, list]:
    """Pretrain SISRNet + `conv_up_8` on single registered frames with the cL2 loss.

    config: a `SISRNetPretrainConfig`; steps: total steps (None: `config.steps`); patches: the
    arrays of `read_training_patches` (None: read from `config.dataset_path`).
    Checkpoints (TF1 names, see the module docstring) and TensorBoard logs go to
    `config.checkpoint_dir`; a run resumes from its latest checkpoint. Returns the history with
    `loss` and `bicubic_loss` (the loss of the bicubic frame itself) per step.
    """
    tf.keras.utils.set_random_seed(config.seed)
    patches = read_training_patches(config) if patches is None else patches
    network = single_frame_network(config)
    variables = network.tf1_variables()
    trainable = list(variables.values())
    optimizer = _adam(config.lr, variables)

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        x, y, mask = batch  # [b, 1, p, p, 1] each
        with tf.GradientTape() as tape:
            loss = metrics.cl2_loss(y, network(x), mask, config.border)
        optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
        bicubic = metrics.cl2_loss(y, x * network.residual_scale, mask, config.border)
        return {"loss": loss, "bicubic_loss": bicubic}

    return _run(config, "SISRNet pretraining", variables, optimizer, train_step,
                single_frame_dataset(patches, config), steps)


# --------------------------------------------------------------------------- RegNet


def planted_shift_logits(regnet: model.RegNet, features: tf.Tensor, shifts: tf.Tensor, max_shift: int) -> tf.Tensor:
    """RegNet's logits for one frame's features and its copies moved by `shifts`.

    features: `[batch, H, W, F]`; shifts: `[batch, T-1, 2]`. Returns `[batch, T-1, k*k]`.
    """
    return regnet(planted_shift_stack(features, shifts, max_shift))[1]


@tf.function(reduce_retracing=True)
def _predicted_taps(sisrnet: model.SISRNet, regnet: model.RegNet, x: tf.Tensor, shifts: tf.Tensor,
                    max_shift: int) -> tf.Tensor:
    """Arg-max tap `[b, T-1]` of RegNet for frames x `[b, H, W, 1]` and planted `shifts`."""
    features = sisrnet(x[:, None])[:, 0]  # [b, H, W, F]
    return tf.argmax(planted_shift_logits(regnet, features, shifts, max_shift), axis=-1, output_type=tf.int32)


def evaluate_regnet_accuracy(sisrnet: model.SISRNet, regnet: model.RegNet, frames: np.ndarray,
                             max_shift: int = 4, seed: int = 0, batch_size: int = 8,
                             frames_per_stack: int = 9, progress: bool = False) -> dict[str, float]:
    """Tap accuracy of RegNet on shifts planted in the SISRNet features of `frames`.

    frames: `[N, H, W, 1]` normalised `(v - mu) / sigma`. Each frame gets `frames_per_stack - 1`
    copies moved by seeded random shifts in [-max_shift, max_shift]. Returns `accuracy` (share
    of copies whose arg-max tap is the true shift's), `opposite_sign_accuracy` (arg-max at the
    tap of minus the shift: a registration convention mismatch shows here),
    `within_one_pixel` (arg-max at most one pixel away on both axes) and `shifts` (count).
    """
    filter_size = regnet.filter_size
    counts = np.zeros(3)
    total = 0
    starts = range(0, len(frames), batch_size)
    for index, start in enumerate(tqdm.tqdm(starts, desc="RegNet accuracy", disable=not progress)):
        x = tf.convert_to_tensor(frames[start:start + batch_size], tf.float32)
        shifts = random_shifts(int(x.shape[0]), frames_per_stack - 1, max_shift, tf.constant([seed, index]))
        taps = _predicted_taps(sisrnet, regnet, x, shifts, max_shift)  # [b, T-1]
        radius = filter_size // 2
        predicted = tf.stack([taps // filter_size - radius, taps % filter_size - radius], axis=-1)  # [b, T-1, 2]
        counts += [float(tf.reduce_sum(tf.cast(taps == tap_index(shifts, filter_size), tf.float32))),
                   float(tf.reduce_sum(tf.cast(taps == tap_index(-shifts, filter_size), tf.float32))),
                   float(tf.reduce_sum(tf.cast(tf.reduce_all(tf.abs(predicted - shifts) <= 1, axis=-1), tf.float32)))]
        total += int(np.prod(taps.shape))
    if total == 0:
        raise PretrainingError("evaluate_regnet_accuracy: no frames given")
    accuracy, opposite, near = counts / total
    return {"accuracy": accuracy, "opposite_sign_accuracy": opposite, "within_one_pixel": near, "shifts": total}


def frozen_sisrnet(config: RegNetPretrainConfig) -> model.SISRNet:
    """SISRNet with the weights of `config.SISRNet_pretrain_dir` (ours or the authors')."""
    sisrnet = model.SISRNet(config.n_features, channels=1, seed=config.seed)
    load_network(sisrnet.tf1_variables(), config.SISRNet_pretrain_dir)
    return sisrnet


def pretrain_regnet(config: RegNetPretrainConfig, steps: int | None = None,
                    patches: Mapping[str, np.ndarray] | None = None) -> dict[str, list]:
    """Pretrain RegNet on shifts planted in the features of a frozen SISRNet.

    config: a `RegNetPretrainConfig`; steps: total steps (None: `config.steps`); patches: as in
    `pretrain_sisrnet` (needs `frames` and `scene`). The scenes of `heldout_fraction` are kept
    out of training; every `skip_step` steps the tap accuracy on (at most `eval_frames` of)
    their frames is measured, on whole prepared patches (or their central `eval_size` windows):
    RegNet averages its taps over the window, so its accuracy grows with the window (measured on
    synthetic 48-px patches after 300 steps: 0.46, 0.67, 0.76, 0.77 at 24, 32, 40, 48 px), and
    inside DeepSUM it sees whole training patches. Training uses random `patch_size` crops.
    Returns the history: `loss`, `accuracy` (training batch) per step and `heldout_accuracy`,
    `heldout_opposite_sign_accuracy` per evaluation.
    """
    tf.keras.utils.set_random_seed(config.seed)
    patches = read_training_patches(config) if patches is None else patches
    _check_patches(patches, config, ("frames", "scene"))
    heldout = split_scenes(patches["scene"], config.heldout_fraction, config.seed)
    training_frames = normalised_frames(patches["frames"][~heldout], config)  # [n, P, P, 1]
    eval_frames = normalised_frames(patches["frames"][heldout], config)
    chosen = np.random.default_rng(config.seed).permutation(len(eval_frames))[:config.eval_frames]
    eval_frames = eval_frames[np.sort(chosen)]
    if config.eval_size:
        eval_frames = center_crop(eval_frames, config.eval_size)
    frames_per_stack = int(patches["frames"].shape[1])

    sisrnet = frozen_sisrnet(config)
    regnet = model.RegNet(config.n_features, config.filter_size, seed=config.seed)
    variables = regnet.tf1_variables()
    trainable = list(variables.values())
    optimizer = _adam(config.lr, variables)

    @tf.function(reduce_retracing=True)
    def train_step(x):  # x: [b, p, p, 1]
        features = sisrnet(x[:, None])[:, 0]  # [b, p, p, F], frozen: outside the tape
        seed = tf.stack([tf.constant(config.seed, tf.int64), tf.convert_to_tensor(optimizer.iterations, tf.int64)])
        shifts = random_shifts(config.batch_size, frames_per_stack - 1, config.max_shift, seed)
        labels = tap_index(shifts, config.filter_size)  # [b, T-1]
        with tf.GradientTape() as tape:
            logits = planted_shift_logits(regnet, features, shifts, config.max_shift)  # [b, T-1, k*k]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
        correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        return {"loss": loss, "accuracy": tf.reduce_mean(tf.cast(correct, tf.float32))}

    def evaluate() -> dict[str, float]:
        result = evaluate_regnet_accuracy(sisrnet, regnet, eval_frames, config.max_shift, config.seed,
                                          config.batch_size, frames_per_stack)
        return {"heldout_accuracy": result["accuracy"],
                "heldout_opposite_sign_accuracy": result["opposite_sign_accuracy"]}

    return _run(config, "RegNet pretraining", variables, optimizer, train_step,
                frame_dataset(training_frames, config), steps, evaluate)


# --------------------------------------------------------------------------- real frames


def read_real_frames(data_dir: str | os.PathLike, size: int = 96, frames_per_scene: int = 4,
                     mu: float = metrics.PROBAV_MU, sigma: float = PROBAV_SIGMA) -> tuple[np.ndarray, list[str]]:
    """Central `size` x `size` windows of bicubic-upsampled real PROBA-V LR frames, normalised.

    data_dir: a PROBA-V folder (`train/{NIR,RED}/imgsetNNNN/LR*.png`; QM files not needed).
    Corrupt frames (a pixel > 60000) are dropped; the first `frames_per_scene` others of every
    scene are kept. Returns (frames `[N, size, size, 1]` float32 `(v - mu) / sigma`, names).
    """
    from libraries import preprocessing, probav

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
    frames = np.concatenate(windows).astype(np.float32)
    return (frames - np.float32(mu)) / np.float32(sigma), names


def real_frame_accuracy(frames: np.ndarray, sisrnet_dir: str | os.PathLike, regnet_dir: str | os.PathLike,
                        n_features: int = 64, max_shift: int = 4, seed: int = 0,
                        batch_size: int = 4) -> dict[str, float]:
    """Tap accuracy (see `evaluate_regnet_accuracy`) of a SISRNet + RegNet checkpoint pair on
    shifts planted in the features of `frames` `[N, H, W, 1]` (e.g. from `read_real_frames`)."""
    sisrnet = model.SISRNet(n_features, channels=1)
    regnet = model.RegNet(n_features)
    load_network(sisrnet.tf1_variables(), sisrnet_dir)
    load_network(regnet.tf1_variables(), regnet_dir)
    return evaluate_regnet_accuracy(sisrnet, regnet, frames, max_shift, seed, batch_size, progress=True)


# --------------------------------------------------------------------------- command line


def _add_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--config", default=default, help=f"JSON config (default {default})")
    parser.add_argument("--steps", type=int, default=None, help="total training steps (default: the config's)")


def add_pretrain_sisrnet_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser, "config_files/SISRNet_pretrain_config.json")


def add_pretrain_regnet_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser, "config_files/RegNet_pretrain_config.json")


def run_pretrain_sisrnet(args: argparse.Namespace) -> int:
    config = config_module.load_config(args.config, kind=SISRNetPretrainConfig)
    history = pretrain_sisrnet(config, steps=args.steps)
    if history["loss"]:
        print(f"step {history['step'][-1]}: cL2 loss {history['loss'][-1]:.5f} "
              f"(bicubic {history['bicubic_loss'][-1]:.5f}); checkpoints in {config.checkpoint_dir}")
    return 0


def run_pretrain_regnet(args: argparse.Namespace) -> int:
    config = config_module.load_config(args.config, kind=RegNetPretrainConfig)
    history = pretrain_regnet(config, steps=args.steps)
    if history.get("heldout_accuracy"):
        print(f"step {history['eval_step'][-1]}: held-out tap accuracy {history['heldout_accuracy'][-1]:.3f}; "
              f"checkpoints in {config.checkpoint_dir}")
    return 0


def plot_history(history: Mapping[str, list], keys: tuple[str, ...], title: str = "") -> Any:
    """A matplotlib figure of history curves: training `keys` per step, `eval_` ones per evaluation."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    for key in keys:
        steps = history["eval_step"] if key.startswith("heldout") else history["step"]
        axis.plot(steps, history[key], marker="o" if key.startswith("heldout") else None, label=key)
    axis.set_xlabel("step")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    return figure
