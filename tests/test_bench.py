"""The benchmark suite: the naive baseline computes our network's function, and every bench
script runs (--quick) and writes its JSON results."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import NORMALISED_BIASES, relative_error
from libraries import model as model_lib
from libraries import synthetic
from libraries.config import default_config

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture()
def bench(monkeypatch, tmp_path):
    """Import bench modules as the scripts do (their folder first on sys.path); results go to tmp_path."""
    monkeypatch.syspath_prepend(str(BENCH))
    harness = importlib.import_module("harness")
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    return lambda name: importlib.import_module(name)


@pytest.mark.parametrize("size, n_features", [(32, 8), (48, 16)])
def test_naive_baseline_equals_our_model(bench, size, n_features):
    naive_deepsum = bench("naive_deepsum")
    result = naive_deepsum.compare(size=size, n_features=n_features, batch=2, seed=3)
    worst = {key: max(error.values()) for key, error in result["errors"].items()}
    assert max(worst.values()) < 1e-5, worst


def test_naive_baseline_has_our_models_gradients(bench):
    """The gradients of every weight: ours (split reference frame, 2-D convolutions with their
    written-out gradients, the kernels' by XLA) against TensorFlow's automatic ones through the
    naive graph, on the same weights."""
    naive_deepsum = bench("naive_deepsum")
    model = model_lib.DeepSUM(default_config(n_features=8, seed=4, xla_kernel_gradients=True))
    x, masks = naive_deepsum.random_inputs(2, 24, seed=4)
    naive = naive_deepsum.naive_from(model)
    weights = tf.constant(np.random.default_rng(5).normal(size=(2, 1, 24, 24, 1)), tf.float32)
    variables = list(model.tf1_variables().values())
    gradients = {}
    for name, sr in (("ours", lambda: model(x, masks)["sr"]),
                     ("naive", lambda: naive(tf.constant(x), tf.constant(naive_deepsum.fill_coeff(masks)))["sr"])):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(sr() * weights)
        gradients[name] = tape.gradient(loss, variables)
    largest = max(float(np.abs(gradient).max()) for gradient in gradients["naive"])
    for name, ours, theirs in zip(model.tf1_variables(), gradients["ours"], gradients["naive"]):
        if name in NORMALISED_BIASES:  # zero up to round-off in both
            assert max(np.abs(ours).max(), np.abs(theirs).max()) < 1e-5 * largest, name
        else:
            error = relative_error(ours, theirs)
            assert error < 1e-4, (name, error)


def test_interleaved_rounds_start_one_function_further_on(bench):
    harness = bench("harness")
    calls = []
    functions = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timing = harness.interleaved_medians(functions, repeats=4, warmup=1, progress=False)
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab" + "abc"  # warm-up, then 4 rotated rounds
    assert [len(timing[name]["samples_s"]) for name in "abc"] == [4, 4, 4]


def test_naive_baseline_tiles_the_fill_over_channels(bench):
    # The baseline is only useful if it really is the authors' formulation: its graph holds a
    # [b, T, T, H, W, F] tensor (the fill coefficients tiled over the feature channels).
    naive_deepsum = bench("naive_deepsum")
    model = model_lib.DeepSUM(default_config(n_features=8))
    x, masks = naive_deepsum.random_inputs(1, 16)
    naive = naive_deepsum.naive_from(model)
    graph = tf.function(naive).get_concrete_function(tf.constant(x), tf.constant(naive_deepsum.fill_coeff(masks))).graph
    shapes = [tuple(op.outputs[0].shape) for op in graph.get_operations() if op.type == "Tile" and op.outputs]
    assert (1, 9, 9, 16, 16, 8) in shapes, shapes


def test_flop_count_matches_the_hand_count(bench):
    flops = bench("harness").deepsum_flops(1, 384, 384)
    assert flops["sisrnet"] == pytest.approx(0.69e12, rel=0.01)
    assert flops["regnet"] == pytest.approx(0.81e12, rel=0.01)
    assert flops["fusionnet"] == pytest.approx(0.52e12, rel=0.01)


@pytest.mark.parametrize("script, outputs", [
    ("conv_ceiling", ["conv_ceiling_quick.json"]),
    ("forward", ["forward_quick.json"]),
    ("train_step", ["train_step_quick.json"]),
    ("profile", ["profile_quick.json"]),
    ("kernel_gradients", ["kernel_gradients_quick.json"]),
    ("self_ensemble", ["self_ensemble_quick.json"]),
    ("superresolve_memory", ["superresolve_memory_quick.json"]),
    ("registration", ["registration_quick.json"]),
    ("conv_alternatives", ["conv_alternatives_quick.json"]),
])
def test_bench_script_runs_quick_and_writes_json(bench, tmp_path, script, outputs, capsys):
    module = bench(script)
    assert module.main(["--quick"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip(), "the script printed no table"
    for name in outputs:
        result = json.loads((tmp_path / name).read_text())
        assert result
        if script == "kernel_gradients":  # XLA's kernel gradients are TensorFlow's, not only faster
            assert all(layer["relative_difference"] < 1e-4 for layer in result["layers"].values()), result
        if script == "self_ensemble":  # both bands, each n_slide with and without the ensemble, after bicubic
            assert [(row["band"], row["n_slide"], row["self_ensemble"]) for row in result["rows"]] == [
                (band, n, on) for band in ("NIR", "RED")
                for n, on in [(None, None)] + [(n, on) for n in (0, 1, 2) for on in (False, True)]]
            assert "yes" in printed and "gain (dB)" in printed and result["machine"]["cpu"]
        if script == "superresolve_memory":  # the command's and naive's peaks, each from a fresh process
            medians = {name: float(np.median(peaks)) for name, peaks in result["peaks_bytes"].items()}
            assert result["ratio"] == pytest.approx(medians["superresolve --n-slide 0"] / medians["naive"])
            assert result["frames"] == result["frames_kept"] == 21 and min(medians.values()) > 2**27  # TF alone is larger
        if script == "registration":  # both layouts compute the same, and the rule's choice is printed
            assert all(case["max_difference"] < 1e-5 for case in result["cases"].values()), result
            assert [case["chosen"] for case in result["cases"].values()] == [
                "frames as channels", "image by image", "frames as channels", "frames as channels"]
        if script == "conv_alternatives":  # each alternative computes tf.nn.conv2d's / conv3d's sums
            assert [sorted(case["relative_difference"]) for case in result["cases"].values()] == [
                ["Winograd F(2x2, 3x3)", "direct (oneDNN)"],
                ["one 3-D convolution of the stacked window", f"three 3x3 convolutions, {result['frame_strips']} strips each"
                 if result["frame_strips"] > 1 else "three 3x3 convolutions, whole images"]], result
            assert all(difference < 1e-5 for case in result["cases"].values()
                       for difference in case["relative_difference"].values()), result
        if script in ("forward", "train_step"):
            text = json.dumps(result)
            assert "median_s" in text and np.isfinite(result["ceiling"]["gflops"])
            assert ("peak_rss_bytes" in text) == (script == "forward")  # train_step --quick starts no child


def test_xla_compiled_network_agrees_with_the_default(bench):
    # config.jit_compile (honoured by libraries.inference.network_call) compiles the whole
    # network with XLA; its output must stay within the equivalence tolerance.
    naive_deepsum = bench("naive_deepsum")
    model = model_lib.DeepSUM(default_config(n_features=8))
    x, masks = naive_deepsum.random_inputs(1, 16)
    spec = tf.TensorSpec([None, 9, None, None, 1])
    compiled = tf.function(lambda x, m: model(x, m)["sr"], input_signature=[spec, spec], jit_compile=True)
    expected = model(x, masks)["sr"].numpy()
    actual = compiled(tf.constant(x), tf.constant(masks.astype(np.float32))).numpy()
    assert np.max(np.abs(actual - expected)) / np.max(np.abs(expected)) < 1e-4


def test_synthetic_realism_statistics_on_known_signals(bench):
    realism = bench("synthetic_realism")
    rng = np.random.default_rng(0)
    white = 8000 + 100 * rng.standard_normal((4, 128, 128))
    stats = realism.frame_statistics(white)
    assert stats["noise_std"] == pytest.approx(100, rel=0.05) and abs(stats["psd_slope"]) < 0.2
    assert stats["p50"] == pytest.approx(8000, abs=5)
    fractal = 8000 + 1000 * synthetic.fractal_field(rng, (4, 128, 128), 2.0)
    assert realism.frame_statistics(fractal)["psd_slope"] == pytest.approx(-2.0, abs=0.3)
    corrupt = np.concatenate([white, np.full((1, 128, 128), 65520.0)])
    assert realism.frame_statistics(corrupt)["p50"] == stats["p50"]  # corrupt frames left out
    table = realism.statistics_table({"a": [white], "b": [white, fractal]})
    assert table.count("\n") == 1 + len(realism.STATISTICS) and "| noise_std |" in table


def test_model_fill_agrees_with_the_authors_fill_coefficients(bench):
    naive_deepsum = bench("naive_deepsum")
    rng = np.random.default_rng(0)
    masks = rng.random((2, 9, 12, 12, 1)) < 0.3  # many pixels with no clear frame too
    values = rng.normal(size=(2, 9, 12, 12, 5)).astype(np.float32)
    coefficients = naive_deepsum.fill_coefficients(masks)  # [b, t, s, H, W, 1]
    expected = np.sum(coefficients * values[:, None], axis=2)  # [b, t, H, W, 5]
    np.testing.assert_array_equal(model_lib.fill_masked(values, masks).numpy(), expected)
