"""Reduced-precision convolutions (`libraries.model.hardware`, `layers.conv2d`/`conv3d`): on the
machine's own kernels where it has them, elsewhere in float32 on the rounded values; the rule of
"auto" on planted CPU flags, and the values and gradients of the float32 path against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from helpers import relative_error
from libraries import checkpoints, metrics
from libraries.config import default_config
from libraries.model import DeepSUM, conv2d, conv3d, hardware

# The largest relative error of one rounding to the type: 8 significant bits for bfloat16, 11 for float16.
ROUNDING = {tf.bfloat16: 2.0**-8, tf.float16: 2.0**-11}


def rounded(values: np.ndarray, dtype: tf.DType) -> np.ndarray:
    """`values` rounded to `dtype` (bfloat16 or float16), as float64."""
    return tf.cast(tf.cast(tf.constant(values, tf.float32), dtype), tf.float64).numpy()


def numpy_conv3d(padded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """VALID cross-correlation in float64: padded `[b, T, H, W, in]`, kernel `[kt, kh, kw, in, out]`."""
    kt, kh, kw = kernel.shape[:3]
    b, t, h, w, _ = padded.shape
    out = np.zeros([b, t - kt + 1, h - kh + 1, w - kw + 1, kernel.shape[-1]])
    for dt in range(kt):
        for dy in range(kh):
            for dx in range(kw):
                window = padded[:, dt:dt + out.shape[1], dy:dy + out.shape[2], dx:dx + out.shape[3]]
                out += window @ kernel[dt, dy, dx]
    return out


@pytest.mark.parametrize("flags, gpu, expected", [
    ({"avx2", "fma"}, False, {tf.bfloat16: False, tf.float16: False}),
    ({"avx2", "avx512f", "avx512_bf16"}, False, {tf.bfloat16: True, tf.float16: False}),
    ({"avx512f", "avx512_fp16", "amx_bf16", "amx_tile"}, False, {tf.bfloat16: True, tf.float16: False}),
    ({"avx2"}, True, {tf.bfloat16: True, tf.float16: True}),
])
def test_auto_runs_reduced_precision_kernels_where_the_machine_has_them(monkeypatch, flags, gpu, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "has_gpu", lambda: gpu)
    for dtype, native in expected.items():
        assert hardware.native_kernels(dtype) is native
        assert hardware.native_kernels(dtype, "auto") is native
        assert hardware.native_kernels(dtype, True) is True  # a config value forces it
        assert hardware.native_kernels(dtype, False) is False
    assert hardware.native_kernels(tf.float32, False) is True  # float32 has nothing to widen


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
@pytest.mark.parametrize("convolution", ["conv2d", "conv3d"])
def test_the_float32_path_sums_the_rounded_products_in_float32(dtype, convolution):
    rng = np.random.default_rng(5)
    if convolution == "conv2d":
        padded, kernel = rng.normal(size=[2, 10, 9, 16]), rng.normal(size=[3, 3, 16, 8]) * 0.2
        function, as_3d = conv2d, (lambda p, k: (p[:, None], k[None]))
    else:
        padded, kernel = rng.normal(size=[2, 5, 10, 9, 16]), rng.normal(size=[3, 3, 3, 16, 8]) * 0.2
        function, as_3d = conv3d, (lambda p, k: (p, k))
    expected = numpy_conv3d(*as_3d(rounded(padded, dtype), rounded(kernel, dtype))).reshape(-1)
    magnitude = numpy_conv3d(*as_3d(np.abs(padded), np.abs(kernel))).reshape(-1)  # sum of |products|
    inputs = [tf.cast(tf.constant(v, tf.float32), dtype) for v in (padded, kernel)]
    graph = tf.function(lambda p, k: function(p, k, False, False)).get_concrete_function(*inputs).graph
    convolutions = [op for op in graph.get_operations() if op.type.startswith("Conv")]
    assert convolutions and all(op.outputs[0].dtype == tf.float32 for op in convolutions)
    out = function(*inputs, False, False)
    assert out.dtype == dtype
    # the float32 sum (its own error about 1e-7 of the summed magnitudes) rounded once to the
    # reduced type, whose spacing is fixed below float16's smallest normal number, 2^-14.
    # TensorFlow's own bfloat16 kernels on an AVX2 CPU (Eigen's) were off by up to 3%.
    allowed = ROUNDING[dtype] * np.maximum(np.abs(expected), 2.0**-14) + 1e-6 * magnitude
    assert np.all(np.abs(tf.cast(out, tf.float64).numpy().reshape(-1) - expected) <= allowed)
    native_graph = tf.function(lambda p, k: function(p, k, False, True)).get_concrete_function(*inputs).graph
    assert any(op.type.startswith("Conv") and op.outputs[0].dtype == dtype for op in native_graph.get_operations())


@pytest.mark.parametrize("xla_kernel_gradient", [False, True])
def test_the_float32_path_gives_the_gradients_of_the_rounded_values(xla_kernel_gradient):
    """The gradients through the widening casts: the float32 gradients of the same rounded
    values (NumPy), rounded to bfloat16 for the input."""
    rng = np.random.default_rng(6)
    padded, kernel, out_grad = rng.normal(size=[2, 6, 6, 4]), rng.normal(size=[3, 3, 4, 5]), rng.normal(size=[2, 4, 4, 5])
    p, k = (tf.cast(tf.constant(v, tf.float32), tf.bfloat16) for v in (padded, kernel))
    with tf.GradientTape() as tape:
        tape.watch([p, k])
        out = conv2d(p, k, xla_kernel_gradient, False)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * out_grad)
    d_padded, d_kernel = tape.gradient(loss, [p, k])
    rp, rk = rounded(padded, tf.bfloat16), rounded(kernel, tf.bfloat16)
    expected_kernel = np.stack([np.stack([np.einsum("nhwi,nhwo->io", rp[:, dy:dy + 4, dx:dx + 4], out_grad)
                                          for dx in range(3)]) for dy in range(3)])
    expected_padded = np.zeros_like(rp)
    for dy in range(3):
        for dx in range(3):
            expected_padded[:, dy:dy + 4, dx:dx + 4] += out_grad @ rk[dy, dx].T
    assert d_kernel.dtype == tf.bfloat16 and d_padded.dtype == tf.bfloat16
    assert relative_error(tf.cast(d_kernel, tf.float64).numpy(), expected_kernel) < ROUNDING[tf.bfloat16]
    assert relative_error(tf.cast(d_padded, tf.float64).numpy(), expected_padded) < ROUNDING[tf.bfloat16]


def test_bfloat16_in_float32_sums_meets_the_accuracy_bar_of_the_reference_case(reference_dir, reference_case):
    """`mixed_bfloat16` with the convolutions summed in float32 (what AMX and AVX512-BF16 do,
    forced here on any machine): cPSNR within 0.05 dB of the authors' graph on its reference
    case, the output within 2e-2 of its largest value (measured on an AVX2 CPU: 0.015 dB and
    6.1e-3, where TensorFlow's own bfloat16 kernels, Eigen's, gave 4.5e-2)."""
    model = DeepSUM(default_config(precision="mixed_bfloat16", reduced_precision_kernels=False))
    checkpoints.load_tf1_checkpoint(model, reference_dir / "deepsum_tf1_case_a" / "checkpoint_tf1")
    sr = tf.function(lambda x, m: model(x, m)["sr"], autograph=False)(reference_case["x"], reference_case["masks_lr"])
    expected = reference_case["logits"]
    assert 0 < np.max(np.abs(sr.numpy() - expected)) / np.max(np.abs(expected)) < 0.02
    cpsnr = metrics.cpsnr(reference_case["y"], sr, reference_case["mask_y"]).numpy()
    reference_cpsnr = metrics.cpsnr(reference_case["y"], expected, reference_case["mask_y"]).numpy()
    assert np.max(np.abs(cpsnr - reference_cpsnr)) < 0.05
