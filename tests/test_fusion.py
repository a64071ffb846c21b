"""A layer's element-wise work fused by XLA (`layers.finish`, `libraries.model.fusion`): the
values of NumPy's formula and of the authors' graph, and the measured choice of "auto"."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from helpers import relative_error
from libraries import checkpoints, inference, metrics
from libraries.config import default_config
from libraries.model import DeepSUM, InstanceNorm, fusion, layers


def numpy_finish(convolved: np.ndarray, bias: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                 pad: bool) -> np.ndarray:
    """Bias, the authors' InstanceNorm (biased variance, epsilon 1e-3) over H and W, leaky ReLU
    (slope 0.2), one pixel of reflect padding, in float64."""
    values = convolved.astype(np.float64) + bias
    if gamma is not None:
        axes = (values.ndim - 3, values.ndim - 2)
        mean, variance = values.mean(axes, keepdims=True), values.var(axes, keepdims=True)
        values = (values - mean) / np.sqrt(variance + 1e-3) * gamma + beta
    values = np.where(values > 0, values, 0.2 * values)
    if pad:
        values = np.pad(values, [(0, 0)] * (values.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="reflect")
    return values


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (2, 3, 5, 6, 3)])  # images and frames
@pytest.mark.parametrize("with_norm, pad", [(True, True), (True, False), (False, True)])
def test_finish_is_bias_instance_norm_leaky_relu_and_reflect_padding(fused, shape, with_norm, pad):
    rng = np.random.default_rng(3)
    convolved = rng.normal(1.5, 2.0, size=shape).astype(np.float32)
    bias = rng.normal(size=shape[-1]).astype(np.float32)
    norm = InstanceNorm("norm", shape[-1])
    norm.gamma.assign(rng.normal(1, 0.3, size=shape[-1]).astype(np.float32))
    norm.beta.assign(rng.normal(size=shape[-1]).astype(np.float32))
    expected = numpy_finish(convolved, bias, norm.gamma.numpy() if with_norm else None, norm.beta.numpy(), pad)
    actual = layers.finish(tf.constant(convolved), tf.constant(bias), norm if with_norm else None, pad, fused)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5, atol=1e-5)


def reference_model(reference_dir, **changes) -> DeepSUM:
    model = DeepSUM(default_config(**changes), fused=True)
    checkpoints.load_tf1_checkpoint(model, reference_dir / "deepsum_tf1_case_a" / "checkpoint_tf1")
    return model


@pytest.mark.parametrize("frame_by_frame", [False, True])
def test_the_fused_network_computes_the_authors_graph(reference_dir, reference_case, frame_by_frame):
    model = reference_model(reference_dir)
    model.frame_by_frame = frame_by_frame
    x, masks = reference_case["x"], reference_case["masks_lr"]
    out = tf.function(lambda x, m: model(x, m), autograph=False)(x, masks)
    for key, expected in (("sr", "logits"), ("filters", "filters"), ("x_registered", "x_registered")):
        assert relative_error(out[key].numpy(), reference_case[expected]) < 1e-4, key


def test_fused_bfloat16_keeps_the_cpsnr_of_the_authors_graph(reference_dir, reference_case):
    """The bar of `precision: mixed_bfloat16`, 0.05 dB on the reference case (measured 0.015 dB
    fused, as unfused)."""
    model = reference_model(reference_dir, precision="mixed_bfloat16")
    sr = tf.function(lambda x, m: model(x, m)["sr"], autograph=False)(reference_case["x"], reference_case["masks_lr"])
    cpsnr = metrics.cpsnr(reference_case["y"], sr, reference_case["mask_y"]).numpy()
    reference_cpsnr = metrics.cpsnr(reference_case["y"], reference_case["logits"], reference_case["mask_y"]).numpy()
    assert np.max(np.abs(cpsnr - reference_cpsnr)) < 0.05


def test_auto_fuses_when_the_measurement_finds_it_faster_once_per_dtype(monkeypatch):
    """`xla_elementwise: "auto"` follows the measured seconds (here planted: XLA only when more
    than the margin faster), measured once per process and compute dtype; true and false are
    taken as they are."""
    assert default_config().xla_elementwise == "auto"  # the default
    assert fusion.resolve(True, "float32") is True and fusion.resolve(False, "mixed_bfloat16") is False
    for separate_s, xla_s, expected in ((1.0, 0.7, True), (1.0, 0.97, False), (0.5, 1.0, False)):
        fusion.xla_is_faster.cache_clear()
        calls = []
        monkeypatch.setattr(fusion, "measure", lambda dtype: calls.append(dtype) or {"separate_s": separate_s,
                                                                                     "xla_s": xla_s})
        assert fusion.resolve("auto", "mixed_bfloat16") is expected
        assert fusion.resolve("auto", "mixed_bfloat16") is expected and calls == [tf.bfloat16]  # measured once
        assert fusion.resolve("auto", "float32") is expected and calls == [tf.bfloat16, tf.float32]
    fusion.xla_is_faster.cache_clear()


def test_the_measurement_times_both_and_load_model_fuses_as_the_config_says(monkeypatch):
    finished = []  # what the probe times: the element-wise work alone, each way, on the given shape
    real_finish = layers.finish

    def finish(convolved, bias, norm, pad, fused):
        finished.append((tuple(convolved.shape), convolved.dtype, fused))
        return real_finish(convolved, bias, norm, pad, fused)

    monkeypatch.setattr(layers, "finish", finish)
    assert sorted(fusion.measure(shape=(1, 10, 12, 4), dtype=tf.bfloat16, repeats=1)) == ["separate_s", "xla_s"]
    assert set(finished) == {((1, 10, 12, 4), tf.bfloat16, False), ((1, 10, 12, 4), tf.bfloat16, True)}
    monkeypatch.undo()
    config = default_config(n_features=8)
    assert inference.load_model(config.replace(xla_elementwise=True)).fused is True
    assert inference.load_model(config.replace(xla_elementwise=False)).fused is False
    # "auto": the measured choice for the config's compute dtype (here planted: XLA in bfloat16 only)
    monkeypatch.setattr(fusion, "xla_is_faster", lambda dtype_name: dtype_name == "bfloat16")
    assert inference.load_model(config).fused is False
    assert inference.load_model(config.replace(precision="mixed_bfloat16")).fused is True
