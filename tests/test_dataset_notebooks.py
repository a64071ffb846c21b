"""The four dataset_creation notebooks run top to bottom, in order, on one tiny synthetic set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from libraries import dataset, synthetic
from notebooks import notebook_code_cells_are_short, run_notebook

FOLDER = Path(__file__).resolve().parent.parent / "dataset_creation"
ORDER = ("Save_dataset_pickles", "Create_dataset", "Save_best9_from_dataset", "Create_testset")


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    synthetic.write_dataset(root / "probav", seed=2, n_scenes=6, n_test_scenes=2, lr_size=32, progress=False)
    parameters = {"data_dir": str(root / "probav"), "out_dir": str(root / "dataset"), "bands": ["NIR"],
                  "seed": 3, "n_chunks": 2, "patches_per_scene": 3, "patch_size": 48, "processes": 1}
    executed = {name: run_notebook(FOLDER / f"{name}.ipynb", parameters, timeout=300) for name in ORDER}
    return root / "dataset", executed


def test_notebooks_run_in_order_and_write_the_dataset(notebook_run):
    out, executed = notebook_run
    chunk = dataset.load_training_chunk(out, "NIR", 1)
    assert chunk["frames"].shape[1:] == (9, 48, 48) and len(chunk["scene"]) > 0
    test = dataset.load_scenes(out, "NIR", "test")
    assert np.all(np.diff(test["offsets"]) >= 9)
    for name, notebook in executed.items():
        outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
        figures = [o for o in outputs if "image/png" in o.get("data", {})]
        tables = [o for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"]
        assert figures or tables, f"{name}: no plot or table"


@pytest.mark.parametrize("name", ORDER)
def test_notebook_cells_are_short_and_tagged(name):
    path = FOLDER / f"{name}.ipynb"
    assert notebook_code_cells_are_short(path, 15) == []
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", [])
    assert "../probav_data" in first_code.source and "dataset_light_best9" in first_code.source
