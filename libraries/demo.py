"""The demo: the whole DeepSUM pipeline, end to end, in one command.

`python -m libraries demo` (what `bash run.sh demo` runs) does, on the embedded synthetic
PROBA-V set (generated when absent):

1. data        `synthetic.write_dataset` -> a PROBA-V folder (train/, test/, norm.csv)
2. prepare     `dataset.prepare`: split, filters, upsampling, registration, patches, best-9
3. pretrain    SISRNet, then RegNet on planted shifts (`libraries.training.pretraining`)
4. train       DeepSUM on NIR, then RED fine-tuned from NIR, as the authors did
5. validate    sliding-window evaluation against the bicubic baseline (`libraries.inference`)
6. submit      the test split super-resolved into a Kelvins zip, validated
7. report      figures (per band: training curves, sliding window, one validation scene with its
               error maps) and a final table: validation cPSNR and score of bicubic and DeepSUM

With `--data DIR` (a real PROBA-V folder) the same steps run with the paper's configs
(`config_files/DeepSUM_config_{NIR,RED}.json` and the two pretraining configs); pretraining is
skipped where the configured pretraining folder already holds a checkpoint (e.g. the
authors', see `python -m libraries fetch-weights`). Every step that finds its output already
complete skips or resumes, so the command can be rerun after an interruption; validation,
submission and figures are made once for each pair of checkpoints (`results.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from libraries import checkpoints, dataset, domain, fileio, inference, metrics, probav, reports, synthetic
from libraries import config as config_module
from libraries.config import REPOSITORY_ROOT, RegNetPretrainConfig, SISRNetPretrainConfig
from libraries.training import deepsum as deepsum_training
from libraries.training import loop, pretraining

BANDS = domain.BANDS
DEMO_OUT = REPOSITORY_ROOT / "outputs" / "demo"
DEMO_CONFIGS = REPOSITORY_ROOT / "config_files" / "demo"
PAPER_CONFIGS = REPOSITORY_ROOT / "config_files"


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """Where every step reads and writes, and the configs it runs with."""

    out_dir: Path
    data_dir: Path
    dataset_dir: Path
    synthetic: bool
    deepsum: dict[str, config_module.DeepSUMConfig]  # band -> config
    sisrnet: SISRNetPretrainConfig
    regnet: RegNetPretrainConfig
    patch_size: int
    n_chunks: int
    seed: int


def make_plan(out_dir: str | Path = DEMO_OUT, data_dir: str | Path | None = None, seed: int = 0,
              steps: int | None = None, pretrain_steps: int | None = None, patch_size: int | None = None,
              n_features: int | None = None, precision: str | None = None) -> DemoPlan:
    """Resolve the configs of a run: the demo presets (synthetic data) or the paper's (`data_dir`).

    Every output path is redirected into `out_dir`; `steps`, `pretrain_steps`, `patch_size` and
    `n_features` override the configs (tests use tiny values); `precision` (a `--precision`
    value) every config's precision.
    """
    out_dir = fileio.require_folder_path(Path(out_dir).absolute(), "demo output folder")
    synthetic = data_dir is None
    folder, suffix = (DEMO_CONFIGS, "_demo") if synthetic else (PAPER_CONFIGS, "")
    dataset_dir = out_dir / "dataset"
    sisrnet_dir, regnet_dir = out_dir / "pretraining" / "SISRNet", out_dir / "pretraining" / "RegNet"
    deepsum = {}
    for band in BANDS:
        name = f"DeepSUM_config_demo_{band}.json" if synthetic else f"DeepSUM_config_{band}.json"
        cfg = config_module.load_config(folder / name)
        changes: dict[str, Any] = dict(dataset_path=dataset_dir, checkpoint_dir=out_dir / "checkpoints" / f"DeepSUM_{band}",
                                       spectral_band=band)
        if synthetic:
            changes.update(SISRNet_pretrain_dir=sisrnet_dir, RegNet_pretrain_dir=regnet_dir,
                           base_dir=out_dir / "probav_data")
        else:
            changes["base_dir"] = Path(data_dir).absolute()
        if steps is not None:
            changes["max_steps"] = steps if band == "NIR" else max(1, steps // 2)
            changes["skip_step"] = min(cfg.skip_step, changes["max_steps"])
        if patch_size is not None:
            changes.update(patch_size_HR=(patch_size, patch_size), patch_size_LR=(patch_size // 3, patch_size // 3))
        if n_features is not None:
            changes["n_features"] = n_features
        if precision is not None:
            changes["precision"] = precision
        deepsum[band] = cfg.replace(**changes)
    nir = deepsum["NIR"]
    pretrain_changes: dict[str, Any] = dict(dataset_path=dataset_dir, spectral_band="NIR")
    if n_features is not None:
        pretrain_changes["n_features"] = n_features
    if precision is not None:
        pretrain_changes["precision"] = precision
    sisrnet = config_module.load_config(folder / f"SISRNet_pretrain_config{suffix}.json", SISRNetPretrainConfig)
    regnet = config_module.load_config(folder / f"RegNet_pretrain_config{suffix}.json", RegNetPretrainConfig)
    # Pretraining writes where DeepSUM's configs look for it, whatever the pretraining configs say.
    sisrnet = sisrnet.replace(checkpoint_dir=nir.SISRNet_pretrain_dir, **pretrain_changes)
    regnet = regnet.replace(checkpoint_dir=nir.RegNet_pretrain_dir, SISRNet_pretrain_dir=nir.SISRNet_pretrain_dir,
                            **pretrain_changes)
    if pretrain_steps is not None:
        sisrnet = sisrnet.replace(steps=pretrain_steps, skip_step=pretrain_steps)
        regnet = regnet.replace(steps=pretrain_steps, skip_step=pretrain_steps)
    if patch_size is not None:
        sisrnet = sisrnet.replace(patch_size=min(sisrnet.patch_size, patch_size))
        regnet = regnet.replace(patch_size=min(regnet.patch_size, patch_size))
    return DemoPlan(out_dir=out_dir, data_dir=out_dir / "probav_data" if synthetic else Path(data_dir).absolute(),
                    dataset_dir=dataset_dir, synthetic=synthetic, deepsum=deepsum, sisrnet=sisrnet, regnet=regnet,
                    patch_size=nir.patch_size_HR[0], n_chunks=nir.n_chunks, seed=seed)


# --------------------------------------------------------------------------- the steps


def make_data(plan: DemoPlan, n_scenes: int = 14, n_test_scenes: int = 4, lr_size: int = 128,
              progress: bool = True) -> str:
    """Write the synthetic PROBA-V set unless it (or a real folder) is already there."""
    if not plan.synthetic or (plan.data_dir / "norm.csv").is_file():
        return f"using {plan.data_dir}"
    synthetic.write_dataset(plan.data_dir, plan.seed, n_scenes=n_scenes, n_test_scenes=n_test_scenes, lr_size=lr_size,
                             progress=progress)
    return f"wrote {n_scenes} train + {n_test_scenes} test synthetic scenes per band ({lr_size}x{lr_size} LR) to {plan.data_dir}"


def prepare_data(plan: DemoPlan, progress: bool = True) -> str:
    """Create the training, validation and test sets unless every band's manifest exists."""
    if all((plan.dataset_dir / band / "manifest.json").is_file() for band in BANDS):
        return f"using {plan.dataset_dir}"
    manifests = dataset.prepare(plan.data_dir, plan.dataset_dir, bands=BANDS, seed=plan.seed, n_chunks=plan.n_chunks,
                                patch_size=plan.patch_size, progress=progress)
    return f"prepared {', '.join(manifests)} into {plan.dataset_dir}"


def pretrain(plan: DemoPlan, progress: bool = True) -> dict[str, float]:
    """Pretrain SISRNet then RegNet where the configured folder holds no finished run.

    A folder with a checkpoint resumes to the configured step count (a finished run returns
    at once); the authors' checkpoints, if put there, are used as they are (real data only).
    """
    results: dict[str, float] = {}
    if plan.synthetic or not checkpoints.has_checkpoint(plan.sisrnet.checkpoint_dir):
        history = pretraining.pretrain_sisrnet(plan.sisrnet, progress=progress)
        if history.get("loss"):
            results["sisrnet_loss"] = float(np.mean(history["loss"][-10:]))
            results["sisrnet_bicubic_loss"] = float(np.mean(history["bicubic_loss"][-10:]))
    if plan.synthetic or not checkpoints.has_checkpoint(plan.regnet.checkpoint_dir):
        history = pretraining.pretrain_regnet(plan.regnet, progress=progress)
        if history["validation"]:
            results["regnet_heldout_accuracy"] = float(history["validation"][-1]["heldout_accuracy"])
    return results


def train(plan: DemoPlan, progress: bool = True) -> dict[str, Any]:
    """Train NIR from the pretrained SISRNet and RegNet, then RED fine-tuned from NIR.
    Returns {band: {"history": `logged_history`, "steps", "seconds" of each step trained now}}."""
    results = {}
    for band in BANDS:
        cfg = plan.deepsum[band]
        init_from = None
        if band == "RED" and not checkpoints.has_checkpoint(cfg.checkpoint_dir):
            init_from = plan.deepsum["NIR"].checkpoint_dir  # the authors fine-tuned RED from NIR
        trainer = deepsum_training.Trainer(cfg, init_from=init_from, progress=progress)
        seconds = trainer.train(cfg.max_steps)["seconds"]
        # the logs hold every step of the folder, also those of an earlier, interrupted run
        results[band] = {"history": loop.logged_history(cfg.checkpoint_dir), "steps": int(trainer.step), "seconds": seconds}
    return results


def best_checkpoint(cfg: config_module.DeepSUMConfig) -> Path:
    """The checkpoint with the best validation score, else the latest one."""
    best = Path(cfg.checkpoint_dir) / "best"
    return best if checkpoints.has_checkpoint(best) else Path(cfg.checkpoint_dir)


def superresolvers(plan: DemoPlan) -> dict[str, inference.Superresolver]:
    """{band: the `Superresolver` of the band's best checkpoint}: one per band, so validation
    and submission share its compiled functions."""
    return {band: inference.Superresolver(inference.load_model(plan.deepsum[band], best_checkpoint(plan.deepsum[band])),
                                          plan.deepsum[band]) for band in BANDS}


def validate(plan: DemoPlan, superresolver_of: dict[str, inference.Superresolver], n_slides: tuple[int, ...] = (0, 1, 2),
             progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Sliding-window evaluation of each band's best model (`superresolvers`) on its validation
    scenes: (rows of `inference.evaluate_sliding_window` with their band, {band: `example_scene`})."""
    rows, examples = [], {}
    for band in BANDS:
        superresolver = superresolver_of[band]
        scenes = dataset.load_scenes(plan.dataset_dir, band, "validation")
        for row in inference.evaluate_sliding_window(superresolver, scenes, n_slides, progress=progress):
            rows.append({"band": band, **row})
        examples[band] = example_scene(plan, band, superresolver, scenes)
    return rows, examples


def example_scene(plan: DemoPlan, band: str, superresolver: inference.Superresolver,
                  scenes: dict[str, np.ndarray]) -> dict[str, Any]:
    """The validation scene whose network input has the most cloudy pixels (so the figure shows
    how DeepSUM fills them), super-resolved with its best 9 frames (n_slide 0): the arguments
    of `reports.plot_validation_scene` plus `name`, `cpsnr` and `bicubic_cpsnr` (dB).
    """
    cfg = plan.deepsum[band]
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
    lr_scene = probav.read_scene(plan.data_dir / "train" / band / scene["name"], band=band, split="train")
    return {"name": scene["name"], "lr": lr_scene.lr[lr_scene.frame_names.index(str(reference))], "bicubic": bicubic,
            "sr": sr, "hr": hr, "bicubic_error": metrics.kelvins_error_map(bicubic, hr, hr_clear),
            "sr_error": metrics.kelvins_error_map(sr, hr, hr_clear), "filled": filled[index],
            "cpsnr": metrics.kelvins_cpsnr(sr, hr, hr_clear), "bicubic_cpsnr": metrics.kelvins_cpsnr(bicubic, hr, hr_clear)}


def submit(plan: DemoPlan, superresolver_of: dict[str, inference.Superresolver], n_slide: int = 0,
           progress: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """Super-resolve the test split of both bands (`superresolvers`) into a validated Kelvins zip."""
    images: dict[str, np.ndarray] = {}
    for band in BANDS:
        images.update(superresolver_of[band].folder(plan.data_dir, "test", [band], n_slide, progress=progress))
    zip_path = inference.write_submission(images, plan.out_dir / "submission.zip")
    inference.validate_submission(zip_path, plan.data_dir / "test", bands=BANDS)
    return zip_path, images


SEAM_NOTE = ("A seam at a cloud edge in the DeepSUM image comes from the fill of cloudy pixels: before the fusion "
             "each frame's cloudy pixels take the value of the first frame clear there (fill_masked, the authors' "
             "design), so where frames differ in brightness or registration the edge of the fill shows.")


def save_figures(plan: DemoPlan, rows: list[dict[str, Any]], trained: dict[str, Any], images: dict[str, np.ndarray],
                 examples: dict[str, dict[str, Any]]) -> list[Path]:
    """Training curves, the sliding-window plots, one validation scene per band with its error
    maps, and LR / bicubic / SR of one test scene, as PNG."""
    folder = plan.out_dir / "figures"
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
    figure = inference.plot_scene(plan.data_dir, "test", name, images[name])
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


def final_table(rows: list[dict[str, Any]]) -> tuple[str, dict[str, bool]]:
    """The validation table (band, method, n_slide, cPSNR, score) and, per band, whether the best
    DeepSUM row beat the bicubic baseline's score (lower is better)."""
    table = reports.format_table(("band", "method", "n_slide", "cPSNR (dB)", "score", "scenes"),
                                 [(row["band"], row["method"], row["n_slide"], row["cpsnr"], row["score"], row["scenes"])
                                  for row in rows], digits=(0, 0, 0, 3, 4, 0))
    verdict = {}
    for band in BANDS:
        band_rows = [row for row in rows if row["band"] == band]
        bicubic = [row["score"] for row in band_rows if row["method"] == "bicubic"]
        deepsum = [row["score"] for row in band_rows if row["method"] != "bicubic"]
        if bicubic and deepsum:
            verdict[band] = min(deepsum) < bicubic[0]
    return table, verdict


RESULTS = "results.json"  # the validation rows, submission and figures of the checkpoints it names
RESULT_KEYS = {"checkpoints", "n_slides", "rows", "submission", "figures"}


def results_key(plan: DemoPlan, n_slides: tuple[int, ...]) -> dict[str, Any]:
    """What the validation, submission and figures follow from: each band's checkpoint and n_slide."""
    return {"checkpoints": {band: checkpoints.resolve_prefix(best_checkpoint(plan.deepsum[band])) for band in BANDS},
            "n_slides": list(n_slides)}


def previous_results(plan: DemoPlan, n_slides: tuple[int, ...]) -> dict[str, Any] | None:
    """`results.json` of an earlier run when it follows from the same checkpoints and n_slide and
    its submission and figures are still there, else None (they are made again)."""
    path = plan.out_dir / RESULTS
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
        problem = None if isinstance(results, dict) and RESULT_KEYS <= set(results) else f"expected {sorted(RESULT_KEYS)}"
    except ValueError as error:
        problem = f"{type(error).__name__}: {error}"
    if problem:  # edited or damaged by hand: made again
        print(f"{path}: not a results file of this demo ({problem}); validating again")
        return None
    if any(results[key] != value for key, value in results_key(plan, n_slides).items()):
        return None
    return results if all(Path(name).is_file() for name in [results["submission"], *results["figures"]]) else None


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (`prepare`'s workers), in s:
    on a machine shared with other work, a measure of the demo's own cost beside its wall time."""
    return float(sum(os.times()[:4]))


def run_pipeline(plan: DemoPlan, n_scenes: int = 14, n_test_scenes: int = 4, lr_size: int = 128,
             n_slides: tuple[int, ...] = (0, 1, 2), progress: bool = True) -> dict[str, Any]:
    """Run every step, printing what each did and its wall time; return the results."""
    timings: dict[str, float] = {}
    started, started_cpu = time.perf_counter(), cpu_seconds()

    def step(name: str, function, *args, **kwargs):
        print(f"\n== {name} ==", flush=True)
        begin, begin_cpu = time.perf_counter(), cpu_seconds()
        result = function(*args, **kwargs)
        timings[name] = time.perf_counter() - begin
        if isinstance(result, str):
            print(result)
        print(f"   ({timings[name]:.0f} s, CPU {cpu_seconds() - begin_cpu:.0f} s)", flush=True)
        return result

    step("data", make_data, plan, n_scenes, n_test_scenes, lr_size, progress)
    step("prepare", prepare_data, plan, progress)
    pretrained = step("pretrain", pretrain, plan, progress)
    for key, value in pretrained.items():
        print(f"   {key}: {value:.4f}")
    trained = step("train", train, plan, progress)
    for band, result in trained.items():
        losses = " ".join(f"{entry['step']}:{entry['loss']:.3f}" for entry in result["history"]["validation"])
        pace = f", median {np.median(result['seconds']):.2f} s a step" if result["seconds"] else ""
        print(f"   {band}: {result['steps']} steps{pace}; validation loss at step:value {losses}")
    results = previous_results(plan, n_slides)
    if results is None:  # validate, submit and draw for these checkpoints, once
        superresolver_of = superresolvers(plan)
        rows, examples = step("validate", validate, plan, superresolver_of, n_slides, progress)
        zip_path, images = step("submit", submit, plan, superresolver_of, max(n_slides), progress)
        print(f"   {zip_path}: {len(images)} test scenes, validated")
        figures = step("figures", save_figures, plan, rows, trained, images, examples)
        results = {**results_key(plan, n_slides), "submission": str(zip_path), "figures": [str(f) for f in figures],
                   "rows": [{key: value.item() if isinstance(value, np.generic) else value for key, value in row.items()}
                            for row in rows]}
        fileio.save_json(plan.out_dir / RESULTS, results)  # last: its presence means all of the above is complete
    else:
        print(f"\n== validate, submit, figures ==\nusing {plan.out_dir / RESULTS} (the same checkpoints and n_slide)")
    rows, zip_path, figures = results["rows"], Path(results["submission"]), [Path(f) for f in results["figures"]]
    table, verdict = final_table(rows)
    total = time.perf_counter() - started
    print(f"\n== validation: DeepSUM against the bicubic baseline (score: lower is better) ==\n{table}")
    for band, better in verdict.items():
        word = "beat" if better else "did NOT beat"
        print(f"DeepSUM {word} the bicubic baseline on {band} validation "
              f"({'synthetic demo data, short CPU training' if plan.synthetic else str(plan.data_dir)}).")
    print(f"submission: {zip_path}\nfigures: {', '.join(str(path) for path in figures)}\n"
          f"wall time: {total:.0f} s (CPU {cpu_seconds() - started_cpu:.0f} s)")
    return {"rows": rows, "verdict": verdict, "submission": zip_path, "figures": figures, "timings": timings,
            "pretrained": pretrained, "seconds": total}


# --------------------------------------------------------------------------- command line


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    at_least = config_module.integer_at_least
    parser.add_argument("--out", type=Path, default=DEMO_OUT, help="output folder (default outputs/demo)")
    parser.add_argument("--data", type=Path, help="a real PROBA-V folder: run with the paper's configs instead")
    parser.add_argument("--seed", type=at_least(0), default=0, help="seed of the synthetic set and the split")
    parser.add_argument("--scenes", type=at_least(1), default=14, help="synthetic train scenes per band")
    parser.add_argument("--test-scenes", type=at_least(1), default=4, help="synthetic test scenes per band")
    parser.add_argument("--lr-size", type=at_least(synthetic.MIN_LR_SIZE), default=128, help="LR frame size (HR: 3x)")
    parser.add_argument("--steps", type=at_least(1), help="DeepSUM training steps for NIR (RED gets half)")
    parser.add_argument("--pretrain-steps", type=at_least(1), help="steps of each pretraining")
    parser.add_argument("--patch-size", type=at_least(1), help="training patch size on the HR grid")
    parser.add_argument("--features", type=at_least(1), help="feature width of every sub-network")
    parser.add_argument("--n-slide", type=at_least(0), default=2, help="largest sliding-window n_slide evaluated")
    config_module.add_precision_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_demo(args: argparse.Namespace) -> int:
    if args.data is not None and not args.data.is_dir():  # before anything is written
        raise probav.ProbaVError(f"{args.data}: folder missing (expected a PROBA-V folder with norm.csv, train/ and test/)")
    plan = make_plan(args.out, args.data, args.seed, args.steps, args.pretrain_steps, args.patch_size, args.features,
                     args.precision)
    run_pipeline(plan, args.scenes, args.test_scenes, args.lr_size, tuple(range(args.n_slide + 1)), not args.no_progress)
    return 0

