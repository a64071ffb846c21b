"""The three sub-networks: SISRNet (features), RegNet (registration filters), FusionNet.

Shapes are `[batch, frames, height, width, channels]` (T = 9 frames, F = 64 features). For
speed, the 1x3x3 convolutions of SISRNet and RegNet run as 2-D convolutions over
`batch * frames` images, RegNet's first (2x3x3, temporal stride 2) layer convolves the
reference frame once and broadcasts it, and FusionNet uses 3-D convolutions. For memory, each
sub-network can also run frame by frame (its `frame_by_frame` method takes and gives lists of
frames). Each layer ends with `finish` (bias, InstanceNorm, leaky ReLU and the next layer's
reflect padding), one XLA computation when the network's `fused` attribute is set.
"""

from __future__ import annotations

import tensorflow as tf

from libraries.model.layers import (Conv, InstanceNorm, Network, checkpointed, finish, frame_list, frames_as_images,
                                    images_as_frames, one_after_another, reflect_pad, sum_one_after_another)


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
        self.fused = False  # each layer's element-wise work in one XLA computation (`DeepSUM(fused=True)`)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """Computes in the dtype of x (the model's compute precision); variables stay float32."""
        return self._frames(x)

    def frame_by_frame(self, x: tf.Tensor) -> list[tf.Tensor]:
        """The features of each frame of x `[b, T, H, W, C]`, one frame after the other: T
        tensors `[b, 1, H, W, F]` (the peak memory of one frame's intermediates)."""
        return one_after_another(self._frames, [[frame] for frame in frame_list(x)])

    def _frames(self, x: tf.Tensor) -> tf.Tensor:
        images = reflect_pad(frames_as_images(x))  # [b*T, H+2, W+2, C]
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            layer = lambda v, conv=conv, norm=norm, pad=k < self.LAYERS - 1: self._layer(v, conv, norm, pad)  # noqa: E731
            images = checkpointed(layer, self.recompute)(images)
        return images_as_frames(images, tf.shape(x)[0])  # [b, T, H, W, F]

    def _layer(self, padded: tf.Tensor, conv: Conv, norm: InstanceNorm, pad: bool) -> tf.Tensor:
        """One layer on padded images `[n, H+2, W+2, C]`: 3x3 conv, InstanceNorm, leaky ReLU, and the
        next layer's padding when `pad` -> `[n, H(+2), W(+2), F]`."""
        return finish(conv.padded(padded), conv.b, norm, pad, self.fused)


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
        self.fused = False  # each layer's element-wise work in one XLA computation (`DeepSUM(fused=True)`)

    def __call__(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        reference, others = tf.split(features, [1, -1], axis=1)  # split: see `register_frames`
        return self._filters(self._logits(others, self._reference(tf.squeeze(reference, 1))))

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
        padded = reflect_pad(frames_as_images(others))  # [b*n, H+2, W+2, F], once for both halves

        def pair_half(kernel: tf.Tensor, bias: tf.Tensor, reference_half: tf.Tensor) -> tf.Tensor:
            moving = images_as_frames(self.pair.padded(padded, kernel=kernel), batch)  # [b, n, H, W, F]
            return finish(frames_as_images(moving + reference_half), bias, fused=self.fused)  # [b*n, H+2, W+2, F]

        halves = one_after_another(pair_half, list(zip(self._halves(self.pair.W[0]), self._halves(self.pair.b),
                                                       reference)))

        def pair_to_features(half_0: tf.Tensor, half_1: tf.Tensor) -> tf.Tensor:  # Rconv2b
            # the kernel halves are sliced here: recompute_grad differentiates the variables
            # read inside the function, not tensors taken from them outside
            conv = self.convs[0]
            kernels = self._halves(conv.W[0], axis=2)  # 2 x [3, 3, F, F]
            values = sum_one_after_another(lambda half, kernel: conv.padded(half, kernel=kernel),
                                           [[half_0, kernels[0]], [half_1, kernels[1]]])
            return finish(values, conv.b, fused=self.fused)

        images = checkpointed(pair_to_features, self.recompute)(*halves)  # [b*n, H+2, W+2, F]
        for conv in self.convs[1:]:
            layer = lambda v, conv=conv: finish(conv.padded(v), conv.b, fused=self.fused)  # noqa: E731
            images = checkpointed(layer, self.recompute)(images)
        taps = self.taps.padded(images) + self.taps.bias(images)  # [b*n, H, W, k*k]
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
        self.fused = False  # each layer's element-wise work in one XLA computation (`DeepSUM(fused=True)`)

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        """Computes in the dtype of `features` (the compute precision); variables stay float32."""
        values = reflect_pad(features)  # [b, T, H+2, W+2, F]
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            layer = lambda v, conv=conv, norm=norm, pad=k < self.LAYERS - 1: self._layer(v, conv, norm, pad)  # noqa: E731
            values = checkpointed(layer, self.recompute)(values)
        return self._output(values)

    def frame_by_frame(self, frames: list[tf.Tensor]) -> tf.Tensor:
        """`__call__` on T frames `[b, 1, H, W, F]` (a list), one output frame after the other:
        a 3x3x3 layer's output frame t is a function of its input frames t, t+1, t+2 only (the
        instance norm is per frame), so each layer holds its input and output frames and the
        intermediates of one output frame. The first layer pads its input frames as it reads them
        (no padded copy of all T); the later layers' input frames come padded (`finish`)."""
        images = [frame[:, 0] for frame in frames]  # T x [b, H, W, F]
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            # a layer after the whole previous one: otherwise the executor runs the layers'
            # chains side by side, each with the intermediates of one window
            window = lambda *window, conv=conv, norm=norm, k=k: self._window(window, conv, norm, k)  # noqa: E731
            images = one_after_another(window, [images[t:t + 3] for t in range(len(images) - 2)],
                                       images[-1:] if k else None)
        return self._output(tf.stack(images, axis=1))

    def _window(self, window: tuple[tf.Tensor, ...], conv: Conv, norm: InstanceNorm, k: int) -> tf.Tensor:
        """One output frame of layer `k` from its 3 input frames (`[b, H, W, F]`, padded
        `[b, H+2, W+2, F]` after the first layer): the 3x3x3 kernel as three 3x3 convolutions,
        one per frame (the same sum, without a copy of the 3-frame window), InstanceNorm, leaky
        ReLU, and the next layer's padding -> `[b, H(+2), W(+2), F]`."""
        convolve = conv.padded if k else conv.spatial
        values = sum_one_after_another(lambda frame, tap: convolve(frame, tap=tap),
                                       [[frame, tap] for tap, frame in enumerate(window)])  # [b, H, W, F]
        return finish(values, conv.b, norm, k < self.LAYERS - 1, self.fused)

    def _output(self, values: tf.Tensor) -> tf.Tensor:
        """The 1x1x1 output convolution, a matrix product over the feature axis: `[b, n, H, W, F]` -> `[b, n, H, W, 1]`."""
        output = self.output_conv
        # in float32 whatever the compute precision: the sum over F features of the last layer
        # is the network's output, whose rounding a bfloat16 result would carry into every pixel
        values = tf.cast(values, tf.float32)
        return tf.tensordot(values, output.W[0, 0, 0], axes=1) + output.b

    def _layer(self, padded: tf.Tensor, conv: Conv, norm: InstanceNorm, pad: bool) -> tf.Tensor:
        """One layer on frames padded in space, `[b, T, H+2, W+2, F]` -> `[b, T-2, H(+2), W(+2), F]`:
        3x3x3 conv (valid in time), InstanceNorm, leaky ReLU, and the next layer's padding when `pad`."""
        return finish(conv.volume(padded), conv.b, norm, pad, self.fused)
