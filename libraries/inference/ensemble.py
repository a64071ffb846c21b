"""Test-time self-ensemble: a scene super-resolved under the 8 dihedral transforms, averaged.

The 8 transforms of the square's symmetry group are the identity, the rotations by 90, 180 and
270 degrees, and the same four after an up-down flip (which include the left-right flip, the
transpose and the anti-transpose). A transform acts on every frame and clear mask of a scene
(`[K, H, W]`; a rotation by 90 degrees gives `[K, W, H]`) and on the registration shifts, so
that registering the transformed masks with the transformed shifts gives the transformed
registered masks: with `preprocessing.translate_masks` (out[y, x] = mask[y + dy, x + dx],
circular)

    up-down flip       (dy, dx) -> (-dy, dx)
    rotation by 90     (dy, dx) -> (-dx, dy)     (`np.rot90`: out[i, j] = in[j, W - 1 - i])

and a transform that flips then rotates maps the shift by the flip, then by each rotation.
The network's output for a transformed scene is transformed back (`restore_image`) before the
outputs are averaged (`restored_mean`).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from libraries import domain

IMAGE_AXES = (-2, -1)  # (height, width) of `[..., H, W]`


class Transform(NamedTuple):
    """Up-down flip (first, if `flip`), then `turns` rotations by 90 degrees (`np.rot90`)."""

    flip: bool
    turns: int

    @property
    def name(self) -> str:
        parts = (["flip"] if self.flip else []) + ([f"rot{90 * self.turns}"] if self.turns else [])
        return "+".join(parts) or "identity"


IDENTITY = Transform(False, 0)
TRANSFORMS = tuple(Transform(flip, turns) for flip in (False, True) for turns in range(4))  # identity first


def transform_image(image: np.ndarray, transform: Transform) -> np.ndarray:
    """`[..., H, W]` -> `[..., H, W]` (0 or 2 turns) or `[..., W, H]` (1 or 3 turns)."""
    image = np.asarray(image)
    if transform.flip:
        image = np.flip(image, axis=IMAGE_AXES[0])
    return np.rot90(image, transform.turns, axes=IMAGE_AXES)


def restore_image(image: np.ndarray, transform: Transform) -> np.ndarray:
    """The inverse of `transform_image`: undo the turns, then the flip. `[..., H', W']` -> `[..., H, W]`."""
    image = np.rot90(np.asarray(image), -transform.turns, axes=IMAGE_AXES)
    return np.flip(image, axis=IMAGE_AXES[0]) if transform.flip else image


def transform_shifts(shifts: np.ndarray, transform: Transform) -> np.ndarray:
    """The integer shifts (dy, dx) `[..., 2]` of the transformed frames (same dtype)."""
    shifts = np.asarray(shifts)
    dy, dx = shifts[..., 0], shifts[..., 1]
    if transform.flip:
        dy = -dy
    for _ in range(transform.turns):
        dy, dx = -dx, dy
    return np.stack([dy, dx], axis=-1).astype(shifts.dtype)


def transform_scene(scene: Mapping[str, Any], transform: Transform) -> dict[str, Any]:
    """The scene with its frames, clear masks (`[K, H, W]`) and shifts (`[K, 2]`) transformed.

    Everything else (name, hr, hr_clear, baseline) is kept as it is: the network's output is
    transformed back before it meets the HR image.
    """
    return {**scene, "frames": transform_image(scene["frames"], transform),
            "masks": transform_image(scene["masks"], transform),
            "shifts": transform_shifts(scene["shifts"], transform)}


def restored_mean(images: Sequence[np.ndarray], transforms: Sequence[Transform]) -> np.ndarray:
    """The mean of the images `[H', W']` of the transformed scenes, each transformed back first:
    float32 `[H, W]` (summed in float64). One image under the identity comes back unchanged."""
    if len(images) != len(transforms) or not images:
        raise domain.DeepSUMError(f"expected one image per transform, got {len(images)} images for {len(transforms)} transforms")
    restored = [restore_image(image, transform) for image, transform in zip(images, transforms)]
    return np.mean(restored, axis=0, dtype=np.float64).astype(np.float32)
