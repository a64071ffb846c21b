"""Dataset-creation array functions of `libraries.preprocessing`, against scikit-image, SciPy
(the original's Fourier shift of masks) and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import skimage.transform

from libraries import domain, preprocessing, probav


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured, periodic test image (smoothed noise) in a 14-bit-like range."""
    noise = rng.normal(size=(size, size))
    return (8000 + 3000 * scipy.ndimage.gaussian_filter(noise, 2.0, mode="wrap")).astype(np.float32)


def test_upsample_frames_equals_the_original_rescale():
    rng = np.random.default_rng(0)
    lr = (rng.integers(0, 1024, (3, 16, 16)) * 16).astype(np.uint16)
    expected = np.stack([skimage.transform.rescale(frame, 3, order=3, mode="edge", anti_aliasing=False,
                                                   preserve_range=True) for frame in lr]).astype(np.float32)
    upsampled = preprocessing.upsample_frames(lr)
    assert upsampled.dtype == np.float32 and upsampled.shape == (3, 48, 48)
    np.testing.assert_array_equal(upsampled, expected)


def test_upsample_masks_equals_nearest_neighbour_rescale():
    clear = np.random.default_rng(1).random((4, 20, 24)) > 0.4
    expected = np.stack([skimage.transform.rescale(mask, 3, order=0, mode="constant", anti_aliasing=False,
                                                   preserve_range=True) for mask in clear]).astype(bool)
    np.testing.assert_array_equal(preprocessing.upsample_masks(clear), expected)


def test_corrupt_frames_are_those_above_60000():
    lr = np.full((4, 8, 8), 5000, dtype=np.uint16)
    lr[1, 3, 3] = 60001
    lr[2, 0, 0] = 60000  # at the limit: kept
    lr[3, 7, 7] = 65520
    clear = np.ones(lr.shape, dtype=bool)
    kept_lr, kept_clear, kept = preprocessing.drop_corrupt_frames(lr, clear)
    np.testing.assert_array_equal(kept, [0, 2])
    assert kept_lr.shape == kept_clear.shape == (2, 8, 8)


def test_estimate_shifts_recovers_planted_integer_shifts():
    rng = np.random.default_rng(2)
    reference = smooth_image(rng, 96)
    planted = rng.integers(-4, 5, (12, 2))
    planted[0] = 0
    # frame k is the reference displaced by planted[k]: frame[y, x] = reference[y - dy, x - dx]
    frames = np.stack([np.roll(reference, tuple(shift), axis=(0, 1)) for shift in planted])
    shifts = preprocessing.estimate_shifts(frames)
    assert shifts.dtype == np.int32
    np.testing.assert_array_equal(shifts, planted)


def test_estimate_shifts_is_the_original_register_translation():
    """The original called register_translation(reference, frame) (no normalisation), then
    Fourier-shifted each frame by that shift onto the reference; ours is its negative."""
    rng = np.random.default_rng(3)
    reference = smooth_image(rng, 64)
    frames = np.stack([reference, np.roll(reference, (3, -2), axis=(0, 1)), np.roll(reference, (-1, 4), axis=(0, 1))])
    shifts = preprocessing.estimate_shifts(frames)
    for frame, shift in zip(frames, shifts):
        back = np.fft.ifftn(scipy.ndimage.fourier_shift(np.fft.fftn(frame), -shift)).real
        np.testing.assert_allclose(back, reference, rtol=1e-4, atol=1e-2)


def test_reference_first_order_takes_the_clearest_then_keeps_the_order():
    np.testing.assert_array_equal(preprocessing.reference_first_order(np.array([3, 9, 5, 9, 1])), [1, 0, 2, 3, 4])
    np.testing.assert_array_equal(preprocessing.reference_first_order(np.array([7, 2])), [0, 1])


def test_best_frame_indices_reference_then_decreasing_clearness():
    counts = np.array([5, 1, 9, 9, 3, 7, 2, 8, 6, 4, 9])
    index = preprocessing.best_frame_indices(counts)
    np.testing.assert_array_equal(index, [0, 2, 3, 10, 7, 5, 8, 9, 4])
    batched = preprocessing.best_frame_indices(np.stack([counts, counts[::-1]]))
    np.testing.assert_array_equal(batched[0], index)
    assert batched[1, 0] == 0 and np.all(np.diff(counts[::-1][batched[1, 1:]]) <= 0)
    with pytest.raises(preprocessing.TooFewFramesError, match="needs at least 9 frames, got 8"):
        preprocessing.best_frame_indices(np.ones(8))


def test_select_best_frames_shifts_follow_their_frames():
    rng = np.random.default_rng(4)
    frames_count = 12
    masks = np.zeros((2, frames_count, 6, 6), dtype=bool)
    for patch in range(2):
        for frame, clear in enumerate(rng.permutation(frames_count)):
            masks[patch, frame].flat[:clear] = True  # frame has `clear` clear pixels, all distinct
    frames = np.arange(frames_count, dtype=np.float32)[None, :, None, None] + np.zeros((2, 1, 6, 6), np.float32)
    shifts = np.stack([np.arange(frames_count), -np.arange(frames_count)], axis=-1)[None].repeat(2, axis=0)
    chosen_frames, chosen_masks, chosen_shifts = preprocessing.select_best_frames(frames, masks, shifts)
    assert chosen_frames.shape == (2, 9, 6, 6) and chosen_shifts.shape == (2, 9, 2)
    source = chosen_frames[:, :, 0, 0].astype(int)  # frame index each output came from
    np.testing.assert_array_equal(chosen_shifts[..., 0], source)
    np.testing.assert_array_equal(chosen_shifts[..., 1], -source)
    assert np.all(source[:, 0] == 0)
    counts = chosen_masks.sum(axis=(-2, -1))
    assert np.all(np.diff(counts[:, 1:], axis=1) < 0)
    for patch in range(2):  # the 8 clearest of frames 1..11
        others = masks[patch, 1:].sum(axis=(-2, -1))
        assert sorted(counts[patch, 1:]) == sorted(np.sort(others)[-8:])


def test_translate_masks_is_the_original_fourier_shift():
    """The original network registered masks with fourier_shift(mask, -shift), rounded."""
    rng = np.random.default_rng(5)
    masks = rng.random((2, 5, 24, 20)) > 0.5
    shifts = rng.integers(-4, 5, (2, 5, 2))
    moved = preprocessing.translate_masks(masks, shifts)
    for index in np.ndindex(2, 5):
        spectrum = scipy.ndimage.fourier_shift(np.fft.fftn(masks[index].astype(float)), -shifts[index])
        expected = np.round(np.fft.ifftn(spectrum).real).astype(bool)
        np.testing.assert_array_equal(moved[index], expected)


def test_translated_masks_line_up_with_the_reference():
    rng = np.random.default_rng(6)
    reference = smooth_image(rng, 48)
    cloud = np.zeros((48, 48), dtype=bool)
    cloud[10:20, 5:30] = True
    displacement = np.array([3, -2])
    frames = np.stack([reference, np.roll(reference, tuple(displacement), axis=(0, 1))])
    masks = np.stack([~cloud, np.roll(~cloud, tuple(displacement), axis=(0, 1))])  # the cloud moves with the frame
    shifts = preprocessing.estimate_shifts(frames)
    registered = preprocessing.translate_masks(masks, shifts)
    np.testing.assert_array_equal(registered[1], ~cloud)


def test_complete_frames_reuses_the_clearest():
    index = preprocessing.complete_frames(np.array([10, 40, 30, 20, 5]))
    np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, 1, 2, 3, 0])
    np.testing.assert_array_equal(preprocessing.complete_frames(np.arange(11)), np.arange(11))
    np.testing.assert_array_equal(preprocessing.complete_frames(np.array([4])), np.zeros(9))
    with pytest.raises(preprocessing.TooFewFramesError, match="no usable frame"):
        preprocessing.complete_frames(np.zeros(0))


def test_window_fractions_and_valid_corners_equal_brute_force():
    rng = np.random.default_rng(7)
    masks = rng.random((10, 30, 30)) > 0.2
    masks[:4, :12] = False  # a cloud over four frames
    hr_clear = rng.random((30, 30)) > 0.02
    hr_clear[22:, 16:] = False  # a cloud over the HR image only
    size = 12
    fractions = preprocessing.window_clear_fractions(masks, size)
    valid = preprocessing.valid_patch_corners(masks, hr_clear, size)
    assert valid.shape == (19, 19) and 0 < valid.mean() < 1
    refused_by_hr_alone = 0
    for row in range(19):
        for col in range(19):
            window = masks[:, row:row + size, col:col + size]
            np.testing.assert_allclose(fractions[:, row, col], window.mean(axis=(1, 2)))
            frames_rule = np.sum(window.mean(axis=(1, 2)) > 0.70) >= 9
            hr_rule = hr_clear[row:row + size, col:col + size].mean() > 0.85
            assert valid[row, col] == (frames_rule and hr_rule), (row, col)
            refused_by_hr_alone += frames_rule and not hr_rule
    assert refused_by_hr_alone > 0  # both rules are exercised


def test_sample_patch_corners_valid_seeded_and_bounded():
    valid = np.zeros((21, 21), dtype=bool)
    valid[::3, ::2] = True
    corners = preprocessing.sample_patch_corners(valid, 20, 15, np.random.default_rng(8))
    assert corners.shape == (15, 2) and corners.dtype == np.int32
    assert valid[corners[:, 0], corners[:, 1]].all()
    assert corners.max() <= 19  # the original's randint leaves out the last corner (20)
    again = preprocessing.sample_patch_corners(valid, 20, 15, np.random.default_rng(8))
    np.testing.assert_array_equal(corners, again)
    none = preprocessing.sample_patch_corners(np.zeros((21, 21), bool), 20, 15, np.random.default_rng(8), max_tries=500)
    assert none.shape == (0, 2)


def test_cut_windows():
    images = np.arange(2 * 10 * 10).reshape(2, 10, 10)
    windows = preprocessing.cut_windows(images, np.array([[0, 0], [3, 5]]), 4)
    assert windows.shape == (2, 2, 4, 4)
    np.testing.assert_array_equal(windows[1, 1], images[1, 3:7, 5:9])


EXPECTED_CORRUPT = {("NIR", "imgset0594"): {"LR001", "LR002", "LR017"}, ("NIR", "imgset0596"): {"LR018"}}


def test_real_frames_lose_exactly_their_corrupt_frames(shared_data_dir):
    root = shared_data_dir / "probav_real" / "lr_only"
    dropped: dict[tuple[str, str], set[str]] = {}
    scenes = 0
    for band in domain.BANDS:
        for folder in probav.list_scenes(root, "train", band):
            scene = probav.read_scene(folder, band=band, split="train", masks="assume_clear")
            _, _, kept = preprocessing.drop_corrupt_frames(scene.lr, scene.clear)
            names = set(scene.frame_names) - {scene.frame_names[i] for i in kept}
            if names:
                dropped[(band, scene.name)] = names
            scenes += 1
    assert scenes == 8
    assert dropped == EXPECTED_CORRUPT


def test_bicubic_baseline_upsamples_the_mean_of_the_clearest_frames():
    """The organisers' rule computed directly: mean of the frames with the most clear pixels,
    then `skimage.transform.rescale` by 3 (cubic, edge mode)."""
    rng = np.random.default_rng(7)
    frames = rng.uniform(2000, 12000, size=(4, 8, 8))
    clear = np.zeros((4, 64), bool)
    for index, count in enumerate((10, 64, 64, 40)):  # frames 1 and 2 tie as the clearest, 0 is the cloudiest
        clear[index, rng.permutation(64)[:count]] = True
    clear = clear.reshape(4, 8, 8)
    expected = skimage.transform.rescale((frames[1] + frames[2]) / 2, 3, order=3, mode="edge",
                                         anti_aliasing=False, preserve_range=True)
    np.testing.assert_allclose(preprocessing.bicubic_baseline(frames, clear), expected, rtol=1e-12)
    # already upsampled frames (scale 1): the plain mean of the clearest, without frame 0 or 3
    np.testing.assert_allclose(preprocessing.bicubic_baseline(frames, clear, scale=1), (frames[1] + frames[2]) / 2,
                               rtol=1e-12)
