"""Tests of libraries.inference: sliding window, submission zip, score (tiny sizes: 96x96 HR)."""

from __future__ import annotations

import os
import shutil
import signal
import zipfile
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow as tf

from libraries.inference import superresolve as superresolve_module
from libraries import model as model_lib
from libraries.model import hardware
from libraries import checkpoints, dataset, domain, fileio, inference, metrics, preprocessing, probav, synthetic
from libraries.__main__ import main
from libraries.config import default_config, load_config, to_json

LR_SIZE = 32
HR_SIZE = 3 * LR_SIZE


def make_scene(clear_pixels: list[int], size: int = HR_SIZE, seed: int = 0) -> dict:
    """A scene whose frame k is constant k (so it can be traced), with exactly clear_pixels[k]
    clear pixels and shift (k, -k)."""
    frames = len(clear_pixels)
    masks = np.zeros((frames, size * size), dtype=bool)
    for index, count in enumerate(clear_pixels):
        masks[index, :count] = True
    order = np.random.default_rng(seed).permutation(size * size)
    return {"name": "imgset0001",
            "frames": np.broadcast_to(np.arange(frames, dtype=np.float32)[:, None, None], (frames, size, size)).copy(),
            "masks": masks[:, order].reshape(frames, size, size),  # [K, H, W]
            "shifts": np.stack([np.arange(frames), -np.arange(frames)], axis=1).astype(np.int32)}


def test_each_frame_keeps_its_own_shift():
    pixels = HR_SIZE * HR_SIZE
    scene = make_scene([pixels // 2, pixels, pixels // 4, pixels * 3 // 4, pixels // 8])
    ordered = inference.sort_frames_by_clearance(scene)
    identity = ordered["frames"][:, 0, 0].astype(int)  # frame k holds the constant k
    assert identity.tolist() == [1, 3, 0, 2, 4]
    np.testing.assert_array_equal(ordered["shifts"], scene["shifts"][identity])
    np.testing.assert_array_equal(ordered["masks"], scene["masks"][identity])


def test_sort_is_stable_so_the_reference_stays_first():
    pixels = HR_SIZE * HR_SIZE
    ordered = inference.sort_frames_by_clearance(make_scene([pixels, pixels // 2, pixels, pixels]))
    assert ordered["frames"][:, 0, 0].tolist() == [0, 2, 3, 1]


def test_clear_threshold_is_lowered_until_enough_frames_remain():
    pixels = HR_SIZE * HR_SIZE
    fractions = [1.0] * 5 + [0.87] * 3 + [0.82] * 2 + [0.5]
    scene = make_scene([int(f * pixels) for f in fractions])
    chosen = inference.select_clear_frames(scene, 9)  # 0.90 keeps 5, 0.85 keeps 8, 0.80 keeps 10
    assert chosen["frames"][:, 0, 0].tolist() == list(range(10))
    chosen = inference.select_clear_frames(scene, 5)
    assert chosen["frames"][:, 0, 0].tolist() == list(range(5))


def test_a_scene_with_too_few_frames_reuses_its_clearest():
    pixels = HR_SIZE * HR_SIZE
    scene = inference.sort_frames_by_clearance(make_scene([pixels // 3, pixels, 0, pixels // 2]))
    chosen = inference.select_clear_frames(scene, 9)
    assert chosen["frames"][:, 0, 0].tolist() == [1, 3, 0, 2, 1, 3, 0, 2, 1]
    np.testing.assert_array_equal(chosen["shifts"][:, 0], [1, 3, 0, 2, 1, 3, 0, 2, 1])


def smooth_image(seed: int, size: int = HR_SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spectrum = np.fft.fft2(rng.normal(size=(size, size)))
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    return (np.real(np.fft.ifft2(spectrum / (1 + 40 * frequency) ** 2)) * 2000 + 8000).astype(np.float32)


def test_fuse_windows_registers_drops_and_averages():
    reference = smooth_image(1)
    # kept up to 4 pixels in either axis (the limit included, as in the original), dropped beyond
    windows = np.stack([reference, np.roll(reference, (2, -1), axis=(0, 1)) + 10,
                        np.roll(reference, (6, 0), axis=(0, 1)), np.roll(reference, (4, -4), axis=(0, 1)) + 20,
                        np.roll(reference, (0, 5), axis=(0, 1))])  # [5, H, W]
    fused, kept = inference.fuse_windows(windows)
    assert kept.tolist() == [True, True, False, True, False]
    np.testing.assert_allclose(fused, reference + 10, rtol=1e-6)  # (0 + 10 + 20) / 3


# ------------------------------------------------------------------------------ submission


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """A test split with two NIR scenes and one RED scene (LR 32x32, no HR)."""
    root = tmp_path_factory.mktemp("probav") / "test"
    rng = np.random.default_rng(3)
    for band, name in (("NIR", "imgset1160"), ("NIR", "imgset1161"), ("RED", "imgset1300")):
        lr = rng.integers(5000, 9000, size=(9, LR_SIZE, LR_SIZE)).astype(np.uint16)
        probav.write_scene(root / band / name, lr, np.ones(lr.shape, dtype=bool))
    return root


def submission_images(names=("imgset1160", "imgset1161", "imgset1300")) -> dict:
    return {name: smooth_image(index) for index, name in enumerate(names)}


def test_write_submission_round_trips_16_bit_pngs(tmp_path, split_dir):
    images = submission_images()
    images["imgset1160"][0, :3] = [-5.0, 70000.0, 1234.6]
    zip_path = inference.write_submission(images, tmp_path / "submission.zip")
    assert inference.validate_submission(zip_path, split_dir) == sorted(images)
    back = inference.read_submission(zip_path)
    assert back["imgset1160"].dtype == np.uint16 and back["imgset1160"].shape == (HR_SIZE, HR_SIZE)
    assert back["imgset1160"][0, :3].tolist() == [0, 65535, 1235]
    np.testing.assert_array_equal(back["imgset1161"], np.rint(images["imgset1161"]))


def test_write_submission_is_atomic(tmp_path):
    images = submission_images()
    images["imgset1161"][5, 5] = np.nan
    with pytest.raises(inference.SubmissionError, match="imgset1161.*NaN"):
        inference.write_submission(images, tmp_path / "submission.zip")
    assert list(tmp_path.iterdir()) == []  # neither the zip nor a temporary file


@pytest.mark.parametrize("images, message", [
    ({}, r"submission.zip: no image to write"),
    ([np.zeros((6, 6))], r"submission.zip: expected a dict of scene name -> image, got a list$"),
    ({"scene_7": np.zeros((6, 6))}, r"^scene_7: expected a scene name like imgset0123$"),
    ({"imgset0001": np.zeros((2, 6, 6))}, r"^imgset0001: expected a 2-D image of numbers, got shape \(2, 6, 6\) of "
                                          r"float64$"),
    ({"imgset0001": np.ones((6, 6), bool)}, r"^imgset0001: expected a 2-D image of numbers, got shape \(6, 6\) of bool$"),
    ({"imgset0001": np.full((6, 6), 7000 + 1j)}, r"^imgset0001: expected a 2-D image of numbers, .* of complex128$"),
    ({"imgset0001": np.full((6, 6), -5.0)}, r"^imgset0001: values -5 to -5, 100% outside 0..65535; expected DN, as "
                                            r"superresolve writes them \(a normalised image: domain.denormalise"),
    ({"imgset0001": np.linspace(-3, 4, 36).reshape(6, 6)}, r"^imgset0001: values -3 to 4, 42% outside 0..65535"),
    ({"imgset0001": np.linspace(0, 1, 36).reshape(6, 6)}, r"^imgset0001: values 0 to 1, 0% outside 0..65535"),
])
def test_write_submission_refuses_what_the_platform_would(tmp_path, images, message):
    with pytest.raises(inference.SubmissionError, match=message):
        inference.write_submission(images, tmp_path / "submission.zip")
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_zip_and_a_split_without_scenes_are_named(tmp_path, split_dir):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 cut short")
    for read in (lambda: inference.validate_submission(broken, split_dir), lambda: inference.read_submission(broken)):
        with pytest.raises(inference.SubmissionError, match=rf"^{re.escape(str(broken))}: not a readable zip file \("):
            read()
    empty = tmp_path / "test"
    (empty / "NIR" / "imgset0001").mkdir(parents=True)  # a scene folder without frames
    scene = empty / "NIR" / "imgset0001"
    with pytest.raises(inference.SubmissionError, match=rf"^{re.escape(str(scene))}: no LR\*\.png frame$"):
        inference.expected_scenes(empty)
    (empty / "NIR" / "imgset0001").rmdir()
    with pytest.raises(inference.SubmissionError, match=r"test: no scene folder imgsetNNNN under bands \['NIR'\]$"):
        inference.expected_scenes(empty)


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return path


def png(image: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", image, extension=".png")


def valid_entries() -> dict[str, bytes]:
    return {f"{name}.png": inference.image_to_png(name, image) for name, image in submission_images().items()}


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("imgset1161.png"), r"imgset1161: missing"),
    (lambda e: e.update({"imgset1300.png": png(np.zeros((HR_SIZE, HR_SIZE - 1), np.uint16))}), r"imgset1300: wrong size 96x95, expected 96x96"),
    (lambda e: e.update({"imgset1160.png": png(np.zeros((HR_SIZE, HR_SIZE), np.uint8))}), r"imgset1160: wrong dtype uint8"),
    (lambda e: e.update({"imgset1160.png": png(np.zeros((HR_SIZE, HR_SIZE, 3), np.uint8))}), r"imgset1160: wrong dtype uint8.*\n.*imgset1160: wrong size 96x96x3"),
    (lambda e: e.update({"imgset9999.png": e["imgset1160.png"]}), r"imgset9999.png: unexpected file"),
    (lambda e: e.update({"imgset1161.png": b"not a png"}), r"imgset1161: imgset1161.png is not a readable PNG"),
])
def test_validate_submission_names_the_bad_scene(tmp_path, split_dir, change, message):
    entries = valid_entries()
    change(entries)
    zip_path = write_zip(tmp_path / "submission.zip", entries)
    with pytest.raises(inference.SubmissionError, match=message):
        inference.validate_submission(zip_path, split_dir)


def test_validate_submission_rejects_a_duplicate(tmp_path, split_dir):
    zip_path = write_zip(tmp_path / "submission.zip", valid_entries())
    with zipfile.ZipFile(zip_path, "a") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr("imgset1300.png", inference.image_to_png("imgset1300", smooth_image(7)))
    with pytest.raises(inference.SubmissionError, match="imgset1300: 2 copies"):
        inference.validate_submission(zip_path, split_dir)


def test_validate_submission_of_one_band(tmp_path, split_dir):
    zip_path = inference.write_submission(submission_images(("imgset1300",)), tmp_path / "red.zip")
    assert inference.validate_submission(zip_path, split_dir, bands=["RED"]) == ["imgset1300"]
    with pytest.raises(inference.SubmissionError, match="imgset1160: missing"):
        inference.validate_submission(zip_path, split_dir)


# ------------------------------------------------------------------------------ the network on scenes


@pytest.fixture(scope="module")
def tiny_config():
    # the separate ops, as in the helpers' tiny_config: the command tests' subprocesses give the same values
    return default_config(n_features=8, xla_elementwise=False, frame_strips=1)


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    return inference.load_model(tiny_config)


@pytest.fixture(scope="module")
def separate_superresolver(tiny_config, tiny_model):
    """A Superresolver of the tiny model with its own compiled functions: the expected images of
    the tests whose commands and functions build their own, and the Superresolver of the tests
    that need no fresh one (each new one traces the network again)."""
    return inference.Superresolver(tiny_model, tiny_config)


def test_load_model_runs_frame_by_frame_when_the_config_says_so(tiny_config, monkeypatch):
    whole = inference.load_model(tiny_config.replace(frame_by_frame=False))
    assert whole.frame_by_frame is False
    frame_model = inference.load_model(tiny_config.replace(frame_by_frame=True))
    assert frame_model.frame_by_frame is True
    assert tiny_config.frame_by_frame == "auto"  # the default: frame by frame on CPUs, whole scenes on GPUs
    for gpu, expected in ((False, True), (True, False)):
        monkeypatch.setattr(hardware, "has_gpu", lambda gpu=gpu: gpu)
        assert superresolve_module.resolve_frame_by_frame("auto") is expected
        assert inference.load_model(tiny_config).frame_by_frame is expected
    x = tf.random.stateless_normal([1, 9, 16, 16, 1], seed=[1, 2])
    masks = tf.ones([1, 9, 16, 16, 1], tf.bool)
    expected = whole(x, masks)["sr"].numpy()  # same seed: same weights
    np.testing.assert_allclose(frame_model(x, masks)["sr"].numpy(), expected, rtol=1e-5, atol=1e-5)


class MeanModel:
    """Stand-in network whose output, de-normalised, is the mean of its input frames."""

    def __init__(self, config):
        self.scale = config.sigma / config.sigma_rescaled

    def __call__(self, x, masks, training=False):
        return {"sr": tf.reduce_mean(x, axis=1, keepdims=True) * self.scale}  # [b, 1, H, W, 1]


class OverflowingModel(MeanModel):
    """Stand-in network whose output overflows to infinity."""

    def __call__(self, x, masks, training=False):
        return {"sr": super().__call__(x, masks)["sr"] * np.inf}


def test_a_network_output_of_nan_or_inf_is_one_error_naming_the_scene(tiny_config):
    for precision, hint in (("float32", ""), ("mixed_float16", " (mixed_float16 may overflow: try --precision float32)")):
        config = tiny_config.replace(precision=precision)
        with pytest.raises(domain.DeepSUMError) as raised:
            inference.Superresolver(OverflowingModel(config), config).scene(textured_scene(9), n_slide=0)
        assert str(raised.value) == f"scene imgset0002: the network produced NaN or infinite values{hint}"


def textured_scene(frames: int, seed: int = 0, clear_share: float = 0.97) -> dict:
    """Frames = one texture + 100 * k (frame k), each a bit less clear than the one before."""
    rng = np.random.default_rng(seed)
    texture = smooth_image(seed)
    masks = rng.uniform(size=(frames, HR_SIZE, HR_SIZE)) < (clear_share - 0.01 * np.arange(frames))[:, None, None]
    return {"name": "imgset0002", "frames": texture + 100 * np.arange(frames, dtype=np.float32)[:, None, None],
            "masks": masks, "shifts": rng.integers(-3, 4, size=(frames, 2)).astype(np.int32)}


def _damaged(change):
    scene = textured_scene(10)
    return {**scene, **change(scene)}


@pytest.mark.parametrize("scene, message", [
    (_damaged(lambda s: {"masks": s["masks"].astype(np.uint8) * 255}),
     "masks hold values other than 0 and 1 (e.g. 0/255); expected clear masks of bool (true = clear) or 0/1"),
    (_damaged(lambda s: {"masks": np.where(s["masks"], 1.0, np.nan)}), "masks hold values other than 0 and 1"),
    (_damaged(lambda s: {"frames": np.where(np.arange(10)[:, None, None] == 2, np.nan, s["frames"])}),
     "frame 2 holds NaN or Inf; expected finite DN values"),
    (_damaged(lambda s: {"masks": s["masks"][:, :-6, :-6]}), "frames (10, 96, 96) float32, masks (10, 90, 90), shifts"),
    (_damaged(lambda s: {"shifts": s["shifts"][:5]}), "frames (10, 96, 96) float32, masks (10, 96, 96), shifts (5, 2) int32; expected"),
    (_damaged(lambda s: {"frames": s["frames"][..., None]}), "frames (10, 96, 96, 1) float32"),
    ({"name": "imgset0002", "frames": np.zeros((9, 24, 24))}, "no ['masks', 'shifts']; expected frames [K, H, W]"),
    (_damaged(lambda s: {key: s[key][:, :5, :5] for key in ("frames", "masks")}),
     "10 frames of 5x5; expected at least one, of sides >= 9 (the config's filter_size)"),
], ids=["0/255 masks", "NaN masks", "NaN frame", "masks of another size", "shifts of 5 frames", "frames [K, H, W, 1]",
        "no masks", "5x5"])
def test_a_scene_built_by_hand_that_the_network_cannot_take_is_one_error_naming_it(tiny_config, separate_superresolver,
                                                                                   scene, message):
    """Before, 0/255 masks counted every frame fully clear in the frame selection (another
    image, 935 DN apart), a 5x5 scene was super-resolved although the network refuses it, and
    the others stopped in TensorFlow or NumPy errors without the scene's name."""
    with pytest.raises(domain.DeepSUMError) as raised:
        separate_superresolver.scene(scene, n_slide=1)
    assert str(raised.value).startswith(f"scene imgset0002: {message}"), str(raised.value)
    with pytest.raises(domain.DeepSUMError, match=re.escape(f"scene imgset0002: {message}")):
        inference.window_inputs(scene, tiny_config)


@pytest.mark.parametrize("n_slide", [-3, 1.7, "2", True])
def test_n_slide_must_be_a_count_of_windows(tiny_config, n_slide):
    with pytest.raises(domain.DeepSUMError, match=rf"^n_slide: expected an integer >= 0, got {re.escape(repr(n_slide))}$"):
        inference.window_inputs(textured_scene(10), tiny_config, n_slide=n_slide)


def test_window_inputs_register_each_mask_with_its_own_shift(tiny_config):
    scene = textured_scene(11)
    permutation = np.random.default_rng(1).permutation(11)
    shuffled = {**scene, **{key: scene[key][permutation] for key in ("frames", "masks", "shifts")}}
    x, masks = inference.window_inputs(shuffled, tiny_config, n_slide=2)
    assert x.shape == masks.shape == (3, 9, HR_SIZE, HR_SIZE, 1)
    registered = preprocessing.translate_masks(scene["masks"], scene["shifts"])  # frames already in clear order
    for window in range(3):
        np.testing.assert_array_equal(masks[window, :, :, :, 0], registered[window:window + 9])
        np.testing.assert_allclose(x[window, :, :, :, 0] * tiny_config.sigma + tiny_config.mu,
                                   scene["frames"][window:window + 9], rtol=1e-5)


def test_sliding_window_averages_three_windows(tiny_config):
    scene = textured_scene(12)
    images = inference.Superresolver(MeanModel(tiny_config), tiny_config).window_images(scene, n_slide=2)
    assert images.shape == (3, HR_SIZE, HR_SIZE)
    for window in range(3):  # window n averages frames n..n+8
        np.testing.assert_allclose(images[window], scene["frames"][window:window + 9].mean(axis=0), rtol=1e-5)
    sr = inference.Superresolver(MeanModel(tiny_config), tiny_config).scene(scene, n_slide=2)
    np.testing.assert_allclose(sr, images.mean(axis=0), rtol=1e-6)  # the windows differ by a constant: no shift
    assert inference.Superresolver(MeanModel(tiny_config), tiny_config).window_images(scene, n_slide=7).shape[0] == 4  # K - 9 + 1


def test_sliding_window_registers_a_shifted_window_before_averaging(tiny_config):
    """Two windows whose SR images are an image and the same image moved by (2, 1): the fused image
    is their average after moving the second back, which is the image itself."""
    image = smooth_image(8)
    frames = np.zeros((10, HR_SIZE, HR_SIZE), np.float32)
    frames[0] = 9 * image  # window 0 (frames 0..8) averages to `image`
    frames[9] = 9 * np.roll(image, (2, 1), axis=(0, 1))  # window 1 (frames 1..9) to the moved image
    scene = {"name": "imgset0003", "frames": frames, "masks": np.ones(frames.shape, bool),
             "shifts": np.zeros((10, 2), np.int32)}
    superresolver = inference.Superresolver(MeanModel(tiny_config), tiny_config)
    windows = superresolver.window_images(scene, n_slide=1)
    np.testing.assert_allclose(windows, [image, np.roll(image, (2, 1), axis=(0, 1))], rtol=1e-5)
    np.testing.assert_allclose(superresolver.scene(scene, n_slide=1), image, rtol=1e-5)
    # without registration the average would be blurred: the check above can tell
    assert np.max(np.abs((windows[0] + windows[1]) / 2 - image)) > 20  # measured 54 DN


def test_bicubic_baseline_of_a_scene_is_the_mean_of_its_clearest_frames():
    scene = make_scene([100, 9000, 4000, 9000, 30])  # frames 1 and 3 are the clearest, frame 4 the cloudiest
    expected = (scene["frames"][1] + scene["frames"][3]) / 2  # frame k is constant k: 2.0
    np.testing.assert_array_equal(inference.bicubic_baseline(scene), expected)
    assert expected[0, 0] == 2.0


def test_network_runs_batched_windows_and_traces_once(tiny_config, tiny_model):
    scene = textured_scene(11)
    superresolver = inference.Superresolver(tiny_model, tiny_config)  # its tf.functions traced once
    images = superresolver.window_images(scene, n_slide=2, windows_per_call=3)
    one_by_one = superresolver.window_images(scene, n_slide=2, windows_per_call=1)
    assert images.shape == (3, HR_SIZE, HR_SIZE) and np.all(np.isfinite(images))
    np.testing.assert_allclose(images, one_by_one, rtol=1e-4, atol=1e-2)
    sr = superresolver.scene(scene, n_slide=2, windows_per_call=3)
    np.testing.assert_allclose(sr, inference.fuse_windows(images)[0], rtol=1e-6)
    superresolver.scene(textured_scene(9, seed=3))  # another size of batch
    calls = superresolver
    assert calls.features.experimental_get_tracing_count() == calls.windows.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("frame_by_frame, setting, calls", [(True, None, [1, 1, 1]), (False, None, [3]),
                                                            (True, 2, [2, 1]), (False, 1, [1, 1, 1])])
def test_windows_per_call_is_one_frame_by_frame_unless_set(tiny_config, frame_by_frame, setting, calls):
    model = model_lib.DeepSUM(tiny_config, frame_by_frame=frame_by_frame)
    superresolver = inference.Superresolver(model, tiny_config)
    windows = superresolver.windows
    seen = []

    def recorded(features, x, masks, index):
        seen.append(int(index.shape[0]))
        return windows(features, x, masks, index)

    superresolver.windows = recorded
    superresolver.window_images(textured_scene(11), n_slide=2, windows_per_call=setting)
    assert seen == calls


def test_windows_compiled_by_xla_agree_one_or_three_per_call(tiny_config, tiny_model, separate_superresolver):
    # under jit_compile the windows are gathered whatever their count (XLA compiles no branch of
    # another shape); without it one window is a slice of the features
    compiled = inference.Superresolver(tiny_model, tiny_config.replace(jit_compile=True))
    scene = textured_scene(11)
    expected = separate_superresolver.window_images(scene, n_slide=2, windows_per_call=1)
    for per_call in (1, 3):
        np.testing.assert_allclose(compiled.window_images(scene, n_slide=2, windows_per_call=per_call), expected,
                                   rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("setting", [0, -1, 1.5, True, "2"])
def test_windows_per_call_refuses_what_is_not_a_positive_integer(tiny_config, tiny_model, setting):
    superresolver = inference.Superresolver(tiny_model, tiny_config)
    with pytest.raises(domain.DeepSUMError, match="windows_per_call: expected a positive integer"):
        superresolver.window_images(textured_scene(11), n_slide=2, windows_per_call=setting)


def test_features_once_per_scene_equal_the_per_window_network(tiny_config, separate_superresolver):
    scene = textured_scene(12, seed=6)
    reused = separate_superresolver.window_images(scene, n_slide=2)
    x, masks = inference.window_inputs(scene, tiny_config, n_slide=2)  # [3, 9, H, W, 1] each
    per_window = separate_superresolver.network_call(tf.constant(x), tf.constant(masks)).numpy()
    per_window = per_window[:, 0, :, :, 0] * tiny_config.sigma_rescaled + tiny_config.mu  # [3, H, W] DN
    assert np.max(np.abs(reused - per_window)) / np.max(np.abs(per_window)) < 1e-5
    frames, _, index = inference.scene_frames(scene, tiny_config, n_slide=2)
    # of the 12 clear frames the three windows read the first 11: SISRNet runs on those alone
    assert frames.shape[0] == 11 and index.tolist() == [list(range(n, n + 9)) for n in range(3)]
    frames, _, index = inference.scene_frames(scene, tiny_config, n_slide=0)
    assert frames.shape[0] == 9 and index.tolist() == [list(range(9))]
    np.testing.assert_array_equal(frames, x[0])  # the clearest nine, in the window's order


def test_one_window_runs_the_whole_network_and_several_compute_each_frames_features_once(tiny_config, tiny_model):
    scene = textured_scene(12, seed=6)
    superresolver = inference.Superresolver(tiny_model, tiny_config)
    features_of = []
    features = superresolver.features
    superresolver.features = lambda x: features_of.append(x.shape[0]) or features(x)
    one = superresolver.window_images(scene, n_slide=0)  # n_slide 0: no feature stage kept beside the network
    assert features_of == []
    x, masks = inference.window_inputs(scene, tiny_config, n_slide=0)
    expected = superresolver.network_call(tf.constant(x), tf.constant(masks)).numpy()[:, 0, :, :, 0]
    np.testing.assert_array_equal(one, expected * tiny_config.sigma_rescaled + tiny_config.mu)
    superresolver.window_images(scene, n_slide=2)
    assert features_of == [11]  # each frame the windows read, once


def test_a_scene_with_fewer_than_9_frames_is_superresolved(separate_superresolver):
    sr = separate_superresolver.scene(textured_scene(5), n_slide=2)
    assert sr.shape == (HR_SIZE, HR_SIZE) and sr.dtype == np.float32 and np.all(np.isfinite(sr))


# ------------------------------------------------------------------------------ commands on a PROBA-V folder


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    """Synthetic PROBA-V folder: 3 train and 2 test scenes per band, LR 32x32 (one short test scene per band)."""
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(out, seed=7, n_scenes=3, n_test_scenes=2, lr_size=LR_SIZE, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, tiny_config, tiny_model) -> tuple[Path, Path]:
    """(config JSON, checkpoint folder) of the tiny model, for the command line."""
    folder = tmp_path_factory.mktemp("tiny_model")
    config_path = fileio.save_json(folder / "config.json", to_json(tiny_config))
    return config_path, checkpoints.save_model_checkpoint(tiny_model, folder / "checkpoint", tiny_config)


def test_score_command_agrees_with_kelvins_score(tmp_path, synthetic_dir, capsys):
    rng = np.random.default_rng(5)
    folders = probav.list_scenes(synthetic_dir, "train", "NIR")
    hr = {folder.name: probav.read_image_png(folder / "HR.png") for folder in folders}
    images = {name: image + rng.normal(0, 30, image.shape) + 200 for name, image in hr.items()}
    zip_path = inference.write_submission(images, tmp_path / "train_nir.zip")
    csv_path = tmp_path / "scores.csv"
    assert main(["score", "--data", str(synthetic_dir), "--band", "NIR", "--submission", str(zip_path),
                 "--csv", str(csv_path)]) == 0
    printed = float(capsys.readouterr().out.strip())
    norm = probav.read_norm(synthetic_dir / "norm.csv")
    expected = [metrics.kelvins_score(np.clip(np.rint(images[folder.name]), 0, 65535), hr[folder.name],
                                      probav.read_mask_png(folder / "SM.png"), norm[folder.name]) for folder in folders]
    assert printed == pytest.approx(np.mean(expected), abs=2e-6)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "scene,band,cpsnr,baseline,score" and len(lines) == 1 + len(folders)


def test_score_refuses_a_csv_path_that_is_the_zip_or_a_folder_and_a_scene_without_clear_pixels_or_baseline(
        tmp_path, synthetic_dir):
    folders = probav.list_scenes(synthetic_dir, "train", "NIR")
    zip_path = inference.write_submission({folder.name: probav.read_image_png(folder / "HR.png") + 5.0
                                           for folder in folders}, tmp_path / "train_nir.zip")
    content = zip_path.read_bytes()
    with pytest.raises(inference.SubmissionError, match=r"train_nir.zip: the per-scene CSV would overwrite the "
                                                        r"submission zip; give another path"):
        inference.score_submission(zip_path, synthetic_dir, "NIR", csv_path=tmp_path / "." / "train_nir.zip")
    assert zip_path.read_bytes() == content
    with pytest.raises(inference.SubmissionError, match=r"is a folder; expected the path of the per-scene CSV"):
        inference.score_submission(zip_path, synthetic_dir, "NIR", csv_path=tmp_path)
    copy = tmp_path / "data"
    shutil.copytree(synthetic_dir, copy)
    cloudy = copy / "train" / "NIR" / folders[1].name / "SM.png"
    probav.write_png(cloudy, np.zeros(probav.read_mask_png(cloudy).shape, bool))
    with pytest.raises(inference.SubmissionError, match=rf"{cloudy}: no clear pixel; the scene cannot be scored"):
        inference.score_submission(zip_path, copy, "NIR")
    probav.write_png(cloudy, np.ones(probav.read_mask_png(cloudy).shape, bool))
    norm = probav.read_norm(copy / "norm.csv")
    del norm[folders[0].name]
    probav.write_norm(copy / "norm.csv", norm)
    with pytest.raises(inference.SubmissionError, match=rf"^{folders[0].name}: no baseline in {copy / 'norm.csv'}$"):
        inference.score_submission(zip_path, copy, "NIR")


def test_score_of_a_one_band_zip_without_band_says_which_band_to_give(tmp_path, synthetic_dir, capsys):
    folders = probav.list_scenes(synthetic_dir, "train", "RED")
    zip_path = inference.write_submission({folder.name: probav.read_image_png(folder / "HR.png") + 5.0
                                           for folder in folders}, tmp_path / "train_red.zip")
    assert main(["score", "--data", str(synthetic_dir), "--submission", str(zip_path)]) == 1
    assert capsys.readouterr().err == (f"error: {zip_path}: no NIR scene in the zip; score it with --band RED (or "
                                       f"--allow-missing to score the scenes present)\n")
    assert main(["score", "--data", str(synthetic_dir), "--submission", str(zip_path), "--band", "RED"]) == 0


def test_score_refuses_a_zip_without_train_scenes(tmp_path, synthetic_dir, capsys):
    names = [folder.name for folder in probav.list_scenes(synthetic_dir, "test", "NIR")]
    zip_path = inference.write_submission({name: smooth_image(0) for name in names}, tmp_path / "test.zip")
    with pytest.raises(inference.SubmissionError, match="no scene of the zip has an HR image"):
        inference.score_submission(zip_path, synthetic_dir, "NIR")
    assert main(["score", "--data", str(synthetic_dir), "--submission", str(tmp_path / "missing.zip")]) == 1
    assert "missing.zip: not a readable zip file" in capsys.readouterr().err


def test_superresolve_command_writes_a_valid_submission(tmp_path, synthetic_dir, tiny_files, separate_superresolver):
    config_path, checkpoint = tiny_files
    zip_path = tmp_path / "submission.zip"
    assert main(["superresolve", "--config", str(config_path), "--checkpoint", str(checkpoint),
                 "--data", str(synthetic_dir), "--split", "test", "--band", "all", "--out", str(zip_path),
                 "--n-slide", "1"]) == 0
    names = inference.validate_submission(zip_path, synthetic_dir / "test")
    assert len(names) == 4  # both bands, including the scenes with fewer than 9 usable frames
    assert not inference.parts_folder(zip_path).exists()  # the scenes kept while it ran: in the zip now
    images = inference.read_submission(zip_path)
    folder = synthetic_dir / "test" / "NIR" / names[-1]
    expected = separate_superresolver.scene(dataset.prepare_test_scene(probav.read_scene(folder)), n_slide=1)
    np.testing.assert_array_equal(images[names[-1]], np.clip(np.rint(expected), 0, 65535).astype(np.uint16))


def test_an_interrupted_split_resumes_from_the_scenes_it_saved(tmp_path, synthetic_dir, separate_superresolver,
                                                               monkeypatch, caplog):
    """Interrupted at its third scene, a run has saved the first two; the rerun computes the third
    alone and returns the images of an uninterrupted run. Saved images of other settings, or
    damaged, are computed again; one run at a time holds a band's folder."""
    superresolver = separate_superresolver
    expected = superresolver.folder(synthetic_dir, "train", ["NIR"], progress=False)
    names = sorted(expected)
    assert len(names) == 3
    computed, scene = [], superresolver.scene

    def counted(one, *args):
        if len(computed) == stop_after:
            raise KeyboardInterrupt
        computed.append(one["name"])
        return scene(one, *args)

    monkeypatch.setattr(superresolver, "scene", counted)
    parts = inference.parts_folder(tmp_path / "submission.zip")
    stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        superresolver.folder(synthetic_dir, "train", ["NIR"], progress=False, parts=parts)
    assert sorted(path.name for path in (parts / "NIR").iterdir()) == sorted(
        [f"{name}.npy" for name in names[:2]] + ["settings.json"])
    computed, stop_after = [], None
    with caplog.at_level("INFO", logger="libraries.inference"):
        resumed = superresolver.folder(synthetic_dir, "train", ["NIR"], progress=False, parts=parts)
    assert computed == names[2:] and f"NIR: 2 of 3 scenes read back from {parts / 'NIR'}" in caplog.text
    assert sorted(resumed) == names
    for name in names:
        np.testing.assert_array_equal(resumed[name], expected[name])
    # another n_slide: other images, every scene computed again
    computed = []
    with caplog.at_level("WARNING", logger="libraries.inference"):
        superresolver.folder(synthetic_dir, "train", ["NIR"], 1, progress=False, parts=parts)
    assert computed == names and "3 saved scene images were made by another model or other settings" in caplog.text
    # a saved image cut off is computed again
    superresolver.folder(synthetic_dir, "train", ["NIR"], progress=False, parts=parts)
    damaged = parts / "NIR" / f"{names[1]}.npy"
    damaged.write_bytes(damaged.read_bytes()[:200])
    computed = []
    again = superresolver.folder(synthetic_dir, "train", ["NIR"], progress=False, parts=parts)
    assert computed == [names[1]] and f"{damaged}: not a saved scene image" in caplog.text
    np.testing.assert_array_equal(again[names[1]], expected[names[1]])
    # a saved image of another size than the scene's SR image (3x its LR frames) is computed again
    fileio.save_npy(damaged, np.zeros((10, 10), np.float32))
    computed = []
    again = superresolver.folder(synthetic_dir, "train", ["NIR"], progress=False, parts=parts)
    assert computed == [names[1]] and f"float32 array of shape (10, 10), expected a finite float32 image of shape " \
                                      f"{expected[names[1]].shape}" in caplog.text
    np.testing.assert_array_equal(again[names[1]], expected[names[1]])
    settings = inference.parts.scene_settings(superresolver.model, superresolver.config, 0, False, synthetic_dir, "train")
    with inference.SceneParts(parts / "NIR", settings):
        with pytest.raises(domain.DeepSUMError, match=f"{parts / 'NIR'}: this parts folder is in use by another run"):
            superresolver.folder(synthetic_dir, "train", ["NIR"], progress=False, parts=parts)


def test_saved_scene_images_are_kept_only_for_the_same_weights_settings_and_a_finite_image(tmp_path, caplog):
    """What makes a band's saved images stale: any weight's value, the self-ensemble, n_slide, the
    data, the split, a config key of the network; not a speed-only key. A saved image that is not
    a finite float32 [H, W] array is deleted and computed again."""
    class Weights(tf.Module):
        def __init__(self):
            self.kernel = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="kernel")
            self.bias = tf.Variable(np.zeros(3, np.float32), name="bias")

    model, config = Weights(), default_config(n_features=4)
    settings = lambda **change: inference.parts.scene_settings(  # noqa: E731
        change.get("model", model), change.get("config", config), change.get("n_slide", 0),
        change.get("self_ensemble", False), change.get("data", tmp_path / "data"), change.get("split", "test"))
    base = settings()
    assert settings(model=Weights()) == base and settings(config=config.replace(frame_by_frame=False)) == base
    nudged = Weights()
    nudged.bias.assign([0.0, 0.0, 1e-6])
    for other in (settings(model=nudged), settings(self_ensemble=True), settings(n_slide=1),
                  settings(data=tmp_path / "other"), settings(split="train"), settings(config=config.replace(mu=1.0))):
        assert other != base
    folder = tmp_path / "parts" / "NIR"
    with inference.SceneParts(folder, base) as parts:
        parts.put("imgset0001", np.ones((6, 6)))
        for name, bad in (("imgset0002", np.full((6, 6), np.nan, np.float32)), ("imgset0003", np.ones((6, 6), np.int32)),
                          ("imgset0004", np.ones((1, 6, 6), np.float32))):
            np.save(folder / f"{name}.npy", bad, allow_pickle=False)
    with inference.SceneParts(folder, base) as parts, caplog.at_level("WARNING", logger="libraries.inference"):
        np.testing.assert_array_equal(parts.get("imgset0001"), np.ones((6, 6), np.float32))
        assert [parts.get(f"imgset000{k}") for k in (2, 3, 4)] == [None, None, None]
        assert sorted(path.name for path in folder.glob("imgset*")) == ["imgset0001.npy"] and parts.reused == 1
    assert caplog.text.count("not a saved scene image") == 3
    with inference.SceneParts(folder, settings(model=nudged)) as parts:
        assert parts.get("imgset0001") is None and not list(folder.glob("imgset*"))


@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
def test_an_interrupted_superresolve_command_says_what_it_kept(tmp_path, synthetic_dir, tiny_files, monkeypatch, capsys,
                                                               stop, request):
    """Ctrl-C or SIGTERM (a batch scheduler's notice) during the second scene: one error line naming
    the parts folder and the one scene it holds, exit code 1, no zip; SIGTERM's handler is put back."""
    config_path, checkpoint = tiny_files
    scene, calls = inference.Superresolver.scene, []

    def reached_the_test(*_):  # without the command's handler SIGTERM would end pytest itself
        raise AssertionError("SIGTERM reached the test: the command caught no signal")

    before = signal.signal(signal.SIGTERM, reached_the_test)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, before))

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            if stop == "Ctrl-C":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return scene(self, *args, **kwargs)

    monkeypatch.setattr(inference.Superresolver, "scene", interrupted)
    zip_path = tmp_path / "submission.zip"
    try:
        status = main(["superresolve", "--config", str(config_path), "--checkpoint", str(checkpoint), "--data",
                       str(synthetic_dir), "--split", "test", "--band", "NIR", "--out", str(zip_path), "--n-slide", "0"])
    except KeyboardInterrupt:  # it would end pytest's whole run
        pytest.fail("the KeyboardInterrupt reached the caller: no error line saying what was kept")
    assert status == 1 and signal.getsignal(signal.SIGTERM) is reached_the_test
    parts = inference.parts_folder(zip_path)
    how = "interrupted" if stop == "Ctrl-C" else "stopped by SIGTERM"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: superresolve {how}: scenes computed so far: 1, kept in {parts}; the same command computes "
        "the others")
    assert len(list((parts / "NIR").glob("imgset*.npy"))) == 1 and not zip_path.exists()


def test_superresolve_command_precision_runs_the_network_in_mixed_bfloat16(tmp_path, synthetic_dir, tiny_files,
                                                                          tiny_config, separate_superresolver):
    """`superresolve --precision mixed_bfloat16`: the images of the same weights computed in
    bfloat16 (a bfloat16 model built here), near the float32 ones but not equal to them."""
    config_path, checkpoint = tiny_files
    zip_path = tmp_path / "bfloat16.zip"
    assert main(["superresolve", "--config", str(config_path), "--checkpoint", str(checkpoint),
                 "--data", str(synthetic_dir), "--split", "test", "--band", "NIR", "--out", str(zip_path),
                 "--n-slide", "0", "--precision", "mixed_bfloat16"]) == 0
    images = inference.read_submission(zip_path)
    name = sorted(images)[0]
    scene = dataset.prepare_test_scene(probav.read_scene(synthetic_dir / "test" / "NIR" / name))
    config = tiny_config.replace(precision="mixed_bfloat16")
    expected = inference.Superresolver(inference.load_model(config, checkpoint), config).scene(scene, n_slide=0)
    np.testing.assert_array_equal(images[name], np.clip(np.rint(expected), 0, 65535).astype(np.uint16))
    # the checkpoint's weights are the tiny model's: its float32 image of the scene
    float32 = np.clip(np.rint(separate_superresolver.scene(scene, n_slide=0)), 0, 65535)
    bfloat16 = images[name].astype(np.float64)
    assert 0 < np.abs(bfloat16 - float32).max() and np.abs(bfloat16 - float32).mean() < 0.01 * float32.mean()


def test_synth_cannot_replace_the_folder_superresolve_reads(tmp_path, synthetic_dir, tiny_files, monkeypatch):
    """A split takes an hour: a set replaced under it would mix the scenes of two sets in one zip."""
    config_path, checkpoint = tiny_files
    data = tmp_path / "probav"
    shutil.copytree(synthetic_dir, data)
    refused, folder = [], inference.Superresolver.folder

    def folder_while_synth_runs(self, *args, **kwargs):
        try:
            synthetic.write_dataset(data, seed=1, n_scenes=1, n_test_scenes=1, lr_size=16, progress=False)
        except domain.DeepSUMError as error:
            refused.append(str(error))
        return folder(self, *args, **kwargs)

    monkeypatch.setattr(inference.Superresolver, "folder", folder_while_synth_runs)
    assert main(["superresolve", "--config", str(config_path), "--checkpoint", str(checkpoint), "--data", str(data),
                 "--split", "test", "--band", "NIR", "--out", str(tmp_path / "test.zip"), "--n-slide", "0"]) == 0
    assert refused == [f"{data}: this synthetic data set folder is in use by another run (a run that reads it, e.g. "
                       f"prepare or superresolve); wait for it to end or use another folder"]
    assert sorted(inference.read_submission(tmp_path / "test.zip")) == sorted(
        path.name for path in probav.list_scenes(synthetic_dir, "test", "NIR"))


def test_superresolve_train_split_with_per_band_paths_then_score_all(tmp_path, synthetic_dir, tiny_files,
                                                                     separate_superresolver, capsys):
    config_path, checkpoint = tiny_files
    red_config = fileio.save_json(tmp_path / "red.json", to_json(load_config(config_path).replace(spectral_band="RED")))
    zip_path = tmp_path / "train.zip"
    assert main(["superresolve", "--data", str(synthetic_dir), "--split", "train", "--band", "all",
                 "--config", f"RED={red_config}", "--config", f"NIR={config_path}",
                 "--checkpoint", f"NIR={checkpoint}", "--checkpoint", f"RED={checkpoint}",
                 "--out", str(zip_path), "--n-slide", "0", "--windows-per-call", "1"]) == 0
    images = inference.read_submission(zip_path)
    folders = probav.list_scenes(synthetic_dir, "train", "NIR") + probav.list_scenes(synthetic_dir, "train", "RED")
    assert sorted(images) == sorted(folder.name for folder in folders)  # 3 scenes per band
    red = folders[-1]
    expected = separate_superresolver.scene(dataset.prepare_test_scene(probav.read_scene(red)), n_slide=0)
    np.testing.assert_array_equal(images[red.name], np.clip(np.rint(expected), 0, 65535).astype(np.uint16))
    capsys.readouterr()
    assert main(["score", "--data", str(synthetic_dir), "--band", "all", "--submission", str(zip_path)]) == 0
    printed = float(capsys.readouterr().out.strip())
    norm = probav.read_norm(synthetic_dir / "norm.csv")
    expected_scores = [metrics.kelvins_score(images[folder.name], probav.read_image_png(folder / "HR.png"),
                                             probav.read_mask_png(folder / "SM.png"), norm[folder.name])
                       for folder in folders]
    assert printed == pytest.approx(np.mean(expected_scores), abs=2e-6)  # printed with 6 decimals


def test_checkpoints_and_configs_per_band():
    assert inference.paths_per_band(["a/b=c"], ["NIR", "RED"], "--config") == {"NIR": "a/b=c", "RED": "a/b=c"}
    assert inference.paths_per_band(["RED=r", "NIR=n"], ["NIR", "RED"], "--checkpoint") == {"NIR": "n", "RED": "r"}
    with pytest.raises(ValueError, match="--checkpoint: no path for band RED"):
        inference.paths_per_band(["NIR=n"], ["NIR", "RED"], "--checkpoint")
    with pytest.raises(ValueError, match="BAND=PATH"):
        inference.paths_per_band(["NIR=n", "other"], ["NIR"], "--checkpoint")
    with pytest.raises(ValueError, match=r"--config 'nir=n.json': band 'nir'; expected BAND=PATH with BAND in "
                                         r"\('NIR', 'RED'\) \(upper case\)"):
        inference.paths_per_band(["nir=n.json"], ["NIR", "RED"], "--config")


@pytest.mark.parametrize("mistake", ["red checkpoint", "red config", "red folder", "swapped configs"])
def test_every_band_is_checked_before_the_first_scene(tmp_path, synthetic_dir, tiny_files, capsys, monkeypatch,
                                                      mistake):
    """A mistake in the RED arguments of `--band all` is found before a NIR scene is computed,
    and leaves no `<out>.parts` folder: on the 290 test scenes it would come after half an hour."""
    config_path, checkpoint = tiny_files
    red_config = fileio.save_json(tmp_path / "red.json", to_json(load_config(config_path).replace(spectral_band="RED")))
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    configs, checkpoints_of = {"NIR": config_path, "RED": red_config}, {"NIR": checkpoint, "RED": checkpoint}
    expected = {"red checkpoint": f"{tmp_path / 'none'}: ", "red config": f"{tmp_path / 'none.json'}: file missing",
                "red folder": f"{data / 'test' / 'RED'}: folder missing",
                "swapped configs": f"--config {red_config}: a config of spectral_band RED, given for band NIR; "
                                   f"expected the NIR model's config"}[mistake]
    if mistake == "red checkpoint":
        checkpoints_of["RED"] = tmp_path / "none"
    elif mistake == "red config":
        configs["RED"] = tmp_path / "none.json"
    elif mistake == "red folder":
        shutil.rmtree(data / "test" / "RED")
    else:
        configs = {"NIR": red_config, "RED": config_path}
    monkeypatch.setattr(inference.Superresolver, "scene", lambda *args, **kwargs: pytest.fail("a scene was computed"))
    zip_path = tmp_path / "submission.zip"
    assert main(["superresolve", "--data", str(data), "--split", "test", "--band", "all", "--out", str(zip_path),
                 *(item for band in ("NIR", "RED") for item in ("--config", f"{band}={configs[band]}",
                                                                 "--checkpoint", f"{band}={checkpoints_of[band]}"))]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {expected}"), error
    assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted(["data", "red.json"])  # no zip, no parts


def test_evaluate_sliding_window_matches_superresolve_per_n_slide(separate_superresolver):
    scenes = [textured_scene(11, seed=4), textured_scene(9, seed=5)]
    ragged = {key: np.concatenate([scene[key] for scene in scenes]) for key in ("frames", "masks", "shifts")}
    ragged.update(offsets=np.array([0, 11, 20]), names=np.array(["imgset0004", "imgset0005"]),
                  hr=np.stack([smooth_image(4) + smooth_image(14) / 20, smooth_image(5) + smooth_image(15) / 20]), hr_clear=np.ones((2, HR_SIZE, HR_SIZE), bool),
                  baseline=np.array([40.0, 42.0], np.float32))
    rows = inference.evaluate_sliding_window(separate_superresolver, ragged, n_slides=(0, 2), progress=False)
    assert [(row["method"], row["n_slide"]) for row in rows] == [("bicubic", None), ("DeepSUM", 0), ("DeepSUM", 2)]
    for row in rows:
        images = [inference.bicubic_baseline(domain.scene_slice(ragged, index)) if row["n_slide"] is None else
                  separate_superresolver.scene(domain.scene_slice(ragged, index), row["n_slide"]) for index in range(2)]
        scores = [metrics.kelvins_score(image, ragged["hr"][index], ragged["hr_clear"][index], ragged["baseline"][index])
                  for index, image in enumerate(images)]
        assert row["score"] == pytest.approx(np.mean(scores), rel=1e-6) and row["scenes"] == 2
    assert inference.format_table(rows).splitlines()[3].split()[:2] == ["DeepSUM", "2"]


def _validation_scenes() -> dict:
    scenes = [textured_scene(9, seed=4), textured_scene(9, seed=5)]
    ragged = {key: np.concatenate([scene[key] for scene in scenes]) for key in ("frames", "masks", "shifts")}
    ragged.update(offsets=np.array([0, 9, 18]), names=np.array(["imgset0004", "imgset0005"]),
                  hr=np.stack([smooth_image(4), smooth_image(5)]), hr_clear=np.ones((2, HR_SIZE, HR_SIZE), bool),
                  baseline=np.array([40.0, 42.0], np.float32))
    return ragged


@pytest.mark.parametrize("damage, message", [
    (lambda data: data["hr"][1].__setitem__((3, 3), np.nan), r"^scene imgset0005: hr: expected finite values"),
    (lambda data: data["baseline"].__setitem__(1, np.nan), r"^scene imgset0005: baseline: expected a positive cPSNR"),
    (lambda data: data.update(names=data["names"][:1]), r"^scenes: 1 names and 2 scenes in offsets; expected a "
                                                        r"load_scenes dict \(one name per scene\)$"),
    (lambda data: data.pop("hr"), r"^scene imgset0004: no \['hr'\]; expected a validation scene"),
    (lambda data: [data.pop(key) for key in ("names", "offsets")] and data.update(names=[], offsets=[0]),
     r"^no scene to evaluate"),
], ids=["NaN in an HR image", "NaN baseline", "a name short", "no hr", "no scene"])
def test_sliding_window_evaluation_names_the_scene_it_cannot_score(separate_superresolver, damage, message):
    """A notebook's evaluation of hand-made or damaged scenes: the error says which scene, where it
    said only "hr: ..."; a names array cut short skipped a scene without a word."""
    data = _validation_scenes()
    damage(data)
    with pytest.raises(domain.DeepSUMError, match=message):
        inference.evaluate_sliding_window(separate_superresolver, data, n_slides=(0,), progress=False)


@pytest.mark.parametrize("n_slides", [(), (-1,), (1.5,), ("2",)])
def test_sliding_window_evaluation_refuses_n_slides_that_are_not_counts(separate_superresolver, n_slides):
    with pytest.raises(domain.DeepSUMError, match=r"^n_slides: expected one or more integers >= 0"):
        inference.evaluate_sliding_window(separate_superresolver, _validation_scenes(), n_slides=n_slides, progress=False)


def test_a_real_probav_scene_with_corrupt_frames_gives_a_valid_384_submission(tmp_path, shared_data_dir,
                                                                              separate_superresolver):
    source = shared_data_dir / "probav_real" / "lr_only" / "train" / "NIR" / "imgset0594"  # 21 frames, 3 corrupt
    scene = dataset.prepare_test_scene(probav.read_scene(source, masks="assume_clear"))
    sr = separate_superresolver.scene(scene)
    assert sr.shape == (384, 384) and np.all(np.isfinite(sr))
    split_dir = tmp_path / "test"
    (split_dir / "NIR").mkdir(parents=True)
    (split_dir / "NIR" / "imgset0594").symlink_to(source)
    zip_path = inference.write_submission({"imgset0594": sr}, tmp_path / "real.zip")
    assert inference.validate_submission(zip_path, split_dir) == ["imgset0594"]


@pytest.mark.parametrize("images", [np.zeros((0, 8, 8)), np.zeros((8, 8)), np.full((2, 8, 8), np.nan),
                                    np.zeros((2, 8, 8), bool)], ids=["no window", "one image", "NaN", "bool"])
def test_fuse_windows_refuses_what_is_not_the_sr_images_of_windows(images):
    with pytest.raises(domain.DeepSUMError, match=r"^fuse_windows: images of shape .*; expected the finite SR images"):
        inference.fuse_windows(images)
