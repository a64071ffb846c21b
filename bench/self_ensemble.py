"""Test-time self-ensemble (the 8 flips and rotations) against the authors' inference, on the
demo's validation scenes of both bands: cPSNR, score and seconds per scene for each n_slide.

    .venv/bin/python bench/self_ensemble.py [--demo-out outputs/demo] [--n-slides 0 1 2] [--quick]

Reads what `python -m libraries demo` wrote to `--demo-out`: each band's trained config
(`checkpoints/DeepSUM_<band>/config.json`), its best checkpoint and the prepared validation set
(`dataset/`). `--quick` needs no demo: a tiny freshly initialised model (4 features) on a tiny
synthetic validation set (LR 16x16) written to a temporary folder, for tests. Prints a table
and writes `bench/results/self_ensemble.json` (`self_ensemble_quick.json`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import harness

from libraries import config as config_module
from libraries import dataset, demo, domain, inference, reports, synthetic

COLUMNS = ("band", "method", "n_slide", "self-ensemble", "cPSNR (dB)", "score", "s/scene", "scenes",
           "gain (dB)", "time x")


def demo_models(demo_out: Path) -> dict[str, tuple[inference.Superresolver, Path]]:
    """band -> (the Superresolver of the demo's best checkpoint, its prepared data set folder)."""
    plan = demo.make_plan(demo_out)
    models = {}
    for band in domain.BANDS:
        trained = Path(plan.deepsum[band].checkpoint_dir) / "config.json"
        if not trained.is_file():
            raise FileNotFoundError(f"{trained}: no trained DeepSUM {band} model (expected the output of "
                                    f"`python -m libraries demo --out {demo_out}`; or run this with --quick)")
        cfg = config_module.load_config(trained).replace(self_ensemble=False)
        model = inference.load_model(cfg, demo.best_checkpoint(cfg))
        models[band] = (inference.Superresolver(model, cfg), plan.dataset_dir)
    return models


def quick_models(folder: Path) -> dict[str, tuple[inference.Superresolver, Path]]:
    """A tiny freshly initialised model for both bands (traced once) and a tiny prepared set."""
    synthetic.write_dataset(folder / "probav", seed=0, n_scenes=3, n_test_scenes=1, lr_size=16, progress=False)
    dataset.prepare(folder / "probav", folder / "dataset", bands=domain.BANDS, n_chunks=1, patches_per_scene=1,
                    patch_size=24, processes=1, progress=False)
    cfg = config_module.default_config(n_features=4, seed=0)
    superresolver = inference.Superresolver(inference.load_model(cfg), cfg)
    return {band: (superresolver, folder / "dataset") for band in domain.BANDS}


def measure(models: dict[str, tuple[inference.Superresolver, Path]], n_slides: list[int]) -> list[dict]:
    """The rows of `inference.evaluate_sliding_window` with and without the self-ensemble, per band;
    each self-ensemble row with its cPSNR gain and time ratio over the row without it."""
    rows = []
    for band, (superresolver, dataset_dir) in models.items():
        scenes = dataset.load_scenes(dataset_dir, band, "validation")
        band_rows = inference.evaluate_sliding_window(superresolver, scenes, n_slides, self_ensemble=(False, True))
        plain = {row["n_slide"]: row for row in band_rows if row["self_ensemble"] is False}
        for row in band_rows:
            gain = {}
            if row["self_ensemble"]:
                reference = plain[row["n_slide"]]
                gain = {"cpsnr_gain": row["cpsnr"] - reference["cpsnr"], "time_ratio": row["seconds"] / reference["seconds"]}
            rows.append({"band": band, **row, **gain})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", type=Path, default=demo.DEMO_OUT, help="output folder of `python -m libraries demo`")
    parser.add_argument("--n-slides", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="no demo: a tiny model on a tiny synthetic set (for tests)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-self-ensemble-") as folder:
        try:
            models = quick_models(Path(folder)) if args.quick else demo_models(args.demo_out)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        rows = measure(models, args.n_slides)
    ensemble_cell = {None: None, False: "no", True: "yes"}
    table = reports.format_table(COLUMNS, [(row["band"], row["method"], row["n_slide"], ensemble_cell[row["self_ensemble"]],
                                            row["cpsnr"], row["score"], row["seconds"], row["scenes"],
                                            row.get("cpsnr_gain"), row.get("time_ratio")) for row in rows],
                                 digits=(0, 0, 0, 0, 3, 4, ".3g", 0, 3, ".3g"))
    source = "tiny synthetic set, freshly initialised 4-feature model" if args.quick else str(args.demo_out)
    print(f"\nself-ensemble on the validation scenes ({source})\n{table}")
    path = harness.save_result("self_ensemble_quick" if args.quick else "self_ensemble",
                               {"demo_out": None if args.quick else str(args.demo_out), "n_slides": args.n_slides,
                                "rows": rows, "machine": harness.machine()})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
