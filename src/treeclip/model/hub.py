"""open_clip's hub layout: a folder with ``open_clip_config.json`` and ``open_clip_model.safetensors``.

``open_clip_config.json`` is ``{"model_cfg": ARCHITECTURE, "preprocess_cfg": {"size", "mode", "mean", "std",
"interpolation", "resize_mode", "fill_color"}}``: what ``open_clip.create_model_from_pretrained("local-dir:DIR")``
(open_clip >= 2.32) and ``"hf-hub:ORG/NAME"`` read, and what the released BioCLIP models hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from treeclip.atomic import atomic_path

HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = "open_clip_model.safetensors"
PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def is_hub_dir(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding ``open_clip_config.json``."""
    return (Path(path) / HUB_CONFIG).is_file()


def write_hub_config(out_dir: str | os.PathLike[str], *, model_cfg: Mapping[str, Any],
                     preprocess_cfg: Mapping[str, Any]) -> Path:
    """Write ``open_clip_config.json`` atomically; preprocess keys open_clip does not know are dropped."""
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise ValueError(f"model_cfg lacks {key!r}; it must be an open_clip architecture config")
    config = {
        "model_cfg": dict(model_cfg),
        "preprocess_cfg": {k: _plain(v) for k, v in preprocess_cfg.items() if k in PREPROCESS_KEYS},
    }
    path = Path(out_dir) / HUB_CONFIG
    text = json.dumps(config, indent=2) + "\n"
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def read_hub_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``open_clip_config.json`` of a hub-layout folder."""
    return json.loads((Path(model_dir) / HUB_CONFIG).read_text(encoding="utf-8"))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of `path`, then move it into place (removed on error)."""
    with atomic_path(path) as tmp:
        write(tmp)


def resolvable_model_id(model_id: str | os.PathLike[str]) -> str:
    """The model id to record in outputs so it resolves from any directory: a local folder or checkpoint file
    as an absolute path (``local-dir:`` dropped), anything else (``hf-hub:ORG/NAME``, architectures) as given."""
    text = os.fspath(model_id)
    path = text.removeprefix("local-dir:")
    if not text.startswith("hf-hub:") and os.path.exists(path):
        return os.path.abspath(path)
    return text


def hub_revision(model_id: str) -> str | None:
    """The commit of the cached snapshot a ``hf-hub:ORG/NAME`` model was loaded from, else None."""
    if not model_id.startswith("hf-hub:"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - only hub models need it
    except ImportError:
        return None
    cached = try_to_load_from_cache(model_id.removeprefix("hf-hub:"), HUB_CONFIG)
    if not isinstance(cached, str):
        return None
    parts = Path(cached).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def model_provenance(model_id: str | os.PathLike[str]) -> dict[str, str]:
    """``{"model": resolvable id, "model_revision": commit}`` (the revision only for cached hub models)."""
    resolved = resolvable_model_id(model_id)
    revision = hub_revision(resolved)
    return {"model": resolved, **({"model_revision": revision} if revision else {})}
