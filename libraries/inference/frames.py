"""The frames of a scene at test time: which ones, in which order, as network inputs.

A scene here is a dict of NumPy arrays on the HR grid, as `dataset.load_scenes` (one scene of
its ragged arrays, `domain.scene_slice`) or `dataset.prepare_test_scene` give it:

    frames  [K, H, W] float32   bicubic-upsampled LR frames, raw DN, NOT resampled
    masks   [K, H, W] bool      their clear masks, NOT registered (true = clear)
    shifts  [K, 2]    int       integer shift registering each frame (and mask) to the reference
    name    str                 e.g. "imgset0594"; validation scenes also carry hr, hr_clear, baseline

Frame selection (the authors' sliding window): sort the frames by clear pixels, keep those
more than p clear (p = 0.90, lowered by 0.05 until at least T_in remain); window n holds frames
n..n+T_in-1.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from libraries import config as config_module
from libraries import domain, preprocessing

CLEAR_START = 0.90  # first clear-fraction threshold of the frame selection
CLEAR_STEP = 0.05  # lowered by this until enough frames pass
PER_FRAME = ("frames", "masks", "shifts", "frame_names")  # scene arrays with one row per frame


def iterate_scenes(scenes: Mapping[str, np.ndarray] | Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """The scene dicts of a `load_scenes` dict (ragged arrays) or of an iterable of scene dicts."""
    if isinstance(scenes, Mapping):
        if "offsets" in scenes and len(scenes["offsets"]) != len(scenes["names"]) + 1:  # a scene would be skipped
            raise domain.DeepSUMError(f"scenes: {len(scenes['names'])} names and {len(scenes['offsets']) - 1} scenes "
                                      f"in offsets; expected a load_scenes dict (one name per scene)")
        for index in range(len(scenes["names"])):
            yield domain.scene_slice(scenes, index)
    else:
        yield from (dict(scene) for scene in scenes)


def scene_count(scenes: Mapping[str, np.ndarray] | Iterable[Any]) -> int | None:
    if isinstance(scenes, Mapping):
        return len(scenes["names"])
    return len(scenes) if hasattr(scenes, "__len__") else None


def check_scene(scene: Mapping[str, Any], minimum_side: int = 1) -> None:
    """Raise `DeepSUMError` naming the scene unless it holds finite `frames` [K, H, W] (K >= 1,
    sides >= `minimum_side`: the network's filter_size), `masks` of their shape, bool or the
    numbers 0 and 1 (0/255 masks would count every frame fully clear in the frame selection), and
    integer `shifts` [K, 2]: a scene built by hand, as a notebook may, that is none of these
    stopped in a TensorFlow or NumPy error without its name, or was super-resolved regardless."""
    name = scene.get("name", "?")
    missing = [key for key in ("frames", "masks", "shifts") if key not in scene]
    if missing:
        raise domain.DeepSUMError(f"scene {name}: no {missing}; expected frames [K, H, W], masks [K, H, W] and "
                                  f"shifts [K, 2]")
    frames, masks, shifts = (np.asarray(scene[key]) for key in ("frames", "masks", "shifts"))
    if (frames.ndim != 3 or frames.dtype.kind not in "uif" or masks.shape != frames.shape
            or shifts.shape != (len(frames), 2) or shifts.dtype.kind not in "iu"):
        raise domain.DeepSUMError(f"scene {name}: frames {frames.shape} {frames.dtype}, masks {masks.shape}, shifts "
                                  f"{shifts.shape} {shifts.dtype}; expected frames [K, H, W] of numbers, masks of "
                                  f"their shape and integer shifts [K, 2]")
    if len(frames) == 0 or min(frames.shape[1:]) < minimum_side:
        raise domain.DeepSUMError(f"scene {name}: {len(frames)} frames of {frames.shape[1]}x{frames.shape[2]}; "
                                  f"expected at least one, of sides >= {minimum_side} (the config's filter_size)")
    if masks.dtype != bool and not np.isin(masks, (0, 1)).all():
        raise domain.DeepSUMError(f"scene {name}: masks hold values other than 0 and 1 (e.g. 0/255); expected "
                                  f"clear masks of bool (true = clear) or 0/1")
    finite = np.isfinite(frames).reshape(len(frames), -1).all(axis=1)  # [K]
    if not finite.all():
        raise domain.DeepSUMError(f"scene {name}: frame {int(np.flatnonzero(~finite)[0])} holds NaN or Inf; "
                                  f"expected finite DN values")


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
        raise domain.DeepSUMError(f"scene {scene.get('name', '?')}: no frame to super-resolve")
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
    """The selected frames of a scene that the sliding windows use, once each, and which of them
    make every window.

    Returns normalised frames `(v - mu) / sigma` and their registered clear masks, both float32
    `[K, H, W, 1]` (the first K = windows + T_in - 1 frames of the selection, clearest first),
    and the int32 frame index of the windows `[windows, T_in]`, windows = min(n_slide, selected
    - T_in) + 1: window n holds frames n..n+T_in-1. The selection keeps every frame clear enough,
    often far more than the windows read (up to 35 in PROBA-V scenes; at n_slide 0 they read 9),
    and the frames past the last window's are left out here: SISRNet would compute their features
    for nothing. As in the original the window's first frame is the network's reference, while
    the masks are registered by their own shifts to the scene's reference (the clearest frame,
    window 0's first).
    """
    check_scene(scene, config.filter_size)
    if not domain.is_integer_at_least(n_slide, 0):
        raise domain.DeepSUMError(f"n_slide: expected an integer >= 0, got {n_slide!r}")
    frames_per_window = config.T_in
    chosen = select_clear_frames(sort_frames_by_clearance(scene), frames_per_window)
    windows = min(int(n_slide), chosen["frames"].shape[0] - frames_per_window) + 1
    chosen = _take_frames(chosen, np.arange(windows + frames_per_window - 1))  # the frames the windows read
    index = np.arange(windows)[:, None] + np.arange(frames_per_window)[None, :]  # [windows, T_in]
    registered = np.asarray(preprocessing.translate_masks(chosen["masks"], chosen["shifts"]), dtype=bool)  # [K,H,W]
    x = domain.normalise(chosen["frames"], config.mu, config.sigma)  # [K, H, W]
    return x[..., None].astype(np.float32), registered[..., None].astype(np.float32), index.astype(np.int32)


def window_inputs(scene: Mapping[str, Any], config: config_module.DeepSUMConfig, n_slide: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs of the sliding windows of a scene (`scene_frames` gathered per window).

    Returns normalised frames `(v - mu) / sigma` and their registered clear masks, both float32
    `[windows, T_in, H, W, 1]`.
    """
    x, masks, index = scene_frames(scene, config, n_slide)
    return x[index], masks[index]  # [windows, T_in, H, W, 1] each


def bicubic_baseline(scene: Mapping[str, Any]) -> np.ndarray:
    """The organisers' baseline: the mean of the frames with the most clear pixels, upsampled
    bicubically. The frames are already bicubic-upsampled, and bicubic upsampling is linear, so
    this is the mean of those upsampled frames. Returns float64 `[H, W]`."""
    check_scene(scene)
    return preprocessing.bicubic_baseline(scene["frames"], scene["masks"], scale=1)
