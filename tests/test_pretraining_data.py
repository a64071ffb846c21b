"""`libraries.training.pretraining_data`: the shift conventions of both pretrainings, and
batches that are a pure function of the step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from libraries import domain, model, preprocessing
from libraries.config import RegNetPretrainConfig, SISRNetPretrainConfig
from libraries.training import pretraining_data

TINY = dict(lr=1e-3, batch_size=4, steps=12, skip_step=6, spectral_band="NIR", mu=7754.664, sigma=2316.3408,
            sigma_rescaled=596.982, patch_size=16, n_features=8, seed=3)


def test_translate_frames_moves_like_the_dataset_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((9, 20, 24)) > 0.5
    shifts = rng.integers(-4, 5, size=(9, 2)).astype(np.int32)
    moved, inside = pretraining_data.translate_frames(masks.astype(np.float32), shifts)
    np.testing.assert_array_equal(moved > 0.5, preprocessing.translate_masks(masks, shifts))
    # rows/columns that wrapped around are flagged: |dy| rows and |dx| columns per frame
    wrapped = (~inside).all(axis=2).sum(axis=1), (~inside).all(axis=1).sum(axis=1)
    np.testing.assert_array_equal(wrapped[0], np.abs(shifts[:, 0]))
    np.testing.assert_array_equal(wrapped[1], np.abs(shifts[:, 1]))


def test_planted_copies_are_registered_by_the_filter_at_their_tap():
    features = tf.random.stateless_normal([2, 30, 30, 3], seed=[1, 2])
    shifts = pretraining_data.random_shifts(2, 8, 4, tf.constant([5, 6]))  # [2, 8, 2]
    stack = pretraining_data.planted_shift_stack(features, shifts, max_shift=4)  # [2, 9, 22, 22, 3]
    assert stack.shape == (2, 9, 22, 22, 3)
    one_hot = tf.reshape(tf.one_hot(domain.tap_index(shifts), 81), [2, 8, 9, 9])  # the true filters
    registered = model.register_frames(stack, one_hot)
    inner = registered[:, :, 4:-4, 4:-4]  # away from the REFLECT padding of the registration
    np.testing.assert_allclose(inner.numpy(), np.broadcast_to(inner[:, :1].numpy(), inner.shape), atol=1e-6)
    assert domain.tap_index(np.array([-4, -4])) == 0 and domain.tap_index(np.array([0, 1])) == 41


def test_planted_shifts_cover_every_tap_uniformly_and_follow_their_seed():
    """RegNet learns the taps it is shown: every shift of [-4, 4]^2, the ends included, as often
    as the others (a chi-square test of the 81 taps' counts, 8192 draws)."""
    shifts = pretraining_data.random_shifts(512, 8, 4, tf.constant([3, 4])).numpy()  # [512, 8, 2]
    assert shifts.shape == (512, 8, 2) and shifts.dtype == np.int32
    assert np.unique(shifts).tolist() == list(range(-4, 5))
    counts = np.bincount(domain.tap_index(shifts).ravel(), minlength=81)
    assert len(counts) == 81 and stats.chisquare(counts).pvalue > 1e-3, counts
    np.testing.assert_array_equal(pretraining_data.random_shifts(512, 8, 4, tf.constant([3, 4])), shifts)
    assert not np.array_equal(pretraining_data.random_shifts(512, 8, 4, tf.constant([3, 5])), shifts)


def test_held_out_patches_are_those_of_whole_scenes():
    """A scene's patches are all held out or all trained on: no scene is seen by both."""
    scene = np.repeat(np.array([7, 2, 9, 4, 11, 5, 3, 8, 6, 1]), 5)  # 10 scenes, 5 patches each
    heldout = pretraining_data.split_scenes(scene, 0.3, seed=2)
    held, kept = set(scene[heldout].tolist()), set(scene[~heldout].tolist())
    assert len(held) == 3 and held.isdisjoint(kept) and held | kept == set(scene.tolist())
    assert heldout.sum() == 15
    np.testing.assert_array_equal(pretraining_data.split_scenes(scene, 0.3, seed=2), heldout)
    assert pretraining_data.split_scenes(scene, 0.01, seed=2).sum() == 5  # at least one scene
    assert pretraining_data.split_scenes(scene, 1.0, seed=2).sum() == 45  # at least one kept
    with pytest.raises(pretraining_data.PretrainingError, match="at least 2 scenes, got 1"):
        pretraining_data.split_scenes(np.zeros(6, int), 0.3, seed=2)


def test_regnet_batches_are_a_pure_function_of_the_step(tmp_path):
    frames = np.random.default_rng(1).normal(size=(10, 24, 24, 1)).astype(np.float32)
    cfg = RegNetPretrainConfig(**TINY, dataset_path=tmp_path)
    full = [batch.numpy() for _, batch in zip(range(5), pretraining_data.regnet_dataset(frames, cfg))]
    resumed = [batch.numpy() for _, batch in zip(range(2), pretraining_data.regnet_dataset(frames, cfg, start_step=3))]
    assert full[0].shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(resumed[0], full[3])
    np.testing.assert_array_equal(resumed[1], full[4])
    assert not np.array_equal(full[0], full[1])
    # every window is a crop of one of the frames
    for window in full[0]:
        assert any(np.array_equal(window, frame[r:r + 16, c:c + 16]) for frame in frames
                   for r in range(9) for c in range(9))


def test_sisrnet_samples_are_registered_frames_masked_where_clear_and_not_wrapped(tmp_path):
    """Hand-built patches: frame k of a patch is a window of a larger canvas moved by its shift, so
    registered it equals the HR window except on the |dy| rows and |dx| columns it cannot cover.
    Each sample is (patch, frame) of the chosen scenes whose mask (registered clear mask, HR clear,
    not wrapped) is at least half clear, x its registered frame, y the HR window."""
    rng = np.random.default_rng(4)
    size, margin, patches, frames = 12, 4, 4, 9
    canvas = 5000 + 3000 * rng.random((patches, size + 2 * margin, size + 2 * margin))
    hr = canvas[:, margin:-margin, margin:-margin]
    shifts = rng.integers(-3, 4, size=(patches, frames, 2))
    shifts[:, 0] = 0
    lr = np.empty((patches, frames, size, size))
    for p in range(patches):
        for k, (dy, dx) in enumerate(shifts[p]):  # frame[y, x] = canvas[margin + y - dy, margin + x - dx]
            lr[p, k] = canvas[p, margin - dy:margin - dy + size, margin - dx:margin - dx + size]
    masks = rng.random((patches, frames, size, size)) > 0.1
    masks[:, 3] = rng.random((patches, size, size)) > 0.8  # mostly cloudy: never a sample
    hr_clear = rng.random((patches, size, size)) > 0.05
    data = {"frames": lr.astype(np.float32), "masks": masks, "shifts": shifts.astype(np.int32),
            "hr": hr.astype(np.float32), "hr_clear": hr_clear, "scene": np.array([0, 0, 1, 1])}
    cfg = SISRNetPretrainConfig(**{**TINY, "patch_size": 8}, dataset_path=tmp_path, heldout_fraction=0.5)
    heldout = pretraining_data.split_scenes(data["scene"], 0.5, cfg.seed)
    for chosen in (False, True):
        samples = pretraining_data.SingleFrames(data, cfg, heldout=chosen)
        expected_index, expected = [], []
        for p in np.flatnonzero(heldout == chosen):
            for k, (dy, dx) in enumerate(shifts[p]):
                inside = np.zeros((size, size), bool)  # by hand: the rows and columns the shift covers
                inside[max(0, -dy):size - max(0, dy), max(0, -dx):size - max(0, dx)] = True
                mask = masks[p, k] & hr_clear[p] & inside
                if mask.mean() >= 0.5:
                    expected_index.append((p, k))
                    expected.append((inside, mask, p))
        np.testing.assert_array_equal(samples.index, expected_index)
        # frame 3 of every patch is mostly cloudy; a frame shifted by 3 on both axes loses too much to its wrap
        assert expected_index and all(k != 3 for _, k in expected_index)
        x, y, mask = samples.batch(np.arange(len(expected_index)), rng=None)  # [n, 1, P, P, 1] each
        for row, (inside, expected_mask, p) in enumerate(expected):
            np.testing.assert_array_equal(mask[row, 0, :, :, 0], expected_mask)
            np.testing.assert_allclose(x[row, 0, :, :, 0][inside], ((hr[p] - cfg.mu) / cfg.sigma)[inside], atol=1e-6)
            np.testing.assert_allclose(y[row, 0, :, :, 0], (hr[p] - cfg.mu) / cfg.sigma_rescaled, atol=1e-5)


def test_random_windows_reach_every_position_of_the_image():
    corners = pretraining_data.random_corners(np.random.default_rng(0), 2000, 20, 16)  # [2000, 2]
    assert corners.shape == (2000, 2)
    for axis in range(2):
        assert np.unique(corners[:, axis]).tolist() == [0, 1, 2, 3, 4]  # 4 = 20 - 16: the last window
