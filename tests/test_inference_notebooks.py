"""The two evaluation notebooks run top to bottom on a tiny synthetic set (LR 32x32, 8 features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from libraries import config, dataset, inference, probav, synthetic
from notebooks import notebook_code_cells_are_short, run_notebook

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("Sliding_window_evaluation.ipynb", "DeepSUM_superresolve_testdata.ipynb")
# The notebooks' kernels and this process each make their own `auto` choices; the element-wise
# fusion and the frame strips are measured, and where the two ways are close two processes can
# choose differently and round a few pixels 1 DN apart. Fixed here, so that the images
# compared are computed the same way.
TINY = {"n_features": 8, "xla_elementwise": False, "frame_strips": 1}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(out, seed=11, n_scenes=4, n_test_scenes=2, lr_size=32, progress=False)
    return out


def outputs(notebook) -> str:
    return "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_cells_are_short_and_tagged(name):
    assert notebook_code_cells_are_short(REPOSITORY_ROOT / name, 15) == []


def test_sliding_window_notebook_runs(synthetic_dir, tmp_path):
    prepared = tmp_path / "prepared"
    dataset.prepare(synthetic_dir, prepared, bands=["NIR"], n_chunks=1, patches_per_scene=1, patch_size=48,
                    processes=1, progress=False)
    notebook = run_notebook(REPOSITORY_ROOT / NOTEBOOKS[0], {"dataset_path": str(prepared), "n_slides": [0, 1],
                                                            "config_changes": TINY}, timeout=300)
    text = outputs(notebook)
    assert "freshly initialised" in text and "bicubic" in text
    assert [line.split()[:3] for line in text.splitlines() if line.startswith("DeepSUM")] == [
        ["DeepSUM", "0", "no"], ["DeepSUM", "0", "yes"], ["DeepSUM", "1", "no"], ["DeepSUM", "1", "yes"]]  # SELF_ENSEMBLE


def test_superresolve_notebook_writes_a_valid_zip(synthetic_dir, tmp_path):
    out_zip = tmp_path / "submission.zip"
    notebook = run_notebook(REPOSITORY_ROOT / NOTEBOOKS[1], {"data_dir": str(synthetic_dir), "out_zip": str(out_zip),
                                                            "config_changes": TINY, "SELF_ENSEMBLE": True}, timeout=300)
    assert "4 scenes, valid" in outputs(notebook)
    assert len(inference.validate_submission(out_zip, synthetic_dir / "test")) == 4
    cfg = config.load_config(REPOSITORY_ROOT / "config_files" / "DeepSUM_config_NIR.json").replace(**TINY)
    folder = probav.list_scenes(synthetic_dir, "test", "NIR")[-1]  # same seed, same fresh weights as the notebook's
    expected = inference.Superresolver(inference.load_model(cfg), cfg).scene(
        dataset.prepare_test_scene(probav.read_scene(folder)), self_ensemble=True)
    np.testing.assert_array_equal(inference.read_submission(out_zip)[folder.name],
                                  np.clip(np.rint(expected), 0, 65535).astype(np.uint16))
    assert any("image/png" in output.get("data", {}) for output in notebook.cells[-1].outputs)  # the figure
