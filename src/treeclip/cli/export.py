"""``treeclip export``: a training run or checkpoint → open_clip's hub layout (loadable by plain open_clip)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a training run or checkpoint as an open_clip model folder (open_clip_config.json + safetensors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT", type=Path,
                        help="a run folder (its newest checkpoint is used) or a checkpoint file")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")


def run(args: argparse.Namespace) -> int:
    from treeclip.train.export import export_checkpoint  # noqa: PLC0415 - keep --help free of torch

    checkpoint, out = export_checkpoint(args.source, out_dir=args.out)
    print(f"exported {checkpoint} to {out} (load with open_clip.create_model_from_pretrained('local-dir:{out}'))")
    return 0
