"""Atomic writes: a file appears under its final name complete, or not at all.

Every dataset, checkpoint, submission and JSON file the project writes goes through
`atomic_path`: the content is written to a temporary name in the same folder and renamed
over the destination only when the writer finished without an exception. What appears has
the mode a plain `open()` or `mkdir` would give under the user's umask (0644 and 0755 under
umask 022), so a data set or a submission can be read by colleagues and other workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from libraries import domain


def _umask() -> int:
    """The process's umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _naming(destination: Path) -> Iterator[None]:
    """An OSError of the block (the folder not writable, full) names `destination`, the file the
    user asked for, not the hidden temporary name beside it that was being created."""
    try:
        yield
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(destination)) from None


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it into place on success.

    `suffix` is appended to the temporary name for writers that insist on an extension
    (e.g. ".npz"). On an exception the temporary file is removed and nothing is renamed.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _naming(destination):
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=f".tmp{suffix}",
                                             dir=destination.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(temporary, 0o666 & ~_umask())
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
    with _naming(destination):
        temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=suffix, dir=destination.parent))
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's 0700 -> what a plain mkdir gives
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


class FolderLock:
    """One writer per folder: an exclusive OS lock (`flock`) on the folder itself; readers take it
    shared (`shared=True`: any number of readers, no writer while they read).

    The kernel drops the lock when its process ends, however it ends, so a killed run never
    blocks the next one. While a writer holds it, `folder/.lock` names the writer's process id
    for the message of a run that is refused; `release` removes it (a killed run's stays, and
    the next writer overwrites it). A reader needs the folder to exist and writes nothing.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, what: str = "folder", shared: bool = False, readers: str = "train"):
        self.descriptor: int | None = None
        self.shared, self.readers = shared, readers  # readers: the commands that read such a folder
        self.folder = require_folder_path(folder, what)
        if not shared:
            self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise domain.DeepSUMError(f"{self.folder}: this {what} is in use by another run ({self._holder()}); "
                                      "wait for it to end or use another folder") from None
        self.descriptor = descriptor
        if not shared:
            (self.folder / self.NAME).write_text(f"{os.getpid()}\n")

    def _holder(self) -> str:
        """Who holds the lock: the writer named by `.lock` if that process lives, else readers."""
        try:
            pid = int((self.folder / self.NAME).read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):  # no .lock, a killed writer's, or readers (they write none)
            return f"a run that reads it, e.g. {self.readers}"
        if pid == os.getpid():  # e.g. a notebook cell that makes a Trainer run again
            return (f"process {pid}, this one: an earlier object still holds it; release it (a Trainer: "
                    "`trainer.loop.release()`) or restart the kernel")
        return f"process {pid}"

    def release(self) -> None:
        if self.descriptor is not None:
            if not self.shared:
                (self.folder / self.NAME).unlink(missing_ok=True)
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
            os.close(self.descriptor)
            self.descriptor = None

    def __del__(self) -> None:  # an owner dropped without `release` (e.g. a failed constructor)
        self.release()

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_if_present(folder: str | os.PathLike, what: str, shared: bool = False,
                    readers: str = "train") -> contextlib.AbstractContextManager:
    """`FolderLock(folder, ...)` when `folder` is a folder, else a lock of nothing: no other run
    reads or writes a folder that does not exist yet."""
    return FolderLock(folder, what, shared, readers) if Path(folder).is_dir() else contextlib.nullcontext()


def remove_stale_partials(folder: str | os.PathLike, pattern: str = ".*.partial") -> list[Path]:
    """Remove the temporary folders (`pattern`) that interrupted writers left in `folder`.

    Call it only while holding the folder's `FolderLock`: then no live writer owns them.
    Returns what was removed.
    """
    removed = sorted(path for path in Path(folder).glob(pattern) if path.is_dir())
    for path in removed:
        shutil.rmtree(path)
    return removed


def require_folder_path(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before anything is written, that `path` is or can become a folder: its nearest
    existing ancestor (or itself) must be a folder. Raises `domain.DeepSUMError` naming both."""
    path = Path(path)
    existing = next(candidate for candidate in (path, *path.parents) if candidate.exists())
    if not existing.is_dir():
        raise domain.DeepSUMError(f"{path}: {what} cannot be created, {existing} is a file (expected a folder)")
    return path


def folders_to_create(*paths: str | os.PathLike) -> list[Path]:
    """The folders among `paths` and their parents that do not exist yet, innermost first: those
    a command is about to create, for `remove_empty_folders` if it fails."""
    missing = {folder for path in paths for folder in (Path(path), *Path(path).parents) if not folder.exists()}
    return sorted(missing, key=lambda folder: len(folder.parts), reverse=True)


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove, in their order (innermost first), those of `folders` that are empty folders: a
    failed command leaves none it created empty; one holding any file stays, and so its parents."""
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def require_replaceable(folder: str | os.PathLike, is_own: Callable[[Path], bool], writer: str, kind: str,
                        proof: str, error: type[domain.DeepSUMError] = domain.DeepSUMError) -> Path:
    """Refuse, before any work, to replace `folder` unless it is absent, an empty folder or
    `kind` that `writer` wrote (`is_own(folder)`, which finds its `proof` file): a command
    replaces what it wrote before, never a user's files. Returns `folder` as a Path."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return folder
    if folder.is_symlink() or not folder.is_dir():
        raise error(f"{folder}: exists and is not a plain folder (a file or a symbolic link); {writer} writes {kind} "
                    f"there: move it away or choose another output folder")
    if any(folder.iterdir()) and not is_own(folder):
        raise error(f"{folder}: holds files but is not {kind} (no {proof} written by {writer}); {writer} replaces "
                    f"only what it wrote: move them away or choose another output folder")
    return folder


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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:  # json.loads would keep the last value and drop the others without a word
        raise ValueError(f"key {', '.join(map(json.dumps, repeated))} written more than once in one object")
    return dict(pairs)


def read_json(path: str | os.PathLike, expected: str = "a JSON file",
              error: type[domain.DeepSUMError] = domain.DeepSUMError) -> Any:
    """The content of the JSON file `path`, or one `error` naming it and saying what was expected.

    Refused: a missing file (or a folder), bytes that are not UTF-8, text that is not JSON, and
    an object with a key written twice (a config edited by adding a key that was already there
    would otherwise run silently with whichever value came last).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {'a folder' if path.is_dir() else 'file missing'}; expected {expected}")
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text ({problem.reason} at byte {problem.start}); expected {expected}") from None
    except ValueError as problem:  # JSONDecodeError, a repeated key, an integer of too many digits
        raise error(f"{path}: not valid JSON ({problem}); expected {expected}") from None


def save_bytes(destination: str | os.PathLike, content: bytes) -> Path:
    """Write raw bytes atomically."""
    with atomic_path(destination) as temporary:
        temporary.write_bytes(content)
    return Path(destination)


class NpyStream:
    """An .npy file filled row block by row block through `numpy.lib.format.open_memmap`.

    The file is created for `capacity` rows, an upper bound: the frames a scene keeps are known
    only after its registration, and a second pass to count them would double the work.
    `close` cuts the file to the rows written: numpy's own header writer records the final
    shape (numpy pads every header so that its row count can change without moving the data)
    and the file is truncated after the last row.
    """

    def __init__(self, path: str | os.PathLike, dtype: Any, item_shape: tuple[int, ...], capacity: int):
        self.path, self.rows, self.capacity = Path(path), 0, int(capacity)
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.dtype(dtype),
                                               shape=(self.capacity,) + tuple(item_shape))

    def append(self, block: np.ndarray) -> None:
        """Write `block` [n, *item_shape] after the rows already written."""
        block = np.asarray(block)
        if block.shape[1:] != self.array.shape[1:]:
            raise ValueError(f"{self.path.name}: rows of shape {block.shape[1:]}, expected {self.array.shape[1:]}")
        end = self.rows + block.shape[0]
        if end > self.capacity:
            raise ValueError(f"{self.path.name}: {end} rows, more than the {self.capacity} it was opened for")
        self.array[self.rows:end] = block
        self.rows = end

    def close(self) -> None:
        """Flush, then leave an .npy of exactly `rows` rows."""
        array, self.array = self.array, None
        array.flush()
        offset, dtype, item_shape = array.offset, array.dtype, array.shape[1:]
        del array  # unmaps the file
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (self.rows,) + item_shape})
        size = offset + self.rows * dtype.itemsize * int(np.prod(item_shape, dtype=np.int64))
        if len(header.getvalue()) != offset:  # numpy pads headers so the row count can grow in place
            raise ValueError(f"{self.path}: numpy wrote a {len(header.getvalue())}-byte header for "
                             f"{self.rows} rows and a {offset}-byte one for {self.capacity}")
        with open(self.path, "r+b") as handle:
            handle.write(header.getvalue())
            handle.truncate(size)
