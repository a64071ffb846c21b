"""How realistic the synthetic PROBA-V set is: statistics of its LR frames next to real ones.

    python bench/synthetic_realism.py --real ../shared/data/probav_real/lr_only [--scenes 8]

Prints a Markdown table: per group (real NIR, real RED, synthetic NIR, synthetic RED) the
median over scenes of value percentiles, fine texture, noise, spectral slope and gain changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from libraries import domain, probav, synthetic  # noqa: E402


def frame_statistics(frames: np.ndarray) -> dict[str, float]:
    """Statistics of one scene's LR frames [frames, h, w] (corrupt frames left out).

    p1/p50/p99: value percentiles; highpass_std: median over frames of the std of the frame
    minus its 3x3 mean (fine texture + noise); noise_std: median of Immerkaer's noise
    estimate; psd_slope: slope of the log radially averaged power spectrum over
    0.04-0.25 cycles/pixel; gain_cv: std / mean of the frame means (brightness changes).
    """
    frames = np.asarray(frames, dtype=np.float64)
    frames = frames[frames.max(axis=(1, 2)) <= domain.CORRUPT_VALUE]
    p1, p50, p99 = np.percentile(frames, [1, 50, 99])
    highpass = frames - ndimage.uniform_filter(frames, size=(1, 3, 3), mode="reflect")
    laplacian = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)[None]
    response = np.abs(ndimage.convolve(frames, laplacian, mode="reflect"))[:, 1:-1, 1:-1]
    noise = np.sqrt(np.pi / 2) / 6 * response.mean(axis=(1, 2))  # Immerkaer 1996
    means = frames.mean(axis=(1, 2))
    return {
        "p1": float(p1), "p50": float(p50), "p99": float(p99),
        "highpass_std": float(np.median(highpass.std(axis=(1, 2)))),
        "noise_std": float(np.median(noise)),
        "psd_slope": _psd_slope(frames),
        "gain_cv": float(means.std() / means.mean()),
    }


def _psd_slope(frames: np.ndarray) -> float:
    """Log-log slope of the radially averaged power spectrum of [frames, h, w]."""
    height, width = frames.shape[1:]
    window = np.outer(np.hanning(height), np.hanning(width))
    centred = (frames - frames.mean(axis=(1, 2), keepdims=True)) * window
    power = (np.abs(np.fft.fft2(centred)) ** 2).mean(axis=0)  # [h, w]
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    edges = np.geomspace(0.04, 0.25, 12)
    ring = np.digitize(radius, edges).ravel()  # 0 and len(edges) lie outside the fit range
    inside = (ring > 0) & (ring < len(edges))
    counts = np.bincount(ring[inside], minlength=len(edges))[1:]
    centres = np.bincount(ring[inside], radius.ravel()[inside], len(edges))[1:] / counts
    levels = np.bincount(ring[inside], power.ravel()[inside], len(edges))[1:] / counts
    return float(np.polyfit(np.log(centres), np.log(levels), 1)[0])


STATISTICS = ("p1", "p50", "p99", "highpass_std", "noise_std", "psd_slope", "gain_cv")


def statistics_table(groups: Mapping[str, Sequence[np.ndarray]]) -> str:
    """Markdown table: per group (e.g. "real NIR") the median over scenes of `frame_statistics`.

    groups: label -> list of [frames, h, w] arrays (one per scene).
    """
    header = "| statistic | " + " | ".join(groups) + " |"
    rows = [header, "|---" * (len(groups) + 1) + "|"]
    table = {label: [frame_statistics(frames) for frames in scenes] for label, scenes in groups.items()}
    for key in STATISTICS:
        medians = [float(np.median([s[key] for s in stats])) for stats in table.values()]
        cells = [f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" for value in medians]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="PROBA-V folder of real scenes (SPLIT/BAND/imgset*)")
    parser.add_argument("--scenes", type=int, default=8, help="synthetic scenes per band")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    groups: dict[str, list[np.ndarray]] = {}
    for folder in sorted(args.real.glob("*/*/imgset*")):
        scene = probav.read_scene(folder, masks="assume_clear")
        groups.setdefault(f"real {scene.band}", []).append(scene.lr)
    with tempfile.TemporaryDirectory() as work:
        synthetic.write_dataset(Path(work), args.seed, n_scenes=args.scenes, n_test_scenes=1, progress=False)
        for band in domain.BANDS:
            groups[f"synthetic {band}"] = [probav.read_scene(folder).lr
                                           for folder in probav.list_scenes(work, "train", band)]
    print(statistics_table(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
