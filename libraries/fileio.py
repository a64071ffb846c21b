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
from typing import Any, Iterator

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


class NpyStream:
    """An .npy file written row block by row block, its length known only at the end.

    A 128-byte header slot is reserved; `close` fills it with the final shape (npy format 1.0).
    `numpy.lib.format.open_memmap` needs the row count first, and the frames a scene keeps are
    known only after its registration; a second pass to count them would double the work.
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
