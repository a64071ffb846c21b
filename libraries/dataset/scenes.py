"""Preprocessing of one scene: corrupt frames, upsampling, reference, registration, limits.

The same steps serve dataset creation (`prepare`, train and validation scenes: a scene left
with fewer than 9 frames, or whose SM.png has no clear pixel, is dropped) and test time
(`prepare_test_scene`: never dropped, completed to 9 frames by reusing its clearest ones).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from libraries import domain, preprocessing, probav

@dataclass
class PreparedScene:
    """One scene after the frame filters, upsampling and registration.

    frames [K, 3h, 3w] float32, masks [K, 3h, 3w] bool (unregistered), shifts [K, 2] int32,
    reference first. `dropped` names why a train/validation scene was dropped (arrays empty).
    """

    name: str
    frames: np.ndarray
    masks: np.ndarray
    shifts: np.ndarray
    frame_names: np.ndarray
    corrupt: int = 0  # frames dropped: a pixel > 60000
    shifted: int = 0  # frames dropped: shift > 4
    reused: int = 0  # test scenes: frames added again to reach 9
    dropped: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


NO_CLEAR_HR = "no clear HR pixel (SM.png all zero): nothing to score or train on"


def preprocess_scene(name: str, lr: np.ndarray, clear: np.ndarray, frame_names: Sequence[str],
                     complete: bool = False, hr_clear: np.ndarray | None = None) -> PreparedScene:
    """Steps 3-5 of dataset creation for one scene.

    lr [K, h, w] raw DN, clear [K, h, w] bool. Drops corrupt frames, upsamples frames (bicubic)
    and masks (nearest) x3, puts the reference (most clear pixels) first, registers every frame
    to it, drops frames shifted more than 4. A scene left with fewer than 9 frames is dropped,
    or, with `complete` (test scenes, never dropped), given its clearest frames again. A scene
    whose `hr_clear` [3h, 3w] (its SM.png, train and validation) has no clear pixel is dropped.
    """
    frame_names = np.asarray(frame_names)
    count = int(np.asarray(lr).shape[0])
    lr, clear, kept = preprocessing.drop_corrupt_frames(np.asarray(lr), np.asarray(clear, dtype=bool))
    result = dict(name=name, corrupt=count - kept.size)
    if hr_clear is not None and not np.any(hr_clear):
        return _dropped_scene(result, NO_CLEAR_HR)
    if kept.size < domain.T_IN and not complete:
        return _dropped_scene(result, f"fewer than {domain.T_IN} frames without corrupt ones")
    if kept.size == 0:
        raise preprocessing.TooFewFramesError(f"scene {name}: all {count} frames are corrupt (a pixel > "
                                              f"{domain.CORRUPT_VALUE}); no input can be built")
    start = time.perf_counter()
    order = preprocessing.reference_first_order(preprocessing.clear_pixel_counts(clear))
    frames = preprocessing.upsample_frames(lr[order])  # [K, 3h, 3w] float32
    masks = preprocessing.upsample_masks(clear[order])  # [K, 3h, 3w] bool
    upsampled = time.perf_counter()
    shifts = preprocessing.estimate_shifts(frames)  # [K, 2]
    within = preprocessing.shifts_within_limit(shifts)
    registered = time.perf_counter()
    seconds = {"upsample": upsampled - start, "register": registered - upsampled}
    frames, masks, shifts, names = frames[within], masks[within], shifts[within], frame_names[kept][order][within]
    result.update(shifted=int(np.count_nonzero(~within)), seconds=seconds)
    if complete:
        index = preprocessing.complete_frames(preprocessing.clear_pixel_counts(masks))
        frames, masks, shifts, names = frames[index], masks[index], shifts[index], names[index]
        result["reused"] = int(index.size - np.count_nonzero(within))
    elif frames.shape[0] < domain.T_IN:
        return _dropped_scene(result, f"fewer than {domain.T_IN} frames shifted by at most "
                                      f"{domain.MAX_SHIFT}")
    return PreparedScene(frames=frames, masks=masks, shifts=shifts, frame_names=names, **result)


def _dropped_scene(result: dict[str, Any], reason: str) -> PreparedScene:
    empty = np.zeros((0, 0, 0), dtype=np.float32)
    return PreparedScene(frames=empty, masks=empty.astype(bool), shifts=np.zeros((0, 2), np.int32),
                         frame_names=np.zeros(0, dtype="<U1"), dropped=reason, **result)


def prepare_test_scene(scene: probav.Scene) -> dict[str, Any]:
    """Test-time preprocessing of one scene read from a PROBA-V folder, as the test store:
    {"name", "frames" [K,3h,3w] float32, "masks" [K,3h,3w] bool (unregistered), "shifts" [K,2]
    int32, "frame_names" [K]}, K >= 9, reference first; plus "hr", "hr_clear" when the scene has them."""
    prepared = preprocess_scene(scene.name, scene.lr, scene.clear, scene.frame_names, complete=True)
    result = {"name": scene.name, "frames": prepared.frames, "masks": prepared.masks,
              "shifts": prepared.shifts, "frame_names": prepared.frame_names}
    if scene.hr is not None:
        result.update(hr=scene.hr, hr_clear=scene.hr_clear)
    return result
