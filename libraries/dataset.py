"""Dataset creation on disk (spec section 3, the four `dataset_creation` notebooks) and its readers.

Steps, each a function that the notebooks call in this order and `prepare` chains:

1. `save_scene_arrays`   read every PROBA-V scene of a band (train and test) and norm.csv into
                         compact arrays (`raw/`); every input is checked before anything is kept.
2. `split_train_validation`  sorted scene names, seeded shuffle, 70% / 30% (`split.json`).
3. `create_scene_store`  per scene: drop corrupt frames, upsample x3, choose the reference,
                         register, drop frames shifted > 4, drop scenes left with < 9 frames
                         (train, validation) or complete them to 9 (test). Scenes run in
                         parallel processes.
4. `create_patch_chunks` random 96x96 training windows that pass the clearance rule.
5. `save_best9`          the best-9 version of the training chunks and of the validation set,
                         masks registered (translated by their shifts).

Layout of `<out>/<BAND>/` (every array an .npy file, read with allow_pickle=False;
ragged data is flat with offsets; names are fixed-width unicode arrays)::

    manifest.json                      parameters, seed, version, counts, every scene held
    split.json                         seed, share, the train and validation scene names
    raw/{train,test}/                  as read: lr [F,128,128] uint16, clear [F,128,128] bool,
                                       offsets [S+1] int64, names [S], frame_names [F],
                                       train only: hr [S,384,384] uint16, hr_clear bool, baseline [S] float32
    {train,validation,test}/           kept frames of kept scenes, reference first:
                                       frames [F,384,384] float32 (bicubic, NOT registered),
                                       masks [F,384,384] bool (upsampled, NOT registered),
                                       shifts [F,2] int32, offsets [S+1], names [S], frame_names [F];
                                       train, validation: hr [S,384,384] uint16, hr_clear, baseline
    train/chunk_{k}/                   corners [N,2] int32 (top-left, row, col), scene [N] int32
    best9/train/chunk_{k}/             frames [N,9,P,P] float32, masks [N,9,P,P] bool (registered),
                                       shifts [N,9,2] int32, hr [N,P,P] uint16, hr_clear [N,P,P] bool,
                                       baseline [N] float32, scene [N] int32, corners [N,2] int32
    best9/validation/                  the same at 384x384, one row per scene (corners all 0)

Shifts are each frame's integer displacement from the reference on the 384 grid (see
`preprocessing`): the RegNet label, and `preprocessing.translate_masks` registers masks with them.
Best-9 of a training patch counts clear pixels inside the patch, as the original.

Every file appears complete or not at all: a step writes its folder under a temporary name
and renames it when done; `prepare` builds whole band folders that way, so a bad input (a
`probav.ProbaVError`) leaves no partial output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

import libraries
from libraries import fileio, preprocessing, probav

BANDS = probav.BANDS
RAW = "raw"
BEST9 = "best9"
MANIFEST = "manifest.json"
SPLIT_FILE = "split.json"
DEFAULT_SEED = 1  # the original's shuffle used random_state=1 (our permutation differs: sorted names, NumPy)
DEFAULT_SHARE = 0.7
PER_SCENE = ("names", "hr", "hr_clear", "baseline")  # arrays indexed by scene; the others by frame


class DatasetError(ValueError):
    """A prepared dataset folder is missing, incomplete or not what the caller asked for."""


# ---------------------------------------------------------------------------------------------
# files


class _NpyStream:
    """An .npy file written row block by row block, its length known only at the end.

    A 128-byte header slot is reserved; `close` fills it with the final shape (npy format 1.0).
    """

    HEADER = 128

    def __init__(self, path: Path, dtype: Any, item_shape: tuple[int, ...]):
        self.path, self.dtype, self.item_shape, self.rows = path, np.dtype(dtype), tuple(item_shape), 0
        self.handle = open(path, "wb")
        self.handle.write(b"\0" * self.HEADER)

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.item_shape:
            raise ValueError(f"{self.path.name}: rows of shape {block.shape[1:]}, expected {self.item_shape}")
        self.handle.write(block.tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": (self.rows,) + self.item_shape})
        room = self.HEADER - len(np.lib.format.MAGIC_PREFIX) - 2 - 2  # magic, version, length
        text = header.ljust(room - 1) + "\n"
        if len(text) != room:
            raise ValueError(f"{self.path.name}: npy header of {len(header)} characters does not fit")
        self.handle.seek(0)
        self.handle.write(np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + room.to_bytes(2, "little")
                          + text.encode("latin1"))
        self.handle.close()


def _save_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> None:
    for key, value in arrays.items():
        fileio.save_npy(folder / f"{key}.npy", value)


def _names_array(names: Sequence[str]) -> np.ndarray:
    """Fixed-width unicode array (never object) of names."""
    width = max((len(name) for name in names), default=1)
    return np.asarray(list(names), dtype=f"<U{width}")


def _load_arrays(folder: Path, keys: Iterable[str], mmap: bool = True) -> dict[str, np.ndarray]:
    """Load `folder/<key>.npy` without pickle; memory-mapped unless `mmap` is False."""
    arrays = {}
    for key in keys:
        path = folder / f"{key}.npy"
        if not path.is_file():
            raise DatasetError(f"{path}: file missing (expected an array of a prepared dataset; "
                               f"run `python -m libraries prepare` or the dataset_creation notebooks)")
        arrays[key] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    return arrays


def _read_manifest(band_dir: Path) -> dict[str, Any]:
    path = band_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def _update_manifest(band_dir: Path, section: str, content: Any) -> dict[str, Any]:
    manifest = _read_manifest(band_dir)
    manifest.update({"band": band_dir.name, "library_version": libraries.__version__, section: content})
    fileio.save_json(band_dir / MANIFEST, manifest)
    return manifest


def band_folder(dataset_path: str | os.PathLike, band: str) -> Path:
    """`dataset_path/band`, checked to exist."""
    if band not in BANDS:
        raise DatasetError(f"band {band!r} is not one of {BANDS}")
    folder = Path(dataset_path) / band
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder missing (expected a dataset prepared with "
                           f"`python -m libraries prepare --band {band}`)")
    return folder


# ---------------------------------------------------------------------------------------------
# parallel map


def _parallel_map(function: Callable, items: Sequence, processes: int | None, description: str,
                  progress: bool) -> Iterator:
    """`function` over `items` in worker processes (results in order), with a tqdm bar.

    processes=1 runs in this process. Workers are spawned (not forked), so a parent that has
    imported TensorFlow or other threaded libraries is safe.
    """
    processes = min(processes or os.cpu_count() or 1, max(len(items), 1))
    bar = tqdm(total=len(items), desc=description, unit="scene", disable=not progress)
    with bar:
        if processes == 1:
            for item in items:
                yield function(item)
                bar.update()
            return
        pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        try:
            for result in pool.map(function, items):
                yield result
                bar.update()
        finally:  # after an error, do not wait for the scenes still queued
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# step 1: PROBA-V folders -> compact arrays


def _read_scene_worker(item: tuple[str, str, str]) -> tuple[probav.Scene, float]:
    folder, band, split = item
    start = time.perf_counter()
    scene = probav.read_scene(folder, band=band, split=split)
    return scene, time.perf_counter() - start


def save_scene_arrays(data_dir: str | os.PathLike, band_dir: str | os.PathLike, band: str,
                      processes: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Read the train and test scenes of `band` and norm.csv into `band_dir/raw/{train,test}`.

    Every train scene needs its baseline in norm.csv. Any bad input raises its
    `probav.ProbaVError` and leaves `raw/` as it was. Returns the manifest section.
    """
    data_dir, band_dir = Path(data_dir), Path(band_dir)
    baselines = probav.read_norm(data_dir / "norm.csv")
    section: dict[str, Any] = {"data_dir": str(data_dir)}
    read_seconds = 0.0
    with fileio.atomic_folder(band_dir / RAW, suffix=".partial") as raw:
        for split in probav.SPLITS:
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
            names, frame_names, offsets = [], [], [0]
            items = [(str(path), band, split) for path in folders]
            for scene, seconds in _parallel_map(_read_scene_worker, items, processes, f"read {split}/{band}", progress):
                read_seconds += seconds
                arrays = {"lr": scene.lr, "clear": scene.clear}
                if split == "train":
                    arrays.update(hr=scene.hr[None], hr_clear=scene.hr_clear[None])  # [1, H, W] rows
                for key, value in arrays.items():
                    if streams[key] is None:
                        streams[key] = _NpyStream(folder / f"{key}.npy", value.dtype, value.shape[1:])
                    streams[key].append(value)
                names.append(scene.name)
                frame_names.extend(scene.frame_names)
                offsets.append(offsets[-1] + scene.n_frames)
            for stream in streams.values():
                if stream is not None:
                    stream.close()
            arrays = {"names": _names_array(names), "frame_names": _names_array(frame_names),
                      "offsets": np.asarray(offsets, dtype=np.int64)}
            if split == "train":
                arrays["baseline"] = np.asarray([baselines[name] for name in names], dtype=np.float32)
            _save_arrays(folder, arrays)
            section[split] = {"scenes": len(names), "frames": offsets[-1], "names": names}
    section["read_seconds"] = read_seconds
    _update_manifest(band_dir, "scene_arrays", section)
    return section


# ---------------------------------------------------------------------------------------------
# step 2: the train / validation split


def split_train_validation(band_dir: str | os.PathLike, seed: int = DEFAULT_SEED,
                           share: float = DEFAULT_SHARE) -> dict[str, list[str]]:
    """Sort the train scene names, shuffle them with `seed`, keep the first `share` for training
    and the rest for validation; written to `band_dir/split.json`. Returns {"train", "validation"}."""
    band_dir = Path(band_dir)
    names = sorted(str(name) for name in _load_arrays(band_dir / RAW / "train", ["names"])["names"])
    order = np.random.default_rng(seed).permutation(len(names))
    count = int(share * len(names))  # the original's int(split * len)
    split = {"train": [names[i] for i in order[:count]], "validation": [names[i] for i in order[count:]]}
    fileio.save_json(band_dir / SPLIT_FILE, {"seed": seed, "share": share, **split})
    _update_manifest(band_dir, "split", {"seed": seed, "share": share,
                                         **{key: len(value) for key, value in split.items()}})
    return split


# ---------------------------------------------------------------------------------------------
# step 3: per-scene preprocessing


@dataclass
class PreparedScene:
    """One scene after the frame filters, upsampling and registration.

    frames [K, 3h, 3w] float32, masks [K, 3h, 3w] bool (unregistered), shifts [K, 2] int32,
    reference first. `dropped` names why a train/validation scene was dropped (arrays empty).
    """

    name: str
    frames: np.ndarray
    masks: np.ndarray
    shifts: np.ndarray
    frame_names: np.ndarray
    corrupt: int = 0  # frames dropped: a pixel > 60000
    shifted: int = 0  # frames dropped: shift > 4
    reused: int = 0  # test scenes: frames added again to reach 9
    dropped: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def preprocess_scene(name: str, lr: np.ndarray, clear: np.ndarray, frame_names: Sequence[str],
                     complete: bool = False) -> PreparedScene:
    """Spec section 3, steps 3-5 for one scene.

    lr [K, h, w] raw DN, clear [K, h, w] bool. Drops corrupt frames, upsamples frames (bicubic)
    and masks (nearest) x3, puts the reference (most clear pixels) first, registers every frame
    to it, drops frames shifted more than 4. A scene left with fewer than 9 frames is dropped,
    or, with `complete` (test scenes, never dropped), given its clearest frames again.
    """
    frame_names = np.asarray(frame_names)
    count = int(np.asarray(lr).shape[0])
    lr, clear, kept = preprocessing.drop_corrupt_frames(np.asarray(lr), np.asarray(clear, dtype=bool))
    result = dict(name=name, corrupt=count - kept.size)
    if kept.size < preprocessing.T_IN and not complete:
        return _dropped_scene(result, f"fewer than {preprocessing.T_IN} frames without corrupt ones")
    if kept.size == 0:
        raise preprocessing.TooFewFramesError(f"scene {name}: all {count} frames are corrupt (a pixel > "
                                              f"{preprocessing.CORRUPT_VALUE}); no input can be built")
    start = time.perf_counter()
    order = preprocessing.reference_first_order(preprocessing.clear_pixel_counts(clear))
    frames = preprocessing.upsample_frames(lr[order])  # [K, 3h, 3w] float32
    masks = preprocessing.upsample_masks(clear[order])  # [K, 3h, 3w] bool
    upsampled = time.perf_counter()
    shifts = preprocessing.estimate_shifts(frames)  # [K, 2]
    within = preprocessing.shifts_within_limit(shifts)
    registered = time.perf_counter()
    seconds = {"upsample": upsampled - start, "register": registered - upsampled}
    frames, masks, shifts, names = frames[within], masks[within], shifts[within], frame_names[kept][order][within]
    result.update(shifted=int(np.count_nonzero(~within)), seconds=seconds)
    if complete:
        index = preprocessing.complete_frames(preprocessing.clear_pixel_counts(masks))
        frames, masks, shifts, names = frames[index], masks[index], shifts[index], names[index]
        result["reused"] = int(index.size - np.count_nonzero(within))
    elif frames.shape[0] < preprocessing.T_IN:
        return _dropped_scene(result, f"fewer than {preprocessing.T_IN} frames shifted by at most "
                                      f"{preprocessing.MAX_SHIFT}")
    return PreparedScene(frames=frames, masks=masks, shifts=shifts, frame_names=names, **result)


def _dropped_scene(result: dict[str, Any], reason: str) -> PreparedScene:
    empty = np.zeros((0, 0, 0), dtype=np.float32)
    return PreparedScene(frames=empty, masks=empty.astype(bool), shifts=np.zeros((0, 2), np.int32),
                         frame_names=np.zeros(0, dtype="<U1"), dropped=reason, **result)


def prepare_test_scene(scene: probav.Scene) -> dict[str, Any]:
    """Test-time preprocessing of one scene read from a PROBA-V folder, as the test store:
    {"name", "frames" [K,3h,3w] float32, "masks" [K,3h,3w] bool (unregistered), "shifts" [K,2]
    int32, "frame_names" [K]}, K >= 9, reference first; plus "hr", "hr_clear" when the scene has them."""
    prepared = preprocess_scene(scene.name, scene.lr, scene.clear, scene.frame_names, complete=True)
    result = {"name": scene.name, "frames": prepared.frames, "masks": prepared.masks,
              "shifts": prepared.shifts, "frame_names": prepared.frame_names}
    if scene.hr is not None:
        result.update(hr=scene.hr, hr_clear=scene.hr_clear)
    return result


def _raw_scene(raw: Mapping[str, np.ndarray], index: int) -> dict[str, Any]:
    start, stop = int(raw["offsets"][index]), int(raw["offsets"][index + 1])
    return {"name": str(raw["names"][index]), "lr": np.asarray(raw["lr"][start:stop]),
            "clear": np.asarray(raw["clear"][start:stop]), "frame_names": raw["frame_names"][start:stop]}


def _preprocess_worker(item: tuple[str, int, bool]) -> PreparedScene:
    """Read one scene from the raw store (memory-mapped), upsample and register it."""
    folder, index, complete = item
    start = time.perf_counter()
    raw = _load_arrays(Path(folder), ["lr", "clear", "offsets", "names", "frame_names"])
    scene = _raw_scene(raw, index)
    read = time.perf_counter() - start
    prepared = preprocess_scene(scene["name"], scene["lr"], scene["clear"], scene["frame_names"], complete)
    prepared.seconds["read"] = read
    return prepared


def create_scene_store(band_dir: str | os.PathLike, split: str, processes: int | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Preprocess every scene of `split` ("train", "validation" from `split.json`, or "test")
    in parallel and write the kept frames to `band_dir/<split>/`. Returns the manifest section
    (counts of scenes and frames kept and dropped, with reasons, and the names held)."""
    band_dir = Path(band_dir)
    if split not in ("train", "validation", "test"):
        raise DatasetError(f"split {split!r} is not one of ('train', 'validation', 'test')")
    source = band_dir / RAW / ("test" if split == "test" else "train")
    raw = _load_arrays(source, ["names", "offsets"] + ([] if split == "test" else ["hr", "hr_clear", "baseline"]))
    position = {str(name): index for index, name in enumerate(raw["names"])}
    if split == "test":
        indices = list(range(len(position)))
    else:
        split_path = band_dir / SPLIT_FILE
        if not split_path.is_file():
            raise DatasetError(f"{split_path}: file missing (run split_train_validation first)")
        indices = [position[name] for name in json.loads(split_path.read_text())[split]]
    items = [(str(source), index, split == "test") for index in indices]
    counts = {"scenes_in": len(indices), "frames_in": 0, "frames_corrupt": 0, "frames_shifted": 0,
              "frames_reused": 0, "frames_of_dropped_scenes": 0, "dropped_scenes": {}, "seconds": {"read": 0.0, "upsample": 0.0, "register": 0.0}}
    names, frame_names, shifts, offsets, kept_rows = [], [], [], [0], []
    write_seconds = 0.0
    with fileio.atomic_folder(band_dir / split, suffix=".partial") as folder:
        streams: dict[str, _NpyStream] = {}
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
                    streams[key] = _NpyStream(folder / f"{key}.npy", value.dtype, value.shape[1:])
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
        arrays = {"names": _names_array(names), "frame_names": _names_array(frame_names),
                  "shifts": np.concatenate(shifts).astype(np.int32), "offsets": np.asarray(offsets, dtype=np.int64)}
        if split != "test":
            arrays["baseline"] = np.asarray(raw["baseline"][kept_rows], dtype=np.float32)
        _save_arrays(folder, arrays)
    counts["seconds"]["write"] = write_seconds  # the parent's appends; workers' times are summed per scene
    counts.update(scenes_kept=len(names), frames_kept=offsets[-1], names=names)
    _update_manifest(band_dir, split, counts)
    return counts


# ---------------------------------------------------------------------------------------------
# step 4: training patches


def _scene_arrays(store: Mapping[str, np.ndarray], index: int, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """One scene's arrays of a (memory-mapped) store: per-frame keys sliced by offsets."""
    start, stop = int(store["offsets"][index]), int(store["offsets"][index + 1])
    return {key: np.asarray(store[key][index] if key in PER_SCENE else store[key][start:stop]) for key in keys}


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
    store = _load_arrays(band_dir / "train", ["masks", "hr_clear", "offsets", "names"])
    scenes = len(store["names"])
    corners: list[list[np.ndarray]] = [[] for _ in range(n_chunks)]
    start = time.perf_counter()
    for scene in tqdm(range(scenes), desc=f"patches {band_dir.name}", unit="scene", disable=not progress):
        arrays = _scene_arrays(store, scene, ["masks", "hr_clear"])
        valid = preprocessing.valid_patch_corners(arrays["masks"], arrays["hr_clear"], patch_size)
        for chunk in range(n_chunks):
            rng = np.random.default_rng([seed, chunk, scene])
            corners[chunk].append(preprocessing.sample_patch_corners(valid, patch_size, patches_per_scene, rng, max_tries))
    counts = []
    for chunk in range(n_chunks):
        scene_index = np.concatenate([np.full(len(c), s, dtype=np.int32) for s, c in enumerate(corners[chunk])])
        with fileio.atomic_folder(band_dir / "train" / f"chunk_{chunk}", suffix=".partial") as folder:
            _save_arrays(folder, {"corners": np.concatenate(corners[chunk]).astype(np.int32), "scene": scene_index})
        counts.append(int(scene_index.size))
    short = sorted({str(store["names"][s]) for chunk in corners for s, c in enumerate(chunk) if len(c) < patches_per_scene})
    section = {"n_chunks": n_chunks, "patches_per_scene": patches_per_scene, "patch_size": patch_size,
               "seed": seed, "max_tries": max_tries, "patches": counts, "scenes_short_of_patches": short,
               "seconds": time.perf_counter() - start}
    _update_manifest(band_dir, "patches", section)
    return section


# ---------------------------------------------------------------------------------------------
# step 5: best-9


def best9_windows(store: Mapping[str, np.ndarray], scene: np.ndarray, corners: np.ndarray,
                  size: int) -> Iterator[dict[str, np.ndarray]]:
    """Best-9 network inputs of windows cut from a scene store, one dict per run of equal `scene`.

    store: a train or validation store (`_load_arrays`); scene [N] int, corners [N, 2] int.
    Yields frames [n,9,size,size] float32, masks [n,9,size,size] bool registered by their
    shifts, shifts [n,9,2] int32, hr [n,size,size] uint16, hr_clear bool, baseline [n] float32,
    scene [n] int32, corners [n,2] int32. Best-9 counts clear pixels inside each window.
    """
    scene, corners = np.asarray(scene), np.asarray(corners)
    breaks = np.flatnonzero(np.diff(scene)) + 1
    for rows in np.split(np.arange(scene.size), breaks):
        if rows.size == 0:
            continue
        index = int(scene[rows[0]])
        arrays = _scene_arrays(store, index, ["frames", "masks", "shifts", "hr", "hr_clear", "baseline"])
        where = corners[rows]
        frames = preprocessing.cut_windows(arrays["frames"], where, size)  # [n, K, size, size]
        masks = preprocessing.cut_windows(arrays["masks"], where, size)  # [n, K, size, size]
        shifts = np.broadcast_to(arrays["shifts"], (rows.size,) + arrays["shifts"].shape)  # [n, K, 2]
        frames, masks, shifts = preprocessing.select_best_frames(frames, masks, shifts)
        yield {"frames": frames.astype(np.float32), "masks": preprocessing.translate_masks(masks, shifts),
               "shifts": shifts.astype(np.int32),
               "hr": preprocessing.cut_windows(arrays["hr"], where, size),
               "hr_clear": preprocessing.cut_windows(arrays["hr_clear"], where, size),
               "baseline": np.full(rows.size, arrays["baseline"], dtype=np.float32),
               "scene": np.full(rows.size, index, dtype=np.int32), "corners": where.astype(np.int32)}


def _write_best9(folder: Path, blocks: Iterable[dict[str, np.ndarray]]) -> int:
    streams: dict[str, _NpyStream] = {}
    for block in blocks:
        for key, value in block.items():
            if key not in streams:
                streams[key] = _NpyStream(folder / f"{key}.npy", value.dtype, value.shape[1:])
            streams[key].append(value)
    for stream in streams.values():
        stream.close()
    return streams["scene"].rows if streams else 0


def _validation_windows(store: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    scenes = len(store["names"])
    size = int(store["hr"].shape[-1])
    return np.arange(scenes, dtype=np.int32), np.zeros((scenes, 2), dtype=np.int32), size


def save_best9(band_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Write `band_dir/best9/`: every training chunk and the validation set as fixed-shape best-9
    arrays with registered masks (spec steps 7-8). Returns the manifest section."""
    band_dir = Path(band_dir)
    train = _load_arrays(band_dir / "train", ["frames", "masks", "shifts", "offsets", "hr", "hr_clear", "baseline", "names"])
    chunks = sorted((band_dir / "train").glob("chunk_*"), key=lambda path: int(path.name.split("_")[1]))
    patch_size = int(_read_manifest(band_dir).get("patches", {}).get("patch_size", 0))
    if not chunks or not patch_size:
        raise DatasetError(f"{band_dir / 'train'}: no chunk_* folders (run create_patch_chunks first)")
    section: dict[str, Any] = {"chunks": []}
    start = time.perf_counter()
    with fileio.atomic_folder(band_dir / BEST9, suffix=".partial") as folder:
        for path in tqdm(chunks, desc=f"best-9 {band_dir.name}", unit="chunk", disable=not progress):
            chunk = _load_arrays(path, ["corners", "scene"], mmap=False)
            (folder / "train" / path.name).mkdir(parents=True)
            rows = _write_best9(folder / "train" / path.name,
                                best9_windows(train, chunk["scene"], chunk["corners"], patch_size))
            section["chunks"].append(rows)
        validation = _load_arrays(band_dir / "validation", ["frames", "masks", "shifts", "offsets", "hr", "hr_clear", "baseline", "names"])
        (folder / "validation").mkdir()
        scene, corners, size = _validation_windows(validation)
        section["validation"] = _write_best9(folder / "validation", best9_windows(validation, scene, corners, size))
        fileio.save_npy(folder / "validation" / "names.npy", np.asarray(validation["names"]))
    section["seconds"] = time.perf_counter() - start
    _update_manifest(band_dir, "best9", section)
    return section


# ---------------------------------------------------------------------------------------------
# all steps


def prepare(data_dir: str | os.PathLike, out_dir: str | os.PathLike, bands: Sequence[str] = BANDS,
            seed: int = DEFAULT_SEED, n_chunks: int = 5, patches_per_scene: int = 20, patch_size: int = 96,
            max_tries: int = 100_000, share: float = DEFAULT_SHARE, processes: int | None = None,
            progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every step for every band: `out_dir/<BAND>/` as in the module docstring.

    All bands are built in a temporary folder inside `out_dir` and moved into place at the end
    (replacing an older `out_dir/<BAND>`); on any error nothing is left behind, not even
    `out_dir` if this call created it. Returns {band: manifest}.
    """
    bands = tuple(bands)
    for band in bands:
        if band not in BANDS:
            raise DatasetError(f"band {band!r} is not one of {BANDS}")
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"data_dir": str(data_dir), "seed": seed, "share": share, "n_chunks": n_chunks,
                  "patches_per_scene": patches_per_scene, "patch_size": patch_size, "max_tries": max_tries,
                  "processes": processes}
    start = time.perf_counter()
    partial = Path(tempfile.mkdtemp(prefix=".prepare-", suffix=".partial", dir=out_dir))
    try:
        for band in bands:  # read everything first: a bad input stops before any processing
            _update_manifest(partial / band, "parameters", parameters)
            save_scene_arrays(data_dir, partial / band, band, processes, progress)
        for band in bands:
            band_dir = partial / band
            split_train_validation(band_dir, seed, share)
            for split in ("train", "validation", "test"):
                create_scene_store(band_dir, split, processes, progress)
            create_patch_chunks(band_dir, n_chunks, patches_per_scene, patch_size, seed, max_tries, progress)
            save_best9(band_dir, progress)
            _update_manifest(band_dir, "seconds", time.perf_counter() - start)
        for band in bands:
            destination = out_dir / band
            if destination.exists():
                shutil.rmtree(destination)
            (partial / band).rename(destination)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return {band: _read_manifest(out_dir / band) for band in bands}


# ---------------------------------------------------------------------------------------------
# readers


def _float_hr(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays["hr"] = np.asarray(arrays["hr"], dtype=np.float32)
    return arrays


def _best9_store(folder: Path) -> dict[str, np.ndarray]:
    return _float_hr(_load_arrays(folder, ["frames", "masks", "shifts", "hr", "hr_clear", "baseline", "scene"]))


def _store_for_windows(band_dir: Path, split: str) -> dict[str, np.ndarray]:
    return _load_arrays(band_dir / split, ["frames", "masks", "shifts", "offsets", "hr", "hr_clear", "baseline", "names"])


def _concatenate(blocks: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    blocks = list(blocks)
    return _float_hr({key: np.concatenate([block[key] for block in blocks]) for key in blocks[0] if key != "corners"})


def load_training_chunk(dataset_path: str | os.PathLike, band: str, chunk: int, full: bool = False) -> dict[str, np.ndarray]:
    """Training patches of one chunk.

    Returns frames [N,9,P,P] float32 (raw DN, bicubic, unregistered, reference then best-9 order),
    masks [N,9,P,P] bool registered by their shifts, shifts [N,9,2] int32, hr [N,P,P] float32 DN,
    hr_clear [N,P,P] bool, baseline [N] float32, scene [N] int32 (index into the train store).
    full=False reads the best-9 arrays (memory-mapped); full=True cuts the windows from the
    all-frames store and chooses the best 9 now (the same arrays).
    """
    band_dir = band_folder(dataset_path, band)
    if not full:
        return _best9_store(band_dir / BEST9 / "train" / f"chunk_{chunk}")
    windows = _load_arrays(band_dir / "train" / f"chunk_{chunk}", ["corners", "scene"], mmap=False)
    size = int(_read_manifest(band_dir)["patches"]["patch_size"])
    return _concatenate(best9_windows(_store_for_windows(band_dir, "train"), windows["scene"], windows["corners"], size))


def load_validation(dataset_path: str | os.PathLike, band: str, full: bool = False) -> dict[str, np.ndarray]:
    """The validation set, whole 384x384 images, one row per scene: the keys of
    `load_training_chunk` plus names [S]."""
    band_dir = band_folder(dataset_path, band)
    if not full:
        arrays = _best9_store(band_dir / BEST9 / "validation")
        arrays["names"] = np.load(band_dir / BEST9 / "validation" / "names.npy", allow_pickle=False)
        return arrays
    store = _store_for_windows(band_dir, "validation")
    arrays = _concatenate(best9_windows(store, *_validation_windows(store)))
    arrays["names"] = np.asarray(store["names"])
    return arrays


def load_scenes(dataset_path: str | os.PathLike, band: str, split: str) -> dict[str, np.ndarray]:
    """All kept frames of every scene of `split` ("train", "validation", "test"), memory-mapped.

    frames [F,384,384] float32, masks [F,384,384] bool (NOT registered), shifts [F,2] int32,
    frame_names [F], offsets [S+1] (scene s holds rows offsets[s]:offsets[s+1], reference first),
    names [S]; train and validation also hr [S,384,384] float32, hr_clear [S,384,384] bool,
    baseline [S] float32. Test scenes hold at least 9 frames.
    """
    band_dir = band_folder(dataset_path, band)
    keys = ["frames", "masks", "shifts", "frame_names", "offsets", "names"]
    if split == "test":
        return _load_arrays(band_dir / split, keys)
    if split not in ("train", "validation"):
        raise DatasetError(f"split {split!r} is not one of ('train', 'validation', 'test')")
    return _float_hr(_load_arrays(band_dir / split, keys + ["hr", "hr_clear", "baseline"]))


# ---------------------------------------------------------------------------------------------
# summaries and figures (used by the notebooks)


def counts_table(band_dir: str | os.PathLike) -> str:
    """Scenes and frames in, kept and dropped per split, from the manifest."""
    manifest = _read_manifest(Path(band_dir))
    rows = [("split", "scenes in", "kept", "dropped", "frames in", "kept", "corrupt", "shift>4", "reused")]
    for split in ("train", "validation", "test"):
        if split in manifest:
            c = manifest[split]
            rows.append((split, c["scenes_in"], c["scenes_kept"], len(c["dropped_scenes"]), c["frames_in"],
                         c["frames_kept"], c["frames_corrupt"], c["frames_shifted"], c["frames_reused"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(value).rjust(width) for value, width in zip(row, widths)) for row in rows)


def arrays_table(arrays: Mapping[str, np.ndarray]) -> str:
    """Name, shape and dtype of every array of a reader's dict."""
    rows = [("array", "shape", "dtype")] + [(key, str(tuple(np.shape(value))), str(np.asarray(value[:0]).dtype))
                                           for key, value in arrays.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths)) for row in rows)


def raw_table(band_dir: str | os.PathLike) -> str:
    """Scenes and frames read per split (step 1), from the manifest."""
    section = _read_manifest(Path(band_dir)).get("scene_arrays", {})
    rows = [f"{split:>5}: {section[split]['scenes']} scenes, {section[split]['frames']} frames"
            for split in probav.SPLITS if split in section]
    return "\n".join(rows)


def plot_raw_scene(band_dir: str | os.PathLike, split: str = "train", index: int = 0, frames: int = 4):
    """The first LR frames of a scene as read, with their clear masks; returns the figure."""
    import matplotlib.pyplot as plt

    raw = _load_arrays(Path(band_dir) / RAW / split, ["lr", "clear", "offsets", "names", "frame_names"])
    scene = _raw_scene(raw, index)
    count = min(frames, scene["lr"].shape[0])
    figure, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.4), squeeze=False)
    for column in range(count):
        axes[0, column].imshow(scene["lr"][column], cmap="gray", interpolation="none")
        axes[0, column].set_title(f"{scene['name']} {scene['frame_names'][column]}", fontsize=8)
        axes[1, column].imshow(scene["clear"][column], cmap="gray", vmin=0, vmax=1, interpolation="none")
        axes[1, column].set_title("clear mask", fontsize=8)
    for axis in axes.ravel():
        axis.set_xticks([]), axis.set_yticks([])
    figure.tight_layout()
    return figure


def plot_shift_histogram(dataset_path: str | os.PathLike, band: str, split: str = "train"):
    """Histogram of the registration shifts (dy, dx) of a split; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    shifts = np.asarray(load_scenes(dataset_path, band, split)["shifts"])
    figure, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    bins = np.arange(-preprocessing.MAX_SHIFT, preprocessing.MAX_SHIFT + 2) - 0.5
    for axis, values, label in zip(axes, shifts.T, ("dy", "dx")):
        axis.hist(values, bins=bins)
        axis.set_xlabel(f"{label} (384-grid pixels)")
    axes[0].set_ylabel("frames")
    figure.suptitle(f"{band} {split}: shifts of {len(shifts)} frames to their reference")
    return figure


def plot_patches(arrays: Mapping[str, np.ndarray], rows: Sequence[int] = (0, 1, 2)):
    """Frames 0, 1, 8, their registered masks and the HR target of a few patches; returns the figure."""
    import matplotlib.pyplot as plt

    columns = [("frames", 0), ("frames", 1), ("frames", 8), ("masks", 0), ("masks", 1), ("masks", 8), ("hr", None)]
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(2 * len(columns), 2 * len(rows)), squeeze=False)
    for line, row in zip(axes, rows):
        for axis, (key, frame) in zip(line, columns):
            image = arrays[key][row] if frame is None else arrays[key][row, frame]
            axis.imshow(np.asarray(image), cmap="gray", interpolation="none")
            axis.set_xticks([]), axis.set_yticks([])
            axis.set_title(f"{key}[{row}{'' if frame is None else f', {frame}'}]", fontsize=8)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------
# command line


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="PROBA-V folder (norm.csv, train/, test/)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (a <BAND>/ folder per band)")
    parser.add_argument("--band", default="all", choices=BANDS + ("all",), help="band to prepare (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the split and the patches")
    parser.add_argument("--chunks", type=int, default=5, help="training patch chunks")
    parser.add_argument("--patches-per-scene", type=int, default=20, help="patches per scene per chunk")
    parser.add_argument("--patch-size", type=int, default=96, help="patch side on the 384 grid")
    parser.add_argument("--processes", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_prepare(args: argparse.Namespace) -> int:
    bands = BANDS if args.band == "all" else (args.band,)
    try:
        manifests = prepare(args.data, args.out, bands, seed=args.seed, n_chunks=args.chunks,
                            patches_per_scene=args.patches_per_scene, patch_size=args.patch_size,
                            processes=args.processes, progress=not args.quiet)
    except (probav.ProbaVError, DatasetError, preprocessing.TooFewFramesError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for band, manifest in manifests.items():
        print(f"\n{args.out / band}: {manifest['patches']['patches']} patches per chunk, "
              f"{manifest['best9']['validation']} validation scenes")
        print(counts_table(args.out / band))
    return 0
