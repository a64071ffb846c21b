"""Rules of the test suite itself: the parity tests against the authors' code cannot be skipped in CI."""

import os
import subprocess
import sys

from helpers import REPOSITORY_ROOT

PARITY_TEST = "tests/test_weights.py::test_pretraining_digests_match_reference_files"


def _run(ci: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "DEEPSUM_REFERENCE_DIR")}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", PARITY_TEST, "-q", "-rs", "-p", "no:cacheprovider"],
                          cwd=REPOSITORY_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_without_the_reference_data_a_parity_test_skips_outside_ci_and_fails_in_ci():
    outside = _run(ci=False)
    assert outside.returncode == 0 and "1 skipped" in outside.stdout, outside.stdout[-2000:]
    assert "DEEPSUM_REFERENCE_DIR is not set" in outside.stdout
    inside = _run(ci=True)
    assert inside.returncode == 1 and "1 error" in inside.stdout, inside.stdout[-2000:]
    assert "CI is set, so the tests that need it must run" in inside.stdout
