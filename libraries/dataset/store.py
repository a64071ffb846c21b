"""The prepared data set on disk: its layout, its arrays and their readers.

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

The checks `prepare` makes before it writes are here too: its counts and patch size, and which
output folders it may replace (absent, empty or prepared band folders; never its input).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

import libraries
from libraries import domain, fileio, preprocessing

RAW = "raw"
BEST9 = "best9"
MANIFEST = "manifest.json"
SPLIT_FILE = "split.json"
DEFAULT_SEED = 1  # the original's shuffle used random_state=1 (our permutation differs: sorted names, NumPy)
DEFAULT_SHARE = 0.7


class DatasetError(domain.DeepSUMError):
    """A prepared dataset folder is missing, incomplete or not what the caller asked for."""


# smallest value of each count of `prepare`, and its command-line flag
MINIMUMS = {"seed": (0, "--seed"), "n_chunks": (1, "--chunks"), "patches_per_scene": (1, "--patches-per-scene"),
            "max_tries": (1, None), "processes": (1, "--processes")}


def check_counts(**counts: int | None) -> None:
    """Raise `DatasetError` for a count of `MINIMUMS` that is not an integer at least its minimum
    (`processes` may also be None: all cores)."""
    for name, value in counts.items():
        minimum, flag = MINIMUMS[name]
        if value is None and name == "processes":
            continue
        if not domain.is_integer_at_least(value, minimum):
            raise DatasetError(f"{name}{f' ({flag})' if flag else ''}: expected an integer >= {minimum}, got {value!r}")


def check_patch_size(patch_size: int, hr_side: int | None = None) -> None:
    """Raise `DatasetError` unless `patch_size` (on the HR grid, as the frames are stored
    upsampled) is a positive integer and, given the HR side, smaller than it (corners are drawn
    in [0, hr_side - patch_size), as the original). DeepSUM's configs take multiples of 3
    (patch_size_LR = patch_size_HR / 3), the pretrainings any size."""
    flag = "patch_size (--patch-size)"
    if not domain.is_integer_at_least(patch_size, 1):
        raise DatasetError(f"{flag}: expected a positive integer, got {patch_size!r}")
    if hr_side is not None and patch_size >= hr_side:
        raise DatasetError(f"{flag}: expected at most {hr_side - 1}, smaller than the {hr_side}x{hr_side} HR images, "
                           f"got {patch_size}")


def save_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> None:
    for key, value in arrays.items():
        fileio.save_npy(folder / f"{key}.npy", value)


def split_indices(band_dir: Path, split: str, names: Sequence[str]) -> list[int]:
    """The rows in the raw train store (`names`) of the scenes `split.json` puts in `split`
    ("train" or "validation"); raises `DatasetError` naming the file for a missing or edited one."""
    path = band_dir / SPLIT_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: file missing (run split_train_validation first)")
    content = fileio.read_json(path, "the split written by split_train_validation", DatasetError)
    chosen = content.get(split) if isinstance(content, dict) else None
    if not isinstance(chosen, list) or not all(isinstance(name, str) for name in chosen):
        raise DatasetError(f"{path}: expected a list of scene names under {split!r}; run split_train_validation again")
    position = {str(name): index for index, name in enumerate(names)}
    unknown = sorted(set(chosen) - set(position))
    if unknown:
        raise DatasetError(f"{path}: {split} scenes {unknown[:3]} are not scenes of the raw train store "
                           f"({len(position)} scenes); run split_train_validation again")
    return [position[name] for name in chosen]


def names_array(names: Sequence[str]) -> np.ndarray:
    """Fixed-width unicode array (never object) of names."""
    width = max((len(name) for name in names), default=1)
    return np.asarray(list(names), dtype=f"<U{width}")


def load_arrays(folder: Path, keys: Iterable[str], mmap: bool = True) -> dict[str, np.ndarray]:
    """Load `folder/<key>.npy` without pickle; memory-mapped unless `mmap` is False."""
    arrays = {}
    for key in keys:
        path = folder / f"{key}.npy"
        if not path.is_file():
            raise DatasetError(f"{path}: file missing (expected an array of a prepared dataset; "
                               f"run `python -m libraries prepare` or the dataset_creation notebooks)")
        try:
            arrays[key] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:  # an object array (never unpickled), a damaged header
            raise DatasetError(f"{path}: not a readable array of a prepared dataset ({error}); "
                               f"run `python -m libraries prepare` again") from None
        if arrays[key].dtype.kind not in "biufU":
            raise DatasetError(f"{path}: array of dtype {arrays[key].dtype}, expected numbers, booleans or "
                               f"names; run `python -m libraries prepare` again")
    if "offsets" in arrays:
        check_ragged(folder, arrays)
    return arrays


def check_ragged(folder: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Raise `DatasetError` naming the file unless the arrays of a ragged store agree with its
    `offsets` [S+1] (0, then each scene's end row): per-scene arrays (`domain.PER_SCENE`) hold S
    rows, per-frame arrays `offsets[-1]`. A store cut short would otherwise hand one scene
    another's frames, or fail deep inside a step."""
    offsets = arrays["offsets"]
    if (offsets.ndim != 1 or offsets.dtype.kind not in "iu" or offsets.size == 0 or offsets[0] != 0
            or (np.diff(offsets) < 0).any()):
        raise DatasetError(f"{folder / 'offsets.npy'}: expected the non-decreasing integer rows [scenes + 1] "
                           f"of each scene's frames from 0, got {offsets.dtype} {offsets.shape}; "
                           f"run `python -m libraries prepare` again")
    for key, value in arrays.items():
        rows = offsets.size - 1 if key in domain.PER_SCENE else int(offsets[-1])
        if key != "offsets" and (value.ndim == 0 or len(value) != rows):
            raise DatasetError(f"{folder / f'{key}.npy'}: {len(value) if value.ndim else 'no'} rows, expected {rows} "
                               f"({'one per scene' if key in domain.PER_SCENE else 'one per frame'} of offsets.npy); "
                               f"run `python -m libraries prepare` again")


def read_manifest(band_dir: Path) -> dict[str, Any]:
    """The band's manifest.json (what each step wrote, and with which settings); {} before any step."""
    path = band_dir / MANIFEST
    return fileio.read_json(path, "the manifest a step of `prepare` wrote", DatasetError) if path.is_file() else {}


def update_manifest(band_dir: Path, section: str, content: Any) -> dict[str, Any]:
    manifest = read_manifest(band_dir)
    manifest.update({"band": band_dir.name, "library_version": libraries.__version__, section: content})
    fileio.save_json(band_dir / MANIFEST, manifest)
    return manifest


def is_prepared_band(folder: Path) -> bool:
    """True for a band folder that `prepare` (or the notebooks' steps) wrote: its manifest.json
    is a JSON object naming the band and the library version."""
    try:
        manifest = fileio.read_json(folder / MANIFEST)
    except (OSError, ValueError):  # missing, a folder, damaged: not ours
        return False
    return isinstance(manifest, dict) and manifest.get("band") == folder.name and "library_version" in manifest


def require_replaceable(folder: Path) -> None:
    """Refuse to replace `folder` unless it is absent, an empty folder or a prepared band folder
    (`is_prepared_band`): `prepare` must never delete what it did not write."""
    fileio.require_replaceable(folder, is_prepared_band, "prepare", "a prepared band folder", MANIFEST, DatasetError)


def require_output_folder(data_dir: str | os.PathLike, out_dir: str | os.PathLike, bands: Iterable[str]) -> Path:
    """Check, before anything is written, the output folder of `prepare`: a folder or a path
    that can become one, neither the PROBA-V folder `data_dir` nor inside it nor containing it,
    and each `<out_dir>/<band>` replaceable (`require_replaceable`). Returns `out_dir` as a Path."""
    out_dir = fileio.require_folder_path(out_dir, "prepared data set folder")
    data, out = Path(data_dir).resolve(), out_dir.resolve()
    where = ("is" if out == data else "is inside" if data in out.parents else
             "contains" if out in data.parents else None)
    if where:
        raise DatasetError(f"{out_dir}: the output folder {where} the PROBA-V folder {data_dir}; expected an "
                           f"output folder outside it that does not contain it (prepare would replace its input)")
    for band in bands:
        require_replaceable(out_dir / band)
    return out_dir


def band_folder(dataset_path: str | os.PathLike, band: str) -> Path:
    """`dataset_path/band`, checked to exist."""
    if band not in domain.BANDS:
        raise DatasetError(f"band {band!r} is not one of {domain.BANDS}")
    folder = Path(dataset_path) / band
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder missing (expected a dataset prepared with "
                           f"`python -m libraries prepare --band {band}`)")
    return folder


def best9_windows(store: Mapping[str, np.ndarray], scene: np.ndarray, corners: np.ndarray,
                  size: int) -> Iterator[dict[str, np.ndarray]]:
    """Best-9 network inputs of windows cut from a scene store, one dict per run of equal `scene`.

    store: a train or validation store (`load_arrays`); scene [N] int, corners [N, 2] int.
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
        arrays = domain.scene_slice(store, index, ["frames", "masks", "shifts", "hr", "hr_clear", "baseline"])
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


def validation_windows(store: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    scenes = len(store["names"])
    size = int(store["hr"].shape[-1])
    return np.arange(scenes, dtype=np.int32), np.zeros((scenes, 2), dtype=np.int32), size


def float_hr(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays["hr"] = np.asarray(arrays["hr"], dtype=np.float32)
    return arrays


def best9_store(folder: Path) -> dict[str, np.ndarray]:
    return float_hr(load_arrays(folder, ["frames", "masks", "shifts", "hr", "hr_clear", "baseline", "scene"]))


def store_for_windows(band_dir: Path, split: str) -> dict[str, np.ndarray]:
    return load_arrays(band_dir / split, ["frames", "masks", "shifts", "offsets", "hr", "hr_clear", "baseline", "names"])


def concatenate(blocks: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    blocks = list(blocks)
    return float_hr({key: np.concatenate([block[key] for block in blocks]) for key in blocks[0] if key != "corners"})


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
        return best9_store(band_dir / BEST9 / "train" / f"chunk_{chunk}")
    folder = band_dir / "train" / f"chunk_{chunk}"
    windows = load_arrays(folder, ["corners", "scene"], mmap=False)
    scenes = store_for_windows(band_dir, "train")
    size = check_windows(folder, windows, scenes, read_manifest(band_dir))
    return concatenate(best9_windows(scenes, windows["scene"], windows["corners"], size))


def check_windows(folder: Path, windows: Mapping[str, np.ndarray], scenes: Mapping[str, np.ndarray],
                  manifest: Mapping[str, Any]) -> int:
    """The patch side of a chunk of windows (`scene` [N] int, `corners` [N, 2] int) of the
    scene store `scenes`, from the manifest's `patches.patch_size`; raises `DatasetError`
    naming the file unless every window lies inside an image of a scene of the store."""
    patches = manifest.get("patches") if isinstance(manifest, dict) else None
    size = patches.get("patch_size") if isinstance(patches, dict) else None
    height, width = np.shape(scenes["hr"])[-2:]
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= min(height, width):
        raise DatasetError(f"{folder.parent.parent / MANIFEST}: patches.patch_size is {size!r}, expected the side "
                           f"of the prepared patches (1 to {min(height, width)}); run `python -m libraries prepare` again")
    scene, corners = np.asarray(windows["scene"]), np.asarray(windows["corners"])
    count = len(scenes["names"])
    if (scene.ndim != 1 or corners.shape != (scene.size, 2) or scene.dtype.kind not in "iu"
            or corners.dtype.kind not in "iu"):
        raise DatasetError(f"{folder}: scene {scene.shape} {scene.dtype} and corners {corners.shape} {corners.dtype}; "
                           f"expected integers [N] and [N, 2]; run `python -m libraries prepare` again")
    outside = np.flatnonzero((scene < 0) | (scene >= count) | (corners < 0).any(axis=1)
                             | (corners[:, 0] > height - size) | (corners[:, 1] > width - size))
    if outside.size:
        row = int(outside[0])
        raise DatasetError(f"{folder}: window {row} (scene {int(scene[row])}, corner {corners[row].tolist()}) is not a "
                           f"{size}x{size} window of the {count} scenes of {height}x{width} of the train store; "
                           f"run `python -m libraries prepare` again")
    return size


def load_validation(dataset_path: str | os.PathLike, band: str, full: bool = False) -> dict[str, np.ndarray]:
    """The validation set, whole 384x384 images, one row per scene: the keys of
    `load_training_chunk` plus names [S]."""
    band_dir = band_folder(dataset_path, band)
    if not full:
        arrays = best9_store(band_dir / BEST9 / "validation")
        arrays["names"] = load_arrays(band_dir / BEST9 / "validation", ["names"], mmap=False)["names"]
        return arrays
    store = store_for_windows(band_dir, "validation")
    arrays = concatenate(best9_windows(store, *validation_windows(store)))
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
        return load_arrays(band_dir / split, keys)
    if split not in ("train", "validation"):
        raise DatasetError(f"split {split!r} is not one of ('train', 'validation', 'test')")
    return float_hr(load_arrays(band_dir / split, keys + ["hr", "hr_clear", "baseline"]))
