"""Reading PROBA-V folders: bit-exact round trips, the real sample, and one error per bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from libraries import domain, probav

LR_SIZE = 16


def _random_scene(rng: np.random.Generator, frames: int = 4, size: int = LR_SIZE) -> dict[str, np.ndarray]:
    hr_size = 3 * size
    return {
        "lr": (rng.integers(0, 4096, (frames, size, size)) * 16).astype(np.uint16),
        "clear": rng.random((frames, size, size)) > 0.3,
        "hr": rng.integers(0, 65536, (hr_size, hr_size)).astype(np.uint16),
        "hr_clear": rng.random((hr_size, hr_size)) > 0.1,
    }


@pytest.fixture()
def scene_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = _random_scene(np.random.default_rng(0))
    folder = probav.write_scene(tmp_path / "train" / "NIR" / "imgset0007", **arrays)
    return folder, arrays


def test_write_read_round_trip_is_bit_exact(scene_folder):
    folder, arrays = scene_folder
    scene = probav.read_scene(folder)
    assert (scene.name, scene.band, scene.split) == ("imgset0007", "NIR", "train")
    assert scene.frame_names == ("LR000", "LR001", "LR002", "LR003")
    assert scene.lr.dtype == np.uint16 and scene.clear.dtype == bool
    np.testing.assert_array_equal(scene.lr, arrays["lr"])
    np.testing.assert_array_equal(scene.clear, arrays["clear"])
    np.testing.assert_array_equal(scene.hr, arrays["hr"])
    np.testing.assert_array_equal(scene.hr_clear, arrays["hr_clear"])


def test_frames_follow_lr_number_order_and_masks_in_0_1_are_accepted(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "test" / "RED" / "imgset0100"
    folder.mkdir(parents=True)
    frames = {number: (rng.integers(0, 1000, (8, 8)) * 16).astype(np.uint16) for number in (10, 2, 7)}
    for number, frame in frames.items():
        probav.write_png(folder / f"LR{number:03d}.png", frame)
        Image.fromarray(np.uint8(frame > 4000)).save(folder / f"QM{number:03d}.png")  # values 0/1
    scene = probav.read_scene(folder)
    assert scene.frame_names == ("LR002", "LR007", "LR010") and scene.hr is None
    np.testing.assert_array_equal(scene.lr, np.stack([frames[2], frames[7], frames[10]]))
    np.testing.assert_array_equal(scene.clear, scene.lr > 4000)


def test_read_split_lists_sorted_scenes(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("imgset0003", "imgset0001", "imgset0002"):
        probav.write_scene(tmp_path / "train" / "RED" / name, **_random_scene(rng, frames=2, size=8))
    scenes = probav.read_split(tmp_path, "train", "RED", progress=False)
    assert [scene.name for scene in scenes] == ["imgset0001", "imgset0002", "imgset0003"]
    assert all(scene.band == "RED" and scene.hr.shape == (24, 24) for scene in scenes)


def test_real_frames_read_bit_exact(shared_data_dir):
    root = shared_data_dir / "probav_real" / "lr_only"
    corrupt = []
    for band in domain.BANDS:
        for scene in probav.read_split(root, "train", band, progress=False, masks="assume_clear"):
            assert scene.lr.shape[1:] == (128, 128) and scene.clear.all() and scene.hr is None
            for name, frame in zip(scene.frame_names, scene.lr):
                independent = np.array(Image.open(scene.path / f"{name}.png"))
                assert independent.dtype == np.uint16
                np.testing.assert_array_equal(frame, independent)
                if (frame == 65520).any():
                    corrupt.append(f"{band}/{scene.name}/{name}")
    assert corrupt == [
        "NIR/imgset0594/LR001",
        "NIR/imgset0594/LR002",
        "NIR/imgset0594/LR017",
        "NIR/imgset0596/LR018",
    ]


def test_real_sample_needs_assume_clear(shared_data_dir):
    folder = shared_data_dir / "probav_real" / "lr_only" / "train" / "NIR" / "imgset0595"
    with pytest.raises(probav.ProbaVError, match=r"QM000\.png: file missing"):
        probav.read_scene(folder)


def test_real_norm_csv(shared_data_dir):
    path = shared_data_dir / "probav_real" / "norm.csv"
    assert path.read_bytes().count(b"\n") == 1449  # no newline after the last row
    baselines = probav.read_norm(path)
    assert len(baselines) == 1450
    assert list(baselines)[0] == "imgset0000" and list(baselines)[-1] == "imgset1449"
    assert baselines["imgset0000"] == pytest.approx(52.352172662454414, abs=0)
    assert 31.44 < min(baselines.values()) < 31.45 and 59.72 < max(baselines.values()) < 59.73


def test_norm_round_trip(tmp_path):
    values = {"imgset0001": 41.123456789012345, "imgset0000": 55.5}
    assert probav.read_norm(probav.write_norm(tmp_path / "norm.csv", values)) == values


# --------------------------------------------------------------------------- errors


def test_missing_qm(scene_folder):
    folder, _ = scene_folder
    (folder / "QM002.png").unlink()
    with pytest.raises(probav.ProbaVError, match=r"QM002\.png: file missing.*LR002"):
        probav.read_scene(folder)


def test_two_files_of_one_frame_number(scene_folder):
    """LR1.png beside LR001.png (a copy renamed by hand): which one is frame 1 is not for the
    reader to guess."""
    folder, _ = scene_folder
    (folder / "LR1.png").write_bytes((folder / "LR001.png").read_bytes())
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_scene(folder)
    assert str(error.value) == f"{folder / 'LR1.png'}: duplicate frame number 1 (also LR001.png)"


def test_truncated_png(scene_folder):
    folder, _ = scene_folder
    path = folder / "LR001.png"
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(probav.ProbaVError, match=r"LR001\.png: not a readable PNG"):
        probav.read_scene(folder)


def test_garbage_png(scene_folder):
    folder, _ = scene_folder
    (folder / "SM.png").write_bytes(b"not a png at all")
    with pytest.raises(probav.ProbaVError, match=r"SM\.png: not a readable PNG"):
        probav.read_scene(folder)


def test_8bit_lr(scene_folder):
    folder, arrays = scene_folder
    Image.fromarray((arrays["lr"][3] >> 8).astype(np.uint8)).save(folder / "LR003.png")
    with pytest.raises(probav.ProbaVError, match=r"LR003\.png: 8-bit PNG.*expected a 16-bit"):
        probav.read_scene(folder)


def test_wrong_hr_size(scene_folder):
    folder, _ = scene_folder
    probav.write_png(folder / "HR.png", np.zeros((3 * LR_SIZE, 3 * LR_SIZE - 3), np.uint16))
    with pytest.raises(probav.ProbaVError, match=r"HR\.png: size \(48, 45\); expected \(48, 48\)"):
        probav.read_scene(folder)


def test_missing_hr_of_train_scene(scene_folder):
    folder, _ = scene_folder
    (folder / "HR.png").unlink()
    with pytest.raises(probav.ProbaVError, match=r"HR\.png: file missing"):
        probav.read_scene(folder)


def test_mask_size_and_values(scene_folder):
    folder, _ = scene_folder
    probav.write_png(folder / "QM001.png", np.ones((LR_SIZE, LR_SIZE + 1), bool))
    with pytest.raises(probav.ProbaVError, match=r"QM001\.png: size"):
        probav.read_scene(folder)
    Image.fromarray(np.full((LR_SIZE, LR_SIZE), 7, np.uint8)).save(folder / "QM001.png")
    with pytest.raises(probav.ProbaVError, match=r"QM001\.png: mask values \[7\]"):
        probav.read_scene(folder)


def test_lr_frames_of_different_sizes(scene_folder):
    folder, _ = scene_folder
    probav.write_png(folder / "LR002.png", np.zeros((LR_SIZE + 1, LR_SIZE), np.uint16))
    with pytest.raises(probav.ProbaVError, match=r"LR002\.png: size \(17, 16\); expected \(16, 16\)"):
        probav.read_scene(folder)


def test_empty_folder(tmp_path):
    folder = tmp_path / "test" / "NIR" / "imgset0001"
    folder.mkdir(parents=True)
    with pytest.raises(probav.ProbaVError, match="imgset0001: empty scene folder"):
        probav.read_scene(folder)


def test_band_not_inferable(tmp_path):
    probav.write_scene(tmp_path / "imgset0001", np.zeros((1, 4, 4), np.uint16), np.ones((1, 4, 4), bool))
    with pytest.raises(probav.ProbaVError, match="band"):
        probav.read_scene(tmp_path / "imgset0001")
    scene = probav.read_scene(tmp_path / "imgset0001", band="RED", split="test")
    assert (scene.band, scene.split) == ("RED", "test")


def test_missing_or_empty_split_folder(tmp_path):
    with pytest.raises(probav.ProbaVError, match=r"train/NIR: folder missing"):
        probav.list_scenes(tmp_path, "train", "NIR")
    (tmp_path / "train" / "NIR").mkdir(parents=True)
    with pytest.raises(probav.ProbaVError, match=r"train/NIR: no imgset\* scene folders"):
        probav.list_scenes(tmp_path, "train", "NIR")


@pytest.mark.parametrize(
    "line", ["imgset0002 abc", "imgset0002", "imgset0002 45.1 7", "imgset0002 nan", "imgset0002 0",
             "imgset0002 -41.5", "imgset0002 1e39", "imgset0002 200", "imgset0000 40.0"]
)
def test_norm_malformed_line(tmp_path, line):
    path = tmp_path / "norm.csv"
    path.write_text(f"imgset0000 50.5\nimgset0001 40.25\n{line}\n")
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_norm(path)
    expected = ("scene imgset0000 listed twice" if line.startswith("imgset0000") else
                f"{line!r}; expected 'imgsetNNNN <cPSNR>', a cPSNR in dB above 0 and below 200.0")
    assert str(error.value) == f"{path}, line 3: {expected}"


def test_norm_of_the_highest_possible_baseline_is_read(tmp_path):
    """148.0 dB: one grey level of difference in one pixel of a 384x384 16-bit image (NumPy)."""
    hr = np.zeros((384, 384))
    highest = -10 * np.log10(np.mean((hr - np.pad([[1.0]], (0, 383))) ** 2 / 65535.0 ** 2))
    assert 147 < highest < probav.MAX_BASELINE
    (tmp_path / "norm.csv").write_text(f"imgset0000 {float(highest)!r}\n")
    assert probav.read_norm(tmp_path / "norm.csv") == {"imgset0000": float(highest)}


def test_norm_that_is_not_utf8_text_is_one_error_naming_it(tmp_path):
    (tmp_path / "norm.csv").write_bytes("imgset0000 40.0 \u00e9\n".encode("latin-1"))
    with pytest.raises(probav.ProbaVError, match=r"norm.csv: not UTF-8 text \(invalid continuation byte at byte 16\)"):
        probav.read_norm(tmp_path / "norm.csv")


def test_norm_that_is_missing_or_a_folder_is_one_error_saying_which(tmp_path):
    with pytest.raises(probav.ProbaVError, match=r"norm.csv: file missing \(expected norm.csv with lines"):
        probav.read_norm(tmp_path / "norm.csv")
    (tmp_path / "norm.csv").mkdir()
    with pytest.raises(probav.ProbaVError, match=r"norm.csv: a folder \(expected norm.csv with lines"):
        probav.read_norm(tmp_path / "norm.csv")


# --------------------------------------------------------------------------- guards, one bad input each


def _chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with a valid CRC (built byte by byte, as tests/test_bad_inputs.py does)."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bytes(*chunks: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _ihdr(height: int = 4, width: int = 4) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))  # 16-bit greyscale


def _idat(height: int = 4, width: int = 4) -> bytes:
    return _chunk(b"IDAT", zlib.compress(b"".join(b"\0" + np.full(width, 1000, ">u2").tobytes() for _ in range(height))))


def test_hand_built_png_reads_back():
    """The builder below is sound: IHDR + IDAT + IEND is a readable 4x4 PNG of 1000s."""
    content = _png_bytes(_ihdr(), _idat(), _chunk(b"IEND", b""))
    np.testing.assert_array_equal(probav.decode_png(content, "x.png", "a PNG"), np.full((4, 4), 1000, np.uint16))


@pytest.mark.parametrize("chunks, problem", [
    ((_ihdr(), _idat()), "truncated: no IEND chunk"),
    ((_idat(), _chunk(b"IEND", b"")), "no IHDR chunk"),
], ids=["no IEND", "no IHDR"])
def test_png_without_a_required_chunk(tmp_path, chunks, problem):
    path = tmp_path / "LR000.png"
    path.write_bytes(_png_bytes(*chunks))
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_image_png(path)
    assert str(error.value) == f"{path}: not a readable PNG ({problem})"


def test_png_whose_image_data_are_not_zlib(tmp_path):
    path = tmp_path / "LR000.png"
    garbage = b"these bytes are not a zlib stream"
    path.write_bytes(_png_bytes(_ihdr(), _chunk(b"IDAT", garbage), _chunk(b"IEND", b"")))
    with pytest.raises(zlib.error) as zlib_error:  # zlib's own words for these bytes
        zlib.decompress(garbage)
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_image_png(path)
    assert str(error.value) == (f"{path}: not a readable PNG (image data: {zlib_error.value}); "
                                "expected a 16-bit greyscale PNG")
    assert "incorrect header check" in str(error.value)


@pytest.mark.parametrize("name, expected", [
    ("LR001.png", "a 16-bit greyscale PNG"),
    ("QM001.png", "a greyscale mask PNG with values 0/1 or 0/255"),
])
def test_colour_png_as_frame_or_mask(scene_folder, name, expected):
    folder, _ = scene_folder
    Image.fromarray(np.full((LR_SIZE, LR_SIZE, 3), 255, np.uint8)).save(folder / name)
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_scene(folder)
    assert str(error.value) == f"{folder / name}: image of shape ({LR_SIZE}, {LR_SIZE}, 3); expected {expected}"


def test_qm_mask_without_its_lr_frame(tmp_path):
    """LR000, LR002 and QM000..QM002: read as they are, 2 frames would get 3 masks and LR002 the
    mask of QM001."""
    folder = tmp_path / "test" / "NIR" / "imgset0001"
    folder.mkdir(parents=True)
    for number in (0, 2):
        probav.write_png(folder / f"LR{number:03d}.png", np.full((8, 8), 1000 * (number + 1), np.uint16))
    for number in (0, 1, 2):
        probav.write_png(folder / f"QM{number:03d}.png", np.eye(8, dtype=bool) if number == 1 else np.ones((8, 8), bool))
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_scene(folder)
    assert str(error.value) == f"{folder / 'QM001.png'}: mask without its LR frame LR001.png"


def test_scene_folder_without_lr_frames(tmp_path):
    """HR.png and SM.png only: not empty, but no frame to super-resolve."""
    folder = tmp_path / "train" / "NIR" / "imgset0001"
    folder.mkdir(parents=True)
    probav.write_png(folder / "HR.png", np.zeros((24, 24), np.uint16))
    probav.write_png(folder / "SM.png", np.ones((24, 24), bool))
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_scene(folder)
    assert str(error.value) == f"{folder}: no LR frames (expected files LR000.png, LR001.png, ...)"


def _test_scene(tmp_path: Path, hr: bool, sm: bool) -> Path:
    """A test-split scene (HR/SM optional there) of 2 frames of 8x8, with HR.png and/or SM.png."""
    lr = np.full((2, 8, 8), 1600, np.uint16)
    return probav.write_scene(tmp_path / "test" / "RED" / "imgset0002", lr, np.ones(lr.shape, bool),
                              np.full((24, 24), 1600, np.uint16) if hr else None,
                              np.ones((24, 24), bool) if sm else None)


def test_hr_without_sm_is_refused_when_masks_are_required(tmp_path):
    folder = _test_scene(tmp_path, hr=True, sm=False)
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_scene(folder)
    assert str(error.value) == f"{folder / 'SM.png'}: file missing (expected the clear mask of HR.png)"
    scene = probav.read_scene(folder, masks="assume_clear")  # the documented way to read it
    assert scene.hr_clear.shape == (24, 24) and scene.hr_clear.all()


def test_sm_without_hr_is_refused(tmp_path):
    folder = _test_scene(tmp_path, hr=False, sm=True)
    for masks in probav.MASK_MODES:
        with pytest.raises(probav.ProbaVError) as error:
            probav.read_scene(folder, masks=masks)
        assert str(error.value) == f"{folder / 'HR.png'}: file missing (SM.png is present, so HR.png is expected)"


@pytest.mark.parametrize("text", ["", "\n  \n\n"], ids=["empty", "blank lines"])
def test_norm_without_rows(tmp_path, text):
    path = tmp_path / "norm.csv"
    path.write_text(text)
    with pytest.raises(probav.ProbaVError) as error:
        probav.read_norm(path)
    assert str(error.value) == f"{path}: no rows (expected lines 'imgsetNNNN <cPSNR>')"


@pytest.mark.parametrize("image, expected", [
    (np.zeros((2, 4, 4), np.uint16), "expected a 2-D image, got shape (2, 4, 4)"),
    (np.zeros((4, 4), np.float32), "expected uint16 or uint8 image or bool mask, got dtype float32"),
    (np.zeros((4, 4), np.int32), "expected uint16 or uint8 image or bool mask, got dtype int32"),
], ids=["3-D", "float32", "int32"])
def test_write_png_refuses_what_it_cannot_write_exactly(tmp_path, image, expected):
    path = tmp_path / "LR000.png"
    with pytest.raises(ValueError) as error:
        probav.write_png(path, image)
    assert str(error.value) == f"{path}: {expected}"
    assert list(tmp_path.iterdir()) == []
