#!/usr/bin/env bash
# Set up .venv with treeclip and its test extras, then run the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k taxonomy`, `--run-network`).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
stage() { echo "[setup] $* ($((SECONDS - start)) s)"; }
stage "virtualenv .venv"
python3 -m venv .venv
stage "upgrading pip"
.venv/bin/python -m pip install --quiet --upgrade pip
stage "installing treeclip with its test extras (PyTorch alone is large: minutes on a first install)"
.venv/bin/python -m pip install --quiet -e '.[test]'
stage "installed; running pytest"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$status"
