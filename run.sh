#!/usr/bin/env bash
# The repository's two entry points. Each creates .venv (once), installs requirements.txt
# into it (again only when that file changed), then:
#   bash run.sh demo   runs the demo: the whole pipeline on synthetic data (python -m libraries demo)
#   bash run.sh test   runs the test suite (python -m pytest tests)
# Extra arguments are passed on: `bash run.sh test -k metrics`, `bash run.sh demo --help`;
# `bash run.sh test tests/test_metrics.py` runs that file alone (tests/ only when no path is given).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.txt
    echo "$want" > "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
what="${1:-}"
shift || true
case "$what" in
    demo) exec .venv/bin/python -m libraries demo "$@" ;;
    test)
        targets=(tests)
        for arg in "$@"; do
            if [ -e "${arg%%::*}" ]; then targets=(); fi  # a file, folder or test id of its own
        done
        exec .venv/bin/python -m pytest ${targets[@]+"${targets[@]}"} "$@" ;;
    *) echo "usage: bash run.sh demo|test [args...]" >&2; exit 2 ;;
esac
