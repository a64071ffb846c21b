"""fetch-weights, offline: a local HTTP server plays the authors' repository.

The served folder is laid out like the authors' repository; its files are copied at test
time from the reference pretraining checkpoints (`DEEPSUM_REFERENCE_DIR`), never committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import re
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from libraries import __main__ as cli
from libraries import checkpoints, config, model, weights

PRETRAINING = tuple(entry for entry in weights.AUTHORS_CHECKPOINTS if entry.group == "pretraining")
CHALLENGE = tuple(entry for entry in weights.AUTHORS_CHECKPOINTS if entry.group == "challenge")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requested: list[str]  # set per server: every path asked for

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.requested.append(self.path)
        super().do_GET()


class _CutOffHandler(_QuietHandler):
    """Announces the whole file, sends half of it, then closes the connection."""

    def do_GET(self) -> None:
        self.requested.append(self.path)
        path = Path(self.translate_path(self.path))
        content = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2])
        self.wfile.flush()
        self.close_connection = True


@contextlib.contextmanager
def _serve(folder: Path, handler: type = _QuietHandler):
    """Serve `folder` on 127.0.0.1 (free port) in a thread; yield (base URL, requested paths)."""
    requested: list[str] = []
    handler_class = type("Handler", (handler,), {"requested": requested})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler_class, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _reference_files(reference_dir: Path, entry: weights.AuthorsCheckpoint) -> Path:
    return reference_dir / "pretraining_checkpoints" / entry.name


@pytest.fixture
def authors_tree(reference_dir: Path, tmp_path: Path) -> Path:
    """A folder laid out like the authors' repository, holding the two pretraining checkpoints."""
    root = tmp_path / "authors"
    for entry in PRETRAINING:
        folder = root / entry.source_folder
        folder.mkdir(parents=True)
        for name, _ in entry.files():
            shutil.copyfile(_reference_files(reference_dir, entry) / name, folder / name)
    return root


def _all_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def _assert_left_nothing(dest: Path) -> None:
    assert _all_files(dest) == [], "a failed download left files behind"


# ----------------------------------------------------------------------------- the table


def test_table_is_pinned_and_well_formed():
    assert re.fullmatch(r"[0-9a-f]{40}", weights.AUTHORS_COMMIT)
    assert weights.DEFAULT_URL_BASE == f"https://raw.githubusercontent.com/diegovalsesia/deepsum/{weights.AUTHORS_COMMIT}/"
    assert [entry.group for entry in weights.AUTHORS_CHECKPOINTS] == ["pretraining"] * 2 + ["challenge"] * 2
    for entry in weights.AUTHORS_CHECKPOINTS:
        assert re.fullmatch(r"model\.ckpt-\d+", entry.prefix)
        assert entry.source_folder.startswith("DeepSUM/")
        for name, digest in entry.files():
            assert isinstance(digest.size, int) and digest.size > 0, name
            assert re.fullmatch(r"[0-9a-f]{40}", digest.git_blob), name
            assert digest.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", digest.sha256), name
        assert entry.index.sha256 is not None  # only the two large challenge .data files lack one
    names = [name for entry in weights.AUTHORS_CHECKPOINTS for name, _ in entry.files()]
    blobs = [digest.git_blob for entry in weights.AUTHORS_CHECKPOINTS for _, digest in entry.files()]
    assert len(set(names)) == len(names) == 8 and len(set(blobs)) == 8


def test_challenge_entries_are_consistent():
    """The challenge checkpoints are not in the reference data: check what the table says."""
    assert [entry.converted for entry in CHALLENGE] == [
        "checkpoints/DeepSUM_NIR_challenge",
        "checkpoints/DeepSUM_RED_challenge",
    ]
    for entry in CHALLENGE:
        assert entry.source_folder == f"DeepSUM/checkpoints/{Path(entry.destination).name}"
        assert entry.destination.startswith("checkpoints/authors_tf1/")
        # 60 network variables + 120 Adam slots + 3 scalars, all float32 but global_step
        assert entry.data.size == 12543972 and entry.index.size == 6265
        assert entry.data.size >= 4 * 2**20  # why its SHA-256 is missing (see module docstring)
    assert [entry.prefix for entry in CHALLENGE] == ["model.ckpt-968999", "model.ckpt-1119999"]


@pytest.mark.parametrize("band", ["NIR", "RED"])
def test_pretraining_destinations_are_the_config_folders(band):
    cfg = config.load_config(config.REPOSITORY_ROOT / "config_files" / f"DeepSUM_config_{band}.json")
    destinations = {entry.name: config.REPOSITORY_ROOT / entry.destination for entry in PRETRAINING}
    assert destinations == {"SISRNet": cfg.SISRNet_pretrain_dir, "RegNet": cfg.RegNet_pretrain_dir}


def test_pretraining_digests_match_reference_files(reference_dir):
    for entry in PRETRAINING:
        for name, digest in entry.files():
            assert weights._file_matches(_reference_files(reference_dir, entry) / name, digest), name


# ----------------------------------------------------------------------------- downloads


def test_fetch_pretraining_verifies_places_and_loads(authors_tree, reference_dir, tmp_path):
    dest = tmp_path / "repo"
    with _serve(authors_tree) as (url, requested):
        fetched = weights.fetch_weights(dest, url, which=("pretraining",))
    assert set(fetched) == {"SISRNet", "RegNet"} and len(requested) == 4
    for entry in PRETRAINING:
        result = fetched[entry.name]
        assert result.folder == dest / entry.destination and result.converted is None
        assert sorted(result.downloaded) == sorted(name for name, _ in entry.files())
        assert _all_files(result.folder) == sorted(["checkpoint", *result.downloaded])  # no temp files
        reader = tf.train.load_checkpoint(str(result.folder))
        expected = tf.train.load_checkpoint(str(_reference_files(reference_dir, entry)))
        assert reader.get_variable_to_shape_map() == expected.get_variable_to_shape_map()
        for variable in expected.get_variable_to_shape_map():
            np.testing.assert_array_equal(reader.get_tensor(variable), expected.get_tensor(variable))
    assert tf.train.load_checkpoint(str(dest / "pretraining_checkpoints/SISRNet")).get_tensor("conv_up_8/W").shape == (
        1, 1, 1, 64, 1,
    )
    assert not (dest / "checkpoints").exists()


def test_rerun_skips_verified_files_and_replaces_a_corrupt_one(authors_tree, tmp_path):
    dest = tmp_path / "repo"
    with _serve(authors_tree) as (url, requested):
        weights.fetch_weights(dest, url, which=("pretraining",))
        requested.clear()
        again = weights.fetch_weights(dest, url, which=("pretraining",))
        assert requested == [] and all(result.downloaded == () for result in again.values())
        assert all(len(result.present) == 2 for result in again.values())

        corrupt = dest / "pretraining_checkpoints/RegNet/model.ckpt-5999.index"
        corrupt.write_bytes(b"not a checkpoint index")
        # of the right size, one byte changed: only the checksums tell
        flipped = dest / "pretraining_checkpoints/SISRNet/model.ckpt-11399.data-00000-of-00001"
        content = bytearray(flipped.read_bytes())
        content[12345] ^= 0x01
        flipped.write_bytes(bytes(content))
        repaired = weights.fetch_weights(dest, url, which=("pretraining",))
    assert repaired["RegNet"].downloaded == ("model.ckpt-5999.index",)
    assert repaired["SISRNet"].downloaded == ("model.ckpt-11399.data-00000-of-00001",) and len(requested) == 2
    assert weights._file_matches(corrupt, PRETRAINING[1].index) and weights._file_matches(flipped, PRETRAINING[0].data)


@pytest.mark.parametrize("tamper", ["flip_one_byte", "other_file"])
def test_wrong_file_is_rejected_and_not_kept(authors_tree, tmp_path, tamper):
    served = authors_tree / PRETRAINING[0].source_folder / "model.ckpt-11399.data-00000-of-00001"
    content = bytearray(served.read_bytes())
    if tamper == "flip_one_byte":  # same size: only the checksums can tell
        content[len(content) // 2] ^= 0xFF
    else:
        content = content[:1000]
    served.write_bytes(bytes(content))
    dest = tmp_path / "repo"
    with _serve(authors_tree) as (url, _), pytest.raises(weights.WeightsError) as error:
        weights.fetch_weights(dest, url, which=("pretraining",))
    message = str(error.value)
    assert "model.ckpt-11399.data-00000-of-00001" in message and "expected" in message
    if tamper == "flip_one_byte":
        digest = PRETRAINING[0].data
        assert f"git object id: expected {digest.git_blob}" in message and f"SHA-256: expected {digest.sha256}" in message
    else:
        assert "announces 1000 bytes, expected 3122712" in message
    assert not dest.exists()  # not even SISRNet's verified .index, nor the folders made for it


def _flip_one_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


def test_a_failed_checkpoint_leaves_none_of_its_files_and_the_error_names_those_kept(authors_tree, tmp_path, capsys):
    sisrnet, regnet = PRETRAINING
    served = authors_tree / regnet.source_folder / f"{regnet.prefix}{weights.DATA_SUFFIX}"
    original = served.read_bytes()
    _flip_one_byte(served)
    dest = tmp_path / "fw3"
    with _serve(authors_tree) as (url, requested):
        assert cli.main(["fetch-weights", "--dest", str(dest), "--url-base", url, "--only", "pretraining"]) == 1
        error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the progress bars
        assert len(error) == 1 and f"git object id: expected {regnet.data.git_blob}" in error[0], error
        assert error[0].endswith("; kept: SISRNet (complete, verified)"), error
        # every path, hidden staging folders included: SISRNet whole, nothing of RegNet
        assert sorted(str(path.relative_to(dest)) for path in dest.rglob("*")) == sorted([
            "pretraining_checkpoints", "pretraining_checkpoints/SISRNet", "pretraining_checkpoints/SISRNet/checkpoint",
            *(f"pretraining_checkpoints/SISRNet/{name}" for name, _ in sisrnet.files())])
        served.write_bytes(original)
        requested.clear()
        again = weights.fetch_weights(dest, url, which=("pretraining",))
    assert again["SISRNet"].downloaded == () and len(again["RegNet"].downloaded) == 2 and len(requested) == 2
    assert tf.train.latest_checkpoint(str(dest / regnet.destination)).endswith(regnet.prefix)


def test_a_folder_already_there_changes_only_when_all_its_files_arrived(authors_tree, tmp_path):
    regnet = PRETRAINING[1]
    dest = tmp_path / "repo"
    weights.fetch_weights(dest, authors_tree, which=("pretraining",))
    folder = dest / regnet.destination
    (folder / "notes.txt").write_text("mine")
    for name, _ in regnet.files():  # both damaged here; the served .data damaged too
        _flip_one_byte(folder / name)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    _flip_one_byte(authors_tree / regnet.source_folder / f"{regnet.prefix}{weights.DATA_SUFFIX}")
    with pytest.raises(weights.WeightsError, match="git object id"):
        weights.fetch_weights(dest, authors_tree, which=("pretraining",))
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # the good .index not moved in
    assert sorted(path.name for path in folder.parent.iterdir()) == ["RegNet", "SISRNet"]  # no staging left


@pytest.mark.parametrize("failure", ["connection_refused", "challenge_files_missing"])
@pytest.mark.parametrize("layout", ["new_dest", "repository"])
def test_a_failed_fetch_removes_the_folders_it_created(authors_tree, tmp_path, capsys, failure, layout):
    dest = tmp_path / "fw3"
    if layout == "repository":  # laid out like this repository: the READMEs are there
        for folder in ("checkpoints", "pretraining_checkpoints"):
            (dest / folder).mkdir(parents=True)
            (dest / folder / "README.md").write_text("the authors' checkpoints")
    before = sorted(tmp_path.rglob("*"))
    with _serve(authors_tree) as (url, _):
        if failure == "connection_refused":
            with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            argv = ["--url-base", f"http://127.0.0.1:{port}/", "--only", "pretraining"]
        else:
            argv = ["--url-base", url, "--only", "challenge"]
        assert cli.main(["fetch-weights", "--dest", str(dest), *argv]) == 1
    error = capsys.readouterr().err
    assert ("cannot open" if failure == "connection_refused" else "HTTP 404") in error and "kept" not in error
    assert sorted(tmp_path.rglob("*")) == before


def test_connection_cut_mid_body_is_an_error_and_leaves_nothing(authors_tree, tmp_path):
    dest = tmp_path / "repo"
    with _serve(authors_tree, _CutOffHandler) as (url, _), pytest.raises(weights.WeightsError) as error:
        weights.fetch_weights(dest, url, which=("pretraining",))
    assert "model.ckpt-11399.index" in str(error.value)
    # Python's http.client either returns the short body (caught by the size check) or raises
    assert "stopped after 1769 of 3539 bytes" in str(error.value) or "broke off" in str(error.value)
    _assert_left_nothing(dest)


def test_missing_file_is_an_error_naming_the_url(tmp_path):
    (tmp_path / "empty").mkdir()
    dest = tmp_path / "repo"
    with _serve(tmp_path / "empty") as (url, _), pytest.raises(weights.WeightsError) as error:
        weights.fetch_weights(dest, url, which=("pretraining",))
    expected_url = f"{url}{PRETRAINING[0].source_folder}/model.ckpt-11399.index"
    assert expected_url in str(error.value) and "404" in str(error.value)
    _assert_left_nothing(dest)


@pytest.mark.parametrize("form", ["folder", "file_url"])
def test_local_copy_of_the_authors_repository(authors_tree, tmp_path, form):
    base = str(authors_tree) if form == "folder" else authors_tree.as_uri()
    fetched = weights.fetch_weights(tmp_path / "repo", base, which=("pretraining",))
    assert {name: len(result.downloaded) for name, result in fetched.items()} == {"SISRNet": 2, "RegNet": 2}


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(weights.WeightsError, match="unknown checkpoint group"):
        weights.fetch_weights(tmp_path, tmp_path, which=("pretrained",))
    with pytest.raises(weights.WeightsError, match="no such folder"):
        weights.fetch_weights(tmp_path, tmp_path / "nowhere")
    with pytest.raises(weights.WeightsError, match="unsupported scheme"):
        weights.fetch_weights(tmp_path, "ftp://example.org/deepsum/")


def test_command_line_only_pretraining(authors_tree, tmp_path, capsys):
    dest = tmp_path / "repo"
    with _serve(authors_tree) as (url, _):
        status = cli.main(["fetch-weights", "--dest", str(dest), "--url-base", url, "--only", "pretraining"])
    assert status == 0 and "SISRNet" in capsys.readouterr().out
    assert tf.train.latest_checkpoint(str(dest / "pretraining_checkpoints/RegNet")).endswith("model.ckpt-5999")
    assert not (dest / "checkpoints").exists()

    status = cli.main(["fetch-weights", "--dest", str(tmp_path / "other"), "--url-base", str(tmp_path / "nowhere")])
    assert status == 1 and "no such folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- conversion


def _stand_in_challenge_entry(reference_dir: Path, tmp_path: Path) -> tuple[weights.AuthorsCheckpoint, Path]:
    """A challenge-like entry serving the reference TF1 checkpoint of the full network.

    The real challenge files are not in the reference data; `deepsum_tf1_case_a/checkpoint_tf1`
    holds every DeepSUM variable under the authors' names, so it stands in for them.
    """
    source = reference_dir / "deepsum_tf1_case_a" / "checkpoint_tf1"
    root = tmp_path / "authors"
    folder = root / "DeepSUM/checkpoints/DeepSUM_NIR_lr_5e-06_bsize_8"
    folder.mkdir(parents=True)
    digests = {}
    for suffix in (".index", weights.DATA_SUFFIX):
        content = (source / f"model.ckpt{suffix}").read_bytes()
        (folder / f"model.ckpt{suffix}").write_bytes(content)
        hashes = weights._Hashes(len(content))
        hashes.update(content)
        digests[suffix] = weights.FileDigest(len(content), hashes.git_blob.hexdigest(), hashes.sha256.hexdigest())
    entry = dataclasses.replace(
        CHALLENGE[0], prefix="model.ckpt", index=digests[".index"], data=digests[weights.DATA_SUFFIX]
    )
    return entry, root


def test_challenge_conversion_path_calls_converter_once(reference_dir, tmp_path, monkeypatch):
    entry, root = _stand_in_challenge_entry(reference_dir, tmp_path)
    monkeypatch.setattr(weights, "AUTHORS_CHECKPOINTS", (entry,))
    calls = []

    def fake_convert(source, destination, config=None):
        calls.append((Path(source), Path(destination), config))
        checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
        return Path(tf.train.CheckpointManager(checkpoint, str(destination), max_to_keep=1).save())

    monkeypatch.setattr(checkpoints, "convert_tf1_checkpoint", fake_convert)
    dest = tmp_path / "repo"
    with _serve(root) as (url, _):
        first = weights.fetch_weights(dest, url, which=("challenge",))
        second = weights.fetch_weights(dest, url, which=("challenge",))
        tf1_folder = dest / "checkpoints/authors_tf1/DeepSUM_NIR_lr_5e-06_bsize_8"
        assert len(calls) == 1  # not again on a re-run
        # a TF1 file found damaged is fetched again, and the conversion made from it is redone
        (tf1_folder / "model.ckpt.index").write_bytes(b"damaged")
        third = weights.fetch_weights(dest, url, which=("challenge",))
        assert third["DeepSUM_NIR"].downloaded == ("model.ckpt.index",)
        assert cli.main(["fetch-weights", "--dest", str(tmp_path / "other"), "--url-base", url, "--only", "challenge",
                         "--no-convert"]) == 0
    assert calls == [(tf1_folder, dest / "checkpoints/DeepSUM_NIR_challenge", None)] * 2
    assert first["DeepSUM_NIR"].converted == second["DeepSUM_NIR"].converted == dest / "checkpoints/DeepSUM_NIR_challenge"
    other = tmp_path / "other" / "checkpoints"
    assert sorted(path.name for path in other.iterdir()) == ["authors_tf1"]  # --no-convert: no TF2 folder
    assert tf.train.load_checkpoint(str(tf1_folder)).get_tensor("conv_fuse_4/W").shape == (1, 1, 1, 64, 1)


def test_challenge_conversion_with_the_real_converter(reference_dir, tmp_path, monkeypatch):
    entry, root = _stand_in_challenge_entry(reference_dir, tmp_path)
    monkeypatch.setattr(weights, "AUTHORS_CHECKPOINTS", (entry,))
    with _serve(root) as (url, _):
        fetched = weights.fetch_weights(tmp_path / "repo", url, which=("challenge",))
    converted = fetched["DeepSUM_NIR"].converted
    assert converted == tmp_path / "repo/checkpoints/DeepSUM_NIR_challenge"

    network = model.DeepSUM(config.default_config())
    frames = tf.zeros([1, 9, 36, 36, 1])
    network(frames, tf.ones_like(frames), training=False)  # creates the variables
    assert checkpoints.restore_weights(network, converted) == "tf2"
    expected = tf.train.load_checkpoint(str(reference_dir / "deepsum_tf1_case_a" / "checkpoint_tf1"))
    for name, variable in network.tf1_variables().items():
        np.testing.assert_array_equal(variable.numpy(), expected.get_tensor(name), err_msg=name)
