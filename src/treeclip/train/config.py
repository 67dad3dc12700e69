"""Training configuration: dataclasses, presets/YAML files that state only changes, ``key=value`` overrides.

A config is built in three layers, each overriding the last: the dataclass defaults, a preset
(``presets/NAME.yaml``) or a YAML file, and ``section.key=value`` overrides from the command line. A key
without a section (``lr=3e-4``) is accepted when exactly one section has it. Every mistake (unknown key,
wrong type, impossible value) raises `UsageError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from treeclip.errors import UsageError
from treeclip.taxonomy import TRAIN_TEXT_TYPES, TextType

PRESET_DIR = Path(__file__).parent / "presets"
CONFIG_FILE = "config.yaml"  # the resolved config a run folder keeps
OBJECTIVES = ("clip", "ce", "hier_ce")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 on CUDA, fp32 on the CPU
TEXT_MIXES = ("sample", "batch")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    name: str = "treeclip-tiny"  # any model id: architecture, hf-hub:ORG/NAME, model folder, checkpoint
    pretrained: str | None = None  # e.g. "openai" or a checkpoint path
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more compute
    freeze_text: bool = False  # fine-tuning: keep the text tower (and token embedding) fixed


@dataclass
class DataConfig:
    text_mix: str = "sample"  # "sample": a text type per sample; "batch": one per batch (original BioCLIP code)
    text_types: list[str] = field(default_factory=lambda: [t.value for t in TRAIN_TEXT_TYPES])
    text_weights: list[float] | None = None
    text_type: str | None = None  # single-type ablation; replaces text_types when set
    augment: bool = True  # random-crop training transform; False uses the evaluation transform
    shuffle_buffer: int = 1000
    num_workers: int | None = None  # loader processes per training process; None: 0 on CPU, per-GPU share on CUDA
    prefetch_factor: int = 4  # batches each worker prepares ahead (with num_workers > 0)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.2
    warmup_steps: int = 1000
    schedule: str = "cosine"  # "cosine" (to 0) or "constant" (after warm-up)
    grad_clip: float | None = None


@dataclass
class RunConfig:
    objective: str = "clip"
    batch_size: int = 32768  # global batch: world size x accumulation x per-device micro-batch
    accum_steps: int = 1
    epochs: int = 100
    max_steps: int | None = None  # a shorter run: the schedule (cosine) ends at this step instead of at `epochs`
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU
    device: str = "auto"
    seed: int = 0
    compile: bool = False  # torch.compile the model and the loss
    patch_dropout: float = 0.0  # FLIP: drop this fraction of image patches while training (0.5 is FLIP's)
    channels_last: bool = False  # images (and the patch convolution) in channels-last memory layout
    peak_tflops: float | None = None  # the device's dense peak for MFU, when treeclip's table lacks it


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 3


@dataclass
class EvalConfig:
    every_steps: int = 1000  # 0 disables validation
    max_batches: int = 50
    batch_size: int = 256
    zero_shot: bool = True
    zero_shot_text_type: str = "taxon_com"  # class names for zero-shot accuracy
    templates: str = "photo"


@dataclass
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def text_types(self) -> list[str]:
        """The text types actually trained on (the single-type ablation wins)."""
        return [self.data.text_type] if self.data.text_type else list(self.data.text_types)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(*, preset: str | None = None, path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then a preset or a YAML file, then ``key=value`` overrides; validated."""
    if preset and path:
        raise UsageError("give either --preset or --config, not both")
    config = Config()
    if preset:
        if preset not in preset_names():
            raise UsageError(f"--preset {preset}: unknown preset; choose one of {', '.join(preset_names())}")
        path = PRESET_DIR / f"{preset}.yaml"
    if path:
        apply_mapping(config, _read_yaml(Path(path)), origin=str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"override {item!r}: expected key=value, e.g. optim.lr=3e-4")
        set_value(config, key.strip(), yaml.safe_load(value) if value.strip() else None)
    validate(config)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of sections, e.g. 'optim: {{lr: 1e-4}}'")
    return data


def apply_mapping(config: Config, data: dict[str, Any], *, origin: str) -> None:
    """Apply nested ``{section: {key: value}}`` (or dotted keys) onto `config`."""
    for section, values in data.items():
        if isinstance(values, dict):
            for key, value in values.items():
                set_value(config, f"{section}.{key}", value, origin=origin)
        else:
            set_value(config, str(section), values, origin=origin)


def set_value(config: Config, key: str, value: Any, *, origin: str = "override") -> None:
    """Set ``section.key`` (or an unambiguous bare key) to `value`, checking its type."""
    section_name, name = _resolve_key(config, key, origin)
    section = getattr(config, section_name)
    hint = typing.get_type_hints(type(section))[name]
    setattr(section, name, _coerce(value, hint, f"{section_name}.{name}"))


def _resolve_key(config: Config, key: str, origin: str) -> tuple[str, str]:
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if "." in key:
        section_name, _, name = key.partition(".")
        section = sections.get(section_name)
        if section is not None and name in {f.name for f in dataclasses.fields(section)}:
            return section_name, name
        raise UsageError(f"{origin}: unknown config key {key!r}; keys look like {_examples(sections)}")
    owners = [s for s, obj in sections.items() if key in {f.name for f in dataclasses.fields(obj)}]
    if len(owners) == 1:
        return owners[0], key
    if owners:
        choices = ", ".join(f"{owner}.{key}" for owner in owners)
        raise UsageError(f"{origin}: config key {key!r} is ambiguous; write one of {choices}")
    raise UsageError(f"{origin}: unknown config key {key!r}; keys look like {_examples(sections)}")


def _examples(sections: dict[str, Any]) -> str:
    return ", ".join(f"{s}.{dataclasses.fields(obj)[0].name}" for s, obj in sections.items())


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a simple type hint (int, float, str, bool, list[T], T | None)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if typing.get_origin(hint) is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()] if isinstance(value, str) else [value]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        return _to_float(value, key)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UsageError(f"config key {key}: expected {hint.__name__}, got {value!r}")
    return value


def _to_float(value: int | str, key: str) -> float:
    """YAML 1.1 reads "3e-4" as a string; accept any number Python can parse."""
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"config key {key}: expected float, got {value!r}") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _one_of(value: str, choices: tuple[str, ...] | set[str], key: str) -> None:
    _require(value in choices, f"config key {key}: {value!r} is not one of {', '.join(sorted(choices))}")


def validate(config: Config) -> None:
    """Check values that have a valid type but an impossible meaning."""
    data, optim, run = config.data, config.optim, config.train
    _one_of(run.objective, OBJECTIVES, "train.objective")
    _one_of(run.precision, PRECISIONS, "train.precision")
    _one_of(run.device, DEVICES, "train.device")
    _one_of(data.text_mix, TEXT_MIXES, "data.text_mix")
    _one_of(optim.schedule, ("cosine", "constant"), "optim.schedule")
    _one_of(config.eval.templates, ("photo", "openai"), "eval.templates")
    text_types = {t.value for t in TextType}
    for kind in config.text_types:
        _one_of(kind, text_types, "data.text_type(s)")
    _one_of(config.eval.zero_shot_text_type, text_types, "eval.zero_shot_text_type")
    weights = data.text_weights
    if weights is not None and data.text_type is None:
        _require(len(weights) == len(data.text_types), "config key data.text_weights: one weight per data.text_types")
        _require(min(weights) >= 0 and sum(weights) > 0, "config key data.text_weights: weights >= 0, not all 0")
    for key, value in (("train.batch_size", run.batch_size), ("train.accum_steps", run.accum_steps),
                       ("train.epochs", run.epochs), ("train.max_steps", run.max_steps or 1), ("optim.lr", optim.lr),
                       ("checkpoint.every_steps", config.checkpoint.every_steps),
                       ("checkpoint.keep_last", config.checkpoint.keep_last)):
        _require(value > 0, f"config key {key}: must be positive")
    _require(len(optim.betas) == 2, "config key optim.betas: expected two numbers, e.g. [0.9, 0.98]")
    _require(optim.warmup_steps >= 0, "config key optim.warmup_steps: must be >= 0")
    _require(0.0 <= run.patch_dropout < 1.0, "config key train.patch_dropout: must be in [0, 1)")
    _require((data.num_workers or 0) >= 0 and data.prefetch_factor > 0,
             "config keys data.num_workers (>= 0) and data.prefetch_factor (> 0)")
    _require(run.peak_tflops is None or run.peak_tflops > 0, "config key train.peak_tflops: must be positive")


def micro_batch_size(config: Config, world_size: int) -> int:
    """Per-device micro-batch; UsageError unless the global batch divides evenly."""
    run = config.train
    parts = world_size * run.accum_steps
    if run.batch_size % parts:
        raise UsageError(
            f"config key train.batch_size: {run.batch_size} is not divisible by world size {world_size} x "
            f"train.accum_steps {run.accum_steps} = {parts}"
        )
    return run.batch_size // parts


def loader_workers(config: Config, device_type: str) -> int:
    """``data.num_workers``, or when unset: 0 on the CPU (the training process decodes), and on CUDA this
    host's cores shared among its GPUs, less one for the training process (at most 16)."""
    if config.data.num_workers is not None:
        return config.data.num_workers
    if device_type != "cuda":
        return 0
    import torch  # noqa: PLC0415 - config stays importable without torch

    per_gpu = (os.cpu_count() or 1) // max(1, torch.cuda.device_count())
    return max(1, min(16, per_gpu - 1))


def resolved_precision(config: Config, device_type: str) -> str:
    """``train.precision`` with ``auto`` resolved: bf16 autocast on CUDA, fp32 elsewhere."""
    if config.train.precision != "auto":
        return config.train.precision
    return "bf16" if device_type == "cuda" else "fp32"


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
