"""The demo end to end at a tiny size: synthetic data -> ... -> validated submission + table."""

import argparse
import zipfile

from libraries import __main__ as cli, domain
from libraries import demo


def test_demo_runs_end_to_end_and_reruns_from_its_outputs(tmp_path, capsys):
    arguments = ["demo", "--out", str(tmp_path / "demo"), "--scenes", "6", "--test-scenes", "2", "--lr-size", "48",
                 "--steps", "6", "--pretrain-steps", "6", "--patch-size", "48", "--features", "8", "--n-slide", "1",
                 "--no-progress"]
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
    for name in ("training.png", "sliding_window_NIR.png", "sliding_window_RED.png"):
        assert (tmp_path / "demo" / "figures" / name).stat().st_size > 1000
    # RED was fine-tuned from NIR and both bands' checkpoints exist
    for band in domain.BANDS:
        assert (tmp_path / "demo" / "checkpoints" / f"DeepSUM_{band}" / "checkpoint").is_file()

    # A second run finds every output complete and does no work again.
    assert cli.main(arguments) == 0
    again = capsys.readouterr().out
    assert "using " in again and "wrote " not in again


def test_final_table_says_whether_deepsum_beat_bicubic():
    rows = [{"band": "NIR", "method": "bicubic", "n_slide": None, "cpsnr": 45.0, "score": 1.0, "scenes": 3},
            {"band": "NIR", "method": "DeepSUM", "n_slide": 0, "cpsnr": 46.0, "score": 0.98, "scenes": 3},
            {"band": "RED", "method": "bicubic", "n_slide": None, "cpsnr": 44.0, "score": 1.0, "scenes": 3},
            {"band": "RED", "method": "DeepSUM", "n_slide": 0, "cpsnr": 43.0, "score": 1.02, "scenes": 3}]
    table, verdict = demo.final_table(rows)
    assert verdict == {"NIR": True, "RED": False}
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
