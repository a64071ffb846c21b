"""The Kelvins submission: writing, checking and scoring the zip, and the `superresolve` and
`score` commands (`superresolve --frames` super-resolves a folder of frames instead, with
`frame_stack`).

A submission is a zip of one 16-bit PNG `imgsetNNNN.png` per scene of the split, each of its
HR size. `write_submission` writes it atomically, `validate_submission` checks it against the
scenes of a PROBA-V folder, `score_submission` scores it against HR images and norm.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import re
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import imageio.v3 as iio
import numpy as np

from libraries import config as config_module
from libraries import arguments, domain, fileio, metrics, probav
from libraries.inference import frame_stack
from libraries.inference.parts import parts_folder, remove_parts, saved_count
from libraries.inference.superresolve import Superresolver, load_model, scene_sr_shape
from libraries.interrupts import Terminated, sigterm_raises

SCENE_NAME = re.compile(r"imgset\d{4}")
PNG_NAME = re.compile(r"imgset\d{4}\.png")


class SubmissionError(domain.DeepSUMError):
    """A submission zip (or an image for it) that the Kelvins rules would not accept."""


def image_to_png(name: str, image: np.ndarray) -> bytes:
    """A 2-D DN image as 16-bit PNG bytes (rounded, clipped to 0..65535); NaN is an error, and so
    is an image in other units (most pixels outside 0..65535, or all within 0..2: normalised or
    0..1 values), which clipping would turn into a valid-looking PNG of zeros and ones."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype.kind not in "uif":
        raise SubmissionError(f"{name}: expected a 2-D image of numbers, got shape {image.shape} of {image.dtype}")
    if not np.all(np.isfinite(image)):
        raise SubmissionError(f"{name}: the image holds NaN or infinite values")
    outside = np.count_nonzero((image < 0) | (image > np.iinfo(np.uint16).max)) / max(image.size, 1)
    if outside > 0.25 or np.abs(image).max(initial=0) < 2:
        raise SubmissionError(f"{name}: values {float(image.min()):.4g} to {float(image.max()):.4g}, {outside:.0%} "
                              f"outside 0..65535; expected DN, as superresolve writes them (a normalised image: "
                              f"domain.denormalise(image, mu, sigma_rescaled) first)")
    pixels = np.clip(np.rint(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return iio.imwrite("<bytes>", pixels, extension=".png", plugin="pillow")


def write_submission(images: Mapping[str, np.ndarray], zip_path: str | Path) -> Path:
    """Write one 16-bit PNG `imgsetNNNN.png` per scene into a zip, atomically (no zip on error)."""
    zip_path = Path(zip_path)
    if not isinstance(images, Mapping):
        raise SubmissionError(f"{zip_path}: expected a dict of scene name -> image, got a {type(images).__name__}")
    if not images:
        raise SubmissionError(f"{zip_path}: no image to write")
    with fileio.atomic_path(zip_path, suffix=".zip") as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:  # PNG is compressed
            for name in sorted(images):
                if not SCENE_NAME.fullmatch(name):
                    raise SubmissionError(f"{name}: expected a scene name like imgset0123")
                archive.writestr(f"{name}.png", image_to_png(name, images[name]))
    return zip_path


def expected_scenes(split_dir: str | Path, bands: Iterable[str] | None = None, scale: int = domain.SCALE) -> dict[str, tuple[int, int]]:
    """Scene name -> expected SR shape (HR.png's, else `scale` x the first LR frame's) of the
    scenes under `split_dir/{band}/` for `bands` (default: the bands present)."""
    split_dir = Path(split_dir)
    bands = [band for band in domain.BANDS if (split_dir / band).is_dir()] if bands is None else list(bands)
    expected = {}
    for band in bands:
        if not (split_dir / band).is_dir():
            raise SubmissionError(f"{split_dir / band}: no such folder (expected PROBA-V scenes of band {band})")
        for folder in sorted(path for path in (split_dir / band).glob("imgset*") if path.is_dir()):
            shape = scene_sr_shape(folder, scale)
            if shape is None:
                raise SubmissionError(f"{folder}: no LR*.png frame")
            expected[folder.name] = shape
    if not expected:
        raise SubmissionError(f"{split_dir}: no scene folder imgsetNNNN under bands {bands}")
    return expected


def validate_submission(zip_path: str | Path, split_dir: str | Path, bands: Iterable[str] | None = None,
                        scale: int = domain.SCALE, allow_missing: bool = False) -> list[str]:
    """Check a submission zip against the scenes of `split_dir` (e.g. probav_data/test).

    Every scene of `bands` (default: the bands present in split_dir) must be there exactly once
    (with `allow_missing`, at most once) as a 16-bit PNG `imgsetNNNN.png` of its HR size that
    decodes in full, and nothing else. Raises one SubmissionError listing every problem by
    scene; returns the sorted names of the scenes in the zip.
    """
    zip_path = Path(zip_path)
    expected = expected_scenes(split_dir, bands, scale)
    return sorted(_checked_images(zip_path, expected, split_dir, allow_missing))


def _checked_images(zip_path: Path, expected: Mapping[str, tuple[int, int]], split_dir: str | Path,
                    allow_missing: bool) -> dict[str, np.ndarray]:
    """Every entry of the zip decoded once and checked against `expected` (scene -> HR size):
    scene name -> uint16 `[H, W]`. Raises one SubmissionError listing every problem by scene."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as error:
        raise SubmissionError(f"{zip_path}: not a readable zip file ({error})") from None
    problems, images = [], {}
    with archive:
        entries = Counter(archive.namelist())
        for entry, count in sorted(entries.items()):
            scene = entry[:-4]
            if not PNG_NAME.fullmatch(entry) or scene not in expected:
                problems.append(f"{entry}: unexpected file (not a scene of {split_dir})")
                continue
            if count > 1:
                problems.append(f"{scene}: {count} copies of {entry} (duplicate)")
            height, width = expected[scene]
            try:  # decoded in full: a truncated entry is named, not read as rows of zeros
                image = probav.decode_png(archive.read(entry), f"{zip_path}:{entry}", "a 16-bit PNG",
                                          greyscale=False)
            except (probav.ProbaVError, zipfile.BadZipFile, OSError) as error:
                problems.append(f"{scene}: {entry} is not a readable PNG ({error})")
                continue
            if image.dtype != np.uint16:
                problems.append(f"{scene}: wrong dtype {image.dtype}, expected uint16 (16-bit PNG)")
            if image.shape != (height, width):
                problems.append(f"{scene}: wrong size {'x'.join(map(str, image.shape))}, "
                                f"expected {height}x{width} (single channel)")
            images[scene] = image
        if not allow_missing:
            problems += [f"{scene}: missing ({scene}.png not in the zip)" for scene in sorted(expected)
                         if f"{scene}.png" not in entries]
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise SubmissionError(f"{zip_path}: {len(problems)} problem(s):\n  {shown}")
    return images


def read_submission(zip_path: str | Path) -> dict[str, np.ndarray]:
    """The images of a submission zip: scene name -> uint16 `[H, W]`."""
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            return {Path(entry).stem: probav.decode_png(archive.read(entry), f"{zip_path}:{entry}", "a 16-bit PNG")
                    for entry in archive.namelist() if PNG_NAME.fullmatch(entry)}
    except (OSError, zipfile.BadZipFile) as error:
        raise SubmissionError(f"{zip_path}: not a readable zip file ({error})") from None
    except probav.ProbaVError as error:
        raise SubmissionError(str(error)) from None


def score_submission(zip_path: str | Path, data_dir: str | Path, band: str = "all",
                     csv_path: str | Path | None = None,
                     allow_missing: bool = False) -> tuple[float, list[dict[str, Any]]]:
    """Kelvins score of a zip of super-resolved `data_dir/train/{band}` scenes.

    The zip first passes `validate_submission` against those scenes (16-bit PNGs of the HR size
    that decode in full, nothing else); a scene missing from it is an error unless
    `allow_missing`. Uses `metrics.kelvins_score` with the baselines of `data_dir/norm.csv`.
    Writes one row per scene (scene, band, cpsnr, baseline, score) to `csv_path` (default
    `<zip>_scores.csv`). Returns (mean score, rows).
    """
    zip_path, data_dir = Path(zip_path), Path(data_dir)
    csv_path = Path(csv_path) if csv_path is not None else zip_path.with_name(f"{zip_path.stem}_scores.csv")
    if csv_path.resolve() == zip_path.resolve():  # checked before any work: the zip would be replaced
        raise SubmissionError(f"{csv_path}: the per-scene CSV would overwrite the submission zip; give another path")
    if csv_path.is_dir():
        raise SubmissionError(f"{csv_path}: is a folder; expected the path of the per-scene CSV to write")
    bands = domain.BANDS if band == "all" else (band,)
    train = expected_scenes(data_dir / "train", bands)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            named = {Path(entry).stem for entry in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as error:
        raise SubmissionError(f"{zip_path}: not a readable zip file ({error})") from None
    if not named & set(train):
        raise SubmissionError(f"{zip_path}: no scene of the zip has an HR image under {data_dir / 'train'} ({band})")
    held = [one for one in bands if any((data_dir / "train" / one / name).is_dir() for name in named & set(train))]
    if not allow_missing and held != list(bands):  # a zip of one band scored with --band all
        raise SubmissionError(f"{zip_path}: no {' or '.join(set(bands) - set(held))} scene in the zip; score it "
                              f"with --band {held[0]} (or --allow-missing to score the scenes present)")
    images = _checked_images(zip_path, train, data_dir / "train", allow_missing)  # sizes are the HR.png sizes
    norm = probav.read_norm(data_dir / "norm.csv")
    rows = []
    for scene_band in domain.BANDS if band == "all" else (band,):
        for name in sorted(images):
            folder = data_dir / "train" / scene_band / name
            if not (folder / "HR.png").is_file():
                continue
            hr, clear = probav.read_image_png(folder / "HR.png"), probav.read_mask_png(folder / "SM.png")
            if not clear.any():  # cPSNR is a mean over clear pixels
                raise SubmissionError(f"{folder / 'SM.png'}: no clear pixel; the scene cannot be scored")
            if name not in norm:
                raise SubmissionError(f"{name}: no baseline in {data_dir / 'norm.csv'}")
            sr = images[name]
            rows.append({"scene": name, "band": scene_band, "cpsnr": metrics.kelvins_cpsnr(sr, hr, clear),
                         "baseline": norm[name], "score": metrics.kelvins_score(sr, hr, clear, norm[name])})
    if not rows:
        raise SubmissionError(f"{zip_path}: no scene of the zip has an HR image under {data_dir / 'train'} ({band})")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    fileio.save_bytes(csv_path, text.getvalue().encode())
    return float(np.mean([row["score"] for row in rows])), rows


def add_superresolve_arguments(parser: argparse.ArgumentParser) -> None:
    per_band = "; give it once for every band, or once per band as BAND=PATH (e.g. NIR=... RED=...)"
    parser.add_argument("--config", action="append",
                        help="DeepSUM JSON config (config_files/DeepSUM_config_NIR.json)" + per_band +
                             "; with --frames: default config_files/DeepSUM_config_{band}.json")
    parser.add_argument("--checkpoint", action="append",
                        help="our checkpoint or an authors' TF1 checkpoint (folder or prefix)" + per_band)
    parser.add_argument("--data", help="PROBA-V folder (as downloaded, or written by `synth`; default: the config's "
                                       "base_dir)")
    parser.add_argument("--split", choices=("train", "test"), default=None, help="default: test")
    parser.add_argument("--band", choices=(*domain.BANDS, "all"), default=None,
                        help="'all' (the default): both bands in one zip; with --frames: the model, NIR (default) or RED")
    parser.add_argument("--out", required=True, help="submission zip to write; with --frames: the image to write "
                                                     "(.png: 16-bit greyscale, .tif/.tiff: float32)")
    parser.add_argument("--n-slide", type=arguments.integer_at_least(0), default=None,
                        help="sliding-window passes (default: the config's n_slide)")
    parser.add_argument("--windows-per-call", type=arguments.integer_at_least(1), default=None,
                        help="windows per network call, for n-slide > 0 (memory grows with it; default: 1 when the "
                             "network runs frame by frame, as on CPUs, else 3)")
    parser.add_argument("--frames", help="instead of a split: a folder of PNG or TIFF frames of one scene (16-bit, "
                                         "8-bit or float, one size), super-resolved into the one image --out")
    parser.add_argument("--masks", help="with --frames: glob of their clear masks (nonzero = clear), relative to the "
                                        "folder or absolute, matched to the frames in sorted order (default: all clear)")
    arguments.add_precision_argument(parser)
    parser.add_argument("--self-ensemble", action=argparse.BooleanOptionalAction, default=None,
                        help="average each scene's outputs under its 8 flips and rotations (8x the time; "
                             "default: the config's self_ensemble)")


def names_bands(values: list[str]) -> bool:
    """True for `--option NIR=PATH [--option RED=PATH]` (paths named per band), False for `--option PATH`."""
    return len(values) > 1 or values[0].partition("=")[0] in domain.BANDS


def paths_per_band(values: list[str], bands: Iterable[str], option: str) -> dict[str, str]:
    """`--option PATH` (every band) or `--option NIR=PATH --option RED=PATH` -> {band: path}."""
    if not names_bands(values):
        prefix = values[0].partition("=")[0]
        if prefix.upper() in domain.BANDS:  # `nir=PATH` would otherwise be read as a path
            raise domain.DeepSUMError(f"{option} {values[0]!r}: band {prefix!r}; expected BAND=PATH with BAND in "
                                      f"{domain.BANDS} (upper case)")
        return {band: values[0] for band in bands}
    paths = {}
    for value in values:
        band, separator, path = value.partition("=")
        if not separator or band not in domain.BANDS or not path:
            raise domain.DeepSUMError(f"{option} {value!r}: expected one PATH for every band, or BAND=PATH with BAND in {domain.BANDS}")
        paths[band] = path
    missing = [band for band in bands if band not in paths]
    if missing:
        raise domain.DeepSUMError(f"{option}: no path for band {', '.join(missing)} (give {missing[0]}=PATH)")
    return paths


def _config_of_arguments(path: str | Path, args: argparse.Namespace) -> config_module.DeepSUMConfig:
    """The config file at `path` with `--precision` and `--self-ensemble` applied (where given)."""
    config = config_module.with_precision(config_module.load_config(path), args.precision)
    return config if args.self_ensemble is None else config.replace(self_ensemble=args.self_ensemble)


def _config_of_band(path: str | Path, band: str, named: bool, args: argparse.Namespace) -> config_module.DeepSUMConfig:
    """The config of the `band` model; one named for a band (`--config BAND=PATH`, `--band`) must
    be of that band: a NIR and a RED config swapped would give each band the other's settings."""
    config = _config_of_arguments(path, args)
    if named and config.spectral_band != band:
        raise domain.DeepSUMError(f"--config {path}: a config of spectral_band {config.spectral_band}, given for band "
                                  f"{band}; expected the {band} model's config")
    return config


def _superresolve(args: argparse.Namespace) -> None:
    if Path(args.out).is_dir():  # found before any scene is computed, not at the final rename
        raise domain.DeepSUMError(f"--out {args.out}: is a folder; expected the path of the file to write")
    if args.frames is not None:
        _superresolve_frames(args)
        return
    for option, value in (("--config", args.config), ("--checkpoint", args.checkpoint)):
        if not value:
            raise domain.DeepSUMError(f"{option}: required to super-resolve a split (or give --frames DIR)")
    if Path(args.out).suffix != ".zip":  # what the Kelvins platform takes
        raise domain.DeepSUMError(f"--out {args.out}: expected the path of a .zip file (the submission)")
    if args.masks is not None:
        raise domain.DeepSUMError("--masks: the clear masks of --frames; a PROBA-V split has its own QM masks")
    bands = domain.BANDS if args.band in (None, "all") else (args.band,)
    split = "test" if args.split is None else args.split
    config_paths = paths_per_band(args.config, bands, "--config")
    checkpoint_paths = paths_per_band(args.checkpoint, bands, "--checkpoint")
    named = names_bands(args.config) or args.band in domain.BANDS
    # every band's config, weights and scene folder before the first scene: a mistake in the RED
    # arguments must not wait for the NIR scenes
    superresolvers, n_slides, data = {}, {}, {}
    for band in bands:  # the authors trained one model per band (RED fine-tuned from NIR)
        config = _config_of_band(config_paths[band], band, named, args)
        n_slides[band] = config.n_slide if args.n_slide is None else args.n_slide
        data[band] = config.base_dir if args.data is None else Path(args.data)
        probav.list_scenes(data[band], split, band)
        superresolvers[band] = Superresolver(load_model(config, checkpoint_paths[band]), config)
    parts = parts_folder(args.out)  # each scene kept as computed: a rerun of an interrupted run goes on
    images = {}
    with contextlib.ExitStack() as reading:  # read shared: `synth` cannot replace a folder whose scenes are read
        for folder in dict.fromkeys(data.values()):
            reading.enter_context(fileio.FolderLock(folder, "PROBA-V folder", shared=True))
        try:
            with sigterm_raises():
                for band in bands:
                    superresolver = superresolvers[band]
                    images.update(superresolver.folder(data[band], split, [band], n_slides[band],
                                                       args.windows_per_call, parts=parts))
                    print(f"{band}: {checkpoint_paths[band]}, n_slide {n_slides[band]}"
                          + (", self-ensemble" if superresolver.config.self_ensemble else ""), file=sys.stderr)
        except (KeyboardInterrupt, Terminated) as stop:  # Ctrl-C or SIGTERM: one line saying what is kept
            how = "interrupted" if isinstance(stop, KeyboardInterrupt) else "stopped by SIGTERM"
            raise domain.DeepSUMError(f"superresolve {how}: scenes computed so far: {saved_count(parts)}, kept in "
                                      f"{parts}; the same command computes the others") from None
        write_submission(images, args.out)
        validate_submission(args.out, data[bands[-1]] / split, bands)
    remove_parts(parts)
    print(f"wrote {args.out}: {len(images)} scenes ({', '.join(bands)}), validated")


def _superresolve_frames(args: argparse.Namespace) -> None:
    """`superresolve --frames DIR --out IMAGE`: one image from a folder of frames, with the model
    of one band (its config by default from config_files/)."""
    for option, value in (("--data", args.data), ("--split", args.split)):
        if value is not None:
            raise domain.DeepSUMError(f"{option}: not used with --frames (which reads the frames of one folder)")
    if args.band == "all":
        raise domain.DeepSUMError("--band all: --frames super-resolves one stack with one model; give --band NIR or RED")
    band = "NIR" if args.band is None else args.band
    kind = frame_stack.output_kind(args.out)  # a bad suffix is refused before anything runs
    if not args.checkpoint:
        raise domain.DeepSUMError(f"--checkpoint: required with --frames (the {band} model's weights)")
    default_config = config_module.REPOSITORY_ROOT / "config_files" / f"DeepSUM_config_{band}.json"
    config_path = paths_per_band(args.config, [band], "--config")[band] if args.config else default_config
    checkpoint = paths_per_band(args.checkpoint, [band], "--checkpoint")[band]
    stack = frame_stack.read_frame_stack(args.frames, args.masks)
    kind = frame_stack.output_kind(args.out, stack.kind)  # a PNG of float frames refused before the network
    if Path(args.out).resolve() in {(stack.folder / name).resolve() for name in stack.frame_names}:
        raise domain.DeepSUMError(f"--out {args.out}: is one of the frames; write the image elsewhere")
    config = _config_of_band(config_path, band, args.band is not None, args)
    band = config.spectral_band  # the model's band: --config without --band names it
    n_slide = config.n_slide if args.n_slide is None else args.n_slide
    prepared = frame_stack.prepare_stack(stack, config)
    image = frame_stack.superresolve_frames(load_model(config, checkpoint), config, prepared, n_slide,
                                            args.windows_per_call)
    frame_stack.write_image(args.out, image, stack.kind)
    used = frame_stack.frames_used(prepared, config, n_slide)
    reused = f", reused to make {config.T_in}" if len(used) < config.T_in else ""
    print(f"wrote {args.out}: {image.shape[0]}x{image.shape[1]} {kind} from {len(used)} of the {len(stack.frame_names)} "
          f"{stack.kind} frames of {args.frames}{reused} ({band} model, n_slide {n_slide})")


def run_superresolve(args: argparse.Namespace) -> int:
    _superresolve(args)
    return 0


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="PROBA-V folder with train/{band}/*/HR.png and norm.csv")
    parser.add_argument("--band", choices=(*domain.BANDS, "all"), default="all",
                        help="the band(s) the zip holds (default: all)")
    parser.add_argument("--submission", required=True, help="zip written by `superresolve --split train`")
    parser.add_argument("--csv", default=None, help="per-scene CSV to write (default: <zip>_scores.csv)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score the scenes present when some train scenes are not in the zip")


def _score(args: argparse.Namespace) -> None:
    mean_score, rows = score_submission(args.submission, args.data, args.band, args.csv, args.allow_missing)
    total = len(expected_scenes(Path(args.data) / "train", domain.BANDS if args.band == "all" else (args.band,)))
    print(f"scored {len(rows)} of {total} scenes; mean cPSNR {np.mean([row['cpsnr'] for row in rows]):.3f} dB",
          file=sys.stderr)
    print(f"{mean_score:.6f}")


def run_score(args: argparse.Namespace) -> int:
    _score(args)
    return 0
