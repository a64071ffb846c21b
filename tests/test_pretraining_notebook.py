"""`DeepSUM_pretraining.ipynb` runs top to bottom on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

from notebooks import notebook_code_cells_are_short, run_notebook

NOTEBOOK = Path(__file__).resolve().parent.parent / "DeepSUM_pretraining.ipynb"


def test_pretraining_notebook_runs_on_tiny_data(tmp_path):
    notebook = run_notebook(NOTEBOOK, {"work_dir": str(tmp_path), "synthetic_scenes": 6, "lr_size": 32,
                                       "patch_size": 32, "n_features": 8, "sisrnet_steps": 4, "regnet_steps": 4},
                            timeout=300)
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 3  # the three figures
    assert str(outputs[-1]["data"]["text/plain"]) == "{'sisrnet': 'tf2', 'regnet': 'tf2'}"  # our TF2 checkpoints loaded
    assert (tmp_path / "SISRNet" / "checkpoint").is_file() and (tmp_path / "RegNet" / "checkpoint").is_file()


def test_pretraining_notebook_cells_only_call_the_library():
    assert notebook_code_cells_are_short(NOTEBOOK, 15) == []
