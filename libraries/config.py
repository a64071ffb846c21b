"""Configuration: the original JSON layout read into frozen, typed dataclasses.

A config file has two sections, as in the authors' repository:

    {"hyperparameters": {"lr": 5e-06, "batch_size": 8},
     "others": {"skip_step": 1000, "dataset_path": "...", ...}}

Every field of the dataclass lives in one section (its `section` metadata). Fields without
a default are required. A missing required key, an unknown (e.g. misspelt) key or a value of
the wrong type raises one `ConfigError` naming the key and the file. Relative paths resolve
against the repository root, so a config works from any current directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from libraries import domain, fileio

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("hyperparameters", "others")
ConfigT = TypeVar("ConfigT")
SUB_NETWORKS = ("sisrnet", "regnet", "fusionnet")
# Keras mixed-precision policy names: variables, optimiser state, loss and metrics stay float32
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
AUTO = "auto"  # a choice made for the machine at hand (micro_batch, frame_by_frame, frame_strips, xla_*,
#                 reduced_precision_kernels)


class ConfigError(domain.DeepSUMError):
    """A config file that cannot be used as it is; the message names the file and key."""


def _field(section: str, default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    return dataclasses.field(default=default, metadata={"section": section, "doc": doc})


def hyper(default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    return _field("hyperparameters", default, doc)


def other(default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    return _field("others", default, doc)


def check_precision(precision: str) -> None:
    """Raise `ConfigError` unless `precision` is one of `PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)} (Keras mixed-precision policy "
                          f"names), got {precision!r}")


def compute_dtype_name(precision: str) -> str:
    """The compute type of a precision: float32, bfloat16 or float16."""
    check_precision(precision)
    return precision.removeprefix("mixed_")


def _check_numbers(config: Any, non_negative: tuple[str, ...]) -> None:
    """Raise `ConfigError` for a number field that is NaN or infinite (JSON files may spell them
    `NaN` and `Infinity`; an infinite sigma would turn every frame into zeros, silently) or for one
    of the `non_negative` integer fields below zero (NumPy's generators refuse a negative seed,
    deep inside a run)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{field.name}: expected a finite number, got {value!r}")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise ConfigError(f"{name}: expected an integer >= 0, got {getattr(config, name)!r}")
    if getattr(config, "seed", 0) >= 2 ** 63:  # TensorFlow's stateless random ops take int64 seeds
        raise ConfigError(f"seed: expected an integer below 2**63, got {config.seed!r}")


def _check_auto(config: Any, names: tuple[str, ...]) -> None:
    """Raise `ConfigError` for a field of `names` (true, false or "auto") holding another string."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, str) and value != AUTO:
            raise ConfigError(f"{name}: expected true, false or {AUTO!r}, got {value!r}")


def with_precision(config: ConfigT, precision: str | None) -> ConfigT:
    """`config` with `precision` (a `--precision` value; None keeps the config's)."""
    return config if precision is None else config.replace(precision=precision)  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class DeepSUMConfig:
    """Training and inference settings of DeepSUM (`config_files/DeepSUM_config_*.json`).

    The first block holds the original keys (all required); the second holds this
    project's additions (optional, defaults shown).
    """

    lr: float = hyper(doc="Adam learning rate")
    batch_size: int = hyper(doc="training batch size")
    skip_step: int = other(doc="steps between checkpoint + validation")
    dataset_path: Path = other(doc="folder written by `python -m libraries prepare`")
    n_chunks: int = other(doc="number of training patch chunks")
    channels: int = other(doc="channels of an input frame (1)")
    T_in: int = other(doc="frames per network input (9)")
    R: int = other(doc="upscaling factor (3)")
    full: bool = other(doc="false: best-9 dataset; true: all frames, best-9 chosen at load time")
    patch_size_HR: tuple[int, int] = other(doc="training patch size on the HR grid")
    patch_size_LR: tuple[int, int] = other(doc="training patch size on the LR grid")
    border: int = other(doc="largest shift searched by the loss and cPSNR (3 -> 7x7 offsets)")
    spectral_band: str = other(doc="NIR or RED")
    RegNet_pretrain_dir: Path = other(doc="RegNet pretraining checkpoint (TF1 or ours)")
    SISRNet_pretrain_dir: Path = other(doc="SISRNet pretraining checkpoint (TF1 or ours)")
    mu: float = other(doc="input and target mean")
    sigma: float = other(doc="input scale: x = (v - mu) / sigma")
    sigma_rescaled: float = other(doc="target/output scale: y = (v - mu) / sigma_rescaled")

    base_dir: Path = other(Path("probav_data"), "PROBA-V data folder (train/, test/, norm.csv): the default "
                                                "--data of `superresolve`")
    checkpoint_dir: Path = other(Path("checkpoints/DeepSUM"), "where training writes checkpoints and logs")
    seed: int = other(42, "seed of every random choice (shuffles, initialisation)")
    n_features: int = other(64, "feature width F of SISRNet, RegNet and FusionNet")
    filter_size: int = other(9, "side of RegNet's registration filters")
    max_steps: int = other(0, "training steps of `train` (0: until interrupted)")
    n_slide: int = other(0, "sliding-window passes at evaluation (0: best 9 only)")
    freeze: tuple[str, ...] = other((), "sub-networks not trained: any of sisrnet, regnet, fusionnet")
    validation_images: int = other(3, "SR images written to TensorBoard at each validation")
    jit_compile: bool = other(False, "compile the network with XLA")
    precision: str = other("float32", "float32 (the authors' numbers), mixed_bfloat16 or mixed_float16: the "
                                      "compute type of convolutions and element-wise work (Keras mixed precision)")
    micro_batch: int | str = other(AUTO, "scenes per forward/backward pass of a training step; the batch's "
                                         "gradients are summed over passes (same update, less memory); 0: the "
                                         "whole batch at once; auto: 1 on CPUs, the whole batch on GPUs")
    frame_by_frame: bool | str = other(AUTO, "inference: run the network one frame at a time (less peak memory, "
                                             "the same outputs); auto: on CPUs (1.04-1.20x the time of whole "
                                             "scenes, measured), not on GPUs")
    frame_strips: int | str = other(AUTO, "frame-by-frame inference: each image's 2-D convolutions as this many "
                                          "horizontal strips batched together (1: whole images; the same sums); "
                                          "auto: one per thread where a short measurement finds it faster")
    self_ensemble: bool = other(False, "inference: super-resolve each scene under the 8 flips and rotations by 90 "
                                       "degrees and average the 8 outputs (8x the time); false: the authors' inference")
    recompute: bool = other(False, "gradient checkpointing in training: recompute each layer's intermediates "
                                   "in the backward pass instead of storing them (less memory, more time)")
    xla_kernel_gradients: bool | str = other(AUTO, "training: the float32 convolution kernels' gradients computed "
                                                   "by XLA (true) or oneDNN (false); auto: whichever a short "
                                                   "measurement finds faster on this machine (same values)")
    reduced_precision_kernels: bool | str = other(AUTO, "mixed precisions: the convolutions on TensorFlow's "
                                                        "bfloat16/float16 kernels (true) or in float32 on the rounded "
                                                        "values, rounded back (false: the same products, summed in "
                                                        "float32); auto: true on GPUs and, for bfloat16, on CPUs "
                                                        "with AVX512-BF16 or AMX-BF16")
    xla_elementwise: bool | str = other(AUTO, "inference: each layer's bias, InstanceNorm, leaky ReLU and the next "
                                              "layer's padding as one XLA computation between the convolutions; "
                                              "auto: if a short measurement finds it faster on this machine")

    def __post_init__(self) -> None:
        _check_types(self)
        # Value checks that the type system cannot express; the loader names the file.
        if self.spectral_band not in ("NIR", "RED"):
            raise ConfigError(f"spectral_band: expected 'NIR' or 'RED', got {self.spectral_band!r}")
        unknown = set(self.freeze) - set(SUB_NETWORKS)
        if unknown:
            raise ConfigError(f"freeze: unknown sub-network(s) {sorted(unknown)}; expected any of {SUB_NETWORKS}")
        if set(self.freeze) == set(SUB_NETWORKS):
            raise ConfigError(f"freeze: all of {list(SUB_NETWORKS)} frozen leaves nothing to train; "
                              f"freeze at most two")
        check_precision(self.precision)
        _check_numbers(self, ("seed", "n_slide", "max_steps", "validation_images", "border"))
        _check_auto(self, ("frame_by_frame", "xla_kernel_gradients", "xla_elementwise", "reduced_precision_kernels"))
        for name in ("lr", "sigma", "sigma_rescaled"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.frame_strips != AUTO and (isinstance(self.frame_strips, (str, bool)) or self.frame_strips < 1):
            raise ConfigError(f"frame_strips: expected a positive integer or {AUTO!r}, got {self.frame_strips!r}")
        if self.micro_batch != AUTO and (isinstance(self.micro_batch, str) or self.micro_batch < 0):
            raise ConfigError(f"micro_batch: expected 0 (whole batch), a positive integer or {AUTO!r}, "
                              f"got {self.micro_batch!r}")
        for name in ("batch_size", "skip_step", "n_chunks", "channels", "T_in", "R", "n_features", "filter_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.filter_size % 2 != 1:
            raise ConfigError(f"filter_size: expected an odd number, got {self.filter_size}")
        # keys of the authors' configs whose value the network fixes: any other value is refused,
        # never accepted and ignored
        for name, supported in (("T_in", domain.T_IN), ("R", domain.SCALE), ("channels", 1)):
            if getattr(self, name) != supported:
                raise ConfigError(f"{name}: the network supports only {supported}, got {getattr(self, name)!r}")
        if tuple(size * self.R for size in self.patch_size_LR) != tuple(self.patch_size_HR):
            if any(size % self.R for size in self.patch_size_HR):  # no patch_size_LR fits: name the HR side
                raise ConfigError(f"patch_size_HR: expected multiples of R = {self.R} (the scale; patch_size_LR is "
                                  f"patch_size_HR / R), got {list(self.patch_size_HR)}")
            raise ConfigError(f"patch_size_LR: expected patch_size_HR / R = "
                              f"{[size // self.R for size in self.patch_size_HR]}, got {list(self.patch_size_LR)}")
        # the loss compares the patches cropped by `border` pixels on each side
        if min(self.patch_size_HR) <= 2 * self.border:
            raise ConfigError(f"patch_size_HR: expected sides larger than 2*border = {2 * self.border}, "
                              f"got {list(self.patch_size_HR)}")

    def replace(self, **changes: Any) -> "DeepSUMConfig":
        """A copy with some fields changed (e.g. from command-line flags), validated again."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, dict[str, Any]]:
        return to_json(self)


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
    init_checkpoint: Path | None = other(None, "start from these weights (ours or the authors') when "
                                               "checkpoint_dir holds no checkpoint")
    seed: int = other(42, "seed of every random choice (initialisation, shuffles, crops, shifts)")
    n_features: int = other(64, "feature width F of SISRNet and RegNet")
    heldout_fraction: float = other(0.1, "share of scenes kept out of training for the evaluation")
    eval_frames: int = other(256, "held-out frames used per evaluation (at most)")
    precision: str = other("float32", "float32, mixed_bfloat16 or mixed_float16, as DeepSUM's `precision`")
    xla_kernel_gradients: bool | str = other(AUTO, "as DeepSUM's: the float32 convolution kernels' gradients by XLA "
                                                   "(true), oneDNN (false) or the faster here (auto: measured)")

    def __post_init__(self) -> None:
        _check_types(self)
        check_precision(self.precision)
        _check_numbers(self, ("seed", "border"))
        _check_auto(self, ("xla_kernel_gradients",))
        if self.spectral_band not in ("NIR", "RED"):
            raise ConfigError(f"spectral_band: expected 'NIR' or 'RED', got {self.spectral_band!r}")
        for name in ("lr", "sigma", "sigma_rescaled"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        for name in ("batch_size", "steps", "skip_step", "n_chunks", "n_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction: expected a number in (0, 1), got {self.heldout_fraction}")
        if self.eval_frames < 1:
            raise ConfigError(f"eval_frames: expected a positive integer, got {self.eval_frames}")
        if self.patch_size <= 2 * self.border:
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


def _check_types(config: Any) -> None:
    """Every field of `config` of its annotated type, as `_convert` (in Python form) makes it: a
    value given in code (`replace`) of another type is refused, never kept to fail deep in a run
    (`n_features=8.5`) or read by its truth (`jit_compile="no"` is true)."""
    for name, annotation in typing.get_type_hints(type(config)).items():
        object.__setattr__(config, name, _convert(getattr(config, name), annotation, name, from_json=False))


def _convert(value: Any, annotation: Any, key: str, from_json: bool = True) -> Any:
    """Check `value` (parsed JSON, or given in code: `from_json` False) against `annotation` and
    convert it; raise naming `key`. A relative path of a file resolves against the repository."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Path:
        if isinstance(value, (str, os.PathLike)) and str(value):
            path = Path(os.path.expanduser(value))
            return path if path.is_absolute() or not from_json else (REPOSITORY_ROOT / path)
    elif origin is tuple:
        items = typing.get_args(annotation)
        if isinstance(value, (list, tuple)):
            if len(items) == 2 and items[1] is Ellipsis:
                return tuple(_convert(v, items[0], key, from_json) for v in value)
            if len(value) == len(items):
                return tuple(_convert(v, t, key, from_json) for v, t in zip(value, items))
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
            try:
                return _convert(value, option, key, from_json)
            except ConfigError:
                pass
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"config field {key}: unsupported type {annotation!r}")
    shown = json.dumps(value) if from_json else repr(value)
    raise ConfigError(f"{key}: expected {_describe(annotation)}, got {shown}")


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        if len(items) == 2 and items[1] is Ellipsis:
            return f"a list of {_describe(items[0]).split(' ', 1)[1]}s"
        return f"a list of {len(items)} values ({', '.join(_describe(t) for t in items)})"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join("null" if option is type(None) else _describe(option) for option in typing.get_args(annotation))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path (string)"}.get(annotation, str(annotation))


def from_dict(kind: type[ConfigT], content: Any, source: str = "<dict>") -> ConfigT:
    """Build a config of dataclass `kind` from the two-section layout; errors name `source`."""
    if not isinstance(content, dict):
        raise ConfigError(f"{source}: expected a JSON object with sections {SECTIONS}")
    hints = typing.get_type_hints(kind)
    fields = {field.name: field for field in dataclasses.fields(kind)}
    sections = {field.metadata["section"] for field in fields.values()}
    for section in content:
        if section not in sections:
            raise ConfigError(f"{source}: unknown section {section!r}; expected {sorted(sections)}")
    values: dict[str, Any] = {}
    for section in sorted(sections):
        given = content.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: section {section!r} must be a JSON object")
        for key, value in given.items():
            field = fields.get(key)
            if field is None or field.metadata["section"] != section:
                hint = ""
                if field is not None:
                    hint = f" (it belongs in {field.metadata['section']!r})"
                else:
                    close = [name for name in fields if name.lower() == key.lower()]
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: unknown key {section}.{key}{hint}")
            try:
                values[key] = _convert(value, hints[key], f"{section}.{key}")
            except ConfigError as error:
                raise ConfigError(f"{source}: {error}") from None
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and name not in values:
            raise ConfigError(f"{source}: missing key {field.metadata['section']}.{name}")
    try:
        return kind(**values)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def config_path(path: str | os.PathLike) -> Path:
    """`path`, or the repository's file of that relative path when the current folder has none."""
    inside = REPOSITORY_ROOT / path
    return inside if not Path(path).is_absolute() and not Path(path).exists() and inside.exists() else Path(path)


def load_config(path: str | os.PathLike, kind: type[ConfigT] = DeepSUMConfig) -> ConfigT:  # type: ignore[assignment]
    """Read a JSON config file into an immutable `kind` (DeepSUMConfig by default)."""
    path = config_path(path)
    return from_dict(kind, fileio.read_json(path, "a JSON config", ConfigError), str(path))


def to_json(config: Any) -> dict[str, dict[str, Any]]:
    """The two-section JSON form of a config (paths as strings), e.g. to save beside a checkpoint."""
    out: dict[str, dict[str, Any]] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out.setdefault(field.metadata["section"], {})[field.name] = value
    return out


def default_config(**changes: Any) -> DeepSUMConfig:
    """The NIR config of the paper (`config_files/DeepSUM_config_NIR.json`), with `changes`."""
    return load_config(REPOSITORY_ROOT / "config_files" / "DeepSUM_config_NIR.json").replace(**changes)
