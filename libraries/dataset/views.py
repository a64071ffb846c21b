"""Tables and figures of a prepared data set, for the dataset_creation notebooks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from libraries import domain, reports
from libraries.dataset import store


def counts_table(band_dir: str | os.PathLike) -> str:
    """Scenes and frames in, kept and dropped per split, from the manifest."""
    manifest = store.read_manifest(Path(band_dir))
    header = ("split", "scenes in", "kept", "dropped", "frames in", "kept", "corrupt", "shift>4", "reused")
    rows = [(split, c["scenes_in"], c["scenes_kept"], len(c["dropped_scenes"]), c["frames_in"], c["frames_kept"],
             c["frames_corrupt"], c["frames_shifted"], c["frames_reused"])
            for split, c in ((split, manifest[split]) for split in domain.PREPARED_SPLITS if split in manifest)]
    return reports.format_table(header, rows)


def arrays_table(arrays: Mapping[str, np.ndarray]) -> str:
    """Name, shape and dtype of every array of a reader's dict."""
    rows = [(key, str(tuple(np.shape(value))), str(np.asarray(value[:0]).dtype)) for key, value in arrays.items()]
    return reports.format_table(("array", "shape", "dtype"), rows)


def raw_table(band_dir: str | os.PathLike) -> str:
    """Scenes and frames read per split (step 1), from the manifest."""
    section = store.read_manifest(Path(band_dir)).get("scene_arrays", {})
    rows = [f"{split:>5}: {section[split]['scenes']} scenes, {section[split]['frames']} frames"
            for split in domain.SPLITS if split in section]
    return "\n".join(rows)


def plot_raw_scene(band_dir: str | os.PathLike, split: str = "train", index: int = 0, frames: int = 4):
    """The first LR frames of a scene as read, with their clear masks; returns the figure."""
    import matplotlib.pyplot as plt  # loaded only for figures: the commands stay light

    raw = store.load_arrays(Path(band_dir) / store.RAW / split, ["lr", "clear", "offsets", "names", "frame_names"])
    scene = domain.scene_slice(raw, index, ["names", "lr", "clear", "frame_names"])
    count = min(frames, scene["lr"].shape[0])
    figure, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.4), squeeze=False)
    for column in range(count):
        axes[0, column].imshow(scene["lr"][column], cmap="gray", interpolation="none")
        axes[0, column].set_title(f"{scene['name']} {scene['frame_names'][column]}", fontsize=8)
        axes[1, column].imshow(scene["clear"][column], cmap="gray", vmin=0, vmax=1, interpolation="none")
        axes[1, column].set_title("clear mask", fontsize=8)
    for axis in axes.ravel():
        axis.set_xticks([]), axis.set_yticks([])
    figure.tight_layout()
    return figure


def plot_shift_histogram(dataset_path: str | os.PathLike, band: str, split: str = "train"):
    """Histogram of the registration shifts (dy, dx) of a split; returns the matplotlib figure."""
    import matplotlib.pyplot as plt  # loaded only for figures: the commands stay light

    shifts = np.asarray(store.load_scenes(dataset_path, band, split)["shifts"])
    figure, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    bins = np.arange(-domain.MAX_SHIFT, domain.MAX_SHIFT + 2) - 0.5
    for axis, values, label in zip(axes, shifts.T, ("dy", "dx")):
        axis.hist(values, bins=bins)
        axis.set_xlabel(f"{label} (384-grid pixels)")
    axes[0].set_ylabel("frames")
    figure.suptitle(f"{band} {split}: shifts of {len(shifts)} frames to their reference")
    return figure


def plot_patches(arrays: Mapping[str, np.ndarray], rows: Sequence[int] = (0, 1, 2)):
    """Frames 0, 1, 8, their registered masks and the HR target of a few patches; returns the figure."""
    import matplotlib.pyplot as plt  # loaded only for figures: the commands stay light

    columns = [("frames", 0), ("frames", 1), ("frames", 8), ("masks", 0), ("masks", 1), ("masks", 8), ("hr", None)]
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(2 * len(columns), 2 * len(rows)), squeeze=False)
    for line, row in zip(axes, rows):
        for axis, (key, frame) in zip(line, columns):
            image = arrays[key][row] if frame is None else arrays[key][row, frame]
            axis.imshow(np.asarray(image), cmap="gray", interpolation="none")
            axis.set_xticks([]), axis.set_yticks([])
            axis.set_title(f"{key}[{row}{'' if frame is None else f', {frame}'}]", fontsize=8)
    figure.tight_layout()
    return figure
