"""Dataset creation (the four `dataset_creation` notebooks) and the `prepare` command.

Steps, each a function that the notebooks call in this order and `prepare` chains:

1. `save_scene_arrays`   read every PROBA-V scene of a band (train and test) and norm.csv into
                         compact arrays (`raw/`); every input is checked before anything is kept.
2. `split_train_validation`  sorted scene names, seeded shuffle, 70% / 30% (`split.json`).
3. `create_scene_store`  per scene (`scenes.preprocess_scene`): drop corrupt frames, upsample
                         x3, choose the reference, register, drop frames shifted > 4, drop
                         scenes left with < 9 frames or without a clear HR pixel (train,
                         validation), complete them to 9 (test). Scenes run in parallel processes.
4. `create_patch_chunks` random 96x96 training windows that pass the clearance rule.
5. `save_best9`          the best-9 version of the training chunks and of the validation set,
                         masks registered (translated by their shifts).

The layout written is described in `libraries.dataset.store`. Every file appears complete or not at
all: a step writes its folder under a temporary name and renames it when done; `prepare` builds whole
band folders that way, so a bad input (a `probav.ProbaVError`) leaves no partial output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from libraries import domain, fileio, interrupts, preprocessing, probav
from libraries.arguments import integer_at_least
from libraries.dataset import store
from libraries.dataset.scenes import PreparedScene, preprocess_scene
from libraries.dataset.views import counts_table
from libraries.dataset.store import DEFAULT_SEED, DEFAULT_SHARE, DatasetError

Workers = int | None | concurrent.futures.Executor  # a number of processes, or a `worker_pool`


@contextlib.contextmanager
def worker_pool(processes: int | None) -> Iterator[int | concurrent.futures.Executor]:
    """One pool of worker processes for several steps: yields it, or 1 (this process) when
    `processes` (None: all cores) is 1. Spawning costs each worker an interpreter start and
    its imports, which a pool per step (five per band) paid again and again."""
    store.check_counts(processes=processes)
    processes = processes or os.cpu_count() or 1
    if processes == 1:
        yield 1
        return
    pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=interrupts.leave_stops_to_the_parent)
    try:
        yield pool
    finally:  # after an error, do not wait for the scenes still queued
        pool.shutdown(wait=True, cancel_futures=True)


def _parallel_map(function: Callable, items: Sequence, processes: Workers, description: str,
                  progress: bool) -> Iterator:
    """`function` over `items` in worker processes (results in order), with a tqdm bar.

    processes: a `worker_pool` (kept open), a number of processes for a pool of this call
    only (None: all cores), or 1: this process. Workers are spawned (not forked), so a parent
    that has imported TensorFlow or other threaded libraries is safe.
    """
    bar = tqdm(total=len(items), desc=description, unit="scene", disable=not progress)
    with bar, contextlib.ExitStack() as stack:
        if not isinstance(processes, concurrent.futures.Executor):
            processes = stack.enter_context(worker_pool(min(processes or os.cpu_count() or 1, max(len(items), 1))))
        if processes == 1:
            results = map(function, items)
        else:
            with interrupts.deferred():  # map submits every item now, starting the workers
                results = processes.map(function, items)
        for result in results:
            yield result
            bar.update()


def _read_scene_worker(item: tuple[str, str, str]) -> tuple[probav.Scene, float]:
    folder, band, split = item
    start = time.perf_counter()
    scene = probav.read_scene(folder, band=band, split=split)
    return scene, time.perf_counter() - start


def save_scene_arrays(data_dir: str | os.PathLike, band_dir: str | os.PathLike, band: str,
                      processes: Workers = None, progress: bool = True) -> dict[str, Any]:
    """Read the train and test scenes of `band` and norm.csv into `band_dir/raw/{train,test}`.

    Every train scene needs its baseline in norm.csv. Any bad input raises its
    `probav.ProbaVError` and leaves `raw/` as it was. Returns the manifest section.
    """
    data_dir, band_dir = Path(data_dir), Path(band_dir)
    baselines = probav.read_norm(data_dir / "norm.csv")
    section: dict[str, Any] = {"data_dir": str(data_dir)}
    read_seconds = 0.0
    with fileio.atomic_folder(band_dir / store.RAW, suffix=".partial") as raw:
        for split in domain.SPLITS:
            folders = probav.list_scenes(data_dir, split, band)
            if split == "train":
                missing = [folder.name for folder in folders if folder.name not in baselines]
                if missing:
                    raise probav.ProbaVError(f"{data_dir / 'norm.csv'}: no baseline for scene {missing[0]} "
                                             f"({len(missing)} {band} train scenes missing; expected a line "
                                             f"'{missing[0]} <cPSNR>')")
            folder = raw / split
            folder.mkdir()
            streams = {"lr": None, "clear": None, "hr": None, "hr_clear": None}
            # rows: one per LR file (the frames) or one per scene (the HR images)
            capacity = {"lr": sum(len(list(path.glob("LR*.png"))) for path in folders), "hr": len(folders)}
            names, frame_names, offsets = [], [], [0]
            items = [(str(path), band, split) for path in folders]
            for scene, seconds in _parallel_map(_read_scene_worker, items, processes, f"read {split}/{band}", progress):
                read_seconds += seconds
                arrays = {"lr": scene.lr, "clear": scene.clear}
                if split == "train":
                    arrays.update(hr=scene.hr[None], hr_clear=scene.hr_clear[None])  # [1, H, W] rows
                for key, value in arrays.items():
                    if streams[key] is None:
                        streams[key] = fileio.NpyStream(folder / f"{key}.npy", value.dtype, value.shape[1:],
                                                        capacity["lr" if key in ("lr", "clear") else "hr"])
                    streams[key].append(value)
                names.append(scene.name)
                frame_names.extend(scene.frame_names)
                offsets.append(offsets[-1] + scene.n_frames)
            for stream in streams.values():
                if stream is not None:
                    stream.close()
            arrays = {"names": store.names_array(names), "frame_names": store.names_array(frame_names),
                      "offsets": np.asarray(offsets, dtype=np.int64)}
            if split == "train":
                arrays["baseline"] = np.asarray([baselines[name] for name in names], dtype=np.float32)
            store.save_arrays(folder, arrays)
            section[split] = {"scenes": len(names), "frames": offsets[-1], "names": names}
    section["read_seconds"] = read_seconds
    store.update_manifest(band_dir, "scene_arrays", section)
    return section


def split_train_validation(band_dir: str | os.PathLike, seed: int = DEFAULT_SEED,
                           share: float = DEFAULT_SHARE) -> dict[str, list[str]]:
    """Sort the train scene names, shuffle them with `seed`, keep the first `share` for training
    and the rest for validation; written to `band_dir/split.json`. Returns {"train", "validation"}."""
    band_dir = Path(band_dir)
    names = sorted(str(name) for name in store.load_arrays(band_dir / store.RAW / "train", ["names"])["names"])
    order = np.random.default_rng(seed).permutation(len(names))
    count = int(share * len(names))  # the original's int(split * len)
    split = {"train": [names[i] for i in order[:count]], "validation": [names[i] for i in order[count:]]}
    fileio.save_json(band_dir / store.SPLIT_FILE, {"seed": seed, "share": share, **split})
    store.update_manifest(band_dir, "split", {"seed": seed, "share": share,
                                         **{key: len(value) for key, value in split.items()}})
    return split


def _preprocess_worker(item: tuple[str, int, bool]) -> PreparedScene:
    """Read one scene from the raw store (memory-mapped), upsample and register it."""
    folder, index, complete = item
    start = time.perf_counter()
    keys = ["lr", "clear", "names", "frame_names"] + ([] if complete else ["hr_clear"])  # test: no HR
    raw = store.load_arrays(Path(folder), keys + ["offsets"])
    scene = domain.scene_slice(raw, index, keys)
    read = time.perf_counter() - start
    prepared = preprocess_scene(scene["name"], scene["lr"], scene["clear"], scene["frame_names"], complete,
                                scene.get("hr_clear"))
    prepared.seconds["read"] = read
    return prepared


def create_scene_store(band_dir: str | os.PathLike, split: str, processes: Workers = None,
                       progress: bool = True) -> dict[str, Any]:
    """Preprocess every scene of `split` ("train", "validation" from `split.json`, or "test")
    in parallel and write the kept frames to `band_dir/<split>/`. Returns the manifest section
    (counts of scenes and frames kept and dropped, with reasons, and the names held)."""
    band_dir = Path(band_dir)
    if split not in domain.PREPARED_SPLITS:
        raise DatasetError(f"split {split!r} is not one of ('train', 'validation', 'test')")
    source = band_dir / store.RAW / ("test" if split == "test" else "train")
    raw = store.load_arrays(source, ["names", "offsets"] + ([] if split == "test" else ["hr", "hr_clear", "baseline"]))
    indices = list(range(len(raw["names"]))) if split == "test" else store.split_indices(band_dir, split, raw["names"])
    items = [(str(source), index, split == "test") for index in indices]
    counts = {"scenes_in": len(indices), "frames_in": 0, "frames_corrupt": 0, "frames_shifted": 0,
              "frames_reused": 0, "frames_of_dropped_scenes": 0, "dropped_scenes": {}, "seconds": {"read": 0.0, "upsample": 0.0, "register": 0.0}}
    names, frame_names, shifts, offsets, kept_rows = [], [], [], [0], []
    write_seconds = 0.0
    # rows at most: every frame of the split's scenes, at least 9 of a test scene (it reuses frames); one per scene
    least = domain.T_IN if split == "test" else 0
    capacity = {"frames": int(sum(max(raw["offsets"][i + 1] - raw["offsets"][i], least) for i in indices)),
                "hr": len(indices)}
    with fileio.atomic_folder(band_dir / split, suffix=".partial") as folder:
        streams: dict[str, fileio.NpyStream] = {}
        for index, prepared in zip(indices, _parallel_map(_preprocess_worker, items, processes,
                                                          f"{split}/{band_dir.name}", progress)):
            frames_in = int(raw["offsets"][index + 1] - raw["offsets"][index])
            counts["frames_in"] += frames_in
            counts["frames_corrupt"] += prepared.corrupt
            counts["frames_shifted"] += prepared.shifted
            counts["frames_reused"] += prepared.reused
            for key, value in prepared.seconds.items():
                counts["seconds"][key] += value
            if prepared.dropped:
                counts["dropped_scenes"][prepared.name] = prepared.dropped
                counts["frames_of_dropped_scenes"] += frames_in - prepared.corrupt - prepared.shifted
                continue
            write_start = time.perf_counter()
            arrays = {"frames": prepared.frames, "masks": prepared.masks}
            if split != "test":
                arrays.update(hr=raw["hr"][index][None], hr_clear=raw["hr_clear"][index][None])  # [1, H, W]
            for key, value in arrays.items():
                if key not in streams:
                    streams[key] = fileio.NpyStream(folder / f"{key}.npy", value.dtype, value.shape[1:],
                                                    capacity["frames" if key in ("frames", "masks") else "hr"])
                streams[key].append(value)
            names.append(prepared.name)
            frame_names.extend(prepared.frame_names.tolist())
            shifts.append(prepared.shifts)
            offsets.append(offsets[-1] + prepared.frames.shape[0])
            kept_rows.append(index)
            write_seconds += time.perf_counter() - write_start
        if not names:
            raise DatasetError(f"{band_dir.name} {split}: no scene kept ({counts['scenes_in']} scenes in, "
                               f"reasons: {sorted(set(counts['dropped_scenes'].values()))})")
        for stream in streams.values():
            stream.close()
        arrays = {"names": store.names_array(names), "frame_names": store.names_array(frame_names),
                  "shifts": np.concatenate(shifts).astype(np.int32), "offsets": np.asarray(offsets, dtype=np.int64)}
        if split != "test":
            arrays["baseline"] = np.asarray(raw["baseline"][kept_rows], dtype=np.float32)
        store.save_arrays(folder, arrays)
    counts["seconds"]["write"] = write_seconds  # the parent's appends; workers' times are summed per scene
    counts.update(scenes_kept=len(names), frames_kept=offsets[-1], names=names)
    store.update_manifest(band_dir, split, counts)
    return counts


def create_patch_chunks(band_dir: str | os.PathLike, n_chunks: int = 5, patches_per_scene: int = 20,
                        patch_size: int = 96, seed: int = DEFAULT_SEED, max_tries: int = 100_000,
                        progress: bool = True) -> dict[str, Any]:
    """Draw training windows of every training scene, `patches_per_scene` per chunk, and write
    their corners to `band_dir/train/chunk_{k}/` (the windows are cut by `save_best9` or at load time).

    A window is accepted when at least 9 frames are more than 70% clear in it and the HR window
    more than 85% clear (`preprocessing.valid_patch_corners`); up to `max_tries` draws per scene
    and chunk. Scene s of chunk k draws from `default_rng([seed, k, s])`. Returns the manifest section.
    """
    band_dir = Path(band_dir)
    store.check_counts(seed=seed, n_chunks=n_chunks, patches_per_scene=patches_per_scene, max_tries=max_tries)
    train_store = store.load_arrays(band_dir / "train", ["masks", "hr_clear", "offsets", "names"])
    store.check_patch_size(patch_size, min(train_store["hr_clear"].shape[-2:]))
    scene_count = len(train_store["names"])
    corners: list[list[np.ndarray]] = [[] for _ in range(n_chunks)]
    start = time.perf_counter()
    for scene in tqdm(range(scene_count), desc=f"patches {band_dir.name}", unit="scene", disable=not progress):
        arrays = domain.scene_slice(train_store, scene, ["masks", "hr_clear"])
        valid = preprocessing.valid_patch_corners(arrays["masks"], arrays["hr_clear"], patch_size)
        for chunk in range(n_chunks):
            rng = np.random.default_rng([seed, chunk, scene])
            corners[chunk].append(preprocessing.sample_patch_corners(valid, patch_size, patches_per_scene, rng, max_tries))
    counts = []
    for chunk in range(n_chunks):
        scene_index = np.concatenate([np.full(len(c), s, dtype=np.int32) for s, c in enumerate(corners[chunk])])
        with fileio.atomic_folder(band_dir / "train" / f"chunk_{chunk}", suffix=".partial") as folder:
            store.save_arrays(folder, {"corners": np.concatenate(corners[chunk]).astype(np.int32), "scene": scene_index})
        counts.append(int(scene_index.size))
    short = sorted({str(train_store["names"][s]) for chunk in corners for s, c in enumerate(chunk) if len(c) < patches_per_scene})
    section = {"n_chunks": n_chunks, "patches_per_scene": patches_per_scene, "patch_size": patch_size,
               "seed": seed, "max_tries": max_tries, "patches": counts, "scenes_short_of_patches": short,
               "seconds": time.perf_counter() - start}
    store.update_manifest(band_dir, "patches", section)
    return section


def _write_best9(folder: Path, blocks: Iterable[dict[str, np.ndarray]], windows: int) -> int:
    """Stream `blocks` of windows into one .npy per key; `windows` is their total row count."""
    streams: dict[str, fileio.NpyStream] = {}
    for block in blocks:
        for key, value in block.items():
            if key not in streams:
                streams[key] = fileio.NpyStream(folder / f"{key}.npy", value.dtype, value.shape[1:], windows)
            streams[key].append(value)
    for stream in streams.values():
        stream.close()
    return streams["scene"].rows if streams else 0


def save_best9(band_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Write `band_dir/best9/`: every training chunk and the validation set as fixed-shape best-9
    arrays with registered masks. Returns the manifest section."""
    band_dir = Path(band_dir)
    train = store.load_arrays(band_dir / "train", ["frames", "masks", "shifts", "offsets", "hr", "hr_clear", "baseline", "names"])
    chunks = sorted((band_dir / "train").glob("chunk_*"), key=lambda path: int(path.name.split("_")[1]))
    patch_size = int(store.read_manifest(band_dir).get("patches", {}).get("patch_size", 0))
    if not chunks or not patch_size:
        raise DatasetError(f"{band_dir / 'train'}: no chunk_* folders (run create_patch_chunks first)")
    section: dict[str, Any] = {"chunks": []}
    start = time.perf_counter()
    with fileio.atomic_folder(band_dir / store.BEST9, suffix=".partial") as folder:
        for path in tqdm(chunks, desc=f"best-9 {band_dir.name}", unit="chunk", disable=not progress):
            chunk = store.load_arrays(path, ["corners", "scene"], mmap=False)
            (folder / "train" / path.name).mkdir(parents=True)
            rows = _write_best9(folder / "train" / path.name,
                                store.best9_windows(train, chunk["scene"], chunk["corners"], patch_size),
                                len(chunk["scene"]))
            section["chunks"].append(rows)
        validation = store.load_arrays(band_dir / "validation", ["frames", "masks", "shifts", "offsets", "hr", "hr_clear", "baseline", "names"])
        (folder / "validation").mkdir()
        scene, corners, size = store.validation_windows(validation)
        section["validation"] = _write_best9(folder / "validation", store.best9_windows(validation, scene, corners, size), len(scene))
        fileio.save_npy(folder / "validation" / "names.npy", np.asarray(validation["names"]))
    section["seconds"] = time.perf_counter() - start
    store.update_manifest(band_dir, "best9", section)
    return section


def prepare(data_dir: str | os.PathLike, out_dir: str | os.PathLike, bands: Sequence[str] = domain.BANDS,
            seed: int = DEFAULT_SEED, n_chunks: int = 5, patches_per_scene: int = 20, patch_size: int = 96,
            max_tries: int = 100_000, share: float = DEFAULT_SHARE, processes: int | None = None,
            progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every step for every band: `out_dir/<BAND>/` as in the module docstring.

    Counts and the output folder are checked first (`store.require_output_folder`: an older
    `out_dir/<BAND>` is replaced only if prepared or empty). All bands are built in a temporary
    folder inside `out_dir` and moved into place at the end; on any error nothing is left behind,
    not even `out_dir` if this call created it. One run at a time writes `out_dir` (`fileio.FolderLock`:
    a second one stops with an error naming the first's process); the temporary folders that
    killed runs left behind are removed first. Returns {band: manifest}.
    """
    bands = tuple(bands)
    for band in bands:
        if band not in domain.BANDS:
            raise DatasetError(f"band {band!r} is not one of {domain.BANDS}")
    store.check_counts(seed=seed, n_chunks=n_chunks, patches_per_scene=patches_per_scene, max_tries=max_tries,
                       processes=processes)
    store.check_patch_size(patch_size)
    out_dir = store.require_output_folder(data_dir, out_dir, bands)  # before anything is written
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"data_dir": str(data_dir), "seed": seed, "share": share, "n_chunks": n_chunks,
                  "patches_per_scene": patches_per_scene, "patch_size": patch_size, "max_tries": max_tries,
                  "processes": processes}
    start = time.perf_counter()
    try:
        lock = fileio.FolderLock(out_dir, "prepared data set folder")
    except domain.DeepSUMError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    fileio.remove_stale_partials(out_dir, ".prepare-*.partial")  # of runs killed before their cleanup
    partial = Path(tempfile.mkdtemp(prefix=".prepare-", suffix=".partial", dir=out_dir))
    try:
        with worker_pool(processes) as workers:
            # read shared: `synth` cannot replace the folder while its scenes are read
            with fileio.lock_if_present(data_dir, "PROBA-V folder", shared=True):
                for band in bands:  # read everything first: a bad input stops before any processing
                    store.update_manifest(partial / band, "parameters", parameters)
                    save_scene_arrays(data_dir, partial / band, band, workers, progress)
                    hr = store.load_arrays(partial / band / store.RAW / "train", ["hr"])["hr"]
                    store.check_patch_size(patch_size, min(hr.shape[-2:]))
            for band in bands:
                split_train_validation(partial / band, seed, share)
                for split in domain.PREPARED_SPLITS:
                    create_scene_store(partial / band, split, workers, progress)
        for band in bands:
            band_dir = partial / band
            create_patch_chunks(band_dir, n_chunks, patches_per_scene, patch_size, seed, max_tries, progress)
            save_best9(band_dir, progress)
            store.update_manifest(band_dir, "seconds", time.perf_counter() - start)
        for band in bands:
            destination = out_dir / band
            store.require_replaceable(destination)  # checked at the start: again, in case it changed
            if destination.exists():
                shutil.rmtree(destination)
            (partial / band).rename(destination)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        lock.release()
    return {band: store.read_manifest(out_dir / band) for band in bands}


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="PROBA-V folder (norm.csv, train/, test/)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (a <BAND>/ folder per band)")
    parser.add_argument("--band", default="all", choices=domain.BANDS + ("all",), help="band to prepare (default: all)")
    parser.add_argument("--seed", type=integer_at_least(0), default=DEFAULT_SEED,
                        help=f"seed of the split and the patches (default {DEFAULT_SEED})")
    parser.add_argument("--chunks", type=integer_at_least(1), default=5, help="training patch chunks (default 5)")
    parser.add_argument("--patches-per-scene", type=integer_at_least(1), default=20,
                        help="patches per scene per chunk (default 20)")
    parser.add_argument("--patch-size", type=integer_at_least(1), default=96, help="patch side on the 384 grid, "
                        "smaller than the HR side (DeepSUM's configs: a multiple of 3; default 96)")
    parser.add_argument("--processes", type=integer_at_least(1), default=None,
                        help="worker processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_prepare(args: argparse.Namespace) -> int:
    bands = domain.BANDS if args.band == "all" else (args.band,)
    manifests = prepare(args.data, args.out, bands, seed=args.seed, n_chunks=args.chunks,
                        patches_per_scene=args.patches_per_scene, patch_size=args.patch_size,
                        processes=args.processes, progress=not args.quiet)
    for band, manifest in manifests.items():
        print(f"\n{args.out / band}: {manifest['patches']['patches']} patches per chunk, "
              f"{manifest['best9']['validation']} validation scenes")
        print(counts_table(args.out / band))
    return 0
