"""The building blocks of the three sub-networks: convolutions, InstanceNorm, sequencing.

Every variable has exactly the shape it had in the authors' TF1 graph (conv kernels
`[kt, kh, kw, in, out]`) and is listed under its TF1 name by `tf1_variables()`, so an authors'
checkpoint is a name-by-name copy (`libraries.checkpoints`).

In training, the convolutions' kernel gradients are computed by oneDNN or by XLA, whichever
is faster on the machine at hand (`conv2d`, `conv3d`, `libraries.model.kernel_gradients`).
Between two convolutions a layer's element-wise work (bias, InstanceNorm, leaky ReLU and the
next layer's reflect padding, `finish`) runs as TensorFlow's separate ops or, in inference, as
one XLA computation (`libraries.model.fusion` measures which is faster).
"""

from __future__ import annotations

import functools
import zlib

import tensorflow as tf

from libraries import config as config_module
from libraries.model import hardware, kernel_gradients

LEAKY_SLOPE = 0.2  # tf.nn.leaky_relu's default, as in the original
NORM_EPSILON = 1e-3  # the original InstanceNorm's epsilon


def _seed(seed: int, name: str) -> int:
    """A per-variable seed: the same model seed gives the same weights whatever the build order."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def conv2d(padded: tf.Tensor, kernel: tf.Tensor, xla_kernel_gradient: bool | str = "auto",
           native: bool | str = "auto") -> tf.Tensor:
    """VALID 2-D cross-correlation: padded `[n, H+kh-1, W+kw-1, in]`, kernel `[kh, kw, in, out]`
    -> `[n, H, W, out]`, as `tf.nn.conv2d`, in the dtype of both.

    xla_kernel_gradient: how the kernel's gradient is computed (`libraries.model.kernel_gradients`):
    True by XLA, False by TensorFlow's own kernel, "auto" by whichever a measurement on this
    machine finds faster (decided when the gradient is first built, so inference never measures).
    Same values up to float32 summation order. Only float32 takes this path.
    native: in bfloat16 or float16, whether TensorFlow's kernels for that dtype run (true) or
    the float32 ones on the same values, rounded back (false); "auto": as
    `hardware.native_kernels` finds for this machine (`config.reduced_precision_kernels`).
    """
    if not hardware.native_kernels(kernel.dtype, native):
        return in_float32(conv2d, padded, kernel, xla_kernel_gradient)
    if xla_kernel_gradient is False or kernel.dtype != tf.float32:
        return tf.nn.conv2d(padded, kernel, strides=1, padding="VALID")
    return _conv2d_with_kernel_gradient(xla_kernel_gradient)(padded, kernel)


def conv3d(padded: tf.Tensor, kernel: tf.Tensor, xla_kernel_gradient: bool | str = "auto",
           native: bool | str = "auto") -> tf.Tensor:
    """VALID 3-D cross-correlation: padded `[b, T, H+2, W+2, in]`, kernel `[kt, 3, 3, in, out]`
    -> `[b, T-kt+1, H, W, out]`, as `tf.nn.conv3d`, in the dtype of both.

    xla_kernel_gradient and native as for `conv2d`; by XLA the kernel's gradient is kt 2-D
    kernel gradients (time tap t pairs input frames t.. with the output frames): 3.6x faster
    than oneDNN's 3-D weight-gradient convolution at 8x9x96x96x64 on an AVX2 CPU. Float32 only.
    """
    if not hardware.native_kernels(kernel.dtype, native):
        return in_float32(conv3d, padded, kernel, xla_kernel_gradient)
    if xla_kernel_gradient is False or kernel.dtype != tf.float32:
        return tf.nn.conv3d(padded, kernel, strides=[1] * 5, padding="VALID")
    return _conv3d_with_kernel_gradient(xla_kernel_gradient)(padded, kernel)


def in_float32(convolution, padded: tf.Tensor, kernel: tf.Tensor, xla_kernel_gradient: bool | str) -> tf.Tensor:
    """`convolution` (`conv2d` or `conv3d`) of bfloat16 or float16 `padded` and `kernel`
    computed in float32 and rounded back: the products of the rounded values summed in float32,
    as hardware made for the reduced precision computes them (`libraries.model.hardware`).
    The gradients flow through the casts: float32 kernels, rounded like the activations."""
    widened = convolution(tf.cast(padded, tf.float32), tf.cast(kernel, tf.float32), xla_kernel_gradient)
    return tf.cast(widened, padded.dtype)


def in_strips(convolve, padded: tf.Tensor, kernel_rows: int, strips: int) -> tf.Tensor:
    """`convolve(padded)`, a VALID convolution with `kernel_rows` rows of padded images
    `[n, H+kernel_rows-1, W', C]` -> `[n, H, W, out]`, computed on `strips` horizontal strips
    batched as `n * strips` images: strip i holds the output rows from i * ceil(H / strips) on,
    with the `kernel_rows - 1` input rows below them that the kernel reads. The same sums as one
    pass; for oneDNN builds whose kernel for one image is slower than for several
    (`libraries.model.strips`). Shapes may be unknown until run."""
    cut, join = _strip_functions(kernel_rows, strips)
    stacked, rows = cut(padded)
    out = convolve(stacked)
    joined = join(out, rows)
    joined.set_shape([padded.shape[0], None, out.shape[2], out.shape[3]])  # what the functions' shapes hide
    return joined


@functools.cache
def _strip_functions(kernel_rows: int, strips: int):
    """(cut, join) of `in_strips` as `tf.function`s, each one call in the caller's graph: a
    frame-by-frame pass has hundreds of 2-D convolutions, and their strips' shape arithmetic
    inline made its graph 4x larger, 3x slower to trace and 180 MB heavier (measured)."""
    halo = kernel_rows - 1

    @tf.function(autograph=False, reduce_retracing=True, experimental_attributes={"_noinline": True})
    def cut(padded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`[n, H+halo, W', C]` -> the strips `[n * strips, height + halo, W', C]`, gathered
        image-major in one copy, so that the convolution's output is the images' rows in order,
        and H (`join` needs no more of `padded`, which can go before the convolution runs)."""
        n, padded_rows, width, channels = tf.unstack(tf.shape(padded))
        height = (padded_rows - halo + strips - 1) // strips
        span = height + halo
        flat = tf.range(strips * span)  # strip i, row j at i * span + j reads input row i * height + j
        rows = tf.minimum(flat - flat // span * halo, padded_rows - 1)  # rows past the last repeat it
        stacked = tf.reshape(tf.gather(padded, rows, axis=1), tf.stack([n * strips, span, width, channels]))
        return stacked, padded_rows - halo

    @tf.function(autograph=False, reduce_retracing=True, experimental_attributes={"_noinline": True})
    def join(out: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        """The strips' output `[n * strips, height, W, out]` -> `[n, rows = H, W, out]`: a
        reshape, and where the strips overrun H a slice that drops the rows computed past it."""
        shape = tf.unstack(tf.shape(out))
        return tf.reshape(out, tf.stack([shape[0] // strips, strips * shape[1], shape[2], shape[3]]))[:, :rows]

    return cut, join


def _conv2d_with_kernel_gradient(setting: bool | str):
    @tf.custom_gradient
    def convolve(padded: tf.Tensor, kernel: tf.Tensor):
        def gradient(out_grad: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            # unused (e.g. for the input frames, which need none) it is pruned from the graph
            d_padded = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(padded), filter=kernel,
                                                      out_backprop=out_grad, strides=[1, 1, 1, 1], padding="VALID")
            kernel_gradient = (kernel_gradients.xla_kernel_gradient if kernel_gradients.resolve(setting)
                               else kernel_gradients.onednn_kernel_gradient)
            return d_padded, kernel_gradient(padded, out_grad, kernel)

        return tf.nn.conv2d(padded, kernel, strides=1, padding="VALID"), gradient

    return convolve


def _conv3d_with_kernel_gradient(setting: bool | str):
    @tf.custom_gradient
    def convolve(padded: tf.Tensor, kernel: tf.Tensor):
        def gradient(out_grad: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            d_padded = tf.raw_ops.Conv3DBackpropInputV2(input_sizes=tf.shape(padded), filter=kernel,
                                                        out_backprop=out_grad, strides=[1] * 5, padding="VALID")
            if not kernel_gradients.resolve(setting):
                return d_padded, tf.raw_ops.Conv3DBackpropFilterV2(input=padded, filter_sizes=tf.shape(kernel),
                                                                   out_backprop=out_grad, strides=[1] * 5,
                                                                   padding="VALID")
            frames_out = out_grad.shape[1]  # static: T - kt + 1
            out_images = frames_as_images(out_grad)  # [b*T_out, H, W, out]
            # The slices are taken outside XLA: inside one compiled function with the three
            # gradients they made it 1.3x slower (measured).
            taps = [kernel_gradients.xla_kernel_gradient(frames_as_images(padded[:, t:t + frames_out]), out_images,
                                                         kernel[t])
                    for t in range(kernel.shape[0])]
            return d_padded, tf.stack(taps)  # [kt, 3, 3, in, out]

        return tf.nn.conv3d(padded, kernel, strides=[1] * 5, padding="VALID"), gradient

    return convolve


class Conv(tf.Module):
    """The weights of one TF1 `Conv3D` layer: kernel `W` `[kt, kh, kw, in, out]` and bias `b` `[out]`.

    xla_kernel_gradient (attribute, read when traced): how the kernel's gradient is computed,
    True (XLA), False (TensorFlow's own kernels) or "auto" (measured; `conv2d`). native_kernels
    (attribute, read when traced): in a reduced precision, TensorFlow's kernels for it (True) or
    float32 ones on the rounded values (False), "auto" as the machine has them (`conv2d`). Both
    set by `DeepSUM` from its config. strips (attribute, read when traced): the 2-D
    convolutions (`spatial`, `padded`) as that many horizontal strips of each image batched
    together (`in_strips`; 1: whole images), set by `DeepSUM` for frame-by-frame inference.
    """

    def __init__(self, tf1_name: str, shape: list[int], seed: int):
        super().__init__(name=tf1_name)
        self.tf1_name = tf1_name
        initializer = tf.keras.initializers.GlorotNormal(seed=_seed(seed, tf1_name))
        self.W = tf.Variable(initializer(shape, dtype=tf.float32), name=f"{tf1_name}/W")
        self.b = tf.Variable(tf.zeros([shape[-1]], tf.float32), name=f"{tf1_name}/b")
        self.xla_kernel_gradient: bool | str = "auto"
        self.native_kernels: bool | str = "auto"
        self.strips = 1

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
        kernel = cast_like(self.W[tap] if kernel is None else kernel, padded)

        def convolve(images: tf.Tensor) -> tf.Tensor:
            return conv2d(images, kernel, self.xla_kernel_gradient, self.native_kernels)

        return in_strips(convolve, padded, kernel.shape[0], self.strips) if self.strips > 1 else convolve(padded)

    def volume(self, padded: tf.Tensor) -> tf.Tensor:
        """The whole kernel as a 3-D convolution, VALID in time, on values already padded by
        `reflect_pad` in space (REFLECT "same"): `[b, T, H+2, W+2, in]` -> `[b, T-kt+1, H, W, out]`
        (bias NOT added)."""
        return conv3d(padded, cast_like(self.W, padded), self.xla_kernel_gradient, self.native_kernels)

    def bias(self, like: tf.Tensor) -> tf.Tensor:
        """The bias `[out]` in the dtype of `like` (the compute precision)."""
        return cast_like(self.b, like)


def reflect_pad(values: tf.Tensor) -> tf.Tensor:
    """`[..., H, W, C]` -> `[..., H+2, W+2, C]` (images or frames), one pixel of REFLECT padding
    on each side."""
    leading = [[0, 0]] * (values.shape.rank - 3)
    return tf.pad(values, leading + [[1, 1], [1, 1], [0, 0]], mode="REFLECT")


class InstanceNorm(tf.Module):
    """The weights of one TF1 InstanceNorm: gamma and beta `[C]` (`instance_norm` applies them)."""

    def __init__(self, tf1_name: str, channels: int):
        super().__init__(name=tf1_name)
        self.tf1_name = tf1_name
        self.gamma = tf.Variable(tf.ones([channels], tf.float32), name=f"{tf1_name}/gamma")
        self.beta = tf.Variable(tf.zeros([channels], tf.float32), name=f"{tf1_name}/beta")

    def tf1_variables(self) -> dict[str, tf.Variable]:
        return {f"{self.tf1_name}/gamma": self.gamma, f"{self.tf1_name}/beta": self.beta}


def instance_norm(values: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, axes: list[int]) -> tf.Tensor:
    """`values` normalised over `axes` per (image, channel), scaled by gamma `[C]`, shifted by beta `[C]`."""
    # The original's exact formula: biased moments, then tf.nn.batch_normalization. In a
    # reduced precision the moments and the normalisation run in float32 and only the result
    # is rounded, as Keras' mixed precision keeps sums over many values in float32
    # (tf.nn.moments widens float16 itself, not bfloat16). Measured on the authors' reference
    # case in mixed_bfloat16 on an AMD EPYC Zen 3 (convolutions summed in float32): the moments
    # in bfloat16 moved the output by 8.4e-3 of its largest value against 7.3e-3, the whole
    # norm in bfloat16 by 8.1e-3. In float32 every cast is the identity.
    exact = tf.cast(values, tf.float32)
    mean, variance = tf.nn.moments(exact, axes, keepdims=True)
    normalised = tf.nn.batch_normalization(exact, mean, variance, beta, gamma, NORM_EPSILON)
    return cast_like(normalised, values)


def finish(convolved: tf.Tensor, bias: tf.Tensor, norm: InstanceNorm | None = None, pad: bool = True,
           fused: bool = False) -> tf.Tensor:
    """The rest of a layer after its convolution, and the padding of the next one's input:
    `convolved` `[..., H, W, C]` (images or frames, without bias) plus `bias` `[C]` (float32,
    used in the dtype of `convolved`), InstanceNorm over H and W with `norm`'s weights (when
    given), leaky ReLU, and `reflect_pad` when `pad` -> `[..., H(+2), W(+2), C]`.

    fused: as one XLA computation (one pass over the values instead of one per op; the
    convolutions stay TensorFlow's, oneDNN on CPU), for inference; `libraries.model.fusion`
    measures whether it is faster on this machine. Unfused, the ops are the original's.
    """
    weights = (None, None) if norm is None else (norm.gamma, norm.beta)
    return (_finish_xla if fused else _finish)(convolved, bias, *weights, pad)


def _finish(convolved: tf.Tensor, bias: tf.Tensor, gamma: tf.Tensor | None, beta: tf.Tensor | None,
            pad: bool) -> tf.Tensor:
    values = convolved + cast_like(bias, convolved)
    if gamma is not None:
        rank = values.shape.rank
        values = instance_norm(values, gamma, beta, [rank - 3, rank - 2])
    values = leaky_relu(values)
    return reflect_pad(values) if pad else values


_finish_xla = tf.function(_finish, jit_compile=True, autograph=False)


class Network(tf.Module):
    """A sub-network: `tf1_variables()` gathers its layers' variables under their TF1 names."""

    def tf1_variables(self) -> dict[str, tf.Variable]:
        layers = [m for m in self.submodules if isinstance(m, (Conv, InstanceNorm))]
        named = {name: v for layer in layers for name, v in layer.tf1_variables().items()}
        return dict(sorted(named.items()))


def leaky_relu(values: tf.Tensor) -> tf.Tensor:
    return tf.nn.leaky_relu(values, alpha=LEAKY_SLOPE)


def compute_dtype(precision: str) -> tf.DType:
    """The dtype the networks compute in under `config.precision` (float32, bfloat16 or float16)."""
    return tf.as_dtype(config_module.compute_dtype_name(precision))


def cast_like(value: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """`value` cast to the dtype of `like`: float32 variables used at the compute precision
    (the identity, no op, when both are float32)."""
    return tf.cast(value, like.dtype)


def checkpointed(layer, recompute: bool):
    """`layer` (a function of one tensor) as it is, or wrapped in `tf.recompute_grad`: the
    backward pass then keeps only the layer's input and recomputes its intermediates (pad,
    convolution, normalisation) instead of storing them. Same values, same gradients."""
    return tf.recompute_grad(layer) if recompute else layer


def frames_as_images(values: tf.Tensor) -> tf.Tensor:
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
    """`[b, T, H, W, C]` (T static) -> T tensors `[b, 1, H, W, C]`. Frames first, then unstacked:
    for one scene (b = 1) the transpose and the unstacking share the values' buffer, where a
    split along the frames copied them all (340 MB of a 384x384 scene's features)."""
    return [tf.expand_dims(frame, 1) for frame in tf.unstack(tf.transpose(values, [1, 0, 2, 3, 4]), values.shape[1])]


def images_as_frames(images: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    """`[b*T, H, W, C]` -> `[b, T, H, W, C]`."""
    shape = tf.shape(images)
    return tf.reshape(images, tf.concat([[batch, -1], shape[1:]], axis=0))  # [b, T, H, W, C]
