"""Export a training checkpoint to open_clip's hub layout, and record the shards' image geometry in the model's
preprocessing so the exported model is run on the pixels it was trained on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from open_clip.model import set_model_preprocess_cfg

from treeclip.model import create_model, export_model, model_config
from treeclip.model.preprocess import open_clip_resize_mode
from treeclip.train.checkpoint import resolve_checkpoint

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def export_checkpoint(run_or_checkpoint: str | Path, *, out_dir: str | Path) -> tuple[Path, Path]:
    """(checkpoint used, folder written): the model of a checkpoint (or a run's newest) as a hub folder; its
    ``preprocess_cfg`` (with the ``resize_mode`` recorded at training) is the checkpoint's."""
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    model, _, _, _ = create_model(checkpoint)
    out = export_model(model, out_dir=out_dir, model_cfg=model_config(checkpoint),
                       preprocess_cfg=model.visual.preprocess_cfg)
    return checkpoint, out


def shard_resize_mode(data_dir: str | Path) -> str | None:
    """open_clip's ``resize_mode`` for the shards under `data_dir` (from ``manifest.json``'s build
    parameters), or None when the shards have no treeclip manifest (e.g. the released TreeOfLife-10M)."""
    path = Path(data_dir) / MANIFEST
    try:
        build_resize = json.loads(path.read_text(encoding="utf-8"))["parameters"]["resize"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return open_clip_resize_mode(build_resize)


def record_shard_geometry(model: torch.nn.Module, data_dir: str | Path) -> str | None:
    """Set the model's ``preprocess_cfg["resize_mode"]`` to the geometry its training shards were built with,
    so checkpoints and exports carry it (`treeclip.model.preprocess`); returns the mode, None if unknown."""
    mode = shard_resize_mode(data_dir)
    if mode is None:
        log.info("no treeclip manifest in %s: keeping the model's resize_mode %s", data_dir,
                 model.visual.preprocess_cfg.get("resize_mode", "shortest"))
        return None
    set_model_preprocess_cfg(model, {**model.visual.preprocess_cfg, "resize_mode": mode})
    return mode
