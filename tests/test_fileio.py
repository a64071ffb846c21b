"""Atomic writes and the streamed .npy writer (libraries.fileio)."""

import numpy as np
import pytest

from libraries import fileio


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
