#!/usr/bin/env bash
# Set up .venv with treeclip, then run the main job on the embedded default (the miniature tree of life).
# Extra arguments go to the command (e.g. `bash scripts/demo.sh --species 1000`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
.venv/bin/treeclip synth treeclip-demo/world --overwrite "$@"
