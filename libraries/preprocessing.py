"""Array operations of DeepSUM's preprocessing (NumPy, scikit-image).

The fill functions follow the network's convention `[batch, frames, height, width, 1]`; the
dataset-creation functions (below them) work on one scene, `[frames, height, width]`, or on
a stack of patches, `[patches, frames, height, width]`.
"""

from __future__ import annotations

import numpy as np
import skimage.registration
import skimage.transform

from libraries import domain


# ---------------------------------------------------------------------------------------------
# Dataset creation: frame filter, upsampling, registration, best-9, patches.
#
# Shift convention. `estimate_shifts` returns, for every frame, its integer displacement
# (dy, dx) with respect to the reference: frame[y, x] ~ reference[y - dy, x - dx]. This is
# the value the original's data loader hands to the network (it negates the output of
# `register_translation(reference, frame)` with "shifts = -shifts"), so it is also the
# RegNet label: filter tap 9 * (dy + 4) + (dx + 4). `translate_masks(masks, shifts)` moves
# each mask by minus its displacement, onto the reference grid.
# ---------------------------------------------------------------------------------------------



class TooFewFramesError(domain.DeepSUMError):
    """A scene has no frame left to build a network input from."""


def corrupt_frames(lr: np.ndarray) -> np.ndarray:
    """True for frames holding any pixel above 60000.

    lr: `[frames, height, width]` raw digital numbers. Returns bool `[frames]`.
    """
    lr = np.asarray(lr)
    return (lr > domain.CORRUPT_VALUE).any(axis=(-2, -1))


def drop_corrupt_frames(lr: np.ndarray, clear: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove corrupt frames (any pixel > 60000) from a scene.

    lr, clear: `[frames, height, width]`. Returns (lr, clear, kept) with `kept` the int64 indices
    of the frames that remain, in their original order.
    """
    kept = np.flatnonzero(~corrupt_frames(lr))
    return lr[kept], clear[kept], kept


def upsample_frames(lr: np.ndarray, scale: int = domain.SCALE, dtype: np.dtype = np.float32) -> np.ndarray:
    """Bicubic x`scale` upsampling as the original (edge mode, no anti-aliasing, values kept).

    lr: `[frames, height, width]`. Returns `dtype` `[frames, scale*height, scale*width]`.
    """
    lr = np.asarray(lr)
    frames, height, width = lr.shape
    output = np.empty((frames, scale * height, scale * width), dtype=dtype)
    # One 2-D resize per frame: a 3-D resize of the stack would also run the cubic spline
    # across the frame axis, which changes values (measured: up to 5 DN) and is 4x slower.
    for index, frame in enumerate(lr):
        output[index] = skimage.transform.resize(
            frame, (scale * height, scale * width), order=3, mode="edge",
            anti_aliasing=False, preserve_range=True)
    return output


def bicubic_baseline(frames: np.ndarray, clear: np.ndarray, scale: int = domain.SCALE) -> np.ndarray:
    """The organisers' baseline: the mean of the frames with the most clear pixels, upsampled
    bicubically by `scale`.

    frames: `[K, h, w]` DN, without corrupt frames; clear: `[K, h, w]` bool. Bicubic upsampling
    is linear, so for frames already upsampled (a prepared scene) `scale=1` gives the same
    image: the mean of those upsampled frames. Returns float64 `[scale*h, scale*w]`.
    """
    counts = np.asarray(clear).sum(axis=(1, 2))  # [K]
    if counts.size == 0:
        raise ValueError("bicubic baseline: no frame given")
    mean = np.asarray(frames, np.float64)[counts == counts.max()].mean(axis=0)  # [h, w]
    return mean if scale == 1 else upsample_frames(mean[None], scale, np.float64)[0]


def upsample_masks(clear: np.ndarray, scale: int = domain.SCALE) -> np.ndarray:
    """Nearest-neighbour x`scale` upsampling of clear masks.

    For an integer factor, nearest neighbour repeats every pixel `scale` times along both
    axes, which is what the original's `rescale(order=0)` computes (checked in the tests).
    clear: `[..., height, width]`. Returns bool `[..., scale*height, scale*width]`.
    """
    clear = np.asarray(clear).astype(bool)
    return np.repeat(np.repeat(clear, scale, axis=-2), scale, axis=-1)


def clear_pixel_counts(clear: np.ndarray) -> np.ndarray:
    """Clear pixels of every frame: `[..., frames, height, width]` -> int64 `[..., frames]`."""
    return np.count_nonzero(clear, axis=(-2, -1))


def reference_first_order(clear_pixels: np.ndarray) -> np.ndarray:
    """Frame order with the reference (most clear pixels) first, the others in their order.

    Ties go to the earliest frame (the original's `argsort(...)[::-1][0]` breaks ties in a
    way that depends on NumPy's sort implementation). clear_pixels: `[frames]`.
    Returns int64 `[frames]`, a permutation.
    """
    clear_pixels = np.asarray(clear_pixels)
    reference = int(np.argmax(clear_pixels))
    others = np.delete(np.arange(clear_pixels.shape[0]), reference)
    return np.concatenate([[reference], others])


def estimate_shifts(frames: np.ndarray) -> np.ndarray:
    """Integer displacement of every frame with respect to frame 0 (the reference).

    Phase cross-correlation with scikit-image, as the original's `register_translation`:
    upsample factor 1, no normalisation of the cross-power spectrum (the old function had
    none; `phase_cross_correlation` normalises by default), no masks.
    frames: `[frames, height, width]` upsampled images, reference first.
    Returns int32 `[frames, 2]` (dy, dx) in the convention described above (row 0 is 0, 0).
    """
    frames = np.asarray(frames)
    reference = frames[0]
    to_reference = np.stack([
        skimage.registration.phase_cross_correlation(
            reference, frame, upsample_factor=1, normalization=None)[0]
        for frame in frames])  # [frames, 2] shift that moves each frame onto the reference
    return np.rint(-to_reference).astype(np.int32)


def shifts_within_limit(shifts: np.ndarray, max_shift: int = domain.MAX_SHIFT) -> np.ndarray:
    """True for frames whose shift is at most `max_shift` in both axes. `[..., 2]` -> `[...]`."""
    return (np.abs(np.asarray(shifts)) <= max_shift).all(axis=-1)


def best_frame_indices(clear_pixels: np.ndarray, count: int = domain.T_IN) -> np.ndarray:
    """Best-9 selection: frame 0 (the reference) then the `count - 1` clearest other frames in
    decreasing order of clear pixels (ties: earlier frame first).

    clear_pixels: `[..., frames]` with frames >= count. Returns int64 `[..., count]`.
    """
    clear_pixels = np.asarray(clear_pixels)
    frames = clear_pixels.shape[-1]
    if frames < count:
        raise TooFewFramesError(f"best-{count} selection needs at least {count} frames, got {frames}")
    # stable sort of the negated counts: decreasing clearness, ties by frame index
    others = np.argsort(-clear_pixels[..., 1:], axis=-1, kind="stable")[..., : count - 1] + 1
    reference = np.zeros(clear_pixels.shape[:-1] + (1,), dtype=others.dtype)
    return np.concatenate([reference, others], axis=-1)


def select_best_frames(frames: np.ndarray, masks: np.ndarray, shifts: np.ndarray,
                       count: int = domain.T_IN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the best `count` frames (see `best_frame_indices`); shifts follow their frames.

    frames, masks: `[..., frames, height, width]` (reference first); shifts `[..., frames, 2]`.
    Clearness is counted on `masks` as given (a patch's window for a patch).
    Returns the same arrays with `count` frames.
    """
    index = best_frame_indices(clear_pixel_counts(masks), count)  # [..., count]
    grid = index[..., None, None]  # [..., count, 1, 1] broadcasts over height, width
    return (np.take_along_axis(frames, grid, axis=-3),
            np.take_along_axis(masks, grid, axis=-3),
            np.take_along_axis(shifts, index[..., None], axis=-2))


def translate_masks(masks: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Register clear masks: move every mask by minus its displacement, onto the reference.

    The translation is circular, as in the original (it applies `scipy.ndimage.fourier_shift`
    to the mask, a periodic shift, then rounds): rows that leave one side come back on the
    other. It acts on the array it is given, so a patch wraps around within the patch.
    masks: `[..., frames, height, width]`; shifts: `[..., frames, 2]` integer displacements.
    Returns bool `[..., frames, height, width]` with out[..., y, x] = mask[..., y + dy, x + dx].
    """
    masks = np.asarray(masks).astype(bool)
    shifts = np.asarray(shifts).astype(np.int64)
    height, width = masks.shape[-2:]
    flat_masks = masks.reshape(-1, height, width)  # [batch*frames, H, W]
    flat_shifts = shifts.reshape(-1, 2)  # [batch*frames, 2]
    rows = (np.arange(height)[None, :] + flat_shifts[:, :1]) % height  # [batch*frames, H]
    cols = (np.arange(width)[None, :] + flat_shifts[:, 1:]) % width  # [batch*frames, W]
    item = np.arange(flat_masks.shape[0])[:, None, None]
    moved = flat_masks[item, rows[:, :, None], cols[:, None, :]]  # [batch*frames, H, W]
    return moved.reshape(masks.shape)


def complete_frames(clear_pixels: np.ndarray, count: int = domain.T_IN) -> np.ndarray:
    """Frame indices that give a test scene at least `count` frames: every frame in its order,
    then its clearest frames again (decreasing clearness, cycling) until there are `count`.

    clear_pixels: `[frames]`. Returns int64 `[max(frames, count)]`.
    """
    clear_pixels = np.asarray(clear_pixels)
    frames = clear_pixels.shape[0]
    if frames == 0:
        raise TooFewFramesError("the scene has no usable frame (all corrupt)")
    missing = max(count - frames, 0)
    clearest = np.argsort(-clear_pixels, kind="stable")  # [frames]
    return np.concatenate([np.arange(frames), np.resize(clearest, missing)])


def window_clear_fractions(clear: np.ndarray, size: int) -> np.ndarray:
    """Share of clear pixels in every `size` x `size` window, for every top-left corner.

    Summed-area table: each window costs four look-ups, whatever its size.
    clear: `[..., height, width]`. Returns float64 `[..., height - size + 1, width - size + 1]`.
    """
    clear = np.asarray(clear)
    table = np.zeros(clear.shape[:-2] + (clear.shape[-2] + 1, clear.shape[-1] + 1), dtype=np.int64)
    table[..., 1:, 1:] = clear.astype(np.int64).cumsum(axis=-2).cumsum(axis=-1)
    sums = (table[..., size:, size:] - table[..., :-size, size:]
            - table[..., size:, :-size] + table[..., :-size, :-size])
    return sums / float(size * size)


def valid_patch_corners(masks: np.ndarray, hr_clear: np.ndarray, patch_size: int,
                        min_frames: int = domain.T_IN, frame_clear: float = 0.70,
                        hr_clear_share: float = 0.85) -> np.ndarray:
    """Which top-left corners give an acceptable training patch (the original's rule): at least
    `min_frames` frames more than 70% clear in the window and the HR window more than 85% clear.

    masks: `[frames, H, W]` upsampled clear masks (unregistered, as the original tests them);
    hr_clear: `[H, W]`. Returns bool `[H - patch_size + 1, W - patch_size + 1]`.
    """
    clear_frames = (window_clear_fractions(masks, patch_size) > frame_clear).sum(axis=0)
    return (clear_frames >= min_frames) & (window_clear_fractions(hr_clear, patch_size) > hr_clear_share)


def sample_patch_corners(valid: np.ndarray, patch_size: int, count: int, rng: np.random.Generator,
                         max_tries: int = 100_000, batch: int = 4096) -> np.ndarray:
    """Draw random top-left corners until `count` valid ones are found or `max_tries` are spent.

    As the original, corners are uniform in [0, size - patch_size - 1] (its `randint` bound
    leaves out the last position) and may repeat. Candidates are drawn in batches, never more
    than `max_tries` in all; the first `count` valid ones in draw order are kept.
    valid: `[H - patch_size + 1, W - patch_size + 1]` from `valid_patch_corners`.
    Returns int32 `[n, 2]` (row, col), n <= count.
    """
    valid = np.asarray(valid, dtype=bool)
    height, width = valid.shape[0] + patch_size - 1, valid.shape[1] + patch_size - 1
    found: list[np.ndarray] = []
    tries = 0
    while tries < max_tries and sum(len(f) for f in found) < count:
        size = min(batch, max_tries - tries)
        corners = np.stack([rng.integers(0, height - patch_size, size),
                            rng.integers(0, width - patch_size, size)], axis=1)  # [size, 2]
        found.append(corners[valid[corners[:, 0], corners[:, 1]]])
        tries += size
    corners = np.concatenate(found, axis=0) if found else np.zeros((0, 2), dtype=np.int64)
    return corners[:count].astype(np.int32)


def cut_windows(images: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """Cut `size` x `size` windows at `corners` from the same images.

    images: `[..., H, W]`; corners: `[n, 2]` (row, col). Returns `[n, ..., size, size]`.
    """
    corners = np.asarray(corners)
    # a strided view of every window (no copy), [..., H-size+1, W-size+1, size, size]
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(images), (size, size), axis=(-2, -1))
    chosen = windows[..., corners[:, 0], corners[:, 1], :, :]  # [..., n, size, size]
    return np.moveaxis(chosen, -3, 0)  # [n, ..., size, size]
