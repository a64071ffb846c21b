"""The PROBA-V quality measures: the cL2 training loss, cPSNR and the Kelvins score.

All three rest on one construction, written once here (`corrected_mse_per_offset`): crop the
super-resolved image by `border` pixels on each side; for each of the (2*border+1)^2 offsets
(i, j) take the target crop starting at row i, column j and the same crop of the target's
clear mask; remove the mean brightness difference b over the clear pixels and take the mean
squared error over them. Offset k = (2*border+1)*i + j, as in the authors' code.

- `cl2_loss`: per image the smallest corrected MSE over the offsets, averaged over the batch
  (values on the `sigma_rescaled` scale, as the authors' `loss`).
- `cpsnr`: per image the best cPSNR over the offsets, in dB, on the 16-bit DN scale (the
  authors' `PSNR`: outputs de-normalised with `v * sigma_rescaled + mu`, peak 65535).
- `normalized_score`: baseline cPSNR / cPSNR (lower is better, 1.0 = the organisers' baseline).
- `kelvins_cpsnr`, `kelvins_score`: the official rule for one 384x384 image, in NumPy float64;
  `kelvins_error_map`: its per-pixel error at the best offset (figures).

An offset whose crop holds no clear pixel is invalid and ignored. An image without any valid
offset has no defined loss or cPSNR: that is an error (`MetricError` when run eagerly, a
`tf.errors.InvalidArgumentError` from an assertion inside `tf.function`). XLA compiles
assertions away (`jit_compile=True`); there such an image adds 0 to the loss (no gradient)
and gets a NaN cPSNR, so no NaN or Inf reaches a gradient and a broken score stays visible.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from libraries import domain

PEAK = 65535.0  # 16-bit peak of the PSNR (PROBA-V PNGs are uint16)
KELVINS_BORDER = 3  # the official rule crops 3 pixels on each side: 49 offsets
# Normalisation constants of the authors' configs (the same for both bands).


class MetricError(domain.DeepSUMError):
    """Inputs on which a loss or score is undefined; the message says what was expected."""


# ---------------------------------------------------------------------------------------------
# TensorFlow (batched, differentiable, usable inside tf.function)


def _as_images(values: tf.Tensor, name: str, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """`[batch, 1, H, W, 1]` or `[batch, H, W, 1]` -> `[batch, H, W]`."""
    values = tf.convert_to_tensor(values)
    rank = values.shape.rank
    if rank == 5:
        values = tf.squeeze(values, axis=[1, 4])  # [b,1,H,W,1] -> [b,H,W]
    elif rank == 4:
        values = tf.squeeze(values, axis=[3])  # [b,H,W,1] -> [b,H,W]
    else:
        raise MetricError(f"{name}: expected [batch, 1, height, width, 1] or [batch, height, width, 1], "
                          f"got shape {values.shape}")
    # called eagerly (a notebook, a script) a NaN would become the loss or score; in training and
    # validation the loss's own numerics check stops the step
    if tf.executing_eagerly() and values.dtype.is_floating:
        bad = int(np.count_nonzero(~np.isfinite(values.numpy())))
        if bad:
            raise MetricError(f"{name}: expected finite values, found {bad} NaN or Inf")
    if dtype == tf.bool:
        return values if values.dtype == tf.bool else tf.not_equal(values, 0)
    return tf.cast(values, dtype)


def _shifted_crops(images: tf.Tensor, border: int) -> tf.Tensor:
    """All (2*border+1)^2 crops of `[batch, H, W]` that are 2*border smaller on each axis.

    Returns `[batch, n, h, n, w]` (n = 2*border+1, h = H - 2*border, w = W - 2*border):
    element [:, i, :, j, :] is images[:, i:i+h, j:j+w]. Built as n row shifts, then n column
    shifts of those (2n slices, not n^2); the offset axes stay apart so no transpose copy is
    needed. Measured at 384x384: about 4x faster than two tf.gather calls or tf.signal.frame.
    """
    n = 2 * border + 1
    h = tf.shape(images)[1] - 2 * border
    w = tf.shape(images)[2] - 2 * border
    rows = tf.stack([images[:, i:i + h] for i in range(n)], axis=1)  # n x [b,h,W] -> [b,n,h,W]
    return tf.stack([rows[..., j:j + w] for j in range(n)], axis=3)  # n x [b,n,h,w] -> [b,n,h,n,w]


def corrected_mse_per_offset(y_true: tf.Tensor, y_pred: tf.Tensor, mask: tf.Tensor,
                             border: int = 3) -> tuple[tf.Tensor, tf.Tensor]:
    """Brightness-corrected masked MSE of `y_pred` against every shifted crop of `y_true`.

    y_true, y_pred: `[batch, 1, H, W, 1]` or `[batch, H, W, 1]`, any common scale.
    mask: same shape as y_true, nonzero/true = clear target pixel.
    Returns `(mse, clear_count)`, both `[batch, (2*border+1)**2]`: mse float32 (0 where the
    crop has no clear pixel), clear_count int32 (clear pixels of the crop; 0 = invalid offset).
    Offset k = (2*border+1)*i + j is the target crop starting at row i, column j; the
    prediction is always cropped by `border` pixels on each side.
    """
    if border < 0:
        raise MetricError(f"border: expected >= 0, got {border}")
    labels = _as_images(y_true, "y_true")
    predictions = _as_images(y_pred, "y_pred")
    clear = _as_images(mask, "mask", tf.bool)
    for name, values in (("y_pred", predictions), ("mask", clear)):
        if not values.shape.is_compatible_with(labels.shape):
            raise MetricError(f"{name}: expected the shape of y_true {labels.shape} (after dropping "
                              f"singleton axes), got {values.shape}")
    if any(size is not None and size <= 2 * border for size in labels.shape[1:]):
        raise MetricError(f"y_true: expected images larger than 2*border = {2 * border} pixels, "
                          f"got {labels.shape[1:]}")
    batch = tf.shape(labels)[0]
    # the same checks at run time, for shapes unknown when tracing
    tf.debugging.assert_equal(tf.shape(predictions), tf.shape(labels),
                              message="y_pred and y_true must have the same shape")
    tf.debugging.assert_equal(tf.shape(clear), tf.shape(labels),
                              message="mask and y_true must have the same shape")
    tf.debugging.assert_greater(tf.shape(labels)[1:], 2 * border,
                                message=f"images must be larger than 2*border = {2 * border} pixels")

    height, width = tf.shape(predictions)[1], tf.shape(predictions)[2]
    cropped = predictions[:, border:height - border, border:width - border]  # [b,h,w]
    clear_crops = tf.cast(_shifted_crops(clear, border), tf.float32)  # [b,n,h,n,w]
    # residual of every offset, zero on cloudy pixels: [b,n,h,n,w] - [b,1,h,1,w]
    residual = (_shifted_crops(labels, border) - cropped[:, None, :, None, :]) * clear_crops
    count = tf.reduce_sum(clear_crops, axis=[2, 4])  # [b,n,n]
    bias = tf.math.divide_no_nan(tf.reduce_sum(residual, axis=[2, 4]), count)  # [b,n,n]
    corrected = (residual - bias[:, :, None, :, None]) * clear_crops  # [b,n,h,n,w]
    mse = tf.math.divide_no_nan(tf.reduce_sum(tf.square(corrected), axis=[2, 4]), count)  # [b,n,n]
    offsets = (2 * border + 1) ** 2
    return (tf.reshape(mse, [batch, offsets]),  # [b,n,n] -> [b,n*n], k = n*i + j
            tf.reshape(tf.cast(count, tf.int32), [batch, offsets]))


def _require_valid_offset(valid: tf.Tensor, caller: str) -> tf.Tensor:
    """valid: `[batch, offsets]` bool. Returns `[batch]` bool (image has a valid offset);
    raises (eagerly) or asserts (in a graph) that every image has one."""
    has_valid = tf.reduce_any(valid, axis=1)  # [b]
    message = (f"{caller}: an image of the batch has no clear target pixel in any of its "
               f"{valid.shape[1]} offset crops, so its corrected MSE is undefined; expected at "
               f"least one clear pixel (drop fully cloudy patches before training)")
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(has_valid)):
            missing = np.flatnonzero(~has_valid.numpy()).tolist()
            raise MetricError(f"{message}; images without one: {missing}")
    else:
        tf.debugging.Assert(tf.reduce_all(has_valid), [message])
    return has_valid


def cl2_loss(y_true: tf.Tensor, y_pred: tf.Tensor, mask: tf.Tensor, border: int = 3) -> tf.Tensor:
    """The cL2 loss: per image the minimum corrected MSE over valid offsets, batch mean.

    y_true, y_pred: `[batch, 1, H, W, 1]` (or `[batch, H, W, 1]`) on the `sigma_rescaled`
    scale; mask: same shape, nonzero = clear. Returns a float32 scalar (the authors' `loss`).
    """
    mse, count = corrected_mse_per_offset(y_true, y_pred, mask, border)  # [b,offsets]
    valid = count > 0
    has_valid = _require_valid_offset(valid, "cl2_loss")
    best = tf.reduce_min(tf.where(valid, mse, np.inf), axis=1)  # [b]
    return tf.reduce_mean(tf.where(has_valid, best, 0.0))


def cpsnr(y_true: tf.Tensor, y_pred: tf.Tensor, mask: tf.Tensor, border: int = 3,
          mu: float = domain.PROBAV_MU, sigma_rescaled: float = domain.PROBAV_SIGMA_RESCALED) -> tf.Tensor:
    """Best cPSNR over the offsets per image, in dB on the 16-bit scale: `[batch]` float32.

    y_true, y_pred: `[batch, 1, H, W, 1]` (or `[batch, H, W, 1]`) normalised as
    `(v - mu) / sigma_rescaled`; they are de-normalised to DN (`v * sigma_rescaled + mu`)
    and cPSNR = 10 log10(65535^2 / cMSE), as the authors' `PSNR`. Pass mu=0, sigma_rescaled=1
    for images already in DN. mask: same shape, nonzero = clear.
    """
    def to_dn(values: tf.Tensor) -> tf.Tensor:
        return tf.cast(values, tf.float32) * sigma_rescaled + mu

    mse, count = corrected_mse_per_offset(to_dn(y_true), to_dn(y_pred), mask, border)  # [b,offsets]
    valid = count > 0
    has_valid = _require_valid_offset(valid, "cpsnr")
    # mse = 0 (a perfect match) gives +inf dB, as the official formula does
    psnr = 10.0 * tf.math.log(PEAK**2 / mse) / tf.math.log(10.0)  # [b,offsets]
    best = tf.reduce_max(tf.where(valid, psnr, -np.inf), axis=1)  # [b]
    return tf.where(has_valid, best, np.nan)


def normalized_score(cpsnr_values: tf.Tensor, baseline: tf.Tensor) -> tf.Tensor:
    """Kelvins score per image, baseline cPSNR / cPSNR: `[batch]` float32.

    cpsnr_values: `[batch]` (or `[batch, 1]`) dB; baseline: `[batch]` or `[batch, 1]` dB (norm.csv).
    Its batch mean is the authors' `score`.
    """
    cpsnr_values = tf.reshape(tf.cast(cpsnr_values, tf.float32), [-1])  # [b] or [b,1] -> [b]
    baseline = tf.reshape(tf.cast(baseline, tf.float32), [-1])  # [b] or [b,1] -> [b]
    if tf.executing_eagerly():  # in a graph the shapes are checked by the division
        if cpsnr_values.shape != baseline.shape:
            raise MetricError(f"normalized_score: {cpsnr_values.shape[0]} cPSNR values and {baseline.shape[0]} "
                              f"baselines; expected one baseline per image")
        for name, values in (("baseline", baseline.numpy()), ("cpsnr_values", cpsnr_values.numpy())):
            bad = np.flatnonzero(~(values > 0) | (np.isinf(values) & (name == "baseline")))
            if bad.size:
                raise MetricError(f"{name}: {float(values[bad[0]])!r} for image {int(bad[0])}; expected a positive "
                                  f"{'finite ' if name == 'baseline' else ''}cPSNR in dB")
    return baseline / cpsnr_values


# ---------------------------------------------------------------------------------------------
# NumPy: the official rule for one image (float64)


def _as_2d(values: np.ndarray, name: str) -> np.ndarray:
    """[H, W], [H, W, 1], [1, H, W] (or [1, H, W, 1]) -> [H, W]."""
    values = np.asarray(values)
    while values.ndim > 2 and (values.shape[0] == 1 or values.shape[-1] == 1):
        values = values[0] if values.shape[0] == 1 else values[..., 0]
    if values.ndim != 2:
        raise MetricError(f"{name}: expected one image [height, width] (a singleton leading or "
                          f"trailing axis is allowed), got shape {np.shape(values)}")
    return values


def _as_dn(values: np.ndarray, name: str) -> np.ndarray:
    """A 2-D image of any real numeric dtype -> float64 DN values, rejecting NaN/Inf."""
    values = _as_2d(values, name)
    if values.dtype == bool or not (np.issubdtype(values.dtype, np.integer)
                                    or np.issubdtype(values.dtype, np.floating)):
        raise MetricError(f"{name}: expected integer or floating 16-bit values, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise MetricError(f"{name}: expected finite values, found {np.count_nonzero(~np.isfinite(values))} "
                          f"NaN/Inf pixels")
    return values


def _kelvins_search(sr: np.ndarray, hr: np.ndarray, sm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                           np.ndarray]:
    """The official shift search of `kelvins_cpsnr`, written once for it and `kelvins_error_map`.

    Returns (residual `[n, n, h, w]`: hr crop - sr crop - bias, 0 at cloudy pixels; clear crops
    `[n, n, h, w]` float64; mse `[n, n]`; count `[n, n]` clear pixels), n = 2 * 3 + 1 offsets.
    """
    sr, hr = _as_dn(sr, "sr"), _as_dn(hr, "hr")
    clear = _as_2d(sm, "sm") != 0
    if not (sr.shape == hr.shape == clear.shape):
        raise MetricError(f"sr, hr and sm: expected the same shape, got {sr.shape}, {hr.shape}, {clear.shape}")
    b = KELVINS_BORDER
    if min(sr.shape) <= 2 * b:
        raise MetricError(f"sr: expected an image larger than {2 * b} pixels per side, got {sr.shape}")
    h, w = sr.shape[0] - 2 * b, sr.shape[1] - 2 * b
    # views, no copy: [n,n,h,w], element [i,j] is hr[i:i+h, j:j+w]
    hr_crops = np.lib.stride_tricks.sliding_window_view(hr, (h, w))
    clear_crops = np.lib.stride_tricks.sliding_window_view(clear.astype(np.float64), (h, w))
    count = clear_crops.sum(axis=(2, 3))  # [n,n]
    if not count.any():
        raise MetricError(f"sm: expected at least one clear pixel in the {h}x{w} crops of the 49 "
                          f"offsets, found none (image {sr.shape}, {int(clear.sum())} clear pixels)")
    safe_count = np.maximum(count, 1.0)
    residual = hr_crops - sr[b:b + h, b:b + w]  # [n,n,h,w] - [h,w] -> [n,n,h,w] (the one copy)
    residual *= clear_crops
    bias = residual.sum(axis=(2, 3)) / safe_count  # [n,n]
    residual -= bias[:, :, None, None]
    residual *= clear_crops
    mse = np.einsum("ijhw,ijhw->ij", residual, residual) / safe_count  # [n,n]
    return residual, clear_crops, mse, count


def kelvins_cpsnr(sr: np.ndarray, hr: np.ndarray, sm: np.ndarray) -> float:
    """cPSNR (dB) of one super-resolved image by the official Kelvins rule.

    sr, hr: `[H, W]` (384x384 for PROBA-V) on the 16-bit DN scale, any integer or float dtype;
    sm: `[H, W]` clear mask of hr (nonzero/true = clear). SR is cropped by 3 pixels on each
    side; for each of the 49 offsets the same-size crop of hr and sm is compared with the
    brightness bias removed; the result is the best of the 49 (max cPSNR).
    """
    _, _, mse, count = _kelvins_search(sr, hr, sm)
    best = mse[count > 0].min()
    return float("inf") if best == 0 else float(10.0 * np.log10(PEAK**2 / best))


def kelvins_error_map(sr: np.ndarray, hr: np.ndarray, sm: np.ndarray) -> np.ndarray:
    """|HR - SR| per pixel as `kelvins_cpsnr` sees it: at its best offset, the brightness bias
    removed, NaN where HR is cloudy. sr, hr, sm as `kelvins_cpsnr`; returns float64
    `[H - 6, W - 6]` (SR cropped by 3 pixels on each side), in DN."""
    residual, clear_crops, mse, count = _kelvins_search(sr, hr, sm)
    i, j = np.unravel_index(np.argmin(np.where(count > 0, mse, np.inf)), mse.shape)
    return np.where(clear_crops[i, j] > 0, np.abs(residual[i, j]), np.nan)


def kelvins_score(sr: np.ndarray, hr: np.ndarray, sm: np.ndarray, baseline: float) -> float:
    """Kelvins score of one image: baseline / kelvins_cpsnr(sr, hr, sm) (lower is better).

    baseline: the scene's baseline cPSNR in dB from norm.csv.
    """
    try:
        baseline = float(baseline)
    except (TypeError, ValueError):  # text, an array of several values
        raise MetricError(f"baseline: expected a positive cPSNR in dB from norm.csv, got {baseline!r}") from None
    if not np.isfinite(baseline) or baseline <= 0:
        raise MetricError(f"baseline: expected a positive cPSNR in dB from norm.csv, got {baseline}")
    return baseline / kelvins_cpsnr(sr, hr, sm)
