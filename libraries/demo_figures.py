"""The demo's figures: training curves, the sliding window per band, the cloudiest validation
scene of each band with its error maps, and one test scene, as PNG files.

`demo.run_pipeline` draws them once for each pair of checkpoints; `example_scene` picks and
super-resolves the validation scene shown.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from libraries import config, domain, fileio, inference, metrics, probav, reports

BANDS = domain.BANDS


def example_scene(cfg: config.DeepSUMConfig, data_dir: Path, superresolver: inference.Superresolver,
                  scenes: dict[str, np.ndarray]) -> dict[str, Any]:
    """The validation scene whose network input has the most cloudy pixels (so the figure shows
    how DeepSUM fills them), super-resolved with its best 9 frames (n_slide 0): the arguments
    of `reports.plot_validation_scene` plus `name`, `cpsnr` and `bicubic_cpsnr` (dB). `scenes`:
    the validation scenes of `cfg`'s band (`dataset.load_scenes`); `data_dir`: the PROBA-V folder
    they were prepared from (the LR frame shown is read there).
    """
    band = cfg.spectral_band
    candidates = list(inference.iterate_scenes(scenes))
    filled = []
    for scene in candidates:
        clear = inference.window_inputs(scene, cfg, 0)[1][0, ..., 0] > 0  # [1, T, H, W, 1] -> [T, H, W]
        # fill_masked replaces a cloudy pixel only where another frame is clear there
        filled.append(np.where(clear.any(axis=0), np.count_nonzero(~clear, axis=0), 0))  # [H, W]
    index = int(np.argmax([count.sum() for count in filled]))
    scene = candidates[index]
    sr, bicubic = superresolver.scene(scene, 0), inference.bicubic_baseline(scene)
    hr, hr_clear = np.asarray(scene["hr"]), np.asarray(scene["hr_clear"])
    reference = inference.select_clear_frames(inference.sort_frames_by_clearance(scene), cfg.T_in)["frame_names"][0]
    lr_scene = probav.read_scene(Path(data_dir) / "train" / band / scene["name"], band=band, split="train")
    return {"name": scene["name"], "lr": lr_scene.lr[lr_scene.frame_names.index(str(reference))], "bicubic": bicubic,
            "sr": sr, "hr": hr, "bicubic_error": metrics.kelvins_error_map(bicubic, hr, hr_clear),
            "sr_error": metrics.kelvins_error_map(sr, hr, hr_clear), "filled": filled[index],
            "cpsnr": metrics.kelvins_cpsnr(sr, hr, hr_clear), "bicubic_cpsnr": metrics.kelvins_cpsnr(bicubic, hr, hr_clear)}


SEAM_NOTE = ("A seam at a cloud edge in the DeepSUM image comes from the fill of cloudy pixels: before the fusion "
             "each frame's cloudy pixels take the value of the first frame clear there (fill_masked, the authors' "
             "design), so where frames differ in brightness or registration the edge of the fill shows.")


def save_figures(folder: Path, data_dir: Path, rows: list[dict[str, Any]], trained: dict[str, Any],
                 images: dict[str, np.ndarray], examples: dict[str, dict[str, Any]]) -> list[Path]:
    """Training curves, the sliding-window plots, one validation scene per band with its error
    maps (`example_scene` of each band), and LR / bicubic / SR of one test scene of `data_dir`
    (`images`: {name: SR image}), as PNG files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [_save(reports.plot_training_runs({band: result["history"] for band, result in trained.items()}),
                     folder / "training.png")]
    for band in BANDS:
        band_rows = [row for row in rows if row["band"] == band]
        figure = inference.plot_sliding_window(band_rows)
        figure.suptitle(f"validation, {band}")
        written.append(_save(figure, folder / f"sliding_window_{band}.png"))
    for band, example in examples.items():  # at dpi 120 a 384-pixel image is shown at about its size
        written.append(_save(validation_figure(band, example), folder / f"validation_{band}.png", dpi=120))
    name = sorted(images)[0]
    figure = inference.plot_scene(data_dir, "test", name, images[name])
    figure.text(0.5, 0.0, textwrap.fill(SEAM_NOTE, 150), ha="center", va="top", fontsize=10)
    written.append(_save(figure, folder / f"test_{name}.png"))
    plt.close("all")
    return written


def validation_figure(band: str, example: dict[str, Any]):
    """`reports.plot_validation_scene` of an `example_scene`, with its cPSNRs and, when pixels
    were filled, where the seams at cloud edges come from."""
    note = (f"Best 9 frames (n_slide 0): DeepSUM {example['cpsnr']:.2f} dB cPSNR, bicubic "
            f"{example['bicubic_cpsnr']:.2f} dB. Error maps at the best of the 49 offsets of the score, "
            "brightness bias removed.")
    cloudy = bool(example["filled"].any())
    title = f"{band} validation scene {example['name']}" + (" (the cloudiest)" if cloudy else " (no cloud in its 9 frames)")
    return reports.plot_validation_scene(*(example[key] for key in ("lr", "bicubic", "sr", "hr", "bicubic_error",
                                         "sr_error", "filled")), title, note + (" " + SEAM_NOTE if cloudy else ""))


def _save(figure, path: Path, dpi: int = 90) -> Path:
    with fileio.atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight")
    return path


