"""Tests of the test-time self-ensemble (libraries.inference.ensemble and its use by the sliding
window, the evaluation and `superresolve`), on tiny scenes (48-60 px HR, 4 features)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import tensorflow as tf

from libraries import checkpoints, dataset, domain, fileio, inference, metrics, preprocessing, probav, synthetic
from libraries.__main__ import main
from libraries.config import default_config, to_json

# The 8 symmetries of the square written out by hand, independently of the library: (forward on
# `[..., H, W]`, its inverse, the matrix M taking a shift (dy, dx) of translate_masks to M @ (dy, dx)).
HAND_TRANSFORMS = {
    "identity": (lambda a: a, lambda a: a, [[1, 0], [0, 1]]),
    "rot90": (lambda a: np.rot90(a, 1, axes=(-2, -1)), lambda a: np.rot90(a, -1, axes=(-2, -1)), [[0, -1], [1, 0]]),
    "rot180": (lambda a: a[..., ::-1, ::-1], lambda a: a[..., ::-1, ::-1], [[-1, 0], [0, -1]]),
    "rot270": (lambda a: np.rot90(a, -1, axes=(-2, -1)), lambda a: np.rot90(a, 1, axes=(-2, -1)), [[0, 1], [-1, 0]]),
    "flip rows": (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :], [[-1, 0], [0, 1]]),
    "flip columns": (lambda a: a[..., :, ::-1], lambda a: a[..., :, ::-1], [[1, 0], [0, -1]]),
    "transpose": (lambda a: np.swapaxes(a, -1, -2), lambda a: np.swapaxes(a, -1, -2), [[0, 1], [1, 0]]),
    "anti-transpose": (lambda a: np.swapaxes(a, -1, -2)[..., ::-1, ::-1],
                       lambda a: np.swapaxes(a, -1, -2)[..., ::-1, ::-1], [[0, -1], [-1, 0]]),
}


def random_scene(frames: int = 10, height: int = 48, width: int = 60, seed: int = 0) -> dict:
    """Smooth frames (DN around 8000, one texture moved by each frame's shift), 90%-clear masks."""
    rng = np.random.default_rng(seed)
    texture = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(height, width)))
                                   / (1 + 30 * np.hypot(*np.meshgrid(np.fft.fftfreq(width), np.fft.fftfreq(height))))))
    shifts = rng.integers(-3, 4, size=(frames, 2)).astype(np.int32)
    stack = np.stack([np.roll(texture, tuple(shift), axis=(0, 1)) for shift in shifts])  # [K, H, W]
    return {"name": "imgset0007", "frames": (8000 + 3000 * stack + rng.normal(0, 20, stack.shape)).astype(np.float32),
            "masks": rng.random((frames, height, width)) < 0.9 - 0.01 * np.arange(frames)[:, None, None],
            "shifts": shifts}


def hand_transformed(scene: dict, name: str) -> dict:
    forward, _, matrix = HAND_TRANSFORMS[name]
    return {**scene, "frames": forward(scene["frames"]), "masks": forward(scene["masks"]),
            "shifts": (scene["shifts"] @ np.array(matrix).T).astype(np.int32)}


def library_transform(name: str, probe: np.ndarray):
    """The library transform that does what the hand-written one `name` does to `probe` `[..., H, W]`."""
    forward = HAND_TRANSFORMS[name][0]
    return next(transform for transform in inference.TRANSFORMS
                if np.array_equal(inference.transform_image(probe, transform), forward(probe)))


def hand_ensemble(superresolver, scene: dict, n_slide: int) -> np.ndarray:
    """The mean of the 8 hand-transformed scenes' sliding-window images, each transformed back."""
    images = [HAND_TRANSFORMS[name][1](superresolver.scene(hand_transformed(scene, name), n_slide, self_ensemble=False))
              for name in HAND_TRANSFORMS]
    return np.mean(np.array(images, dtype=np.float64), axis=0)


class MaskedMeanModel:
    """Stand-in network, exactly equivariant (each output pixel depends on that pixel alone): the
    mean of a window's frames over their registered clear masks (the plain mean where none is)."""

    def __init__(self, config):
        self.scale = config.sigma / config.sigma_rescaled

    def __call__(self, x, masks, training=False):  # [b, T, H, W, 1] each
        clear = tf.reduce_sum(masks, axis=1, keepdims=True)
        mean = tf.where(clear > 0, tf.reduce_sum(x * masks, axis=1, keepdims=True) / tf.maximum(clear, 1),
                        tf.reduce_mean(x, axis=1, keepdims=True))
        return {"sr": mean * self.scale}  # [b, 1, H, W, 1]


@pytest.fixture(scope="module")
def tiny_config():
    return default_config(n_features=4, seed=3)


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    return inference.load_model(tiny_config)


@pytest.fixture(scope="module")
def ensemble_superresolver(tiny_config, tiny_model):
    """The tiny model under a config with `self_ensemble: true` (traced once for the module)."""
    return inference.Superresolver(tiny_model, tiny_config.replace(self_ensemble=True))


# ------------------------------------------------------------------------------ the transforms


def test_the_library_transforms_are_the_8_symmetries_with_their_shifts():
    image = np.arange(2 * 5 * 7).reshape(2, 5, 7)  # [frames, H, W], no symmetry of its own
    shifts = np.array([[1, -3], [4, 2]], np.int32)
    matched = []
    for transform in inference.TRANSFORMS:
        transformed = inference.transform_image(image, transform)
        names = [name for name, (forward, _, _) in HAND_TRANSFORMS.items()
                 if forward(image).shape == transformed.shape and np.array_equal(forward(image), transformed)]
        assert len(names) == 1, transform
        matched += names
        np.testing.assert_array_equal(inference.transform_shifts(shifts, transform),
                                      shifts @ np.array(HAND_TRANSFORMS[names[0]][2]).T)
        np.testing.assert_array_equal(inference.restore_image(transformed, transform), image)
    assert sorted(matched) == sorted(HAND_TRANSFORMS) and inference.TRANSFORMS[0].name == "identity"


@pytest.mark.parametrize("name", HAND_TRANSFORMS)
def test_transforming_registered_masks_equals_registering_transformed_masks(name):
    rng = np.random.default_rng(1)
    masks = rng.random((4, 11, 17)) < 0.5  # non-square: a rotation by 90 degrees swaps H and W
    shifts = rng.integers(-4, 5, size=(4, 2))
    forward, _, matrix = HAND_TRANSFORMS[name]
    transformed_shifts = shifts @ np.array(matrix).T
    np.testing.assert_array_equal(forward(preprocessing.translate_masks(masks, shifts)),
                                  preprocessing.translate_masks(forward(masks), transformed_shifts))
    scene = inference.transform_scene({"frames": masks.astype(np.float32), "masks": masks, "shifts": shifts},
                                      library_transform(name, masks))
    np.testing.assert_array_equal(preprocessing.translate_masks(scene["masks"], scene["shifts"]),
                                  forward(preprocessing.translate_masks(masks, shifts)))


# ------------------------------------------------------------------------------ on scenes


def test_an_equivariant_network_gives_the_transformed_image_of_a_transformed_scene(tiny_config):
    scene = random_scene(11, 48, 60)
    superresolver = inference.Superresolver(MaskedMeanModel(tiny_config), tiny_config)
    image = superresolver.scene(scene, n_slide=1)  # two windows, fused
    for name, (forward, _, _) in HAND_TRANSFORMS.items():
        np.testing.assert_allclose(superresolver.scene(hand_transformed(scene, name), n_slide=1), forward(image),
                                   rtol=1e-6, err_msg=name)
    # the check can tell: with the shifts left as they were, a rotated scene's masks are misregistered
    rotated = {**hand_transformed(scene, "rot90"), "shifts": scene["shifts"]}
    assert np.max(np.abs(superresolver.scene(rotated, n_slide=1) - HAND_TRANSFORMS["rot90"][0](image))) > 1
    ensembled = inference.Superresolver(MaskedMeanModel(tiny_config), tiny_config.replace(self_ensemble=True))
    np.testing.assert_allclose(ensembled.scene(scene, n_slide=1), image, rtol=1e-6)  # 8 equal images


def test_self_ensemble_of_deepsum_is_the_mean_of_its_8_transformed_calls(ensemble_superresolver):
    scene = random_scene(10, 48, 60, seed=2)
    expected = hand_ensemble(ensemble_superresolver, scene, n_slide=1)  # each call with self_ensemble=False
    image = ensemble_superresolver.scene(scene, n_slide=1)  # the config's self_ensemble: true
    assert image.shape == (48, 60) and image.dtype == np.float32
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    np.testing.assert_array_equal(ensemble_superresolver.scene(scene, n_slide=1, self_ensemble=True), image)
    plain = ensemble_superresolver.scene(scene, n_slide=1, self_ensemble=False)
    assert np.max(np.abs(image - plain)) > 1  # the network is not equivariant: the ensemble changes the image
    with pytest.raises(domain.DeepSUMError, match="self_ensemble: expected true or false, got 'yes'"):
        ensemble_superresolver.scene(scene, self_ensemble="yes")


def test_evaluation_rows_with_and_without_the_self_ensemble(ensemble_superresolver):
    matplotlib.use("Agg")  # a test may choose the backend; the library does not
    scenes = [random_scene(10, 48, 48, seed=4), random_scene(11, 48, 48, seed=5)]
    ragged = {key: np.concatenate([scene[key] for scene in scenes]) for key in ("frames", "masks", "shifts")}
    rng = np.random.default_rng(6)
    ragged.update(offsets=np.array([0, 10, 21]), names=np.array(["imgset0004", "imgset0005"]),
                  hr=np.stack([scene["frames"][0] + rng.normal(0, 30, (48, 48)) for scene in scenes]),
                  hr_clear=rng.random((2, 48, 48)) < 0.95, baseline=np.array([40.0, 42.0], np.float32))
    superresolver = ensemble_superresolver
    rows = inference.evaluate_sliding_window(superresolver, ragged, n_slides=(1, 0), progress=False)  # both: the config
    assert [(row["method"], row["n_slide"], row["self_ensemble"]) for row in rows] == [
        ("bicubic", None, None), ("DeepSUM", 0, False), ("DeepSUM", 0, True), ("DeepSUM", 1, False), ("DeepSUM", 1, True)]
    for row in rows[1:]:
        images = [hand_ensemble(superresolver, domain.scene_slice(ragged, index), row["n_slide"]) if row["self_ensemble"]
                  else superresolver.scene(domain.scene_slice(ragged, index), row["n_slide"], self_ensemble=False)
                  for index in range(2)]
        truth = [(ragged["hr"][index], ragged["hr_clear"][index]) for index in range(2)]
        assert row["cpsnr"] == pytest.approx(np.mean([metrics.kelvins_cpsnr(image, *hr) for image, hr in zip(images, truth)]),
                                             rel=1e-6)
        assert row["score"] == pytest.approx(np.mean([metrics.kelvins_score(image, *hr, baseline) for image, hr, baseline
                                                      in zip(images, truth, ragged["baseline"])]), rel=1e-6)
        assert row["scenes"] == 2
    # the self-ensemble row counts its 8 transforms (the identity's windows timed once, counted in both)
    assert rows[2]["seconds"] > rows[1]["seconds"] > 0 and rows[4]["seconds"] > rows[3]["seconds"]
    lines = inference.format_table(rows).splitlines()
    assert lines[0].split() == ["method", "n_slide", "self-ensemble", "cPSNR", "(dB)", "score", "s/scene", "scenes"]
    assert lines[1].split()[:3] == ["bicubic", "-", "-"]
    assert lines[4].split()[:4] == ["DeepSUM", "1", "no", f"{rows[3]['cpsnr']:.3f}"]
    assert lines[5].split()[:5] == ["DeepSUM", "1", "yes", f"{rows[4]['cpsnr']:.3f}", f"{rows[4]['score']:.4f}"]
    figure = inference.plot_sliding_window(rows)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    assert labels == ["DeepSUM", "DeepSUM + self-ensemble", "bicubic"]
    assert np.asarray(handles[1].get_ydata()).tolist() == [rows[2]["score"], rows[4]["score"]]
    assert np.asarray(handles[0].get_ydata()).tolist() == [rows[1]["score"], rows[3]["score"]]
    plain = inference.evaluate_sliding_window(superresolver, ragged, n_slides=(0,), progress=False, self_ensemble=False)
    assert [(row["n_slide"], row["self_ensemble"]) for row in plain] == [(None, None), (0, False)]
    assert plain[1]["score"] == pytest.approx(rows[1]["score"], rel=1e-6)
    with pytest.raises(domain.DeepSUMError, match=r"self_ensemble: expected True, False or a list of them, got \['no'\]"):
        inference.evaluate_sliding_window(superresolver, ragged, self_ensemble=["no"])


# ------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    """Synthetic PROBA-V folder: 2 test scenes per band (the first with fewer than 9 usable frames), LR 16x16."""
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(out, seed=5, n_scenes=0, n_test_scenes=2, lr_size=16, progress=False)
    return out


def test_superresolve_self_ensemble_flag_changes_the_valid_submission(tmp_path, synthetic_dir, tiny_config, tiny_model,
                                                                     ensemble_superresolver):
    checkpoint = checkpoints.save_model_checkpoint(tiny_model, tmp_path / "checkpoint", tiny_config)
    images = {}
    for on, flag in ((True, "--self-ensemble"), (False, "--no-self-ensemble")):  # each against the config's value
        config_path = fileio.save_json(tmp_path / f"config_{on}.json", to_json(tiny_config.replace(self_ensemble=not on)))
        zip_path = tmp_path / f"{on}.zip"
        assert main(["superresolve", "--config", str(config_path), "--checkpoint", str(checkpoint), "--data",
                     str(synthetic_dir), "--split", "test", "--band", "NIR", "--out", str(zip_path), flag]) == 0
        assert len(inference.validate_submission(zip_path, synthetic_dir / "test", bands=["NIR"])) == 2
        images[on] = inference.read_submission(zip_path)
    for folder in probav.list_scenes(synthetic_dir, "test", "NIR"):  # the first has fewer than 9 usable frames
        scene = dataset.prepare_test_scene(probav.read_scene(folder))
        for on in (True, False):
            expected = ensemble_superresolver.scene(scene, self_ensemble=on)
            np.testing.assert_array_equal(images[on][folder.name], np.clip(np.rint(expected), 0, 65535).astype(np.uint16))
        assert np.any(images[True][folder.name] != images[False][folder.name])
