#!/usr/bin/env bash
# Set up a virtualenv with treeclip, then run the main job on the embedded default: `treeclip demo` generates a
# miniature tree of life, builds shards, trains mixed-text and baseline models, evaluates and writes a report.
#
#   bash scripts/demo.sh [--venv DIR] [DEMO ARGS...]
#
# --venv DIR: the virtualenv to create or reuse (default .venv). Every other argument goes to `treeclip demo`
# (e.g. `--quick`, `--out DIR`; default --out treeclip-demo). Relative paths are taken from the repository
# root, where the script runs. Without a GPU,
# TREECLIP_TORCH_INDEX=https://download.pytorch.org/whl/cpu installs PyTorch's CPU-only build first (~200 MB
# instead of several GB of CUDA wheels). Setup prints one line per stage; re-running reuses the virtualenv
# and the demo's finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ "${1:-}" = "--venv" ]; then
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "scripts/demo.sh: --venv needs a folder (usage: bash scripts/demo.sh [--venv DIR] [DEMO ARGS...])" >&2
        exit 2
    fi
    venv=$2
    shift 2
fi
start=$SECONDS
stage() { echo "[setup] $* ($((SECONDS - start)) s)"; }
stage "virtualenv $venv"
python3 -m venv "$venv"
stage "upgrading pip"
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${TREECLIP_TORCH_INDEX:-}" ]; then
    stage "installing PyTorch from $TREECLIP_TORCH_INDEX"
    "$venv/bin/python" -m pip install --quiet torch torchvision --index-url "$TREECLIP_TORCH_INDEX"
fi
stage "installing treeclip and its dependencies (PyTorch alone is large: minutes on a first install)"
"$venv/bin/python" -m pip install --quiet -e .
stage "installed; running treeclip demo"
exec "$venv/bin/treeclip" demo --out treeclip-demo "$@"
