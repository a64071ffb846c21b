"""Pretraining of SISRNet and RegNet (the authors ship only the checkpoints), on the one loop.

**SISRNet** learns single-image super-resolution. A pretraining head `conv_up_8` (1x1x1,
F -> 1) turns SISRNet's features of one bicubic frame into the residual that brings the frame
to the HR image. Normalisation (the same as DeepSUM's): the input is x = (frame - mu) / sigma,
the target y = (HR - mu) / sigma_rescaled, and the prediction, on the target's scale, is

    prediction = (x + conv_up_8(SISRNet(x))) * sigma / sigma_rescaled

i.e. `conv_up_8` predicts (HR - frame) / sigma, in the input's units. That is the authors'
pretraining graph (its `.meta` adds `conv_up_8`'s output to `x`), so their `conv_up_8` is
reused as it is; the factor sigma / sigma_rescaled is DeepSUM's residual scale, so the loss
is the cL2 loss on the sigma_rescaled scale, as in DeepSUM's training. Every 9-frame training
patch gives 9 single-frame samples (`pretraining_data.SingleFrames`). Evaluation: the cL2 loss
of the held-out scenes' samples, next to that of their bicubic frames.

**RegNet** learns to register features. SISRNet is frozen (loaded from a pretraining
checkpoint). From one frame's features, 8 copies are translated by known random integer shifts
(dy, dx) in [-max_shift, max_shift]; with the untranslated features as frame 0 they form the
9-frame stack RegNet sees (`pretraining_data.planted_shift_stack`). Loss: softmax
cross-entropy of the 81 logits of each frame against its true tap (the authors'
`softmax_cross_entropy_with_logits`). Evaluation: the tap accuracy on held-out scenes.

Both run `training.loop.TrainingLoop`; their checkpoints hold the sub-network under `model`
(as DeepSUM's hold DeepSUM), so `checkpoints.restore_weights(deepsum.sisrnet, folder)` loads
them into DeepSUM, as it loads the authors' TF1 pretraining checkpoints.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from libraries import arguments, checkpoints, domain, metrics
from libraries import config as config_module
from libraries.config import RegNetPretrainConfig, SISRNetPretrainConfig
from libraries.model import Conv, RegNet, SISRNet
from libraries.model.layers import cast_like, compute_dtype
from libraries.training import deepsum as deepsum_training
from libraries.training import optimization
from libraries.training import pretraining_data as pdata
from libraries.training.loop import TrainingLoop

ModuleT = TypeVar("ModuleT", bound=tf.Module)

SISRNET_HEAD = "conv_up_8"  # the pretraining-only output layer of SISRNet


class SingleFrameSR(tf.Module):
    """SISRNet plus its pretraining head `conv_up_8`: one bicubic frame -> one HR estimate.

    `net(x)`: x `[batch, frames, H, W, 1]` `(v - mu) / sigma` -> `[batch, frames, H, W, 1]` on the
    `(v - mu) / sigma_rescaled` scale (see the module docstring).
    """

    def __init__(self, n_features: int, residual_scale: float, seed: int, precision: str = "float32"):
        super().__init__(name="SingleFrameSR")
        self.compute_dtype = compute_dtype(precision)
        self.sisrnet = SISRNet(n_features, channels=1, seed=seed)
        self.head = Conv(SISRNET_HEAD, [1, 1, 1, n_features, 1], seed)
        self.residual_scale = float(residual_scale)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        features = self.sisrnet(tf.cast(x, self.compute_dtype))  # [b, T, H, W, F]
        # 1x1x1 convolution = a matrix product over the feature axis
        residual = tf.tensordot(features, cast_like(self.head.W[0, 0, 0], features), axes=1) + self.head.bias(features)
        return (x + tf.cast(residual, tf.float32)) * self.residual_scale  # [b, T, H, W, 1] float32

    def tf1_variables(self) -> dict[str, tf.Variable]:
        return dict(sorted({**self.sisrnet.tf1_variables(), **self.head.tf1_variables()}.items()))


def single_frame_network(config: config_module.PretrainConfig) -> SingleFrameSR:
    """A freshly initialised (seeded) SISRNet + `conv_up_8` for `config`."""
    return with_kernel_gradients(SingleFrameSR(config.n_features, config.sigma / config.sigma_rescaled, config.seed,
                                               config.precision), config)


def with_kernel_gradients(network: ModuleT, config: config_module.PretrainConfig) -> ModuleT:
    """`network` with its convolutions' kernel gradients computed as `config.xla_kernel_gradients`
    says (as DeepSUM's: "auto" measures which is faster here, once per process)."""
    for conv in network.submodules:
        if isinstance(conv, Conv):
            conv.xla_kernel_gradient = config.xla_kernel_gradients
    return network


def _restore_from_config(model: tf.Module, config: Any, key: str, source: str | os.PathLike | None = None,
                        extra: Mapping[str, tf.Module] | None = None) -> None:
    """`checkpoints.restore_weights(model, config.<key>, extra)`; a path that is no checkpoint, or
    one that does not fit, is an error naming the key and `source`, the file the config came from."""
    try:
        checkpoints.restore_weights(model, getattr(config, key), extra)
    except checkpoints.CheckpointError as error:
        where = f" in {source}" if source is not None else ""
        raise checkpoints.CheckpointError(f"{error} (config {key}{where})") from None


def _initialise(loop: TrainingLoop, config: config_module.PretrainConfig, model: tf.Module,
                extra: Mapping[str, tf.Module] | None = None, source: str | os.PathLike | None = None) -> None:
    """Resume from the loop's folder, else load `config.init_checkpoint` (ours or the authors') if set.
    A refused start frees the loop's folder (removed if the loop made it and it is still empty)."""
    try:
        if loop.restore() is None and config.init_checkpoint is not None:
            _restore_from_config(model, config, "init_checkpoint", source, extra)
    except BaseException:
        loop.release()
        raise


# --------------------------------------------------------------------------- SISRNet


def pretrain_sisrnet(config: SISRNetPretrainConfig, steps: int | None = None,
                     patches: Mapping[str, np.ndarray] | None = None, progress: bool = True,
                     source: str | os.PathLike | None = None) -> dict[str, list]:
    """Pretrain SISRNet + `conv_up_8` on single registered frames with the cL2 loss.

    config: a `SISRNetPretrainConfig`; steps: total steps (None: `config.steps`); patches: the
    arrays of `pretraining_data.read_training_patches` (None: read from `config.dataset_path`).
    Checkpoints and TensorBoard logs go to `config.checkpoint_dir`; a run resumes from its
    latest checkpoint. source: the config's file, named in errors about its checkpoint paths.
    Returns the loop's history: `loss` and `bicubic_loss` (the loss of the bicubic frame itself)
    per step, and per validation `heldout_loss`, `heldout_bicubic_loss`.
    """
    patches = pdata.read_training_patches(config) if patches is None else patches
    training_samples = pdata.SingleFrames(patches, config, heldout=False)
    heldout_samples = pdata.SingleFrames(patches, config, heldout=True)
    network = single_frame_network(config)
    trainable = list(network.tf1_variables().values())
    optimizer = optimization.adam(config.lr)
    applier, loss_scale_state = optimization.with_loss_scaling(optimizer, config.precision, trainable)
    loop = TrainingLoop(config.checkpoint_dir, {"model": network.sisrnet, "head": network.head, "optimizer": optimizer},
                        config.skip_step, title="SISRNet pretraining", optional=loss_scale_state,
                        best_key="heldout_loss", best_mode="min", config=config, progress=progress,
                        reads=config.dataset_path)
    _initialise(loop, config, network.sisrnet, {"head": network.head}, source)

    def losses(x, y, mask):  # [b, 1, p, p, 1] each
        """The cL2 loss of the network's output and, for comparison, of the bicubic frame itself."""
        return {"loss": metrics.cl2_loss(y, network(x), mask, config.border),
                "bicubic_loss": metrics.cl2_loss(y, x * network.residual_scale, mask, config.border)}

    @tf.function(reduce_retracing=True, autograph=False)
    def train_step(batch):
        with tf.GradientTape() as tape:
            values = losses(*batch)
        optimization.minimise(applier, tape, values["loss"], trainable)
        return values

    heldout_losses = tf.function(losses, reduce_retracing=True, autograph=False)
    rows = np.arange(min(len(heldout_samples.index), config.eval_frames))

    def validate(step: int) -> dict[str, float]:
        parts = [heldout_losses(*heldout_samples.batch(part, None))
                 for part in np.array_split(rows, max(1, len(rows) // config.batch_size))]
        results = {f"heldout_{name}": float(np.mean([float(part[name]) for part in parts]))
                   for name in ("loss", "bicubic_loss")}
        loop.log_validation(step, results)
        return results

    target = target_steps(config, steps)
    return loop.run(train_step, lambda start: pdata.sisrnet_dataset(training_samples, start), target, validate)


def target_steps(config: config_module.PretrainConfig, steps: int | None) -> int:
    """The global step a pretraining runs to: `steps`, or the config's when None. A pretraining
    has no "until interrupted" (the loop's 0): a value below 1 is refused, as in the config."""
    target = config.steps if steps is None else steps
    if target < 1:
        raise config_module.ConfigError(f"steps: expected a positive integer, got {target}")
    return target


# --------------------------------------------------------------------------- RegNet


def planted_shift_logits(regnet: RegNet, features: tf.Tensor, shifts: tf.Tensor, max_shift: int) -> tf.Tensor:
    """RegNet's logits for one frame's features and its copies moved by `shifts`.

    features: `[batch, H, W, F]`; shifts: `[batch, T-1, 2]`. Returns `[batch, T-1, k*k]`.
    """
    return regnet(pdata.planted_shift_stack(features, shifts, max_shift))[1]


@tf.function(reduce_retracing=True, autograph=False)
def _predicted_taps(sisrnet: SISRNet, regnet: RegNet, x: tf.Tensor, shifts: tf.Tensor, max_shift: int) -> tf.Tensor:
    """Arg-max tap `[b, T-1]` of RegNet for frames x `[b, H, W, 1]` and planted `shifts`."""
    features = sisrnet(x[:, None])[:, 0]  # [b, H, W, F]
    return tf.argmax(planted_shift_logits(regnet, features, shifts, max_shift), axis=-1, output_type=tf.int32)


def evaluate_regnet_accuracy(sisrnet: SISRNet, regnet: RegNet, frames: np.ndarray, max_shift: int = 4,
                             seed: int = 0, batch_size: int = 8, frames_per_stack: int = 9,
                             progress: bool = False) -> dict[str, float]:
    """Tap accuracy of RegNet on shifts planted in the SISRNet features of `frames`.

    frames: `[N, H, W, 1]` normalised `(v - mu) / sigma`. Each frame gets `frames_per_stack - 1`
    copies moved by seeded random shifts in [-max_shift, max_shift]. Returns `accuracy` (share
    of copies whose arg-max tap is the true shift's), `opposite_sign_accuracy` (arg-max at the
    tap of minus the shift: a registration convention mismatch shows here),
    `within_one_pixel` (arg-max at most one pixel away on both axes) and `shifts` (count).
    """
    filter_size = regnet.filter_size
    radius = filter_size // 2
    counts = np.zeros(3)
    total = 0
    starts = range(0, len(frames), batch_size)
    for index, start in enumerate(tqdm(starts, desc="RegNet accuracy", disable=not progress)):
        x = tf.convert_to_tensor(frames[start:start + batch_size], tf.float32)
        shifts = pdata.random_shifts(int(x.shape[0]), frames_per_stack - 1, max_shift, tf.constant([seed, index]))
        taps = _predicted_taps(sisrnet, regnet, x, shifts, max_shift).numpy()  # [b, T-1]
        shifts = shifts.numpy()
        predicted = np.stack([taps // filter_size - radius, taps % filter_size - radius], axis=-1)  # [b, T-1, 2]
        counts += [np.sum(taps == domain.tap_index(shifts, filter_size)),
                   np.sum(taps == domain.tap_index(-shifts, filter_size)),
                   np.sum(np.all(np.abs(predicted - shifts) <= 1, axis=-1))]
        total += taps.size
    if total == 0:
        raise pdata.PretrainingError("evaluate_regnet_accuracy: no frames given")
    accuracy, opposite, near = counts / total
    return {"accuracy": accuracy, "opposite_sign_accuracy": opposite, "within_one_pixel": near, "shifts": total}


def frozen_sisrnet(config: RegNetPretrainConfig, source: str | os.PathLike | None = None) -> SISRNet:
    """SISRNet with the weights of `config.SISRNet_pretrain_dir` (ours or the authors'); errors
    name that key and `source`, the config's file."""
    sisrnet = SISRNet(config.n_features, channels=1, seed=config.seed)
    _restore_from_config(sisrnet, config, "SISRNet_pretrain_dir", source)
    return sisrnet


def pretrain_regnet(config: RegNetPretrainConfig, steps: int | None = None,
                    patches: Mapping[str, np.ndarray] | None = None, progress: bool = True,
                    source: str | os.PathLike | None = None) -> dict[str, list]:
    """Pretrain RegNet on shifts planted in the features of a frozen SISRNet.

    config: a `RegNetPretrainConfig`; steps: total steps (None: `config.steps`); patches, source:
    as in `pretrain_sisrnet` (patches need `frames` and `scene`). The scenes of `heldout_fraction`
    are kept out of training; every `skip_step` steps the tap accuracy on (at most `eval_frames` of)
    their frames is measured, on whole prepared patches (or their central `eval_size` windows):
    RegNet averages its taps over the window, so its accuracy grows with the window, and inside
    DeepSUM it sees whole training patches. Training uses random `patch_size` crops.
    Returns the loop's history: `loss`, `accuracy` (training batch) per step and
    `heldout_accuracy`, `heldout_opposite_sign_accuracy` per validation.
    """
    sisrnet = frozen_sisrnet(config, source)  # a missing checkpoint is found before the data set is read
    patches = pdata.read_training_patches(config) if patches is None else patches
    pdata.check_patches(patches, config, ("frames", "scene"))
    heldout = pdata.split_scenes(patches["scene"], config.heldout_fraction, config.seed)
    training_frames = pdata.normalised_frames(patches["frames"][~heldout], config)  # [n, P, P, 1]
    eval_frames = pdata.normalised_frames(patches["frames"][heldout], config)
    chosen = np.random.default_rng(config.seed).permutation(len(eval_frames))[:config.eval_frames]
    eval_frames = eval_frames[np.sort(chosen)]
    if config.eval_size:
        eval_frames = pdata.center_crop(eval_frames, config.eval_size)
    frames_per_stack = int(patches["frames"].shape[1])

    regnet = with_kernel_gradients(RegNet(config.n_features, config.filter_size, seed=config.seed), config)
    trainable = list(regnet.tf1_variables().values())
    optimizer = optimization.adam(config.lr)
    applier, loss_scale_state = optimization.with_loss_scaling(optimizer, config.precision, trainable)
    features_dtype = compute_dtype(config.precision)
    loop = TrainingLoop(config.checkpoint_dir, {"model": regnet, "optimizer": optimizer}, config.skip_step,
                        title="RegNet pretraining", optional=loss_scale_state, best_key="heldout_accuracy",
                        best_mode="max", config=config, progress=progress, reads=config.dataset_path)
    _initialise(loop, config, regnet, source=source)
    step_counter = loop.step

    @tf.function(reduce_retracing=True, autograph=False)
    def train_step(x):  # x: [b, p, p, 1]
        features = sisrnet(tf.cast(x[:, None], features_dtype))[:, 0]  # [b, p, p, F], frozen: outside the tape
        seed = tf.stack([tf.constant(config.seed, tf.int64), tf.convert_to_tensor(step_counter, tf.int64)])
        shifts = pdata.random_shifts(config.batch_size, frames_per_stack - 1, config.max_shift, seed)
        labels = domain.tap_index(shifts, config.filter_size)  # [b, T-1]
        with tf.GradientTape() as tape:
            logits = planted_shift_logits(regnet, features, shifts, config.max_shift)  # [b, T-1, k*k]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimization.minimise(applier, tape, loss, trainable)
        correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        return {"loss": loss, "accuracy": tf.reduce_mean(tf.cast(correct, tf.float32))}

    def validate(step: int) -> dict[str, float]:
        result = evaluate_regnet_accuracy(sisrnet, regnet, eval_frames, config.max_shift, config.seed,
                                          config.batch_size, frames_per_stack)
        results = {"heldout_accuracy": result["accuracy"],
                   "heldout_opposite_sign_accuracy": result["opposite_sign_accuracy"]}
        loop.log_validation(step, results)
        return results

    target = target_steps(config, steps)
    return loop.run(train_step, lambda start: pdata.regnet_dataset(training_frames, config, start), target, validate)


def real_frame_accuracy(frames: np.ndarray, sisrnet_dir: Any, regnet_dir: Any, n_features: int = 64,
                        max_shift: int = 4, seed: int = 0, batch_size: int = 4) -> dict[str, float]:
    """Tap accuracy (see `evaluate_regnet_accuracy`) of a SISRNet + RegNet checkpoint pair on
    shifts planted in the features of `frames` `[N, H, W, 1]` (e.g. `pretraining_data.read_real_frames`)."""
    sisrnet, regnet = SISRNet(n_features, channels=1), RegNet(n_features)
    checkpoints.restore_weights(sisrnet, sisrnet_dir)
    checkpoints.restore_weights(regnet, regnet_dir)
    return evaluate_regnet_accuracy(sisrnet, regnet, frames, max_shift, seed, batch_size, progress=True)


# --------------------------------------------------------------------------- command line


def _add_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--config", default=default, help=f"JSON config (default {default})")
    parser.add_argument("--steps", type=arguments.integer_at_least(1), default=None,
                        help="train until this global step (default: the config's steps)")
    arguments.add_precision_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_pretrain_sisrnet_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser, "config_files/SISRNet_pretrain_config.json")


def add_pretrain_regnet_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser, "config_files/RegNet_pretrain_config.json")


def config_from_arguments(args: argparse.Namespace, kind: type) -> config_module.PretrainConfig:
    """The config file of `--config` (a `kind` pretraining config) with `--precision` applied."""
    return config_module.with_precision(deepsum_training.load_config_of_kind(args.config, kind), args.precision)


def _how_deepsum_starts_from(key: str, folder: Path) -> str:
    """The DeepSUM config key that makes training start from a pretraining: the shipped DeepSUM
    configs name the folders `fetch-weights` fills with the authors' weights, not this one."""
    shipped = getattr(config_module.default_config(), key)
    return (f"DeepSUM starts from it with \"{key}\": \"{folder}\" in its config" if Path(folder) == shipped
            else f"DeepSUM starts from it with \"{key}\": \"{folder}\" in its config (the shipped configs name {shipped})")


def run_pretrain_sisrnet(args: argparse.Namespace) -> int:
    config = config_from_arguments(args, SISRNetPretrainConfig)
    history = pretrain_sisrnet(config, steps=args.steps, source=args.config, progress=not args.no_progress)
    if history.get("loss"):
        print(f"step {history['step'][-1]}: cL2 loss {history['loss'][-1]:.5f} "
              f"(bicubic {history['bicubic_loss'][-1]:.5f}); checkpoints in {config.checkpoint_dir}")
    print(_how_deepsum_starts_from("SISRNet_pretrain_dir", config.checkpoint_dir))
    return 0


def run_pretrain_regnet(args: argparse.Namespace) -> int:
    config = config_from_arguments(args, RegNetPretrainConfig)
    history = pretrain_regnet(config, steps=args.steps, source=args.config, progress=not args.no_progress)
    if history["validation"]:
        print(f"step {history['validation'][-1]['step']}: held-out tap accuracy "
              f"{history['validation'][-1]['heldout_accuracy']:.3f}; checkpoints in {config.checkpoint_dir}")
    print(_how_deepsum_starts_from("RegNet_pretrain_dir", config.checkpoint_dir))
    return 0
