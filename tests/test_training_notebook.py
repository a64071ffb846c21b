"""`DeepSUM_train.ipynb` runs top to bottom on the tiny prepared synthetic data set."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from notebooks import notebook_code_cells_are_short, run_notebook
from helpers import prepare_tiny_dataset, tiny_config, write_config

NOTEBOOK = Path(__file__).resolve().parent.parent / "DeepSUM_train.ipynb"


def test_training_notebook_cells_are_short():
    assert notebook_code_cells_are_short(NOTEBOOK, 15) == []


def test_training_notebook_trains_validates_and_plots(tmp_path):
    data_path = prepare_tiny_dataset(tmp_path)
    config_file = write_config(tiny_config(tmp_path, data_path), tmp_path / "tiny.json")
    checkpoints = tmp_path / "run"
    notebook = run_notebook(NOTEBOOK, {"config_path": str(config_file), "dataset_path": str(data_path),
                                       "checkpoint_dir": str(checkpoints), "steps": 4, "changes": {"skip_step": 2}},
                            timeout=300)
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-4")
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no loss plot"
    texts = "".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", "")) for output in outputs)
    assert "regnet_accuracy" in texts and "step 4: validation loss" in texts
