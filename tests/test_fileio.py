"""Atomic writes and the streamed .npy writer (libraries.fileio)."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from libraries import domain, fileio


def _stream(path, blocks, capacity):
    stream = fileio.NpyStream(path, blocks[0].dtype, blocks[0].shape[1:], capacity)
    for block in blocks:
        stream.append(block)
    stream.close()
    return stream


@pytest.mark.parametrize("capacity", [7, 100, 12_345, 1_000_000])
def test_npy_stream_file_is_byte_identical_to_numpy_save(tmp_path, capacity):
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 2**16, size=(n, 3, 5), dtype=np.uint16) for n in (2, 0, 4, 1)]
    _stream(tmp_path / "streamed.npy", blocks, capacity)
    np.save(tmp_path / "saved.npy", np.concatenate(blocks), allow_pickle=False)
    assert (tmp_path / "streamed.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()


def test_npy_stream_refuses_rows_beyond_capacity_and_other_shapes(tmp_path):
    stream = fileio.NpyStream(tmp_path / "a.npy", np.int32, (2,), capacity=3)
    stream.append(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match=r"a\.npy: 4 rows, more than the 3"):
        stream.append(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match=r"a\.npy: rows of shape \(3,\), expected \(2,\)"):
        stream.append(np.zeros((1, 3), np.int32))
    stream.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.zeros((2, 2), np.int32))


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    destination = tmp_path / "out.json"
    fileio.save_json(destination, {"a": 1})
    with pytest.raises(RuntimeError, match="stop"):
        with fileio.atomic_path(destination) as temporary:
            temporary.write_text("half")
            raise RuntimeError("stop")
    assert destination.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize("make", ["mkstemp", "mkdtemp"])
def test_a_folder_that_cannot_be_written_names_the_destination_not_the_hidden_temporary_name(tmp_path, monkeypatch,
                                                                                             make):
    """The temporary name (".submission.zip.k2x8.tmp") is the project's, not the user's: a
    read-only or full folder is reported with the path the user gave."""
    def refused(*args, dir=None, prefix="", suffix="", **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}k2x8{suffix}"))

    monkeypatch.setattr(fileio.tempfile, make, refused)
    destination = tmp_path / "submission.zip"
    writer = fileio.atomic_path if make == "mkstemp" else fileio.atomic_folder
    with pytest.raises(PermissionError) as raised:
        with writer(destination):
            pass
    assert str(raised.value) == f"[Errno 13] Permission denied: '{destination}'"
    assert sorted(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_the_old_folder_only_on_success(tmp_path):
    destination = tmp_path / "store"
    with fileio.atomic_folder(destination) as folder:
        (folder / "x.txt").write_text("old")
    with pytest.raises(RuntimeError, match="stop"):
        with fileio.atomic_folder(destination) as folder:
            (folder / "x.txt").write_text("new")
            raise RuntimeError("stop")
    assert (destination / "x.txt").read_text() == "old"
    with fileio.atomic_folder(destination) as folder:
        (folder / "y.txt").write_text("new")
    assert sorted(p.name for p in destination.iterdir()) == ["y.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_and_folders_get_the_modes_of_the_umask(tmp_path, umask, file_mode, folder_mode):
    previous = os.umask(umask)
    try:
        written = [fileio.save_json(tmp_path / "a.json", {}), fileio.save_npy(tmp_path / "a.npy", np.zeros(2)),
                   fileio.save_bytes(tmp_path / "a.bin", b"x")]
        with fileio.atomic_folder(tmp_path / "folder") as folder:
            (folder / "inside.txt").write_text("x")
    finally:
        os.umask(previous)
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in written} == {
        "a.json": file_mode, "a.npy": file_mode, "a.bin": file_mode}
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == folder_mode


def test_a_folder_lock_refuses_a_second_writer_and_frees_the_folder_when_its_process_dies(tmp_path):
    folder = tmp_path / "run"
    with fileio.FolderLock(folder, "checkpoint folder"):
        assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(domain.DeepSUMError, match=rf"{folder}: this checkpoint folder is in use by another "
                                                      rf"run \(process {os.getpid()}, this one: an earlier object "
                                                      r"still holds it; release it"):
            fileio.FolderLock(folder, "checkpoint folder")
    assert list(folder.iterdir()) == []  # released: the pid file is gone
    # a process that holds the lock and dies by SIGKILL leaves its pid file, but not its lock
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom libraries import fileio\n"
                              f"lock = fileio.FolderLock({str(folder)!r})\nprint('locked', flush=True)\ntime.sleep(600)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "locked\n"  # the event: the child holds the lock
        with pytest.raises(domain.DeepSUMError, match=rf"process {child.pid}\)"):
            fileio.FolderLock(folder)
    finally:
        child.kill()
        child.wait()
    with fileio.FolderLock(folder):
        assert (folder / ".lock").read_text() == f"{os.getpid()}\n"


def test_readers_share_a_folder_lock_that_keeps_writers_out(tmp_path):
    """Readers (a training run reading a data set) hold it together and write nothing; a writer
    (`prepare`) is refused while one reads, and a reader while a writer writes. The `.lock` a
    killed writer left does not name it as the holder of the readers' lock."""
    folder = tmp_path / "data"
    (folder / "NIR").mkdir(parents=True)
    (folder / ".lock").write_text("999999999\n")  # a killed writer's: no such process
    first, second = (fileio.FolderLock(folder, "data set", shared=True) for _ in range(2))
    with pytest.raises(domain.DeepSUMError, match=rf"^{folder}: this data set is in use by another run \(a run that "
                                                  r"reads it, e\.g\. train\); wait for it to end"):
        fileio.FolderLock(folder, "data set")
    first.release()
    second.release()
    assert sorted(entry.name for entry in folder.iterdir()) == [".lock", "NIR"]  # readers wrote and removed nothing
    with fileio.FolderLock(folder, "data set"):
        with pytest.raises(domain.DeepSUMError, match=rf"process {os.getpid()}, this one"):
            fileio.FolderLock(folder, "data set", shared=True)
    with pytest.raises(FileNotFoundError):  # a reader never creates the folder it reads
        fileio.FolderLock(tmp_path / "missing", "data set", shared=True)
    assert not (tmp_path / "missing").exists()


def test_stale_partial_folders_are_removed_and_finished_outputs_kept(tmp_path):
    (tmp_path / ".prepare-abc.partial" / "NIR").mkdir(parents=True)
    (tmp_path / "NIR").mkdir()
    (tmp_path / ".notes.partial").write_text("a file, not a folder")
    removed = fileio.remove_stale_partials(tmp_path, ".prepare-*.partial")
    assert removed == [tmp_path / ".prepare-abc.partial"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".notes.partial", "NIR"]
