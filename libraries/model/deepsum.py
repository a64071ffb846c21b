"""DeepSUM: SISRNet -> RegNet -> dynamic registration -> fill -> FusionNet + residual.

The two parameter-free steps between the sub-networks (`register_frames`, `fill_masked`) and
`DeepSUM`, which composes them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from libraries import domain
from libraries.config import DeepSUMConfig, default_config
from libraries.model.layers import Conv, Network, cast_like, compute_dtype, frame_list, one_after_another
from libraries.model.networks import FusionNet, RegNet, SISRNet


class InputError(domain.DeepSUMError):
    """An input tensor of the wrong rank, shape or dtype, or with NaN/Inf values."""


def register_frames(values: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
    """Filter frames 1..T-1 with their own registration filter; frame 0 passes unchanged.

    values: `[batch, T, H, W, C]`; filters: `[batch, T-1, k, k]`. Returns `[batch, T, H, W, C]`.
    Each frame is padded by k//2 with REFLECT and cross-correlated with its filter, the same
    filter for every channel: `out[y, x] = sum_ij f[i, j] * in[y + i - k//2, x + j - k//2]`.
    So a one-hot filter at tap `(dy + k//2, dx + k//2)` (flat index `k*(dy+k//2) + dx+k//2`, i.e.
    `9*(dy+4) + (dx+4)` for k = 9) gives `out[y, x] = in[y + dy, x + dx]`: the content moves by
    `(-dy, -dx)`, as the original's masks translated with `fourier_shift(mask, -shift)`.
    """
    # split, not sliced: the gradient of a split is one concatenation, that of each slice a
    # zero-filled tensor of the whole size (measured 1.08x on a bfloat16 training step, with RegNet's)
    reference, others = tf.split(values, [1, -1], axis=1)
    return tf.concat([reference, _filter_frames(others, filters)], axis=1)


def register_frame_by_frame(frames: list[tf.Tensor], filters: tf.Tensor) -> list[tf.Tensor]:
    """`register_frames` on T frames `[b, 1, H, W, C]` (a list), one frame after the other."""
    moved = one_after_another(_filter_frames, [[frame, filters[:, t:t + 1]] for t, frame in enumerate(frames[1:])])
    return [frames[0], *moved]


def _filter_frames(values: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
    """Every frame of values `[b, n, H, W, C]` cross-correlated with its filter `[b, n, k, k]`
    by a depthwise convolution, in float32 whatever the compute precision (oneDNN's depthwise
    convolution and its filter gradient ran 2.8x faster in float32, casts included, than in
    bfloat16, at a training step's shape on an AVX-512/AMX CPU; in float32 the casts are the
    identity). One call of it uses one filter for all the images of its batch axis, so either
    the b*n frames are its channels and the C channels its batch (`[C, H, W, b*n]`, a
    transpose each way), or it runs image by image with the channels as channels
    (`registers_image_by_image` says which).
    """
    if registers_image_by_image(values.shape[-1], values.shape[1]):
        return _filter_image_by_image(values, filters)
    return _filter_frames_as_channels(values, filters)


def registers_image_by_image(channels: int | None, frames: int | None) -> bool:
    """Whether `_filter_frames` runs values of `channels` channels and `frames` frames (static
    sizes, None if not known) image by image: one frame of several channels (frame-by-frame
    inference), where the frames as channels would be one channel, oneDNN's slow case. Measured
    by `bench/registration.py` on an AMD EPYC Zen 3 (AVX2, 2 cores), image by image against the
    frames as channels: one 384x384x64 frame 0.044 s / 0.124 s; a 1x8x384x384x64 scene 0.357 s /
    0.292 s; a training batch 8x8x96x96x64, forward and backward, 0.956 s / 1.03 s (0.93-1.09x
    across runs); x, one channel, 1x8x384x384x1: 0.020 s / 0.0055 s. On an AMD EPYC Zen 4
    (AVX-512): one frame 0.026 s / 0.129 s, x 0.021 s / 0.006 s; the scene and the training batch
    0.200 s / 0.236 s and 0.795 s / 0.945 s in one run, 0.225 s / 0.223 s and 0.900 s / 0.986 s in
    another: the stacks of several frames and channels trade places within the noise on both CPUs,
    and the registration is 2-4% of a pass, so they keep one layout.
    """
    return frames == 1 and channels != 1


def _filter_image_by_image(values: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
    """`_filter_frames` one image `[H, W, C]` after the other, with its channels as the channels."""
    k = filters.shape[-1]
    pad = k // 2
    shape = tf.shape(values)
    images = tf.reshape(values, tf.concat([[-1], shape[2:]], axis=0))  # [b*n, H, W, C]: the same buffer
    image_filters = tf.reshape(tf.cast(filters, tf.float32), [-1, k, k])  # [b*n, k, k]

    def filter_image(image_and_filter: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        image, image_filter = image_and_filter  # [H, W, C], [k, k]
        padded = tf.pad(tf.cast(image, tf.float32)[None], [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        kernel = tf.broadcast_to(image_filter[:, :, None, None], [k, k, shape[-1], 1])  # [k, k, C, 1]
        moved = tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")  # [1, H, W, C]
        return cast_like(moved[0], values)

    # one image at a time: the intermediates of one image alive, not those of all
    moved = tf.map_fn(filter_image, (images, image_filters), parallel_iterations=1, fn_output_signature=values.dtype)
    return tf.reshape(moved, shape)  # [b, n, H, W, C]


def _filter_frames_as_channels(values: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
    """`_filter_frames` with the b*n frames as the channels and the C channels as the batch."""
    k = filters.shape[-1]
    pad = k // 2
    shape = tf.shape(values)
    batch, frames, height, width, channels = shape[0], shape[1], shape[2], shape[3], shape[4]
    padded = tf.pad(values, [[0, 0], [0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    padded = tf.transpose(padded, [4, 2, 3, 0, 1])  # [C, H+2p, W+2p, b, n]
    padded = tf.reshape(padded, [channels, height + 2 * pad, width + 2 * pad, batch * frames])  # [C, H+2p, W+2p, b*n]
    kernel = tf.transpose(tf.cast(filters, tf.float32), [2, 3, 0, 1])  # [k, k, b, n]
    kernel = tf.reshape(kernel, [k, k, batch * frames, 1])  # [k, k, b*n, 1]
    moved = tf.nn.depthwise_conv2d(tf.cast(padded, tf.float32), kernel, strides=[1, 1, 1, 1], padding="VALID")
    moved = cast_like(moved, values)  # [C, H, W, b*n]
    moved = tf.reshape(moved, [channels, height, width, batch, frames])  # [C, H, W, b, n]
    return tf.transpose(moved, [3, 4, 1, 2, 0])  # [b, n, H, W, C]


def fill_masked(values: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Replace the cloudy pixels of each frame by the value of the lowest-index clear frame.

    values: `[batch, T, H, W, C]`; masks: `[batch, T, H, W, 1]` bool, true = clear.
    Frame t keeps its value where it is clear; elsewhere it takes the value of the lowest-index
    frame clear at that pixel; where no frame is clear it keeps its own value (the original's
    `fill_coeff` rule). Two selects, no gather and
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


def _network_setting(name: str, doc: str) -> property:
    """A settable attribute of `DeepSUM` held by its three sub-networks: read from SISRNet, set on all."""
    def set_all(model: DeepSUM, value: bool) -> None:
        for network in (model.sisrnet, model.regnet, model.fusionnet):
            setattr(network, name, bool(value))

    return property(lambda model: getattr(model.sisrnet, name), set_all, doc=doc)


class DeepSUM(Network):
    """DeepSUM: `model(x, masks) -> {"sr", "filters", "filter_logits", "x_registered"}`.

    config: a `DeepSUMConfig` (None: `default_config()`); uses `n_features`, `T_in`, `channels`,
    `filter_size`, `sigma`, `sigma_rescaled`, `seed` (initialisation) and `precision`: the
    networks compute in its compute type (`compute_dtype`: float32, or bfloat16 / float16 for
    `mixed_bfloat16` / `mixed_float16`) while the
    variables, the instance-norm moments, the registration filters (softmax), the registration
    and fill of x, the residual and every output stay float32.
    recompute: gradient checkpointing (`tf.recompute_grad`) of every layer of SISRNet, of
    RegNet's 1x3x3 layers and of FusionNet's 3x3x3 layers, for training: the backward pass
    recomputes each layer's intermediates from its input instead of keeping them. Same values
    and gradients, less memory, a little more time (`recompute` attribute, read when traced).
    The kernels' gradients are computed as `config.xla_kernel_gradients` says (by default the
    faster of oneDNN and XLA on this machine; `libraries.model.kernel_gradients`), the
    convolutions of a reduced precision on its own kernels or in float32 on the rounded values
    as `config.reduced_precision_kernels` says (by default as the machine has such kernels;
    `libraries.model.hardware`).
    frame_by_frame: run the network one frame at a time (attribute of the same name): SISRNet,
    RegNet and the registration frame by frame, FusionNet output frame by output frame. Same
    values; the peak memory of about two sets of frames instead of several (inference of whole
    scenes); False: every frame in one pass (faster on small images, and training).
    fused: each layer's element-wise work (bias, InstanceNorm, leaky ReLU, the next layer's
    padding) as one XLA computation (attribute of the same name; `layers.finish`), for
    inference where `libraries.model.fusion` measures it faster. Same values up to the
    rounding of the compute precision (float32: about 1e-6 relative).
    strips: each image of the 2-D convolutions as that many horizontal strips batched together
    (attribute of the same name; `layers.in_strips`), for frame-by-frame inference where
    `libraries.model.strips` measures it faster. Same values up to float32 summation order.
    """

    def __init__(self, config: DeepSUMConfig | None = None, recompute: bool = False, frame_by_frame: bool = False,
                 fused: bool = False, strips: int = 1):
        super().__init__(name="DeepSUM")
        self.config = default_config() if config is None else config
        c = self.config
        self.compute_dtype = compute_dtype(c.precision)
        self.sisrnet = SISRNet(c.n_features, c.channels, c.seed)
        self.regnet = RegNet(c.n_features, c.filter_size, c.seed)
        self.fusionnet = FusionNet(c.n_features, c.seed)
        self.residual_scale = float(c.sigma / c.sigma_rescaled)  # x scale -> output scale
        for conv in self._convs():
            conv.xla_kernel_gradient = c.xla_kernel_gradients
            conv.native_kernels = c.reduced_precision_kernels
        self.recompute = recompute
        self.frame_by_frame = frame_by_frame
        self.fused = fused
        self.strips = strips

    def _convs(self) -> list[Conv]:
        return [m for m in self.submodules if isinstance(m, Conv)]

    @property
    def strips(self) -> int:
        """Horizontal strips per image of every 2-D convolution (`layers.in_strips`; 1: whole images)."""
        return self.sisrnet.convs[0].strips

    @strips.setter
    def strips(self, count: int) -> None:
        for conv in self._convs():
            conv.strips = int(count)

    recompute = _network_setting("recompute", "Whether the sub-networks' layers are checkpointed (`tf.recompute_grad`).")
    fused = _network_setting("fused", "Whether each layer's element-wise work is one XLA computation (`layers.finish`).")

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
                    raise InputError(f"{name}: expected height and width >= {min_side} (the config's filter_size), "
                                     f"got shape {shape}")
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
