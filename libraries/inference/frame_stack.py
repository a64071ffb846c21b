"""Super-resolution of any stack of frames of one scene: a folder of PNG or TIFF frames, their
optional clear masks, the test-time preprocessing of a PROBA-V scene, the sliding window, and
the image written (`superresolve --frames DIR`).

Frames are the PNG and TIFF files of the folder (`*.png`, `*.tif`, `*.tiff`, any case; not
hidden files, not the masks), sorted by name: any count >= 1, all of one size, each side at
least `MIN_SIDE` pixels, single channel, all of one kind: 16-bit (uint16), 8-bit (uint8) or
float. Clear masks are optional: a glob (relative to the folder, or absolute) whose files,
sorted by name, are the masks of the sorted frames, one each (nonzero = clear); without them
every pixel is clear. Every bad file is one `FrameStackError` naming it.

Value scale. The network is normalised for PROBA-V digital numbers (`config.mu`,
`config.sigma`). 16-bit frames are used as DN as they are (so, as in PROBA-V, a frame with a
pixel above 60000 counts as corrupt and is dropped). 8-bit and float frames are mapped
affinely, `dn = gain * value + offset`, so that the clear pixels of the stack have the mean
`config.mu` and the standard deviation `SCENE_SPREAD`, the spread of a typical PROBA-V scene;
the output is mapped back, so it has the input's value scale. The spread matters, not only the
mean: SISRNet and FusionNet normalise their features per frame, so the network's correction of
the registered mean has a fixed size in DN, calibrated to PROBA-V contrast. When that gain would
put a pixel of the stack outside 0..59999 DN (e.g. one bright pixel in a flat image), the gain
is the largest that keeps every pixel inside: no frame becomes corrupt by the mapping.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tifffile  # scikit-image's TIFF reader and writer

from libraries import config as config_module
from libraries import domain, fileio, probav
from libraries.dataset.scenes import PreparedScene, preprocess_scene
from libraries.inference.frames import select_clear_frames, sort_frames_by_clearance
from libraries.inference.superresolve import Superresolver

FRAME_SUFFIXES = (".png", ".tif", ".tiff")
IMAGE_SUFFIXES = {".png": "PNG", ".tif": "float32 TIFF", ".tiff": "float32 TIFF"}  # what --out writes
# Smallest LR side: below 16 LR pixels (48 on the HR grid) the registration's largest shift (4)
# and RegNet's 9x9 filters (reflect padding of 4) cover a large part of the image.
MIN_SIDE = 16
# Standard deviation (DN) of the clear pixels of a typical PROBA-V scene: the median over the 8
# real scenes of `probav_real` (4 per band; 646 to 2306 DN) is about 1450.
SCENE_SPREAD = 1500.0
KINDS = {np.dtype(np.uint16): "16-bit", np.dtype(np.uint8): "8-bit"}  # any float dtype: "float"
EXPECTED_FRAME = "a single-channel 16-bit, 8-bit or float PNG or TIFF frame"


class FrameStackError(domain.DeepSUMError):
    """A frame folder, frame, mask or output path that `superresolve --frames` cannot use."""


@dataclass(frozen=True, eq=False)  # eq=False: dataclass equality on arrays is ambiguous
class FrameStack:
    """The LR frames of one scene read from a folder.

    frames  [frames, h, w] uint16 (16-bit), uint8 (8-bit) or float32 (float), sorted by file name
    clear   [frames, h, w] bool, True = clear
    """

    name: str  # the folder's name: names the scene in messages
    folder: Path
    frames: np.ndarray
    clear: np.ndarray
    frame_names: tuple[str, ...]  # file names, in frame order
    kind: str  # "16-bit", "8-bit" or "float"


def frame_kind(dtype: np.dtype) -> str | None:
    """"16-bit", "8-bit" or "float" for the dtypes a frame may have, None for any other."""
    dtype = np.dtype(dtype)
    return "float" if np.issubdtype(dtype, np.floating) else KINDS.get(dtype)


# --------------------------------------------------------------------------- reading


def _image_shape(path: Path) -> tuple[int, ...]:
    """The shape a PNG's or TIFF's header declares ([h, w] or [h, w, channels]), nothing decoded."""
    if path.suffix.lower() == ".png":
        try:
            header = probav.png_header(path.read_bytes(), str(path))
        except probav.ProbaVError as error:
            raise FrameStackError(str(error)) from None
        return (header.height, header.width) + ((header.channels,) if header.channels > 1 else ())
    with _open_tiff(path) as tiff:
        return tuple(tiff.series[0].shape)


def _open_tiff(path: Path) -> tifffile.TiffFile:
    try:
        tiff = tifffile.TiffFile(path)
    except Exception as error:  # tifffile reports damage as TiffFileError, ValueError, struct.error...
        raise FrameStackError(f"{path}: not a readable TIFF ({type(error).__name__}: {error})") from None
    pages = len(tiff.pages)
    if len(tiff.series) != 1 or pages != 1:
        tiff.close()
        problem = "not a readable TIFF (no image in it)" if pages == 0 else f"a TIFF of {pages} pages"
        raise FrameStackError(f"{path}: {problem}; expected one image per file")
    return tiff


def read_image(path: str | os.PathLike, shape: tuple[int, int], expected: str, context: str = "") -> np.ndarray:
    """A single-channel PNG or TIFF `[h, w]` of `shape`, the size checked from its header before
    any pixel is decoded (`context` explains it in the error), decoded in full (a truncated or
    damaged file is an error, not rows of zeros). dtype as stored; `expected` says in errors what
    the file should be."""
    path = Path(path)
    if not path.is_file():
        raise FrameStackError(f"{path}: file missing (expected {expected})")
    declared = _image_shape(path)
    if len(declared) != 2:
        raise FrameStackError(f"{path}: image of shape {declared} (several channels or planes); expected {expected}")
    if declared != tuple(shape):
        raise FrameStackError(f"{path}: size {declared[0]}x{declared[1]}; expected {shape[0]}x{shape[1]}{context}")
    if path.suffix.lower() == ".png":
        try:
            return probav.decode_png(path.read_bytes(), str(path), expected, tuple(shape))
        except probav.ProbaVError as error:
            raise FrameStackError(str(error)) from None
    with _open_tiff(path) as tiff:
        try:
            return tiff.asarray()
        except Exception as error:  # codecs report truncated data as ValueError, zlib.error, ...
            raise FrameStackError(f"{path}: not a readable TIFF ({type(error).__name__}: {error}); "
                                  f"expected {expected}") from None


def read_frame(path: Path, shape: tuple[int, int], context: str = "") -> tuple[np.ndarray, str]:
    """One LR frame -> (`[h, w]` uint16, uint8 or float32, its kind); NaN or Inf is an error."""
    frame = read_image(path, shape, EXPECTED_FRAME, context)
    kind = frame_kind(frame.dtype)
    if kind is None:
        raise FrameStackError(f"{path}: pixels of type {frame.dtype}; expected {EXPECTED_FRAME}")
    if kind == "float":
        frame = frame.astype(np.float32)
        if not np.all(np.isfinite(frame)):
            raise FrameStackError(f"{path}: NaN or infinite values (or beyond float32's range); expected finite values")
    return frame, kind


def read_mask(path: Path, shape: tuple[int, int], context: str = "") -> np.ndarray:
    """One clear mask (PNG or TIFF, any number type) -> `[h, w]` bool, nonzero = clear."""
    expected = "a single-channel PNG or TIFF clear mask (nonzero = clear)"
    mask = read_image(path, shape, expected, context)
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
        raise FrameStackError(f"{path}: pixels of type {mask.dtype}; expected {expected}")
    if np.issubdtype(mask.dtype, np.floating) and not np.all(np.isfinite(mask)):
        raise FrameStackError(f"{path}: NaN or infinite values; expected {expected}")
    return mask != 0


def _mask_files(folder: Path, masks_glob: str) -> list[Path]:
    pattern = masks_glob if os.path.isabs(masks_glob) else str(folder / masks_glob)
    files = sorted(Path(name) for name in glob.glob(pattern) if Path(name).is_file())
    if not files:
        raise FrameStackError(f"{pattern}: the masks glob matches no file (expected one clear mask per frame)")
    for path in files:
        if path.suffix.lower() not in FRAME_SUFFIXES:
            raise FrameStackError(f"{path}: matches the masks glob {masks_glob!r} but is not a PNG or TIFF file "
                                  "(expected clear masks *.png, *.tif or *.tiff)")
    return files


def frame_files(folder: str | os.PathLike, masks: Sequence[Path] = ()) -> list[Path]:
    """The frame files of `folder`: its PNG and TIFF files, hidden files and `masks` left out,
    sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "folder missing"
        raise FrameStackError(f"{folder}: {what} (expected a folder of PNG or TIFF frames of one scene)")
    excluded = {path.resolve() for path in masks}
    files = sorted((path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")
                    and path.suffix.lower() in FRAME_SUFFIXES and path.resolve() not in excluded),
                   key=lambda path: path.name)
    if not files:
        raise FrameStackError(f"{folder}: no PNG or TIFF frame (expected files *.png, *.tif or *.tiff)")
    return files


def read_frame_stack(folder: str | os.PathLike, masks_glob: str | None = None) -> FrameStack:
    """The frames of one scene from `folder` and, with `masks_glob`, their clear masks.

    masks_glob: e.g. "masks/*.png", relative to `folder` or absolute; its files, sorted by
    name, are the masks of the frames in their order (same count, same size). Every size is
    checked from the file's header, against the first frame's, before the file is decoded.
    """
    folder = Path(folder)
    masks = _mask_files(folder, masks_glob) if masks_glob is not None and folder.is_dir() else []
    files = frame_files(folder, masks)
    if masks_glob is not None and len(masks) != len(files):
        raise FrameStackError(f"{folder}: {len(files)} frames but {len(masks)} masks match {masks_glob!r}; "
                              "expected one mask per frame (matched in sorted order)")
    first = _image_shape(files[0])
    if len(first) != 2:
        raise FrameStackError(f"{files[0]}: image of shape {first} (several channels or planes); expected {EXPECTED_FRAME}")
    if min(first) < MIN_SIDE:
        raise FrameStackError(f"{files[0]}: size {first[0]}x{first[1]}; expected frames of at least "
                              f"{MIN_SIDE}x{MIN_SIDE} pixels (the network's smallest input)")
    context = f" like {files[0].name}"
    frames, kinds = zip(*(read_frame(path, first, context) for path in files))
    for path, kind in zip(files, kinds):
        if kind != kinds[0]:
            raise FrameStackError(f"{path}: {kind} frame, but {files[0].name} is {kinds[0]}; expected frames "
                                  "of one kind (all 16-bit, all 8-bit or all float)")
    if masks_glob is not None:
        clear = np.stack([read_mask(path, first, f" (the size of the frames, like {files[0].name})")
                          for path in masks])  # [frames, h, w]
        if not clear.any():  # the network would treat every pixel alike: as with no masks, silently
            raise FrameStackError(f"{masks_glob}: every mask is all zero (no clear pixel in any frame); expected "
                                  "nonzero = clear: are the masks inverted?")
    else:
        clear = np.ones((len(files),) + first, dtype=bool)
    return FrameStack(folder.name, folder, np.stack(frames), clear, tuple(path.name for path in files), kinds[0])


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ValueScale:
    """The affine map of a stack's values onto DN: `dn = gain * value + offset`."""

    gain: float
    offset: float

    def to_dn(self, values: np.ndarray) -> np.ndarray:
        """float32 DN of `values` (any shape)."""
        return (np.asarray(values, np.float64) * self.gain + self.offset).astype(np.float32)

    def from_dn(self, values: np.ndarray) -> np.ndarray:
        """float32 values on the stack's scale of DN `values` (any shape), the inverse of `to_dn`."""
        return ((np.asarray(values, np.float64) - self.offset) / self.gain).astype(np.float32)


def value_scale(stack: FrameStack, mu: float = domain.PROBAV_MU, spread: float = SCENE_SPREAD) -> ValueScale:
    """The map of the stack's values onto DN (module docstring): the identity for 16-bit frames;
    for 8-bit and float frames, the clear pixels' mean -> `mu` and standard deviation -> `spread`
    (of every pixel when none is clear), the gain lowered if needed to keep every pixel within
    0..59999 DN. A stack of one value is only shifted (gain 1)."""
    if stack.kind == "16-bit":
        return ValueScale(1.0, 0.0)
    values = np.asarray(stack.frames, np.float64)  # [frames, h, w]
    sample = values[stack.clear] if stack.clear.any() else values.ravel()
    mean, deviation = float(sample.mean()), float(sample.std())
    gain = spread / deviation if deviation > 0 else 1.0
    low, high = float(values.min()), float(values.max())
    if high > mean:  # one DN below the corrupt value: the float32 rounding can never make a frame corrupt
        gain = min(gain, (domain.CORRUPT_VALUE - 1 - mu) / (high - mean))
    if low < mean:
        gain = min(gain, mu / (mean - low))
    return ValueScale(gain, mu - gain * mean)


# --------------------------------------------------------------------------- super-resolution


@dataclass(frozen=True, eq=False)
class PreparedStack:
    """A stack after the test-time preprocessing: `scene` is what `Superresolver.scene` takes
    (frames in DN on the HR grid, at least 9, reference first), `prepared` its counts of frames
    dropped and reused, `scale` the map of the stack's values onto DN."""

    stack: FrameStack
    scale: ValueScale
    prepared: PreparedScene

    @property
    def scene(self) -> dict[str, Any]:
        prepared = self.prepared
        return {"name": self.stack.name, "frames": prepared.frames, "masks": prepared.masks,
                "shifts": prepared.shifts, "frame_names": prepared.frame_names}


def prepare_stack(stack: FrameStack, config: config_module.DeepSUMConfig) -> PreparedStack:
    """The stack mapped onto DN (`value_scale`) and preprocessed exactly as a PROBA-V test scene
    (`preprocess_scene(..., complete=True)`: corrupt frames dropped, x3 bicubic upsampling, the
    clearest frame as reference, registration, frames shifted by more than 4 dropped, completion
    to 9 frames by reusing the clearest)."""
    scale = value_scale(stack, config.mu)
    prepared = preprocess_scene(stack.name, scale.to_dn(stack.frames), stack.clear, stack.frame_names, complete=True)
    return PreparedStack(stack, scale, prepared)


def superresolve_frames(superresolver_or_model: Any, config: config_module.DeepSUMConfig,
                        stack: FrameStack | PreparedStack, n_slide: int = 0, windows_per_call: int | None = None) -> np.ndarray:
    """Super-resolve a stack of frames: float32 `[3h, 3w]` on the stack's value scale.

    superresolver_or_model: a `Superresolver` built for `config`, or a model (a `DeepSUM`, or
    any `model(x, masks)["sr"]`) to build one for. stack: from `read_frame_stack`, or
    `prepare_stack` of it (for callers that also report the frames used). The sliding window of
    `Superresolver.scene` with `n_slide`, its output mapped back from DN.
    """
    if int(n_slide) < 0:
        raise FrameStackError(f"n_slide: expected an integer >= 0, got {n_slide}")
    if isinstance(superresolver_or_model, Superresolver):
        superresolver = superresolver_or_model
        if superresolver.config != config:
            raise FrameStackError("superresolve_frames: the Superresolver was built for another config")
    else:
        superresolver = Superresolver(superresolver_or_model, config)
    prepared = stack if isinstance(stack, PreparedStack) else prepare_stack(stack, config)
    return prepared.scale.from_dn(superresolver.scene(prepared.scene, n_slide, windows_per_call))


def frames_used(prepared: PreparedStack, config: config_module.DeepSUMConfig, n_slide: int = 0) -> list[str]:
    """The names of the frames the sliding window with `n_slide` feeds to the network, once
    each, in the order of their first use (the frame selection of `Superresolver.scene`)."""
    chosen = select_clear_frames(sort_frames_by_clearance(prepared.scene), config.T_in)["frame_names"]
    windows = min(max(int(n_slide), 0), len(chosen) - config.T_in) + 1
    return list(dict.fromkeys(str(name) for name in chosen[:windows + config.T_in - 1]))


# --------------------------------------------------------------------------- writing


def output_kind(path: str | os.PathLike, frames: str = "16-bit") -> str:
    """What `write_image` writes to `path` for frames of kind `frames`: a `.png` has the frames'
    bit depth (16-bit or 8-bit: an 8-bit image in a 16-bit PNG looks black), a `.tif`/`.tiff`
    is float32. Any other suffix, and a PNG of float frames (it would round values such as
    0..1 to two levels), is an error, so a command refuses it before it runs the network."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise FrameStackError(f"{path}: unknown image suffix {Path(path).suffix!r}; expected .png "
                              "(the frames' bit depth), .tif or .tiff (float32)")
    if IMAGE_SUFFIXES[suffix] == "PNG" and frames == "float":
        raise FrameStackError(f"{path}: the frames are float and a PNG holds integers; expected a .tif or "
                              ".tiff (float32) path")
    return f"{frames} PNG" if IMAGE_SUFFIXES[suffix] == "PNG" else IMAGE_SUFFIXES[suffix]


def write_image(path: str | os.PathLike, image: np.ndarray, frames: str = "16-bit") -> Path:
    """Write a super-resolved image `[H, W]` of frames of kind `frames` atomically (`output_kind`):
    a 16-bit or 8-bit greyscale PNG (values rounded and clipped to 0..65535 or 0..255), or a
    float32 TIFF. NaN or Inf is an error. Returns the path."""
    path = Path(path)
    kind = output_kind(path, frames)
    image = np.asarray(image)
    if image.ndim != 2:
        raise FrameStackError(f"{path}: expected a 2-D image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise FrameStackError(f"{path}: the image holds NaN or infinite values; nothing written")
    if kind.endswith("PNG"):
        dtype = np.uint8 if frames == "8-bit" else np.uint16
        return probav.write_png(path, np.clip(np.rint(image), 0, np.iinfo(dtype).max).astype(dtype))
    with fileio.atomic_path(path, suffix=path.suffix) as temporary:
        tifffile.imwrite(temporary, image.astype(np.float32))
    return path
