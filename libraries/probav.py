"""Reading (and writing) PROBA-V scene folders and the organisers' `norm.csv`.

Layout of the challenge data::

    data_dir/norm.csv                          "imgsetNNNN <baseline cPSNR>" per line
    data_dir/{train,test}/{NIR,RED}/imgsetNNNN/
        LR000.png, LR001.png, ...              [h, w] 16-bit greyscale frames
        QM000.png, QM001.png, ...              [h, w] clear masks (0/1 or 0/255, true = clear)
        HR.png, SM.png                         [3h, 3w] target and its clear mask (train only)

Every bad input raises one `ProbaVError` naming the file and what was expected. A PNG is
checked in full before it is used: its chunks' checksums, its size from the header before any
pixel is decoded, and image data that inflate to exactly the rows the header declares (Pillow
fills the rows of a file whose data end early with zeros, without an error). It is then
decoded with imageio's Pillow plugin (the reader behind `skimage.io.imread`), which keeps
16-bit data as uint16 and returns uint8 for an 8-bit file, so an 8-bit frame is detected
from the decoded dtype.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import imageio.v3 as iio
import numpy as np
from tqdm.auto import tqdm

from libraries import domain, fileio

MASK_MODES = ("required", "assume_clear")
MAX_BASELINE = 200.0  # dB: above any cPSNR of a 16-bit HR image (`read_norm`)

_FRAME_FILE = re.compile(r"^(LR|QM)(\d+)\.png$")


class ProbaVError(domain.DeepSUMError):
    """A PROBA-V file or folder is missing or not in the expected format."""


@dataclass(frozen=True, eq=False)  # eq=False: dataclass equality on arrays is ambiguous
class Scene:
    """One PROBA-V scene (image set) of one band.

    lr        [frames, h, w] uint16, frames in LR number order (LR000, LR001, ...)
    clear     [frames, h, w] bool, True = clear (from QM*.png, or all True if assumed)
    hr        [3h, 3w] uint16 or None (test scenes)
    hr_clear  [3h, 3w] bool or None (from SM.png)
    """

    name: str
    band: str
    split: str
    path: Path
    lr: np.ndarray
    clear: np.ndarray
    hr: np.ndarray | None
    hr_clear: np.ndarray | None
    frame_names: tuple[str, ...]

    @property
    def n_frames(self) -> int:
        return int(self.lr.shape[0])


# --------------------------------------------------------------------------- PNG files


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


@dataclass(frozen=True)
class PngHeader:
    """What a PNG's IHDR chunk declares, and the compressed image data (IDAT chunks)."""

    height: int
    width: int
    bit_depth: int
    channels: int
    interlaced: bool
    data: bytes

    def decoded_bytes(self) -> int:
        """Bytes of filtered scanlines the data must inflate to (one filter byte per row)."""
        def rows(width: int, height: int) -> int:
            return height * (1 + math.ceil(width * self.channels * self.bit_depth / 8)) if width and height else 0
        if not self.interlaced:
            return rows(self.width, self.height)
        return sum(rows(math.ceil((self.width - x0) / dx), math.ceil((self.height - y0) / dy))
                   for x0, y0, dx, dy in _ADAM7)


def png_header(content: bytes, where: str) -> PngHeader:
    """Walk the chunks of a PNG file's bytes (checking each CRC); `where` names it in errors."""
    if not content.startswith(_PNG_SIGNATURE):
        raise ProbaVError(f"{where}: not a readable PNG (no PNG signature)")
    position, header, data = len(_PNG_SIGNATURE), None, []
    while position + 12 <= len(content):
        length = int.from_bytes(content[position:position + 4], "big")
        kind = content[position + 4:position + 8]
        body = content[position + 8:position + 8 + length]
        crc = content[position + 8 + length:position + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise ProbaVError(f"{where}: not a readable PNG (truncated: chunk {kind.decode('latin1')!r} cut off)")
        if zlib.crc32(kind + body).to_bytes(4, "big") != crc:
            raise ProbaVError(f"{where}: not a readable PNG (damaged: the checksum of chunk {kind.decode('latin1')!r} fails)")
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            header = (height, width, body[8], _CHANNELS.get(body[9], 1), body[12] == 1)
        elif kind == b"IDAT":
            data.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    else:
        raise ProbaVError(f"{where}: not a readable PNG (truncated: no IEND chunk)")
    if header is None:
        raise ProbaVError(f"{where}: not a readable PNG (no IHDR chunk)")
    return PngHeader(*header, data=b"".join(data))


def decode_png(content: bytes, where: str, expected: str, shape: tuple[int, int] | None = None,
               context: str = "", greyscale: bool = True) -> np.ndarray:
    """Decode a greyscale PNG from its bytes, checked in full.

    The size is checked from the header before any pixel is decoded (`shape`, with `context`
    added to the message); the image data must inflate to exactly the rows the header
    declares, so a file whose data end early is an error, not rows of zeros. `where` names
    the file in errors; `expected` says what it should be. greyscale=False returns colour
    images too (`[h, w, channels]`), for callers that report the shape themselves.
    """
    header = png_header(content, where)
    if shape is not None and (header.height, header.width) != tuple(shape):
        raise ProbaVError(f"{where}: size {(header.height, header.width)}; expected {tuple(shape)}{context}")
    inflater = zlib.decompressobj()
    try:
        inflated = len(inflater.decompress(header.data)) + len(inflater.flush())
    except zlib.error as error:
        raise ProbaVError(f"{where}: not a readable PNG (image data: {error}); expected {expected}") from None
    if not inflater.eof or inflated != header.decoded_bytes():
        raise ProbaVError(f"{where}: not a readable PNG (truncated: its image data hold {inflated} of the {header.decoded_bytes()} "
                          f"bytes its {header.width}x{header.height} header declares); expected {expected}")
    try:
        image = iio.imread(content, extension=".png", plugin="pillow")
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ProbaVError(f"{where}: not a readable PNG ({error}); expected {expected}") from error
    if greyscale and image.ndim != 2:
        raise ProbaVError(f"{where}: image of shape {image.shape}; expected {expected}")
    return image


def _decode_png(path: Path, expected: str, shape: tuple[int, int] | None = None, context: str = "") -> np.ndarray:
    if not path.is_file():
        raise ProbaVError(f"{path}: file missing (expected {expected})")
    return decode_png(path.read_bytes(), str(path), expected, shape, context)


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) a PNG file's header declares, without decoding it."""
    path = Path(path)
    if not path.is_file():
        raise ProbaVError(f"{path}: file missing (expected a PNG)")
    header = png_header(path.read_bytes(), str(path))
    return header.height, header.width


def read_image_png(path: str | os.PathLike, shape: tuple[int, int] | None = None, context: str = "") -> np.ndarray:
    """Read a 16-bit greyscale PNG (LR frame or HR image) -> [h, w] uint16, bit-exact.

    shape: the size it must have, checked before decoding (`context` explains it in the error)."""
    path = Path(path)
    image = _decode_png(path, "a 16-bit greyscale PNG", shape, context)
    if image.dtype != np.uint16:
        bits = image.dtype.itemsize * 8 if image.dtype != bool else 1
        raise ProbaVError(
            f"{path}: {bits}-bit PNG (dtype {image.dtype}); expected a 16-bit greyscale PNG"
        )
    return image


def read_mask_png(path: str | os.PathLike, shape: tuple[int, int] | None = None, context: str = "") -> np.ndarray:
    """Read a QM/SM mask PNG -> [h, w] bool, True = clear. Values must be {0,1} or {0,255}.

    shape, context: as `read_image_png`."""
    path = Path(path)
    expected = "a greyscale mask PNG with values 0/1 or 0/255"
    image = _decode_png(path, expected, shape, context)
    if image.dtype == bool:
        return image
    if not np.issubdtype(image.dtype, np.integer):
        raise ProbaVError(f"{path}: dtype {image.dtype}; expected {expected}")
    top = image.max()
    if top not in (0, 1, 255) or not np.all((image == 0) | (image == top)):
        values = np.unique(image)[:6].tolist()
        raise ProbaVError(f"{path}: mask values {values}...; expected {expected}")
    return image != 0


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a [h, w] uint16 or uint8 image (16-bit or 8-bit PNG) or bool mask (8-bit PNG, 0/255)
    atomically."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ProbaVError(f"{path}: expected a 2-D image, got shape {image.shape}")
    if image.dtype == bool:
        image = image.astype(np.uint8) * np.uint8(255)
    elif image.dtype not in (np.uint16, np.uint8):
        raise ProbaVError(f"{path}: expected uint16 or uint8 image or bool mask, got dtype {image.dtype}")
    # zlib level 1: files ~5% larger than the default level, encoded several times faster
    return fileio.save_bytes(path, iio.imwrite("<bytes>", image, extension=".png", compress_level=1))


# --------------------------------------------------------------------------- scenes


def _infer(value: str | None, path_part: str, allowed: tuple[str, ...], what: str, folder: Path) -> str:
    value = path_part if value is None else value
    if value not in allowed:
        raise ProbaVError(
            f"{folder}: {what} {value!r} is not one of {allowed} "
            f"(inferred from .../<split>/<band>/imgsetNNNN unless passed explicitly)"
        )
    return value


def _frame_numbers(folder: Path, names: list[str], prefix: str) -> dict[int, str]:
    numbers: dict[int, str] = {}
    for name in names:
        match = _FRAME_FILE.match(name)
        if match and match.group(1) == prefix:
            number = int(match.group(2))
            if number in numbers:
                raise ProbaVError(f"{folder / name}: duplicate frame number {number} (also {numbers[number]})")
            numbers[number] = name
    return dict(sorted(numbers.items()))


def _stack(folder: Path, files: list[str], reader, shape: tuple[int, int] | None = None,
           context: str = "") -> np.ndarray:
    """Read equally sized frames -> [frames, h, w]; every size is checked from the file's header
    before it is decoded (against `shape`, or the first file's size)."""
    if shape is None:
        shape, context = png_size(folder / files[0]), f" like {files[0]}"
    return np.stack([reader(folder / name, shape, context) for name in files])  # [frames, h, w]


def read_scene(
    folder: str | os.PathLike,
    band: str | None = None,
    split: str | None = None,
    masks: str = "required",
) -> Scene:
    """Read one scene folder (`.../{split}/{band}/imgsetNNNN`).

    masks="required": every LR frame needs its QM mask, and a train scene needs HR.png and
    SM.png. masks="assume_clear": for folders holding LR frames only (e.g. the real sample
    `probav_real/lr_only`): masks that are present are read and checked, absent QM masks are
    all clear, an absent SM is all clear. HR/SM are read whenever present. `band` and
    `split` are taken from the folder path when None.
    """
    folder = Path(folder)
    if masks not in MASK_MODES:
        raise ProbaVError(f"masks={masks!r}; expected one of {MASK_MODES}")
    if not folder.is_dir():
        raise ProbaVError(f"{folder}: scene folder missing (expected a folder with LR*.png frames)")
    band = _infer(band, folder.parent.name, domain.BANDS, "band", folder)
    split = _infer(split, folder.parent.parent.name, domain.SPLITS, "split", folder)
    names = sorted(os.listdir(folder))
    if not names:
        raise ProbaVError(f"{folder}: empty scene folder (expected LR000.png, QM000.png, ...)")
    lr_files = _frame_numbers(folder, names, "LR")
    qm_files = _frame_numbers(folder, names, "QM")
    if not lr_files:
        raise ProbaVError(f"{folder}: no LR frames (expected files LR000.png, LR001.png, ...)")
    if qm_files or masks == "required":
        missing = sorted(lr_files.keys() - qm_files.keys())
        if missing:
            raise ProbaVError(
                f"{folder / f'QM{missing[0]:03d}.png'}: file missing (expected the clear mask of "
                f"{lr_files[missing[0]]}; every LR frame needs a QM with the same number)"
            )
        orphans = sorted(qm_files.keys() - lr_files.keys())
        if orphans:
            raise ProbaVError(f"{folder / qm_files[orphans[0]]}: mask without its LR frame LR{orphans[0]:03d}.png")

    lr = _stack(folder, list(lr_files.values()), read_image_png)  # [frames, h, w] uint16
    if qm_files:
        clear = _stack(folder, list(qm_files.values()), read_mask_png, lr.shape[1:],
                       " (the size of the LR frames)")  # [frames, h, w] bool
    else:
        clear = np.ones(lr.shape, dtype=bool)

    hr, hr_clear = _read_target(folder, lr.shape[1:], split == "train" and masks == "required")
    if hr_clear is None and hr is not None:
        if masks == "required":
            raise ProbaVError(f"{folder / 'SM.png'}: file missing (expected the clear mask of HR.png)")
        hr_clear = np.ones(hr.shape, dtype=bool)
    frame_names = tuple(name[:-4] for name in lr_files.values())
    return Scene(folder.name, band, split, folder, lr, clear, hr, hr_clear, frame_names)


def _read_target(folder: Path, lr_shape: tuple[int, ...], required: bool):
    """HR.png and SM.png -> ([3h, 3w] uint16 | None, [3h, 3w] bool | None)."""
    expected_shape = tuple(domain.SCALE * side for side in lr_shape)
    hr_path, sm_path = folder / "HR.png", folder / "SM.png"
    context = f" (3 x the LR size {tuple(lr_shape)})"
    hr = read_image_png(hr_path, expected_shape, context) if required or hr_path.exists() else None
    hr_clear = read_mask_png(sm_path, expected_shape, context) if required or sm_path.exists() else None
    if hr is None and hr_clear is not None:
        raise ProbaVError(f"{hr_path}: file missing (SM.png is present, so HR.png is expected)")
    return hr, hr_clear


def list_scenes(data_dir: str | os.PathLike, split: str, band: str) -> list[Path]:
    """Sorted `imgset*` folders of `data_dir/split/band`; error if missing or empty."""
    if split not in domain.SPLITS or band not in domain.BANDS:
        raise ProbaVError(f"split={split!r}, band={band!r}; expected split in {domain.SPLITS}, band in {domain.BANDS}")
    folder = Path(data_dir) / split / band
    if not folder.is_dir():
        raise ProbaVError(f"{folder}: folder missing (expected a PROBA-V {split}/{band} folder of imgset*)")
    scenes = sorted(path for path in folder.iterdir() if path.is_dir() and path.name.startswith("imgset"))
    if not scenes:
        raise ProbaVError(f"{folder}: no imgset* scene folders (expected imgsetNNNN/ with LR*.png)")
    return scenes


def read_split(
    data_dir: str | os.PathLike,
    split: str,
    band: str,
    progress: bool = True,
    masks: str = "required",
) -> list[Scene]:
    """Read every scene of `data_dir/split/band` in name order (tqdm progress bar)."""
    folders = list_scenes(data_dir, split, band)
    return [
        read_scene(folder, band=band, split=split, masks=masks)
        for folder in tqdm(folders, desc=f"read {split}/{band}", unit="scene", disable=not progress)
    ]


def write_scene(
    folder: str | os.PathLike,
    lr: np.ndarray,
    clear: np.ndarray | None = None,
    hr: np.ndarray | None = None,
    hr_clear: np.ndarray | None = None,
) -> Path:
    """Write a scene folder: LR###.png from `lr` [frames, h, w] uint16, QM###.png from
    `clear` [frames, h, w] bool, HR.png [3h, 3w] uint16 and SM.png [3h, 3w] bool if given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(lr):
        write_png(folder / f"LR{index:03d}.png", frame)
    for index, mask in enumerate([] if clear is None else clear):
        write_png(folder / f"QM{index:03d}.png", mask)
    if hr is not None:
        write_png(folder / "HR.png", hr)
    if hr_clear is not None:
        write_png(folder / "SM.png", hr_clear)
    return folder


# --------------------------------------------------------------------------- norm.csv


def read_norm(path: str | os.PathLike) -> dict[str, float]:
    """Read norm.csv ("imgsetNNNN <float>" per line, space separated) -> {name: baseline cPSNR}.

    Blank lines are skipped; a malformed line, a value that is not a positive finite number or a
    repeated scene name is an error naming the file and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise ProbaVError(f"{path}: {'a folder' if path.is_dir() else 'file missing'} (expected norm.csv with "
                          f"lines 'imgsetNNNN <cPSNR>')")
    baselines: dict[str, float] = {}
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ProbaVError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); expected lines "
                          f"'imgsetNNNN <cPSNR>'") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("wrong number of fields")
            value = float(fields[1])
        except ValueError:
            value = math.nan
        # a score divides by it: 0 or less would be garbage. And no cPSNR of 16-bit images reaches
        # MAX_BASELINE: the smallest nonzero error of a 384x384 image, one grey level in one pixel,
        # is 96.3 + 51.7 = 148.0 dB (a larger value is a typo, or inf once stored as float32)
        if not (math.isfinite(value) and 0 < value < MAX_BASELINE):
            raise ProbaVError(f"{path}, line {number}: {line!r}; expected 'imgsetNNNN <cPSNR>', a cPSNR in dB "
                              f"above 0 and below {MAX_BASELINE}")
        if fields[0] in baselines:
            raise ProbaVError(f"{path}, line {number}: scene {fields[0]} listed twice")
        baselines[fields[0]] = value
    if not baselines:
        raise ProbaVError(f"{path}: no rows (expected lines 'imgsetNNNN <cPSNR>')")
    return baselines


def write_norm(path: str | os.PathLike, baselines: Mapping[str, float]) -> Path:
    """Write norm.csv atomically, one "name value" line per scene (value as repr, exact)."""
    text = "".join(f"{name} {float(value)!r}\n" for name, value in baselines.items())
    with fileio.atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)
