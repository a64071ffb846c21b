"""What a person reads: the one text-table formatter and the one training-curve figure.

`format_table` serves every table the commands and notebooks print (dataset counts, array
shapes, the sliding-window evaluation, the demo's summary). `plot_history` draws the history
that the training loop (`libraries.training.loop`) returns for DeepSUM and both pretrainings,
`plot_training_runs` several of them beside their validation curves, `plot_validation_scene`
one scene with its error maps (the demo).
"""

from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import numpy as np

from libraries import domain


def _cell(value: Any, digits: int | str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:{digits}}" if isinstance(digits, str) else f"{value:.{digits}f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                 digits: int | str | Sequence[int | str] = 4) -> str:
    """A plain-text table: the header, then one line per row, columns padded to a common width.

    Numbers are right-aligned, text left-aligned, None shown as "-". Floats get `digits`
    decimals, or the format `digits` when it is a string (e.g. ".3g"): one for every column or
    one per column.
    """
    columns = len(header)
    per_column = [digits] * columns if isinstance(digits, (int, str)) else list(digits)
    cells = [[_cell(value, per_column[i]) for i, value in enumerate(row)] for row in rows]
    numeric = [all(isinstance(row[i], (int, float, np.integer, np.floating)) or row[i] is None for row in rows)
               for i in range(columns)]
    widths = [max([len(header[i])] + [len(line[i]) for line in cells]) for i in range(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(width) if right else value.ljust(width)
                         for value, width, right in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(list(header))] + [line(values) for values in cells])


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """The mean of each value and the `window - 1` before it (fewer at the start): `[n]`."""
    if not domain.is_integer_at_least(window, 1):
        raise domain.DeepSUMError(f"window: expected a number of steps >= 1, got {window!r}")
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    sums = np.cumsum(values)
    counts = np.minimum(np.arange(1, values.size + 1), window)
    starts = np.arange(values.size) - counts
    before = np.where(starts >= 0, sums[np.maximum(starts, 0)], 0.0)
    return (sums - before) / counts


def plot_history(history: Mapping[str, Any], keys: Sequence[str] = ("loss",),
                 validation_keys: Sequence[str] = ("loss",), title: str = "", ax=None, log: bool = False,
                 smooth: int = 0, validation_ax=None, zoom: bool = False):
    """Training curves of a loop history: `keys` per step, `validation_keys` per validation.

    history: {"step": [...], key: [...], "validation": [{"step": s, key: value, ...}, ...]}.
    smooth: also draw the moving average of each per-step curve over this many steps (the raw
    batch values faded behind it). zoom: fit the y axis to the smoothed curves (the spread of
    the raw batch values would hide their trend), the raw values as dots. validation_ax: draw the validation curves on
    this Axes instead (their own scale). Returns the matplotlib Axes of the per-step curves (a
    new figure when `ax` is None).
    """
    import matplotlib.pyplot as plt  # the figure backend is chosen by the caller's environment

    validation = history.get("validation", [])
    # a misspelt key drew an empty figure; an empty history (a finished run resumed) draws none
    unknown = [key for key in keys if history.get("step") and key not in history] + [
        key for key in validation_keys if validation and not any(key in entry for entry in validation)]
    if unknown:
        known = sorted({*history, *(key for entry in validation for key in entry)} - {"step", "validation"})
        raise domain.DeepSUMError(f"plot_history: no {unknown} in the history; it holds {known}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    smoothed = []
    for key in keys:
        if history.get(key):
            # zoomed, the raw values are dots: those off the axis vanish instead of crossing it
            line, = ax.plot(history["step"], history[key], "." if zoom else "-", lw=1, ms=3,
                            alpha=0.35 if smooth else 1.0, label=f"{key} (batch)" if smooth else key)
            if smooth:
                smoothed.append(moving_average(history[key], smooth))
                ax.plot(history["step"], smoothed[-1], lw=2, color=line.get_color(),
                        label=f"{key} (mean of {smooth} steps)")
    if zoom and smoothed:
        low, high = min(curve.min() for curve in smoothed), max(curve.max() for curve in smoothed)
        margin = 0.15 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(low - margin, high + margin)
    target = ax if validation_ax is None else validation_ax
    for key in validation_keys:
        points = [(entry["step"], entry[key]) for entry in validation if key in entry]
        if points:
            target.plot(*zip(*points), "o-", color="C1" if target is not ax else None, label=f"validation {key}")
    for axis in {id(ax): ax, id(target): target}.values():
        axis.set_xlabel("step")
        if log:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        if axis.get_lines():
            axis.legend()
    ax.set_title(title)
    return ax


def plot_training_runs(histories: Mapping[str, Mapping[str, Any]]):
    """One row per run ({name: `plot_history` history}, e.g. per band): the batch loss and its
    moving average, and beside it the validation loss on its own axis (whole scenes, so on
    another scale than the patches). Returns the figure."""
    import matplotlib.pyplot as plt  # the figure backend is chosen by the caller's environment

    figure, axes = plt.subplots(len(histories), 2, figsize=(12, 3.4 * len(histories)), squeeze=False)
    for (loss_axis, validation_axis), (name, history) in zip(axes, histories.items()):
        # windows of a fifth of the run: the batch loss of a few patches varies tenfold with their contrast
        plot_history(history, ax=loss_axis, validation_ax=validation_axis, smooth=max(5, len(history["step"]) // 5),
                     zoom=True)
        loss_axis.set_title(f"{name}: training loss (cL2) of each batch of patches")
        validation_axis.set_title(f"{name}: validation loss (cL2) on whole scenes")
        validation_axis.set_xlim(loss_axis.get_xlim())  # the same steps under each other
    figure.tight_layout()
    return figure


def plot_validation_scene(lr: np.ndarray, bicubic: np.ndarray, sr: np.ndarray, hr: np.ndarray,
                          bicubic_error: np.ndarray, sr_error: np.ndarray, filled: np.ndarray, title: str,
                          note: str = ""):
    """One validation scene, for a reader: what the network saw, made and should have made.

    Top row on one grey scale (2nd-98th percentile of HR): the clearest LR frame `[h, w]`, the
    bicubic baseline, the SR image and HR, `[H, W]`. Bottom row: |bicubic - HR| and |SR - HR|
    `[H', W']` on one colour scale (NaN, e.g. cloudy HR, shown grey), and `filled` `[H, W]`: in
    how many of the network's frames a pixel is cloudy, i.e. filled from another frame. `note`
    is printed in the last panel. Returns the figure (7 image panels, a text panel, 2 colour bars).
    """
    import matplotlib.pyplot as plt  # the figure backend is chosen by the caller's environment

    figure, axes = plt.subplots(2, 4, figsize=(16, 8.4), layout="constrained")
    low, high = np.nanpercentile(hr, [2, 98])
    for axis, image, label in zip(axes[0], (lr, bicubic, sr, hr), ("clearest LR frame", "bicubic baseline",
                                                                     "DeepSUM", "HR (target)")):
        axis.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axis.set_title(f"{label} {image.shape[0]}x{image.shape[1]}")
    errors = plt.get_cmap("magma").with_extremes(bad="0.6")
    top = max(float(np.nanpercentile(bicubic_error, 99)), 1.0)
    for axis, image, label in zip(axes[1, :2], (bicubic_error, sr_error), ("|bicubic - HR|", "|DeepSUM - HR|")):
        shown = axis.imshow(image, cmap=errors, vmin=0, vmax=top, interpolation="nearest")
        axis.set_title(f"{label}\nmean {np.nanmean(image):.0f} DN, grey: cloudy in HR")
    # colour bars below their panels: beside them they would widen a column in both rows
    figure.colorbar(shown, ax=list(axes[1, :2]), location="bottom", shrink=0.6, label="DN (one scale for both)")
    most = max(int(filled.max()), 1)
    counts = axes[1, 2].imshow(filled, cmap=plt.get_cmap("viridis", most + 1), vmin=-0.5, vmax=most + 0.5,
                               interpolation="nearest")
    axes[1, 2].set_title("frames cloudy at each pixel\n(filled from another frame)")
    figure.colorbar(counts, ax=axes[1, 2], location="bottom", shrink=0.8, ticks=range(most + 1), label="frames")
    axes[1, 3].text(0.0, 1.0, textwrap.fill(note, 42), va="top", fontsize=11, transform=axes[1, 3].transAxes)
    for axis in axes.ravel():
        axis.set_axis_off()
    figure.suptitle(title, fontsize=14)
    return figure
