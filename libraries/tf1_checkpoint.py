"""Import of the authors' TensorFlow 1 checkpoints (name-based, e.g. `conv_up_0/W`).

Our variables have the TF1 names and shapes (`model.tf1_variables()`), so loading is a copy
name by name. A TF1 checkpoint may also hold optimiser state (`*/Adam`, `*/Adam_1`,
`beta1_power`, `beta2_power`), `global_step`, and, in the SISRNet pretraining checkpoint, the
pretraining output layer `conv_up_8`: `load_tf1_checkpoint` ignores those.

Command line: `python -m libraries convert-tf1 SRC DST [--config FILE]` writes a TF2 checkpoint
of the whole network (see `libraries.checkpoints`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import tensorflow as tf

from libraries import checkpoints
from libraries import config as config_lib
from libraries import model as model_lib
from libraries.checkpoints import CheckpointError

IGNORED = re.compile(r"/Adam(_\d+)?$|^beta[12]_power$|^global_step$|^conv_up_8/")
NETWORK = re.compile(
    r"^(conv_up_[0-7]/(W|b)|inst_norm_up_[0-7]/(gamma|beta)|Rconv(1b|2b|3b|4b|7_b)/(W|b)"
    r"|conv_fuse_[0-4]/(W|b)|inst_norm_fuse_[0-3]/(gamma|beta))$"
)


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
    for name in present:
        variables[name].assign(reader.get_tensor(name))
    return present


def load_tf1_variables(variables: dict[str, tf.Variable], path: str | os.PathLike) -> list[str]:
    """Assign each of `variables` (TF1 name -> variable) found in the checkpoint at `path`
    (folder or prefix); return the names loaded. A shape mismatch raises, naming the variable."""
    prefix, reader = checkpoints.open_checkpoint(path)
    return _copy(variables, reader, prefix)


def load_tf1_checkpoint(model: tf.Module, path: str | os.PathLike) -> list[str]:
    """Load the network variables of an authors' TF1 checkpoint into `model`.

    model: `DeepSUM` or one of its sub-networks (anything with `tf1_variables()`).
    path: TF1 checkpoint folder (with its `checkpoint` file) or prefix.
    Loads every variable of `model` present (a pretraining checkpoint holds only SISRNet or
    only RegNet) and returns their names; raises `CheckpointError` for a TF2 checkpoint, a
    checkpoint with variables DeepSUM does not have, or one with none of `model`'s.
    """
    prefix, reader = checkpoints.open_checkpoint(path)
    if checkpoints.is_object_based(reader):
        raise CheckpointError(f"{prefix}: a TF2 checkpoint, not a TF1 one; use libraries.checkpoints.restore_weights")
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
    refused: load them directly with `checkpoints.restore_weights(model.sisrnet, ...)`.
    """
    config = config_lib.default_config() if config is None else config
    model = model_lib.DeepSUM(config)
    loaded = load_tf1_checkpoint(model, source)
    missing = sorted(set(model.tf1_variables()) - set(loaded))
    if missing:
        raise CheckpointError(
            f"{source}: holds only part of DeepSUM (missing {missing[:4]}...); a pretraining checkpoint "
            "is loaded directly by restore_weights(model.sisrnet or model.regnet, path)"
        )
    return checkpoints.save_model_checkpoint(model, destination, config)


def add_convert_tf1_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="TF1 checkpoint folder (with its `checkpoint` file) or prefix")
    parser.add_argument("destination", metavar="DST", help="folder to write the TF2 checkpoint and config.json into")
    parser.add_argument("--config", help="DeepSUM JSON config of the network (default: the NIR config)")


def run_convert_tf1(args: argparse.Namespace) -> int:
    try:
        config = config_lib.load_config(args.config) if args.config else None
        destination = convert_tf1_checkpoint(args.source, args.destination, config)
    except (CheckpointError, config_lib.ConfigError) as error:
        print(f"convert-tf1: {error}", file=sys.stderr)
        return 1
    print(f"wrote {destination} ({checkpoints.resolve_prefix(destination)})")
    return 0
