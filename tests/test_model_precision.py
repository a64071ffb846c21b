"""Compute precision (`config.precision`) and gradient checkpointing (`DeepSUM(recompute=True)`):
float32 unchanged, bfloat16 within its measured tolerance on the reference case, variables and
outputs float32, recomputation giving the same values and gradients."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from helpers import relative_error
from libraries import checkpoints, metrics
from libraries.config import default_config
from libraries.model import DeepSUM

# bench/precision.py on the reference case (2 scenes, 9x64x64, 64 features): mixed_bfloat16
# moved cPSNR by 0.014-0.018 dB and the output by 7.5e-3 of its largest value (Intel Xeon, AMX);
# the bar for cPSNR is 0.05 dB, the output's tolerance leaves ~2.5x.
BFLOAT16_CPSNR_DB = 0.05
BFLOAT16_RELATIVE = 0.02


def reference_model(reference_dir, precision: str) -> DeepSUM:
    model = DeepSUM(default_config(precision=precision))
    checkpoints.load_tf1_checkpoint(model, reference_dir / "deepsum_tf1_case_a" / "checkpoint_tf1")
    return model


def forward_graph(model: DeepSUM, size: int = 16) -> tf.Graph:
    """The graph of the model's forward pass on one scene of 9 size x size frames."""
    spec = tf.TensorSpec([1, 9, size, size, 1], tf.float32)
    return tf.function(lambda x, m: model(x, m)["sr"]).get_concrete_function(spec, spec).graph


def dtypes_in_graph(model: DeepSUM) -> set[tf.DType]:
    return {output.dtype for op in forward_graph(model).get_operations() for output in op.outputs}


def test_float32_is_unchanged_and_has_no_reduced_precision_op(reference_dir, reference_case):
    model = reference_model(reference_dir, "float32")
    sr = model(reference_case["x"], reference_case["masks_lr"])["sr"].numpy()
    assert relative_error(sr, reference_case["logits"]) < 1e-4
    assert model.compute_dtype == tf.float32
    assert not dtypes_in_graph(model) & {tf.bfloat16, tf.float16}


def test_bfloat16_stays_within_its_measured_tolerance(reference_dir, reference_case):
    model = reference_model(reference_dir, "mixed_bfloat16")
    out = model(reference_case["x"], reference_case["masks_lr"])
    assert all(value.dtype == tf.float32 for value in out.values())
    assert all(variable.dtype == tf.float32 for variable in model.variables)
    assert tf.bfloat16 in dtypes_in_graph(model)  # the convolutions really run in bfloat16
    expected = reference_case["logits"]
    worst = np.max(np.abs(out["sr"].numpy() - expected)) / np.max(np.abs(expected))
    assert 0 < worst < BFLOAT16_RELATIVE
    cpsnr = metrics.cpsnr(reference_case["y"], out["sr"], reference_case["mask_y"]).numpy()
    reference_cpsnr = metrics.cpsnr(reference_case["y"], expected, reference_case["mask_y"]).numpy()
    assert np.max(np.abs(cpsnr - reference_cpsnr)) < BFLOAT16_CPSNR_DB


def node_types(model: DeepSUM) -> collections.Counter:
    """(op type, dtype attribute `T`) of every node of the model's forward graph, those in the
    bodies of the functions it calls (the XLA-fused layers) included."""
    graph_def = forward_graph(model).as_graph_def()
    nodes = [*graph_def.node, *(node for function in graph_def.library.function for node in function.node_def)]
    return collections.Counter((node.op, tf.as_dtype(node.attr["T"].type).name) for node in nodes
                               if node.attr["T"].type)  # a type, not a list of them


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_statistics_and_softmax_read_float32_in_reduced_precision(precision, fused):
    """Keras' mixed-precision rule for what sums many values: the instance norms' moments
    (`Mean`, `SquaredDifference`; 8 SISRNet + 4 FusionNet layers), RegNet's mean of its taps
    over the pixels and its softmax read float32, while the element-wise work between layers
    runs in the reduced precision. Fused, the layers' XLA functions are traced once per shape
    and counted once."""
    types = node_types(DeepSUM(default_config(n_features=4, precision=precision), fused=fused))
    assert not any(count for (op, dtype), count in types.items()
                   if op in ("Mean", "SquaredDifference", "Softmax") and dtype != "float32"), types
    assert types[("Softmax", "float32")] == 1 and types[("LeakyRelu", tf.as_dtype(precision[6:]).name)] > 0
    if not fused:
        assert types[("SquaredDifference", "float32")] == 12 and types[("Mean", "float32")] >= 2 * 12 + 1
    else:
        assert types[("SquaredDifference", "float32")] > 0 and types[("Mean", "float32")] > 1


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_reduced_precision_trains_float32_variables(precision):
    model = DeepSUM(default_config(n_features=8, precision=precision))
    x = tf.random.stateless_normal([1, 9, 16, 16, 1], seed=[1, 2])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, tf.ones_like(x))["sr"] ** 2)
    gradients = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and g.dtype == tf.float32 and np.all(np.isfinite(g.numpy())) for g in gradients)


def test_recompute_gives_the_same_values_and_gradients():
    x = tf.random.stateless_normal([2, 9, 16, 16, 1], seed=[3, 4])
    masks = tf.random.stateless_uniform([2, 9, 16, 16, 1], seed=[5, 6]) < 0.8
    results = []
    for recompute in (False, True):
        model = DeepSUM(default_config(n_features=8), recompute=recompute)
        assert model.recompute is recompute

        @tf.function
        def step(x, masks):
            with tf.GradientTape() as tape:
                sr = model(x, masks)["sr"]
                loss = tf.reduce_mean(sr**2)
            return sr, tape.gradient(loss, model.trainable_variables)

        results.append(step(x, masks))
    (sr, gradients), (sr_recomputed, gradients_recomputed) = results
    np.testing.assert_allclose(sr_recomputed.numpy(), sr.numpy(), rtol=1e-6, atol=1e-6)
    for g, g_recomputed in zip(gradients, gradients_recomputed):
        assert relative_error(g_recomputed.numpy(), g.numpy()) < 1e-5
