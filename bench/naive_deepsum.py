"""The naive baseline: the authors' DeepSUM graph written plainly in TensorFlow 2.

This is the formulation of the authors' `inference_FR` and `registration_dyn_filters`
(DeepSUM_network.py) and their `Conv3D`/`InstanceNorm` (libraries/utils.py), kept as it was:
3-D convolutions everywhere (also the 1x3x3 kernels), the reference frame tiled 9 times and
interleaved with the frames for RegNet's 2x3x3 stride-2 convolution, registration by a
depthwise convolution whose filters are tiled over the feature channels, and the fill as a
sum over a `fill_coeff` tensor `[b, T, T, H, W, 1]` tiled 64 times over channels. It reads the
weights of a `libraries.model.DeepSUM` (`tf1_variables()`), so both compute the same function
on the same weights; `python bench/naive_deepsum.py` checks that they agree.

Only the benchmarks use it; the project's network is `libraries.model`.

    .venv/bin/python bench/naive_deepsum.py [--size 48] [--features 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import harness  # noqa: E402  (first: the project's TensorFlow defaults, before TensorFlow is imported)
import tensorflow as tf  # noqa: E402
from libraries import model as model_lib  # noqa: E402
from libraries.config import default_config  # noqa: E402

SPATIAL_PAD = [[0, 0], [0, 0], [1, 1], [1, 1], [0, 0]]  # the authors' `sp`


class NaiveDeepSUM:
    """The authors' graph on the weights `variables` (a `DeepSUM.tf1_variables()` dict).

    `naive(x, fill_coeff)`: x `[b, T, H, W, 1]`, fill_coeff `[b, T, T, H, W, 1]` float32 (the
    authors' placeholder, `libraries.fill_coefficients(masks)`). Returns the same
    dict as `DeepSUM.__call__` ("sr", "filters", "filter_logits", "x_registered").
    """

    def __init__(self, variables: dict[str, tf.Variable], config=None):
        self.v = variables
        self.config = default_config() if config is None else config
        self.k = self.config.filter_size

    def conv3d(self, values: tf.Tensor, name: str, strides=(1, 1, 1, 1, 1)) -> tf.Tensor:
        """The authors' `Conv3D`: conv3d VALID plus bias."""
        return tf.nn.conv3d(values, self.v[f"{name}/W"], list(strides), "VALID") + self.v[f"{name}/b"]

    def instance_norm(self, values: tf.Tensor, name: str) -> tf.Tensor:
        """The authors' `InstanceNorm(axis=[2, 3])`."""
        mean, variance = tf.nn.moments(values, [2, 3], keepdims=True)
        return tf.nn.batch_normalization(values, mean, variance, self.v[f"{name}/beta"], self.v[f"{name}/gamma"], 1e-3)

    def layer(self, values: tf.Tensor, conv: str, norm: str | None, strides=(1, 1, 1, 1, 1)) -> tf.Tensor:
        """Reflect pad in H and W, Conv3D, optional InstanceNorm, leaky ReLU."""
        out = self.conv3d(tf.pad(values, SPATIAL_PAD, mode="REFLECT"), conv, strides)
        if norm is not None:
            out = self.instance_norm(out, norm)
        return tf.nn.leaky_relu(out)

    def registration_dyn_filters(self, frames: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
        """The authors' registration: frames `[b, D, H, W, F]`, filters `[b, D, k, k]` -> `[b, D, H, W, F]`."""
        shape = tf.shape(frames)
        batch, depth, height, width, channels = shape[0], shape[1], shape[2], shape[3], shape[4]
        kernel = tf.transpose(tf.reshape(filters, [batch * depth, self.k, self.k, 1]), [1, 2, 0, 3])  # [k, k, b*D, 1]
        kernel = tf.tile(kernel, [1, 1, 1, channels])  # [k, k, b*D, F]: every filter copied F times
        kernel = tf.reshape(kernel, [self.k, self.k, batch * depth * channels, 1])  # [k, k, b*D*F, 1]
        images = tf.transpose(tf.reshape(frames, [batch * depth, height, width, channels]), [1, 2, 0, 3])  # [H, W, b*D, F]
        images = tf.reshape(images, [1, height, width, batch * depth * channels])  # [1, H, W, b*D*F]
        pad = self.k // 2
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        moved = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")  # [1, H, W, b*D*F]
        moved = tf.reshape(moved, [height, width, batch, depth, channels])  # [H, W, b, D, F]
        return tf.transpose(moved, [2, 3, 0, 1, 4])  # [b, D, H, W, F]

    def __call__(self, x: tf.Tensor, fill_coeff: tf.Tensor) -> dict[str, tf.Tensor]:
        T = self.config.T_in
        features = x
        for k in range(8):  # SISRNet
            features = self.layer(features, f"conv_up_{k}", f"inst_norm_up_{k}")
        references = tf.tile(features[:, 0:1], [1, T, 1, 1, 1])  # [b, T, H, W, F]
        pairs = tf.stack([features, references], axis=2)  # [b, T, 2, H, W, F]
        shape = tf.shape(pairs)
        pairs = tf.reshape(pairs, [shape[0], shape[1] * 2, shape[3], shape[4], shape[5]])  # [b, 2T, H, W, F]
        t = self.layer(pairs[:, 2:], "Rconv1b", None, strides=(1, 2, 1, 1, 1))  # [b, T-1, H, W, 2F]
        for name in ("Rconv2b", "Rconv3b", "Rconv4b"):
            t = self.layer(t, name, None)
        t = self.conv3d(tf.pad(t, SPATIAL_PAD, mode="REFLECT"), "Rconv7_b")  # [b, T-1, H, W, k*k]
        logits = tf.reduce_mean(t, axis=[2, 3])  # [b, T-1, k*k]
        filters = tf.nn.softmax(logits, axis=2)
        filters = tf.reshape(filters, [tf.shape(filters)[0], T - 1, self.k, self.k])  # [b, T-1, k, k]
        to_fuse = tf.concat([features[:, 0:1], self.registration_dyn_filters(features[:, 1:], filters)], axis=1)
        x_registered = tf.concat([x[:, 0:1], self.registration_dyn_filters(x[:, 1:], filters)], axis=1)
        channels = tf.shape(to_fuse)[-1]
        fill_features = tf.tile(fill_coeff, [1, 1, 1, 1, 1, channels])  # [b, T, T, H, W, F]
        to_fuse = tf.reduce_sum(fill_features * to_fuse[:, None], axis=2)  # [b, T, H, W, F]
        x_registered = tf.reduce_sum(fill_coeff * x_registered[:, None], axis=2)  # [b, T, H, W, 1]
        fused = to_fuse
        for k in range(4):  # FusionNet
            fused = self.layer(fused, f"conv_fuse_{k}", f"inst_norm_fuse_{k}")
        fused = self.conv3d(fused, "conv_fuse_4")  # [b, 1, H, W, 1]
        residual = tf.reduce_mean(x_registered, axis=1, keepdims=True) * (self.config.sigma / self.config.sigma_rescaled)
        return {"sr": fused + residual, "filters": filters, "filter_logits": logits, "x_registered": x_registered}



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


def naive_from(model: model_lib.DeepSUM) -> NaiveDeepSUM:
    """The naive graph on `model`'s weights (the very same variables)."""
    return NaiveDeepSUM(model.tf1_variables(), model.config)


def fill_coeff(masks: np.ndarray) -> np.ndarray:
    """The authors' `fill_coeff` feed for registered clear masks `[b, T, H, W, 1]`: `[b, T, T, H, W, 1]` float32."""
    return fill_coefficients(np.asarray(masks, bool)).astype(np.float32)


def random_inputs(batch: int, size: int, seed: int = 0, frames: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Normalised frames `[batch, frames, size, size, 1]` float32 and clear masks (80% clear) bool."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, frames, size, size, 1)).astype(np.float32)
    masks = rng.random((batch, frames, size, size, 1)) < 0.8
    return x, masks


def compare(size: int = 48, n_features: int = 16, batch: int = 2, seed: int = 0) -> dict:
    """Relative L2 and max errors of the naive graph against `libraries.model` on random weights."""
    model = model_lib.DeepSUM(default_config(n_features=n_features, seed=seed))
    x, masks = random_inputs(batch, size, seed)
    ours = model(x, masks)
    naive = naive_from(model)(tf.constant(x), tf.constant(fill_coeff(masks)))
    errors = {}
    for key in ("sr", "filters", "filter_logits", "x_registered"):
        a, b = ours[key].numpy(), naive[key].numpy()
        errors[key] = {"relative_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
                       "max_abs_over_max": float(np.max(np.abs(a - b)) / np.max(np.abs(b)))}
    return {"size": size, "n_features": n_features, "batch": batch, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="32 px, 8 features")
    args = parser.parse_args(argv)
    size, features = (32, 8) if args.quick else (args.size, args.features)
    start = time.perf_counter()
    result = compare(size, features)
    result["seconds"] = time.perf_counter() - start
    print(f"naive baseline vs libraries.model, batch {result['batch']}, {size}x{size}, {features} features")
    print(f"{'output':<15}{'relative L2':>14}{'max err/max':>14}")
    for key, error in result["errors"].items():
        print(f"{key:<15}{error['relative_l2']:>14.2e}{error['max_abs_over_max']:>14.2e}")
    harness.save_result("naive_deepsum_quick" if args.quick else "naive_deepsum", result)
    worst = max(max(e.values()) for e in result["errors"].values())
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
