"""The demo end to end at a tiny size: synthetic data -> ... -> validated submission + table."""

import argparse
import zipfile

import matplotlib
import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from libraries import __main__ as cli, dataset, domain, fileio, inference, reports
from libraries import demo
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


def check_example_scene(plan):
    """The validation figure shows the scene with the most pixels that fill_masked replaces, and
    counts them with fill_masked's own rule; its panels and caption."""
    cfg = plan.deepsum["NIR"]
    superresolver = inference.Superresolver(inference.load_model(cfg, demo.best_checkpoint(cfg)), cfg)
    scenes = dataset.load_scenes(plan.dataset_dir, "NIR", "validation")
    example = demo.example_scene(plan, "NIR", superresolver, scenes)
    replaced = {}
    for scene in inference.iterate_scenes(scenes):
        masks = inference.window_inputs(scene, cfg, 0)[1]  # [1, T, H, W, 1]
        frame_index = np.broadcast_to(np.arange(cfg.T_in, dtype=np.float32)[None, :, None, None, None], masks.shape)
        filled = fill_masked(tf.constant(frame_index), tf.constant(masks > 0)).numpy()
        replaced[scene["name"]] = np.count_nonzero(filled != frame_index, axis=1)[0, ..., 0]  # [H, W]
    assert example["name"] == max(replaced, key=lambda name: replaced[name].sum())
    np.testing.assert_array_equal(example["filled"], replaced[example["name"]])
    figure = demo.validation_figure("NIR", example)
    titles = [axis.get_title().split("\n")[0] for axis in figure.axes]
    assert titles == ["clearest LR frame 48x48", "bicubic baseline 144x144", "DeepSUM 144x144", "HR (target) 144x144",
                      "|bicubic - HR|", "|DeepSUM - HR|", "frames cloudy at each pixel", "", "", ""]
    note = figure.axes[7].texts[0].get_text().replace("\n", " ")
    assert note.startswith(f"Best 9 frames (n_slide 0): DeepSUM {example['cpsnr']:.2f} dB cPSNR")
    assert note.endswith(demo.SEAM_NOTE) == bool(example["filled"].any())
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
