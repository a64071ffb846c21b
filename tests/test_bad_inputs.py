"""Hostile inputs through the command line: each is one `error:` line naming the file, key or
scene, exit code 1, and nothing written (or the stated recovery).

Each case damages a copy of a small synthetic PROBA-V folder (or writes a bad config or zip),
runs one command and checks the message. PNGs are damaged below the level Pillow checks: image
data that end early with valid checksums, a header declaring a huge size.
"""

from __future__ import annotations

import csv
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from libraries import __main__ as cli
from libraries import config as config_module
from libraries import fileio, inference, metrics, probav, synthetic

from helpers import tiny_config

BAND = "NIR"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png16(height: int, width: int, rows_present: int | None = None, value: int = 1000) -> bytes:
    """A 16-bit greyscale PNG whose zlib stream is complete and whose checksums are valid, but
    which holds only `rows_present` of its `height` rows (all, when None)."""
    rows = height if rows_present is None else rows_present
    raw = b"".join(b"\0" + np.full(width, value, ">u2").tobytes() for _ in range(rows))
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "probav"
    synthetic.write_dataset(out, seed=2, n_scenes=2, n_test_scenes=1, lr_size=32, progress=False)
    return out


def _scene(data: Path) -> Path:
    return sorted((data / "train" / BAND).iterdir())[0]


def _prepare(data: Path, tmp: Path) -> list[str]:
    return ["prepare", "--data", str(data), "--out", str(tmp / "out"), "--band", BAND, "--chunks", "1",
            "--patch-size", "24", "--processes", "1", "--quiet"]


def short_lr_data(data: Path, tmp: Path) -> tuple[list[str], str]:
    (_scene(data) / "LR001.png").write_bytes(png16(32, 32, rows_present=16))
    return _prepare(data, tmp), f"{_scene(data).name}/LR001.png: not a readable PNG (truncated: its image data hold"


def huge_lr_header(data: Path, tmp: Path) -> tuple[list[str], str]:
    # 12000 x 12000 declared, 2 rows of data: refused from the header, before any decoding
    (_scene(data) / "LR002.png").write_bytes(png16(12000, 12000, rows_present=2))
    return _prepare(data, tmp), "LR002.png: size (12000, 12000); expected (32, 32) like LR000.png"


def short_hr_data(data: Path, tmp: Path) -> tuple[list[str], str]:
    (_scene(data) / "HR.png").write_bytes(png16(96, 96, rows_present=95))
    return _prepare(data, tmp), "HR.png: not a readable PNG (truncated"


def bad_crc(data: Path, tmp: Path) -> tuple[list[str], str]:
    path = _scene(data) / "QM000.png"
    content = bytearray(path.read_bytes())
    content[40] ^= 0xFF  # inside the first chunk after the signature and IHDR
    path.write_bytes(bytes(content))
    return _prepare(data, tmp), "QM000.png: not a readable PNG (damaged: the checksum of chunk"


def _config(tmp: Path, **changes) -> Path:
    content = config_module.to_json(tiny_config(tmp / "run", tmp / "prepared"))
    for key, value in changes.items():
        content["others"][key] = value
    return fileio.save_json(tmp / "config.json", content)


def config_t_in(data: Path, tmp: Path) -> tuple[list[str], str]:
    return ["train", "--config", str(_config(tmp, T_in=7))], "config.json: T_in: the network supports only 9, got 7"


def config_r(data: Path, tmp: Path) -> tuple[list[str], str]:
    return ["train", "--config", str(_config(tmp, R=2))], "config.json: R: the network supports only 3, got 2"


def train_init_from_missing(data: Path, tmp: Path) -> tuple[list[str], str]:
    # the checkpoint folder (and its parent) the command made before the refusal is removed again
    return (["train", "--config", str(_config(tmp)), "--init-from", str(tmp / "nonexist"), "--checkpoint-dir",
             str(tmp / "ck" / "initx"), "--no-progress"],
            f"{tmp / 'nonexist'}: not a checkpoint (neither a folder nor a prefix with a .index file) (given by --init-from)")


def train_require_pretrained(data: Path, tmp: Path) -> tuple[list[str], str]:
    return (["train", "--config", str(_config(tmp)), "--require-pretrained", "--checkpoint-dir", str(tmp / "ck" / "NIR3"),
             "--no-progress"], "(config SISRNet_pretrain_dir)")


def _pretraining_config(tmp: Path, kind: type, **changes) -> Path:
    values = dict(lr=1e-3, batch_size=2, steps=2, skip_step=2, spectral_band=BAND, mu=7754.664, sigma=2316.3408,
                  sigma_rescaled=596.982, patch_size=24, n_features=8, dataset_path=tmp / "prepared",
                  checkpoint_dir=tmp / "run")
    return fileio.save_json(tmp / "pretraining.json", config_module.to_json(kind(**{**values, **changes})))


def regnet_without_sisrnet(data: Path, tmp: Path) -> tuple[list[str], str]:
    path = _pretraining_config(tmp, config_module.RegNetPretrainConfig, SISRNet_pretrain_dir=tmp / "nonexist")
    return ["pretrain-regnet", "--config", str(path)], f"(config SISRNet_pretrain_dir in {path})"


def pretrain_given_deepsum_config(data: Path, tmp: Path) -> tuple[list[str], str]:
    return (["pretrain-sisrnet", "--config", str(_config(tmp))],
            "config.json: a DeepSUM config (it has channels, T_in, R, ...); pretrain-sisrnet expects a "
            "SISRNet pretraining config like config_files/SISRNet_pretrain_config.json")


def train_given_pretraining_config(data: Path, tmp: Path) -> tuple[list[str], str]:
    path = _pretraining_config(tmp, config_module.SISRNetPretrainConfig)
    return (["train", "--config", str(path)], "pretraining.json: a SISRNet pretraining config (it has steps, "
            "patch_size, init_checkpoint, ...); train expects a DeepSUM config like config_files/DeepSUM_config_NIR.json")


def _hr_images(data: Path) -> dict:
    return {folder.name: probav.read_image_png(folder / "HR.png") for folder in probav.list_scenes(data, "train", BAND)}


def _score_with_one_bad_entry(data: Path, tmp: Path, bad_png) -> tuple[list[str], str]:
    """A zip of the HR images of the train scenes, the first one's entry replaced by
    `bad_png(image)`; returns (the score command, that scene's name)."""
    images = _hr_images(data)
    name = sorted(images)[0]
    path = tmp / "train.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for scene, image in images.items():
            content = bad_png(image) if scene == name else iio.imwrite("<bytes>", image, extension=".png")
            archive.writestr(f"{scene}.png", content)
    return ["score", "--data", str(data), "--band", BAND, "--submission", str(path)], name


def score_eight_bit(data: Path, tmp: Path) -> tuple[list[str], str]:
    argv, name = _score_with_one_bad_entry(
        data, tmp, lambda image: iio.imwrite("<bytes>", (image // 256).astype(np.uint8), extension=".png"))
    return argv, f"{name}: wrong dtype uint8, expected uint16"


def score_missing_scene(data: Path, tmp: Path) -> tuple[list[str], str]:
    images = _hr_images(data)
    name = sorted(images)[-1]
    del images[name]
    path = inference.write_submission(images, tmp / "train.zip")
    return (["score", "--data", str(data), "--band", BAND, "--submission", str(path)],
            f"{name}: missing ({name}.png not in the zip)")


def score_truncated_entry(data: Path, tmp: Path) -> tuple[list[str], str]:
    argv, name = _score_with_one_bad_entry(data, tmp, lambda image: png16(96, 96, rows_present=50))
    return argv, f"{name}: {name}.png is not a readable PNG"


CASES = [short_lr_data, huge_lr_header, short_hr_data, bad_crc, config_t_in, config_r, train_init_from_missing,
         train_require_pretrained, regnet_without_sisrnet, pretrain_given_deepsum_config, train_given_pretraining_config,
         score_eight_bit, score_missing_scene, score_truncated_entry]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_a_bad_input_is_one_named_error_and_leaves_nothing(case, clean_set, tmp_path, capsys):
    data = tmp_path / "probav"
    shutil.copytree(clean_set, data)
    argv, named = case(data, tmp_path)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    assert cli.main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and named in error[0], error
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before  # nothing written


def test_score_allow_missing_scores_the_scenes_present_and_says_how_many(clean_set, tmp_path, capsys):
    """The SR images differ from the HR (shifted by more than the border, noise): each scene's
    score is finite and depends on its baseline, so the mean printed and each CSV row are checked
    against the Kelvins score of the scenes present."""
    hr = _hr_images(clean_set)
    total, rng = len(hr), np.random.default_rng(4)
    images = {name: np.clip(np.roll(image.astype(np.float64), (1, -5), axis=(0, 1)) + 30 + rng.normal(0, 40, image.shape),
                            0, 65535).round().astype(np.uint16) for name, image in hr.items()}
    del images[sorted(images)[-1]]
    path = inference.write_submission(images, tmp_path / "train.zip")
    assert cli.main(["score", "--data", str(clean_set), "--band", BAND, "--submission", str(path),
                     "--csv", str(tmp_path / "scores.csv"), "--allow-missing"]) == 0
    captured = capsys.readouterr()
    assert f"scored {total - 1} of {total} scenes" in captured.err
    norm = probav.read_norm(clean_set / "norm.csv")
    folder = clean_set / "train" / BAND
    expected = {name: metrics.kelvins_score(image, hr[name], probav.read_mask_png(folder / name / "SM.png"), norm[name])
                for name, image in images.items()}
    assert all(0.5 < score < 5 for score in expected.values())  # finite, not the 0 of an exact match
    assert float(captured.out) == pytest.approx(float(np.mean(list(expected.values()))), abs=2e-6)
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert {row["scene"]: float(row["score"]) for row in rows} == pytest.approx(expected, rel=1e-6)
    assert {row["scene"]: float(row["baseline"]) for row in rows} == pytest.approx({n: norm[n] for n in images})