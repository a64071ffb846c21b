"""Whole-scene super-resolution (the sliding window), the Kelvins submission and its score.

A scene here is a dict of NumPy arrays on the HR grid, as `dataset.load_scenes` (one slice of
its ragged arrays, see `scene_at`) or `dataset.prepare_test_scene` give it:

    frames  [K, H, W] float32   bicubic-upsampled LR frames, raw DN, NOT resampled
    masks   [K, H, W] bool      their clear masks, NOT registered (true = clear)
    shifts  [K, 2]    int       integer shift registering each frame (and mask) to the reference
    name    str                 e.g. "imgset0594"; validation scenes also carry hr, hr_clear, baseline

Sliding window (spec section 5): sort the frames by clear pixels, keep those more than p clear
(p = 0.90, lowered by 0.05 until at least T_in remain), run the network on frames n..n+T_in-1 for
n = 0..min(n_slide, K-T_in) (each frame's SISRNet features computed once per scene), register
every output to the first with phase cross-correlation, drop those shifted by more than 4
pixels and average the rest. Image sizes come from the data.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import weakref
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import imageio.v3 as iio
import numpy as np
import tensorflow as tf
from skimage.registration import phase_cross_correlation
from tqdm.auto import tqdm

from libraries import config as config_module
from libraries import fileio, preprocessing

BANDS = ("NIR", "RED")
CLEAR_START = 0.90  # first clear-fraction threshold of the frame selection
CLEAR_STEP = 0.05  # lowered by this until enough frames pass
MAX_SR_SHIFT = 4  # window outputs shifted further than this from the first are dropped
PER_FRAME = ("frames", "masks", "shifts", "frame_names")  # scene arrays with one row per frame
SCENE_NAME = re.compile(r"imgset\d{4}")
PNG_NAME = re.compile(r"imgset\d{4}\.png")


class SubmissionError(ValueError):
    """A submission zip (or an image for it) that the Kelvins rules would not accept."""


# --------------------------------------------------------------------------------------------
# scenes


def scene_at(data: Mapping[str, np.ndarray], index: int) -> dict[str, Any]:
    """One scene out of the ragged arrays of `dataset.load_scenes`.

    Per-frame arrays (`frames`, `masks`, `shifts`) are sliced with `offsets`; per-scene arrays
    (`names`, `hr`, `hr_clear`, `baseline`) are indexed. Returns a scene dict (module docstring).
    """
    start, stop = int(data["offsets"][index]), int(data["offsets"][index + 1])
    scene: dict[str, Any] = {key: data[key][start:stop] for key in PER_FRAME if key in data}
    scene["name"] = str(data["names"][index])
    for key in ("hr", "hr_clear", "baseline"):
        if key in data:
            scene[key] = data[key][index]
    return scene


def iterate_scenes(scenes: Mapping[str, np.ndarray] | Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """The scene dicts of a `load_scenes` dict (ragged arrays) or of an iterable of scene dicts."""
    if isinstance(scenes, Mapping):
        for index in range(len(scenes["names"])):
            yield scene_at(scenes, index)
    else:
        yield from (dict(scene) for scene in scenes)


def _scene_count(scenes: Mapping[str, np.ndarray] | Iterable[Any]) -> int | None:
    if isinstance(scenes, Mapping):
        return len(scenes["names"])
    return len(scenes) if hasattr(scenes, "__len__") else None


def sort_frames_by_clearance(scene: Mapping[str, Any]) -> dict[str, Any]:
    """The scene with its frames in decreasing order of clear pixels; masks and shifts follow.

    The original sorted frames and masks but not the shifts, so from then on each mask was
    registered with another frame's shift; here every frame keeps its own shift. The sort is
    stable: among frames equally clear the earlier comes first, so the registration reference
    (frame 0, the clearest) stays first (the original's `argsort(...)[::-1]` took the later one).
    """
    clear_pixels = np.asarray(scene["masks"]).sum(axis=(1, 2))  # [K]
    order = np.argsort(-clear_pixels, kind="stable")
    return _take_frames(scene, order)


def select_clear_frames(scene: Mapping[str, Any], frames_needed: int = 9) -> dict[str, Any]:
    """Keep the frames more than p clear, p = 0.90 lowered by 0.05 until `frames_needed` remain.

    Order is preserved (call `sort_frames_by_clearance` first). A scene with fewer usable frames
    than `frames_needed` (possible in the test split, which is never dropped) keeps all of them
    and reuses them cyclically, clearest first, to reach `frames_needed`.
    """
    masks = np.asarray(scene["masks"])
    if masks.shape[0] == 0:
        raise ValueError(f"scene {scene.get('name', '?')}: no frame to super-resolve")
    clear_fraction = masks.mean(axis=(1, 2))  # [K], same value as sum / (H*W)
    threshold = CLEAR_START
    # repeated subtraction as in the original (0.9, 0.85, 0.8000000000000002, ...); below 0 every frame passes
    while np.count_nonzero(clear_fraction > threshold) < frames_needed and threshold >= 0:
        threshold -= CLEAR_STEP
    keep = np.flatnonzero(clear_fraction > threshold)
    if keep.size < frames_needed:
        keep = np.resize(keep, frames_needed)  # [frames_needed]: 0..K-1, 0, 1, ...
    return _take_frames(scene, keep)


def _take_frames(scene: Mapping[str, Any], index: np.ndarray) -> dict[str, Any]:
    """The scene with every per-frame array indexed by `index` `[n]` (the others unchanged)."""
    return {**scene, **{key: np.asarray(scene[key])[index] for key in PER_FRAME if key in scene}}


def scene_frames(scene: Mapping[str, Any], config: config_module.DeepSUMConfig,
                 n_slide: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The selected frames of a scene, once each, and which of them make every sliding window.

    Returns normalised frames `(v - mu) / sigma` and their registered clear masks, both float32
    `[K, H, W, 1]` (K frames after the selection, clearest first), and the int32 frame index of
    the windows `[windows, T_in]`, windows = min(n_slide, K - T_in) + 1: window n holds frames
    n..n+T_in-1. As in the original the window's first frame is the network's reference, while
    the masks are registered by their own shifts to the scene's reference (the clearest frame,
    window 0's first).
    """
    frames_per_window = config.T_in
    chosen = select_clear_frames(sort_frames_by_clearance(scene), frames_per_window)
    frames = chosen["frames"].shape[0]
    windows = min(max(int(n_slide), 0), frames - frames_per_window) + 1
    index = np.arange(windows)[:, None] + np.arange(frames_per_window)[None, :]  # [windows, T_in]
    registered = np.asarray(preprocessing.translate_masks(chosen["masks"], chosen["shifts"]), dtype=bool)  # [K,H,W]
    x = (np.asarray(chosen["frames"], np.float32) - config.mu) / config.sigma  # [K, H, W]
    return x[..., None].astype(np.float32), registered[..., None].astype(np.float32), index.astype(np.int32)


def window_inputs(scene: Mapping[str, Any], config: config_module.DeepSUMConfig, n_slide: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs of the sliding windows of a scene (`scene_frames` gathered per window).

    Returns normalised frames `(v - mu) / sigma` and their registered clear masks, both float32
    `[windows, T_in, H, W, 1]`.
    """
    x, masks, index = scene_frames(scene, config, n_slide)
    return x[index], masks[index]  # [windows, T_in, H, W, 1] each


# --------------------------------------------------------------------------------------------
# the network on whole scenes

_NETWORK_CALLS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def network_call(model: Any, config: config_module.DeepSUMConfig) -> Any:
    """`model(x, masks)["sr"]` as a `tf.function` with an input signature (one trace for any
    batch and image size), cached per model. x, masks: `[b, T_in, H, W, 1]` float32."""
    call = _NETWORK_CALLS.get(model)
    if call is None:
        spec = tf.TensorSpec([None, config.T_in, None, None, 1], tf.float32)

        @tf.function(input_signature=[spec, spec], jit_compile=config.jit_compile or None)
        def call(x: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
            return model(x, masks, training=False)["sr"]  # [b, 1, H, W, 1]

        _NETWORK_CALLS[model] = call
    return call


class SceneCalls:
    """The network on one scene with each frame's SISRNet features computed once.

    `features(x)`: x `[K, H, W, 1]` (the scene's selected frames) -> features `[K, H, W, F]`
    (in the model's `compute_dtype`);
    `windows(features, x, masks, index)`: index `[w, T_in]` int32 picks the frames of w windows
    -> sr `[w, 1, H, W, 1]`. Both are `tf.function`s with input signatures (one trace for any
    scene size and window count), compiled with XLA when `config.jit_compile`.
    """

    def __init__(self, model: Any, config: config_module.DeepSUMConfig):
        frames = tf.TensorSpec([None, None, None, 1], tf.float32)
        features = tf.TensorSpec([None, None, None, None], getattr(model, "compute_dtype", tf.float32))
        index = tf.TensorSpec([None, config.T_in], tf.int32)
        jit = config.jit_compile or None

        @tf.function(input_signature=[frames], jit_compile=jit)
        def scene_features(x: tf.Tensor) -> tf.Tensor:
            return model.sisrnet_features(x[None])[0]  # [1, K, H, W, F] -> [K, H, W, F]

        @tf.function(input_signature=[features, frames, frames, index], jit_compile=jit)
        def windows(features: tf.Tensor, x: tf.Tensor, masks: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
            # gather the windows' frames: [K, ...] -> [w, T_in, ...]
            picked = [tf.gather(values, index) for values in (features, x, masks)]
            return model.forward_from_features(*picked)["sr"]  # [w, 1, H, W, 1]

        self.features, self.windows = scene_features, windows


_SCENE_CALLS: "weakref.WeakKeyDictionary[Any, SceneCalls]" = weakref.WeakKeyDictionary()


def scene_calls(model: Any, config: config_module.DeepSUMConfig) -> SceneCalls:
    """The `SceneCalls` of a model (with `sisrnet_features` and `forward_from_features`), cached."""
    calls = _SCENE_CALLS.get(model)
    if calls is None:
        calls = _SCENE_CALLS[model] = SceneCalls(model, config)
    return calls


def window_images(model: Any, scene: Mapping[str, Any], config: config_module.DeepSUMConfig,
                  n_slide: int = 0, windows_per_call: int = 3) -> np.ndarray:
    """The network's output for every sliding window of a scene, de-normalised to DN.

    Returns float32 `[windows, H, W]`. SISRNet runs once on the scene's selected frames
    (`scene_calls`; windows share T_in - 1 frames with their neighbour), the rest of the network
    `windows_per_call` windows at a time; memory grows linearly with it. A model without
    `sisrnet_features` (any `model(x, masks)["sr"]`) runs whole windows (`network_call`).
    """
    x, masks, index = scene_frames(scene, config, n_slide)
    if hasattr(model, "sisrnet_features") and hasattr(model, "forward_from_features"):
        calls = scene_calls(model, config)
        x, masks = tf.constant(x), tf.constant(masks)
        features = calls.features(x)  # [K, H, W, F]
        run = lambda rows: calls.windows(features, x, masks, tf.constant(rows))  # noqa: E731
    else:
        call = network_call(model, config)
        run = lambda rows: call(tf.constant(x[rows]), tf.constant(masks[rows]))  # noqa: E731
    outputs = [run(index[start:start + windows_per_call]).numpy()[:, 0, :, :, 0]  # [b, 1, H, W, 1] -> [b, H, W]
               for start in range(0, index.shape[0], windows_per_call)]
    images = np.concatenate(outputs) * config.sigma_rescaled + config.mu  # [windows, H, W] DN
    if not np.all(np.isfinite(images)):
        raise ValueError(f"scene {scene.get('name', '?')}: the network produced NaN or infinite values")
    return images.astype(np.float32)


def fuse_windows(images: np.ndarray, max_shift: int = MAX_SR_SHIFT) -> tuple[np.ndarray, np.ndarray]:
    """Register every window's SR image to the first (integer phase cross-correlation) and average.

    images: `[windows, H, W]`. Images shifted by more than `max_shift` pixels in either axis are
    dropped. Returns (float32 `[H, W]` mean, bool `[windows]` kept).
    """
    reference = images[0]
    registered, kept = [reference], [True]
    for image in images[1:]:
        # normalization=None: plain cross-correlation, as skimage's register_translation that
        # the original called (phase_cross_correlation now defaults to phase normalisation)
        shift, _, _ = phase_cross_correlation(reference, image, upsample_factor=1, normalization=None)
        shift = np.rint(shift).astype(int)
        kept.append(bool(np.all(np.abs(shift) <= max_shift)))
        if kept[-1]:
            # an integer Fourier shift (the original's scipy fourier_shift) is a circular roll
            registered.append(np.roll(image, tuple(shift), axis=(0, 1)))
    return np.mean(registered, axis=0, dtype=np.float64).astype(np.float32), np.array(kept)


def superresolve_scene(model: Any, scene: Mapping[str, Any], config: config_module.DeepSUMConfig,
                       n_slide: int = 0, windows_per_call: int = 3) -> np.ndarray:
    """Super-resolve one scene with the sliding window: float32 `[H, W]` DN (H, W of its frames)."""
    image, _ = fuse_windows(window_images(model, scene, config, n_slide, windows_per_call))
    return image


def superresolve_split(model: Any, scenes: Any, config: config_module.DeepSUMConfig, n_slide: int = 0,
                       progress: bool = True) -> dict[str, np.ndarray]:
    """Super-resolve every scene of `scenes` (a `load_scenes` dict or scene dicts): name -> `[H, W]`."""
    return {scene["name"]: superresolve_scene(model, scene, config, n_slide)
            for scene in tqdm(iterate_scenes(scenes), total=_scene_count(scenes), desc="super-resolving",
                              disable=not progress)}


def superresolve_folder(model: Any, data_dir: str | Path, split: str, bands: Iterable[str],
                        config: config_module.DeepSUMConfig, n_slide: int = 0, windows_per_call: int = 3,
                        progress: bool = True) -> dict[str, np.ndarray]:
    """Super-resolve the scenes of a PROBA-V folder (`data_dir/split/band/imgset*`), doing the
    test-time preprocessing (`dataset.prepare_test_scene`) per scene: name -> `[H, W]` DN."""
    from libraries import dataset, probav

    images = {}
    for band in bands:
        for folder in tqdm(probav.list_scenes(data_dir, split, band), desc=f"super-resolving {split}/{band}",
                           unit="scene", disable=not progress):
            scene = dataset.prepare_test_scene(probav.read_scene(folder, band=band, split=split))
            images[folder.name] = superresolve_scene(model, scene, config, n_slide, windows_per_call)
    return images


def bicubic_baseline(scene: Mapping[str, Any]) -> np.ndarray:
    """The organisers' baseline: the mean of the frames with the most clear pixels, upsampled
    bicubically. The frames are already bicubic-upsampled, and bicubic upsampling is linear, so
    this is the mean of those upsampled frames. Returns float32 `[H, W]`."""
    clear_pixels = np.asarray(scene["masks"]).sum(axis=(1, 2))  # [K]
    clearest = clear_pixels == clear_pixels.max()
    return np.asarray(scene["frames"], np.float64)[clearest].mean(axis=0).astype(np.float32)


def load_model(config: config_module.DeepSUMConfig, checkpoint: str | Path | None = None) -> Any:
    """A DeepSUM model with its variables created; weights from `checkpoint` (ours or the authors'
    TF1) when given, freshly initialised (seeded by `config.seed`) otherwise. With
    `config.frame_by_frame` it runs one frame at a time (same outputs, less memory, slower)."""
    from libraries import model as model_module

    model = model_module.DeepSUM(config, frame_by_frame=config.frame_by_frame)  # variables created (seeded) here
    if checkpoint is not None:
        from libraries import checkpoints

        checkpoints.restore_weights(model, checkpoint)
    return model


# --------------------------------------------------------------------------------------------
# validation: sliding window versus bicubic


def evaluate_sliding_window(model: Any, dataset: Mapping[str, np.ndarray], config: config_module.DeepSUMConfig,
                            n_slides: Iterable[int] = (0, 1, 2), progress: bool = True) -> list[dict[str, Any]]:
    """Mean cPSNR and mean Kelvins score of the sliding window for each n_slide, and of bicubic.

    dataset: `load_scenes(..., "validation")` (with hr, hr_clear, baseline). The windows of the
    largest n_slide are computed once; a smaller n_slide fuses the first n_slide + 1 of them,
    which is exactly what `superresolve_scene` with that n_slide computes.
    Returns rows {"method", "n_slide", "cpsnr", "score", "scenes"} (bicubic first).
    """
    from libraries import metrics

    n_slides = sorted(set(int(n) for n in n_slides))
    if not n_slides or n_slides[0] < 0:
        raise ValueError(f"n_slides: expected one or more integers >= 0, got {n_slides}")
    results: dict[Any, list[tuple[float, float]]] = {"bicubic": [], **{n: [] for n in n_slides}}
    for scene in tqdm(iterate_scenes(dataset), total=_scene_count(dataset), desc="sliding window", disable=not progress):
        hr, clear, baseline = scene["hr"], scene["hr_clear"], float(scene["baseline"])
        candidates = {"bicubic": bicubic_baseline(scene)}
        images = window_images(model, scene, config, max(n_slides))
        candidates.update({n: fuse_windows(images[:n + 1])[0] for n in n_slides})
        for key, image in candidates.items():
            results[key].append((metrics.kelvins_cpsnr(image, hr, clear), metrics.kelvins_score(image, hr, clear, baseline)))
    rows = []
    for key, values in results.items():
        cpsnr, score = np.mean(np.array(values, dtype=np.float64), axis=0)
        rows.append({"method": "bicubic" if key == "bicubic" else "DeepSUM", "n_slide": None if key == "bicubic" else key,
                     "cpsnr": float(cpsnr), "score": float(score), "scenes": len(values)})
    return rows


def format_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows of `evaluate_sliding_window` as a text table."""
    lines = [f"{'method':<10} {'n_slide':>7} {'cPSNR (dB)':>10} {'score':>8} {'scenes':>6}"]
    for row in rows:
        n_slide = "-" if row["n_slide"] is None else str(row["n_slide"])
        lines.append(f"{row['method']:<10} {n_slide:>7} {row['cpsnr']:>10.3f} {row['score']:>8.4f} {row['scenes']:>6}")
    return "\n".join(lines)


def plot_sliding_window(rows: Iterable[Mapping[str, Any]]) -> Any:
    """Score and cPSNR against n_slide, the bicubic baseline as a dashed line. Returns the figure."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    model_rows = [row for row in rows if row["n_slide"] is not None]
    bicubic = [row for row in rows if row["n_slide"] is None]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, key, label in zip(axes, ("score", "cpsnr"), ("mean score (lower is better)", "mean cPSNR (dB)")):
        axis.plot([row["n_slide"] for row in model_rows], [row[key] for row in model_rows], "o-", label="DeepSUM")
        for row in bicubic:
            axis.axhline(row[key], linestyle="--", color="gray", label="bicubic")
        axis.set_xlabel("n_slide")
        axis.set_ylabel(label)
        axis.set_xticks([row["n_slide"] for row in model_rows])
        axis.legend()
    figure.tight_layout()
    return figure


def plot_scene(data_dir: str | Path, split: str, name: str, sr: np.ndarray) -> Any:
    """The clearest LR frame `[h, w]` of scene `name` (either band) of `data_dir/split`, its bicubic
    baseline and the SR image `[H, W]` side by side on one grey scale (2nd-98th percentile of SR).
    Returns the figure."""
    import matplotlib.pyplot as plt
    from libraries import dataset, probav

    folders = [Path(data_dir) / split / band / name for band in BANDS if (Path(data_dir) / split / band / name).is_dir()]
    if not folders:
        raise probav.ProbaVError(f"{Path(data_dir) / split}: no scene folder {name} under {' or '.join(BANDS)}")
    scene = probav.read_scene(folders[0])
    lr = scene.lr[np.argmax(scene.clear.sum(axis=(1, 2)))]
    bicubic = bicubic_baseline(dataset.prepare_test_scene(scene))
    low, high = np.percentile(sr, [2, 98])
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    for axis, image, label in zip(axes, (lr, bicubic, sr), ("clearest LR frame", "bicubic baseline", "DeepSUM")):
        axis.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axis.set_title(f"{label} {image.shape[0]}x{image.shape[1]}")
        axis.set_axis_off()
    figure.suptitle(f"{scene.name} ({scene.band})")
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------------------------
# the Kelvins submission


def image_to_png(name: str, image: np.ndarray) -> bytes:
    """A 2-D DN image as 16-bit PNG bytes (rounded, clipped to 0..65535); NaN is an error."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise SubmissionError(f"{name}: expected a 2-D image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise SubmissionError(f"{name}: the image holds NaN or infinite values")
    pixels = np.clip(np.rint(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return iio.imwrite("<bytes>", pixels, extension=".png", plugin="pillow")


def write_submission(images: Mapping[str, np.ndarray], zip_path: str | Path) -> Path:
    """Write one 16-bit PNG `imgsetNNNN.png` per scene into a zip, atomically (no zip on error)."""
    zip_path = Path(zip_path)
    if not images:
        raise SubmissionError(f"{zip_path}: no image to write")
    with fileio.atomic_path(zip_path, suffix=".zip") as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:  # PNG is compressed
            for name in sorted(images):
                if not SCENE_NAME.fullmatch(name):
                    raise SubmissionError(f"{name}: expected a scene name like imgset0123")
                archive.writestr(f"{name}.png", image_to_png(name, images[name]))
    return zip_path


def expected_scenes(split_dir: str | Path, bands: Iterable[str] | None = None, scale: int = 3) -> dict[str, tuple[int, int]]:
    """Scene name -> expected SR shape (HR.png's, else `scale` x the first LR frame's) of the
    scenes under `split_dir/{band}/` for `bands` (default: the bands present)."""
    split_dir = Path(split_dir)
    bands = [band for band in BANDS if (split_dir / band).is_dir()] if bands is None else list(bands)
    expected = {}
    for band in bands:
        if not (split_dir / band).is_dir():
            raise SubmissionError(f"{split_dir / band}: no such folder (expected PROBA-V scenes of band {band})")
        for folder in sorted(path for path in (split_dir / band).glob("imgset*") if path.is_dir()):
            hr = folder / "HR.png"
            if hr.is_file():
                expected[folder.name] = tuple(iio.improps(hr, plugin="pillow").shape[:2])
            else:
                lr = sorted(folder.glob("LR*.png"))
                if not lr:
                    raise SubmissionError(f"{folder}: no LR*.png frame")
                height, width = iio.improps(lr[0], plugin="pillow").shape[:2]
                expected[folder.name] = (scale * height, scale * width)
    if not expected:
        raise SubmissionError(f"{split_dir}: no scene folder imgsetNNNN under bands {bands}")
    return expected


def validate_submission(zip_path: str | Path, split_dir: str | Path, bands: Iterable[str] | None = None,
                        scale: int = 3) -> list[str]:
    """Check a submission zip against the scenes of `split_dir` (e.g. probav_data/test).

    Every scene of `bands` (default: the bands present in split_dir) must be there exactly once
    as a 16-bit PNG `imgsetNNNN.png` of its HR size, and nothing else. Raises one SubmissionError
    listing every problem by scene; returns the sorted scene names.
    """
    zip_path = Path(zip_path)
    expected = expected_scenes(split_dir, bands, scale)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as error:
        raise SubmissionError(f"{zip_path}: not a readable zip file ({error})") from None
    problems = []
    with archive:
        entries = Counter(archive.namelist())
        for entry, count in sorted(entries.items()):
            scene = entry[:-4]
            if not PNG_NAME.fullmatch(entry) or scene not in expected:
                problems.append(f"{entry}: unexpected file (not a scene of {split_dir})")
                continue
            if count > 1:
                problems.append(f"{scene}: {count} copies of {entry} (duplicate)")
            try:
                properties = iio.improps(archive.read(entry), extension=".png", plugin="pillow")
            except Exception as error:  # imageio raises several types for a corrupt PNG
                problems.append(f"{scene}: {entry} is not a readable PNG ({error})")
                continue
            if properties.dtype != np.uint16:
                problems.append(f"{scene}: wrong dtype {properties.dtype}, expected uint16 (16-bit PNG)")
            if tuple(properties.shape) != expected[scene]:
                problems.append(f"{scene}: wrong size {'x'.join(map(str, properties.shape))}, "
                                f"expected {expected[scene][0]}x{expected[scene][1]} (single channel)")
        problems += [f"{scene}: missing ({scene}.png not in the zip)" for scene in sorted(expected)
                     if f"{scene}.png" not in entries]
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise SubmissionError(f"{zip_path}: {len(problems)} problem(s):\n  {shown}")
    return sorted(expected)


def read_submission(zip_path: str | Path) -> dict[str, np.ndarray]:
    """The images of a submission zip: scene name -> uint16 `[H, W]`."""
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            return {Path(entry).stem: iio.imread(archive.read(entry), extension=".png", plugin="pillow")
                    for entry in archive.namelist() if PNG_NAME.fullmatch(entry)}
    except (OSError, zipfile.BadZipFile) as error:
        raise SubmissionError(f"{zip_path}: not a readable zip file ({error})") from None


def score_submission(zip_path: str | Path, data_dir: str | Path, band: str = "all",
                     csv_path: str | Path | None = None) -> tuple[float, list[dict[str, Any]]]:
    """Kelvins score of the scenes of a zip that have an HR image under `data_dir/train/{band}`.

    Uses `metrics.kelvins_score` with the baselines of `data_dir/norm.csv`. Writes one row per
    scene (scene, band, cpsnr, baseline, score) to `csv_path` (default `<zip>_scores.csv`).
    Returns (mean score, rows).
    """
    from libraries import metrics, probav

    zip_path, data_dir = Path(zip_path), Path(data_dir)
    images = read_submission(zip_path)
    norm = probav.read_norm(data_dir / "norm.csv")
    rows = []
    for scene_band in BANDS if band == "all" else (band,):
        for name in sorted(images):
            folder = data_dir / "train" / scene_band / name
            if not (folder / "HR.png").is_file():
                continue
            hr, clear = probav.read_image_png(folder / "HR.png"), probav.read_mask_png(folder / "SM.png")
            if images[name].shape != hr.shape:
                raise SubmissionError(f"{name}: wrong size {images[name].shape}, expected {hr.shape} (its HR.png)")
            if name not in norm:
                raise SubmissionError(f"{name}: no baseline in {data_dir / 'norm.csv'}")
            sr = images[name]
            rows.append({"scene": name, "band": scene_band, "cpsnr": metrics.kelvins_cpsnr(sr, hr, clear),
                         "baseline": norm[name], "score": metrics.kelvins_score(sr, hr, clear, norm[name])})
    if not rows:
        raise SubmissionError(f"{zip_path}: no scene of the zip has an HR image under {data_dir / 'train'} ({band})")
    csv_path = Path(csv_path) if csv_path is not None else zip_path.with_name(f"{zip_path.stem}_scores.csv")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    fileio.save_bytes(csv_path, text.getvalue().encode())
    return float(np.mean([row["score"] for row in rows])), rows


# --------------------------------------------------------------------------------------------
# command line


def add_superresolve_arguments(parser: argparse.ArgumentParser) -> None:
    per_band = "; give it once for every band, or once per band as BAND=PATH (e.g. NIR=... RED=...)"
    parser.add_argument("--config", required=True, action="append",
                        help="DeepSUM JSON config (config_files/DeepSUM_config_NIR.json)" + per_band)
    parser.add_argument("--checkpoint", required=True, action="append",
                        help="our checkpoint or an authors' TF1 checkpoint (folder or prefix)" + per_band)
    parser.add_argument("--data", required=True, help="PROBA-V folder (as downloaded, or written by `synth`)")
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--band", choices=(*BANDS, "all"), default="all", help="'all': both bands in one zip")
    parser.add_argument("--out", required=True, help="submission zip to write")
    parser.add_argument("--n-slide", type=int, default=None, help="sliding-window passes (default: the config's n_slide)")
    parser.add_argument("--windows-per-call", type=int, default=3, help="windows per network call (memory)")


def paths_per_band(values: list[str], bands: Iterable[str], option: str) -> dict[str, str]:
    """`--option PATH` (every band) or `--option NIR=PATH --option RED=PATH` -> {band: path}."""
    if len(values) == 1 and values[0].partition("=")[0] not in BANDS:
        return {band: values[0] for band in bands}
    paths = {}
    for value in values:
        band, separator, path = value.partition("=")
        if not separator or band not in BANDS or not path:
            raise ValueError(f"{option} {value!r}: expected one PATH for every band, or BAND=PATH with BAND in {BANDS}")
        paths[band] = path
    missing = [band for band in bands if band not in paths]
    if missing:
        raise ValueError(f"{option}: no path for band {', '.join(missing)} (give {missing[0]}=PATH)")
    return paths


def _superresolve(args: argparse.Namespace) -> None:
    bands = BANDS if args.band == "all" else (args.band,)
    config_paths = paths_per_band(args.config, bands, "--config")
    checkpoint_paths = paths_per_band(args.checkpoint, bands, "--checkpoint")
    images = {}
    for band in bands:  # the authors trained one model per band (RED fine-tuned from NIR)
        config = config_module.load_config(config_paths[band])
        n_slide = config.n_slide if args.n_slide is None else args.n_slide
        model = load_model(config, checkpoint_paths[band])
        images.update(superresolve_folder(model, args.data, args.split, [band], config, n_slide, args.windows_per_call))
        print(f"{band}: {checkpoint_paths[band]}, n_slide {n_slide}", file=sys.stderr)
    write_submission(images, args.out)
    validate_submission(args.out, Path(args.data) / args.split, bands)
    print(f"wrote {args.out}: {len(images)} scenes ({', '.join(bands)}), validated")


def run_superresolve(args: argparse.Namespace) -> int:
    return _report_errors(_superresolve, args)


def _report_errors(command: Any, args: argparse.Namespace) -> int:
    """Run a command; a bad input (every error of this project is a ValueError) is one line, exit 1."""
    try:
        command(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="PROBA-V folder with train/{band}/*/HR.png and norm.csv")
    parser.add_argument("--band", choices=(*BANDS, "all"), default="all")
    parser.add_argument("--submission", required=True, help="zip written by `superresolve --split train`")
    parser.add_argument("--csv", default=None, help="per-scene CSV to write (default: <zip>_scores.csv)")


def _score(args: argparse.Namespace) -> None:
    mean_score, rows = score_submission(args.submission, args.data, args.band, args.csv)
    print(f"scored {len(rows)} scenes; mean cPSNR {np.mean([row['cpsnr'] for row in rows]):.3f} dB", file=sys.stderr)
    print(f"{mean_score:.6f}")


def run_score(args: argparse.Namespace) -> int:
    return _report_errors(_score, args)
