"""The DeepSUM network: SISRNet -> RegNet -> dynamic registration -> fill -> FusionNet + residual.

Read top to bottom: the building blocks (a convolution's weights, InstanceNorm), the three
sub-networks, the two parameter-free steps between them (`register_frames`, `fill_masked`),
and `DeepSUM`, which composes them.

Shapes are `[batch, frames, height, width, channels]` (T = 9 frames, F = 64 features). Every
variable has exactly the shape it had in the authors' TF1 graph (conv kernels
`[kt, kh, kw, in, out]`) and is listed under its TF1 name by `tf1_variables()`, so an authors'
checkpoint is a name-by-name copy (`libraries.tf1_checkpoint`).

For speed, the 1x3x3 convolutions of SISRNet and RegNet run as 2-D convolutions over
`batch * frames` images, RegNet's first (2x3x3, temporal stride 2) layer convolves the
reference frame once and broadcasts it, and FusionNet uses 3-D convolutions. For memory, the
whole network can also run frame by frame (`frame_by_frame`: the sub-networks'
`frame_by_frame` methods, which take and give lists of frames). In training, the convolutions'
kernel gradients are computed by XLA (`conv2d`, `conv3d`): on CPU, 2-2.7x faster than oneDNN's.
"""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf

from libraries.config import DeepSUMConfig, default_config

LEAKY_SLOPE = 0.2  # tf.nn.leaky_relu's default, as in the original
NORM_EPSILON = 1e-3  # the original InstanceNorm's epsilon


class InputError(ValueError):
    """An input tensor of the wrong rank, shape or dtype, or with NaN/Inf values."""


# --------------------------------------------------------------------------- building blocks


def _seed(seed: int, name: str) -> int:
    """A per-variable seed: the same model seed gives the same weights whatever the build order."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def conv2d(padded: tf.Tensor, kernel: tf.Tensor, xla_kernel_gradient: bool = True) -> tf.Tensor:
    """VALID 2-D cross-correlation: padded `[n, H+kh-1, W+kw-1, in]`, kernel `[kh, kw, in, out]`
    -> `[n, H, W, out]`, as `tf.nn.conv2d`.

    xla_kernel_gradient: the gradient for the kernel is computed by XLA (`_kernel_gradient_2d`)
    instead of the default kernel. On CPU, oneDNN's weight-gradient convolution ran at a
    quarter of its forward convolution's speed (37 against 148 GFLOP/s, 72x96x96x64, AVX2);
    XLA's ran 2.2-2.5x faster than oneDNN's. Same values up to float32 summation order.
    Only float32 takes this path (the reduced precisions keep TensorFlow's kernels).
    """
    if xla_kernel_gradient and kernel.dtype == tf.float32:
        return _conv2d_xla_kernel_gradient(padded, kernel)
    return tf.nn.conv2d(padded, kernel, strides=1, padding="VALID")


def conv3d(padded: tf.Tensor, kernel: tf.Tensor, xla_kernel_gradient: bool = True) -> tf.Tensor:
    """VALID 3-D cross-correlation: padded `[b, T, H+2, W+2, in]`, kernel `[kt, 3, 3, in, out]`
    -> `[b, T-kt+1, H, W, out]`, as `tf.nn.conv3d`.

    xla_kernel_gradient: the kernel's gradient as kt 2-D weight gradients (time tap t pairs
    input frames t.. with the output frames) computed by XLA: 3.6x faster than oneDNN's 3-D
    weight-gradient convolution at 8x9x96x96x64 (1.1 against 4.1 s). Float32 only.
    """
    if xla_kernel_gradient and kernel.dtype == tf.float32:
        return _conv3d_xla_kernel_gradient(padded, kernel)
    return tf.nn.conv3d(padded, kernel, strides=[1] * 5, padding="VALID")


@tf.function(jit_compile=True)
def _kernel_gradient_2d(padded: tf.Tensor, out_grad: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """d loss / d kernel of `conv2d(padded, kernel)` given d loss / d output `out_grad`
    (`kernel` gives the shape: XLA needs it at compile time, and it is known there)."""
    return tf.raw_ops.Conv2DBackpropFilter(input=padded, filter_sizes=tf.shape(kernel), out_backprop=out_grad,
                                           strides=[1, 1, 1, 1], padding="VALID")


def _input_gradient_2d(padded: tf.Tensor, out_grad: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    return tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(padded), filter=kernel, out_backprop=out_grad,
                                          strides=[1, 1, 1, 1], padding="VALID")


@tf.custom_gradient
def _conv2d_xla_kernel_gradient(padded: tf.Tensor, kernel: tf.Tensor):
    def gradient(out_grad: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # unused (e.g. for the input frames, which need none) it is pruned from the graph
        return _input_gradient_2d(padded, out_grad, kernel), _kernel_gradient_2d(padded, out_grad, kernel)

    return tf.nn.conv2d(padded, kernel, strides=1, padding="VALID"), gradient


@tf.custom_gradient
def _conv3d_xla_kernel_gradient(padded: tf.Tensor, kernel: tf.Tensor):
    def gradient(out_grad: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        d_padded = tf.raw_ops.Conv3DBackpropInputV2(input_sizes=tf.shape(padded), filter=kernel, out_backprop=out_grad,
                                                    strides=[1] * 5, padding="VALID")
        frames_out = out_grad.shape[1]  # static: T - kt + 1
        out_images = _frames_as_images(out_grad)  # [b*T_out, H, W, out]
        # The slices are taken outside XLA: inside one compiled function with the three
        # gradients they made it 1.3x slower (measured).
        taps = [_kernel_gradient_2d(_frames_as_images(padded[:, t:t + frames_out]), out_images, kernel[t])
                for t in range(kernel.shape[0])]
        return d_padded, tf.stack(taps)  # [kt, 3, 3, in, out]

    return tf.nn.conv3d(padded, kernel, strides=[1] * 5, padding="VALID"), gradient


class Conv(tf.Module):
    """The weights of one TF1 `Conv3D` layer: kernel `W` `[kt, kh, kw, in, out]` and bias `b` `[out]`.

    xla_kernel_gradient (attribute, read when traced): the kernel's gradient computed by XLA
    (`conv2d`, `conv3d`), the default; False: by TensorFlow's own kernels. Set by `DeepSUM`.
    """

    def __init__(self, tf1_name: str, shape: list[int], seed: int):
        super().__init__(name=tf1_name)
        self.tf1_name = tf1_name
        initializer = tf.keras.initializers.GlorotNormal(seed=_seed(seed, tf1_name))
        self.W = tf.Variable(initializer(shape, dtype=tf.float32), name=f"{tf1_name}/W")
        self.b = tf.Variable(tf.zeros([shape[-1]], tf.float32), name=f"{tf1_name}/b")
        self.xla_kernel_gradient = True

    def tf1_variables(self) -> dict[str, tf.Variable]:
        return {f"{self.tf1_name}/W": self.W, f"{self.tf1_name}/b": self.b}

    def spatial(self, images: tf.Tensor, tap: int = 0, kernel: tf.Tensor | None = None) -> tf.Tensor:
        """Time slice `tap` of the kernel (or `kernel` `[3, 3, in, out]`, a part of it) as a 3x3
        "same" convolution with REFLECT padding.

        images: `[n, H, W, in]` -> `[n, H, W, out]` (bias NOT added: RegNet sums two taps first).
        """
        return self.padded(reflect_pad(images), tap, kernel)

    def padded(self, padded: tf.Tensor, tap: int = 0, kernel: tf.Tensor | None = None) -> tf.Tensor:
        """`spatial` on images already padded by `reflect_pad`: `[n, H+2, W+2, in]` -> `[n, H, W, out]`."""
        kernel = self.W[tap] if kernel is None else kernel
        return conv2d(padded, _like(kernel, padded), self.xla_kernel_gradient)

    def volume(self, values: tf.Tensor) -> tf.Tensor:
        """The whole kernel as a 3-D convolution, REFLECT "same" in space and VALID in time.

        values: `[b, T, H, W, in]` -> `[b, T-kt+1, H, W, out]` (bias NOT added)."""
        padded = tf.pad(values, [[0, 0], [0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        return conv3d(padded, _like(self.W, values), self.xla_kernel_gradient)

    def bias(self, like: tf.Tensor) -> tf.Tensor:
        """The bias `[out]` in the dtype of `like` (the compute precision)."""
        return _like(self.b, like)


def reflect_pad(images: tf.Tensor) -> tf.Tensor:
    """`[n, H, W, C]` -> `[n, H+2, W+2, C]`, one pixel of REFLECT padding on each side."""
    return tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")


class InstanceNorm(tf.Module):
    """Normalise every (image, channel) over height and width, then scale by gamma, shift by beta."""

    def __init__(self, tf1_name: str, channels: int):
        super().__init__(name=tf1_name)
        self.tf1_name = tf1_name
        self.gamma = tf.Variable(tf.ones([channels], tf.float32), name=f"{tf1_name}/gamma")
        self.beta = tf.Variable(tf.zeros([channels], tf.float32), name=f"{tf1_name}/beta")

    def tf1_variables(self) -> dict[str, tf.Variable]:
        return {f"{self.tf1_name}/gamma": self.gamma, f"{self.tf1_name}/beta": self.beta}

    def __call__(self, values: tf.Tensor, axes: list[int]) -> tf.Tensor:
        # The original's exact formula: biased moments, then tf.nn.batch_normalization. The
        # moments are taken in float32 whatever the compute precision (a bfloat16 sum over
        # H*W pixels would lose most of its bits); in float32 every cast is the identity.
        mean, variance = tf.nn.moments(tf.cast(values, tf.float32), axes, keepdims=True)
        return tf.nn.batch_normalization(values, _like(mean, values), _like(variance, values), _like(self.beta, values),
                                         _like(self.gamma, values), NORM_EPSILON)


class Network(tf.Module):
    """A sub-network: `tf1_variables()` gathers its layers' variables under their TF1 names."""

    def tf1_variables(self) -> dict[str, tf.Variable]:
        layers = [m for m in self.submodules if isinstance(m, (Conv, InstanceNorm))]
        named = {name: v for layer in layers for name, v in layer.tf1_variables().items()}
        return dict(sorted(named.items()))


def _leaky_relu(values: tf.Tensor) -> tf.Tensor:
    return tf.nn.leaky_relu(values, alpha=LEAKY_SLOPE)


def _like(value: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """`value` cast to the dtype of `like`: float32 variables used at the compute precision
    (the identity, no op, when both are float32)."""
    return tf.cast(value, like.dtype)


def _checkpointed(layer, recompute: bool):
    """`layer` (a function of one tensor) as it is, or wrapped in `tf.recompute_grad`: the
    backward pass then keeps only the layer's input and recomputes its intermediates (pad,
    convolution, normalisation) instead of storing them. Same values, same gradients."""
    return tf.recompute_grad(layer) if recompute else layer


def _frames_as_images(values: tf.Tensor) -> tf.Tensor:
    """`[b, T, H, W, C]` -> `[b*T, H, W, C]`."""
    shape = tf.shape(values)
    return tf.reshape(values, tf.concat([[-1], shape[2:]], axis=0))  # [b*T, H, W, C]


def one_after_another(function, arguments: list[list[tf.Tensor]], after: list[tf.Tensor] | None = None
                      ) -> list[tf.Tensor]:
    """`[function(*args) for args in arguments]`, each call after the previous one's result,
    the first after the tensors `after` (the end of the previous chain).

    Inside a `tf.function` the executor would otherwise run independent calls side by side and
    hold all their intermediates at once; the control dependency (on an identity, which does
    not copy) makes the peak memory that of one call. Eagerly, calls are sequential anyway.
    """
    outputs: list[tf.Tensor] = list(after or [])
    for args in arguments:
        with tf.control_dependencies(outputs[-1:]):
            args = [tf.identity(arg) for arg in args]
        outputs.append(function(*args))
    return outputs[len(after or []):]


def sum_one_after_another(function, arguments: list[list[tf.Tensor]]) -> tf.Tensor:
    """`tf.add_n([function(*args) for args in arguments])`, each term computed after the sum of
    the previous ones: the intermediates of one term alive at a time (a 3-frame window of
    FusionNet, the two halves of RegNet's pair layer), as `one_after_another`."""
    total = None
    for args in arguments:
        with tf.control_dependencies([] if total is None else [total]):
            args = [tf.identity(arg) if tf.is_tensor(arg) else arg for arg in args]
        term = function(*args)
        total = term if total is None else total + term
    return total


def frame_list(values: tf.Tensor) -> list[tf.Tensor]:
    """`[b, T, H, W, C]` (T static) -> T tensors `[b, 1, H, W, C]`."""
    return tf.split(values, values.shape[1], axis=1)


def _images_as_frames(images: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    """`[b*T, H, W, C]` -> `[b, T, H, W, C]`."""
    shape = tf.shape(images)
    return tf.reshape(images, tf.concat([[batch, -1], shape[1:]], axis=0))  # [b, T, H, W, C]


# --------------------------------------------------------------------------- the sub-networks


class SISRNet(Network):
    """Single-image feature extractor, shared over frames: 8 x (1x3x3 conv, InstanceNorm, leaky ReLU).

    `sisrnet(x)`: x `[batch, frames, H, W, channels]` -> features `[batch, frames, H, W, n_features]`.
    """

    LAYERS = 8

    def __init__(self, n_features: int = 64, channels: int = 1, seed: int = 42):
        super().__init__(name="SISRNet")
        widths = [channels] + [n_features] * self.LAYERS
        self.convs = [
            Conv(f"conv_up_{k}", [1, 3, 3, widths[k], widths[k + 1]], seed) for k in range(self.LAYERS)
        ]
        self.norms = [InstanceNorm(f"inst_norm_up_{k}", n_features) for k in range(self.LAYERS)]
        self.recompute = False  # gradient checkpointing per layer (`DeepSUM(recompute=True)`)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """Computes in the dtype of x (the model's compute precision); variables stay float32."""
        return self._frames(x)

    def frame_by_frame(self, x: tf.Tensor) -> list[tf.Tensor]:
        """The features of each frame of x `[b, T, H, W, C]`, one frame after the other: T
        tensors `[b, 1, H, W, F]` (the peak memory of one frame's intermediates)."""
        return one_after_another(self._frames, [[frame] for frame in frame_list(x)])

    def _frames(self, x: tf.Tensor) -> tf.Tensor:
        images = _frames_as_images(x)  # [b*T, H, W, C]
        for conv, norm in zip(self.convs, self.norms):
            images = _checkpointed(lambda v, conv=conv, norm=norm: self._layer(v, conv, norm), self.recompute)(images)
        return _images_as_frames(images, tf.shape(x)[0])  # [b, T, H, W, F]

    @staticmethod
    def _layer(images: tf.Tensor, conv: Conv, norm: InstanceNorm) -> tf.Tensor:
        """One layer on `[n, H, W, C]` images: 3x3 conv (reflect), InstanceNorm, leaky ReLU."""
        return _leaky_relu(norm(conv.spatial(images) + conv.bias(images), axes=[1, 2]))


class RegNet(Network):
    """Estimates one `filter_size` x `filter_size` registration filter for each frame 1..T-1.

    Every frame t >= 1 is paired with the reference frame 0; `Rconv1b` (2x3x3, temporal stride
    2) sees the pair (f_t, f_0), i.e. `conv(f_t, W[0]) + conv(f_0, W[1])`; then 1x3x3 layers
    `Rconv2b`, `Rconv3b`, `Rconv4b` (leaky ReLU) and `Rconv7_b` (no activation, one output per
    filter tap), averaged over height and width. No normalisation.

    `regnet(features)`: `[batch, T, H, W, F]` -> (filters `[batch, T-1, k, k]` (softmax, row-major
    taps), logits `[batch, T-1, k*k]`).
    """

    def __init__(self, n_features: int = 64, filter_size: int = 9, seed: int = 42):
        super().__init__(name="RegNet")
        F = n_features
        self.filter_size = filter_size
        self.pair = Conv("Rconv1b", [2, 3, 3, F, 2 * F], seed)
        self.convs = [
            Conv("Rconv2b", [1, 3, 3, 2 * F, F], seed),
            Conv("Rconv3b", [1, 3, 3, F, F], seed),
            Conv("Rconv4b", [1, 3, 3, F, F], seed),
        ]
        self.taps = Conv("Rconv7_b", [1, 3, 3, F, filter_size**2], seed)
        self.recompute = False  # gradient checkpointing per layer (`DeepSUM(recompute=True)`)

    def __call__(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._filters(self._logits(features[:, 1:], self._reference(features[:, 0])))

    def frame_by_frame(self, features: list[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """`__call__` on the T frames' features `[b, 1, H, W, F]` (a list), one frame after the other."""
        # after the last frame's features (SISRNet's chain), then the frames after the reference
        reference = one_after_another(lambda frame: self._reference(frame[:, 0]), [[features[0]]], features[-1:])[0]
        logits = one_after_another(lambda frame: self._logits(frame, reference), [[f] for f in features[1:]],
                                   reference[-1:])
        return self._filters(tf.concat(logits, axis=1))

    def _reference(self, reference: tf.Tensor) -> list[tf.Tensor]:
        """The reference frame's part of the pair layer, computed once per scene: the
        original's conv3d over the interleaved (f_t, f_0) slices is `conv(f_t, W[0]) +
        conv(f_0, W[1])`. reference: `[b, H, W, F]` -> 2 x `[b, 1, H, W, F]` (channel halves)."""
        return [self.pair.spatial(reference, kernel=kernel)[:, None] for kernel in self._halves(self.pair.W[1])]

    def _filters(self, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(filters `[b, n, k, k]` (softmax over the taps), logits `[b, n, k*k]`)."""
        shape = tf.shape(logits)
        filters = tf.reshape(tf.nn.softmax(logits, axis=-1), [shape[0], shape[1], self.filter_size, self.filter_size])
        return filters, logits

    @staticmethod
    def _halves(values: tf.Tensor, axis: int = -1) -> list[tf.Tensor]:
        """`values` split in two equal halves along `axis` (the F + F channels of the pair layer)."""
        return tf.split(values, 2, axis=axis)

    def _logits(self, others: tf.Tensor, reference: list[tf.Tensor]) -> tf.Tensor:
        """Filter logits `[b, n, k*k]` of frames `others` `[b, n, H, W, F]` given the reference
        frame's part of the pair layer `reference` (its two halves, `[b, 1, H, W, F]` each).

        The pair layer's 2F channels stay two tensors of F channels, and Rconv2b (2F -> F) is
        the sum of two F -> F convolutions: the same sums, but oneDNN runs a 2F-input 3x3
        convolution of few large images through an im2col buffer of 9 * 2F values per pixel
        (measured at 1x384x384: 0.7 GB and 4.8x the time of the two halves).
        """
        batch = tf.shape(others)[0]
        padded = reflect_pad(_frames_as_images(others))  # [b*n, H+2, W+2, F], once for both halves

        def pair_half(kernel: tf.Tensor, bias: tf.Tensor, reference_half: tf.Tensor) -> tf.Tensor:
            moving = _images_as_frames(self.pair.padded(padded, kernel=kernel), batch)  # [b, n, H, W, F]
            return _leaky_relu(_frames_as_images(moving + reference_half + bias))  # [b*n, H, W, F]

        halves = one_after_another(pair_half, list(zip(self._halves(self.pair.W[0]),
                                                       self._halves(self.pair.bias(padded)), reference)))

        def pair_to_features(half_0: tf.Tensor, half_1: tf.Tensor) -> tf.Tensor:  # Rconv2b
            # the kernel halves are sliced here: recompute_grad differentiates the variables
            # read inside the function, not tensors taken from them outside
            conv = self.convs[0]
            kernels = self._halves(conv.W[0], axis=2)  # 2 x [3, 3, F, F]
            values = sum_one_after_another(lambda half, kernel: conv.spatial(half, kernel=kernel),
                                           [[half_0, kernels[0]], [half_1, kernels[1]]])
            return _leaky_relu(values + conv.bias(half_0))

        images = _checkpointed(pair_to_features, self.recompute)(*halves)  # [b*n, H, W, F]
        for conv in self.convs[1:]:
            layer = lambda v, conv=conv: _leaky_relu(conv.spatial(v) + conv.bias(v))  # noqa: E731
            images = _checkpointed(layer, self.recompute)(images)
        taps = self.taps.spatial(images) + self.taps.bias(images)  # [b*n, H, W, k*k]
        # the mean over pixels and the softmax in float32 whatever the compute precision
        taps = tf.reduce_mean(tf.cast(taps, tf.float32), axis=[1, 2])  # [b*n, k*k]
        return tf.reshape(taps, [batch, -1, self.filter_size**2])  # [b, n, k*k]


class FusionNet(Network):
    """Fuses the registered frames: 4 x (3x3x3 conv VALID in time, InstanceNorm, leaky ReLU) and a
    1x1x1 conv to one channel, so T = 9 -> 7 -> 5 -> 3 -> 1.

    `fusionnet(features)`: `[batch, 9, H, W, F]` -> `[batch, 1, H, W, 1]` (before the residual).
    """

    LAYERS = 4

    def __init__(self, n_features: int = 64, seed: int = 42):
        super().__init__(name="FusionNet")
        F = n_features
        self.convs = [Conv(f"conv_fuse_{k}", [3, 3, 3, F, F], seed) for k in range(self.LAYERS)]
        self.norms = [InstanceNorm(f"inst_norm_fuse_{k}", F) for k in range(self.LAYERS)]
        self.output_conv = Conv(f"conv_fuse_{self.LAYERS}", [1, 1, 1, F, 1], seed)
        self.recompute = False  # gradient checkpointing per layer (`DeepSUM(recompute=True)`)

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        """Computes in the dtype of `features` (the compute precision); variables stay float32."""
        values = features
        for conv, norm in zip(self.convs, self.norms):
            values = _checkpointed(lambda v, conv=conv, norm=norm: self._layer(v, conv, norm), self.recompute)(values)
        return self._output(values)

    def frame_by_frame(self, frames: list[tf.Tensor]) -> tf.Tensor:
        """`__call__` on T frames `[b, 1, H, W, F]` (a list), one output frame after the other:
        a 3x3x3 layer's output frame t is a function of its input frames t, t+1, t+2 only (the
        instance norm is per frame), so each layer holds its input and output frames and the
        intermediates of one output frame."""
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            # a layer after the whole previous one: otherwise the executor runs the layers'
            # chains side by side, each with the intermediates of one window
            frames = one_after_another(lambda *window, conv=conv, norm=norm: self._window(window, conv, norm),
                                       [frames[t:t + 3] for t in range(len(frames) - 2)], frames[-1:] if k else None)
        return self._output(tf.concat(frames, axis=1))

    @staticmethod
    def _window(window: tuple[tf.Tensor, ...], conv: Conv, norm: InstanceNorm) -> tf.Tensor:
        """One output frame `[b, 1, H, W, F]` of a layer from its 3 input frames `[b, 1, H, W, F]`:
        the 3x3x3 kernel as three 3x3 convolutions, one per frame (the same sum, without a
        padded copy of the 3-frame window), InstanceNorm, leaky ReLU."""
        values = sum_one_after_another(lambda frame, tap: conv.spatial(frame[:, 0], tap=tap),
                                       [[frame, tap] for tap, frame in enumerate(window)])  # [b, H, W, F]
        return _leaky_relu(norm(values + conv.bias(values), axes=[1, 2]))[:, None]

    def _output(self, values: tf.Tensor) -> tf.Tensor:
        """The 1x1x1 output convolution, a matrix product over the feature axis: `[b, n, H, W, F]` -> `[b, n, H, W, 1]`."""
        output = self.output_conv
        return tf.tensordot(values, _like(output.W[0, 0, 0], values), axes=1) + output.bias(values)

    @staticmethod
    def _layer(values: tf.Tensor, conv: Conv, norm: InstanceNorm) -> tf.Tensor:
        """One layer, `[b, T, H, W, F]` -> `[b, T-2, H, W, F]`: 3x3x3 conv (reflect in space,
        valid in time), InstanceNorm, leaky ReLU."""
        return _leaky_relu(norm(conv.volume(values) + conv.bias(values), axes=[2, 3]))


# --------------------------------------------------------------------------- parameter-free steps


def register_frames(values: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
    """Filter frames 1..T-1 with their own registration filter; frame 0 passes unchanged.

    values: `[batch, T, H, W, C]`; filters: `[batch, T-1, k, k]`. Returns `[batch, T, H, W, C]`.
    Each frame is padded by k//2 with REFLECT and cross-correlated with its filter, the same
    filter for every channel: `out[y, x] = sum_ij f[i, j] * in[y + i - k//2, x + j - k//2]`.
    So a one-hot filter at tap `(dy + k//2, dx + k//2)` (flat index `k*(dy+k//2) + dx+k//2`, i.e.
    `9*(dy+4) + (dx+4)` for k = 9) gives `out[y, x] = in[y + dy, x + dx]`: the content moves by
    `(-dy, -dx)`, as the original's masks translated with `fourier_shift(mask, -shift)`.

    Implementation: a depthwise convolution with the (batch, frame) pairs as channels and the
    feature channels as the batch, so every filter is used as it is (no tiling over channels).
    Measured at batch 2, 8 x 96x96x64 on 2 CPU cores: 0.33 s forward / 0.92 s forward+backward,
    against 0.32 / 3.9 s for the original layout (channels tiled) and 2.9 / 18 s for a sum of
    81 shifted slices.
    """
    return tf.concat([values[:, :1], _filter_frames(values[:, 1:], filters)], axis=1)


def register_frame_by_frame(frames: list[tf.Tensor], filters: tf.Tensor) -> list[tf.Tensor]:
    """`register_frames` on T frames `[b, 1, H, W, C]` (a list), one frame after the other."""
    moved = one_after_another(_filter_frames, [[frame, filters[:, t:t + 1]] for t, frame in enumerate(frames[1:])])
    return [frames[0], *moved]


def _filter_frames(values: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
    """Every frame of values `[b, n, H, W, C]` cross-correlated with its filter `[b, n, k, k]`."""
    k = filters.shape[-1]
    pad = k // 2
    shape = tf.shape(values)
    batch, frames, height, width, channels = shape[0], shape[1], shape[2], shape[3], shape[4]
    padded = tf.pad(values, [[0, 0], [0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    padded = tf.transpose(padded, [4, 2, 3, 0, 1])  # [C, H+2p, W+2p, b, n]
    padded = tf.reshape(padded, [channels, height + 2 * pad, width + 2 * pad, batch * frames])  # [C, H+2p, W+2p, b*n]
    kernel = tf.transpose(_like(filters, values), [2, 3, 0, 1])  # [k, k, b, n]
    kernel = tf.reshape(kernel, [k, k, batch * frames, 1])  # [k, k, b*n, 1]
    moved = tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")  # [C, H, W, b*n]
    moved = tf.reshape(moved, [channels, height, width, batch, frames])  # [C, H, W, b, n]
    return tf.transpose(moved, [3, 4, 1, 2, 0])  # [b, n, H, W, C]


def fill_masked(values: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Replace the cloudy pixels of each frame by the value of the lowest-index clear frame.

    values: `[batch, T, H, W, C]`; masks: `[batch, T, H, W, 1]` bool, true = clear.
    Frame t keeps its value where it is clear; elsewhere it takes the value of the lowest-index
    frame clear at that pixel; where no frame is clear it keeps its own value (the original's
    `fill_coeff` rule, `libraries.preprocessing.fill_coefficients`). Two selects, no gather and
    no `[b, T, T, ...]` tensor.
    """
    first_clear, keep_own = _fill_rule(masks)
    # A sum of one value and exact zeros: the first clear frame's value, bit for bit (a scalar
    # zero broadcast by tf.where: no zeros tensor the size of values).
    first_value = tf.reduce_sum(tf.where(first_clear, values, tf.zeros([], values.dtype)), axis=1, keepdims=True)
    return tf.where(keep_own, values, first_value)  # [b, T, H, W, C]


def fill_masked_frame_by_frame(frames: list[tf.Tensor], masks: tf.Tensor) -> list[tf.Tensor]:
    """`fill_masked` on T frames `[b, 1, H, W, C]` (a list): the same values, bit for bit, with
    the first clear value gathered by a chain of selects instead of a sum over all frames."""
    first_clear, keep_own = _fill_rule(masks)
    first_value = tf.zeros([], frames[0].dtype)
    for t, frame in enumerate(frames):  # first_clear is one-hot over t: one select picks each pixel
        first_value = tf.where(first_clear[:, t:t + 1], frame, first_value)  # [b, 1, H, W, C]
    return [tf.where(keep_own[:, t:t + 1], frame, first_value) for t, frame in enumerate(frames)]


def _fill_rule(masks: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(first_clear: the lowest-index clear frame of each pixel, one-hot over T (all false if
    none is clear); keep_own: the frame keeps its value (clear, or no frame clear)), both
    `[b, T, H, W, 1]` bool, from the clear masks `[b, T, H, W, 1]`."""
    clear = tf.cast(masks, tf.bool)
    clear_so_far = tf.cumsum(tf.cast(clear, tf.int32), axis=1)  # [b, T, H, W, 1]
    return clear & tf.equal(clear_so_far, 1), clear | tf.equal(clear_so_far[:, -1:], 0)


# --------------------------------------------------------------------------- the whole network


class DeepSUM(Network):
    """DeepSUM: `model(x, masks) -> {"sr", "filters", "filter_logits", "x_registered"}`.

    config: a `DeepSUMConfig` (None: `default_config()`); uses `n_features`, `T_in`, `channels`,
    `filter_size`, `sigma`, `sigma_rescaled`, `seed` (initialisation) and `precision`: the
    networks compute in that dtype (`compute_dtype`; float32, bfloat16 or float16) while the
    variables, the instance-norm moments, the registration filters (softmax), the registration
    and fill of x, the residual and every output stay float32.
    recompute: gradient checkpointing (`tf.recompute_grad`) of every layer of SISRNet, of
    RegNet's 1x3x3 layers and of FusionNet's 3x3x3 layers, for training: the backward pass
    recomputes each layer's intermediates from its input instead of keeping them. Same values
    and gradients, less memory, a little more time (`recompute` attribute, read when traced).
    The kernels' gradients are computed by XLA when `config.xla_kernel_gradients` (the
    default; `conv2d`, `conv3d`).
    frame_by_frame: run the network one frame at a time (attribute of the same name): SISRNet,
    RegNet and the registration frame by frame, FusionNet output frame by output frame. Same
    values; the peak memory of about two sets of frames instead of several (inference of whole
    scenes); False: every frame in one pass (faster on small images, and training).
    """

    def __init__(self, config: DeepSUMConfig | None = None, recompute: bool = False, frame_by_frame: bool = False):
        super().__init__(name="DeepSUM")
        self.config = default_config() if config is None else config
        c = self.config
        self.compute_dtype = tf.as_dtype(c.precision)
        self.sisrnet = SISRNet(c.n_features, c.channels, c.seed)
        self.regnet = RegNet(c.n_features, c.filter_size, c.seed)
        self.fusionnet = FusionNet(c.n_features, c.seed)
        self.residual_scale = float(c.sigma / c.sigma_rescaled)  # x scale -> output scale
        for conv in self._convs():
            conv.xla_kernel_gradient = c.xla_kernel_gradients
        self.recompute = recompute
        self.frame_by_frame = frame_by_frame

    def _convs(self) -> list[Conv]:
        return [m for m in self.submodules if isinstance(m, Conv)]

    @property
    def recompute(self) -> bool:
        """Whether the sub-networks' layers are checkpointed (`tf.recompute_grad`); settable."""
        return self.sisrnet.recompute

    @recompute.setter
    def recompute(self, value: bool) -> None:
        for network in (self.sisrnet, self.regnet, self.fusionnet):
            network.recompute = bool(value)

    def __call__(self, x, masks, training: bool = False) -> dict[str, tf.Tensor]:
        """Super-resolve a batch of scenes.

        x: `[batch, T, H, W, 1]` float32 bicubic frames `(v - mu) / sigma`, frame 0 the reference.
        masks: `[batch, T, H, W, 1]` bool or 0/1, registered clear masks (true = clear).
        training: accepted for a Keras-like call; the network has no training-only layers.
        Returns `sr` `[batch, 1, H, W, 1]` (`(v - mu) / sigma_rescaled`), `filters`
        `[batch, T-1, k, k]`, `filter_logits` `[batch, T-1, k*k]`, `x_registered`
        `[batch, T, H, W, 1]` (registered and filled inputs).
        """
        del training  # same computation in training and inference
        x, clear = self.check_inputs(x, masks)
        frames = tf.cast(x, self.compute_dtype)
        if self.frame_by_frame:
            return self._forward_frame_by_frame(self.sisrnet.frame_by_frame(frames), x, clear)
        return self._forward(self.sisrnet(frames), x, clear)

    def sisrnet_features(self, x) -> tf.Tensor:
        """SISRNet's features of every frame: x `[batch, frames, H, W, 1]` (any number of frames,
        normalised as for `__call__`) -> `[batch, frames, H, W, F]` in `compute_dtype`.

        SISRNet sees one frame at a time, so sliding-window inference can compute each frame's
        features once per scene and gather the windows' frames from them
        (`forward_from_features`) instead of recomputing them for every window.
        """
        x, _ = self.check_inputs(x, x, any_frames=True)  # no masks: x stands in for them
        frames = tf.cast(x, self.compute_dtype)
        if not self.frame_by_frame:
            return self.sisrnet(frames)
        # a sequential loop: the number of frames may be known only when the function runs
        per_frame = tf.map_fn(lambda frame: self.sisrnet(frame[:, None])[:, 0], tf.transpose(frames, [1, 0, 2, 3, 4]),
                              parallel_iterations=1, fn_output_signature=self.compute_dtype)  # [frames, b, H, W, F]
        return tf.transpose(per_frame, [1, 0, 2, 3, 4])

    def forward_from_features(self, features, x, masks) -> dict[str, tf.Tensor]:
        """`__call__` from precomputed SISRNet features `[batch, T, H, W, F]` (`sisrnet_features`
        of the same frames x); x, masks as for `__call__`. Same outputs, same values."""
        x, clear = self.check_inputs(x, masks)
        features = tf.cast(features, self.compute_dtype)
        if self.frame_by_frame:
            return self._forward_frame_by_frame(frame_list(features), x, clear)
        return self._forward(features, x, clear)

    def _forward(self, features: tf.Tensor, x: tf.Tensor, clear: tf.Tensor) -> dict[str, tf.Tensor]:
        """RegNet, registration, fill and FusionNet on SISRNet's `features` `[b, T, H, W, F]`."""
        filters, logits = self.regnet(features)
        fused = self.fusionnet(fill_masked(register_frames(features, filters), clear))
        return self._outputs(fused, filters, logits, x, clear)

    def _forward_frame_by_frame(self, features: list[tf.Tensor], x: tf.Tensor, clear: tf.Tensor) -> dict[str, tf.Tensor]:
        """`_forward` on the T frames' features `[b, 1, H, W, F]` (a list), frame by frame."""
        filters, logits = self.regnet.frame_by_frame(features)
        registered = register_frame_by_frame(features, filters)
        fused = self.fusionnet.frame_by_frame(fill_masked_frame_by_frame(registered, clear))
        return self._outputs(fused, filters, logits, x, clear)

    def _outputs(self, fused: tf.Tensor, filters: tf.Tensor, logits: tf.Tensor, x: tf.Tensor,
                 clear: tf.Tensor) -> dict[str, tf.Tensor]:
        """The outputs, from FusionNet's `fused` `[b, 1, H, W, 1]`: plus the residual, the mean of
        the registered and filled frames x."""
        x_registered = fill_masked(register_frames(x, filters), clear)  # [b, T, H, W, 1]
        residual = tf.reduce_mean(x_registered, axis=1, keepdims=True) * self.residual_scale
        sr = tf.cast(fused, tf.float32) + residual  # [b, 1, H, W, 1]
        return {"sr": sr, "filters": filters, "filter_logits": logits, "x_registered": x_registered}

    def check_inputs(self, x, masks, any_frames: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Validate `x` and `masks`; return x as float32 and masks as bool. Raises `InputError`.
        any_frames: accept any number of frames (SISRNet alone), not only `T_in`."""
        c = self.config
        x, masks = (v if tf.is_tensor(v) else np.asarray(v) for v in (x, masks))
        expected = f"[batch, {'frames' if any_frames else c.T_in}, height, width, {c.channels}]"
        min_side = c.filter_size
        for name, value in (("x", x), ("masks", masks)):
            shape = tf.TensorShape(value.shape)
            frames_ok = any_frames or shape.rank != 5 or shape[1] in (None, c.T_in)
            if shape.rank != 5 or not frames_ok or shape[4] not in (None, c.channels):
                raise InputError(f"{name}: expected shape {expected}, got {shape}")
            for side in shape[2:4]:
                if side is not None and side < min_side:
                    raise InputError(f"{name}: expected height and width >= {min_side}, got shape {shape}")
        if tf.as_dtype(x.dtype) != tf.float32:
            raise InputError(f"x: expected dtype float32, got {tf.as_dtype(x.dtype).name}")
        if not tf.TensorShape(x.shape).is_compatible_with(masks.shape):
            raise InputError(f"masks: expected the shape of x {tuple(x.shape)}, got {tuple(masks.shape)}")
        mask_dtype = tf.as_dtype(masks.dtype)
        if not (mask_dtype == tf.bool or mask_dtype.is_integer or mask_dtype.is_floating):
            raise InputError(f"masks: expected dtype bool or 0/1 numbers, got {mask_dtype.name}")
        x = tf.convert_to_tensor(x, tf.float32)
        masks = tf.convert_to_tensor(masks)
        clear = masks if mask_dtype == tf.bool else tf.not_equal(masks, 0)
        if tf.executing_eagerly():
            if not bool(tf.reduce_all(tf.math.is_finite(x))):
                raise InputError("x: contains NaN or Inf values; expected finite normalised frames")
        else:
            x = tf.debugging.assert_all_finite(x, "x: contains NaN or Inf values; expected finite normalised frames")
        return x, clear


def count_parameters(module: tf.Module) -> int:
    """Number of trainable scalars of a (sub-)network."""
    return int(sum(np.prod(v.shape) for v in module.trainable_variables))
