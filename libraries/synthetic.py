"""A realistic synthetic PROBA-V data set, with the true shifts that real data lacks.

Each scene starts from a ground image on a padded HR canvas: a fractal terrain field,
agricultural parcels (Voronoi cells with sharp edges), roads and sometimes water, with
band-specific levels (NIR: vegetation bright, water dark; RED: darker, lower contrast).
LR frames are that canvas translated by a planted shift (HR pixels, mostly integer, some
sub-pixel, at most 4), blurred by a Gaussian PSF (both in one Fourier product), averaged
over 3x3 HR pixels (the sensor footprint), changed in gain and offset, covered by clouds
and cloud shadows (smooth thresholded noise, flagged in QM), made noisy and quantised to
multiples of 16 like the real frames. A few frames get a swath-edge wedge of 65520 (the
corrupt frames of the real data look like this). The HR image is the unshifted canvas plus
noise, with an occasional cloud flagged in SM.

Output: a PROBA-V folder (`train/{NIR,RED}/imgsetNNNN/` with LR, QM, HR, SM; `test/...`
with LR, QM), `norm.csv` (the organisers' baseline cPSNR for every scene, test included,
computed from the known HR) and `synthetic_truth.json` (shifts and corrupt frames) beside
the split folders, never inside a scene folder.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.fft
from scipy import ndimage
from tqdm.auto import tqdm

from libraries import domain, fileio, metrics, preprocessing, probav
from libraries.arguments import integer_at_least

CORRUPT_VALUE = 65520  # the no-data value of the real corrupt frames
MAX_SHIFT = 4.0  # HR pixels
PAD = 12  # HR pixels of canvas around the HR window: room for shifts and the PSF
MIN_LR_SIZE = 8  # the smallest LR side the generator draws scenes of
TRUTH_FILE = "synthetic_truth.json"
SHIFT_CONVENTION = (
    "frame[y, x] = hr[y - dy, x - dx] on the HR grid before blur and 3x3 averaging "
    "(scipy.ndimage.shift(hr, (dy, dx)) convention), in HR pixels"
)


@dataclass(frozen=True)
class BandStyle:
    """Radiometry of one band, in DN (14-bit scale). Ranges are (low, high) of a uniform draw."""

    level: tuple[float, float]  # scene mean of the ground
    terrain: float  # std of the fractal terrain field at contrast 1
    texture: float  # std of the fine texture (crops, trees, buildings) at contrast 1
    parcels: float  # std of parcel offsets at contrast 1
    road: float  # road value relative to its surroundings
    water: tuple[float, float]  # water level
    cloud: tuple[float, float]  # cloud top level
    read_noise: float  # std of additive LR noise
    shot_noise: float  # variance per DN of signal-dependent LR noise
    hr_noise: float  # std of HR noise


BAND_STYLES = {
    "NIR": BandStyle((5500.0, 12500.0), 1100.0, 900.0, 1300.0, -1500.0, (1200.0, 2500.0), (9000.0, 17000.0),
                     25.0, 0.7, 40.0),
    "RED": BandStyle((2500.0, 8000.0), 800.0, 600.0, 800.0, 900.0, (1500.0, 2800.0), (8000.0, 16000.0),
                     25.0, 0.7, 35.0),
}


# --------------------------------------------------------------------------- random fields


def fractal_field(rng: np.random.Generator, shape: Sequence[int], beta: float) -> np.ndarray:
    """Gaussian random field with power spectrum ~ 1/f**beta, zero mean, unit std.

    shape: [..., height, width]; the last two axes are the image.
    """
    noise = scipy.fft.rfft2(rng.standard_normal(shape).astype(np.float32))
    fy = scipy.fft.fftfreq(shape[-2])[:, None]
    fx = scipy.fft.rfftfreq(shape[-1])[None, :]
    radius = np.hypot(fy, fx).astype(np.float32)
    radius[0, 0] = np.inf  # no DC
    field = scipy.fft.irfft2(noise * radius ** (-beta / 2), s=shape[-2:])
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / field.std(axis=(-2, -1), keepdims=True)


def blob_field(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Smooth noise (white noise blurred, with wrap-around, by a Gaussian of `sigma` pixels),
    unit std per image.

    shape: [..., height, width]; images along leading axes are independent.
    """
    sigmas = (0,) * (len(shape) - 2) + (sigma, sigma)
    spectrum = scipy.fft.rfft2(rng.standard_normal(shape).astype(np.float32))
    field = scipy.fft.irfft2(ndimage.fourier_gaussian(spectrum, sigmas, n=shape[-1]), s=shape[-2:])
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / field.std(axis=(-2, -1), keepdims=True)


def threshold_cover(field: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Per image the value above which a fraction `cover` of `field` lies.

    field [images, height, width], cover [images] in [0, 1] -> threshold [images, 1, 1];
    cover 0 gives the maximum (nothing strictly above it).
    """
    flat = np.sort(field.reshape(field.shape[0], -1), axis=1)  # [images, pixels]
    index = np.clip(np.round((1.0 - cover) * flat.shape[1]).astype(int), 0, flat.shape[1] - 1)
    return flat[np.arange(field.shape[0]), index][:, None, None]


def parcel_labels(rng: np.random.Generator, size: int, parcel_size: float) -> np.ndarray:
    """Voronoi cells of jittered, rotated grid seeds -> [size, size] int labels.

    Seeds on a jittered anisotropic grid give field-like convex polygons with straight,
    sharp edges; the nearest seed of every pixel comes from one distance transform.
    """
    ratio = rng.uniform(1.0, 2.5)  # fields are often elongated
    angle = rng.uniform(0, np.pi)
    step_u, step_v = parcel_size * ratio**0.5, parcel_size / ratio**0.5
    extent = size * 1.5
    u, v = np.meshgrid(np.arange(-extent, extent, step_u), np.arange(-extent, extent, step_v))
    u = u + rng.uniform(-0.3, 0.3, u.shape) * step_u
    v = v + rng.uniform(-0.3, 0.3, v.shape) * step_v
    y = size / 2 + u * np.sin(angle) + v * np.cos(angle)
    x = size / 2 + u * np.cos(angle) - v * np.sin(angle)
    inside = (y >= 0) & (y < size) & (x >= 0) & (x < size)
    seeds = np.ones((size, size), dtype=bool)
    seeds[y[inside].astype(int), x[inside].astype(int)] = False
    _, (nearest_y, nearest_x) = ndimage.distance_transform_edt(seeds, return_indices=True)
    return nearest_y * size + nearest_x  # label = flat index of the nearest seed


def road_coverage(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """`count` straight roads, 1-2.5 px wide, anti-aliased -> [size, size] coverage in [0, 1]."""
    if count == 0:
        return np.zeros((size, size), np.float32)
    angle = rng.uniform(0, np.pi, (count, 1, 1))
    offset = rng.uniform(0.1, 0.9, (count, 1, 1)) * size
    width = rng.uniform(1.0, 2.5, (count, 1, 1))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    distance = np.abs((y - size / 2) * np.cos(angle) - (x - size / 2) * np.sin(angle) + size / 2 - offset)
    return np.clip(width / 2 + 0.5 - distance, 0, 1).max(axis=0)  # [count, size, size] -> [size, size]


# --------------------------------------------------------------------------- one scene


def ground_canvas(rng: np.random.Generator, band: str, size: int) -> np.ndarray:
    """Ground reflectance of one scene, [size, size] float32 DN (before clipping)."""
    style = BAND_STYLES[band]
    contrast = math.exp(rng.uniform(math.log(0.1), math.log(2.2)))  # flat desert .. busy land
    level = rng.uniform(*style.level)
    canvas = contrast * style.terrain * fractal_field(rng, (size, size), rng.uniform(1.6, 2.4))
    farmland = blob_field(rng, (size, size), size / 8) > rng.uniform(-1.0, 1.5)
    labels = parcel_labels(rng, size, rng.uniform(5.0, 20.0))
    parcel_values = rng.normal(0, contrast * style.parcels, size * size).astype(np.float32)
    canvas += farmland * parcel_values[labels]
    canvas += contrast * style.texture * fractal_field(rng, (size, size), rng.uniform(1.4, 2.0))
    canvas += contrast * style.road * road_coverage(rng, size, int(rng.integers(0, 4)))
    canvas += level
    if rng.random() < 0.3:  # a lake or river
        water = blob_field(rng, (size, size), size / 12) > rng.uniform(1.0, 2.5)
        canvas = np.where(water, rng.uniform(*style.water), canvas)
    return canvas.astype(np.float32)


def draw_shifts(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[frames, 2] (dy, dx) HR-pixel shifts: mostly integers, 30% with a sub-pixel part, |.| <= 4.

    Like the real frames (cross-correlation of the real sample finds mostly 0 or 1 pixel,
    sometimes a whole LR pixel): 85% of frames round(normal(0, 0.7)) per axis, 15% anywhere
    in [-4, 4].
    """
    wide = rng.random((frames, 1)) < 0.15
    shifts = np.where(wide, rng.integers(-4, 5, (frames, 2)), np.round(rng.normal(0.0, 0.7, (frames, 2))))
    subpixel = rng.random((frames, 1)) < 0.3
    shifts = shifts + subpixel * rng.uniform(-0.5, 0.5, (frames, 2))
    return np.clip(shifts, -MAX_SHIFT, MAX_SHIFT)


def render_frames(canvas: np.ndarray, shifts: np.ndarray, psf_sigma: float, hr_size: int) -> np.ndarray:
    """Shift, blur and downsample the canvas -> [frames, hr_size/3, hr_size/3] float32.

    canvas [S, S] with S = hr_size + 2 * PAD, shifts [frames, 2] (dy, dx) HR pixels.
    One Fourier product applies the Gaussian PSF and the per-frame translation; the
    circular wrap stays inside the padding that is cropped away.
    """
    size = canvas.shape[0]
    spectrum = ndimage.fourier_gaussian(scipy.fft.rfft2(canvas), psf_sigma, n=size)  # [S, S//2+1]
    fy = scipy.fft.fftfreq(size)[None, :, None]
    fx = scipy.fft.rfftfreq(size)[None, None, :]
    dy, dx = shifts[:, 0, None, None], shifts[:, 1, None, None]  # [frames, 1, 1]
    # the phase ramp of a translation is separable: [frames, S, 1] * [frames, 1, S//2+1]
    ramp = (np.exp(-2j * np.pi * fy * dy) * np.exp(-2j * np.pi * fx * dx)).astype(np.complex64)
    shifted = scipy.fft.irfft2(spectrum[None] * ramp, s=(size, size))  # [frames, S, S]
    window = shifted[:, PAD:PAD + hr_size, PAD:PAD + hr_size]  # [frames, H, W]
    lr = hr_size // domain.SCALE
    # [frames, H, W] -> [frames, h, 3, w, 3]: average each 3x3 HR footprint
    return window.reshape(-1, lr, domain.SCALE, lr, domain.SCALE).mean(axis=(2, 4))


def cloud_cover(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[frames] cloud fraction: 45% of frames clear, 30% below 5%, 25% 5-40%
    (their shadows add up to about a third more flagged area)."""
    kind = rng.random(frames)
    return np.where(kind < 0.45, 0.0, np.where(kind < 0.75, rng.uniform(0, 0.05, frames),
                                               rng.uniform(0.05, 0.4, frames)))


def add_clouds(rng: np.random.Generator, frames: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray]:
    """Clouds and their shadows on [frames, h, w] -> (cloudy frames, clear [frames, h, w] bool)."""
    count, height, width = frames.shape
    field = blob_field(rng, frames.shape, rng.uniform(3.0, 8.0))
    threshold = threshold_cover(field, cloud_cover(rng, count))  # [frames, 1, 1]
    flagged = field > threshold
    # opacity rises over 0.6 std above the threshold up to a per-frame maximum (thin or
    # thick cloud); a faint haze leaks outside the flagged area, as the real QM misses
    # faint cloud edges
    thickness = rng.uniform(0.4, 1.0, (count, 1, 1))
    opacity = (np.clip((field - threshold) / 0.6 + 0.1, 0, 1) * thickness).astype(np.float32)
    cloud_top = rng.uniform(*BAND_STYLES[band].cloud, (count, 1, 1)).astype(np.float32)
    offset = (0, *rng.integers(-5, 6, 2))  # shadow direction is set by the sun: one per scene
    shadow = ndimage.shift(opacity, offset, order=0, mode="constant", cval=0.0)
    shadow_flagged = ndimage.shift(flagged, offset, order=0, mode="constant", cval=False)
    frames = frames * (1 - 0.55 * shadow)
    frames = frames * (1 - opacity) + cloud_top * opacity
    return frames, ~(flagged | shadow_flagged)


def corrupt_wedges(rng: np.random.Generator, count: int, shape: tuple[int, int]) -> np.ndarray:
    """No-data wedges cut off one corner by a straight line (a swath edge, as in the real
    corrupt frames), 0.5-25% of the frame -> [count, h, w] bool."""
    height, width = shape
    y = np.arange(height)[None, :, None] / height  # [1, h, 1]
    x = np.arange(width)[None, None, :] / width  # [1, 1, w]
    corner_y, corner_x = rng.integers(0, 2, (2, count, 1, 1))
    along_y = np.abs(y - corner_y * (height - 1) / height)  # [count, h, 1], 0 at the corner row
    along_x = np.abs(x - corner_x * (width - 1) / width)  # [count, 1, w]
    fraction = rng.uniform(0.005, 0.25, (count, 1, 1))
    aspect = rng.uniform(0.3, 3.0, (count, 1, 1))
    # triangle with legs leg_y, leg_x (image fractions): area fraction = leg_y * leg_x / 2
    leg_y, leg_x = np.sqrt(2 * fraction * aspect), np.sqrt(2 * fraction / aspect)
    return along_y / leg_y + along_x / leg_x < 1


def quantise(values: np.ndarray, step: int = 16, top: int = 40000) -> np.ndarray:
    """Round to multiples of `step` like the real LR frames, clip to [0, top] -> uint16."""
    return (np.clip(np.round(values / step), 0, top // step) * step).astype(np.uint16)


def make_scene(rng: np.random.Generator, band: str, lr_size: int, frames: int,
               corrupt: int) -> dict[str, np.ndarray]:
    """One synthetic scene.

    Returns lr [frames, h, w] uint16, clear [frames, h, w] bool, hr [3h, 3w] uint16,
    hr_clear [3h, 3w] bool, shifts [frames, 2] float (dy, dx), corrupt [frames] bool.
    """
    style = BAND_STYLES[band]
    hr_size = domain.SCALE * lr_size
    canvas = ground_canvas(rng, band, hr_size + 2 * PAD)
    shifts = draw_shifts(rng, frames)
    lr = render_frames(canvas, shifts, rng.uniform(0.6, 1.0), hr_size)  # [frames, h, w]
    gain = rng.normal(1.0, 0.03, (frames, 1, 1))
    lr = gain * lr + rng.normal(0.0, 120.0, (frames, 1, 1))
    lr, clear = add_clouds(rng, lr, band)
    noise_std = np.sqrt(style.read_noise**2 + style.shot_noise * np.clip(lr, 0, None))
    lr = quantise(lr + noise_std * rng.standard_normal(lr.shape, dtype=np.float32))

    is_corrupt = np.zeros(frames, dtype=bool)
    is_corrupt[rng.choice(frames, corrupt, replace=False)] = True
    wedges = np.zeros(lr.shape, dtype=bool)
    wedges[is_corrupt] = corrupt_wedges(rng, corrupt, (lr_size, lr_size))
    lr[wedges] = CORRUPT_VALUE
    clear &= ~wedges  # missing data is flagged in QM

    ground = canvas[PAD:PAD + hr_size, PAD:PAD + hr_size]
    hr = ground + rng.normal(0.0, style.hr_noise, ground.shape)
    hr_clear = np.ones(hr.shape, dtype=bool)
    if rng.random() < 0.5:  # a cloud over part of the HR acquisition
        field = blob_field(rng, (1, hr_size, hr_size), rng.uniform(6.0, 20.0))
        hr_cloud = field[0] > threshold_cover(field, rng.uniform(0.005, 0.12, 1))[0]
        hr = np.where(hr_cloud, rng.uniform(*style.cloud), hr)
        hr_clear = ~hr_cloud
    hr = np.clip(np.round(hr), 0, 16383).astype(np.uint16)
    return {"lr": lr, "clear": clear, "hr": hr, "hr_clear": hr_clear, "shifts": shifts, "corrupt": is_corrupt}


# --------------------------------------------------------------------------- baseline


def baseline_sr(lr: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """The organisers' baseline: bicubic x3 of the mean of the clearest frames.

    lr [frames, h, w], clear [frames, h, w] -> [3h, 3w] float64. The clearest frames are
    those with the largest clear-pixel count among frames without corrupt pixels.
    """
    usable = lr.max(axis=(1, 2)) <= domain.CORRUPT_VALUE
    if not usable.any():
        raise ValueError("baseline: every frame holds values above 60000 (no usable frame)")
    return preprocessing.bicubic_baseline(lr[usable], clear[usable])


def baseline_cpsnr(lr: np.ndarray, clear: np.ndarray, hr: np.ndarray, hr_clear: np.ndarray) -> float:
    """Kelvins cPSNR (dB) of `baseline_sr` against the HR image: the norm.csv value."""
    return metrics.kelvins_cpsnr(baseline_sr(lr, clear), hr, hr_clear)


# --------------------------------------------------------------------------- data set


def _frame_plan(rng: np.random.Generator, short: bool) -> tuple[int, int]:
    """(frames, corrupt frames) of a scene. A `short` scene keeps 5-8 usable frames."""
    if short:
        frames = int(rng.integers(9, 12))
        return frames, frames - int(rng.integers(5, 9))
    usable = int(np.clip(np.round(rng.normal(18, 6)), 9, 35))
    corrupt = min(int(rng.binomial(usable, 0.04)), 35 - usable)
    return usable + corrupt, corrupt


def write_dataset(
    out_dir: str | os.PathLike,
    seed: int,
    n_scenes: int = 20,
    n_test_scenes: int = 5,
    lr_size: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a synthetic PROBA-V folder; return a summary.

    n_scenes train scenes and n_test_scenes test scenes per band; LR frames are
    [lr_size, lr_size]. Names imgsetNNNN are unique over the whole set (train RED, train NIR,
    test RED, test NIR, in that order). Every 4th test scene of a band (the first included)
    keeps fewer than 9 usable frames. Scene i draws from its own seed (seed, i): the set is
    deterministic for a seed and the arguments. The folder appears complete, replacing a set
    `synth` wrote there before; a folder of other files is refused.
    """
    for name, value, minimum in (("seed (--seed)", seed, 0), ("n_scenes (--scenes)", n_scenes, 0),
                                 ("n_test_scenes (--test-scenes)", n_test_scenes, 0),
                                 ("lr_size (--lr-size)", lr_size, MIN_LR_SIZE)):
        if not domain.is_integer_at_least(value, minimum):
            raise domain.DeepSUMError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    start = time.perf_counter()
    out_dir = fileio.require_replaceable(fileio.require_folder_path(out_dir, "synthetic data set folder"),
                                         lambda folder: (folder / TRUTH_FILE).is_file(), "synth",
                                         "a synthetic data set", TRUTH_FILE)
    plan = [(split, band, index) for split, count in (("train", n_scenes), ("test", n_test_scenes))
            for band in ("RED", "NIR") for index in range(count)]
    seeds = np.random.SeedSequence(seed).spawn(len(plan))
    baselines: dict[str, float] = {}
    truth: dict[str, Any] = {}
    # not while a run reads the set it replaces (`prepare`, `superresolve` hold it shared), nor beside another synth
    with fileio.lock_if_present(out_dir, "synthetic data set folder", readers="prepare or superresolve"), \
            fileio.atomic_folder(out_dir) as folder:  # the whole set or none
        for number, (split, band, index) in enumerate(tqdm(plan, desc="synthetic scenes", disable=not progress)):
            rng = np.random.default_rng(seeds[number])
            name = f"imgset{number:04d}"
            frames, corrupt = _frame_plan(rng, short=split == "test" and index % 4 == 0)
            scene = make_scene(rng, band, lr_size, frames, corrupt)
            train = split == "train"
            probav.write_scene(folder / split / band / name, scene["lr"], scene["clear"],
                               scene["hr"] if train else None, scene["hr_clear"] if train else None)
            baselines[name] = baseline_cpsnr(scene["lr"], scene["clear"], scene["hr"], scene["hr_clear"])
            truth[name] = {"split": split, "band": band, "frame_names": [f"LR{k:03d}" for k in range(frames)],
                           "shifts": scene["shifts"].tolist(), "corrupt": scene["corrupt"].tolist(),
                           "clear_fraction": scene["clear"].mean(axis=(1, 2)).round(4).tolist(),
                           "baseline_cpsnr": baselines[name]}
        probav.write_norm(folder / "norm.csv", baselines)
        fileio.save_json(folder / TRUTH_FILE, {"seed": seed, "lr_size": lr_size, "scale": domain.SCALE,
                                               "shift_convention": SHIFT_CONVENTION, "scenes": truth})
    values = list(baselines.values())
    return {
        "out_dir": str(out_dir),
        "truth": str(out_dir / TRUTH_FILE),
        "scenes": {"train": {band: n_scenes for band in domain.BANDS},
                   "test": {band: n_test_scenes for band in domain.BANDS}},
        "frames": sum(len(t["corrupt"]) for t in truth.values()),
        "corrupt_frames": sum(sum(t["corrupt"]) for t in truth.values()),
        "short_test_scenes": [name for name, t in truth.items()
                              if t["split"] == "test" and len(t["corrupt"]) - sum(t["corrupt"]) < 9],
        "baseline_cpsnr_range": [min(values), max(values)] if values else [],
        "seconds": time.perf_counter() - start,
    }


def read_truth(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The planted shifts and corrupt frames written by `write_dataset` (JSON, no pickle)."""
    return fileio.read_json(Path(out_dir) / TRUTH_FILE, "the synthetic set's truth JSON", probav.ProbaVError)


# --------------------------------------------------------------------------- command line


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to write (PROBA-V layout)")
    parser.add_argument("--seed", required=True, type=integer_at_least(0), help="random seed (the set is deterministic)")
    parser.add_argument("--scenes", type=integer_at_least(1), default=20, help="train scenes per band (default 20)")
    parser.add_argument("--test-scenes", type=integer_at_least(0), default=5, help="test scenes per band (default 5)")
    parser.add_argument("--lr-size", type=integer_at_least(MIN_LR_SIZE), default=128,
                        help=f"LR side in pixels, at least {MIN_LR_SIZE} (HR is 3x; default 128)")


def run_synth(args: argparse.Namespace) -> int:
    summary = write_dataset(args.out, args.seed, n_scenes=args.scenes, n_test_scenes=args.test_scenes,
                            lr_size=args.lr_size)
    print(f"wrote {summary['frames']} frames of {sum(sum(s.values()) for s in summary['scenes'].values())} "
          f"scenes to {summary['out_dir']} in {summary['seconds']:.1f} s; truth: {summary['truth']}")
    low, high = summary["baseline_cpsnr_range"] or (math.nan, math.nan)
    print(f"baseline cPSNR {low:.2f}..{high:.2f} dB; corrupt frames {summary['corrupt_frames']}; "
          f"test scenes with < 9 usable frames: {', '.join(summary['short_test_scenes']) or 'none'}")
    return 0
