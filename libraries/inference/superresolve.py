"""Whole-scene super-resolution with the sliding window, and its evaluation against bicubic.

`Superresolver(model, config)` owns the compiled calls of one model under one config (so a
second config, e.g. with `jit_compile`, gets its own traces): SISRNet's features of each frame
are computed once per scene, the rest of the network per window. The window outputs are
registered to the first with phase cross-correlation, those shifted by more than 4 pixels
dropped, and the rest averaged (the authors' sliding window). Image sizes come from the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf
from skimage.registration import phase_cross_correlation
from tqdm.auto import tqdm

from libraries import checkpoints, domain, metrics, probav, reports
from libraries import config as config_module
from libraries.dataset.scenes import prepare_test_scene
from libraries.inference.frames import bicubic_baseline, iterate_scenes, scene_count, scene_frames
from libraries.model import DeepSUM

MAX_SR_SHIFT = 4  # window outputs shifted further than this from the first are dropped


def load_model(config: config_module.DeepSUMConfig, checkpoint: str | Path | None = None) -> Any:
    """A DeepSUM model with its variables created; weights from `checkpoint` (ours or the authors'
    TF1) when given, freshly initialised (seeded by `config.seed`) otherwise. With
    `config.frame_by_frame` it runs one frame at a time (same outputs, less memory, slower)."""
    model = DeepSUM(config, frame_by_frame=config.frame_by_frame)  # variables created (seeded) here
    if checkpoint is not None:
        checkpoints.restore_weights(model, checkpoint)
    return model


class Superresolver:
    """The network of `model` on whole scenes, its `tf.function`s built once for (model, config).

    `network_call(x, masks)`: `model(x, masks)["sr"]`, x and masks `[b, T_in, H, W, 1]` float32.
    `features(x)`: x `[K, H, W, 1]` (a scene's selected frames) -> SISRNet features `[K, H, W, F]`
    (in the model's `compute_dtype`); `windows(features, x, masks, index)`: index `[w, T_in]`
    int32 picks the frames of w windows -> sr `[w, 1, H, W, 1]`. Each has an input signature
    (one trace for any scene size and window count) and is compiled with XLA when
    `config.jit_compile`. A model without `sisrnet_features` (any `model(x, masks)["sr"]`)
    runs whole windows.
    """

    def __init__(self, model: Any, config: config_module.DeepSUMConfig):
        self.model, self.config = model, config
        jit = config.jit_compile or None
        window = tf.TensorSpec([None, config.T_in, None, None, 1], tf.float32)
        frames = tf.TensorSpec([None, None, None, 1], tf.float32)
        features = tf.TensorSpec([None, None, None, None], getattr(model, "compute_dtype", tf.float32))
        index = tf.TensorSpec([None, config.T_in], tf.int32)

        @tf.function(input_signature=[window, window], jit_compile=jit)
        def network_call(x: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
            return model(x, masks, training=False)["sr"]  # [b, 1, H, W, 1]

        self.network_call = network_call
        self.reuses_features = hasattr(model, "sisrnet_features") and hasattr(model, "forward_from_features")
        if self.reuses_features:
            @tf.function(input_signature=[frames], jit_compile=jit)
            def scene_features(x: tf.Tensor) -> tf.Tensor:
                return model.sisrnet_features(x[None])[0]  # [1, K, H, W, F] -> [K, H, W, F]

            @tf.function(input_signature=[features, frames, frames, index], jit_compile=jit)
            def windows(features: tf.Tensor, x: tf.Tensor, masks: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
                # gather the windows' frames: [K, ...] -> [w, T_in, ...]
                picked = [tf.gather(values, index) for values in (features, x, masks)]
                return model.forward_from_features(*picked)["sr"]  # [w, 1, H, W, 1]

            self.features, self.windows = scene_features, windows

    def window_images(self, scene: Mapping[str, Any], n_slide: int = 0, windows_per_call: int = 3) -> np.ndarray:
        """The network's output for every sliding window of a scene, de-normalised to DN.

        Returns float32 `[windows, H, W]`. SISRNet runs once on the scene's selected frames
        (windows share T_in - 1 frames with their neighbour), the rest of the network
        `windows_per_call` windows at a time; memory grows linearly with it.
        """
        config = self.config
        x, masks, index = scene_frames(scene, config, n_slide)
        if self.reuses_features:
            x, masks = tf.constant(x), tf.constant(masks)
            features = self.features(x)  # [K, H, W, F]
            run = lambda rows: self.windows(features, x, masks, tf.constant(rows))  # noqa: E731
        else:
            run = lambda rows: self.network_call(tf.constant(x[rows]), tf.constant(masks[rows]))  # noqa: E731
        outputs = [run(index[start:start + windows_per_call]).numpy()[:, 0, :, :, 0]  # [b, 1, H, W, 1] -> [b, H, W]
                   for start in range(0, index.shape[0], windows_per_call)]
        images = domain.denormalise(np.concatenate(outputs), config.mu, config.sigma_rescaled)  # [windows, H, W] DN
        if not np.all(np.isfinite(images)):
            raise ValueError(f"scene {scene.get('name', '?')}: the network produced NaN or infinite values")
        return images

    def scene(self, scene: Mapping[str, Any], n_slide: int = 0, windows_per_call: int = 3) -> np.ndarray:
        """Super-resolve one scene with the sliding window: float32 `[H, W]` DN (H, W of its frames)."""
        image, _ = fuse_windows(self.window_images(scene, n_slide, windows_per_call))
        return image

    def folder(self, data_dir: str | Path, split: str, bands: Iterable[str], n_slide: int = 0,
               windows_per_call: int = 3, progress: bool = True) -> dict[str, np.ndarray]:
        """Super-resolve the scenes of a PROBA-V folder (`data_dir/split/band/imgset*`), doing the
        test-time preprocessing (`dataset.prepare_test_scene`) per scene: name -> `[H, W]` DN."""
        images = {}
        for band in bands:
            for folder in tqdm(probav.list_scenes(data_dir, split, band), desc=f"super-resolving {split}/{band}",
                               unit="scene", disable=not progress):
                scene = prepare_test_scene(probav.read_scene(folder, band=band, split=split))
                images[folder.name] = self.scene(scene, n_slide, windows_per_call)
        return images


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


def evaluate_sliding_window(superresolver: Superresolver, dataset: Mapping[str, np.ndarray],
                            n_slides: Iterable[int] = (0, 1, 2), progress: bool = True) -> list[dict[str, Any]]:
    """Mean cPSNR and mean Kelvins score of the sliding window for each n_slide, and of bicubic.

    dataset: `load_scenes(..., "validation")` (with hr, hr_clear, baseline). The windows of the
    largest n_slide are computed once; a smaller n_slide fuses the first n_slide + 1 of them,
    which is exactly what `Superresolver.scene` with that n_slide computes.
    Returns rows {"method", "n_slide", "cpsnr", "score", "scenes"} (bicubic first).
    """
    n_slides = sorted(set(int(n) for n in n_slides))
    if not n_slides or n_slides[0] < 0:
        raise ValueError(f"n_slides: expected one or more integers >= 0, got {n_slides}")
    results: dict[Any, list[tuple[float, float]]] = {"bicubic": [], **{n: [] for n in n_slides}}
    for scene in tqdm(iterate_scenes(dataset), total=scene_count(dataset), desc="sliding window", disable=not progress):
        hr, clear, baseline = scene["hr"], scene["hr_clear"], float(scene["baseline"])
        candidates = {"bicubic": bicubic_baseline(scene)}
        images = superresolver.window_images(scene, max(n_slides))
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
    return reports.format_table(("method", "n_slide", "cPSNR (dB)", "score", "scenes"),
                                [(row["method"], row["n_slide"], row["cpsnr"], row["score"], row["scenes"])
                                 for row in rows], digits=(0, 0, 3, 4, 0))


def plot_sliding_window(rows: Iterable[Mapping[str, Any]]) -> Any:
    """Score and cPSNR against n_slide, the bicubic baseline as a dashed line. Returns the figure."""
    import matplotlib.pyplot as plt  # loaded only for figures: the commands stay light

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
    import matplotlib.pyplot as plt  # loaded only for figures: the commands stay light

    folders = [Path(data_dir) / split / band / name for band in domain.BANDS if (Path(data_dir) / split / band / name).is_dir()]
    if not folders:
        raise probav.ProbaVError(f"{Path(data_dir) / split}: no scene folder {name} under {' or '.join(domain.BANDS)}")
    scene = probav.read_scene(folders[0])
    lr = scene.lr[np.argmax(scene.clear.sum(axis=(1, 2)))]
    bicubic = bicubic_baseline(prepare_test_scene(scene))
    low, high = np.percentile(sr, [2, 98])
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    for axis, image, label in zip(axes, (lr, bicubic, sr), ("clearest LR frame", "bicubic baseline", "DeepSUM")):
        axis.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axis.set_title(f"{label} {image.shape[0]}x{image.shape[1]}")
        axis.set_axis_off()
    figure.suptitle(f"{scene.name} ({scene.band})")
    figure.tight_layout()
    return figure
