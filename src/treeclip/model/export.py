"""Export a model to open_clip's hub layout, loadable by plain open_clip, pybioclip and `create_model`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from open_clip.transformer import QuickGELU

from .factory import model_config, unwrap_model
from .hub import HUB_WEIGHTS, replace_atomically, write_hub_config

log = logging.getLogger(__name__)


def export_model(
    model: torch.nn.Module,
    *,
    out_dir: str | os.PathLike[str],
    model_name: str | None = None,
    model_cfg: Mapping[str, Any] | None = None,
    preprocess_cfg: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``open_clip_model.safetensors`` then ``open_clip_config.json`` into `out_dir`, each atomically.

    The architecture is `model_cfg`, else resolved from `model_name` (any model id, see `create_model`),
    marked ``quick_gelu`` when the model uses QuickGELU (as with OpenAI weights); preprocessing is
    `preprocess_cfg`, else the model's own (``model.visual.preprocess_cfg``). A DDP- or compile-wrapped
    model is unwrapped. The config is written last, so a folder with a config is complete.
    """
    model = unwrap_model(model)
    if model_cfg is None:
        if model_name is None:
            raise ValueError("export_model needs model_cfg or model_name to describe the architecture")
        model_cfg = model_config(model_name)
    if any(isinstance(module, QuickGELU) for module in model.modules()):
        model_cfg = {**model_cfg, "quick_gelu": True}
    if preprocess_cfg is None:
        preprocess_cfg = model.visual.preprocess_cfg
    out = Path(out_dir)
    tensors = {name: value.detach().to("cpu").contiguous() for name, value in model.state_dict().items()}
    weights = out / HUB_WEIGHTS
    replace_atomically(weights, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"}))
    write_hub_config(out, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)
    log.info("exported %d tensors to %s", len(tensors), out)
    return out
