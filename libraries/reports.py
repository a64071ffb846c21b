"""What a person reads: the one text-table formatter and the one training-curve figure.

`format_table` serves every table the commands and notebooks print (dataset counts, array
shapes, the sliding-window evaluation, the demo's summary). `plot_history` draws the history
that the training loop (`libraries.training.loop`) returns for DeepSUM and both pretrainings.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


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
                 smooth: int = 0):
    """Training curves of a loop history: `keys` per step, `validation_keys` per validation.

    history: {"step": [...], key: [...], "validation": [{"step": s, key: value, ...}, ...]}.
    smooth: also draw the moving average of each per-step curve over this many steps (the raw
    batch values faded behind it). Returns the matplotlib Axes (a new figure when `ax` is None).
    """
    import matplotlib.pyplot as plt  # the figure backend is chosen by the caller's environment

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    for key in keys:
        if history.get(key):
            line, = ax.plot(history["step"], history[key], lw=1, alpha=0.35 if smooth else 1.0,
                            label=f"{key} (batch)" if smooth else key)
            if smooth:
                ax.plot(history["step"], moving_average(history[key], smooth), lw=2, color=line.get_color(),
                        label=f"{key} (mean of {smooth} steps)")
    validation = history.get("validation", [])
    for key in validation_keys:
        points = [(entry["step"], entry[key]) for entry in validation if key in entry]
        if points:
            ax.plot(*zip(*points), "o-", label=f"validation {key}")
    ax.set_xlabel("step")
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
