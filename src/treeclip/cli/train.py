"""``treeclip train``: train a CLIP model on shards with BioCLIP's recipe (works under torchrun)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "train a CLIP model on shards from treeclip build (one CPU, or many GPUs under torchrun)"
EXIT_DIVERGED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a shipped preset: bioclip-vit-b-16, finetune or tiny")
    source.add_argument("--config", type=Path, help="a YAML file stating changes from the defaults")
    parser.add_argument("--data", type=Path, required=True, help="shard folder from treeclip build (train/, val/)")
    parser.add_argument("--out", type=Path, required=True, help="run folder: config.yaml, metrics.jsonl, checkpoints/")
    parser.add_argument("--resume", metavar="latest|CHECKPOINT",
                        help="continue from the newest checkpoint in --out ('latest') or from a checkpoint file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.lr=3e-4 train.batch_size=256 data.text_type=com")


def run(args: argparse.Namespace) -> int:
    from treeclip.train.config import load_config  # noqa: PLC0415 - keep --help free of heavy imports

    config = load_config(preset=args.preset, path=_config_path(args), overrides=args.overrides)  # before torch
    from treeclip.train.loop import TrainingDiverged, train  # noqa: PLC0415

    bar = _ProgressBar() if _is_main_process() and not args.no_progress else None
    try:
        result = train(config, data_dir=args.data, out_dir=args.out, resume=args.resume,
                       on_step=bar.update if bar else None)
    except TrainingDiverged as error:
        sys.stderr.write(f"treeclip train: {error}\n")
        return EXIT_DIVERGED
    finally:
        if bar:
            bar.close()
    if _is_main_process():
        print(f"trained {result.steps} steps; last checkpoint: {result.last_checkpoint}")
    return 0


def _config_path(args: argparse.Namespace) -> Path | None:
    """The YAML to read: --config, or the run folder's config.yaml when resuming without a preset."""
    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.train.config import CONFIG_FILE  # noqa: PLC0415

    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    if args.resume and args.resume != "latest" and not Path(args.resume).is_file():
        raise UsageError(f"--resume {args.resume}: expected 'latest' or a checkpoint file")
    stored = args.out / CONFIG_FILE
    path = args.config or (stored if args.resume and not args.preset and stored.is_file() else None)
    if not args.preset and path is None:
        raise UsageError("give --preset NAME or --config FILE (or --resume latest in a run folder)")
    return path


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


class _ProgressBar:
    """tqdm over optimizer steps with loss, lr, samples/s per device and MFU when known (tqdm shows the ETA)."""

    def __init__(self) -> None:
        self._bar = None

    def update(self, metrics: dict) -> None:
        from tqdm import tqdm  # noqa: PLC0415

        if self._bar is None:
            self._bar = tqdm(total=metrics["total_steps"], initial=metrics["step"] - 1, unit="step", dynamic_ncols=True)
        figures = {"loss": f"{metrics['loss']:.4f}", "lr": f"{metrics['lr']:.2e}",
                   "samples_s_per_dev": f"{metrics['samples_per_s_per_device']:.1f}"}
        if "mfu" in metrics:
            figures["mfu"] = f"{metrics['mfu']:.1%}"
        self._bar.set_postfix(figures, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
