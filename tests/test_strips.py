"""Frame-by-frame convolutions in horizontal strips (`layers.in_strips`, `libraries.model.strips`):
the same values as whole images (NumPy and TensorFlow's convolution), for any height and for
shapes known only when run; the measured choice of "auto"; the network with strips."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from helpers import relative_error
from libraries import inference
from libraries.config import ConfigError, default_config
from libraries.model import Conv, DeepSUM, layers, strips


def numpy_conv2d(padded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """VALID cross-correlation in float64: padded `[n, H+kh-1, W+kw-1, in]`, kernel `[kh, kw, in, out]`."""
    kh, kw = kernel.shape[:2]
    n, h, w, _ = padded.shape
    out = np.zeros([n, h - kh + 1, w - kw + 1, kernel.shape[-1]])
    for dy in range(kh):
        for dx in range(kw):
            out += padded[:, dy:dy + out.shape[1], dx:dx + out.shape[2]] @ kernel[dy, dx]
    return out


@pytest.mark.parametrize("rows, count", [(12, 2), (13, 2), (11, 3), (10, 4), (1, 2), (3, 3)])
def test_strips_give_the_whole_images_convolution_for_any_height(rows, count):
    rng = np.random.default_rng(rows * 10 + count)
    padded, kernel = rng.normal(size=[2, rows + 2, 7, 5]), rng.normal(size=[3, 3, 5, 4])
    k = tf.constant(kernel, tf.float32)
    # the height unknown until run, as in inference, whose functions take any scene size
    function = tf.function(lambda p: layers.in_strips(lambda images: layers.conv2d(images, k, False), p, 3, count),
                           input_signature=[tf.TensorSpec([None, None, None, 5], tf.float32)])
    out = function(tf.constant(padded, tf.float32)).numpy()
    assert out.shape == (2, rows, 5, 4)
    assert relative_error(out, numpy_conv2d(padded, kernel)) < 1e-6


def test_strips_give_the_whole_images_gradients():
    rng = np.random.default_rng(3)
    padded = tf.constant(rng.normal(size=[1, 11, 9, 4]), tf.float32)
    kernel = tf.constant(rng.normal(size=[3, 3, 4, 6]), tf.float32)
    out_grad = tf.constant(rng.normal(size=[1, 9, 7, 6]), tf.float32)
    gradients = []
    for count in (1, 2, 4):
        with tf.GradientTape() as tape:
            tape.watch([padded, kernel])
            convolve = lambda images: layers.conv2d(images, kernel, False)  # noqa: E731
            out = layers.in_strips(convolve, padded, 3, count) if count > 1 else convolve(padded)
            loss = tf.reduce_sum(out * out_grad)
        gradients.append([g.numpy() for g in tape.gradient(loss, [padded, kernel])])
    for striped in gradients[1:]:
        for g, expected in zip(striped, gradients[0]):
            assert relative_error(g, expected) < 1e-6


def test_auto_takes_one_strip_per_thread_when_the_measurement_finds_it_faster(monkeypatch):
    assert default_config().frame_strips == "auto"  # the default
    assert strips.resolve(3) == 3 and strips.resolve(1) == 1
    monkeypatch.setattr(strips, "threads", lambda: 4)
    for whole_s, strips_s, expected in ((1.0, 0.7, 4), (1.0, 0.95, 1), (0.5, 1.0, 1)):
        strips.strips_are_faster.cache_clear()
        calls = []
        monkeypatch.setattr(strips, "measure", lambda count: calls.append(count) or {"whole_s": whole_s,
                                                                                     "strips_s": strips_s})
        assert strips.resolve("auto") == expected
        assert strips.resolve("auto") == expected and calls == [4]  # measured once per process
    strips.strips_are_faster.cache_clear()
    monkeypatch.undo()
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")  # as the parallel test workers run
    assert strips.threads() == (tf.config.threading.get_intra_op_parallelism_threads() or 1)
    monkeypatch.setattr(strips, "threads", lambda: 1)
    monkeypatch.setattr(strips, "measure", lambda count: pytest.fail("one thread: nothing to measure"))
    assert strips.resolve("auto") == 1
    with pytest.raises(ConfigError, match="frame_strips: expected a positive integer or 'auto', got 0"):
        default_config(frame_strips=0)


def test_the_measurement_times_both_and_load_model_strips_frame_by_frame_only(monkeypatch):
    assert sorted(strips.measure(2, shape=(1, 10, 10, 4), repeats=1)) == ["strips_s", "whole_s"]
    config = default_config(n_features=8, xla_elementwise=False, frame_strips=2)
    assert inference.load_model(config.replace(frame_by_frame=True)).strips == 2
    assert inference.load_model(config.replace(frame_by_frame=False)).strips == 1  # nine images: nothing to split
    monkeypatch.setattr(strips, "strips_are_faster", lambda count: True)
    monkeypatch.setattr(strips, "threads", lambda: 3)
    assert inference.load_model(config.replace(frame_by_frame=True, frame_strips="auto")).strips == 3


def test_the_network_in_strips_computes_the_whole_pass():
    config = default_config(n_features=8)
    x = tf.random.stateless_normal([1, 9, 21, 18, 1], seed=[1, 2])
    masks = tf.random.stateless_uniform([1, 9, 21, 18, 1], seed=[3, 4]) < 0.8
    expected = DeepSUM(config)(x, masks)["sr"].numpy()  # same seed: same weights
    model = DeepSUM(config, frame_by_frame=True, strips=3)
    assert model.strips == 3 and all(m.strips == 3 for m in model.submodules if isinstance(m, Conv))
    assert relative_error(model(x, masks)["sr"].numpy(), expected) < 1e-5
    # the sliding window's path: each frame's features once (`tf.map_fn` over frames), then the rest
    features = tf.function(model.sisrnet_features, autograph=False)(x)
    assert relative_error(model.forward_from_features(features, x, masks)["sr"].numpy(), expected) < 1e-5


def test_strips_add_two_function_calls_per_convolution_to_the_graph():
    # The frame-by-frame graph has hundreds of 2-D convolutions: the strips' shape arithmetic
    # inline at each made it 4x larger and 180 MB heavier to trace and run.
    config = default_config(n_features=8)
    spec = tf.TensorSpec([1, 9, None, None, 1], tf.float32)

    def graph_ops(count: int) -> collections.Counter:
        model = DeepSUM(config, frame_by_frame=True, strips=count)
        network = tf.function(lambda x, masks: model(x, masks)["sr"], autograph=False)
        graph = network.get_concrete_function(spec, tf.TensorSpec(spec.shape, tf.bool)).graph
        return collections.Counter(op.type for op in graph.get_operations())

    whole, in_strips = graph_ops(1), graph_ops(2)
    assert in_strips["Conv2D"] == whole["Conv2D"] > 100
    assert in_strips.total() - whole.total() == 2 * whole["Conv2D"]
