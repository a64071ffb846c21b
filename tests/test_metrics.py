"""cL2 loss, cPSNR and the Kelvins score: parity with the authors' TF1 graph, agreement of the
TensorFlow and NumPy versions, shift search, cloudy crops and input errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import tensorflow as tf

from libraries import metrics
from helpers import relative_error

MU, SIGMA_RESCALED = 7754.664, 596.982  # the constants the reference case was made with
TOLERANCE = 1e-4


def brute_force_mse(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray, border: int) -> np.ndarray:
    """Independent float64 loop over the offsets for `[H, W]` images: `[(2*border+1)**2]`, NaN = no clear pixel."""
    height, width = y_true.shape
    h, w = height - 2 * border, width - 2 * border
    cropped = y_pred[border:border + h, border:border + w].astype(np.float64)
    mse = []
    for i in range(2 * border + 1):
        for j in range(2 * border + 1):
            clear = mask[i:i + h, j:j + w] != 0
            residual = (y_true[i:i + h, j:j + w].astype(np.float64) - cropped)[clear]
            mse.append(np.mean((residual - residual.mean()) ** 2) if residual.size else np.nan)
    return np.array(mse)


def realistic_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HR (uint16 DN), an SR close to it but shifted, biased and noisy (float DN), a random clear mask."""
    hr = rng.integers(3000, 15000, size=(size, size)).astype(np.uint16)
    sr = np.roll(hr.astype(np.float64), (1, -2), axis=(0, 1)) + 40.0 + rng.normal(0, 60, (size, size))
    clear = rng.random((size, size)) > 0.3
    return sr, hr, clear


def to_network_scale(image_dn: np.ndarray) -> np.ndarray:
    """`[H, W]` DN -> `[1, 1, H, W, 1]` float32 on the sigma_rescaled scale."""
    return ((np.asarray(image_dn, np.float64) - MU) / SIGMA_RESCALED).astype(np.float32)[None, None, :, :, None]


# --- parity with the authors' graph --------------------------------------------------------------


def test_reference_case_loss_psnr_score(reference_case):
    y, logits, mask = reference_case["y"], reference_case["logits"], reference_case["mask_y"]
    mse, count = metrics.corrected_mse_per_offset(y, logits, mask)
    loss = metrics.cl2_loss(y, logits, mask)
    cpsnr = metrics.cpsnr(y, logits, mask, mu=MU, sigma_rescaled=SIGMA_RESCALED)
    score = metrics.normalized_score(cpsnr, reference_case["norm_baseline"])

    assert mse.shape == (2, 49) and count.dtype == tf.int32
    per_offset = np.transpose(mse.numpy())[:, :, None]  # [b,49] -> [49,b,1], the reference layout
    # cpsnr's defaults are the authors' constants: with sigma (2316.3408) for sigma_rescaled the
    # cMSE would grow by (2316.3408 / 596.982)^2, cPSNR fall by 11.8 dB; mu cancels in the
    # brightness correction (it moves y and the output alike), so its default is read from the signature
    by_default = metrics.cpsnr(y, logits, mask)
    assert inspect.signature(metrics.cpsnr).parameters["mu"].default == MU
    errors = {
        "loss_per_offset": relative_error(per_offset, reference_case["loss_per_offset"]),
        "loss": relative_error(loss, reference_case["loss"]),
        "cpsnr_per_image": relative_error(cpsnr, reference_case["cpsnr_per_image"][:, 0]),
        "cpsnr_per_image_by_default": relative_error(by_default, reference_case["cpsnr_per_image"][:, 0]),
        "psnr": relative_error(tf.reduce_mean(cpsnr), reference_case["psnr"]),
        "score": relative_error(tf.reduce_mean(score), reference_case["score"]),
    }
    print("relative errors vs the TF1 reference:", errors)
    assert all(error < TOLERANCE for error in errors.values()), errors


def test_reference_case_numpy_scorer(reference_case):
    sr = reference_case["logits"][:, 0, :, :, 0].astype(np.float64) * SIGMA_RESCALED + MU  # [b,H,W] DN
    hr = reference_case["y"][:, 0, :, :, 0].astype(np.float64) * SIGMA_RESCALED + MU
    sm = reference_case["mask_y"][:, 0, :, :, 0]
    cpsnr = [metrics.kelvins_cpsnr(sr[b], hr[b], sm[b]) for b in range(2)]
    score = [metrics.kelvins_score(sr[b], hr[b], sm[b], reference_case["norm_baseline"][b, 0]) for b in range(2)]
    assert relative_error(cpsnr, reference_case["cpsnr_per_image"][:, 0]) < TOLERANCE
    assert relative_error(np.mean(score), reference_case["score"]) < TOLERANCE


# --- the shift search ----------------------------------------------------------------------------


def test_offsets_follow_the_reference_numbering_on_a_non_square_image():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.normal(size=(2, 20, 26)).astype(np.float32)
    mask = rng.random((20, 26)) > 0.4
    mse, count = metrics.corrected_mse_per_offset(y_true[None, :, :, None], y_pred[None, :, :, None],
                                                  mask[None, :, :, None])
    np.testing.assert_allclose(mse.numpy()[0], brute_force_mse(y_true, y_pred, mask, 3), rtol=1e-5)
    expected_count = [mask[i:i + 14, j:j + 20].sum() for i in range(7) for j in range(7)]
    np.testing.assert_array_equal(count.numpy()[0], expected_count)


@pytest.mark.parametrize("shift", [(2, -1), (-3, 3), (0, 2)])
def test_shifted_and_brightened_target_has_zero_loss_at_its_offset(shift):
    rng = np.random.default_rng(2)
    prediction = rng.normal(size=(40, 40)).astype(np.float32)
    # target[r, c] = prediction[r - dy, c - dx] + 0.7; the rows/columns that wrap stay outside every crop used
    target = np.roll(prediction, shift, axis=(0, 1)) + 0.7
    mask = np.ones_like(prediction)
    as_batch = [value[None, None, :, :, None] for value in (target, prediction, mask)]

    mse, _ = metrics.corrected_mse_per_offset(*as_batch)
    loss = metrics.cl2_loss(*as_batch)
    i, j = 3 + shift[0], 3 + shift[1]
    assert int(np.argmin(mse.numpy()[0])) == 7 * i + j
    assert float(loss) < 1e-10
    assert np.sort(mse.numpy()[0])[1] > 0.1  # every other offset is clearly worse


# --- TensorFlow and NumPy agree ------------------------------------------------------------------


@pytest.mark.parametrize("size, seed", [(48, 3), (48, 4), (48, 5), (384, 6)])
def test_tf_cpsnr_agrees_with_kelvins_cpsnr(size, seed):
    sr, hr, clear = realistic_pair(np.random.default_rng(seed), size)
    expected = metrics.kelvins_cpsnr(sr, hr, clear)
    actual = metrics.cpsnr(to_network_scale(hr), to_network_scale(sr), clear[None, None, :, :, None],
                           mu=MU, sigma_rescaled=SIGMA_RESCALED)
    assert actual.shape == (1,)
    assert relative_error(actual, [expected]) < 1e-5
    assert np.isclose(expected, metrics.kelvins_cpsnr(sr, hr, clear.astype(np.uint8) * 255))  # 0/255 SM.png


def test_kelvins_score_is_the_same_for_every_numeric_dtype_and_layout():
    sr, hr, clear = realistic_pair(np.random.default_rng(7), 48)
    sr = np.clip(np.rint(sr), 0, 65535)
    expected = metrics.kelvins_score(sr, hr, clear, 45.0)
    for dtype in (np.uint16, np.int32, np.int64, np.float32, np.float64):
        assert metrics.kelvins_score(sr.astype(dtype), hr.astype(dtype), clear, 45.0) == expected, dtype
    assert metrics.kelvins_score(sr[:, :, None], hr[None], clear[None, :, :, None], 45.0) == expected
    assert expected == pytest.approx(45.0 / metrics.kelvins_cpsnr(sr, hr, clear))


# --- cloudy crops and errors ---------------------------------------------------------------------


def test_offsets_without_clear_pixels_are_ignored_without_nan():
    rng = np.random.default_rng(8)
    y_true, y_pred = rng.normal(size=(2, 1, 1, 24, 24, 1)).astype(np.float32)
    mask = np.zeros_like(y_true)
    mask[0, 0, :2, :, 0] = 1  # only rows 0-1 clear: crops starting at rows 2..6 see nothing
    prediction = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        mse, count = metrics.corrected_mse_per_offset(y_true, prediction, mask)
        loss = metrics.cl2_loss(y_true, prediction, mask)
    gradient = tape.gradient(loss, prediction)

    valid = count.numpy()[0] > 0
    assert valid.tolist() == [i < 2 for i in range(7) for j in range(7)]
    assert np.all(np.isfinite(mse.numpy())) and np.all(np.isfinite(gradient.numpy()))
    expected = brute_force_mse(y_true[0, 0, :, :, 0], y_pred[0, 0, :, :, 0], mask[0, 0, :, :, 0], 3)
    assert float(loss) == pytest.approx(np.nanmin(expected), rel=1e-5)
    assert np.isfinite(metrics.cpsnr(y_true, y_pred, mask).numpy()).all()


def test_image_without_any_clear_pixel_is_an_error():
    y_true = np.zeros((2, 1, 16, 16, 1), np.float32)
    mask = np.ones_like(y_true)
    mask[1] = 0
    with pytest.raises(metrics.MetricError, match=r"no clear target pixel.*\[1\]"):
        metrics.cl2_loss(y_true, y_true + 1, mask)
    with pytest.raises(metrics.MetricError, match="no clear target pixel"):
        metrics.cpsnr(y_true, y_true + 1, mask)
    in_graph = tf.function(metrics.cl2_loss)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no clear target pixel"):
        in_graph(y_true, y_true + 1, mask)


def test_tf_metrics_reject_mismatched_shapes():
    y_true = np.zeros((1, 1, 16, 16, 1), np.float32)
    with pytest.raises(metrics.MetricError, match="y_pred"):
        metrics.cl2_loss(y_true, y_true[:, :, :12], np.ones_like(y_true))
    with pytest.raises(metrics.MetricError, match="larger than 2\\*border"):
        metrics.cl2_loss(y_true[:, :, :6], y_true[:, :, :6], np.ones_like(y_true[:, :, :6]))
    with pytest.raises(metrics.MetricError, match=r"\[batch, 1, height, width, 1\]"):
        metrics.cl2_loss(y_true[0, 0], y_true[0, 0], y_true[0, 0])
    for measure in (metrics.cl2_loss, metrics.cpsnr):  # a negative border would search no offset
        with pytest.raises(metrics.MetricError, match=r"^border: expected >= 0, got -1$"):
            measure(y_true, y_true, np.ones_like(y_true), border=-1)


@pytest.mark.parametrize("where", ["y_true", "y_pred", "mask"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_tf_metrics_called_eagerly_refuse_non_finite_values(where, value):
    """A notebook calling cl2_loss or cpsnr on a NaN got a NaN loss or score and no error (a NaN
    mask even counted as clear); inside training the loss's numerics check stops the step."""
    rng = np.random.default_rng(2)
    arrays = {"y_true": rng.normal(size=(2, 1, 16, 16, 1)).astype(np.float32),
              "y_pred": rng.normal(size=(2, 1, 16, 16, 1)).astype(np.float32),
              "mask": np.ones((2, 1, 16, 16, 1), np.float32)}
    arrays[where][1, 0, 3, 4, 0] = value
    for function in (metrics.cl2_loss, metrics.cpsnr):
        with pytest.raises(metrics.MetricError, match=rf"^{where}: expected finite values, found 1 NaN or Inf$"):
            function(arrays["y_true"], arrays["y_pred"], arrays["mask"])


@pytest.mark.parametrize("psnr, baseline, message", [
    ([40.0, 41.0], [38.0], r"^normalized_score: 2 cPSNR values and 1 baselines; expected one baseline per image$"),
    ([40.0, 41.0], [38.0, 39.0, 40.0], r"^normalized_score: 2 cPSNR values and 3 baselines"),
    ([40.0, 41.0], [38.0, -39.0], r"^baseline: -39.0 for image 1; expected a positive finite cPSNR in dB$"),
    ([40.0, 41.0], [np.nan, 39.0], r"^baseline: nan for image 0; expected a positive finite cPSNR in dB$"),
    ([40.0, 41.0], [38.0, np.inf], r"^baseline: inf for image 1"),
    ([np.nan, 41.0], [38.0, 39.0], r"^cpsnr_values: nan for image 0; expected a positive cPSNR in dB$"),
    ([40.0, 0.0], [38.0, 39.0], r"^cpsnr_values: 0.0 for image 1"),
])
def test_normalized_score_refuses_what_is_not_one_positive_baseline_per_image(psnr, baseline, message):
    with pytest.raises(metrics.MetricError, match=message):
        metrics.normalized_score(np.float32(psnr), np.float32(baseline))


def test_normalized_score_is_baseline_over_cpsnr_and_zero_for_a_perfect_image():
    np.testing.assert_allclose(metrics.normalized_score([40.0, np.inf], [[38.0], [39.0]]).numpy(), [0.95, 0.0])


def test_kelvins_scorer_errors_say_what_was_expected():
    sr, hr, clear = realistic_pair(np.random.default_rng(9), 32)
    with pytest.raises(metrics.MetricError, match="at least one clear pixel"):
        metrics.kelvins_cpsnr(sr, hr, np.zeros_like(clear))
    with_nan = sr.copy()
    with_nan[5, 7] = np.nan
    with pytest.raises(metrics.MetricError, match="sr: expected finite values"):
        metrics.kelvins_score(with_nan, hr, clear, 45.0)
    with pytest.raises(metrics.MetricError, match="same shape"):
        metrics.kelvins_cpsnr(sr[:30], hr, clear)
    with pytest.raises(metrics.MetricError, match=r"one image \[height, width\]"):
        metrics.kelvins_cpsnr(np.stack([sr, sr]), hr, clear)
    with pytest.raises(metrics.MetricError, match="positive cPSNR"):
        metrics.kelvins_score(sr, hr, clear, float("nan"))
    # a bool image would be scored as 0/1 DN, a complex one without its imaginary part, text parsed as numbers
    for name, bad in (("sr", (sr > 8000, hr)), ("sr", (sr + 0j, hr)), ("hr", (sr, hr.astype(str)))):
        dtype = (bad[0] if name == "sr" else bad[1]).dtype
        with pytest.raises(metrics.MetricError,
                           match=rf"^{name}: expected integer or floating 16-bit values, got dtype {dtype}$"):
            metrics.kelvins_cpsnr(*bad, clear)
    # the 3-pixel crop on each side leaves nothing of a 6-pixel side
    for shape in ((6, 6), (32, 6)):
        rows, columns = shape
        with pytest.raises(metrics.MetricError, match=rf"^sr: expected an image larger than 6 pixels per side, "
                                                      rf"got \({rows}, {columns}\)$"):
            metrics.kelvins_cpsnr(sr[:rows, :columns], hr[:rows, :columns], clear[:rows, :columns])


# --- graph mode ----------------------------------------------------------------------------------


def test_metrics_run_in_tf_function_with_dynamic_batch_and_size(reference_case):
    spec = tf.TensorSpec([None, 1, None, None, 1], tf.float32)

    @tf.function(input_signature=[spec, spec, spec])
    def evaluate(y_true, y_pred, mask):
        return metrics.cl2_loss(y_true, y_pred, mask), metrics.cpsnr(y_true, y_pred, mask)

    y, logits, mask = reference_case["y"], reference_case["logits"], reference_case["mask_y"]
    for batch, height, width in ((2, 64, 64), (1, 40, 42)):
        arguments = tuple(value[:batch, :, :height, :width] for value in (y, logits, mask))
        loss, cpsnr = evaluate(*arguments)
        assert float(loss) == pytest.approx(float(metrics.cl2_loss(*arguments)), rel=1e-6)
        np.testing.assert_allclose(cpsnr.numpy(), metrics.cpsnr(*arguments).numpy(), rtol=1e-6)
    assert evaluate.experimental_get_tracing_count() == 1
    rank_4 = [value[:, 0] for value in (y, logits, mask)]  # [b,1,H,W,1] -> [b,H,W,1]
    assert float(metrics.cl2_loss(*rank_4)) == pytest.approx(float(reference_case["loss"]), rel=TOLERANCE)


def test_kelvins_error_map_is_the_residual_at_the_best_offset_without_bias():
    rng = np.random.default_rng(11)
    hr = rng.uniform(3000, 15000, (30, 30))
    # sr[r, c] = hr[r + 1, c - 2] - 55 (the rows/columns that wrap stay outside the crops used),
    # wrong by 300 DN at one pixel: at offset (3 + 1, 3 - 2) only that pixel differs
    sr = np.roll(hr, (-1, 2), axis=(0, 1)) - 55.0
    sr[10, 12] += 300.0
    clear = np.ones((30, 30), bool)
    clear[20:23, 5:9] = False  # cloudy in HR
    error = metrics.kelvins_error_map(sr, hr, clear)
    assert error.shape == (24, 24)
    # by hand: the bias over the 24*24 - 12 clear pixels of the crop absorbs -300 / count of the bad pixel
    count = 24 * 24 - 12
    expected = np.full((24, 24), 300.0 / count)
    expected[10 - 3, 12 - 3] = 300.0 - 300.0 / count
    expected[20 - 4:23 - 4, 5 - 1:9 - 1] = np.nan  # HR rows 20..22 and columns 5..8 at offset (4, 1)
    np.testing.assert_allclose(error, expected, rtol=1e-9, atol=1e-9)
    # the same search as the score: its mean square is the MSE of kelvins_cpsnr
    assert 10 * np.log10(65535.0 ** 2 / np.nanmean(error ** 2)) == pytest.approx(metrics.kelvins_cpsnr(sr, hr, clear))


@pytest.mark.parametrize("baseline, shown", [("abc", "'abc'"), ([40.0, 41.0], r"\[40.0, 41.0\]"), (np.nan, "nan"),
                                             (-3.0, "-3.0"), (0, "0.0")])
def test_kelvins_score_refuses_a_baseline_that_is_not_one_positive_cpsnr(baseline, shown):
    image = np.full((12, 12), 1000.0)
    with pytest.raises(metrics.MetricError, match=rf"^baseline: expected a positive cPSNR in dB from norm.csv, "
                                                  rf"got {shown}$"):
        metrics.kelvins_score(image, image + 5, np.ones((12, 12), bool), baseline)
