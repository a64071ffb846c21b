"""Constants of PROBA-V and DeepSUM, and the few conversions every stage shares.

Everything here is a fact of the data or of the authors' design, written once: the bands
and splits of the challenge, the x3 scale, the 9 input frames, the corrupt-pixel rule, the
largest registration shift kept, the normalisation constants of the authors' configs (the
same for both bands), how values are normalised for the network and back, the flat index of
a shift's registration-filter tap, and how one scene is cut out of the ragged arrays that
store many.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np


class DeepSUMError(ValueError):
    """A bad input the user can fix: a file, folder, config key, scene, checkpoint or argument.

    Every error class of the project derives from it; the command line prints its message as
    one `error: ...` line with exit code 1 instead of a traceback.
    """


BANDS = ("NIR", "RED")
SPLITS = ("train", "test")  # the splits of a PROBA-V folder; prepared data adds "validation"
PREPARED_SPLITS = ("train", "validation", "test")
SCALE = 3  # HR side / LR side: 128x128 LR frames, 384x384 HR images
T_IN = 9  # frames per network input
CORRUPT_VALUE = 60000  # a frame with any pixel above this is corrupt
MAX_SHIFT = 4  # frames displaced by more than this (either axis, HR pixels) are dropped
FILTER_SIZE = 9  # side of RegNet's registration filters: shifts up to 4 pixels

# Normalisation of the authors' configs (both bands): inputs (v - mu) / sigma, targets and
# outputs (v - mu) / sigma_rescaled.
PROBAV_MU = 7754.664
PROBAV_SIGMA = 2316.3408
PROBAV_SIGMA_RESCALED = 596.982

# Arrays of a prepared store with one row per scene; the others have one row per frame.
PER_SCENE = ("names", "hr", "hr_clear", "baseline")


def is_integer_at_least(value: Any, minimum: int) -> bool:
    """True for a Python or NumPy integer (not a bool) of at least `minimum`: the check of the
    counts a function takes (seeds, chunks, processes, sizes), where argparse did not check them."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def normalise(values: Any, mu: float, scale: float) -> np.ndarray:
    """`(values - mu) / scale` in float32 (DN -> network units; scale: sigma or sigma_rescaled)."""
    return (np.asarray(values, dtype=np.float32) - np.float32(mu)) / np.float32(scale)


def denormalise(values: Any, mu: float, scale: float) -> np.ndarray:
    """`values * scale + mu` in float32 (network units -> DN), the inverse of `normalise`."""
    return np.asarray(values, dtype=np.float32) * np.float32(scale) + np.float32(mu)


def tap_index(shifts: Any, filter_size: int = FILTER_SIZE) -> Any:
    """Flat filter tap of each shift: `filter_size * (dy + r) + (dx + r)`, r = filter_size // 2.

    shifts: `[..., 2]` integer (dy, dx): a NumPy array, or an int32 TensorFlow tensor (the
    result is of the same kind). The registration filter with all its mass at this tap moves a
    frame displaced by (dy, dx) back onto the reference (`model.register_frames`).
    """
    radius = filter_size // 2
    return filter_size * (shifts[..., 0] + radius) + (shifts[..., 1] + radius)


def scene_rows(offsets: Any, index: int) -> slice:
    """The frame rows of scene `index` in a ragged store: `offsets[index]:offsets[index + 1]`."""
    return slice(int(offsets[index]), int(offsets[index + 1]))


def scene_slice(store: Mapping[str, Any], index: int, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """One scene of a ragged store (frames of all scenes stacked, `offsets [S+1]`).

    Per-frame arrays are sliced by `scene_rows`, per-scene arrays (`PER_SCENE`) indexed;
    `names` becomes the scene's `name`. keys: the arrays to take (default: all but offsets).
    Values stay as stored (memory-mapped slices are not copied).
    """
    rows = scene_rows(store["offsets"], index)
    keys = [key for key in store if key != "offsets"] if keys is None else list(keys)
    scene: dict[str, Any] = {}
    for key in keys:
        if key == "names":
            scene["name"] = str(store["names"][index])
        elif key in PER_SCENE:
            scene[key] = store[key][index]
        else:
            scene[key] = store[key][rows]
    return scene
