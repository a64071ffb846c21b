"""Micro-batched gradients: the same loss and gradients as the whole batch in one pass."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from libraries import metrics
from libraries.training import optimization
from libraries.config import default_config
from libraries.model import DeepSUM

BATCH, SIZE = 4, 24


@pytest.fixture(scope="module")
def problem():
    model = DeepSUM(default_config(n_features=8, seed=5))
    rng = np.random.default_rng(0)
    batch = (tf.constant(rng.normal(size=(BATCH, 9, SIZE, SIZE, 1)), tf.float32),
             tf.constant(rng.random((BATCH, 9, SIZE, SIZE, 1)) < 0.8),
             tf.constant(rng.normal(size=(BATCH, 1, SIZE, SIZE, 1)), tf.float32),
             tf.constant(rng.random((BATCH, 1, SIZE, SIZE, 1)) < 0.9))

    def loss_of(x, masks, y, y_mask):
        return metrics.cl2_loss(y, model(x, masks)["sr"], y_mask, border=3)

    return model, batch, loss_of


@pytest.fixture(scope="module")
def whole_batch(problem):
    """(loss, gradients) of the whole batch in one pass, the expected values of the tests below."""
    return _run(problem, 0)


def _run(problem, micro_batch, jit_compile=False):
    model, batch, loss_of = problem
    step = tf.function(lambda *b: optimization.batch_gradients(loss_of, model.trainable_variables, b, BATCH,
                                                               micro_batch, jit_compile))
    loss, gradients = step(*batch)
    return float(loss), [g.numpy() for g in gradients]


def _assert_close(actual, expected, tolerance):
    # The conv biases in front of an instance norm have a zero gradient in exact arithmetic
    # (float32 noise of ~3e-7 here, against ~2 for the largest): an absolute floor of 1e-6 of
    # the largest gradient's norm covers them.
    floor = 1e-6 * max(np.linalg.norm(g) for g in expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert np.linalg.norm(a - e) <= tolerance * np.linalg.norm(e) + floor, index


@pytest.mark.parametrize("micro_batch", [3])  # parts of 3 and 1 scenes
def test_micro_batches_give_the_whole_batch_gradients(problem, whole_batch, micro_batch):
    loss, gradients = whole_batch
    part_loss, part_gradients = _run(problem, micro_batch)
    assert part_loss == pytest.approx(loss, rel=1e-5)
    assert len(part_gradients) == len(gradients) == len(problem[0].trainable_variables)
    _assert_close(part_gradients, gradients, 1e-5)


def test_global_batch_weights_each_replica_share(problem):
    model, batch, loss_of = problem
    half = [t[:2] for t in batch]
    loss, _ = optimization.batch_gradients(loss_of, model.trainable_variables, half, global_batch=BATCH)
    assert float(loss) == pytest.approx(0.5 * float(loss_of(*half)), rel=1e-6)  # 2 of 4 scenes


def test_xla_pass_gives_the_same_gradients(problem, whole_batch):
    loss, gradients = whole_batch
    xla_loss, xla_gradients = _run(problem, 2, jit_compile=True)
    assert xla_loss == pytest.approx(loss, rel=1e-4)
    _assert_close(xla_gradients, gradients, 1e-4)


def test_adam_takes_tf1_adam_optimizer_steps():
    """Three steps against TF1 AdamOptimizer's update written out in NumPy (beta1 0.9, beta2
    0.999, epsilon 1e-8). Gradients near 1e-7 make sqrt(v) comparable to epsilon, so Keras'
    default epsilon (1e-7) would move the first variable several times less."""
    gradients = np.array([[1e-7, -2e-7, 5e-8], [3e-1, -1e-3, 2.0]], np.float64)  # [2 elements, 3 steps]
    variable = tf.Variable([1.0, 1.0], dtype=tf.float32)
    optimizer = optimization.adam(0.01)
    expected, m, v = np.array([1.0, 1.0]), np.zeros(2), np.zeros(2)
    for t in range(1, 4):
        g = gradients[:, t - 1]
        optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        expected = expected - 0.01 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-8)
    # float32 arithmetic against float64: measured 1.2e-7 absolute (float32 spacing near 1); tolerance 1e-6
    np.testing.assert_allclose(variable.numpy(), expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- loss scaling


def _quadratic(precision: str):
    """A float32 variable w, its optimiser(s) and the loss sum((w - target)^2) / 2 (gradient
    w - target, known by hand)."""
    w = tf.Variable([1.0, -2.0, 0.5])
    adam = optimization.adam(0.1)
    applier, state = optimization.with_loss_scaling(adam, precision, [w])
    return w, adam, applier, state


def _adam_by_hand(w0: np.ndarray, gradient: np.ndarray, lr: float = 0.1) -> np.ndarray:
    """TF1 Adam's first step: m = (1-b1) g, v = (1-b2) g^2, bias-corrected, epsilon 1e-8."""
    b1, b2 = optimization.ADAM_BETAS
    m, v = (1 - b1) * gradient, (1 - b2) * gradient**2
    return w0 - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + optimization.ADAM_EPSILON)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_a_step_with_loss_scaling_applies_the_unscaled_gradient(precision):
    w, adam, applier, state = _quadratic(precision)
    target = tf.constant([0.25, 0.5, -1.0])
    scale = optimization.loss_scale(applier)
    assert (scale is None) == (precision != "mixed_float16") and bool(state) == (precision == "mixed_float16")
    if scale is not None:
        assert float(scale) == 32768.0  # Keras' initial dynamic scale
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((w - target) ** 2) / 2
    w0 = w.numpy()
    optimization.minimise(applier, tape, loss, [w])
    gradient = w0 - target.numpy()
    np.testing.assert_allclose(w.numpy(), _adam_by_hand(w0, gradient), rtol=1e-5)
    # Adam's step hardly depends on the gradient's scale; its moments do: m = (1 - b1) g
    slots = {variable.name: variable.numpy() for variable in adam.variables if tuple(variable.shape) == (3,)}
    momentum = [value for name, value in slots.items() if "momentum" in name]
    assert len(slots) == 2 and len(momentum) == 1, list(slots)
    np.testing.assert_allclose(momentum[0], (1 - optimization.ADAM_BETAS[0]) * gradient, rtol=1e-6)
    assert int(adam.iterations) == 1


def test_an_overflowing_float16_step_is_skipped_and_halves_the_scale():
    w, adam, applier, _ = _quadratic("mixed_float16")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w * tf.constant([1.0, np.inf, 1.0]))
    w0 = w.numpy()
    optimization.minimise(applier, tape, loss, [w])
    np.testing.assert_array_equal(w.numpy(), w0)
    assert float(optimization.loss_scale(applier)) == 16384.0 and int(adam.iterations) == 0


def test_batch_gradients_with_a_scale_are_the_scaled_gradients_of_the_unscaled_loss(problem, whole_batch):
    model, batch, loss_of = problem
    scale = tf.Variable(1024.0)
    step = tf.function(lambda *b: optimization.batch_gradients(loss_of, model.trainable_variables, b, BATCH, 3,
                                                               scale=scale))
    loss, gradients = step(*batch)
    expected_loss, expected = whole_batch
    assert abs(float(loss) - expected_loss) <= 1e-5 * abs(expected_loss)
    _assert_close([g.numpy() / 1024.0 for g in gradients], expected, 1e-4)


def test_micro_batch_auto_is_one_scene_per_pass_on_cpus_and_the_whole_batch_on_gpus(monkeypatch):
    assert default_config().micro_batch == "auto"
    assert optimization.resolve_micro_batch(3) == 3 and optimization.resolve_micro_batch(0) == 0
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [])
    assert optimization.resolve_micro_batch("auto") == 1
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert optimization.resolve_micro_batch("auto") == 0
