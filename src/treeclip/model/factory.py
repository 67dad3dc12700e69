"""Create and load CLIP models through open_clip.

A model id is one of the following (`parse_model_id` states the order in which they are tried):

- an architecture name: any open_clip config (``ViT-B-16`` is BioCLIP's) or one shipped as JSON in
  ``configs/`` (``treeclip-test``, ``treeclip-tiny``, ``treeclip-small``), registered with open_clip when
  this package is imported; `pretrained` then names weights: an open_clip tag such as ``"openai"``
  (downloaded), a weights file, or a treeclip training checkpoint;
- ``hf-hub:ORG/NAME``: open_clip's hub layout on the Hugging Face Hub (downloaded by open_clip);
- a folder in the hub layout (``open_clip_config.json`` + ``open_clip_model.safetensors``), optionally
  written ``local-dir:PATH``;
- a training checkpoint file: ``{"model": state_dict, "config": {"model": {...}}, ...}`` whose model section
  holds the architecture as ``"model_cfg"`` (with an optional ``"preprocess_cfg"``) or names it as ``"name"``
  (any model id above).

Image size and normalisation always come from the model's own config (open_clip's ``preprocess_cfg``); the
inference geometry (squash or crop) is the model family's, defined once in `treeclip.model.preprocess`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from treeclip.errors import UsageError

from .hub import HUB_WEIGHTS, is_hub_dir, write_hub_config
from .preprocess import inference_preprocess

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("configs")
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HUB_WEIGHT_FILES = (HUB_WEIGHTS, "open_clip_pytorch_model.bin")  # the weights files open_clip reads in a folder
Created = tuple[torch.nn.Module, Callable, Callable, Callable]


def register_configs() -> None:
    """Add the shipped JSON architectures to open_clip's registry (idempotent)."""
    shipped = {path.stem for path in CONFIG_DIR.glob("*.json")}
    if not shipped <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def list_architectures() -> list[str]:
    """Every architecture name `create_model` accepts (open_clip's plus treeclip's)."""
    return open_clip.list_models()


@dataclass(frozen=True)
class ModelRef:
    """A classified model id: kind is "arch", "hub", "local_dir" or "checkpoint"; `name` is what
    open_clip accepts for the first three, the file path for a checkpoint."""

    kind: str
    name: str


def parse_model_id(model_id: str | os.PathLike[str]) -> ModelRef:
    """Classify a model id; UsageError when it is none of the kinds below. The rules, in this order:

    1. ``hf-hub:ORG/NAME``: a model on the Hugging Face Hub;
    2. ``local-dir:PATH``: a hub-layout folder (it must be one);
    3. an architecture name of open_clip's registry (``ViT-B-16``; ``ViT-B/16`` is read as ``ViT-B-16``),
       even when a file or folder of that name exists: a folder named like an architecture never changes
       what loads (write ``./ViT-B-16`` or ``local-dir:ViT-B-16`` to load such a folder);
    4. a path that exists: a hub-layout folder, or a file (a training checkpoint);
    5. anything else is an error naming the kinds.
    """
    text = os.fspath(model_id)
    if text.startswith(HF_HUB_PREFIX):
        return ModelRef("hub", text)
    if text.startswith(LOCAL_DIR_PREFIX):
        return _local_dir(text[len(LOCAL_DIR_PREFIX):])
    arch = text.replace("/", "-")
    if arch in open_clip.list_models():
        if os.path.exists(text):
            log.info("%r is read as the architecture %s; write ./%s to load the path", text, arch, text)
        return ModelRef("arch", arch)
    if os.path.isdir(text):
        return _local_dir(text)
    if os.path.isfile(text):
        return ModelRef("checkpoint", text)
    raise UsageError(f"unknown model {text!r}: not a file, a model folder, an hf-hub:ORG/NAME id or an "
                     f"architecture (treeclip ones: {', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.json')))})")


def _local_dir(path: str) -> ModelRef:
    if not os.path.isdir(path):
        raise UsageError(f"model folder {path}: no such folder")
    if not is_hub_dir(path):
        raise UsageError(f"model folder {path} has no open_clip_config.json; export a checkpoint with "
                         "`treeclip export` or name a checkpoint file")
    return ModelRef("local_dir", LOCAL_DIR_PREFIX + path)


def create_model(
    name_or_path: str | os.PathLike[str],
    *,
    pretrained: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    aug_cfg: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
    config_only_ok: bool = False,
) -> Created:
    """(model, preprocess_train, preprocess_val, tokenizer) for any model id (see the module docstring);
    ``preprocess_val`` is the model family's inference preprocessing (`treeclip.model.preprocess`).

    `pretrained` applies to architecture names only; without it the model is initialised from scratch.
    A training checkpoint given as `pretrained` must hold that architecture. A tag whose weights were trained with QuickGELU (``"openai"``) switches the architecture to QuickGELU.
    `aug_cfg` is open_clip's training augmentation (e.g. ``{"scale": (0.9, 1.0)}``).
    A model folder without a weights file is a usage error unless `config_only_ok` (training a new model
    from an architecture folder): it is then initialised from scratch; a folder's weights are always loaded.
    """
    ref = parse_model_id(name_or_path)
    opts = {"precision": precision, "device": device, "aug_cfg": aug_cfg, "cache_dir": cache_dir}
    if pretrained is not None and ref.kind != "arch":
        raise UsageError(f"pretrained={pretrained!r} applies only to architecture names, not to {ref.name!r}")
    if ref.kind == "checkpoint":
        created = _from_checkpoint(read_checkpoint(ref.name), ref.name, opts)
    elif (checkpoint := _training_checkpoint(pretrained)) is not None:
        created = _from_checkpoint(checkpoint, pretrained, opts, expect=ref.name)
    else:
        created = _open_clip(ref.name, pretrained, opts, quick_gelu=_needs_quick_gelu(ref.name, pretrained),
                             weights_follow=_weights_follow(ref, pretrained, config_only_ok))
    model, preprocess_train, preprocess_val, tokenizer = created
    preprocess = inference_preprocess(ref.name, model.visual.preprocess_cfg, preprocess_val)
    return model, preprocess_train, preprocess, tokenizer


def _weights_follow(ref: ModelRef, pretrained: str | None, config_only_ok: bool) -> bool:
    """True when every parameter of the model `ref` names is about to be loaded from weights."""
    if pretrained is not None or ref.kind == "hub":
        return True
    if ref.kind != "local_dir":
        return False
    folder = Path(ref.name[len(LOCAL_DIR_PREFIX):])
    return not config_only_ok or any((folder / name).is_file() for name in HUB_WEIGHT_FILES)


def load_model(model_id: str | os.PathLike[str], *, precision: str = "fp32",
               device: str | torch.device = "cpu", cache_dir: str | None = None) -> Created:
    """An existing model for inference: `create_model` without pretrained weights to choose, in eval mode."""
    created = create_model(model_id, precision=precision, device=device, cache_dir=cache_dir)
    created[0].eval()
    return created


def model_config(model_id: str | os.PathLike[str], *, pretrained: str | None = None) -> dict[str, Any]:
    """The open_clip architecture config (``model_cfg``) of any model id, as `create_model` builds it."""
    ref = parse_model_id(model_id)
    if ref.kind == "checkpoint":
        spec = checkpoint_model_spec(read_checkpoint(ref.name), ref.name)
        if spec.get("model_cfg"):
            return copy.deepcopy(dict(spec["model_cfg"]))
        return model_config(spec["name"], pretrained=spec.get("pretrained"))
    config = open_clip.get_model_config(ref.name)
    if config is None:
        raise UsageError(f"no architecture config found for {ref.name!r}")
    config = copy.deepcopy(config)
    if ref.kind == "arch" and _needs_quick_gelu(ref.name, pretrained):
        config["quick_gelu"] = True
    return config


def _needs_quick_gelu(arch: str, pretrained: str | None) -> bool:
    """True when `pretrained` is an open_clip tag of weights trained with QuickGELU (e.g. OpenAI's)."""
    return bool(pretrained) and bool(open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False))


class _NoWeightsNotice(logging.Filter):
    """Drops open_clip's root-logger notices that a model starts without pretrained weights: treeclip creates
    architectures without weights on purpose (training from scratch, or before loading a checkpoint)."""

    NOTICES = ("No pretrained weights loaded", "Local config loaded, but no CLIP weights")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


def _open_clip(name: str, pretrained: str | None, opts: Mapping[str, Any], *, load_weights: bool = True,
               quick_gelu: bool = False, weights_follow: bool = False) -> Created:
    """open_clip's model and transforms. With `weights_follow` every parameter is about to be loaded (by
    open_clip, which must then find weights, or strictly by the caller), so random initialisation is skipped."""
    notice_filter = _NoWeightsNotice()
    logging.getLogger().addFilter(notice_filter)
    try:
        with _skip_random_init() if weights_follow else contextlib.nullcontext():
            model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, load_weights=load_weights, precision=opts["precision"],
                device=opts["device"], aug_cfg=opts["aug_cfg"], cache_dir=opts["cache_dir"],
                force_quick_gelu=quick_gelu, require_pretrained=weights_follow and load_weights,
            )
    except RuntimeError as exc:
        if not (weights_follow and "weights" in str(exc).lower()):
            raise
        raise UsageError(f"model {name}: no weights found ({str(exc).splitlines()[0][:200]})") from None
    finally:
        logging.getLogger().removeFilter(notice_filter)
    return model, preprocess_train, preprocess_val, open_clip.get_tokenizer(name, cache_dir=opts["cache_dir"])


def _from_checkpoint(checkpoint: Any, path: str, opts: Mapping[str, Any], expect: str | None = None) -> Created:
    """The model of a training checkpoint with its weights; `expect` names the architecture it must be."""
    spec = checkpoint_model_spec(checkpoint, path)
    if expect is not None and _arch_of(spec) != _arch_of({"name": expect}):
        raise UsageError(f"checkpoint {path} holds a different architecture than {expect!r}; "
                         f"load it by its path instead")
    created = _create_from_spec(spec, opts)
    load_state(created[0], checkpoint["model"])
    return created


def _arch_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint spec's architecture without the activation flag (which follows the weights)."""
    config = dict(spec["model_cfg"]) if spec.get("model_cfg") else model_config(spec["name"])
    config.pop("quick_gelu", None)
    return config


def _create_from_spec(spec: Mapping[str, Any], opts: Mapping[str, Any]) -> Created:
    """An untrained model of a checkpoint's architecture (its weights are loaded by the caller)."""
    if spec.get("model_cfg"):
        with tempfile.TemporaryDirectory(prefix="treeclip-model-") as tmp:
            write_hub_config(tmp, model_cfg=spec["model_cfg"], preprocess_cfg=spec.get("preprocess_cfg") or {})
            return _open_clip(LOCAL_DIR_PREFIX + tmp, None, opts, load_weights=False, weights_follow=True)
    ref = parse_model_id(spec["name"])
    if ref.kind == "checkpoint":
        return create_model(ref.name, **opts)
    quick_gelu = ref.kind == "arch" and _needs_quick_gelu(ref.name, spec.get("pretrained"))
    return _open_clip(ref.name, None, opts, load_weights=False, quick_gelu=quick_gelu, weights_follow=True)


INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                  "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")


@contextlib.contextmanager
def _skip_random_init() -> Iterator[None]:
    """Make ``torch.nn.init`` fills no-ops while a model whose every parameter is then loaded from a file is
    built: random initialisation is most of a model's load time (about 1 s for a ViT-B/16 on a laptop CPU,
    several for a ViT-L/14) and every value it writes is overwritten. Used only with strict loading."""
    saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
    try:
        for name in INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *_, **__: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


# ---------------------------------------------------------------- checkpoints and state dicts


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """A torch checkpoint, loaded tensors-only (memory-mapped when the file allows); UsageError if unreadable.

    Nothing in the file is ever executed: torch's ``weights_only`` unpickler accepts tensors and plain Python
    values only (treeclip's trainer stores its RNG states as tensors), so a file that needs any other object
    is refused with the name of the first one.
    """
    try:
        return _torch_load(path)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise UsageError(f"refusing checkpoint {os.fspath(path)}: it needs the Python object {refused.group(1)}, "
                             "and treeclip loads tensors and plain values only (unpickling it could run code "
                             "from the file)") from None
        reason = "not a torch checkpoint" if isinstance(exc, pickle.UnpicklingError) else _first_line(exc)
        raise UsageError(f"cannot read checkpoint {os.fspath(path)}: {reason}") from None


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _torch_load(path: str | os.PathLike[str]) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_model_spec(checkpoint: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config["model"]`` section of a training checkpoint; UsageError when it is not one."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise UsageError(f"{path} is not a treeclip training checkpoint (a dict with 'model' and 'config'); "
                         f"for a plain state dict use create_model(ARCH, pretrained={os.fspath(path)!r})")
    section = (checkpoint.get("config") or {}).get("model")
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, Mapping) or not (section.get("model_cfg") or section.get("name")):
        raise UsageError(f"{path}: config['model'] names no architecture (expected 'name' or 'model_cfg')")
    return dict(section)


def _training_checkpoint(pretrained: str | None) -> Mapping[str, Any] | None:
    """The checkpoint when `pretrained` is a training checkpoint file, else None (open_clip's job)."""
    if pretrained is None or not os.path.isfile(pretrained) or pretrained.endswith((".safetensors", ".npz")):
        return None
    checkpoint = read_checkpoint(pretrained)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        return checkpoint
    return None


def load_state(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict strictly, dropping DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes."""
    clean = {}
    for name, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        clean[name] = value
    unwrap_model(model).load_state_dict(clean, strict=True)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


register_configs()
