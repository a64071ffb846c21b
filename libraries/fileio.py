"""Atomic writes: a file appears under its final name complete, or not at all.

Every dataset, checkpoint, submission and JSON file the project writes goes through
`atomic_path`: the content is written to a temporary name in the same folder and renamed
over the destination only when the writer finished without an exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it into place on success.

    `suffix` is appended to the temporary name for writers that insist on an extension
    (e.g. ".npz"). On an exception the temporary file is removed and nothing is renamed.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=f".tmp{suffix}", dir=destination.parent
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, destination)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def atomic_folder(destination: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield an empty temporary folder beside `destination`; on success it replaces `destination`.

    On an exception the temporary folder is removed and `destination` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=suffix, dir=destination.parent))
    try:
        yield temporary
        old = None
        if destination.exists():  # a folder cannot be renamed over a non-empty one: move it aside
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
            os.replace(destination, old / destination.name)
        os.replace(temporary, destination)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def save_npz(destination: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` to an uncompressed .npz atomically. Object arrays are refused
    (they would need pickle to read back)."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {key!r} has dtype object; store fixed-type arrays only")
    with atomic_path(destination, suffix=".npz") as temporary:
        np.savez(temporary, **{key: np.asarray(value) for key, value in arrays.items()})
    return Path(destination)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an .npz written by `save_npz`, without pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected an .npz array file)")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def save_npy(destination: str | os.PathLike, array: np.ndarray) -> Path:
    """Write one array to .npy atomically (no pickle)."""
    with atomic_path(destination, suffix=".npy") as temporary:
        np.save(temporary, np.asarray(array), allow_pickle=False)
    return Path(destination)


def save_json(destination: str | os.PathLike, content: Any) -> Path:
    """Write `content` as indented JSON atomically."""
    with atomic_path(destination) as temporary:
        temporary.write_text(json.dumps(content, indent=2, sort_keys=False, default=str) + "\n")
    return Path(destination)


def save_bytes(destination: str | os.PathLike, content: bytes) -> Path:
    """Write raw bytes atomically."""
    with atomic_path(destination) as temporary:
        temporary.write_bytes(content)
    return Path(destination)
