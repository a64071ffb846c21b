"""Dataset creation on disk (`libraries.dataset`) on small synthetic PROBA-V sets.

One module-scoped set (LR 32x32, HR 96x96, 48x48 patches) is prepared once, with np.load
patched to refuse pickles for the whole run; the tests read what it wrote.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import libraries
from libraries import __main__ as cli, domain
from libraries import dataset, fileio, preprocessing, probav, synthetic

BAND = "NIR"
PATCH = 48
CHUNKS = 2
PATCHES = 6


def _refuse_pickle(original):
    def load(*args, **kwargs):
        if kwargs.get("allow_pickle", False):
            raise AssertionError("np.load called with allow_pickle=True")
        return original(*args, **kwargs)
    return load


@pytest.fixture(scope="module")
def no_pickle():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "load", _refuse_pickle(np.load))
        yield


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("probav")
    synthetic.write_dataset(folder, seed=11, n_scenes=7, n_test_scenes=5, lr_size=32, progress=False)
    return folder


@pytest.fixture(scope="module")
def prepared(synthetic_set, tmp_path_factory, no_pickle) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "dataset"
    dataset.prepare(synthetic_set, out, bands=(BAND,), seed=5, n_chunks=CHUNKS, patches_per_scene=PATCHES,
                    patch_size=PATCH, processes=1, progress=False)
    return out


def scene_slice(store, index):
    start, stop = int(store["offsets"][index]), int(store["offsets"][index + 1])
    return slice(start, stop)


def test_layout_and_manifest(prepared, synthetic_set):
    band_dir = prepared / BAND
    manifest = json.loads((band_dir / "manifest.json").read_text())
    assert manifest["library_version"] == libraries.__version__
    assert manifest["parameters"]["seed"] == 5 and manifest["patches"]["patch_size"] == PATCH
    truth = synthetic.read_truth(synthetic_set)["scenes"]
    train_names = sorted(n for n, t in truth.items() if t["split"] == "train" and t["band"] == BAND)
    test_names = sorted(n for n, t in truth.items() if t["split"] == "test" and t["band"] == BAND)
    held = manifest["train"]["names"] + manifest["validation"]["names"]
    dropped = list(manifest["train"]["dropped_scenes"]) + list(manifest["validation"]["dropped_scenes"])
    assert sorted(held + dropped) == train_names
    assert manifest["test"]["names"] == test_names and not manifest["test"]["dropped_scenes"]
    for split in ("train", "validation", "test"):
        counts = manifest[split]
        assert counts["frames_in"] == (counts["frames_kept"] + counts["frames_corrupt"] + counts["frames_shifted"]
                                       - counts["frames_reused"] + counts["frames_of_dropped_scenes"])
        assert counts["scenes_in"] == counts["scenes_kept"] + len(counts["dropped_scenes"])
        names = np.load(band_dir / split / "names.npy", allow_pickle=False)
        assert names.dtype.kind == "U" and names.tolist() == counts["names"]
    assert not list(prepared.glob(".*")) and not list(band_dir.rglob("*.partial"))


def test_counts_table_shows_each_count_of_the_manifest_under_its_heading(prepared):
    manifest = json.loads((prepared / BAND / "manifest.json").read_text())
    header, *lines = dataset.counts_table(prepared / BAND).splitlines()
    assert header.split() == ["split", "scenes", "in", "kept", "dropped", "frames", "in", "kept", "corrupt",
                              "shift>4", "reused"]
    assert [line.split()[0] for line in lines] == ["train", "validation", "test"]
    for line in lines:
        split, *numbers = line.split()
        counts = manifest[split]
        assert [int(number) for number in numbers] == [
            counts["scenes_in"], len(counts["names"]), len(counts["dropped_scenes"]), counts["frames_in"],
            counts["frames_kept"], counts["frames_corrupt"], counts["frames_shifted"], counts["frames_reused"]], split


def test_split_is_sorted_seeded_and_70_30(prepared):
    split = json.loads((prepared / BAND / "split.json").read_text())
    names = sorted(split["train"] + split["validation"])
    assert len(names) == 7 and len(split["train"]) == int(0.7 * 7) and not set(split["train"]) & set(split["validation"])
    order = np.random.default_rng(5).permutation(7)
    assert split["train"] == [names[i] for i in order[:4]]


def test_corrupt_frames_are_dropped(prepared, synthetic_set):
    truth = synthetic.read_truth(synthetic_set)["scenes"]
    corrupt_total = 0
    for split in ("train", "validation", "test"):
        store = dataset.load_scenes(prepared, BAND, split)
        for index, name in enumerate(store["names"]):
            corrupt = {f"LR{k:03d}" for k, bad in enumerate(truth[str(name)]["corrupt"]) if bad}
            kept = set(store["frame_names"][scene_slice(store, index)].tolist())
            assert not kept & corrupt
            assert np.max(store["frames"][scene_slice(store, index)]) < 60000
        manifest = json.loads((prepared / BAND / "manifest.json").read_text())[split]
        corrupt_total += manifest["frames_corrupt"]
    assert corrupt_total > 0


def test_registration_recovers_planted_shifts(tmp_path):
    """Full-size scenes (384 grid): >= 95% of the frames with an integer planted shift (and an
    integer-shifted reference) that are at least 90% clear get it exactly. Like the original,
    registration ignores the clouds, so cloudy frames miss more often (measured over seeds
    5, 8, 21: 92% of all such frames, 99% of the clear ones)."""
    folder = tmp_path / "big"
    synthetic.write_dataset(folder, seed=21, n_scenes=2, n_test_scenes=0, lr_size=128, progress=False)
    truth = synthetic.read_truth(folder)["scenes"]
    exact = np.zeros(2, dtype=int)  # [all integer frames, clear integer frames]
    total = np.zeros(2, dtype=int)
    for band in domain.BANDS:
        for path in probav.list_scenes(folder, "train", band):
            scene = probav.read_scene(path)
            prepared = dataset.prepare_test_scene(scene)
            planted = np.asarray(truth[scene.name]["shifts"])
            used = [int(name[2:]) for name in prepared["frame_names"]]
            relative = planted[used] - planted[used[0]]  # displacement from the reference, HR pixels
            integer = np.all(planted[used] == np.round(planted[used]), axis=1) & np.all(planted[used[0]] == np.round(planted[used[0]]))
            clear = np.asarray(truth[scene.name]["clear_fraction"])[used] >= 0.9
            correct = np.all(prepared["shifts"] == relative, axis=1)
            for column, chosen in enumerate((integer, integer & clear)):
                total[column] += chosen.sum()
                exact[column] += correct[chosen].sum()
    assert total[1] >= 20 and exact[1] / total[1] >= 0.95, (exact, total)
    assert exact[0] / total[0] >= 0.8, (exact, total)


def test_test_scenes_are_completed_to_nine_frames(prepared, synthetic_set):
    truth = synthetic.read_truth(synthetic_set)["scenes"]
    store = dataset.load_scenes(prepared, BAND, "test")
    usable = {str(n): len(truth[str(n)]["corrupt"]) - sum(truth[str(n)]["corrupt"]) for n in store["names"]}
    assert min(usable.values()) < 9  # the synthetic set gives every 4th test scene 5-8 usable frames
    for index, name in enumerate(store["names"]):
        rows = scene_slice(store, index)
        assert rows.stop - rows.start >= 9
        assert np.all(store["shifts"][rows.start] == 0)
    # the scene with the fewest usable frames, read straight from its folder, gives the same input
    name = min(usable, key=usable.get)
    direct = dataset.prepare_test_scene(probav.read_scene(synthetic_set / "test" / BAND / name))
    index = list(store["names"]).index(name)
    rows = scene_slice(store, index)
    assert direct["frames"].shape[0] == max(9, rows.stop - rows.start) == rows.stop - rows.start
    np.testing.assert_array_equal(direct["frames"], store["frames"][rows])
    np.testing.assert_array_equal(direct["masks"], store["masks"][rows])
    np.testing.assert_array_equal(direct["shifts"], store["shifts"][rows])


def test_few_usable_frames_test_scene_yields_nine():
    rng = np.random.default_rng(3)
    lr = (rng.integers(100, 900, (8, 16, 16)) * 16).astype(np.uint16)
    lr[[1, 4, 6]] = 65520  # three corrupt frames: five usable
    clear = rng.random((8, 16, 16)) > 0.2
    result = dataset.preprocess_scene("imgsetX", lr, clear, [f"LR{k:03d}" for k in range(8)], complete=True)
    assert result.frames.shape == (9, 48, 48) and result.corrupt == 3
    assert result.reused == 9 - (5 - result.shifted)
    dropped = dataset.preprocess_scene("imgsetX", lr, clear, [f"LR{k:03d}" for k in range(8)], complete=False)
    assert dropped.dropped and dropped.frames.shape[0] == 0


def test_patches_satisfy_the_clearance_rule(prepared):
    store = dataset.load_scenes(prepared, BAND, "train")
    for chunk in range(CHUNKS):
        windows = {key: np.load(prepared / BAND / "train" / f"chunk_{chunk}" / f"{key}.npy", allow_pickle=False)
                   for key in ("corners", "scene")}
        assert len(windows["scene"]) > 0 and np.bincount(windows["scene"]).max() <= PATCHES
        for (row, col), scene in zip(windows["corners"], windows["scene"]):
            assert 0 <= row <= 96 - PATCH - 1 and 0 <= col <= 96 - PATCH - 1
            masks = store["masks"][scene_slice(store, scene), row:row + PATCH, col:col + PATCH]
            hr_clear = store["hr_clear"][scene, row:row + PATCH, col:col + PATCH]
            assert np.sum(masks.mean(axis=(1, 2)) > 0.70) >= 9 and hr_clear.mean() > 0.85


def test_best9_order_shifts_and_registered_masks(prepared):
    store = dataset.load_scenes(prepared, BAND, "train")
    chunk = dataset.load_training_chunk(prepared, BAND, 0)
    corners = np.load(prepared / BAND / "train" / "chunk_0" / "corners.npy", allow_pickle=False)
    for patch in range(len(chunk["scene"])):
        rows = scene_slice(store, int(chunk["scene"][patch]))
        window = np.s_[corners[patch][0]:corners[patch][0] + PATCH, corners[patch][1]:corners[patch][1] + PATCH]
        all_frames = np.asarray(store["frames"][rows])[:, window[0], window[1]]
        all_masks = np.asarray(store["masks"][rows])[:, window[0], window[1]]
        # which stored frame each best-9 frame is
        source = [int(np.flatnonzero((all_frames == frame).all(axis=(1, 2)))[0]) for frame in chunk["frames"][patch]]
        assert source[0] == 0 and len(set(source)) == 9
        counts = all_masks.sum(axis=(1, 2))
        assert np.all(np.diff(counts[source[1:]]) <= 0)
        assert counts[source[1:]].min() >= np.sort(counts[1:])[-8]
        np.testing.assert_array_equal(chunk["shifts"][patch], store["shifts"][rows][source])
        np.testing.assert_array_equal(chunk["masks"][patch],
                                      preprocessing.translate_masks(all_masks[source], chunk["shifts"][patch]))
        np.testing.assert_array_equal(chunk["hr"][patch], store["hr"][int(chunk["scene"][patch])][window[0], window[1]])


def test_readers_contract_and_full_mode(prepared):
    for full in (False, True):
        chunk = dataset.load_training_chunk(prepared, BAND, 1, full=full)
        n = len(chunk["scene"])
        expected = {"frames": ((n, 9, PATCH, PATCH), np.float32), "masks": ((n, 9, PATCH, PATCH), np.bool_),
                    "shifts": ((n, 9, 2), np.int32), "hr": ((n, PATCH, PATCH), np.float32),
                    "hr_clear": ((n, PATCH, PATCH), np.bool_), "baseline": ((n,), np.float32), "scene": ((n,), np.int32)}
        assert set(chunk) == set(expected)
        for key, (shape, dtype) in expected.items():
            assert chunk[key].shape == shape and chunk[key].dtype == dtype, key
    best9 = dataset.load_training_chunk(prepared, BAND, 1)
    full = dataset.load_training_chunk(prepared, BAND, 1, full=True)
    for key in best9:
        np.testing.assert_array_equal(best9[key], full[key])
    validation = dataset.load_validation(prepared, BAND)
    validation_full = dataset.load_validation(prepared, BAND, full=True)
    assert validation["frames"].shape[1:] == (9, 96, 96) and validation["names"].dtype.kind == "U"
    for key in validation:
        np.testing.assert_array_equal(validation[key], validation_full[key])
    assert np.isfinite(validation["baseline"]).all() and (validation["baseline"] > 20).all()


def test_load_scenes_contract(prepared):
    for split in ("train", "validation", "test"):
        store = dataset.load_scenes(prepared, BAND, split)
        total, scenes = store["offsets"][-1], len(store["names"])
        assert store["frames"].shape == (total, 96, 96) and store["frames"].dtype == np.float32
        assert store["masks"].shape == (total, 96, 96) and store["masks"].dtype == np.bool_
        assert store["shifts"].shape == (total, 2) and len(store["offsets"]) == scenes + 1
        assert np.all(np.abs(store["shifts"]) <= 4) and np.all(store["shifts"][store["offsets"][:-1]] == 0)
        if split != "test":
            assert store["hr"].shape == (scenes, 96, 96) and store["hr"].dtype == np.float32
            assert store["baseline"].shape == (scenes,)
        else:
            assert "hr" not in store
    with pytest.raises(dataset.DatasetError, match="RED"):
        dataset.load_scenes(prepared, "RED", "train")


def test_each_scene_keeps_its_own_baseline_and_hr_image(prepared, synthetic_set):
    """The validation split is a shuffled subset and scenes may be dropped: each stored row must
    still hold its own scene's norm.csv line and HR.png, read here with plain text and imageio."""
    norm = {name: float(value) for name, value in
            (line.split() for line in (synthetic_set / "norm.csv").read_text().splitlines() if line.strip())}
    hr_of = lambda name: iio.imread(synthetic_set / "train" / BAND / name / "HR.png")  # noqa: E731
    for split in ("train", "validation"):
        store = dataset.load_scenes(prepared, BAND, split)
        names = store["names"].tolist()
        np.testing.assert_array_equal(store["baseline"], np.float32([norm[name] for name in names]), err_msg=split)
        for index, name in enumerate(names):
            np.testing.assert_array_equal(store["hr"][index], hr_of(name), err_msg=f"{split} {name}")
    validation = dataset.load_validation(prepared, BAND)
    np.testing.assert_array_equal(validation["baseline"], np.float32([norm[name] for name in validation["names"]]))
    train_names = dataset.load_scenes(prepared, BAND, "train")["names"]
    for chunk in range(CHUNKS):
        patches = dataset.load_training_chunk(prepared, BAND, chunk)
        np.testing.assert_array_equal(patches["baseline"],
                                      np.float32([norm[train_names[scene]] for scene in patches["scene"]]))


def test_each_chunk_draws_its_own_windows_from_seed_chunk_and_scene(prepared):
    """Scene s of chunk k draws its windows from default_rng([seed, k, s]) (seed 5 here): chunks
    are different draws of the same scenes, and each can be drawn again on its own."""
    store = dataset.load_scenes(prepared, BAND, "train")
    corners = [np.load(prepared / BAND / "train" / f"chunk_{chunk}" / "corners.npy", allow_pickle=False)
               for chunk in range(CHUNKS)]
    scenes = [np.load(prepared / BAND / "train" / f"chunk_{chunk}" / "scene.npy", allow_pickle=False)
              for chunk in range(CHUNKS)]
    assert corners[0].shape != corners[1].shape or not np.array_equal(corners[0], corners[1])
    for chunk in range(CHUNKS):
        for scene in range(len(store["names"])):
            rows = scene_slice(store, scene)
            valid = preprocessing.valid_patch_corners(np.asarray(store["masks"][rows]),
                                                      np.asarray(store["hr_clear"][scene]), PATCH)
            drawn = preprocessing.sample_patch_corners(valid, PATCH, PATCHES, np.random.default_rng([5, chunk, scene]),
                                                       100_000)
            np.testing.assert_array_equal(corners[chunk][scenes[chunk] == scene], drawn.reshape(-1, 2),
                                          err_msg=f"chunk {chunk} scene {scene}")


@pytest.mark.parametrize("bad", [np.zeros(3, dtype=[("row", "f4")]), np.zeros(3, np.complex64),
                                 np.zeros(3, "S4"), np.zeros(3, "datetime64[s]")], ids=lambda bad: bad.dtype.kind)
def test_a_prepared_array_of_another_kind_is_one_error_naming_the_file(tmp_path, bad):
    np.save(tmp_path / "frames.npy", bad, allow_pickle=False)
    expected = (f"{tmp_path / 'frames.npy'}: array of dtype {bad.dtype}, expected numbers, booleans or names; "
                "run `python -m libraries prepare` again")
    with pytest.raises(dataset.DatasetError) as error:
        dataset.store.load_arrays(tmp_path, ["frames"])
    assert str(error.value) == expected


def _copy_band(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    return copy / BAND


@pytest.mark.parametrize("damage, file, message", [
    (lambda arrays: {"offsets": arrays["offsets"][:-1]}, "frames.npy", r"\d+ rows, expected \d+ \(one per frame of offsets.npy\)"),
    (lambda arrays: {"baseline": arrays["baseline"][:-1]}, "baseline.npy", r"\d+ rows, expected \d+ \(one per scene"),
    (lambda arrays: {"frames": arrays["frames"][:-2]}, "frames.npy", r"\d+ rows, expected \d+ \(one per frame"),
    (lambda arrays: {"offsets": arrays["offsets"][::-1]}, "offsets.npy", r"expected the non-decreasing integer rows"),
    (lambda arrays: {"offsets": arrays["offsets"].astype(np.float32)}, "offsets.npy", r"expected the non-decreasing"),
], ids=["offsets short", "baseline short", "frames short", "offsets reversed", "offsets float"])
def test_a_scene_store_whose_arrays_disagree_with_its_offsets_names_the_file(prepared, tmp_path, damage, file, message):
    """A store cut short or edited hands one scene another's frames (or fails deep inside a step)."""
    band = _copy_band(prepared, tmp_path)
    folder = band / "train"
    arrays = dataset.store.load_arrays(folder, ["frames", "offsets", "hr", "baseline"], mmap=False)
    for key, value in damage(arrays).items():
        np.save(folder / f"{key}.npy", value, allow_pickle=False)
    with pytest.raises(dataset.DatasetError, match=rf"^{re.escape(str(folder / file))}: {message}"):
        dataset.load_training_chunk(band.parent, BAND, 0, full=True)


@pytest.mark.parametrize("manifest, chunk, message", [
    ({"patches": {"patch_size": "48"}}, {}, r"manifest.json: patches.patch_size is '48', expected the side"),
    ({"patches": None}, {}, r"manifest.json: patches.patch_size is None"),
    ({}, {"corners": lambda c: c + 1000}, r"chunk_0: window 0 \(scene \d+, corner \[\d+, \d+\]\) is not a 48x48 window"),
    ({}, {"scene": lambda s: s + 1000}, r"chunk_0: window 0 \(scene 10\d\d, corner .* of the \d+ scenes of 96x96"),
    ({}, {"corners": lambda c: c[:, :1]}, r"chunk_0: scene \(\d+,\) int32 and corners \(\d+, 1\) int32; expected"),
], ids=["size text", "no patches", "corner outside", "scene outside", "corners of one column"])
def test_full_mode_names_a_damaged_manifest_or_window_chunk(prepared, tmp_path, manifest, chunk, message):
    band = _copy_band(prepared, tmp_path)
    if manifest:
        content = json.loads((band / "manifest.json").read_text())
        content.update(manifest)
        (band / "manifest.json").write_text(json.dumps(content))
    folder = band / "train" / "chunk_0"
    for key, change in chunk.items():
        np.save(folder / f"{key}.npy", change(np.load(folder / f"{key}.npy")), allow_pickle=False)
    with pytest.raises(dataset.DatasetError, match=message):
        dataset.load_training_chunk(band.parent, BAND, 0, full=True)


@pytest.mark.parametrize("edit, message", [
    (lambda split: {**split, "validation": split["validation"][:1] + ["imgset9999"]},
     r"validation scenes \['imgset9999'\] are not scenes of the raw train store \(\d+ scenes\)"),
    (lambda split: {**split, "validation": "imgset0001"}, r"expected a list of scene names under 'validation'"),
    (lambda split: [split["train"]], r"expected a list of scene names under 'validation'"),
], ids=["unknown scene", "a name, not a list", "a list"])
def test_an_edited_split_file_names_the_file(prepared, tmp_path, edit, message):
    band = _copy_band(prepared, tmp_path)
    path = band / "split.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(dataset.DatasetError, match=rf"^{re.escape(str(path))}: {message}"):
        dataset.create_scene_store(band, "validation", processes=1, progress=False)


def test_parallel_processes_give_the_same_dataset(prepared, synthetic_set, tmp_path, no_pickle, monkeypatch):
    out = tmp_path / "parallel"
    pools = []

    class CountedPool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", CountedPool)
    dataset.prepare(synthetic_set, out, bands=(BAND,), seed=5, n_chunks=CHUNKS, patches_per_scene=PATCHES,
                    patch_size=PATCH, processes=2, progress=False)
    assert len(pools) == 1  # one pool of workers for every step and split, not one per step
    for path in sorted((prepared / BAND).rglob("*.npy")):
        other = out / BAND / path.relative_to(prepared / BAND)
        np.testing.assert_array_equal(np.load(path, allow_pickle=False), np.load(other, allow_pickle=False), err_msg=str(path))


def test_command_line(synthetic_set, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["prepare", "--data", str(synthetic_set), "--out", str(out), "--band", "RED", "--chunks", "1",
                     "--patches-per-scene", "2", "--patch-size", str(PATCH), "--processes", "1", "--quiet"])
    assert code == 0 and (out / "RED" / "best9" / "train" / "chunk_0" / "frames.npy").is_file()
    assert "validation" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clean")
    synthetic.write_dataset(folder, seed=4, n_scenes=2, n_test_scenes=1, lr_size=16, progress=False)
    return folder


def _scene(root: Path, split: str = "train") -> Path:
    return probav.list_scenes(root, split, BAND)[0]


def _missing_qm(root):
    (_scene(root) / "QM003.png").unlink()


def _truncated_png(root):
    path = _scene(root) / "LR002.png"
    path.write_bytes(path.read_bytes()[:60])


def _eight_bit_lr(root):
    path = _scene(root) / "LR001.png"
    iio.imwrite(path, (iio.imread(path) // 256).astype(np.uint8))


def _wrong_hr_size(root):
    iio.imwrite(_scene(root) / "HR.png", np.zeros((40, 40), dtype=np.uint16))


def _empty_folder(root):
    folder = _scene(root, "test")
    shutil.rmtree(folder)
    folder.mkdir()


def _norm_without_scene(root):
    lines = (root / "norm.csv").read_text().splitlines()
    name = _scene(root).name
    (root / "norm.csv").write_text("".join(f"{line}\n" for line in lines if not line.startswith(name)))


@pytest.mark.parametrize("damage, message", [
    (_missing_qm, "QM003.png: file missing"),
    (_truncated_png, "not a readable PNG"),
    (_eight_bit_lr, "8-bit PNG"),
    (_wrong_hr_size, "HR.png: size"),
    (_empty_folder, "empty scene folder"),
    (_norm_without_scene, "no baseline for scene"),
])
def test_bad_input_named_error_and_no_output(clean_set, tmp_path, damage, message):
    data = tmp_path / "data"
    shutil.copytree(clean_set, data)
    damage(data)
    out = tmp_path / "out"
    with pytest.raises(probav.ProbaVError, match=message):
        dataset.prepare(data, out, bands=("RED", BAND), n_chunks=1, patches_per_scene=2, patch_size=PATCH // 3,
                        processes=1, progress=False)
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(probav.ProbaVError, match=message):
        dataset.prepare(data, existing, bands=(BAND,), n_chunks=1, patch_size=PATCH // 3, processes=1, progress=False)
    assert list(existing.iterdir()) == []


def test_a_rerun_removes_the_partial_folder_of_a_killed_run_and_a_live_one_blocks(clean_set, tmp_path):
    out = tmp_path / "out"
    stale = out / ".prepare-killed.partial" / BAND / "raw"
    stale.mkdir(parents=True)
    (stale / "lr.npy").write_bytes(b"half a file")
    with fileio.FolderLock(out, "prepared data set folder"):  # a live run
        with pytest.raises(domain.DeepSUMError, match=rf"{out}: this prepared data set folder is in use by another run"):
            dataset.prepare(clean_set, out, bands=(BAND,), n_chunks=1, patch_size=PATCH // 3, processes=1,
                            progress=False)
        assert stale.is_dir()  # nothing of the live run's touched
    dataset.prepare(clean_set, out, bands=(BAND,), n_chunks=1, patch_size=PATCH // 3, processes=1, progress=False)
    assert sorted(path.name for path in out.iterdir()) == [BAND]


# --------------------------------------------------------------------------- the output folder


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _prepare_clean(data: Path, out: Path, **changes) -> dict:
    arguments = dict(bands=(BAND,), n_chunks=1, patches_per_scene=2, patch_size=PATCH // 3, processes=1, progress=False)
    return dataset.prepare(data, out, **{**arguments, **changes})


@pytest.mark.parametrize("where, message", [
    ("data/train", "the output folder is inside the PROBA-V folder"),
    ("data/train/NIR", "the output folder is inside the PROBA-V folder"),
    ("data", "the output folder is the PROBA-V folder"),
    (".", "the output folder contains the PROBA-V folder"),
])
def test_an_output_folder_inside_or_around_the_input_is_refused(clean_set, tmp_path, where, message):
    data = tmp_path / "data"
    shutil.copytree(clean_set, data)
    before = _files(data)
    out = tmp_path / where
    with pytest.raises(dataset.DatasetError, match=f"^{re.escape(f'{out}: {message} {data}; expected an output')}"):
        _prepare_clean(data, out)
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(dataset.DatasetError, match=message):  # the same through a symbolic link
        _prepare_clean(tmp_path / "link", out)
    assert _files(data) == before


def test_a_band_folder_not_written_by_prepare_is_never_replaced(clean_set, tmp_path, capsys):
    out = tmp_path / "victim"
    (out / BAND).mkdir(parents=True)
    (out / BAND / "notes.txt").write_text("important\n")
    (out / BAND / "manifest.json").write_text('{"name": "a web app"}\n')  # not a prepared set's manifest
    code = cli.main(["prepare", "--data", str(clean_set), "--out", str(out), "--band", BAND, "--chunks", "1",
                     "--patch-size", str(PATCH // 3), "--processes", "1", "--quiet"])
    assert code == 1
    error = capsys.readouterr().err
    assert error == (f"error: {out / BAND}: holds files but is not a prepared band folder (no manifest.json written by "
                     f"prepare); prepare replaces only what it wrote: move them away or choose another output "
                     f"folder\n")
    assert (out / BAND / "notes.txt").read_text() == "important\n" and _files(out) == [BAND, f"{BAND}/manifest.json",
                                                                                      f"{BAND}/notes.txt"]
    (out / BAND / "notes.txt").unlink()
    (out / BAND / "manifest.json").unlink()
    _prepare_clean(clean_set, out)  # an empty folder is replaced
    (out / BAND / "split.json").unlink()  # a prepared one too, whole
    _prepare_clean(clean_set, out)
    assert (out / BAND / "split.json").is_file()


@pytest.mark.parametrize("file", ["out", f"out/{BAND}"])
def test_an_output_path_that_is_a_file_is_one_error(clean_set, tmp_path, file):
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text("a file\n")
    expected = "prepared data set folder cannot be created, " if file == "out" else "exists and is not a plain folder "
    with pytest.raises(domain.DeepSUMError, match=f"^{re.escape(f'{tmp_path / file}: {expected}')}"):
        _prepare_clean(clean_set, tmp_path / "out")
    assert (tmp_path / file).read_text() == "a file\n" and sorted(path.name for path in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------------- unusable scenes


def test_a_scene_without_a_clear_hr_pixel_is_dropped_and_no_patch_is_all_cloudy(synthetic_set, tmp_path):
    """A train or validation scene whose SM.png is all zero can be neither scored nor trained on
    (the loss has no clear pixel): dropped with its reason, like a scene with too few frames."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_set, data)
    names = sorted(path.name for path in probav.list_scenes(data, "train", BAND))
    order = np.random.default_rng(5).permutation(len(names))
    cloudy = [names[order[0]], names[order[-1]]]  # the first training, the last validation scene
    for name in cloudy:
        iio.imwrite(data / "train" / BAND / name / "SM.png", np.zeros((96, 96), dtype=np.uint8))
    out = tmp_path / "out"
    manifest = dataset.prepare(data, out, bands=(BAND,), seed=5, n_chunks=1, patches_per_scene=3, patch_size=PATCH,
                               processes=1, progress=False)[BAND]
    reason = "no clear HR pixel (SM.png all zero): nothing to score or train on"
    assert manifest["train"]["dropped_scenes"][cloudy[0]] == reason
    assert manifest["validation"]["dropped_scenes"][cloudy[1]] == reason
    assert not set(cloudy) & set(manifest["train"]["names"] + manifest["validation"]["names"])
    validation = dataset.load_validation(out, BAND)
    patches = dataset.load_training_chunk(out, BAND, 0)
    assert len(patches["scene"]) > 0
    for arrays in (validation, patches):
        assert arrays["hr_clear"].any(axis=(1, 2)).all()


def test_a_short_test_scene_of_mostly_corrupt_frames_is_completed(clean_set, tmp_path):
    """A test scene of 3 frames, 2 corrupt, reuses its 1 usable frame to reach 9: more frames
    out than in, which the test store must hold."""
    data = tmp_path / "data"
    shutil.copytree(clean_set, data)
    scene = _scene(data, "test")
    frames = [(iio.imread(scene / f"LR{k:03d}.png"), iio.imread(scene / f"QM{k:03d}.png"))
              for k in range(len(list(scene.glob("LR*.png"))))]
    usable = next(frame for frame in frames if frame[0].max() <= 60000)
    for path in scene.glob("*.png"):
        path.unlink()
    for index, (lr, qm) in enumerate([frames[0], frames[1], usable]):
        lr = lr.copy()
        lr[0, 0] = 65520 if index < 2 else lr[0, 0]  # LR000, LR001 corrupt; LR002 usable
        iio.imwrite(scene / f"LR{index:03d}.png", lr)
        iio.imwrite(scene / f"QM{index:03d}.png", qm)
    manifest = _prepare_clean(data, tmp_path / "out")[BAND]["test"]
    assert (manifest["frames_in"], manifest["frames_corrupt"], manifest["frames_kept"]) == (3, 2, 9)
    store = dataset.load_scenes(tmp_path / "out", BAND, "test")
    assert store["frame_names"].tolist() == ["LR002"] * 9 and store["frames"].shape[0] == 9


# --------------------------------------------------------------------------- flags and counts


def _cli_prepare(data: Path, out: Path, *flags: str) -> list[str]:
    return ["prepare", "--data", str(data), "--out", str(out), "--band", BAND, "--chunks", "1",
            "--patches-per-scene", "2", "--patch-size", str(PATCH // 3), "--processes", "1", "--quiet", *flags]


@pytest.mark.parametrize("flag, value", [("--patch-size", "0"), ("--patch-size", "-24"), ("--processes", "-2"),
                                         ("--processes", "0"), ("--seed", "-1"), ("--chunks", "0"),
                                         ("--chunks", "-1"), ("--patches-per-scene", "0")])
def test_a_flag_below_its_minimum_is_a_usage_error(clean_set, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit:
        cli.main(_cli_prepare(clean_set, tmp_path / "out", flag, value))
    assert exit.value.code == 2
    minimum = {"--seed": 0}.get(flag, 1)
    assert f"error: argument {flag}: expected an integer >= {minimum}, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, expected", [
    ("48", "expected at most 47, smaller than the 48x48 HR images, got 48"),
    ("201", "expected at most 47, smaller than the 48x48 HR images, got 201"),
])
def test_a_patch_size_not_smaller_than_the_hr_images_is_one_error(clean_set, tmp_path, capsys, value, expected):
    assert cli.main(_cli_prepare(clean_set, tmp_path / "out", "--patch-size", value)) == 1
    assert capsys.readouterr().err == f"error: patch_size (--patch-size): {expected}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, message", [
    ({"seed": -1}, "seed (--seed): expected an integer >= 0, got -1"),
    ({"n_chunks": 0}, "n_chunks (--chunks): expected an integer >= 1, got 0"),
    ({"patches_per_scene": 0}, "patches_per_scene (--patches-per-scene): expected an integer >= 1, got 0"),
    ({"processes": 0}, "processes (--processes): expected an integer >= 1, got 0"),
    ({"processes": -2}, "processes (--processes): expected an integer >= 1, got -2"),
    ({"max_tries": 0}, "max_tries: expected an integer >= 1, got 0"),
    ({"patch_size": 0}, "patch_size (--patch-size): expected a positive integer, got 0"),
])
def test_the_functions_check_their_counts_too(clean_set, tmp_path, changes, message):
    with pytest.raises(dataset.DatasetError, match=f"^{re.escape(message)}"):
        _prepare_clean(clean_set, tmp_path / "out", **changes)
    assert not (tmp_path / "out").exists()


def test_create_patch_chunks_checks_the_patch_size_against_the_images(prepared, tmp_path):
    band_dir = tmp_path / BAND
    shutil.copytree(prepared / BAND, band_dir)
    for size, expected in ((96, "expected at most 95"), (-3, "expected a positive integer")):
        with pytest.raises(dataset.DatasetError, match=re.escape(f"patch_size (--patch-size): {expected}")):
            dataset.create_patch_chunks(band_dir, n_chunks=1, patch_size=size, progress=False)
    assert json.loads((band_dir / "manifest.json").read_text())["patches"]["patch_size"] == PATCH
