#!/usr/bin/env bash
# Set up .venv with treeclip, then run the main job on the embedded default: `treeclip demo` generates a
# miniature tree of life, builds shards, trains mixed-text and baseline models, evaluates and writes a report.
# Extra arguments go to the command (e.g. `bash scripts/demo.sh --quick`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
.venv/bin/treeclip demo --out treeclip-demo "$@"
