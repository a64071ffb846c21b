"""Shared fixtures: the reference data of the authors' code and the real PROBA-V frames.

Both live outside the repository (`../shared` in CI). Tests find them through
DEEPSUM_REFERENCE_DIR and DEEPSUM_SHARED_DATA and skip, saying why, when they are absent;
with `CI` set (as `.ci/run` does) an absent folder is a failure instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Parallel runs (pytest-xdist, one worker per core): each worker's TensorFlow, and the processes
# its tests start, get their share of the cores instead of a thread pool as large as the machine
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

# The project's TensorFlow settings (oneDNN on, which TensorFlow leaves off on AVX2 CPUs) are
# read when TensorFlow is first imported, and `libraries` sets them before: imported here,
# before any test module imports TensorFlow, every worker computes as the commands and the
# notebooks' kernels do (which import `libraries` first), whatever file it collects first.
import libraries  # noqa: E402,F401

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def _missing(reason: str) -> None:
    """Skip where the shared data are simply absent; fail in CI (`CI` set), where the parity
    tests against the authors' code must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the tests that need it must run", pytrace=False)
    pytest.skip(reason)


def _folder_from_env(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        _missing(f"{variable} is not set: {what} is not available (CI sets it from ../shared)")
    path = Path(value)
    if not path.is_dir():
        _missing(f"{variable}={value} is not a folder: {what} is not available")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`shared/reference`: outputs and checkpoints of the authors' TF1 code."""
    return _folder_from_env("DEEPSUM_REFERENCE_DIR", "the authors' reference data")


@pytest.fixture(scope="session")
def reference_case(reference_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of `deepsum_tf1_case_a/case.npz` (read without pickle)."""
    with np.load(reference_dir / "deepsum_tf1_case_a" / "case.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """`shared/data`: real PROBA-V LR frames of 8 scenes and the organisers' norm.csv."""
    return _folder_from_env("DEEPSUM_SHARED_DATA", "the real PROBA-V sample")


# The longest files (they train or start processes) first, then the others in file order: files go
# to the workers in this order (pyproject.toml turns off xdist's own reordering by test count), so
# no long file starts last and keeps one worker busy while the other waits. A run in one process
# (`-n 0`) keeps the order it was given (`bench/mutation_check.py` names the quickest file first).
LONGEST_FIRST = ("test_distributed.py", "test_inference.py", "test_loop.py", "test_bench.py", "test_pretraining.py",
                 "test_training.py", "test_demo.py", "test_inference_notebooks.py", "test_model_precision.py",
                 "test_model.py", "test_optimization.py", "test_training_notebook.py", "test_main.py",
                 "test_pretraining_notebook.py", "test_ensemble.py")  # measured: pytest --durations=0, per file


def pytest_collection_modifyitems(items: list) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the files' own order within each rank
