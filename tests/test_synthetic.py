"""The synthetic PROBA-V set: layout, determinism, realism constraints, truth and baselines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.registration import phase_cross_correlation
from skimage.transform import resize

from libraries import dataset, domain, fileio, metrics, probav, synthetic
from libraries.__main__ import main

from helpers import subprocess_env

SEED = 3
N_TRAIN, N_TEST, LR_SIZE = 3, 4, 32


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "probav"
    summary = synthetic.write_dataset(out, SEED, n_scenes=N_TRAIN, n_test_scenes=N_TEST, lr_size=LR_SIZE,
                                      progress=False)
    return out, summary


@pytest.fixture(scope="module")
def scenes(synthetic_set) -> list[probav.Scene]:
    out, _ = synthetic_set
    return [scene for split in domain.SPLITS for band in domain.BANDS
            for scene in probav.read_split(out, split, band, progress=False)]


@pytest.fixture(scope="module")
def truth(synthetic_set) -> dict:
    return synthetic.read_truth(synthetic_set[0])["scenes"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_deterministic_for_a_seed(synthetic_set, tmp_path):
    out, _ = synthetic_set
    synthetic.write_dataset(tmp_path / "again", SEED, n_scenes=N_TRAIN, n_test_scenes=N_TEST, lr_size=LR_SIZE,
                            progress=False)
    assert _files(tmp_path / "again") == _files(out)
    synthetic.write_dataset(tmp_path / "other", SEED + 1, n_scenes=1, n_test_scenes=0, lr_size=LR_SIZE,
                            progress=False)
    other = probav.read_scene(tmp_path / "other" / "train" / "RED" / "imgset0000")
    first = probav.read_scene(out / "train" / "RED" / "imgset0000")
    assert other.lr.shape != first.lr.shape or not np.array_equal(other.lr, first.lr)


def test_layout_names_and_truth_outside_scene_folders(synthetic_set, scenes, truth):
    out, summary = synthetic_set
    assert summary["scenes"] == {"train": {"NIR": N_TRAIN, "RED": N_TRAIN}, "test": {"NIR": N_TEST, "RED": N_TEST}}
    names = [scene.name for scene in scenes]
    assert len(names) == len(set(names)) == 2 * (N_TRAIN + N_TEST)
    assert sorted(names) == sorted(truth) == sorted(probav.read_norm(out / "norm.csv"))
    assert (out / synthetic.TRUTH_FILE).is_file()
    assert not [path for path in out.rglob("*") if path.is_file() and path.suffix != ".png"
                and path.parent != out]  # scene folders hold PNGs only
    for scene in scenes:
        files = {path.name for path in scene.path.iterdir()}
        assert ({"HR.png", "SM.png"} <= files) == (scene.split == "train")
        assert (scene.hr is not None) == (scene.split == "train")
        assert scene.lr.shape[1:] == (LR_SIZE, LR_SIZE)
        assert (truth[scene.name]["split"], truth[scene.name]["band"]) == (scene.split, scene.band)
        assert tuple(truth[scene.name]["frame_names"]) == scene.frame_names


def test_scene_round_trip_is_bit_exact(tmp_path):
    arrays = synthetic.make_scene(np.random.default_rng(5), "NIR", 24, frames=10, corrupt=1)
    scene = probav.read_scene(probav.write_scene(tmp_path / "train" / "NIR" / "imgset0042", arrays["lr"],
                                                 arrays["clear"], arrays["hr"], arrays["hr_clear"]))
    for key in ("lr", "clear", "hr", "hr_clear"):
        assert getattr(scene, key).dtype == arrays[key].dtype
        np.testing.assert_array_equal(getattr(scene, key), arrays[key])


def test_frame_counts_and_usable_frames(scenes, truth):
    usable = {}
    for scene in scenes:
        assert 9 <= scene.n_frames <= 35
        corrupt = scene.lr.max(axis=(1, 2)) > domain.CORRUPT_VALUE
        np.testing.assert_array_equal(corrupt, truth[scene.name]["corrupt"])
        usable[scene.name] = (scene.split, int((~corrupt).sum()))
    assert all(count >= 9 for split, count in usable.values() if split == "train")
    short = [name for name, (split, count) in usable.items() if split == "test" and count < 9]
    assert 1 <= len(short) < 2 * N_TEST  # a few, not all


def test_corrupt_frames_hold_65520_wedges(scenes):
    corrupt = [frame for scene in scenes for frame in scene.lr if frame.max() > domain.CORRUPT_VALUE]
    assert len(corrupt) >= 3
    for frame in corrupt:
        bad = frame > domain.CORRUPT_VALUE
        assert np.all(frame[bad] == synthetic.CORRUPT_VALUE) and 0 < bad.mean() < 0.5
        assert bad[[0, 0, -1, -1], [0, -1, 0, -1]].any()  # cut off a corner, like the real ones


def test_no_data_pixels_are_flagged_in_qm(scenes):
    """As in the real data, the 65520 no-data wedges of corrupt frames are not clear in QM."""
    wedges = [(scene.lr > domain.CORRUPT_VALUE, scene.clear) for scene in scenes]
    assert sum(int(bad.sum()) for bad, _ in wedges) > 0
    for bad, clear in wedges:
        assert not (bad & clear).any()


def test_clouds_and_their_shadows_are_flagged_and_only_a_faint_haze_is_not():
    """A flat 5000 DN frame under clouds. The flags miss only a haze: a cloud's opacity is at most
    0.1 outside its flag, which brightens a pixel by at most 0.1 * (cloud top / 5000 - 1) and,
    as a shadow (0.55 of the opacity), darkens one by at most 5.5%. Anything more is flagged."""
    rng = np.random.default_rng(5)
    frames = np.full((40, 32, 32), 5000.0, np.float32)
    cloudy, clear = synthetic.add_clouds(rng, frames, "NIR")
    change = cloudy / 5000.0 - 1.0  # [frames, h, w]
    assert change.max() > 0.5 and change.min() < -0.2  # clouds and shadows both drawn
    brightest = 0.1 * (synthetic.BAND_STYLES["NIR"].cloud[1] / 5000.0 - 1.0)
    assert change[clear].max() <= brightest + 1e-6 and change[clear].min() >= -0.1 * 0.55 - 1e-6


def test_values_are_14_bit_like_multiples_of_16(scenes):
    for scene in scenes:
        good = scene.lr[scene.lr.max(axis=(1, 2)) <= domain.CORRUPT_VALUE]
        assert np.all(good % 16 == 0) and good.max() < 40000
        clear_values = good[scene.clear[scene.lr.max(axis=(1, 2)) <= domain.CORRUPT_VALUE]]
        assert 1000 < np.median(clear_values) < 16384
        if scene.hr is not None:
            assert scene.hr.max() <= 16383 and 1000 < np.median(scene.hr) < 16384
    medians = {band: np.median([np.median(s.lr) for s in scenes if s.band == band]) for band in domain.BANDS}
    assert 3000 < medians["RED"] < medians["NIR"] < 15000


def test_cloud_masks(scenes):
    fractions = np.concatenate([scene.clear.mean(axis=(1, 2)) for scene in scenes])
    assert fractions.min() >= 0.35  # clouds and shadows cover at most ~60% of a frame
    assert (fractions == 1).mean() > 0.2 and (fractions < 0.9).any()
    hr_fractions = [scene.hr_clear.mean() for scene in scenes if scene.hr_clear is not None]
    assert min(hr_fractions) > 0.8


def test_shifts_truth(truth):
    shifts = np.concatenate([np.asarray(scene["shifts"]) for scene in truth.values()])  # [frames, 2]
    assert shifts.shape[1] == 2 and np.abs(shifts).max() <= synthetic.MAX_SHIFT
    integer = np.all(shifts == np.round(shifts), axis=1)
    assert 0.5 < integer.mean() < 0.95  # mostly integer, some sub-pixel
    assert np.abs(shifts).max() >= 2


def test_render_follows_the_shift_convention():
    rng = np.random.default_rng(0)
    canvas = rng.normal(5000, 500, (30 + 2 * synthetic.PAD,) * 2).astype(np.float32)
    shifted = synthetic.render_frames(canvas, np.array([[3.0, -2.0]]), 0.8, 30)
    expected = synthetic.render_frames(ndimage.shift(canvas, (3, -2), order=0, mode="wrap"),
                                       np.zeros((1, 2)), 0.8, 30)
    np.testing.assert_allclose(shifted, expected, atol=0.5)  # float32 FFT rounding; DN step is 16


def test_registration_recovers_planted_integer_shifts():
    """Cross-correlation of bicubic frames (the authors' skimage register_translation, i.e.
    phase_cross_correlation with normalization=None) finds the planted integer shifts."""
    hits = []
    for seed in range(3):  # very flat scenes (contrast 0.1) can fail; these three are typical
        scene = synthetic.make_scene(np.random.default_rng(seed), "NIR", 64, frames=24, corrupt=0)
        shifts = scene["shifts"]
        clear = scene["clear"].all(axis=(1, 2)) & np.all(shifts == np.round(shifts), axis=1)
        frames = resize(scene["lr"][clear].astype(np.float64), (clear.sum(), 192, 192), order=3,
                        mode="edge", anti_aliasing=False, preserve_range=True)
        found = np.array([phase_cross_correlation(frames[0], frame, normalization=None)[0]
                          for frame in frames[1:]])
        expected = shifts[clear][0] - shifts[clear][1:]  # moves each frame back onto frame 0
        hits.extend(np.all(found == expected, axis=1))
        assert np.any(expected != 0)
    assert len(hits) >= 12 and np.mean(hits) >= 0.8


def test_norm_is_the_bicubic_of_mean_baseline(synthetic_set, scenes, truth):
    out, _ = synthetic_set
    norm = probav.read_norm(out / "norm.csv")
    for scene in scenes:
        assert norm[scene.name] == truth[scene.name]["baseline_cpsnr"]
        assert 25 < norm[scene.name] < 70
        if scene.split == "test":
            continue
        usable = scene.lr.max(axis=(1, 2)) <= 60000
        counts = np.where(usable, scene.clear.sum(axis=(1, 2)), -1)
        mean = scene.lr[counts == counts.max()].mean(axis=0)
        sr = resize(mean, scene.hr.shape, order=3, mode="edge", anti_aliasing=False, preserve_range=True)
        assert metrics.kelvins_cpsnr(sr, scene.hr, scene.hr_clear) == pytest.approx(norm[scene.name], abs=1e-9)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--seed", "1", "--scenes", "1", "--test-scenes", "1",
                 "--lr-size", "16"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(probav.read_norm(out / "norm.csv")) == 4
    assert json.loads((out / synthetic.TRUTH_FILE).read_text())["lr_size"] == 16


@pytest.mark.parametrize("flag, value, minimum", [("--seed", "-1", 0), ("--scenes", "0", 1), ("--test-scenes", "-1", 0),
                                                  ("--lr-size", "7", 8), ("--lr-size", "0", 8)])
def test_a_flag_below_its_minimum_is_a_usage_error(tmp_path, capsys, flag, value, minimum):
    """A band without train scenes is of no use (prepare splits them), a test-only set of the
    library (`n_scenes=0`) is; `--test-scenes 0` writes a set without test scenes."""
    arguments = {"--seed": "1", "--scenes": "1", "--test-scenes": "0", "--lr-size": "16", flag: value}
    with pytest.raises(SystemExit) as exit:
        main(["synth", "--out", str(tmp_path / "out"), *(item for pair in arguments.items() for item in pair)])
    assert exit.value.code == 2
    assert f"error: argument {flag}: expected an integer >= {minimum}, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, message", [({"seed": -1}, "seed (--seed): expected an integer >= 0, got -1"),
                                              ({"lr_size": 4}, "lr_size (--lr-size): expected an integer >= 8, got 4"),
                                              ({"n_test_scenes": -1}, "n_test_scenes (--test-scenes): expected an "
                                                                      "integer >= 0, got -1")])
def test_write_dataset_checks_its_arguments(tmp_path, changes, message):
    with pytest.raises(domain.DeepSUMError) as error:
        synthetic.write_dataset(tmp_path / "out", **{"seed": 1, "n_scenes": 1, "n_test_scenes": 0, "lr_size": 16,
                                                     "progress": False, **changes})
    assert str(error.value) == message and not (tmp_path / "out").exists()


def test_a_second_set_replaces_the_first_and_a_folder_of_other_files_is_refused(tmp_path, capsys):
    """Written over an earlier set, the new set is all there is (no scene, norm.csv row or truth
    entry of the old one is left); a folder synth did not write is left as it was."""
    out, small = tmp_path / "set", {"seed": 2, "lr_size": 16, "progress": False}
    synthetic.write_dataset(out, n_scenes=3, n_test_scenes=1, **small)
    synthetic.write_dataset(out, n_scenes=1, n_test_scenes=0, **small)
    scenes = sorted(path.relative_to(out).as_posix() for path in out.glob("*/*/imgset*"))
    assert scenes == ["train/NIR/imgset0001", "train/RED/imgset0000"]
    assert sorted(probav.read_norm(out / "norm.csv")) == sorted(synthetic.read_truth(out)["scenes"]) == [
        "imgset0000", "imgset0001"]
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["set"]  # no temporary folder left beside it
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "plan.txt").write_text("mine\n")
    assert main(["synth", "--out", str(notes), "--seed", "1", "--scenes", "1", "--lr-size", "16"]) == 1
    assert capsys.readouterr().err == (f"error: {notes}: holds files but is not a synthetic data set (no "
                                       f"{synthetic.TRUTH_FILE} written by synth); synth replaces only what it "
                                       f"wrote: move them away or choose another output folder\n")
    assert [entry.name for entry in notes.iterdir()] == ["plan.txt"]


def test_an_interrupted_set_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_the_third(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write_scene(*args, **kwargs)

    write_scene = probav.write_scene
    monkeypatch.setattr(probav, "write_scene", fail_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_dataset(tmp_path / "set", seed=1, n_scenes=2, n_test_scenes=0, lr_size=16, progress=False)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


def test_synth_cannot_replace_a_set_that_prepare_reads_nor_prepare_read_one_being_replaced(tmp_path, capsys):
    """`prepare` reads a PROBA-V folder shared; `synth` replaces one holding it exclusively: a set
    replaced under a `prepare` run would give it the scenes of two sets."""
    out, small = tmp_path / "set", {"seed": 2, "lr_size": 16, "progress": False}
    synthetic.write_dataset(out, n_scenes=2, n_test_scenes=0, **small)
    norm = (out / "norm.csv").read_bytes()
    with fileio.FolderLock(out, "PROBA-V folder", shared=True):  # as prepare holds its input
        assert main(["synth", "--out", str(out), "--seed", "3", "--scenes", "1", "--lr-size", "16"]) == 1
    assert capsys.readouterr().err == (f"error: {out}: this synthetic data set folder is in use by another run (a "
                                       f"run that reads it, e.g. prepare or superresolve); wait for it to end or use another folder\n")
    assert (out / "norm.csv").read_bytes() == norm and not (out / fileio.FolderLock.NAME).exists()
    # a synth run replacing the set (another process, seen by its lock file) refuses prepare
    child = subprocess.Popen([sys.executable, "-m", "libraries", "synth", "--out", str(out), "--seed", "4",
                              "--scenes", "40", "--lr-size", "64"], env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / fileio.FolderLock.NAME).exists():  # the event: synth holds the folder
            assert child.poll() is None and time.monotonic() < deadline, "synth did not take its folder"
            time.sleep(0.01)
        with pytest.raises(domain.DeepSUMError, match=rf"^{re.escape(str(out))}: this PROBA-V folder is in use by "
                                                      rf"another run \(process {child.pid}\)"):
            dataset.prepare(out, tmp_path / "prepared", bands=("NIR",), processes=1, progress=False)
    finally:
        child.kill()
        child.wait()
    assert not (tmp_path / "prepared").exists() and (out / "norm.csv").read_bytes() == norm  # killed: the old set
