"""Whole-scene super-resolution with the sliding window, and its evaluation against bicubic.

`Superresolver(model, config)` owns the compiled calls of one model under one config (so a
second config, e.g. with `jit_compile`, gets its own traces): SISRNet's features of each frame
are computed once per scene, the rest of the network per window. The window outputs are
registered to the first with phase cross-correlation, those shifted by more than 4 pixels
dropped, and the rest averaged (the authors' sliding window). Image sizes come from the data.

With the self-ensemble (`self_ensemble`, see `ensemble`) a scene is super-resolved under each
of the 8 flips and rotations, the sliding window fused per transform, and the 8 fused images,
transformed back, averaged. Fusing per transform keeps each fusion the authors' one (its
windows registered to its own first window, in one orientation) and gives every transform the
same weight; the 8 fused images need no registration among them, since each transform's
reference is the same frame, so fusing all 8 x windows images at once would only add
cross-correlations and a chance to drop a transform's image for a spurious shift.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf
from skimage.registration import phase_cross_correlation
from tqdm.auto import tqdm

from libraries import checkpoints, domain, metrics, probav, reports
from libraries import config as config_module
from libraries.dataset.scenes import prepare_test_scene
from libraries.inference import ensemble
from libraries.inference.frames import bicubic_baseline, check_scene, iterate_scenes, scene_count, scene_frames
from libraries.inference.parts import SceneParts, scene_settings
from libraries.model import DeepSUM, fusion, hardware, strips

LOG = logging.getLogger(__name__)
MAX_SR_SHIFT = 4  # window outputs shifted further than this from the first are dropped
WINDOWS_PER_CALL = 3  # windows per network call of a model that runs whole frames (GPUs)


def resolve_frame_by_frame(setting: bool | str) -> bool:
    """`config.frame_by_frame` as a decision: true and false as they are; "auto": frame by frame
    on CPUs, whole scenes on GPUs.

    Frame by frame always needs less memory (0.23-0.25 of the naive pass's peak for a 1x9x384x384
    scene, against 0.41-0.47). Its cost in time, against the whole-scene pass: 1.04-1.15x on an
    Intel Xeon with AVX-512 and AMX, 1.14-1.15x on an AMD EPYC Zen 4 with AVX-512, 1.11-1.20x on an AMD
    EPYC Zen 3 with AVX2 with each image's convolutions in two strips (`frame_strips: auto` chose
    them there; 1.64x in whole images, for which oneDNN's AVX2 build picks a slower convolution;
    `libraries.model.strips`; `bench/forward.py`). GPUs, not measured, keep the whole-scene pass.
    """
    if setting != config_module.AUTO:
        return bool(setting)
    return not hardware.has_gpu()


def load_model(config: config_module.DeepSUMConfig, checkpoint: str | Path | None = None) -> Any:
    """A DeepSUM model with its variables created; weights from `checkpoint` (ours or the authors'
    TF1) when given, freshly initialised (seeded by `config.seed`) otherwise. It runs one frame at
    a time as `config.frame_by_frame` says (`resolve_frame_by_frame`; same outputs), its layers'
    element-wise work fused by XLA as `config.xla_elementwise` says (`fusion.resolve`) and, frame
    by frame, each image's convolutions in strips as `config.frame_strips` says (`strips.resolve`)."""
    frame_by_frame = resolve_frame_by_frame(config.frame_by_frame)
    model = DeepSUM(config, frame_by_frame=frame_by_frame, fused=fusion.resolve(config.xla_elementwise, config.precision),
                    strips=strips.resolve(config.frame_strips) if frame_by_frame else 1)  # variables created here
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

        @tf.function(input_signature=[window, window], jit_compile=jit, autograph=False)
        def network_call(x: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
            return model(x, masks, training=False)["sr"]  # [b, 1, H, W, 1]

        self.network_call = network_call
        self.reuses_features = hasattr(model, "sisrnet_features") and hasattr(model, "forward_from_features")
        if self.reuses_features:
            @tf.function(input_signature=[frames], jit_compile=jit, autograph=False)
            def scene_features(x: tf.Tensor) -> tf.Tensor:
                return model.sisrnet_features(x[None])[0]  # [1, K, H, W, F] -> [K, H, W, F]

            @tf.function(input_signature=[features, frames, frames, index], jit_compile=jit, autograph=False)
            def windows(features: tf.Tensor, x: tf.Tensor, masks: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
                # the windows' frames: [K, ...] -> [w, T_in, ...]; one window's frames are consecutive,
                # a slice of the first axis, which shares the features' buffer (a gather copies them:
                # 340 MB for a 384x384 window). Compiled by XLA, which places its buffers itself and
                # cannot compile a branch whose shape differs from the other's, a gather.
                one_window = tf.equal(tf.shape(index)[0], 1)
                first = index[0, 0]

                def pick(values: tf.Tensor) -> tf.Tensor:
                    if jit:
                        return tf.gather(values, index)
                    picked = tf.cond(one_window, lambda: values[first:first + config.T_in][None],
                                     lambda: tf.gather(values, index))
                    picked.set_shape(index.shape.concatenate(values.shape[1:]))  # the slice's is not known
                    return picked

                return model.forward_from_features(*[pick(v) for v in (features, x, masks)])["sr"]  # [w, 1, H, W, 1]

            self.features, self.windows = scene_features, windows

    def windows_per_call(self, setting: int | None = None) -> int:
        """Windows per network call: `setting` when given, else one window when the model runs
        frame by frame (the CPU default) and `WINDOWS_PER_CALL` otherwise. Frame by frame, a call's
        convolutions already have a whole 384x384 frame to work on, so more windows per call add
        memory and no speed: `superresolve --n-slide 2` of a 21-frame scene on an AMD EPYC Zen 3
        peaked at 3.65 GiB with 3 windows per call and 1.66 GiB with one (`bench/README.md`), in
        the same time (47-48 s)."""
        if setting is None:
            return 1 if getattr(self.model, "frame_by_frame", False) else WINDOWS_PER_CALL
        if not domain.is_integer_at_least(setting, 1):
            raise domain.DeepSUMError(f"windows_per_call: expected a positive integer, got {setting!r}")
        return int(setting)

    def window_images(self, scene: Mapping[str, Any], n_slide: int = 0, windows_per_call: int | None = None
                      ) -> np.ndarray:
        """The network's output for every sliding window of a scene, de-normalised to DN.

        Returns float32 `[windows, H, W]`. With several windows, SISRNet runs once on the frames
        they read (windows share T_in - 1 frames with their neighbour), the rest of the network
        `windows_per_call` windows at a time (None: `self.windows_per_call()`); memory grows
        linearly with it. One window (n_slide 0) is one call of the whole network.
        """
        return self.timed_window_images(scene, n_slide, windows_per_call)[0]

    def timed_window_images(self, scene: Mapping[str, Any], n_slide: int = 0,
                            windows_per_call: int | None = None) -> tuple[np.ndarray, float, float]:
        """`window_images` and where its wall time went: (images `[windows, H, W]`, seconds before
        the first window (frame selection, SISRNet), seconds of the windows' network calls)."""
        config = self.config
        windows_per_call = self.windows_per_call(windows_per_call)
        start = time.perf_counter()
        x, masks, index = scene_frames(scene, config, n_slide)
        # One window (n_slide 0) shares no frame with another: the whole network, SISRNet frame by
        # frame inside it, peaks lower than features computed first and kept (a 384x384 scene:
        # 1.43 against 1.70 GiB, most of it map_fn's stacking of the frames' features).
        if self.reuses_features and index.shape[0] > 1:
            x, masks = tf.constant(x), tf.constant(masks)
            features = self.features(x)  # [K, H, W, F]
            run = lambda rows: self.windows(features, x, masks, tf.constant(rows))  # noqa: E731
        else:
            run = lambda rows: self.network_call(tf.constant(x[rows]), tf.constant(masks[rows]))  # noqa: E731
        windows_start = time.perf_counter()
        outputs = [run(index[start:start + windows_per_call]).numpy()[:, 0, :, :, 0]  # [b, 1, H, W, 1] -> [b, H, W]
                   for start in range(0, index.shape[0], windows_per_call)]
        images = domain.denormalise(np.concatenate(outputs), config.mu, config.sigma_rescaled)  # [windows, H, W] DN
        end = time.perf_counter()
        if not np.all(np.isfinite(images)):
            hint = "" if config.precision == "float32" else f" ({config.precision} may overflow: try --precision float32)"
            raise domain.DeepSUMError(f"scene {scene.get('name', '?')}: the network produced NaN or infinite values{hint}")
        return images, windows_start - start, end - windows_start

    def transforms(self, self_ensemble: bool | None = None) -> tuple[ensemble.Transform, ...]:
        """The transforms a scene is super-resolved under: the 8 of `ensemble.TRANSFORMS` with the
        self-ensemble (`self_ensemble`; None: the config's), else the identity alone."""
        on = self.config.self_ensemble if self_ensemble is None else self_ensemble
        if not isinstance(on, (bool, np.bool_)):
            raise domain.DeepSUMError(f"self_ensemble: expected true or false, got {on!r}")
        return ensemble.TRANSFORMS if on else (ensemble.IDENTITY,)

    def scene(self, scene: Mapping[str, Any], n_slide: int = 0, windows_per_call: int | None = None,
              self_ensemble: bool | None = None) -> np.ndarray:
        """Super-resolve one scene with the sliding window: float32 `[H, W]` DN (H, W of its frames).

        With the self-ensemble (`self_ensemble`; None: the config's), the mean of the 8 transformed
        scenes' sliding-window images, each transformed back (8x the time).
        """
        check_scene(scene, self.config.filter_size)  # named here, before the transforms read it
        transforms = self.transforms(self_ensemble)
        fused = [fuse_windows(self.window_images(ensemble.transform_scene(scene, transform), n_slide,
                                                 windows_per_call))[0] for transform in transforms]
        return ensemble.restored_mean(fused, transforms)

    def folder(self, data_dir: str | Path, split: str, bands: Iterable[str], n_slide: int = 0,
               windows_per_call: int | None = None, progress: bool = True,
               self_ensemble: bool | None = None, parts: str | Path | None = None) -> dict[str, np.ndarray]:
        """Super-resolve the scenes of a PROBA-V folder (`data_dir/split/band/imgset*`), doing the
        test-time preprocessing (`dataset.prepare_test_scene`) per scene: name -> `[H, W]` DN.
        `self_ensemble` as in `scene` (None: the config's). parts: a folder where each scene's
        image is saved as soon as it is computed, and read back instead of computed again by a
        rerun (`inference.parts`): an interrupted run loses no finished scene."""
        on = len(self.transforms(self_ensemble)) > 1  # a bad value is refused before the first scene
        images = {}
        for band in bands:
            scenes = probav.list_scenes(data_dir, split, band)
            with contextlib.ExitStack() as stack:
                saved = None if parts is None else stack.enter_context(SceneParts(
                    Path(parts) / band, scene_settings(self.model, self.config, n_slide, on, data_dir, split)))
                for folder in tqdm(scenes, desc=f"super-resolving {split}/{band}", unit="scene", disable=not progress):
                    image = None if saved is None else saved.get(folder.name, scene_sr_shape(folder, self.config.R))
                    if image is None:
                        scene = prepare_test_scene(probav.read_scene(folder, band=band, split=split))
                        image = self.scene(scene, n_slide, windows_per_call, self_ensemble)
                        if saved is not None:
                            saved.put(folder.name, image)
                    images[folder.name] = image
                if saved is not None and saved.reused:
                    LOG.info("%s: %d of %d scenes read back from %s", band, saved.reused, len(scenes), saved.folder)
        return images


def scene_sr_shape(folder: Path, scale: int = domain.SCALE) -> tuple[int, int] | None:
    """The size of a PROBA-V scene folder's super-resolved image, read from PNG headers: its
    HR.png's, else `scale` x its first LR frame's; None without either."""
    if (folder / "HR.png").is_file():
        return probav.png_size(folder / "HR.png")
    frames = sorted(folder.glob("LR*.png"))
    return tuple(scale * side for side in probav.png_size(frames[0])) if frames else None


def fuse_windows(images: np.ndarray, max_shift: int = MAX_SR_SHIFT) -> tuple[np.ndarray, np.ndarray]:
    """Register every window's SR image to the first (integer phase cross-correlation) and average.

    images: `[windows, H, W]`. Images shifted by more than `max_shift` pixels in either axis are
    dropped. Returns (float32 `[H, W]` mean, bool `[windows]` kept).
    """
    images = np.asarray(images)
    if images.ndim != 3 or len(images) == 0 or images.dtype.kind not in "uif" or not np.isfinite(images).all():
        raise domain.DeepSUMError(f"fuse_windows: images of shape {images.shape} and dtype {images.dtype}; expected "
                                  f"the finite SR images of one or more windows [windows, H, W]")
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
                            n_slides: Iterable[int] = (0, 1, 2), progress: bool = True,
                            self_ensemble: bool | Iterable[bool] | None = None) -> list[dict[str, Any]]:
    """Mean cPSNR, mean Kelvins score and seconds per scene of the sliding window for each n_slide,
    with and/or without the self-ensemble, and of bicubic.

    dataset: `load_scenes(..., "validation")` (with hr, hr_clear, baseline). self_ensemble: False
    (the authors' inference), True (the 8-transform self-ensemble) or both, e.g. (False, True),
    for a row of each; None: both where the config's `self_ensemble` is on, else False. Per
    transform the windows of the largest n_slide are computed once; a smaller n_slide fuses the
    first n_slide + 1 of them, which is what `Superresolver.scene` with that n_slide computes.
    "seconds" is the mean wall time per scene of that row's computation: frame selection,
    SISRNet, fusion and averaging as measured, plus the windows' network time shared equally
    among the windows (they have the same shape), so a row counts only the windows it uses. The
    first scene's windows are computed once untimed before it is timed, so no row pays for
    tracing or for the first call at an image size (a non-square scene's rotations still do).
    Returns rows {"method", "n_slide", "self_ensemble", "cpsnr", "score", "seconds", "scenes"}:
    bicubic first (n_slide and self_ensemble None), then per n_slide one row per setting.
    """
    n_slides = list(n_slides)
    if not n_slides or not all(domain.is_integer_at_least(n, 0) for n in n_slides):
        raise domain.DeepSUMError(f"n_slides: expected one or more integers >= 0, got {n_slides}")
    n_slides = sorted(set(int(n) for n in n_slides))
    settings = _ensemble_settings(superresolver, self_ensemble)
    results: dict[Any, list[tuple[float, float, float]]] = {"bicubic": [], **{(n, on): [] for n in n_slides
                                                                               for on in settings}}
    for number, scene in enumerate(tqdm(iterate_scenes(dataset), total=scene_count(dataset), desc="sliding window",
                                        disable=not progress)):
        name = scene.get("name", f"#{number}")
        missing = [key for key in ("hr", "hr_clear", "baseline") if key not in scene]
        if missing:
            raise domain.DeepSUMError(f"scene {name}: no {missing}; expected a validation scene (load_scenes(..., "
                                      f"\"validation\")), with its HR image, clear mask and baseline")
        if number == 0:
            superresolver.window_images(scene, max(n_slides))  # untimed: tracing, first call at this size
        hr, clear, baseline = scene["hr"], scene["hr_clear"], scene["baseline"]
        start = time.perf_counter()
        candidates = {"bicubic": (bicubic_baseline(scene), time.perf_counter() - start)}
        windows: dict[ensemble.Transform, tuple[np.ndarray, float, float]] = {}  # shared by both settings
        for on in settings:
            per_n_slide = _sliding_window_images(superresolver, scene, n_slides, superresolver.transforms(on), windows)
            candidates.update({(n, on): value for n, value in per_n_slide.items()})
        for key, (image, seconds) in candidates.items():
            try:
                results[key].append((metrics.kelvins_cpsnr(image, hr, clear),
                                     metrics.kelvins_score(image, hr, clear, baseline), seconds))
            except metrics.MetricError as error:  # a damaged HR image or baseline: which scene
                raise metrics.MetricError(f"scene {name}: {error}") from None
    if not results["bicubic"]:
        raise domain.DeepSUMError("no scene to evaluate; expected the scenes of load_scenes(..., \"validation\")")
    rows = []
    for key, values in results.items():
        cpsnr, score, seconds = np.mean(np.array(values, dtype=np.float64), axis=0)
        n_slide, on = (None, None) if key == "bicubic" else key
        rows.append({"method": "bicubic" if key == "bicubic" else "DeepSUM", "n_slide": n_slide, "self_ensemble": on,
                     "cpsnr": float(cpsnr), "score": float(score), "seconds": float(seconds), "scenes": len(values)})
    return rows


def _ensemble_settings(superresolver: Superresolver, self_ensemble: bool | Iterable[bool] | None) -> list[bool]:
    """`self_ensemble` of `evaluate_sliding_window` as a list: [False], [True] or [False, True]."""
    if self_ensemble is None:
        return [False, True] if superresolver.config.self_ensemble else [False]
    values = [self_ensemble] if isinstance(self_ensemble, (bool, np.bool_)) else list(self_ensemble)
    if not values or not all(isinstance(value, (bool, np.bool_)) for value in values):
        raise domain.DeepSUMError(f"self_ensemble: expected True, False or a list of them, got {self_ensemble!r}")
    return sorted(set(bool(value) for value in values))


def _sliding_window_images(superresolver: Superresolver, scene: Mapping[str, Any], n_slides: list[int],
                           transforms: tuple[ensemble.Transform, ...],
                           windows: dict[ensemble.Transform, tuple[np.ndarray, float, float]],
                           ) -> dict[int, tuple[np.ndarray, float]]:
    """n_slide -> (the image `Superresolver.scene` gives for it under `transforms`, its seconds).

    The windows of the largest n_slide are computed once per transform and kept in `windows`
    (transform -> (window images, seconds before the windows, seconds of the windows)), so the
    identity's serve the rows with and without the self-ensemble alike, each counting its time.
    """
    for transform in transforms:
        if transform not in windows:
            start = time.perf_counter()
            transformed = ensemble.transform_scene(scene, transform)
            images, _, during = superresolver.timed_window_images(transformed, max(n_slides))
            windows[transform] = (images, time.perf_counter() - start - during, during)
    computed = [windows[transform] for transform in transforms]
    per_n_slide = {}
    for n in n_slides:
        start = time.perf_counter()
        image = ensemble.restored_mean([fuse_windows(images[:n + 1])[0] for images, _, _ in computed], transforms)
        shared = sum(before + during * min(n + 1, len(images)) / len(images) for images, before, during in computed)
        per_n_slide[n] = (image, time.perf_counter() - start + shared)
    return per_n_slide


def format_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows of `evaluate_sliding_window` as a text table ("self-ensemble": yes or no, "-" for
    bicubic; "s/scene": mean wall seconds per scene; "-" for a row without these keys)."""
    ensemble_cell = {None: None, False: "no", True: "yes"}
    return reports.format_table(("method", "n_slide", "self-ensemble", "cPSNR (dB)", "score", "s/scene", "scenes"),
                                [(row["method"], row["n_slide"], ensemble_cell[row.get("self_ensemble")], row["cpsnr"],
                                  row["score"], row.get("seconds"), row["scenes"]) for row in rows],
                                digits=(0, 0, 0, 3, 4, ".3g", 0))


def plot_sliding_window(rows: Iterable[Mapping[str, Any]]) -> Any:
    """Score and cPSNR against n_slide: DeepSUM, DeepSUM with the self-ensemble (where rows have
    it; a row without the key is without it) and the bicubic baseline as a dashed line. Returns
    the figure."""
    import matplotlib.pyplot as plt  # loaded only for figures: the commands stay light

    rows = list(rows)
    model_rows = [row for row in rows if row["n_slide"] is not None]
    lines = {label: [row for row in model_rows if bool(row.get("self_ensemble")) == on]
             for label, on in (("DeepSUM", False), ("DeepSUM + self-ensemble", True))}
    bicubic = [row for row in rows if row["n_slide"] is None]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, key, label in zip(axes, ("score", "cpsnr"), ("mean score (lower is better)", "mean cPSNR (dB)")):
        for line_label, line_rows in lines.items():
            if line_rows:
                axis.plot([row["n_slide"] for row in line_rows], [row[key] for row in line_rows], "o-",
                          label=line_label)
        for row in bicubic:
            axis.axhline(row[key], linestyle="--", color="gray", label="bicubic")
        axis.set_xlabel("n_slide")
        axis.set_ylabel(label)
        axis.set_xticks(sorted({row["n_slide"] for row in model_rows}))
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
