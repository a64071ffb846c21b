"""The authors' published checkpoints: download, verify, place, convert.

The authors' repository (github.com/diegovalsesia/deepsum) ships two pretraining checkpoints
(SISRNet, RegNet) and the two challenge checkpoints (NIR, RED) in TensorFlow 1 format, but no
licence, so this repository does not redistribute them. `fetch_weights` takes them from the
authors' repository at a pinned commit, checks every byte against the table below, and puts
them where the configs expect them:

    pretraining_checkpoints/SISRNet/                   TF1, read by the training code
    pretraining_checkpoints/RegNet/                    TF1, read by the training code
    checkpoints/authors_tf1/<authors' folder name>/    TF1 challenge checkpoints
    checkpoints/DeepSUM_{NIR,RED}_challenge/           the same, converted to TF2

Only the `.index` and `.data-00000-of-00001` files are taken: the `.meta` graph files are
not needed to read variables. Each folder gets the one-line TF1 `checkpoint` file that
`tf.train.load_checkpoint(folder)` looks for. A checkpoint folder appears complete, every file
verified, or not at all; a failure keeps the checkpoints completed before it (the error names
them, and a rerun does not fetch them again) and removes the folders it created that stayed empty.

Every file is checked for its size, its git object id at the pinned commit (what the
authors' commit itself pins: SHA-1 of `b"blob <size>\\0" + content`) and its SHA-256. The
SHA-256 of the two challenge `.data` files is not recorded: they are 12.5 MB and the copy of
the authors' repository this table was built from stops at 4 MiB per file, so for those two
the size and git object id are the checks (and TensorFlow checks the CRC32C of every tensor
against the `.index` when the checkpoint is read or converted).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from libraries import checkpoints, domain, fileio
from libraries.config import REPOSITORY_ROOT

AUTHORS_REPOSITORY = "https://github.com/diegovalsesia/deepsum"
AUTHORS_COMMIT = "f44abc826e5da3af3c5ef1ca2ce4c0c4175a115a"
DEFAULT_URL_BASE = f"https://raw.githubusercontent.com/diegovalsesia/deepsum/{AUTHORS_COMMIT}/"
GROUPS = ("pretraining", "challenge")
DATA_SUFFIX = ".data-00000-of-00001"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60


class WeightsError(domain.DeepSUMError):
    """A download that failed or does not match the table; the message names the file."""


@dataclasses.dataclass(frozen=True)
class FileDigest:
    """What one file of the authors' repository must be, byte for byte."""

    size: int
    git_blob: str  # git object id at AUTHORS_COMMIT: SHA-1 of b"blob <size>\0" + content
    sha256: str | None  # None where it could not be computed (see the module docstring)


@dataclasses.dataclass(frozen=True)
class AuthorsCheckpoint:
    """One TF1 checkpoint of the authors: where it is in their repository and where it goes here."""

    name: str
    group: str  # "pretraining" or "challenge"
    source_folder: str  # folder inside the authors' repository
    prefix: str  # checkpoint prefix, e.g. "model.ckpt-11399"
    destination: str  # folder relative to `dest`
    index: FileDigest
    data: FileDigest
    converted: str | None = None  # TF2 folder relative to `dest` (challenge checkpoints)

    def files(self) -> tuple[tuple[str, FileDigest], ...]:
        """(file name, digest) of the `.index` and `.data` files."""
        return ((f"{self.prefix}.index", self.index), (f"{self.prefix}{DATA_SUFFIX}", self.data))


@dataclasses.dataclass(frozen=True)
class FetchedCheckpoint:
    """What `fetch_weights` did for one checkpoint."""

    folder: Path  # the TF1 folder (readable with tf.train.load_checkpoint)
    downloaded: tuple[str, ...]  # file names fetched in this run
    present: tuple[str, ...]  # file names already there with the right checksum
    converted: Path | None  # the TF2 checkpoint folder, for converted challenge checkpoints


_PRETRAINING = "DeepSUM/pretraining_checkpoints"
_CHALLENGE = "DeepSUM/checkpoints"
_REGNET_RUN = "RegNet_96x96patches_64filters_RESIDUAL_NOBATCHNORM_artificial_shifts_feature_space_NIR_lr_0.001_bsize_16"

AUTHORS_CHECKPOINTS: tuple[AuthorsCheckpoint, ...] = (
    AuthorsCheckpoint(
        name="SISRNet",
        group="pretraining",
        source_folder=f"{_PRETRAINING}/SISRNet/SISRNet_RESIDUAL_64filters_NIR_lr_5e-05_bsize_16",
        prefix="model.ckpt-11399",
        destination="pretraining_checkpoints/SISRNet",
        index=FileDigest(3539, "f10bb8ad7bc1f037da0620328c58c45129e4a31e",
                         "046412bb74327861d2b15729a0139f63f1ea9433ac18d5cee6e6e5a3e8f80d8f"),
        data=FileDigest(3122712, "38ff1c27215639b81b39e9045465fc28df1c5beb",
                         "b6a0bbfb7b06098481d4cf6d1a67fe686cb0db3edf469bab91cd0eb39d3aac62"),
    ),
    AuthorsCheckpoint(
        name="RegNet",
        group="pretraining",
        source_folder=f"{_PRETRAINING}/RegNet/{_REGNET_RUN}",
        prefix="model.ckpt-5999",
        destination="pretraining_checkpoints/RegNet",
        index=FileDigest(1282, "23c613160ffa6133fdd4be7c4c902cb641fd4c90",
                         "67f2aaef191ad3582611987da0fcf928858eba9cfd6f0320aba34750e34f1845"),
        data=FileDigest(4103640, "55e0597d551832eb16bb00cf2455dcf8a52945bd",
                         "a6636e0db0d488ff5068813d9627e746b9e57ad19310f187892456db90dab2aa"),
    ),
    AuthorsCheckpoint(
        name="DeepSUM_NIR",
        group="challenge",
        source_folder=f"{_CHALLENGE}/DeepSUM_NIR_lr_5e-06_bsize_8",
        prefix="model.ckpt-968999",
        destination="checkpoints/authors_tf1/DeepSUM_NIR_lr_5e-06_bsize_8",
        index=FileDigest(6265, "84c2daba34377b72c2084a7df7cd52c7a528775b",
                         "0a322a2cfdda1ce560aea638bc5e44a423bdeeeb29e1a982f41f3c71595a0374"),
        # size: the sum of the tensor sizes listed in the .index (checked to equal the real
        # size on both pretraining checkpoints)
        data=FileDigest(12543972, "88cbe2804020e283d27454cc67514f42d5c87a5d", None),
        converted="checkpoints/DeepSUM_NIR_challenge",
    ),
    AuthorsCheckpoint(
        name="DeepSUM_RED",
        group="challenge",
        source_folder=f"{_CHALLENGE}/DeepSUM_NIRpretraining_RED_lr_5e-06_bsize_8",
        prefix="model.ckpt-1119999",
        destination="checkpoints/authors_tf1/DeepSUM_NIRpretraining_RED_lr_5e-06_bsize_8",
        index=FileDigest(6265, "048cf65eb86571c88f0c3c664dfca8378f0271fd",
                         "0ad6d20f4b1b1211987b89a49c8be26b5da72d72b70ba929bde2560cc532af95"),
        data=FileDigest(12543972, "d86fcbc03f00bf589ff2009e734f6b9becbdfff5", None),
        converted="checkpoints/DeepSUM_RED_challenge",
    ),
)


# ----------------------------------------------------------------------------- checksums


class _Hashes:
    """Size, SHA-256 and git object id of a byte stream whose expected size is known up front
    (the git id hashes a header holding the size; a stream of another length fails the size
    check first)."""

    def __init__(self, expected_size: int):
        self.size, self.sha256 = 0, hashlib.sha256()
        self.git_blob = hashlib.sha1(b"blob %d\0" % expected_size)

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.sha256.update(chunk)
        self.git_blob.update(chunk)

    def mismatch(self, digest: FileDigest) -> str | None:
        """How the stream differs from `digest` ("SHA-256: expected .., got ..; ..."), or None."""
        checks = [("size (bytes)", digest.size, self.size), ("git object id", digest.git_blob, self.git_blob.hexdigest())]
        if digest.sha256 is not None:
            checks.append(("SHA-256", digest.sha256, self.sha256.hexdigest()))
        return "; ".join(f"{what}: expected {want}, got {got}" for what, want, got in checks if want != got) or None


def _file_matches(path: Path, digest: FileDigest) -> bool:
    """True when `path` exists and is exactly the file `digest` describes."""
    if not path.is_file() or path.stat().st_size != digest.size:
        return False
    hashes = _Hashes(digest.size)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            hashes.update(chunk)
    return hashes.mismatch(digest) is None


# ----------------------------------------------------------------------------- download


def _normalise_url_base(url_base: str | os.PathLike) -> str:
    """An http(s) or file URL ending in "/"; a local folder path becomes a file:// URL."""
    text = os.fspath(url_base)
    scheme = urllib.parse.urlsplit(text).scheme
    if scheme in ("http", "https", "file"):
        return text if text.endswith("/") else text + "/"
    if scheme and len(scheme) > 1:  # one letter would be a Windows drive
        raise WeightsError(f"--url-base {text!r}: unsupported scheme {scheme!r} (use http, https, file or a folder)")
    folder = Path(text).expanduser().resolve()
    if not folder.is_dir():
        raise WeightsError(f"--url-base {text!r}: no such folder (expected a copy of the authors' repository)")
    return folder.as_uri() + "/"


def _download(url: str, destination: Path, digest: FileDigest) -> None:
    """Stream `url` into `destination` atomically; raise WeightsError unless it matches `digest`.

    The bytes go to a temporary file beside `destination`, renamed into place only after
    every check passed, so a failed or cut-off download leaves nothing behind.
    """
    where = f"{destination.name} from {url}"
    try:
        with fileio.atomic_path(destination) as temporary:
            hashes = _Hashes(digest.size)
            with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, temporary.open("wb") as stream, \
                    tqdm(total=digest.size, desc=destination.name, unit="B", unit_scale=True, leave=False) as bar:
                announced = response.headers.get("Content-Length")
                if announced is not None and int(announced) != digest.size:
                    raise WeightsError(f"{where}: the server announces {announced} bytes, expected "
                                       f"{digest.size}; nothing was written")
                # a server that sends more than announced stops one byte past the expected size
                for chunk in iter(lambda: response.read(min(CHUNK_BYTES, digest.size + 1 - hashes.size)), b""):
                    stream.write(chunk)
                    hashes.update(chunk)
                    bar.update(len(chunk))
                    if hashes.size > digest.size:
                        break
            problem = hashes.mismatch(digest)
            if hashes.size < digest.size:
                problem = f"the download stopped after {hashes.size} of {digest.size} bytes"
            if problem is not None:
                raise WeightsError(f"{where}: {problem}; nothing was written")
    except urllib.error.HTTPError as error:
        raise WeightsError(f"{destination.name}: {url} answered HTTP {error.code} {error.reason}; "
                           "nothing was written") from error
    except urllib.error.URLError as error:
        raise WeightsError(f"{destination.name}: cannot open {url} ({error.reason}); nothing was written") from error
    except (http.client.HTTPException, OSError) as error:  # connection cut mid-body, timeouts
        raise WeightsError(f"{where}: the download broke off ({type(error).__name__}: {error}); "
                           "nothing was written") from error


def _write_checkpoint_index(folder: Path, prefix: str) -> None:
    """The TF1 `checkpoint` file naming `prefix` as the latest checkpoint of `folder`."""
    content = f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n'
    path = folder / "checkpoint"
    if not path.is_file() or path.read_text() != content:
        fileio.save_bytes(path, content.encode())


def _fetch_checkpoint(entry: AuthorsCheckpoint, dest: Path, url_base: str) -> FetchedCheckpoint:
    """Download the missing files of one checkpoint into `dest / entry.destination`.

    They go to a folder beside it and are moved in only once every one is verified: a new
    folder appears whole (`fileio.atomic_folder`), one already there changes only when all its
    missing or damaged files have arrived (what else it holds stays).
    """
    folder = fileio.require_folder_path(dest / entry.destination, "checkpoint folder")
    present = tuple(name for name, digest in entry.files() if _file_matches(folder / name, digest))
    missing = [(name, digest) for name, digest in entry.files() if name not in present]
    if not missing:
        _write_checkpoint_index(folder, entry.prefix)
        return FetchedCheckpoint(folder, (), present, None)
    existing = folder.is_dir()
    staging = (tempfile.TemporaryDirectory(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent)
               if existing else fileio.atomic_folder(folder, suffix=".partial"))
    with staging as temporary:
        for name, digest in missing:
            _download(url_base + urllib.parse.quote(f"{entry.source_folder}/{name}"), Path(temporary) / name, digest)
        _write_checkpoint_index(Path(temporary), entry.prefix)
        if existing:  # every file verified: each replaces its namesake by one rename
            for path in sorted(Path(temporary).iterdir()):
                os.replace(path, folder / path.name)
    return FetchedCheckpoint(folder, tuple(name for name, _ in missing), present, None)


def _convert(entry: AuthorsCheckpoint, fetched: FetchedCheckpoint, dest: Path) -> FetchedCheckpoint:
    """Convert a fetched TF1 challenge checkpoint to TF2, unless an up-to-date conversion exists."""
    target = dest / entry.converted
    if fetched.downloaded or not checkpoints.has_checkpoint(target):
        checkpoints.convert_tf1_checkpoint(fetched.folder, target, config=None)
    return dataclasses.replace(fetched, converted=target)


def fetch_weights(
    dest: str | os.PathLike = REPOSITORY_ROOT,
    url_base: str | os.PathLike = DEFAULT_URL_BASE,
    which: Iterable[str] = GROUPS,
    convert: bool = True,
) -> dict[str, FetchedCheckpoint]:
    """Download, verify and place the authors' checkpoints; convert the challenge ones to TF2.

    Parameters
    ----------
    dest : the repository root (or any folder laid out like it).
    url_base : where the authors' repository is: the raw-file URL at the pinned commit (default),
        another http(s) or file:// URL, or a local folder holding a copy of it.
    which : groups to fetch, among "pretraining" and "challenge".
    convert : convert the challenge checkpoints with `checkpoints.convert_tf1_checkpoint`.

    Returns
    -------
    {checkpoint name: FetchedCheckpoint}, e.g. {"SISRNet": ..., "DeepSUM_NIR": ...}.
    Files already present with the right checksum are not downloaded again.
    """
    groups = tuple(which)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise WeightsError(f"unknown checkpoint group(s) {unknown}; expected some of {list(GROUPS)}")
    dest = Path(dest)
    base = _normalise_url_base(url_base)
    entries = [entry for entry in AUTHORS_CHECKPOINTS if entry.group in groups]
    # the folders this call may create: on a failure, those left empty are removed again
    targets = [dest / folder for entry in entries for folder in (entry.destination, entry.converted) if folder]
    absent = fileio.folders_to_create(*targets)
    fetched: dict[str, FetchedCheckpoint] = {}
    complete: list[str] = []
    try:
        for entry in entries:
            result = _fetch_checkpoint(entry, dest, base)
            complete.append(entry.name)
            if convert and entry.converted is not None:
                result = _convert(entry, result, dest)
            fetched[entry.name] = result
    except domain.DeepSUMError as error:
        if not complete:
            raise
        # a complete, verified checkpoint stays: a rerun finds it and fetches only the others
        raise WeightsError(f"{error}; kept: {', '.join(complete)} (complete, verified)") from error
    finally:
        if len(fetched) < len(entries):
            fileio.remove_empty_folders(absent)
    return fetched


# ----------------------------------------------------------------------------- command line


def add_fetch_weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", type=Path, default=REPOSITORY_ROOT, help="repository root to fill (default: this one)")
    parser.add_argument(
        "--url-base",
        default=DEFAULT_URL_BASE,
        help="the authors' repository: raw-file URL at the pinned commit (default), a file:// URL or a local folder",
    )
    parser.add_argument("--only", choices=GROUPS, help="fetch only the pretraining or only the challenge checkpoints")
    parser.add_argument("--no-convert", action="store_true", help="keep the challenge checkpoints in TF1 format only")


def run_fetch_weights(args: argparse.Namespace) -> int:
    which = (args.only,) if args.only else GROUPS
    fetched = fetch_weights(args.dest, args.url_base, which, convert=not args.no_convert)
    for name, result in fetched.items():
        state = f"{len(result.downloaded)} downloaded, {len(result.present)} already present"
        print(f"{name:<12} {result.folder}  ({state})")
        if result.converted is not None:
            print(f"{'':<12} -> TF2: {result.converted}")
    return 0
