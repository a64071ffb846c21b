"""Helpers shared by several test modules: independent oracles written in plain NumPy."""

from __future__ import annotations

import numpy as np


def fill_source_frame(masks: np.ndarray) -> np.ndarray:
    """For every frame and pixel, the index of the frame whose value the fill puts there.

    The rule of the original: frame t keeps its own value where it is clear; where it is not,
    it takes the value of the lowest-index frame that is clear at that pixel; where no frame
    is clear it keeps its own value.

    masks: `[batch, frames, height, width, 1]`, true (or nonzero) = clear.
    Returns int32 `[batch, frames, height, width, 1]`.
    """
    clear = np.asarray(masks).astype(bool)
    if clear.ndim != 5:
        raise ValueError(f"masks: expected [batch, frames, height, width, 1], got shape {clear.shape}")
    frames = clear.shape[1]
    own = np.arange(frames, dtype=np.int32).reshape(1, frames, 1, 1, 1)
    # argmax over frames is the lowest clear index; a cloudy frame t cannot be its own answer
    first_clear = np.argmax(clear, axis=1, keepdims=True).astype(np.int32)  # [b,1,H,W,1]
    any_clear = clear.any(axis=1, keepdims=True)
    return np.where(clear | ~any_clear, own, first_clear)


def fill_coefficients(masks: np.ndarray) -> np.ndarray:
    """The original's 0/1 fill weights: `[batch, t, s, height, width, 1]` bool, true where output
    frame t takes frame s (exactly one true per batch, t and pixel).

    masks: `[batch, frames, height, width, 1]`, true (or nonzero) = clear.
    """
    source = fill_source_frame(masks)  # [b,T,H,W,1]
    frames = source.shape[1]
    s = np.arange(frames).reshape(1, 1, frames, 1, 1, 1)
    return source[:, :, None] == s  # [b,T,1,H,W,1] vs [1,1,T,1,1,1] -> [b,T,T,H,W,1]


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative L2 error ||actual - expected|| / ||expected|| (float64)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))
