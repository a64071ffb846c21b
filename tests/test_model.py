"""The network: equivalence with the authors' TF1 graph, the fill and registration steps,
shapes, errors and variables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import relative_error
from libraries import model as model_lib
from libraries import checkpoints
from libraries.config import default_config

SMALL = default_config(n_features=8)


@pytest.fixture(scope="module")
def reference_run(reference_dir, reference_case):
    """DeepSUM with the case's TF1 checkpoint, its outputs, and the sub-step intermediates."""
    model = model_lib.DeepSUM()
    checkpoints.load_tf1_checkpoint(model, reference_dir / "deepsum_tf1_case_a" / "checkpoint_tf1")
    x, masks = reference_case["x"], reference_case["masks_lr"]
    out = model(x, masks)
    features = model.sisrnet(x)
    filled = model_lib.fill_masked(model_lib.register_frames(features, out["filters"]), masks)
    fusion_out = model.fusionnet(filled)
    extra = {
        "fusion_out": fusion_out,
        "residual": out["sr"] - fusion_out,
        "x_registered_unfilled": model_lib.register_frames(x, out["filters"]),
    }
    return model, out, extra


def test_equivalence_with_the_authors_graph(reference_run, reference_case, record_property):
    _, out, extra = reference_run
    pairs = {
        "sr vs logits": (out["sr"], reference_case["logits"]),
        "filters": (out["filters"], reference_case["filters"]),
        "filter_logits vs logits_filters": (out["filter_logits"], reference_case["logits_filters"]),
        "x_registered": (out["x_registered"], reference_case["x_registered"]),
        "fusion_out": (extra["fusion_out"], reference_case["fusion_out"]),
        "residual": (extra["residual"], reference_case["residual"]),
        "x_registered_unfilled": (extra["x_registered_unfilled"], reference_case["x_registered_unfilled"]),
    }
    errors, worst = {}, {}
    for name, (actual, expected) in pairs.items():
        assert tuple(actual.shape) == expected.shape, name
        errors[name] = relative_error(actual.numpy(), expected)
        worst[name] = float(np.max(np.abs(actual.numpy() - expected)) / np.max(np.abs(expected)))
    print("relative L2 errors vs the TF1 graph:", json.dumps({k: f"{v:.2e}" for k, v in errors.items()}))
    print("max |error| / max |reference|:", json.dumps({k: f"{v:.2e}" for k, v in worst.items()}))
    record_property("relative_errors", errors)
    assert max(worst.values()) < 1e-4, worst
    assert max(errors.values()) < 1e-4, errors


def test_features_match_the_reference_intermediates(reference_run, reference_dir, reference_case):
    model, _, _ = reference_run
    with np.load(reference_dir / "deepsum_tf1_case_a" / "intermediates.npz", allow_pickle=False) as data:
        expected = data["sisr_features_b0_f01"]  # [1, 2, 64, 64, 64]
    features = model.sisrnet(reference_case["x"][:1, :2]).numpy()
    assert relative_error(features, expected) < 1e-4


def test_fill_on_hand_made_masks():
    # 3 frames, 1x4 pixels: pixel 0 all clear, 1 only frame 2 clear, 2 none clear, 3 frames 1 and 2 clear
    clear = np.array([[1, 0, 0, 0], [1, 0, 0, 1], [1, 1, 0, 1]], bool).reshape(1, 3, 1, 4, 1)
    values = (10 * np.arange(1, 4, dtype=np.float32)).reshape(1, 3, 1, 1, 1) + np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4, 1)
    filled = model_lib.fill_masked(values, clear).numpy()[0, :, 0, :, 0]
    expected = np.array([[10, 31, 12, 23], [20, 31, 22, 23], [30, 31, 32, 33]], np.float32)
    np.testing.assert_array_equal(filled, expected)


def test_fill_agrees_with_the_reference_coefficients(reference_case):
    unfilled = reference_case["x_registered_unfilled"]
    expected = np.sum(reference_case["fill_coeff"] * unfilled[:, None], axis=2)
    np.testing.assert_array_equal(model_lib.fill_masked(unfilled, reference_case["masks_lr"]).numpy(), expected)


@pytest.mark.parametrize("dy, dx", [(0, 0), (2, -3), (-4, 4), (1, 0)])
def test_one_hot_filter_moves_the_image_by_its_tap(dy, dx):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 2, 24, 24, 3)).astype(np.float32)
    taps = np.zeros((1, 1, 81), np.float32)
    taps[0, 0, 9 * (dy + 4) + (dx + 4)] = 1
    moved = model_lib.register_frames(image, taps.reshape(1, 1, 9, 9)).numpy()
    np.testing.assert_array_equal(moved[:, 0], image[:, 0])  # the reference frame is untouched
    inner = slice(4, 20)  # away from the reflected border
    shifted = image[:, 1, 4 + dy : 20 + dy, 4 + dx : 20 + dx]  # out[y, x] = in[y + dy, x + dx]
    np.testing.assert_allclose(moved[:, 1, inner, inner], shifted, rtol=0, atol=1e-6)


def _registration_by_numpy(values, filters, weights):
    """register_frames in NumPy, and the gradients of sum(weights * output) with respect to the
    values and the filters: out[y, x] = sum_ij f[i, j] * padded[y + i, x + j] per frame >= 1."""
    batch, frames, height, width, _ = values.shape
    k = filters.shape[-1]
    pad = k // 2
    rows, cols = (np.pad(np.arange(n), pad, mode="reflect") for n in (height, width))  # padded -> source index
    out, d_values, d_filters = values.copy(), weights.copy(), np.zeros_like(filters)
    for b in range(batch):
        for t in range(1, frames):
            padded = values[b, t][rows][:, cols]  # [H+2p, W+2p, C], REFLECT
            d_padded = np.zeros_like(padded)
            out[b, t] = 0
            d_values[b, t] = 0
            for i in range(k):
                for j in range(k):
                    window = padded[i:i + height, j:j + width]
                    out[b, t] += filters[b, t - 1, i, j] * window
                    d_filters[b, t - 1, i, j] = np.sum(weights[b, t] * window)
                    d_padded[i:i + height, j:j + width] += filters[b, t - 1, i, j] * weights[b, t]
            np.add.at(d_values[b, t], (rows[:, None], cols[None, :]), d_padded)
    return out, d_values, d_filters


@pytest.mark.parametrize("batch, frames, channels", [(2, 4, 5), (2, 4, 1), (1, 2, 3), (3, 2, 2), (2, 2, 1)])
def test_registration_and_its_gradients_agree_with_numpy(batch, frames, channels):
    # one filtered frame of several channels runs image by image, the others with the frames as
    # the channels
    rng = np.random.default_rng(batch * 100 + frames * 10 + channels)
    values = rng.normal(size=(batch, frames, 13, 11, channels)).astype(np.float32)
    filters = rng.random((batch, frames - 1, 9, 9)).astype(np.float32)
    filters /= filters.sum(axis=(2, 3), keepdims=True)
    weights = rng.normal(size=values.shape).astype(np.float32)
    expected = _registration_by_numpy(values.astype(np.float64), filters.astype(np.float64), weights.astype(np.float64))

    def registered_and_gradients(v, f):
        with tf.GradientTape() as tape:
            tape.watch([v, f])
            out = model_lib.register_frames(v, f)
            loss = tf.reduce_sum(out * weights)
        return (out, *tape.gradient(loss, [v, f]))

    dynamic = [tf.TensorSpec([None] * 4 + [channels]), tf.TensorSpec([None, None, 9, 9])]
    for run in (registered_and_gradients, tf.function(registered_and_gradients, input_signature=dynamic)):
        for actual, wanted in zip(run(tf.constant(values), tf.constant(filters)), expected):
            np.testing.assert_allclose(actual.numpy(), wanted, rtol=1e-5, atol=1e-5)


def _inputs(batch, size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 9, size, size, 1)).astype(np.float32)
    masks = rng.random((batch, 9, size, size, 1)) < 0.8
    return x, masks


@pytest.mark.parametrize("batch, size", [(1, 16), (3, 40)])
def test_shapes_eager_and_in_tf_function(batch, size):
    model = model_lib.DeepSUM(SMALL)
    x, masks = _inputs(batch, size)
    eager = model(x, masks)
    assert eager["sr"].shape == (batch, 1, size, size, 1)
    assert eager["filters"].shape == (batch, 8, 9, 9)
    assert eager["filter_logits"].shape == (batch, 8, 81)
    assert eager["x_registered"].shape == (batch, 9, size, size, 1)
    np.testing.assert_allclose(tf.reduce_sum(eager["filters"], axis=[2, 3]), 1.0, rtol=1e-5)
    spec = tf.TensorSpec([None, 9, None, None, 1])
    step = tf.function(lambda x, m: model(x, m, training=True), input_signature=[spec, tf.TensorSpec(spec.shape, tf.bool)])
    traced = step(x, masks)
    np.testing.assert_allclose(traced["sr"], eager["sr"], rtol=1e-5, atol=1e-5)


def test_masks_may_be_zero_one_numbers():
    model = model_lib.DeepSUM(SMALL)
    x, masks = _inputs(1, 16)
    np.testing.assert_array_equal(model(x, masks)["sr"], model(x, masks.astype(np.float32))["sr"])


def test_gradients_reach_every_variable():
    model = model_lib.DeepSUM(SMALL)
    x, masks = _inputs(2, 16)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, masks, training=True)["sr"]))
    gradients = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)


@pytest.mark.parametrize(
    "x_shape, dtype, words",
    [
        ((1, 8, 16, 16, 1), np.float32, ["x", "[batch, 9, height, width, 1]"]),
        ((9, 16, 16, 1), np.float32, ["x", "[batch, 9, height, width, 1]"]),
        ((1, 9, 16, 16, 2), np.float32, ["x", "[batch, 9, height, width, 1]"]),
        ((1, 9, 16, 16, 1), np.float64, ["x", "float32"]),
        ((1, 9, 4, 4, 1), np.float32, ["x", "height and width >= 9 (the config's filter_size)"]),
    ],
)
def test_bad_inputs_raise_clear_errors(x_shape, dtype, words):
    model = model_lib.DeepSUM(SMALL)
    with pytest.raises(ValueError) as error:
        model(np.zeros(x_shape, dtype), np.ones(x_shape, bool))
    assert all(word in str(error.value) for word in words), str(error.value)


def test_masks_of_another_shape_are_refused():
    """12 rows of masks for 16 rows of frames: each passes the size guard (>= 9) on its own, so
    only the x-versus-masks check can refuse it."""
    model = model_lib.DeepSUM(SMALL)
    x, masks = _inputs(1, 16)
    assert masks[:, :, :12].shape == (1, 9, 12, 16, 1)
    with pytest.raises(model_lib.InputError) as error:
        model(x, masks[:, :, :12])
    assert str(error.value) == "masks: expected the shape of x (1, 9, 16, 16, 1), got (1, 9, 12, 16, 1)"


def test_masks_of_a_type_that_is_not_bool_or_numbers_are_refused():
    """Complex masks: `!= 0` would still give a clear map, so only the dtype check refuses them."""
    model = model_lib.DeepSUM(SMALL)
    x, masks = _inputs(1, 16)
    with pytest.raises(model_lib.InputError) as error:
        model(x, masks.astype(np.complex64))
    assert str(error.value) == "masks: expected dtype bool or 0/1 numbers, got complex64"


def test_nan_input_raises_eager_and_in_tf_function():
    model = model_lib.DeepSUM(SMALL)
    x, masks = _inputs(1, 16)
    x[0, 3, 5, 5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model(x, masks)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        tf.function(model)(tf.constant(x), tf.constant(masks))


def test_variables_have_tf1_names_shapes_and_groups():
    model = model_lib.DeepSUM()
    variables = model.tf1_variables()
    assert len(variables) == 60
    assert variables["conv_up_0/W"].shape == (1, 3, 3, 1, 64)
    assert variables["conv_up_7/W"].shape == (1, 3, 3, 64, 64)
    assert variables["Rconv1b/W"].shape == (2, 3, 3, 64, 128)
    assert variables["Rconv7_b/W"].shape == (1, 3, 3, 64, 81)
    assert variables["conv_fuse_3/W"].shape == (3, 3, 3, 64, 64)
    assert variables["conv_fuse_4/W"].shape == (1, 1, 1, 64, 1)
    assert variables["inst_norm_fuse_3/gamma"].shape == (64,)
    groups = {name: len(getattr(model, name).trainable_variables) for name in ("sisrnet", "regnet", "fusionnet")}
    assert groups == {"sisrnet": 32, "regnet": 10, "fusionnet": 18}
    assert set(model.sisrnet.tf1_variables()) == {n for n in variables if "_up_" in n}
    assert len(model.trainable_variables) == 60


def test_initialisation_is_seeded_glorot_with_zero_biases():
    first, again, other = (model_lib.DeepSUM(default_config(seed=s)) for s in (1, 1, 2))
    a, b, c = first.tf1_variables(), again.tf1_variables(), other.tf1_variables()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["conv_up_3/W"], c["conv_up_3/W"])
    assert not np.array_equal(a["conv_up_3/W"], a["conv_up_4/W"])
    np.testing.assert_array_equal(a["conv_up_3/b"], 0)
    np.testing.assert_array_equal(a["inst_norm_up_3/gamma"], 1)
    np.testing.assert_array_equal(a["inst_norm_up_3/beta"], 0)
    std = float(np.std(a["conv_up_3/W"]))
    assert 0.8 < std / np.sqrt(2 / (9 * 64 + 9 * 64)) < 1.2  # Glorot: 2 / (fan_in + fan_out)


@pytest.fixture(scope="module")
def frame_by_frame_pass():
    """(model, x, masks, outputs of the whole-scene pass (eager), the frame-by-frame pass as a
    `tf.function`): in a graph, where the frames are ordered by control dependencies; traced
    once for the tests below."""
    x = tf.random.stateless_normal([2, 9, 16, 16, 1], seed=[7, 8])
    masks = tf.random.stateless_uniform([2, 9, 16, 16, 1], seed=[9, 10]) < 0.7
    model = model_lib.DeepSUM(SMALL)
    expected = model(x, masks)
    model.frame_by_frame = True
    return model, x, masks, expected, tf.function(lambda x, m: model(x, m), autograph=False)


def test_frame_by_frame_gives_the_same_outputs(frame_by_frame_pass):
    model, x, masks, expected, frame_by_frame = frame_by_frame_pass
    actual = frame_by_frame(x, masks)
    worst = {key: np.max(np.abs(actual[key].numpy() - expected[key].numpy())) / np.max(np.abs(expected[key].numpy()))
             for key in expected}  # float rounding only (graph versus eager kernels)
    assert max(worst.values()) < 1e-5, worst
    features = model.sisrnet_features(x)
    assert relative_error(features.numpy(), model.sisrnet(x).numpy()) < 1e-6
    from_features = model.forward_from_features(features, x, masks)["sr"]
    assert relative_error(from_features.numpy(), expected["sr"].numpy()) < 1e-5


def _runs_after(op: tf.Operation, earlier: tf.Operation) -> bool:
    """Whether `earlier` is an ancestor of `op` in their graph, through data or control inputs:
    the executor cannot start `op` before `earlier` has run."""
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [tensor.op for tensor in current.inputs] + list(current.control_inputs):
            if parent is earlier:
                return True
            if parent.name not in seen:
                seen.add(parent.name)
                stack.append(parent)
    return False


def _one_chain(ops: list[tf.Operation]) -> bool:
    return all(_runs_after(later, earlier) for earlier, later in zip(ops, ops[1:]))


def test_frame_by_frame_runs_the_frames_one_after_another_in_the_graph(frame_by_frame_pass):
    """Frame by frame holds the intermediates of one frame at a time because each frame's ops wait
    for the previous frame's (control dependencies): without them the executor may run the frames
    side by side, at the whole-scene pass's peak memory, with the same outputs. In the traced graph
    (ops in the order they were created): SISRNet's 9 x 8 convolutions are one chain; RegNet's
    frames (after its reference frame's two convolutions, 7 per frame) each start after the
    previous frame's last; the registration's 8 frames and FusionNet's 3 x (7 + 5 + 3 + 1)
    convolutions are one chain each."""
    _, x, masks, _, frame_by_frame = frame_by_frame_pass
    graph = frame_by_frame.get_concrete_function(x, masks).graph
    convolutions = [op for op in graph.get_operations() if op.type == "Conv2D"]
    registrations = [op for op in graph.get_operations() if op.type == "StatelessWhile"]  # image by image
    assert len(convolutions) == 9 * 8 + 2 + 8 * 7 + 3 * 16 and len(registrations) == 8
    sisrnet, regnet, fusionnet = convolutions[:72], convolutions[72 + 2:-48], convolutions[-48:]
    regnet_frames = [regnet[7 * t:7 * (t + 1)] for t in range(8)]
    assert _one_chain(sisrnet)
    assert _one_chain([op for frame in regnet_frames for op in (frame[0], frame[-1])])
    assert _one_chain(registrations) and _one_chain(fusionnet)
    # the check can fail: the two halves of the reference frame's convolution may run side by side
    assert not _one_chain(convolutions[72:74])


def test_frame_by_frame_fill_is_bit_exact():
    values = tf.random.stateless_normal([2, 9, 8, 8, 3], seed=[1, 2])
    masks = tf.random.stateless_uniform([2, 9, 8, 8, 1], seed=[3, 4]) < 0.3  # some pixels clear in no frame
    expected = model_lib.fill_masked(values, masks).numpy()
    frames = model_lib.fill_masked_frame_by_frame(model_lib.frame_list(values), masks)
    np.testing.assert_array_equal(tf.concat(frames, axis=1).numpy(), expected)


@pytest.mark.parametrize("setting", [True, "auto"])
@pytest.mark.parametrize("dims", [2, 3])
def test_xla_kernel_gradient_convolutions_match_tensorflows(dims, setting):
    """`conv2d`/`conv3d` (kernel gradient by XLA, or chosen by measurement) against
    `tf.nn.conv2d`/`conv3d` differentiated by TensorFlow: same outputs, same gradients for the
    input and the kernel."""
    if dims == 2:
        padded = tf.random.stateless_normal([3, 14, 12, 5], seed=[1, 2])
        kernel = tf.random.stateless_normal([3, 3, 5, 4], seed=[3, 4])
        ours, theirs = (lambda p, k: model_lib.conv2d(p, k, setting)), lambda p, k: tf.nn.conv2d(p, k, 1, "VALID")
    else:
        padded = tf.random.stateless_normal([2, 7, 12, 10, 5], seed=[1, 2])
        kernel = tf.random.stateless_normal([3, 3, 3, 5, 4], seed=[3, 4])
        ours = lambda p, k: model_lib.conv3d(p, k, setting)  # noqa: E731
        theirs = lambda p, k: tf.nn.conv3d(p, k, [1] * 5, "VALID")  # noqa: E731

    @tf.function
    def value_and_gradients(convolution):
        with tf.GradientTape() as tape:
            tape.watch([padded, kernel])
            out = convolution(padded, kernel)
            loss = tf.reduce_sum(out * tf.sin(out))  # a non-constant output gradient
        return [out, *tape.gradient(loss, [padded, kernel])]

    for actual, expected in zip(value_and_gradients(ours), value_and_gradients(theirs)):
        assert actual.shape == expected.shape
        assert relative_error(actual.numpy(), expected.numpy()) < 1e-5


def test_kernel_gradients_auto_takes_the_faster_by_its_measurement(monkeypatch):
    """`xla_kernel_gradients: "auto"` follows the measured seconds (here planted: XLA only when
    more than the margin faster), once per process; true and false are taken as they are."""
    from libraries.model import kernel_gradients

    assert SMALL.xla_kernel_gradients == "auto"  # the default
    assert kernel_gradients.resolve(True) is True and kernel_gradients.resolve(False) is False
    for onednn_s, xla_s, expected in ((1.0, 0.5, True), (1.0, 0.95, False), (0.4, 1.0, False)):
        kernel_gradients.xla_is_faster.cache_clear()
        calls = []
        monkeypatch.setattr(kernel_gradients, "measure", lambda: calls.append(1) or {"onednn_s": onednn_s, "xla_s": xla_s})
        assert kernel_gradients.resolve("auto") is expected
        assert kernel_gradients.resolve("auto") is expected and len(calls) == 1  # measured once
    kernel_gradients.xla_is_faster.cache_clear()


def test_both_kernel_gradients_equal_numpys_and_the_measurement_times_both():
    """d loss / d kernel of a VALID 3x3 convolution, sum over pixels of input patch x output
    gradient, computed in NumPy; both implementations give it."""
    from libraries.model import kernel_gradients

    padded = tf.random.stateless_normal([2, 7, 6, 3], seed=[1, 2])
    out_grad = tf.random.stateless_normal([2, 5, 4, 4], seed=[3, 4])
    kernel = tf.zeros([3, 3, 3, 4])
    p, g = padded.numpy().astype(np.float64), out_grad.numpy().astype(np.float64)
    expected = np.stack([np.stack([np.einsum("nhwi,nhwo->io", p[:, i:i + 5, j:j + 4], g) for j in range(3)])
                         for i in range(3)])  # [3, 3, in, out]
    for gradient in (kernel_gradients.xla_kernel_gradient, kernel_gradients.onednn_kernel_gradient):
        assert relative_error(gradient(padded, out_grad, kernel).numpy(), expected) < 1e-5
    assert sorted(kernel_gradients.measure(shape=(2, 10, 10, 8), repeats=1)) == ["onednn_s", "xla_s"]


@pytest.mark.parametrize("recompute", [False, True])
def test_xla_kernel_gradients_give_tensorflows_gradients(recompute):
    """The whole network's gradients with `xla_kernel_gradients: true` equal those of
    TensorFlow's own convolution gradients, also under gradient checkpointing."""
    x = tf.random.stateless_normal([2, 9, 16, 16, 1], seed=[5, 6])
    masks = tf.random.stateless_uniform([2, 9, 16, 16, 1], seed=[7, 8]) < 0.7

    def gradients(config):
        model = model_lib.DeepSUM(config, recompute=recompute)

        @tf.function
        def run():
            with tf.GradientTape() as tape:
                out = model(x, masks)
                loss = tf.reduce_mean(tf.square(out["sr"])) + tf.reduce_mean(tf.square(out["filter_logits"]))
            return tape.gradient(loss, model.trainable_variables)

        return [g.numpy() for g in run()]

    fast = gradients(SMALL.replace(xla_kernel_gradients=True))
    plain = gradients(SMALL.replace(xla_kernel_gradients=False))
    worst = max(relative_error(a, b) for a, b in zip(fast, plain))
    assert 0 < worst < 1e-4  # not the same code path (0), the same gradients (float32 sums)
