"""The project's one checkpoint format, and the read-only importer of the authors' TF1 checkpoints.

Everything the project writes is a TF2 object-based checkpoint (`tf.train.Checkpoint`) with
the network under the key `model`: a whole `DeepSUM`, or the one sub-network a pretraining
checkpoint is about (SISRNet, with its pretraining head under `head`; RegNet). Training
checkpoints also hold the optimiser, the step and the best validation metric; readers that
want only the weights ignore those. `restore_weights` is the one way to load weights: it
accepts our checkpoints and the authors' TF1 (name-based) ones, as a folder (with its
`checkpoint` file) or a prefix (`.../model-1`, `.../model.ckpt-11399`).

The authors' TF1 checkpoints are read name by name: our variables have the TF1 names and
shapes (`model.tf1_variables()`). A TF1 checkpoint may also hold optimiser state (`*/Adam`,
`*/Adam_1`, `beta1_power`, `beta2_power`) and `global_step`, which are not read, and, in the
SISRNet pretraining checkpoint, the pretraining head `conv_up_8`, which is read when the model
given has it (`tf1_variables()` lists it).

Command line: `python -m libraries convert-tf1 SRC DST [--config FILE]` writes a TF2 checkpoint
of the whole network.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from libraries import config as config_lib
from libraries import domain, fileio
from libraries.model import DeepSUM

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"  # present in TF2 object-based checkpoints only
CONFIG_FILE = "config.json"
MODEL_FILE = re.compile(r"model-\d+\.(index|data-\d{5}-of-\d{5})")  # the files of save_model_checkpoint
ARCHITECTURE = ("n_features", "filter_size", "T_in", "channels", "R")  # config keys that shape the weights
CHECKPOINT_INDEX = re.compile(r"(.+)-(\d+)\.index")  # `ckpt-12.index`: a checkpoint's name and number
IGNORED = re.compile(r"/Adam(_\d+)?$|^beta[12]_power$|^global_step$")
NETWORK = re.compile(
    r"^(conv_up_[0-8]/(W|b)|inst_norm_up_[0-7]/(gamma|beta)|Rconv(1b|2b|3b|4b|7_b)/(W|b)"
    r"|conv_fuse_[0-4]/(W|b)|inst_norm_fuse_[0-3]/(gamma|beta))$"
)


class CheckpointError(domain.DeepSUMError):
    """A path that is not a usable checkpoint, or one that does not fit the model."""


def has_checkpoint(folder: str | os.PathLike) -> bool:
    """True when `folder` is a checkpoint folder whose `checkpoint` file names a checkpoint present."""
    return Path(folder).is_dir() and tf.train.latest_checkpoint(str(folder)) is not None


def rebuild_state(folder: str | os.PathLike) -> list[str]:
    """Write the `checkpoint` state file of a checkpoint folder again when it is missing or
    unreadable, or names no checkpoint present, while intact checkpoints `<name>-<N>` are in the
    folder: a state file deleted or damaged by hand must not turn a resume into a fresh start
    over them. Names them oldest first (the newest is the one restored); returns their
    prefixes, empty when the state file was fine or no intact checkpoint is there."""
    folder = Path(folder)
    if not folder.is_dir() or tf.train.latest_checkpoint(str(folder)) is not None:
        return []
    numbered = (CHECKPOINT_INDEX.fullmatch(path.name) for path in folder.glob("*.index"))
    found = sorted((int(match[2]), match[1]) for match in numbered if match)
    names = [f"{name}-{number}" for number, name in found
             if checkpoint_problem(str(folder / f"{name}-{number}")) is None]
    if names:
        # TensorFlow's own writer of the state file (atomic: a temporary file, then a rename)
        tf.compat.v1.train.update_checkpoint_state(str(folder), names[-1], all_model_checkpoint_paths=names)
    return [str(folder / name) for name in names]


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


def checkpoint_problem(prefix: str) -> str | None:
    """Why the checkpoint at `prefix` does not read back intact (a missing or truncated file, a
    tensor whose checksum fails), or None when every tensor reads back."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)  # checks the tensor's CRC32C against the .index
    except Exception as error:  # TensorFlow reports damage as OpError, IndexError, ValueError...
        message = getattr(error, "message", str(error)).splitlines()[0][:200]
        return f"{type(error).__name__}: {message}"
    return None


def open_checkpoint(path: str | os.PathLike) -> tuple[str, tf.train.CheckpointReader]:
    """(prefix, reader) of a checkpoint folder or prefix; a clear error naming its files if any
    of its tensors cannot be read."""
    prefix = resolve_prefix(path)
    problem = checkpoint_problem(prefix)
    if problem is not None:
        raise CheckpointError(f"{prefix}: not a readable TensorFlow checkpoint (files {prefix}.index and "
                              f"{prefix}.data-*; {problem})")
    return prefix, tf.train.load_checkpoint(prefix)


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
    fileio.require_replaceable(folder, is_model_folder, "this project", "a model checkpoint folder",
                               "model-N checkpoint", CheckpointError)
    with fileio.atomic_folder(folder) as temporary:
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model), str(temporary), max_to_keep=1, checkpoint_name="model"
        )
        manager.save()
        if config is not None:
            fileio.save_json(temporary / CONFIG_FILE, config_lib.to_json(config))
    return Path(folder)


def is_model_folder(folder: Path) -> bool:
    """True for a folder `save_model_checkpoint` wrote: its `checkpoint` file, `model-N` files and
    `config.json`, nothing else (a training folder, the authors' TF1 files or a user's are not)."""
    names = [entry.name for entry in Path(folder).iterdir()]
    return "checkpoint" in names and all(name in ("checkpoint", CONFIG_FILE) or MODEL_FILE.fullmatch(name)
                                         for name in names)


def restore_weights(model: tf.Module, path: str | os.PathLike, extra: Mapping[str, tf.Module] | None = None) -> str:
    """Load every variable of `model` from our checkpoint or an authors' TF1 checkpoint.

    path: checkpoint folder or prefix. extra: other modules of the checkpoint to load too, by
    key (e.g. {"head": conv_up_8} beside a SISRNet). Returns "tf2" or "tf1", the kind found.
    Every variable of `model` and `extra` must be in the checkpoint (pass `model.sisrnet` to
    load a SISRNet pretraining checkpoint into DeepSUM); otherwise `CheckpointError` names the
    missing ones.
    """
    extra = dict(extra or {})
    modules = [model, *extra.values()]
    prefix, reader = open_checkpoint(path)
    if not is_object_based(reader):
        for module in modules:
            loaded = load_tf1_checkpoint(module, prefix)
            missing = sorted(set(module.tf1_variables()) - set(loaded))
            if missing:
                raise CheckpointError(f"{prefix}: TF1 checkpoint lacks {len(missing)} variable(s) of "
                                      f"{type(module).__name__}: {missing[:6]}")
        return "tf1"
    # TensorFlow assigns what it can before a check fails (a shape that does not fit, weights found
    # holding NaN): a refused checkpoint leaves the weights as they were, as the TF1 path does
    # (it checks every tensor before assigning any)
    before = [(variable, variable.numpy()) for module in modules for variable in module.variables]
    try:
        status = tf.train.Checkpoint(model=model, **extra).restore(prefix)
        # optimiser state, step counters and the like are not needed here; and a refused
        # checkpoint must not bury its one error line under a warning per value left unread
        status.expect_partial()
        status.assert_existing_objects_matched()
        for module in modules:
            for name, variable in module.tf1_variables().items():
                _check_finite(prefix, name, variable.numpy())
    except (AssertionError, ValueError, tf.errors.OpError, CheckpointError) as error:
        for variable, value in before:
            variable.assign(value)
        if isinstance(error, CheckpointError):
            raise
        message = str(error).splitlines()[0]
        message = message if len(message) < 240 else message[:240] + "..."
        raise CheckpointError(f"{prefix}: does not fit {type(model).__name__} ({message})"
                              f"{_other_architecture(prefix, getattr(model, 'config', None))}") from None
    return "tf2"


def _other_architecture(prefix: str, config: Any) -> str:
    """Why a checkpoint does not fit, when the config saved beside it (in its folder, or the
    training folder around `best/`) builds another network than `config`: "; <file> has
    n_features 8 (here 64): give that config (--config)", else ""."""
    if config is None:
        return ""
    for path in (Path(prefix).parent / CONFIG_FILE, Path(prefix).parent.parent / CONFIG_FILE):
        if not path.is_file():
            continue
        try:
            saved = fileio.read_json(path)
            values = {**saved["hyperparameters"], **saved["others"]}
        except (ValueError, KeyError, TypeError):  # damaged or not ours: no hint rather than a second error
            return ""
        differ = [f"{key} {values[key]} (here {getattr(config, key)})" for key in ARCHITECTURE
                  if key in values and values[key] != getattr(config, key)]
        return f"; {path} has {', '.join(differ)}: give that config (--config)" if differ else ""
    return ""


def _check_finite(prefix: str, name: str, value: np.ndarray) -> None:
    """Weights holding NaN or Inf (a run saved after it diverged, a damaged file that still
    parses) would make every output NaN, found only at the first score: one error naming them."""
    if not np.all(np.isfinite(value)):
        raise CheckpointError(f"{prefix}: variable {name} holds {np.count_nonzero(~np.isfinite(value))} NaN or "
                              "infinite value(s); expected finite weights")


def _copy(variables: dict[str, tf.Variable], reader: tf.train.CheckpointReader, prefix: str) -> list[str]:
    """Assign every variable whose name is in the checkpoint; all shapes are checked first."""
    shapes = reader.get_variable_to_shape_map()
    present = sorted(name for name in variables if name in shapes)
    for name in present:
        if list(shapes[name]) != variables[name].shape.as_list():
            raise CheckpointError(
                f"{prefix}: variable {name} has shape {list(shapes[name])} in the checkpoint, "
                f"the model expects {variables[name].shape.as_list()}"
            )
    values = {name: reader.get_tensor(name) for name in present}
    for name in present:
        _check_finite(prefix, name, values[name])
    for name in present:
        variables[name].assign(values[name])
    return present


def load_tf1_variables(variables: dict[str, tf.Variable], path: str | os.PathLike) -> list[str]:
    """Assign each of `variables` (TF1 name -> variable) found in the checkpoint at `path`
    (folder or prefix); return the names loaded. A shape mismatch raises, naming the variable."""
    prefix, reader = open_checkpoint(path)
    return _copy(variables, reader, prefix)


def load_tf1_checkpoint(model: tf.Module, path: str | os.PathLike) -> list[str]:
    """Load the network variables of an authors' TF1 checkpoint into `model`.

    model: `DeepSUM` or one of its sub-networks (anything with `tf1_variables()`).
    path: TF1 checkpoint folder (with its `checkpoint` file) or prefix.
    Loads every variable of `model` present (a pretraining checkpoint holds only SISRNet or
    only RegNet) and returns their names; raises `CheckpointError` for a TF2 checkpoint, a
    checkpoint with variables DeepSUM does not have, or one with none of `model`'s.
    """
    prefix, reader = open_checkpoint(path)
    if is_object_based(reader):
        raise CheckpointError(f"{prefix}: a TF2 checkpoint, not a TF1 one; use restore_weights")
    names = [name for name in reader.get_variable_to_shape_map() if not IGNORED.search(name)]
    unknown = sorted(name for name in names if not NETWORK.match(name))
    if unknown:
        raise CheckpointError(f"{prefix}: not a DeepSUM checkpoint (unexpected variables {unknown[:5]})")
    loaded = _copy(model.tf1_variables(), reader, prefix)
    if not loaded:
        raise CheckpointError(f"{prefix}: holds none of the variables of {type(model).__name__} (it has {sorted(names)[:5]}...)")
    return loaded


def convert_tf1_checkpoint(
    source: str | os.PathLike, destination: str | os.PathLike, config: config_lib.DeepSUMConfig | None = None
) -> Path:
    """Convert a complete TF1 DeepSUM checkpoint into our TF2 checkpoint folder `destination`
    (written atomically, with its `config.json`). Returns `destination`.

    config: the network's config (default `default_config()`); its `n_features` and
    `filter_size` must match the checkpoint. Pretraining checkpoints (part of the network) are
    refused: load them directly with `restore_weights(model.sisrnet, ...)`.
    """
    config = config_lib.default_config() if config is None else config
    model = DeepSUM(config)
    loaded = load_tf1_checkpoint(model, source)
    missing = sorted(set(model.tf1_variables()) - set(loaded))
    if missing:
        raise CheckpointError(
            f"{source}: holds only part of DeepSUM (missing {missing[:4]}...); a pretraining checkpoint "
            "is loaded directly by restore_weights(model.sisrnet or model.regnet, path)"
        )
    return save_model_checkpoint(model, destination, config)


def add_convert_tf1_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="TF1 checkpoint folder (with its `checkpoint` file) or prefix")
    parser.add_argument("destination", metavar="DST", help="folder to write the TF2 checkpoint and config.json into")
    parser.add_argument("--config", help="DeepSUM JSON config of the network (default: the NIR config)")


def run_convert_tf1(args: argparse.Namespace) -> int:
    config = config_lib.load_config(args.config) if args.config else None
    destination = convert_tf1_checkpoint(args.source, args.destination, config)
    print(f"wrote {destination} ({resolve_prefix(destination)})")
    return 0
