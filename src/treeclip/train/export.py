"""Export a training checkpoint to open_clip's hub layout."""

from __future__ import annotations

from pathlib import Path

from treeclip.model import create_model, export_model, model_config
from treeclip.train.checkpoint import resolve_checkpoint


def export_checkpoint(run_or_checkpoint: str | Path, *, out_dir: str | Path) -> tuple[Path, Path]:
    """(checkpoint used, folder written): the model of a checkpoint (or a run's newest) as a hub folder."""
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    model, _, _, _ = create_model(checkpoint)
    out = export_model(model, out_dir=out_dir, model_cfg=model_config(checkpoint),
                       preprocess_cfg=model.visual.preprocess_cfg)
    return checkpoint, out
