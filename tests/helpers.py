"""Helpers shared by several test modules: independent oracles in plain NumPy, a tiny prepared
data set and the DeepSUM config that trains on it, and readers of what a training run wrote."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from libraries import config as config_module
from libraries import dataset, fileio, synthetic

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SKIP_STEP = 3


def fill_source_frame(masks: np.ndarray) -> np.ndarray:
    """For every frame and pixel, the index of the frame whose value the fill puts there.

    The rule of the original: frame t keeps its own value where it is clear; where it is not,
    it takes the value of the lowest-index frame that is clear at that pixel; where no frame
    is clear it keeps its own value.

    masks: `[batch, frames, height, width, 1]`, true (or nonzero) = clear.
    Returns int32 `[batch, frames, height, width, 1]`.
    """
    clear = np.asarray(masks).astype(bool)
    if clear.ndim != 5:
        raise ValueError(f"masks: expected [batch, frames, height, width, 1], got shape {clear.shape}")
    frames = clear.shape[1]
    own = np.arange(frames, dtype=np.int32).reshape(1, frames, 1, 1, 1)
    # argmax over frames is the lowest clear index; a cloudy frame t cannot be its own answer
    first_clear = np.argmax(clear, axis=1, keepdims=True).astype(np.int32)  # [b,1,H,W,1]
    any_clear = clear.any(axis=1, keepdims=True)
    return np.where(clear | ~any_clear, own, first_clear)


def fill_coefficients(masks: np.ndarray) -> np.ndarray:
    """The original's 0/1 fill weights: `[batch, t, s, height, width, 1]` bool, true where output
    frame t takes frame s (exactly one true per batch, t and pixel).

    masks: `[batch, frames, height, width, 1]`, true (or nonzero) = clear.
    """
    source = fill_source_frame(masks)  # [b,T,H,W,1]
    frames = source.shape[1]
    s = np.arange(frames).reshape(1, 1, frames, 1, 1, 1)
    return source[:, :, None] == s  # [b,T,1,H,W,1] vs [1,1,T,1,1,1] -> [b,T,T,H,W,1]


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative L2 error ||actual - expected|| / ||expected|| (float64)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def prepare_tiny_dataset(folder: Path) -> Path:
    """A prepared NIR data set: 2 chunks of 12 patches of 48x48, 2 validation scenes of 96x96."""
    synthetic.write_dataset(folder / "probav", seed=0, n_scenes=6, n_test_scenes=1, lr_size=32, progress=False)
    dataset.prepare(folder / "probav", folder / "prepared", bands=("NIR",), n_chunks=2, patches_per_scene=3,
                    patch_size=48, processes=1, progress=False)
    return folder / "prepared"


def tiny_config(folder: Path, dataset_path: Path, **changes) -> config_module.DeepSUMConfig:
    """The NIR config shrunk to the tiny preset; no pretraining checkpoints (random start)."""
    values = dict(n_features=8, patch_size_HR=(48, 48), patch_size_LR=(16, 16), batch_size=2, n_chunks=2,
                  lr=1e-3, skip_step=SKIP_STEP, dataset_path=dataset_path, checkpoint_dir=folder / "checkpoints",
                  SISRNet_pretrain_dir=folder / "no_sisrnet", RegNet_pretrain_dir=folder / "no_regnet",
                  validation_images=1)
    values.update(changes)
    return config_module.default_config(**values)


def write_config(config: config_module.DeepSUMConfig, path: Path) -> Path:
    fileio.save_json(path, config_module.to_json(config))
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPOSITORY_ROOT))
    env.pop("TF_CONFIG", None)
    return env


def logged_losses(checkpoint_dir: Path) -> dict[int, float]:
    """The training loss per step from the TensorBoard event files of a run."""
    losses = {}
    for file in sorted((checkpoint_dir / "logs" / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                if value.tag == "loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


def checkpoint_tensors(path: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key, dtype in reader.get_variable_to_dtype_map().items()
            if dtype != tf.string and "save_counter" not in key}
