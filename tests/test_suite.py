"""Rules of the test suite itself: the tests on the shared data (the authors' reference numbers,
the real PROBA-V sample) cannot be skipped in CI; `run.sh test` runs what it is given."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPOSITORY_ROOT

# a test on the shared real PROBA-V sample, in a module that does not import TensorFlow (quick)
SHARED_DATA_TEST = "tests/test_probav.py::test_real_sample_needs_assume_clear"


def _run(ci: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "DEEPSUM_SHARED_DATA")}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", SHARED_DATA_TEST, "-q", "-rs", "-p", "no:cacheprovider",
                           "-n", "0"],
                          cwd=REPOSITORY_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_without_the_shared_data_its_tests_skip_outside_ci_and_fail_in_ci():
    outside = _run(ci=False)
    assert outside.returncode == 0 and "1 skipped" in outside.stdout, outside.stdout[-2000:]
    assert "DEEPSUM_SHARED_DATA is not set" in outside.stdout
    inside = _run(ci=True)
    assert inside.returncode == 1 and "1 error" in inside.stdout, inside.stdout[-2000:]
    assert "CI is set, so the tests that need it must run" in inside.stdout


def test_run_sh_test_runs_only_the_tests_it_is_given():
    if Path(sys.prefix).resolve() != (REPOSITORY_ROOT / ".venv").resolve():
        pytest.skip("the tests do not run in run.sh's environment (.venv), which this test would have to build")
    quiet = ["--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0"]
    one = subprocess.run(["bash", "run.sh", "test", SHARED_DATA_TEST, *quiet], cwd=REPOSITORY_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and one.stdout.splitlines()[0] == SHARED_DATA_TEST, one.stdout[-2000:]
    assert "1 test collected" in one.stdout, one.stdout[-2000:]
