"""The demo end to end at a tiny size: synthetic data -> ... -> validated submission + table."""

import argparse
import dataclasses
import shutil
import zipfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from libraries import __main__ as cli, checkpoints, config, dataset, demo_figures, demo_plan, domain, fileio, inference
from libraries import demo, reports, synthetic
from libraries.model.deepsum import fill_masked
from libraries.training import loop


def test_demo_runs_end_to_end_and_reruns_from_its_outputs(tmp_path, capsys, caplog):
    matplotlib.use("Agg")
    caplog.set_level("INFO", logger="libraries")
    arguments = ["demo", "--out", str(tmp_path / "demo"), "--scenes", "6", "--test-scenes", "2", "--lr-size", "48",
                 "--steps", "6", "--pretrain-steps", "6", "--patch-size", "48", "--features", "8", "--n-slide", "0",
                 "--no-progress"]
    plan = demo.make_plan(tmp_path / "demo", steps=6, pretrain_steps=6, patch_size=48, n_features=8)
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "validation: DeepSUM against the bicubic baseline" in printed
    assert printed.count("the bicubic baseline on") == 2  # an honest verdict per band
    # the verdict follows from the printed table: the best DeepSUM score below bicubic's
    table = printed.split("(score: lower is better) ==\n")[1].split("\nDeepSUM ")[0]
    scores = {}
    for line in table.splitlines():
        fields = line.split()
        if fields and fields[0] in domain.BANDS:
            scores.setdefault((fields[0], fields[1]), []).append(float(fields[-2]))
    for band in domain.BANDS:
        beat = min(scores[(band, "DeepSUM")]) < scores[(band, "bicubic")][0]
        assert f"DeepSUM {'beat' if beat else 'did NOT beat'} the bicubic baseline on {band}" in printed
    submission = tmp_path / "demo" / "submission.zip"
    with zipfile.ZipFile(submission) as archive:
        assert len(archive.namelist()) == 4  # 2 test scenes per band
    for name in ("training.png", "sliding_window_NIR.png", "sliding_window_RED.png", "validation_NIR.png",
                 "validation_RED.png"):
        assert (tmp_path / "demo" / "figures" / name).stat().st_size > 1000
    summary = [line for line in printed.splitlines() if "validation loss at step:value" in line]
    trained = {}
    for band, line in zip(domain.BANDS, summary):
        # the curves come from the TensorBoard logs: read here by TensorBoard's own reader
        history = trained.setdefault(band, {"history": loop.logged_history(plan.deepsum[band].checkpoint_dir)})["history"]
        logs = {}
        for part in ("train", "validation"):
            accumulator = EventAccumulator(str(plan.deepsum[band].checkpoint_dir / "logs" / part), size_guidance={"tensors": 0})
            logs[part] = {event.step: float(tf.make_ndarray(event.tensor_proto))
                          for event in accumulator.Reload().Tensors("loss")}
        steps = 6 if band == "NIR" else 3
        assert history["step"] == list(range(1, steps + 1)) == sorted(logs["train"])
        np.testing.assert_allclose(history["loss"], [logs["train"][step] for step in history["step"]], rtol=1e-6)
        assert [entry["step"] for entry in history["validation"]] == list(logs["validation"])
        np.testing.assert_allclose([entry["loss"] for entry in history["validation"]], list(logs["validation"].values()),
                                   rtol=1e-6)
        assert line.strip().startswith(f"{band}: {steps} steps")
        assert line.endswith(" ".join(f"{step}:{value:.3f}" for step, value in logs["validation"].items()))
    figure = reports.plot_training_runs({band: result["history"] for band, result in trained.items()})
    assert [axis.get_title() for axis in figure.axes] == [
        "NIR: training loss (cL2) of each batch of patches", "NIR: validation loss (cL2) on whole scenes",
        "RED: training loss (cL2) of each batch of patches", "RED: validation loss (cL2) on whole scenes"]
    np.testing.assert_allclose(figure.axes[1].get_lines()[0].get_xydata(),
                               [[entry["step"], entry["loss"]] for entry in trained["NIR"]["history"]["validation"]])
    # RED was fine-tuned from NIR (every weight of NIR's last checkpoint) and both bands' checkpoints exist
    assert [record.getMessage() for record in caplog.records if record.name == "libraries.training.deepsum" and
            record.getMessage().startswith("initialised every weight")] == [
        f"initialised every weight from {plan.deepsum['NIR'].checkpoint_dir}"]
    for band in domain.BANDS:
        assert (tmp_path / "demo" / "checkpoints" / f"DeepSUM_{band}" / "checkpoint").is_file()

    check_example_scene(plan)
    # the options the outputs were made with are read back from them: the same ones pass
    demo.check_out_folder(plan, 6, 2, 48)
    demo.check_out_folder(demo.make_plan(tmp_path / "demo", n_features=8, patch_size=48, precision="mixed_bfloat16"),
                          6, 2, 48)  # checkpoints are float32 in every precision

    # A second run finds every output complete and does no work again, and draws the same curves.
    assert cli.main(arguments) == 0
    again = capsys.readouterr().out
    assert "using " in again and "wrote " not in again
    assert [line.split("; ")[1] for line in again.splitlines() if "validation loss at step:value" in line] == [
        line.split("; ")[1] for line in summary]
    assert f"using {tmp_path / 'demo' / demo.RESULTS} (the same checkpoints and n_slide)" in again
    assert again.split("(score: lower is better) ==\n")[1].split("\nsubmission")[0] == (
        printed.split("(score: lower is better) ==\n")[1].split("\nsubmission")[0])  # the same table and verdicts
    # the stored results hold only for the checkpoints and n_slide they came from, with their files
    stored = demo.previous_results(plan, (0,))
    for band in domain.BANDS:  # validated and submitted with the best validation's checkpoint, in best/
        best = tf.train.latest_checkpoint(str(plan.deepsum[band].checkpoint_dir / "best"))
        assert best is not None and stored["checkpoints"][band] == best, (band, stored["checkpoints"])
    assert {(row["band"], row["method"]): round(row["score"], 4) for row in stored["rows"]} == {
        key: value[0] for key, value in scores.items()}  # the rows the first run printed
    assert demo.previous_results(plan, (0, 1)) is None
    results_file = tmp_path / "demo" / demo.RESULTS
    fileio.save_json(results_file, {**stored, "checkpoints": {**stored["checkpoints"], "NIR": "another/ckpt-1"}})
    assert demo.previous_results(plan, (0,)) is None  # NIR trained further: validate again
    fileio.save_json(results_file, stored)
    assert demo.previous_results(plan, (0,)) == stored
    results_file.write_text('{"checkpoints": ')  # cut off: read as absent, with a note naming it
    capsys.readouterr()
    assert demo.previous_results(plan, (0,)) is None
    assert capsys.readouterr().out.startswith(f"{results_file}: not a results file of this demo (JSONDecodeError")
    fileio.save_json(results_file, stored)
    (tmp_path / "demo" / "figures" / "training.png").unlink()
    assert demo.previous_results(plan, (0,)) is None

    # a rerun with another data option or feature width stops before any work, naming both values
    for option, value, expected in (("--scenes", "5", "--scenes 6, not 5"), ("--features", "16", "--features 8, not 16")):
        other = list(arguments)
        other[other.index(option) + 1] = value
        assert cli.main(other) == 1
        captured = capsys.readouterr()
        assert captured.err == f"error: {tmp_path / 'demo'}: made with {expected}; use another --out, or delete it\n"
        assert "== data ==" not in captured.out


def check_example_scene(plan):
    """The validation figure shows the scene with the most pixels that fill_masked replaces, and
    counts them with fill_masked's own rule; its panels and caption."""
    cfg = plan.deepsum["NIR"]
    superresolver = inference.Superresolver(inference.load_model(cfg, demo.best_checkpoint(cfg)), cfg)
    scenes = dataset.load_scenes(plan.dataset_dir, "NIR", "validation")
    example = demo_figures.example_scene(cfg, plan.data_dir, superresolver, scenes)
    replaced = {}
    for scene in inference.iterate_scenes(scenes):
        masks = inference.window_inputs(scene, cfg, 0)[1]  # [1, T, H, W, 1]
        frame_index = np.broadcast_to(np.arange(cfg.T_in, dtype=np.float32)[None, :, None, None, None], masks.shape)
        filled = fill_masked(tf.constant(frame_index), tf.constant(masks > 0)).numpy()
        replaced[scene["name"]] = np.count_nonzero(filled != frame_index, axis=1)[0, ..., 0]  # [H, W]
    assert example["name"] == max(replaced, key=lambda name: replaced[name].sum())
    np.testing.assert_array_equal(example["filled"], replaced[example["name"]])
    figure = demo_figures.validation_figure("NIR", example)
    titles = [axis.get_title().split("\n")[0] for axis in figure.axes]
    assert titles == ["clearest LR frame 48x48", "bicubic baseline 144x144", "DeepSUM 144x144", "HR (target) 144x144",
                      "|bicubic - HR|", "|DeepSUM - HR|", "frames cloudy at each pixel", "", "", ""]
    note = figure.axes[7].texts[0].get_text().replace("\n", " ")
    assert note.startswith(f"Best 9 frames (n_slide 0): DeepSUM {example['cpsnr']:.2f} dB cPSNR")
    assert note.endswith(demo_figures.SEAM_NOTE) == bool(example["filled"].any())
    cloudy = "(the cloudiest)" if example["filled"].any() else "(no cloud in its 9 frames)"
    assert figure.get_suptitle() == f"NIR validation scene {example['name']} {cloudy}"


def test_final_table_says_whether_deepsum_beat_bicubic():
    rows = [{"band": "NIR", "method": "bicubic", "n_slide": None, "cpsnr": 45.0, "score": 1.0, "scenes": 3},
            {"band": "NIR", "method": "DeepSUM", "n_slide": 0, "cpsnr": 44.5, "score": 1.01, "scenes": 3},
            {"band": "NIR", "method": "DeepSUM", "n_slide": 1, "cpsnr": 46.0, "score": 0.98, "scenes": 3},
            {"band": "RED", "method": "bicubic", "n_slide": None, "cpsnr": 44.0, "score": 1.0, "scenes": 3},
            {"band": "RED", "method": "DeepSUM", "n_slide": 0, "cpsnr": 43.0, "score": 1.02, "scenes": 3}]
    table, verdict = demo.final_table(rows)
    assert verdict == {"NIR": True, "RED": False}  # NIR: its best n_slide beat bicubic, another did not
    assert "0.9800" in table and "bicubic" in table


def test_paper_plan_uses_the_paper_configs(tmp_path):
    plan = demo.make_plan(tmp_path / "out", data_dir=tmp_path / "probav_data")
    assert {cfg.precision for cfg in (*plan.deepsum.values(), plan.sisrnet, plan.regnet)} == {"float32"}
    args = argparse.ArgumentParser()
    demo.add_demo_arguments(args)
    precision = args.parse_args(["--precision", "mixed_bfloat16"]).precision
    bfloat16 = demo.make_plan(tmp_path / "out", data_dir=tmp_path / "probav_data", precision=precision)
    assert {cfg.precision for cfg in (*bfloat16.deepsum.values(), bfloat16.sisrnet, bfloat16.regnet)} == {precision}
    assert not plan.synthetic and plan.deepsum["NIR"].n_features == 64 and plan.deepsum["RED"].spectral_band == "RED"
    assert plan.sisrnet.checkpoint_dir == plan.deepsum["NIR"].SISRNet_pretrain_dir
    assert plan.regnet.SISRNet_pretrain_dir == plan.deepsum["NIR"].SISRNet_pretrain_dir
    assert plan.deepsum["NIR"].dataset_path == tmp_path / "out" / "dataset"


def test_every_output_of_a_plan_is_inside_its_out_dir(tmp_path):
    """With the paper's configs too: they name the repository's pretraining_checkpoints/, where
    `fetch-weights` puts the authors' weights; only `base_dir`, the data read, is elsewhere."""
    for data_dir in (None, tmp_path / "probav_data"):
        plan = demo.make_plan(tmp_path / "out", data_dir=data_dir)
        for cfg in (*plan.deepsum.values(), plan.sisrnet, plan.regnet):
            paths = {field.name: getattr(cfg, field.name) for field in dataclasses.fields(cfg)
                     if isinstance(getattr(cfg, field.name), Path) and field.name != "base_dir"}
            assert {"checkpoint_dir", "dataset_path"} <= set(paths)
            for name, path in paths.items():
                assert path.is_relative_to(tmp_path / "out"), (data_dir, type(cfg).__name__, name, path)
        assert plan.deepsum["NIR"].base_dir == (tmp_path / "out" / "probav_data" if data_dir is None else data_dir)


def test_an_out_folder_made_with_other_options_is_refused(tmp_path, capsys):
    """Read back from the synthetic set's truth JSON, the manifests and the checkpoints' config.json
    (the end-to-end test checks the files a real run writes)."""
    out = tmp_path / "out"
    plan = demo.make_plan(out, n_features=8, patch_size=48)
    scenes = {f"imgset{index:04d}": {"split": split, "band": band} for index, (split, band) in enumerate(
        [("train", band) for band in domain.BANDS for _ in range(3)] + [("test", band) for band in domain.BANDS] * 2)}
    fileio.save_json(plan.data_dir / synthetic.TRUTH_FILE, {"seed": 0, "lr_size": 48, "scenes": scenes})
    for band in domain.BANDS:
        fileio.save_json(plan.dataset_dir / band / "manifest.json",
                         {"parameters": {"data_dir": str(plan.data_dir), "seed": 0, "patch_size": 48}})
    nir = plan.deepsum["NIR"]
    tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(1)), str(nir.checkpoint_dir), 1).save()
    fileio.save_json(nir.checkpoint_dir / checkpoints.CONFIG_FILE, config.to_json(nir))
    demo.check_out_folder(plan, 3, 2, 48)  # the same options: resumed
    # training resumes to other step counts; checkpoints are float32 in every precision
    demo.check_out_folder(demo.make_plan(out, steps=7, pretrain_steps=3, n_features=8, patch_size=48,
                                         precision="mixed_bfloat16"), 3, 2, 48)

    def refused(plan, counts, expected):
        with pytest.raises(demo_plan.DemoError) as error:
            demo.check_out_folder(plan, *counts)
        assert str(error.value) == f"{out}: made with {expected}; use another --out, or delete it"

    refused(plan, (4, 2, 48), "--scenes 3, not 4")
    refused(plan, (3, 1, 48), "--test-scenes 2, not 1")
    refused(plan, (3, 2, 60), "--lr-size 48, not 60")
    refused(demo.make_plan(out, seed=1, n_features=8, patch_size=48), (3, 2, 48), "--seed 0, not 1")
    refused(demo.make_plan(out, n_features=8, patch_size=51), (3, 2, 48), "--patch-size 48, not 51")
    refused(demo.make_plan(out, n_features=16, patch_size=48), (3, 2, 48), "--features 8, not 16")
    refused(demo.make_plan(out, data_dir=tmp_path / "real", n_features=8, patch_size=48), (3, 2, 48),
            f"--data none (the synthetic set), not {tmp_path / 'real'}")
    refused(demo.make_plan(out, seed=2, n_features=16, patch_size=48), (5, 2, 48),
            "--seed 0, not 2 and --scenes 3, not 5 and --features 8, not 16")  # each option named once
    # on the command line: one error line, before any step
    args = ["demo", "--out", str(out), "--scenes", "4", "--test-scenes", "2", "--lr-size", "48", "--patch-size", "48",
            "--features", "8", "--no-progress"]
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.err == f"error: {out}: made with --scenes 3, not 4; use another --out, or delete it\n"
    assert captured.out == ""
    assert sorted(path.name for path in out.iterdir()) == ["checkpoints", "dataset", "probav_data"]


def test_a_failed_demo_leaves_no_empty_out_folder_it_created(tmp_path, capsys):
    not_probav = tmp_path / "not_probav"
    not_probav.mkdir()
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "made" / "out", tmp_path / "kept"):
        assert cli.main(["demo", "--out", str(out), "--data", str(not_probav), "--no-progress"]) == 1
        assert capsys.readouterr().err == f"error: {not_probav / 'norm.csv'}: file missing (expected norm.csv with " \
                                          "lines 'imgsetNNNN <cPSNR>')\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept", "not_probav"]  # kept: not made by the demo


def test_patch_size_must_be_a_multiple_of_the_scale(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.add_demo_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--patch-size", "47"])
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: argument --patch-size: expected a multiple of 3 (the scale), got 47")
    assert parser.parse_args(["--patch-size", "45"]).patch_size == 45
    with pytest.raises(config.ConfigError) as error:  # the config's own check, as the demo's plan meets it
        demo.make_plan(tmp_path / "out", patch_size=47)
    assert str(error.value) == ("patch_size_HR: expected multiples of R = 3 (the scale; patch_size_LR is "
                                "patch_size_HR / R), got [47, 47]")


def test_help_shows_every_default():
    parser = argparse.ArgumentParser()
    demo.add_demo_arguments(parser)
    text = " ".join(parser.format_help().split())
    plan = demo.make_plan()
    for expected in ("split (default 0)", "per band (default 14)", "per band (default 4)", "(default 128)",
                     f"(default NIR {plan.deepsum['NIR'].max_steps}, RED {plan.deepsum['RED'].max_steps} on the synthetic "
                     "set; until interrupted with --data)",
                     f"(default SISRNet {plan.sisrnet.steps}, RegNet {plan.regnet.steps} on the synthetic set; SISRNet "
                     "11400, RegNet 6000 with --data)",
                     f"(default {plan.patch_size} on the synthetic set, 96 with --data)",
                     f"(default {plan.deepsum['NIR'].n_features} on the synthetic set, 64 with --data)",
                     "evaluated (default 2)"):
        assert expected in text, expected


def test_with_real_data_the_authors_pretraining_is_used_and_an_interrupted_one_of_ours_resumes(
        tmp_path, monkeypatch, reference_dir):
    """`--data`: the authors' TF1 checkpoints copied into OUT/pretraining are used as they are; a
    folder holding a TF2 checkpoint of ours (a pretraining stopped at step 2) pretrains again,
    which resumes it, instead of being taken for a finished one."""
    plan = demo.make_plan(tmp_path / "out", data_dir=tmp_path / "probav_data")
    shutil.copytree(reference_dir / "pretraining_checkpoints" / "SISRNet", plan.sisrnet.checkpoint_dir)
    ours = tf.train.Checkpoint(step=tf.Variable(2, dtype=tf.int64))
    tf.train.CheckpointManager(ours, str(plan.regnet.checkpoint_dir), max_to_keep=1).save()
    ran = []
    monkeypatch.setattr(demo.pretraining, "pretrain_sisrnet", lambda config, **_: ran.append("sisrnet") or {})
    monkeypatch.setattr(demo.pretraining, "pretrain_regnet",
                        lambda config, **_: ran.append("regnet") or {"validation": []})
    assert demo.pretrain(plan, progress=False) == {} and ran == ["regnet"]
