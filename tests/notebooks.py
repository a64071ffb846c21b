"""Run a notebook top to bottom in a test, with its parameters overridden (as papermill does).

A notebook's parameters live in the code cell tagged `parameters`; `run_notebook` inserts a
cell after it that assigns the given values, executes every cell in a fresh kernel with the
notebook's folder as working directory, and returns the executed notebook. A failing cell
raises `nbclient.exceptions.CellExecutionError` with the cell's traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient


def run_notebook(path: str | os.PathLike, parameters: dict[str, Any] | None = None, timeout: int = 600) -> nbformat.NotebookNode:
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if parameters:
        if not tagged:
            raise ValueError(f"{path}: no code cell tagged 'parameters' to override")
        source = "# injected by tests\n" + "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
        notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source))
    env_python = str(Path(sys.executable).parent)
    os.environ["PATH"] = env_python + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return notebook


def notebook_code_cells_are_short(path: str | os.PathLike, max_lines: int = 15) -> list[str]:
    """Names of code cells longer than `max_lines` (logic belongs in `libraries`)."""
    notebook = nbformat.read(Path(path), as_version=4)
    return [f"cell {i}: {len(cell.source.splitlines())} lines" for i, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and len(cell.source.splitlines()) > max_lines]
