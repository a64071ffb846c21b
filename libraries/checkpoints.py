"""Model checkpoints: ours (TF2, object-based) and the authors' (TF1, name-based), told apart.

Our checkpoints hold the network under the key `model` (`tf.train.Checkpoint(model=...)`):
a whole `DeepSUM`, or the one sub-network a pretraining checkpoint is about. Training
checkpoints that also hold an optimiser and a step are read the same way (extra objects are
ignored). `restore_weights` accepts either kind, as a folder (with its `checkpoint` file) or
a prefix (`.../model-1`, `.../model.ckpt-11399`).
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from libraries import config as config_lib
from libraries import fileio

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"  # present in TF2 object-based checkpoints only
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint, or one that does not fit the model."""


def resolve_prefix(path: str | os.PathLike) -> str:
    """The checkpoint prefix of a checkpoint folder (its latest checkpoint) or of a prefix."""
    path = Path(path)
    if path.is_dir():
        if not (path / "checkpoint").is_file():
            raise CheckpointError(f"{path}: folder has no `checkpoint` file; expected a TensorFlow checkpoint folder")
        prefix = tf.train.latest_checkpoint(str(path))
        if prefix is None:
            raise CheckpointError(f"{path}/checkpoint names no checkpoint present in the folder")
        return prefix
    if Path(f"{path}.index").is_file():
        return str(path)
    raise CheckpointError(f"{path}: not a checkpoint (neither a folder nor a prefix with a .index file)")


def open_checkpoint(path: str | os.PathLike) -> tuple[str, tf.train.CheckpointReader]:
    """(prefix, reader) of a checkpoint folder or prefix; a clear error if it cannot be read."""
    prefix = resolve_prefix(path)
    try:
        return prefix, tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error)).splitlines()[0]
        raise CheckpointError(f"{prefix}: not a readable TensorFlow checkpoint ({message})") from None


def is_object_based(reader: tf.train.CheckpointReader) -> bool:
    """True for a TF2 `tf.train.Checkpoint` (ours), False for a TF1 name-based checkpoint."""
    return reader.has_tensor(OBJECT_GRAPH_KEY)


def save_model_checkpoint(model: tf.Module, folder: str | os.PathLike, config=None) -> Path:
    """Write `model` as `folder/model-1.*` (+ `checkpoint` file) and its config as
    `folder/config.json`, atomically (the folder appears complete or not at all).

    config: a `DeepSUMConfig` to save beside (default: `model.config` when it has one).
    Returns `folder`.
    """
    config = getattr(model, "config", None) if config is None else config
    with fileio.atomic_folder(folder) as temporary:
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model), str(temporary), max_to_keep=1, checkpoint_name="model"
        )
        manager.save()
        if config is not None:
            fileio.save_json(temporary / CONFIG_FILE, config_lib.to_json(config))
    return Path(folder)


def restore_weights(model: tf.Module, path: str | os.PathLike) -> str:
    """Load every variable of `model` from our checkpoint or an authors' TF1 checkpoint.

    path: checkpoint folder or prefix. Returns "tf2" or "tf1", the kind found. Every variable
    of `model` must be in the checkpoint (pass `model.sisrnet` to load a SISRNet pretraining
    checkpoint); otherwise `CheckpointError` names the missing ones.
    """
    prefix, reader = open_checkpoint(path)
    if not is_object_based(reader):
        from libraries import tf1_checkpoint  # imported here: tf1_checkpoint builds on this module

        loaded = tf1_checkpoint.load_tf1_checkpoint(model, prefix)
        missing = sorted(set(model.tf1_variables()) - set(loaded))
        if missing:
            raise CheckpointError(f"{prefix}: TF1 checkpoint lacks {len(missing)} variable(s) of the model: {missing[:6]}")
        return "tf1"
    try:
        status = tf.train.Checkpoint(model=model).restore(prefix)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        message = str(error).splitlines()[0]
        message = message if len(message) < 240 else message[:240] + "..."
        raise CheckpointError(f"{prefix}: does not fit {type(model).__name__} ({message})") from None
    status.expect_partial()  # optimiser state, step counters and the like are not needed here
    return "tf2"
