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
# Biases whose gradient is zero in exact arithmetic: InstanceNorm removes a per-channel
# constant from its input (NORMALISED_BIASES, for any loss), and cL2's brightness correction a
# constant output offset (conv_fuse_4, in training). Their gradient is round-off, on which no two
# summation orders agree, and which Adam's first step (about lr * sign(g)) turns into lr-sized
# updates.
NORMALISED_BIASES = tuple(f"conv_up_{k}/b" for k in range(8)) + tuple(f"conv_fuse_{k}/b" for k in range(4))
ROUND_OFF_GRADIENT = NORMALISED_BIASES + ("conv_fuse_4/b",)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative L2 error ||actual - expected|| / ||expected|| (float64)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def prepare_tiny_dataset(folder: Path, seed: int = 0, n_scenes: int = 6, lr_size: int = 32, n_chunks: int = 2,
                         patches_per_scene: int = 3, patch_size: int = 48) -> Path:
    """A synthetic NIR set (one test scene) in folder/probav, prepared into folder/prepared; by
    default 2 chunks of 12 patches of 48x48 and 2 validation scenes of 96x96."""
    synthetic.write_dataset(folder / "probav", seed=seed, n_scenes=n_scenes, n_test_scenes=1, lr_size=lr_size,
                            progress=False)
    dataset.prepare(folder / "probav", folder / "prepared", bands=("NIR",), n_chunks=n_chunks,
                    patches_per_scene=patches_per_scene, patch_size=patch_size, processes=1, progress=False)
    return folder / "prepared"


def tiny_config(folder: Path, dataset_path: Path, **changes) -> config_module.DeepSUMConfig:
    """The NIR config shrunk to the tiny preset; no pretraining checkpoints (random start).

    The kernel gradients are oneDNN's, the layers' element-wise work TensorFlow's separate ops
    and frame by frame each image whole, not chosen by the per-process probes of "auto": tests compare runs of several
    processes, which a probe on a loaded machine could set apart (XLA's results differ by
    round-off), and each probe costs a process about a second."""
    values = dict(n_features=8, patch_size_HR=(48, 48), patch_size_LR=(16, 16), batch_size=2, n_chunks=2,
                  lr=1e-3, skip_step=SKIP_STEP, dataset_path=dataset_path, checkpoint_dir=folder / "checkpoints",
                  SISRNet_pretrain_dir=folder / "no_sisrnet", RegNet_pretrain_dir=folder / "no_regnet",
                  validation_images=1, xla_kernel_gradients=False, xla_elementwise=False, frame_strips=1)
    values.update(changes)
    return config_module.default_config(**values)


def write_config(config: config_module.DeepSUMConfig, path: Path) -> Path:
    fileio.save_json(path, config_module.to_json(config))
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPOSITORY_ROOT))
    env.pop("TF_CONFIG", None)
    return env


def event_files(checkpoint_dir: Path) -> list[Path]:
    """The TensorBoard event files of a run's training logs, oldest first (one per process)."""
    return sorted((checkpoint_dir / "logs" / "train").glob("events.out.tfevents.*"))


def logged_losses(checkpoint_dir: Path, files: list[Path] | None = None) -> dict[int, float]:
    """The training loss per step from the TensorBoard event files of a run (default: all of
    them, a later file's value of a step replacing an earlier one's)."""
    losses = {}
    for file in event_files(checkpoint_dir) if files is None else files:
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                if value.tag == "loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


def checkpoint_tensors(path: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key, dtype in reader.get_variable_to_dtype_map().items()
            if dtype != tf.string and "save_counter" not in key}


def assert_same_state(actual: dict, expected: dict):
    """Each tensor of two checkpoints equal up to two processes' round-off, relative to the tensor's scale.

    An element far below its tensor's scale (a weight of -0.0019 among weights of 0.13) carries the
    round-off of the whole tensor's sums, so it is compared within 1e-5 of the largest magnitude: a
    checkpoint one step off differs by the learning rate (1e-4 to 1e-3 per weight), far outside it.
    """
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        scale = float(np.max(np.abs(expected[key]))) if np.size(expected[key]) else 0.0
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-5 * scale + 1e-12, err_msg=key)
