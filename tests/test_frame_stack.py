"""`superresolve --frames`: any folder of PNG/TIFF frames of one scene -> one image (LR 16-24 px,
`n_features` 4). Expected images come from NumPy and scikit-image beside the library, or from
`preprocess_scene` and `Superresolver.scene` called by hand."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import skimage.transform
import tensorflow as tf
import tifffile

from libraries import checkpoints, dataset, domain, fileio, inference
from libraries import config as config_module
from libraries.__main__ import main

LR_SIZE = 16


@pytest.fixture(scope="module")
def tiny_config():
    return config_module.default_config(n_features=4)


@pytest.fixture(scope="module")
def superresolver(tiny_config):
    """The tiny network (random weights seeded by the config), its calls traced once."""
    return inference.Superresolver(inference.load_model(tiny_config), tiny_config)


class MeanModel:
    """Stand-in network whose output, de-normalised, is the mean of its input frames (DN)."""

    def __init__(self, config):
        self.scale = config.sigma / config.sigma_rescaled

    def __call__(self, x, masks, training=False):
        return {"sr": tf.reduce_mean(x, axis=1, keepdims=True) * self.scale}  # [b, 1, H, W, 1]


class ReferenceModel(MeanModel):
    """Stand-in network whose output, de-normalised, is the window's first frame: the reference."""

    def __call__(self, x, masks, training=False):
        return {"sr": x[:, :1] * self.scale}  # [b, 1, H, W, 1]


def texture(seed: int, shape=(LR_SIZE, LR_SIZE)) -> np.ndarray:
    """A smooth random image in [0, 1], float64 `[h, w]`."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.fft2(rng.normal(size=shape))
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(shape[1]), np.fft.fftfreq(shape[0])))
    image = np.real(np.fft.ifft2(spectrum / (1 + 8 * frequency) ** 2))
    return (image - image.min()) / (image.max() - image.min())


def frames_16_bit(count: int = 5, seed: int = 0, shape=(LR_SIZE, LR_SIZE)) -> np.ndarray:
    """Frame k: one texture (4000..9000 DN) + 100 k, uint16 `[count, h, w]`."""
    return np.stack([np.rint(4000 + 5000 * texture(seed, shape)) + 100 * k for k in range(count)]).astype(np.uint16)


def write_frames(folder: Path, frames: np.ndarray, names: list[str] | None = None) -> list[str]:
    """Write frames under `names` (default f0.png, f1.png, ...), in reverse order so that the
    folder's listing order is not the sorted one. Returns the names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"f{k}.png" for k in range(len(frames))]
    for name, frame in reversed(list(zip(names, frames))):
        if name.endswith(".png"):
            iio.imwrite(folder / name, frame, extension=".png")
        else:
            tifffile.imwrite(folder / name, frame)
    return names


def upsampled(frames: np.ndarray) -> np.ndarray:
    """Bicubic x3 of each frame as the authors did (skimage, edge mode), float64 `[K, 3h, 3w]`."""
    return np.stack([skimage.transform.resize(np.asarray(frame, np.float64), (3 * frame.shape[0], 3 * frame.shape[1]),
                                              order=3, mode="edge", anti_aliasing=False, preserve_range=True)
                     for frame in frames])


def completed_mean(frames: np.ndarray) -> np.ndarray:
    """What MeanModel gives for 5 equally clear, unshifted frames: the test-time completion to 9
    frames repeats frames 0..3 once, so the mean of frames 0, 1, 2, 3, 4, 0, 1, 2, 3."""
    up = upsampled(frames)
    return (2 * up[:4].sum(axis=0) + up[4]) / 9


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames") / "my_scene"
    write_frames(folder, frames_16_bit(), ["b.png", "d.png", "a.png", "e.png", "c.png"])
    return folder


def test_five_16_bit_frames_give_what_superresolve_scene_gives_on_the_scene_built_by_hand(png_folder, tiny_config,
                                                                                           superresolver):
    stack = inference.read_frame_stack(png_folder)
    assert stack.frame_names == ("a.png", "b.png", "c.png", "d.png", "e.png") and stack.kind == "16-bit"
    sr = inference.superresolve_frames(superresolver, tiny_config, stack)
    assert sr.shape == (48, 48) and sr.dtype == np.float32

    names = sorted(path.name for path in png_folder.glob("*.png"))
    lr = np.stack([iio.imread(png_folder / name) for name in names])  # [5, 16, 16] uint16
    prepared = dataset.preprocess_scene("my_scene", lr, np.ones(lr.shape, bool), names, complete=True)
    scene = {"name": "my_scene", "frames": prepared.frames, "masks": prepared.masks, "shifts": prepared.shifts}
    np.testing.assert_array_equal(sr, superresolver.scene(scene))
    assert np.max(np.abs(sr - completed_mean(lr))) > 1  # the network's correction is there: not the bicubic mean


def test_8_bit_frames_come_back_on_their_own_scale(tmp_path, tiny_config):
    frames = np.stack([np.rint(40 + 150 * texture(1)) + 5 * k for k in range(5)]).astype(np.uint8)
    write_frames(tmp_path / "frames", frames)
    stack = inference.read_frame_stack(tmp_path / "frames")
    assert stack.kind == "8-bit" and stack.frames.dtype == np.uint8
    sr = inference.superresolve_frames(MeanModel(tiny_config), tiny_config, stack)
    np.testing.assert_allclose(sr, completed_mean(frames), rtol=0, atol=2e-3)
    # written at the frames' bit depth: in a 16-bit PNG values 0..255 look black
    inference.write_image(tmp_path / "sr.png", sr + 0.4, stack.kind)
    back = iio.imread(tmp_path / "sr.png")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, np.clip(np.rint(completed_mean(frames) + 0.4), 0, 255).astype(np.uint8))


def stack_of(frames: np.ndarray, clear: np.ndarray | None = None) -> inference.FrameStack:
    kind = {np.dtype(np.uint16): "16-bit", np.dtype(np.uint8): "8-bit"}.get(frames.dtype, "float")
    clear = np.ones(frames.shape, bool) if clear is None else clear
    return inference.FrameStack("scene", Path("."), frames, clear, tuple(f"f{k}" for k in range(len(frames))), kind)


def test_values_are_mapped_onto_the_dn_of_a_probav_scene(tiny_config):
    mu, spread = tiny_config.mu, inference.frame_stack.SCENE_SPREAD
    frames = np.stack([40 + 150 * texture(2) + 5 * k for k in range(3)]).astype(np.uint8)
    clear = np.ones(frames.shape, bool)
    clear[0, :6, :6] = False
    cloudy = frames.copy()
    cloudy[0, :6, :6] = 250  # a bright cloud, left out of the statistics by its mask
    dn = inference.value_scale(stack_of(cloudy, clear), mu).to_dn(cloudy).astype(np.float64)
    assert dn[clear].mean() == pytest.approx(mu, rel=1e-6) and dn[clear].std() == pytest.approx(spread, rel=1e-5)

    flat = np.full((4, 24, 24), 0.5, np.float32) + texture(3, (24, 24)).astype(np.float32) * 1e-3
    flat[1, 3, 4] = 100.0  # one bright pixel: the gain that gives the spread would make frame 1 corrupt
    stack = stack_of(flat)
    dn = inference.value_scale(stack, mu).to_dn(flat).astype(np.float64)
    assert dn.mean() == pytest.approx(mu, rel=1e-6) and dn.max() == pytest.approx(domain.CORRUPT_VALUE - 1, abs=0.01)
    assert inference.prepare_stack(stack, tiny_config).prepared.corrupt == 0

    constant = stack_of(np.full((1, LR_SIZE, LR_SIZE), 7.0, np.float32))
    assert inference.value_scale(constant, mu) == inference.ValueScale(1.0, mu - 7.0)
    raw = frames_16_bit(2)
    np.testing.assert_array_equal(inference.value_scale(stack_of(raw), mu).to_dn(raw), raw.astype(np.float32))


def test_masks_are_matched_in_sorted_order_and_choose_the_reference(tmp_path, tiny_config):
    frames = frames_16_bit()
    write_frames(tmp_path / "frames", frames)
    masks = np.ones(frames.shape, np.uint8)
    for k, side in ((0, 3), (2, 5), (3, 2), (4, 6)):  # frame 1 alone is all clear; frame 3 the next clearest
        masks[k, :side, :side] = 0
    write_frames(tmp_path / "frames" / "masks", masks * 255, [f"m{k}.png" for k in range(5)])
    reference = int(np.argmax((masks != 0).sum(axis=(1, 2))))  # by hand: most clear pixels
    assert reference == 1
    model = ReferenceModel(tiny_config)
    stack = inference.read_frame_stack(tmp_path / "frames", "masks/*.png")
    np.testing.assert_array_equal(stack.clear, masks != 0)
    np.testing.assert_allclose(inference.superresolve_frames(model, tiny_config, stack),
                               upsampled(frames[reference:reference + 1])[0], rtol=1e-6)
    # without masks every frame is all clear and the first (a tie) is the reference
    np.testing.assert_allclose(inference.superresolve_frames(model, tiny_config, inference.read_frame_stack(tmp_path / "frames")),
                               upsampled(frames[:1])[0], rtol=1e-6)


def test_hidden_files_and_masks_beside_the_frames_are_not_frames(tmp_path):
    """Masks may sit in the frames' own folder (masks_glob "mask_*.png"), and copies from a Mac
    bring hidden "._" files (AppleDouble metadata, not images) and hidden images: neither is a frame."""
    frames = frames_16_bit()
    folder = tmp_path / "frames"
    write_frames(folder, frames)
    masks = np.ones(frames.shape, np.uint8)
    masks[2, :4, :4] = 0
    write_frames(folder, masks * 255, [f"mask_{k}.png" for k in range(5)])
    (folder / "._f0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    iio.imwrite(folder / ".thumbnail.png", frames[0] // 2, extension=".png")
    stack = inference.read_frame_stack(folder, "mask_*.png")
    assert stack.frame_names == tuple(f"f{k}.png" for k in range(5))
    np.testing.assert_array_equal(stack.frames, frames)
    np.testing.assert_array_equal(stack.clear, masks != 0)


def test_float_tiff_frames_give_a_float_tiff_on_their_scale(tmp_path, tiny_config):
    shape = (20, 24)  # not square
    frames = np.stack([0.1 + 0.5 * texture(4, shape) + 0.01 * k for k in range(5)]).astype(np.float32)
    write_frames(tmp_path / "frames", frames, [f"frame{k}.tif" for k in range(5)])
    stack = inference.read_frame_stack(tmp_path / "frames")
    assert stack.kind == "float"
    sr = inference.superresolve_frames(MeanModel(tiny_config), tiny_config, stack)
    inference.write_image(tmp_path / "sr.tiff", sr, stack.kind)
    with pytest.raises(inference.FrameStackError, match=r"sr\.png: the frames are float and a PNG holds integers; "
                                                        r"expected a \.tif or \.tiff \(float32\) path"):
        inference.write_image(tmp_path / "sr.png", sr, stack.kind)  # values 0.1..0.6 would round to 0 and 1
    back = tifffile.imread(tmp_path / "sr.tiff")
    assert back.dtype == np.float32 and back.shape == (60, 72)
    np.testing.assert_allclose(back, completed_mean(frames), rtol=0, atol=1e-5)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["frames", "sr.tiff"]  # no temporary file left


def test_the_command_writes_the_16_bit_image_of_the_red_model(tmp_path, png_folder, tiny_config, superresolver,
                                                              monkeypatch, capsys):
    """--band RED without --config reads config_files/DeepSUM_config_RED.json of the repository
    root (here a tiny one), --checkpoint in its RED= form, masks from a glob."""
    root = tmp_path / "root"
    red = tiny_config.replace(spectral_band="RED")
    fileio.save_json(root / "config_files" / "DeepSUM_config_RED.json", config_module.to_json(red))
    monkeypatch.setattr(config_module, "REPOSITORY_ROOT", root)
    checkpoint = checkpoints.save_model_checkpoint(superresolver.model, tmp_path / "checkpoint", red)
    folder = tmp_path / "frames"
    frames = np.stack([iio.imread(path) for path in sorted(png_folder.glob("*.png"))])
    write_frames(folder, frames)
    masks = np.ones(frames.shape, bool)
    masks[2, :4] = False
    write_frames(folder / "masks", masks.astype(np.uint8), [f"mask{k}.png" for k in range(5)])
    out = tmp_path / "out" / "sr.png"
    assert main(["superresolve", "--frames", str(folder), "--masks", "masks/*.png", "--band", "RED",
                 "--checkpoint", f"RED={checkpoint}", "--n-slide", "1", "--windows-per-call", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == (f"wrote {out}: 48x48 16-bit PNG from 5 of the 5 16-bit frames of {folder}, reused to make 9 "
                       "(RED model, n_slide 1)")
    image = iio.imread(out)
    stack = inference.read_frame_stack(folder, "masks/*.png")  # the RED config differs from tiny_config by its band only
    expected = inference.superresolve_frames(superresolver, tiny_config, stack, n_slide=1)
    assert image.dtype == np.uint16 and image.shape == (48, 48)
    np.testing.assert_array_equal(image, np.clip(np.rint(expected), 0, 65535).astype(np.uint16))


def test_a_config_of_the_other_band_is_refused(tmp_path, tiny_config, capsys):
    """`--band RED --config nir.json` would run the NIR model's config and call it the RED model."""
    _frames(tmp_path / "frames", *frames_16_bit(3))
    nir = fileio.save_json(tmp_path / "nir.json", config_module.to_json(tiny_config))
    command = ["superresolve", "--frames", str(tmp_path / "frames"), "--config", str(nir), "--checkpoint",
               str(tmp_path / "ck"), "--out", str(tmp_path / "sr.png")]
    assert main(command + ["--band", "RED"]) == 1
    assert capsys.readouterr().err == (f"error: --config {nir}: a config of spectral_band NIR, given for band RED; "
                                       f"expected the RED model's config\n")
    assert not (tmp_path / "sr.png").exists()


def _frames(folder: Path, *frames: np.ndarray, suffix: str = ".png") -> None:
    write_frames(folder, list(frames), [f"f{k}{suffix}" for k in range(len(frames))])


def _truncated(folder: Path) -> None:
    _frames(folder, *frames_16_bit(3))
    content = (folder / "f1.png").read_bytes()
    (folder / "f1.png").write_bytes(content[:len(content) // 2])


def _nan_tiff(folder: Path) -> None:
    frames = np.stack([texture(k) for k in range(3)]).astype(np.float32)
    frames[2, 5, 5] = np.nan
    _frames(folder, *frames, suffix=".tif")


def _damaged_tiff(folder: Path) -> None:
    _frames(folder, *np.stack([texture(k) for k in range(2)]).astype(np.float32), suffix=".tif")
    (folder / "f1.tif").write_bytes(b"II*\x00" + b"\xff" * 40)


def _masks(folder: Path, count: int, value: int = 1) -> None:
    _frames(folder, *frames_16_bit(3))
    write_frames(folder / "masks", np.full((count, LR_SIZE, LR_SIZE), value, np.uint8), [f"m{k}.png" for k in range(count)])


# (case, how the folder is made, masks glob, what the error names)
BAD_FOLDERS = [
    ("missing", lambda folder: None, None, r"bad_frames: folder missing"),
    ("empty", lambda folder: (folder.mkdir(), (folder / "notes.txt").write_text("frames?")), None,
     r"bad_frames: no PNG or TIFF frame"),
    ("mixed sizes", lambda folder: _frames(folder, frames_16_bit(1)[0], frames_16_bit(1, shape=(16, 18))[0]), None,
     r"f1\.png: size 16x18; expected 16x16 like f0\.png"),
    ("too small", lambda folder: _frames(folder, frames_16_bit(1, shape=(12, 20))[0]), None,
     r"f0\.png: size 12x20; expected frames of at least 16x16"),
    ("truncated PNG", _truncated, None, r"f1\.png: not a readable PNG \(truncated"),
    ("mask count", lambda folder: _masks(folder, 2), "masks/*.png", r"bad_frames: 3 frames but 2 masks"),
    ("no mask", lambda folder: _masks(folder, 0), "masks/*.png", r"masks/\*\.png: the masks glob matches no file"),
    ("all cloudy", lambda folder: _masks(folder, 3, value=0), "masks/*.png",
     r"masks/\*\.png: every mask is all zero \(no clear pixel in any frame\); expected nonzero = clear"),
    ("mask suffix", lambda folder: (_masks(folder, 3), (folder / "masks" / "notes.txt").write_text("")), "masks/*",
     r"notes\.txt: matches the masks glob 'masks/\*' but is not a PNG or TIFF file"),
    ("colour", lambda folder: _frames(folder, np.zeros((LR_SIZE, LR_SIZE, 3), np.uint8)), None,
     r"f0\.png: image of shape \(16, 16, 3\)"),
    ("mixed kinds", lambda folder: _frames(folder, frames_16_bit(1)[0], np.zeros((LR_SIZE, LR_SIZE), np.uint8)), None,
     r"f1\.png: 8-bit frame, but f0\.png is 16-bit"),
    ("NaN", _nan_tiff, None, r"f2\.tif: NaN or infinite values"),
    ("damaged TIFF", _damaged_tiff, None, r"f1\.tif: not a readable TIFF"),
]


@pytest.mark.parametrize("make, masks_glob, named", [case[1:] for case in BAD_FOLDERS],
                         ids=[case[0] for case in BAD_FOLDERS])
def test_a_bad_frame_folder_is_one_error_naming_the_file(tmp_path, make, masks_glob, named):
    make(tmp_path / "bad_frames")
    with pytest.raises(inference.FrameStackError, match=named):
        inference.read_frame_stack(tmp_path / "bad_frames", masks_glob)


def _nan_mask(folder: Path) -> None:
    _frames(folder, *frames_16_bit(3))
    masks = np.ones((3, LR_SIZE, LR_SIZE), np.float32)
    masks[1, 4, 7] = np.nan  # `NaN != 0` is True: without a check the pixel would count as clear
    write_frames(folder / "masks", masks, [f"m{k}.tif" for k in range(3)])


def _inf_mask(folder: Path) -> None:
    _frames(folder, *frames_16_bit(3))
    masks = np.zeros((3, LR_SIZE, LR_SIZE), np.float64)
    masks[0] = 1.0
    masks[2, 0, 0] = -np.inf
    write_frames(folder / "masks", masks, [f"m{k}.tiff" for k in range(3)])


def _int32_tiff(folder: Path) -> None:
    _frames(folder, *frames_16_bit(2).astype(np.int32), suffix=".tif")


def _colour_second(folder: Path, suffix: str) -> None:
    colour = np.zeros((LR_SIZE, LR_SIZE, 3), np.uint8 if suffix == ".png" else np.uint16)
    write_frames(folder, [frames_16_bit(1)[0], colour], ["f0.png", f"f1{suffix}"])


FRAME = "a single-channel 16-bit, 8-bit or float PNG or TIFF frame"
MASK = "a single-channel PNG or TIFF clear mask (nonzero = clear)"
# (case, how the folder is made, masks glob, the file named, the rest of the message): exact messages
BAD_FILES = [
    ("NaN mask", _nan_mask, "masks/*.tif", "masks/m1.tif", f"NaN or infinite values; expected {MASK}"),
    ("Inf mask", _inf_mask, "masks/*.tiff", "masks/m2.tiff", f"NaN or infinite values; expected {MASK}"),
    ("int32 TIFF", _int32_tiff, None, "f0.tif", f"pixels of type int32; expected {FRAME}"),
    ("colour second PNG", lambda folder: _colour_second(folder, ".png"), None, "f1.png",
     f"image of shape (16, 16, 3) (several channels or planes); expected {FRAME}"),
    ("colour second TIFF", lambda folder: _colour_second(folder, ".tif"), None, "f1.tif",
     f"image of shape (16, 16, 3) (several channels or planes); expected {FRAME}"),
]


@pytest.mark.parametrize("make, masks_glob, named, message", [case[1:] for case in BAD_FILES],
                         ids=[case[0] for case in BAD_FILES])
def test_a_bad_frame_or_mask_is_refused_with_its_exact_message(tmp_path, make, masks_glob, named, message):
    folder = tmp_path / "bad_frames"
    make(folder)
    with pytest.raises(inference.FrameStackError) as error:
        inference.read_frame_stack(folder, masks_glob)
    assert str(error.value) == f"{folder / named}: {message}"


def test_a_file_gone_before_it_is_read_is_named(tmp_path):
    with pytest.raises(inference.FrameStackError) as error:
        inference.frame_stack.read_image(tmp_path / "m0.png", (LR_SIZE, LR_SIZE), MASK)
    assert str(error.value) == f"{tmp_path / 'm0.png'}: file missing (expected {MASK})"


def test_a_negative_n_slide_is_refused(tiny_config):
    stack = stack_of(frames_16_bit(3))
    with pytest.raises(inference.FrameStackError) as error:
        inference.superresolve_frames(MeanModel(tiny_config), tiny_config, stack, n_slide=-1)
    assert str(error.value) == "n_slide: expected an integer >= 0, got -1"


def test_a_bad_output_suffix_is_refused(tmp_path):
    with pytest.raises(inference.FrameStackError, match=r"sr\.jpg: unknown image suffix '\.jpg'"):
        inference.write_image(tmp_path / "sr.jpg", np.zeros((48, 48), np.float32))
    with pytest.raises(inference.FrameStackError, match=r"sr\.png: the image holds NaN"):
        inference.write_image(tmp_path / "sr.png", np.full((48, 48), np.nan, np.float32))
    assert list(tmp_path.iterdir()) == []


# arguments after `superresolve` (under tmp_path; {frames}: 3 good frames), what the error line names
BAD_COMMANDS = [
    (["--frames", "{tmp}/no_frames", "--checkpoint", "{tmp}/ck", "--out", "{tmp}/sr.png"], "no_frames: folder missing"),
    (["--frames", "{tmp}/truncated", "--checkpoint", "{tmp}/ck", "--out", "{tmp}/sr.png"], "f1.png: not a readable PNG"),
    (["--frames", "{frames}", "--checkpoint", "{tmp}/ck", "--out", "{tmp}/sr.jpg"], "sr.jpg: unknown image suffix"),
    (["--frames", "{frames}", "--band", "all", "--checkpoint", "{tmp}/ck", "--out", "{tmp}/sr.png"], "--band all"),
    (["--frames", "{frames}", "--out", "{tmp}/sr.png"], "--checkpoint: required with --frames"),
    (["--frames", "{frames}", "--split", "test", "--checkpoint", "{tmp}/ck", "--out", "{tmp}/sr.png"],
     "--split: not used with --frames"),
    (["--frames", "{frames}", "--config", "NIR={tmp}/c.json", "--band", "RED", "--checkpoint", "{tmp}/ck",
      "--out", "{tmp}/sr.png"], "--config: no path for band RED"),
    (["--frames", "{frames}", "--checkpoint", "{tmp}/ck", "--out", "{frames}/f2.png"], "f2.png: is one of the frames"),
    (["--frames", "{tmp}/float_frames", "--checkpoint", "{tmp}/ck", "--out", "{tmp}/sr.png"],
     "sr.png: the frames are float and a PNG holds integers"),
    (["--data", "{tmp}", "--checkpoint", "{tmp}/ck", "--out", "{tmp}/sub.zip"], "--config: required to super-resolve a split"),
    (["--data", "{tmp}", "--masks", "m/*.png", "--config", "{tmp}/c.json", "--checkpoint", "{tmp}/ck",
      "--out", "{tmp}/sub.zip"], "--masks: the clear masks of --frames"),
]


@pytest.mark.parametrize("arguments, named", BAD_COMMANDS, ids=[case[1] for case in BAD_COMMANDS])
def test_a_bad_frames_command_is_one_error_line_and_exit_code_1(tmp_path, arguments, named, capsys):
    _frames(tmp_path / "frames", *frames_16_bit(3))
    _frames(tmp_path / "float_frames", *(frames_16_bit(3) / 65535.0).astype(np.float32), suffix=".tif")
    _truncated(tmp_path / "truncated")
    before = sorted(tmp_path.rglob("*"))
    status = main(["superresolve"] + [argument.format(tmp=tmp_path, frames=tmp_path / "frames") for argument in arguments])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1, error
    assert len(error) == 1 and error[0].startswith("error: ") and named in error[0], error
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
