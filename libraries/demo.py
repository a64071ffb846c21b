"""The demo: the whole DeepSUM pipeline, end to end, in one command.

`python -m libraries demo` (what `bash run.sh demo` runs) does, on the embedded synthetic
PROBA-V set (generated when absent):

1. data        `synthetic.write_dataset` -> a PROBA-V folder (train/, test/, norm.csv)
2. prepare     `dataset.prepare`: split, filters, upsampling, registration, patches, best-9
3. pretrain    SISRNet, then RegNet on planted shifts (`libraries.training.pretraining`)
4. train       DeepSUM on NIR, then RED fine-tuned from NIR, as the authors did
5. validate    sliding-window evaluation against the bicubic baseline (`libraries.inference`)
6. submit      the test split super-resolved into a Kelvins zip, validated
7. report      figures (`demo_figures`; per band: training curves, sliding window, one validation
               scene with its error maps) and a final table: validation cPSNR and score of bicubic
               and DeepSUM

With `--data DIR` (a real PROBA-V folder) the same steps run with the paper's configs
(`config_files/DeepSUM_config_{NIR,RED}.json` and the two pretraining configs), every output still
inside `--out`; pretraining is skipped where `OUT/pretraining/SISRNet` (`RegNet`) already holds a
checkpoint (e.g. a copy of the authors', which `python -m libraries fetch-weights` puts in
`pretraining_checkpoints/`). Every step that finds its output already complete skips or resumes,
so the command can be rerun with the same options after an interruption (other data options or
`--features` are refused before any work, `demo_plan.check_out_folder`); validation, submission
and figures are made once for each pair of checkpoints (`results.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from libraries import arguments, checkpoints, dataset, demo_figures, domain, fileio, inference, probav, reports, synthetic
from libraries import config as config_module
from libraries.demo_plan import BANDS, DEMO_OUT, DemoPlan, check_out_folder, load_presets, make_plan
from libraries.training import deepsum as deepsum_training
from libraries.training import loop, pretraining

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

    A folder of this project's checkpoints resumes to the configured step count (a finished run
    returns at once); the authors' TF1 checkpoints, if put there, are used as they are (real
    data only: the synthetic presets have other feature widths).
    """
    results: dict[str, float] = {}
    if plan.synthetic or not holds_authors_checkpoint(plan.sisrnet.checkpoint_dir):
        history = pretraining.pretrain_sisrnet(plan.sisrnet, progress=progress)
        if history.get("loss"):
            results["sisrnet_loss"] = float(np.mean(history["loss"][-10:]))
            results["sisrnet_bicubic_loss"] = float(np.mean(history["bicubic_loss"][-10:]))
    if plan.synthetic or not holds_authors_checkpoint(plan.regnet.checkpoint_dir):
        history = pretraining.pretrain_regnet(plan.regnet, progress=progress)
        if history["validation"]:
            results["regnet_heldout_accuracy"] = float(history["validation"][-1]["heldout_accuracy"])
    return results


def holds_authors_checkpoint(folder: Path) -> bool:
    """True when `folder`'s latest checkpoint is a TF1 one (the authors' format; ours are TF2):
    an interrupted pretraining of ours resumes instead of being taken as finished."""
    return checkpoints.has_checkpoint(folder) and not checkpoints.is_object_based(checkpoints.open_checkpoint(folder)[1])


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
    scenes: (rows of `inference.evaluate_sliding_window` with their band,
    {band: `demo_figures.example_scene`})."""
    rows, examples = [], {}
    for band in BANDS:
        superresolver = superresolver_of[band]
        scenes = dataset.load_scenes(plan.dataset_dir, band, "validation")
        for row in inference.evaluate_sliding_window(superresolver, scenes, n_slides, progress=progress):
            rows.append({"band": band, **row})
        examples[band] = demo_figures.example_scene(plan.deepsum[band], plan.data_dir, superresolver, scenes)
    return rows, examples


def submit(plan: DemoPlan, superresolver_of: dict[str, inference.Superresolver], n_slide: int = 0,
           progress: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """Super-resolve the test split of both bands (`superresolvers`) into a validated Kelvins zip."""
    images: dict[str, np.ndarray] = {}
    for band in BANDS:
        images.update(superresolver_of[band].folder(plan.data_dir, "test", [band], n_slide, progress=progress))
    zip_path = inference.write_submission(images, plan.out_dir / "submission.zip")
    inference.validate_submission(zip_path, plan.data_dir / "test", bands=BANDS)
    return zip_path, images


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
        figures = step("figures", demo_figures.save_figures, plan.out_dir / "figures", plan.data_dir, rows, trained,
                       images, examples)
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


def patch_size_argument(text: str) -> int:
    """An argparse `type`: a training patch size on the HR grid, a multiple of the scale."""
    value = arguments.integer_at_least(domain.SCALE)(text)
    if value % domain.SCALE:  # patch_size_LR is patch_size_HR / 3
        raise argparse.ArgumentTypeError(f"expected a multiple of {domain.SCALE} (the scale), got {value}")
    return value


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    at_least = arguments.integer_at_least
    (demo, demo_sisrnet, demo_regnet), (paper, paper_sisrnet, paper_regnet) = load_presets(True), load_presets(False)

    def steps(deepsum: dict[str, config_module.DeepSUMConfig]) -> str:
        nir, red = (deepsum[band].max_steps for band in BANDS)
        return "until interrupted" if nir == red == 0 else f"NIR {nir}, RED {red}"

    parser.add_argument("--out", type=Path, default=DEMO_OUT, help="output folder (default outputs/demo)")
    parser.add_argument("--data", type=Path, help="a real PROBA-V folder: run with the paper's configs instead")
    parser.add_argument("--seed", type=at_least(0), default=0, help="seed of the synthetic set and the split "
                                                                    "(default %(default)s)")
    parser.add_argument("--scenes", type=at_least(1), default=14, help="synthetic train scenes per band "
                                                                       "(default %(default)s)")
    parser.add_argument("--test-scenes", type=at_least(1), default=4, help="synthetic test scenes per band "
                                                                           "(default %(default)s)")
    parser.add_argument("--lr-size", type=at_least(synthetic.MIN_LR_SIZE), default=128,
                        help="LR frame size, HR: 3x (default %(default)s)")
    parser.add_argument("--steps", type=at_least(1), help=f"DeepSUM training steps for NIR, RED gets half (default "
                                                          f"{steps(demo)} on the synthetic set; {steps(paper)} with --data)")
    parser.add_argument("--pretrain-steps", type=at_least(1), help=f"steps of each pretraining (default SISRNet "
                        f"{demo_sisrnet.steps}, RegNet {demo_regnet.steps} on the synthetic set; SISRNet "
                        f"{paper_sisrnet.steps}, RegNet {paper_regnet.steps} with --data)")
    parser.add_argument("--patch-size", type=patch_size_argument, help=f"training patch size on the HR grid, a multiple "
                        f"of {domain.SCALE} (default {demo['NIR'].patch_size_HR[0]} on the synthetic set, "
                        f"{paper['NIR'].patch_size_HR[0]} with --data)")
    parser.add_argument("--features", type=at_least(1), help=f"feature width of every sub-network (default "
                        f"{demo['NIR'].n_features} on the synthetic set, {paper['NIR'].n_features} with --data)")
    parser.add_argument("--n-slide", type=at_least(0), default=2, help="largest sliding-window n_slide evaluated "
                                                                       "(default %(default)s)")
    arguments.add_precision_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_demo(args: argparse.Namespace) -> int:
    if args.data is not None and not args.data.is_dir():  # before anything is written
        raise probav.ProbaVError(f"{args.data}: folder missing (expected a PROBA-V folder with norm.csv, train/ and test/)")
    out = Path(args.out).absolute()
    created = fileio.folders_to_create(out)
    try:
        plan = make_plan(out, args.data, args.seed, args.steps, args.pretrain_steps, args.patch_size, args.features,
                         args.precision)
        check_out_folder(plan, args.scenes, args.test_scenes, args.lr_size)
        run_pipeline(plan, args.scenes, args.test_scenes, args.lr_size, tuple(range(args.n_slide + 1)),
                     not args.no_progress)
    except BaseException:
        fileio.remove_empty_folders(created)  # an error leaves no empty --out behind
        raise
    return 0
