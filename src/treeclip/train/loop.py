"""The training loop: BioCLIP's recipe on one CPU or many GPUs, resumable.

Read `train` from top to bottom: plan the run from the shards, build the model, optimizer and objective,
restore the newest checkpoint, then repeat "set the learning rate, take one optimizer step on a global batch,
log, validate, checkpoint" until the step budget is spent.

Choices worth knowing:

* **Global batch.** ``train.batch_size`` is the global batch: world size x ``train.accum_steps`` x the
  per-process micro-batch. One epoch is ``floor(train samples / batch_size)`` optimizer steps.
* **Gradient accumulation** (``accum_steps > 1``) keeps the contrastive batch global, like open_clip's
  ``--accum-freq``: the features of all micro-batches are first computed without gradient, then each
  micro-batch is recomputed with gradient and its features are swapped into the cached set before the loss
  over the whole accumulated (and gathered) batch is back-propagated. The gradient is the gradient of the
  large-batch loss, at the price of one extra forward pass. Unlike ``--accum-freq``, the logit scale takes
  its gradient from the last micro-step only, so it is not counted ``accum_steps`` times. (The ce
  objectives are per-sample losses, so they simply average the micro-batch losses.)
* **Data order.** Every process reads its part of a pass over the shards (`make_loader` splits shards, or
  samples when shards are fewer than processes, so one pass holds each sample once); micro-batches are
  fixed-size and a process that exhausts its part starts its next pass, so no process ever waits for data.
  With one shard and no shuffling, process r of n sees samples r, r+n, ..., so the global batch of an
  n-process run is exactly the batch of a 1-process run (the basis of the equivalence test).
* **Schedule.** The run lasts ``train.epochs`` epochs, or ``train.max_steps`` steps when that is fewer; the
  warm-up + cosine schedule is laid over exactly the steps the run takes, so the cosine reaches its end at the
  last step (also after a resume, where the stored config gives the same length).
* **Resume** restores model, optimizer, GradScaler, step (the learning rate is a function of the step) and
  every process's RNG state, then starts a fresh pass over the data: the rest of the interrupted pass is not
  replayed, but the run ends after exactly the same number of optimizer steps.
* **Speed on GPUs.** bf16 autocast by default on CUDA (``train.precision=auto``), fused AdamW on CUDA,
  attention through PyTorch's fused ``scaled_dot_product_attention`` (open_clip's ``nn.MultiheadAttention``
  blocks call it), optional ``train.compile`` (model and loss), ``train.patch_dropout`` (FLIP),
  ``model.grad_checkpointing``, ``train.channels_last``, and loader workers with prefetching and pinned
  memory. Every logged record carries samples/s (global and per device) and the model FLOPs utilisation
  (`treeclip.train.throughput`). With open_clip's transforms the loader hands over uint8 pixels (4x fewer
  bytes through worker pipes, pinned memory and the host-to-device copy) and the loop does ``ToTensor`` +
  ``Normalize`` on the device (`treeclip.pixels.normalize_uint8`: the same floats). The loss is
  read on the host one step late (`StepValues`), so the device never idles while the host waits for it;
  steps that validate or checkpoint are read at once, before any later step changes the weights.
* **Seeds.** The process seeds torch's RNG with ``train.seed`` before building the model (all processes
  build the same initial weights), then with ``seed + rank`` (per-rank augmentation and dropout), unless a
  resumed checkpoint restores the RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from open_clip.transformer import PatchDropout
from torch.nn.parallel import DistributedDataParallel

from treeclip.atomic import atomic_write
from treeclip.data.loader import make_loader
from treeclip.errors import TreeclipError, UsageError
from treeclip.taxonomy import Taxon
from treeclip.model import create_model, model_config
from treeclip.pixels import normalize_uint8, split_steps
from treeclip.train import checkpoint as ckpt
from treeclip.train.config import CONFIG_FILE, Config, loader_workers, micro_batch_size, resolved_precision, to_yaml
from treeclip.train.distributed import DistEnv, barrier, gather_objects, init_distributed, mean_across, shutdown
from treeclip.train.export import record_shard_geometry
from treeclip.train.metrics import MetricsWriter
from treeclip.train.objectives import (
    ClassIndex, ClassifierHeads, TrainModule, clip_loss, cross_entropy_sum, ranks_for,
)
from treeclip.train.optim import lr_at, make_optimizer, set_lr
from treeclip.train.shards import count_samples, find_shards, shard_taxa, train_lineages
from treeclip.train.throughput import Throughput, count_flops_per_sample, peak_tflops
from treeclip.train.validate import validate

log = logging.getLogger(__name__)
LOGIT_SCALE_MAX = math.log(100.0)


class TrainingDiverged(TreeclipError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class Plan:
    """What the run will read and how long it lasts, from the config and the shards."""

    train_shards: list[str]
    val_shards: list[str]
    train_samples: int
    micro_batch: int
    steps_per_epoch: int
    stop_step: int  # the last step: epochs x steps per epoch, or train.max_steps when fewer; the schedule's end


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    last_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)  # the logged records of this process


BatchStream = Callable[[Iterator[dict]], Iterator[dict]]
PixelNorm = tuple[tuple[float, ...], tuple[float, ...]]


def train(config: Config, *, data_dir: Path, out_dir: Path, resume: str | None = None,
          on_step: Callable[[dict[str, Any]], None] | None = None, batch_stream: BatchStream | None = None
          ) -> TrainResult:
    """Train per `config` on ``data_dir/{train,val}/*.tar``, writing ``out_dir``; works under torchrun.

    `resume`: ``"latest"`` (the newest checkpoint in `out_dir`, or a fresh start when there is none) or a
    checkpoint path. `on_step` receives every step's metrics (rank 0 only), e.g. to drive a progress bar.
    `batch_stream` maps the loader's endless micro-batches to the ones trained on (`benchmarks/gpu.py`
    repeats one batch held in memory to time the model without the loader).
    """
    env = init_distributed(config.train.device)
    try:
        return _train(env, config, Path(data_dir), Path(out_dir), resume, on_step, batch_stream)
    finally:
        shutdown(env)


def plan_run(config: Config, data_dir: Path, world_size: int) -> Plan:
    """Check the config against the data; UsageError naming the key or path on a mismatch."""
    micro = micro_batch_size(config, world_size)
    train_shards = find_shards(data_dir, "train")
    samples = count_samples(train_shards)
    if samples < config.train.batch_size:
        raise UsageError(f"config key train.batch_size: {config.train.batch_size} exceeds the {samples} "
                         f"training samples in {data_dir}/train")
    per_epoch = samples // config.train.batch_size
    total = per_epoch * config.train.epochs
    stop = min(total, config.train.max_steps or total)
    if config.optim.warmup_steps >= stop:
        log.warning("optim.warmup_steps %d >= the run's %d steps: the learning rate never decays",
                    config.optim.warmup_steps, stop)
    return Plan(train_shards, find_shards(data_dir, "val", required=False), samples, micro, per_epoch, stop)


@dataclass
class Session:
    """Everything one process holds while training."""

    env: DistEnv
    config: Config
    plan: Plan
    out_dir: Path
    module: TrainModule
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    transforms: tuple[Callable, Callable]  # (train, val)
    tokenizer: Callable
    autocast: Callable[[], contextlib.AbstractContextManager]
    pixel_norm: PixelNorm | None  # mean, std of the train transform when its loader hands over uint8 pixels
    val_taxa: dict[tuple[str, ...], Taxon] = field(default_factory=dict)  # lineage -> taxon of the val shards


def _train(env: DistEnv, config: Config, data_dir: Path, out_dir: Path, resume: str | None,
           on_step: Callable | None, batch_stream: BatchStream | None) -> TrainResult:
    plan = plan_run(config, data_dir, env.world_size)
    _prepare_run_dir(env, config, out_dir, resume)
    module, transforms, tokenizer, class_index = _build(env, config, data_dir, plan)
    optimizer = make_optimizer(module.named_parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                               eps=config.optim.eps, weight_decay=config.optim.weight_decay,
                               fused=env.device.type == "cuda")
    precision = resolved_precision(config, env.device.type)
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")
    s = Session(env, config, plan, out_dir, module, optimizer, scaler, transforms, tokenizer,
                _autocast(precision, env), deferred_normalization(transforms[0]),
                shard_taxa(plan.val_shards) if config.eval.zero_shot and env.is_main else {})
    flops = count_flops_per_sample(module, tokenizer=tokenizer, device=env.device)
    timer = Throughput(config.train.batch_size, world_size=env.world_size, flops_per_sample=flops,
                       peak_tflops=config.train.peak_tflops or _table_peak(precision, env))
    torch.manual_seed(config.train.seed + env.rank)
    step, data_pass, last_checkpoint = _restore(s, resume)
    model = DistributedDataParallel(module, device_ids=[env.device] if env.device.type == "cuda" else None) \
        if env.distributed else module
    if config.train.compile:
        model = torch.compile(model)
    batches = MicroBatches(partial(_train_loader, s), data_pass)
    stream = batch_stream(batches) if batch_stream is not None else batches
    step_fn = _step_function(config, env, class_index, s.pixel_norm)
    writer = MetricsWriter(out_dir, tensorboard=config.log.tensorboard, resume_step=step) if env.is_main else None
    result = TrainResult(out_dir, step, last_checkpoint)
    timer.reset()

    pending: StepValues | None = None
    while step < plan.stop_step:
        lr = lr_at(step, base_lr=config.optim.lr, warmup_steps=config.optim.warmup_steps,
                   total_steps=plan.stop_step, schedule=config.optim.schedule)
        set_lr(optimizer, lr)
        micro_batches = [next(stream) for _ in range(config.train.accum_steps)]
        loss = step_fn(model, micro_batches, autocast=s.autocast, scaler=scaler)
        _optimizer_step(module, optimizer, scaler, config.optim.grad_clip)
        step += 1
        current = StepValues.start(step, lr, mean_across(env, loss), module.clip.logit_scale)
        if pending is not None:  # the previous step's loss, read while this step runs on the device
            _report(s, pending.record(plan, timer, last_checkpoint), on_step, writer, result, timer)
        pending = current
        if not _needs_settled_step(step, config, plan):
            continue
        _report(s, pending.record(plan, timer, last_checkpoint), on_step, writer, result, timer)
        pending = None
        if step % config.checkpoint.every_steps == 0 or step == plan.stop_step:
            last_checkpoint = _save(s, step, batches.passes) or last_checkpoint
            timer.reset()
    if writer is not None:
        writer.close()
    result.steps, result.last_checkpoint = step, last_checkpoint
    return result


# ---------------------------------------------------------------- setup


def _prepare_run_dir(env: DistEnv, config: Config, out_dir: Path, resume: str | None) -> None:
    if resume is None and ckpt.list_checkpoints(out_dir):
        raise UsageError(f"--out {out_dir}: already holds checkpoints; add --resume latest, or choose a new --out")
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_temp_files(out_dir)
        atomic_write(out_dir / CONFIG_FILE, to_yaml(config))
    barrier(env)


def _table_peak(precision: str, env: DistEnv) -> float | None:
    """The device's dense bf16/fp16 peak for MFU (None on the CPU, for fp32, or for an unlisted GPU)."""
    if env.device.type != "cuda" or precision == "fp32":
        return None
    return peak_tflops(torch.cuda.get_device_name(env.device))


def _build(env: DistEnv, config: Config, data_dir: Path, plan: Plan
           ) -> tuple[TrainModule, tuple[Callable, Callable], Callable, ClassIndex | None]:
    """The model (same initial weights on every process), transforms, tokenizer and class index."""
    torch.manual_seed(config.train.seed)
    clip, preprocess_train, preprocess_val, tokenizer = create_model(
        config.model.name, pretrained=config.model.pretrained, precision="fp32", device=env.device,
        config_only_ok=True)
    _apply_speed_options(clip, config)
    record_shard_geometry(clip, data_dir)  # checkpoints and exports then preprocess as the shards were built
    heads, class_index = None, None
    if config.train.objective != "clip":
        class_index = ClassIndex(train_lineages(data_dir, plan.train_shards), ranks_for(config.train.objective))
        heads = ClassifierHeads(clip.visual.output_dim, class_index.sizes).to(env.device)
        for name, param in clip.named_parameters():
            param.requires_grad = name.startswith("visual.")  # the text tower has no part in the ce losses
    # without augmentation the training loader gets the inference transform's own steps (a torchvision
    # Compose for open_clip models), which it can hand over as uint8 pixels
    plain = getattr(preprocess_val, "transform", preprocess_val)
    transforms = (preprocess_train if config.data.augment else plain, preprocess_val)
    return TrainModule(clip, heads), transforms, tokenizer, class_index


def _apply_speed_options(clip: nn.Module, config: Config) -> None:
    """Gradient checkpointing, FLIP patch dropout, channels-last and a frozen text tower, as configured."""
    if config.model.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    if config.train.patch_dropout > 0:  # open_clip's own module; the identity in eval mode
        clip.visual.patch_dropout = PatchDropout(config.train.patch_dropout)
    if config.train.channels_last:
        clip.to(memory_format=torch.channels_last)  # only 4-D weights (the patch convolution) change layout
    if config.model.freeze_text:
        for name, param in clip.named_parameters():
            if not name.startswith("visual.") and name not in ("logit_scale", "logit_bias"):
                param.requires_grad = False


def deferred_normalization(transform: Callable) -> PixelNorm | None:
    """(mean, std) when the training loader can hand over uint8 pixels for the loop to normalise on the
    device: a transform ending in ``ToTensor, Normalize`` (open_clip's); None for any other."""
    steps = split_steps(transform)
    return (steps.mean, steps.std) if steps is not None and steps.uint8_exact else None


def _train_loader(s: Session, data_pass: int) -> Iterable[dict]:
    config, env = s.config, s.env
    return make_loader(
        s.plan.train_shards, transform=s.transforms[0], tokenizer=s.tokenizer, batch_size=s.plan.micro_batch,
        text_mix=config.data.text_mix, text_types=config.text_types,
        text_weights=None if config.data.text_type else config.data.text_weights, seed=config.train.seed,
        shuffle_buffer=config.data.shuffle_buffer, num_workers=loader_workers(config, env.device.type),
        rank=env.rank, world_size=env.world_size, epoch=data_pass, partial=False, pin_memory=env.device.type == "cuda",
        prefetch_factor=config.data.prefetch_factor, normalize=s.pixel_norm is None,
    )


class MicroBatches:
    """Endless fixed-size micro-batches of this process: pass after pass over its part of the shards."""

    def __init__(self, make_pass: Callable[[int], Iterable[dict]], first_pass: int) -> None:
        self.make_pass, self.passes = make_pass, first_pass
        self._batches: Iterator[dict] = iter(make_pass(first_pass))
        self._fresh = True

    def __next__(self) -> dict:
        for _ in range(2):
            batch = next(self._batches, None)
            if batch is not None:
                self._fresh = False
                return batch
            if self._fresh:
                break
            self.passes += 1
            self._batches, self._fresh = iter(self.make_pass(self.passes)), True
        raise UsageError("config key train.batch_size: a process got no full micro-batch from its shards; "
                         "use a smaller batch or more (or smaller) shards")


def _restore(s: Session, resume: str | None) -> tuple[int, int, Path | None]:
    """(step, next data pass, checkpoint path) after loading the checkpoint named by `resume`, if any."""
    env = s.env
    if resume is None:
        return 0, 0, None
    found = ckpt.load_latest(s.out_dir) if resume == "latest" else (Path(resume), ckpt.load_checkpoint(Path(resume)))
    if found is None:
        log.info("no checkpoint in %s; starting from step 0", s.out_dir)
        return 0, 0, None
    path, state = found
    s.module.clip.load_state_dict(state["model"])
    if s.module.heads is not None and state.get("heads") is not None:
        s.module.heads.load_state_dict(state["heads"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    if env.rank < len(rng) and len(rng) == env.world_size:
        ckpt.restore_rng(rng[env.rank], env.device)
    passes = state["data_passes"]
    data_pass = (passes[env.rank] if len(passes) == env.world_size else max(passes)) + 1
    log.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"]), data_pass, path


# ---------------------------------------------------------------- one step


def _autocast(precision: str, env: DistEnv) -> Callable[[], contextlib.AbstractContextManager]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return partial(torch.autocast, device_type=env.device.type, dtype=dtype, enabled=dtype is not None)


StepFn = Callable[..., torch.Tensor]


def _step_function(config: Config, env: DistEnv, class_index: ClassIndex | None,
                   pixel_norm: PixelNorm | None) -> StepFn:
    layout = torch.channels_last if config.train.channels_last else torch.contiguous_format
    # mean and std copied to the device once, not (blocking) in every step
    on_device = None if pixel_norm is None else tuple(torch.tensor(values, device=env.device) for values in pixel_norm)
    to_model = partial(model_images, device=env.device, memory_format=layout, pixel_norm=on_device)
    if class_index is None:
        loss_fn = clip_loss(env.rank, env.world_size)
        loss_fn = torch.compile(loss_fn) if config.train.compile else loss_fn
        return partial(clip_step, loss_fn=loss_fn, device=env.device, model_input=to_model)
    return partial(ce_step, class_index=class_index, device=env.device, model_input=to_model)


def model_images(images: torch.Tensor, *, device: torch.device,
                 pixel_norm: PixelNorm | tuple[torch.Tensor, torch.Tensor] | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """A batch's images as the model's input on `device`: uint8 pixels (the loader's ``normalize=False``) cross
    as bytes and are normalised there with `pixel_norm` (mean, std); float images cross as they are."""
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        if pixel_norm is None:
            raise ValueError("the loader handed over uint8 pixels but the transform's mean and std are unknown")
        images = normalize_uint8(images, *pixel_norm)
    return images.contiguous(memory_format=memory_format)


def _sync_unless_last(model: nn.Module, index: int, count: int) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients only on the last micro-step of an accumulated batch."""
    last = index == count - 1
    return contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()


def clip_step(model: nn.Module, micro_batches: list[dict], *, loss_fn: nn.Module, device: torch.device,
              autocast: Callable, scaler: torch.amp.GradScaler,
              model_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Back-propagate the contrastive loss of the whole accumulated batch; returns this process's loss.
    `model_input` turns a batch's images into the model's input (default: `model_images` on `device`)."""
    to_model = model_input or partial(model_images, device=device)
    images = [to_model(b["image"]) for b in micro_batches]
    texts = [b["text"].to(device, non_blocking=True) for b in micro_batches]
    count = len(micro_batches)
    cached = []
    if count > 1:
        with torch.no_grad(), autocast():
            cached = [model(image, text)[:2] for image, text in zip(images, texts)]
    for j in range(count):
        with _sync_unless_last(model, j, count), autocast():
            image_features, text_features, scale = model(images[j], texts[j])
            if count > 1:
                image_features = _swap_in(image_features, [f for f, _ in cached], j)
                text_features = _swap_in(text_features, [t for _, t in cached], j)
                scale = scale if j == count - 1 else scale.detach()
            loss = loss_fn(image_features, text_features, scale)
        scaler.scale(loss).backward()
    return loss.detach()


def _swap_in(live: torch.Tensor, cached: list[torch.Tensor], index: int) -> torch.Tensor:
    """The cached features of all micro-batches with micro-batch `index` replaced by its live features."""
    return torch.cat([*cached[:index], live, *cached[index + 1:]])


def ce_step(model: nn.Module, micro_batches: list[dict], *, class_index: ClassIndex, device: torch.device,
            autocast: Callable, scaler: torch.amp.GradScaler,
            model_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Back-propagate the (hierarchical) cross-entropy, averaged over the micro-batches."""
    to_model = model_input or partial(model_images, device=device)
    total = torch.zeros((), device=device)
    for j, batch in enumerate(micro_batches):
        with _sync_unless_last(model, j, len(micro_batches)), autocast():
            logits = model(to_model(batch["image"]))
            loss = cross_entropy_sum(logits, class_index.labels(batch["lineage"], device)) / len(micro_batches)
        scaler.scale(loss).backward()
        total += loss.detach()
    return total


def _optimizer_step(module: TrainModule, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    grad_clip: float | None) -> None:
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        module.clip.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)


# ---------------------------------------------------------------- logging, validation, checkpoints


@dataclass
class StepValues:
    """One step's loss and logit scale on their way to the host.

    On CUDA the copy is started without waiting (an event marks its end), and the loop reads it one step later,
    after it has queued the next step: a per-step ``float(loss)`` would stop the host until the device is idle,
    so the next step's kernels could not be queued while this one runs.
    """

    step: int
    lr: float
    values: torch.Tensor  # [loss, exp(logit_scale)], on the host once `copied` has happened
    copied: torch.cuda.Event | None

    @classmethod
    def start(cls, step: int, lr: float, loss: torch.Tensor, logit_scale: torch.Tensor) -> StepValues:
        values = torch.stack([loss.detach().float(), logit_scale.detach().exp().float()])
        if values.device.type != "cuda":
            return cls(step, lr, values, None)
        host = values.to("cpu", non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return cls(step, lr, host, copied)

    def record(self, plan: Plan, timer: Throughput, last_checkpoint: Path | None) -> dict[str, Any]:
        """The step's log record; raises `TrainingDiverged` for a loss that is not finite."""
        if self.copied is not None:
            self.copied.synchronize()
        loss, logit_scale = self.values.tolist()
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss} at step {self.step}; "
                                   f"last good checkpoint: {last_checkpoint or 'none'}")
        return {"step": self.step, "epoch": self.step / plan.steps_per_epoch, "loss": loss, "lr": self.lr,
                "logit_scale": logit_scale, **timer.tick()}


def _needs_settled_step(step: int, config: Config, plan: Plan) -> bool:
    """Whether this step validates or checkpoints, so its record must be read before the next step runs."""
    every = config.eval.every_steps
    return (step == plan.stop_step or step % config.checkpoint.every_steps == 0
            or bool(every and step % every == 0))


def _report(s: Session, record: dict[str, Any], on_step: Callable | None, writer: MetricsWriter | None,
            result: TrainResult, timer: Throughput) -> None:
    """Hand one step's record to the progress callback, validate when due, and log it when due."""
    step, last = record["step"], record["step"] == s.plan.stop_step
    if s.env.is_main and on_step is not None:
        on_step({**record, "total_steps": s.plan.stop_step})
    every = s.config.eval.every_steps
    if every and (step % every == 0 or last):
        record.update(_validate(s))
        timer.reset()
    if step % s.config.log.every_steps == 0 or last or "val_loss" in record:
        _log(writer, result, record)


def _log(writer: MetricsWriter | None, result: TrainResult, record: dict[str, Any]) -> None:
    result.history.append(record)
    if writer is not None:
        writer.write(record)
    log.info("step %d loss %.4f lr %.3g", record["step"], record["loss"], record["lr"])


def _validate(s: Session) -> dict[str, float]:
    """Validation on rank 0 (the others wait); empty without val shards."""
    config, metrics = s.config, {}
    if s.env.is_main and s.plan.val_shards:
        loader = make_loader(s.plan.val_shards, transform=s.transforms[1], tokenizer=s.tokenizer,
                             batch_size=config.eval.batch_size, text_mix=config.data.text_mix,
                             text_types=config.text_types, seed=config.train.seed, shuffle_buffer=0)
        metrics = validate(s.module.clip, loader, tokenizer=s.tokenizer, device=s.env.device, autocast=s.autocast,
                           max_batches=config.eval.max_batches, text_type=config.eval.zero_shot_text_type,
                           templates=config.eval.templates, taxa=s.val_taxa, zero_shot=config.eval.zero_shot)
    barrier(s.env)
    return metrics


def _save(s: Session, step: int, data_pass: int) -> Path | None:
    """Gather every process's RNG state and data pass; rank 0 writes the checkpoint."""
    env, module = s.env, s.module
    rng = gather_objects(env, ckpt.capture_rng(env.device))
    passes = gather_objects(env, data_pass)
    path = None
    if env.is_main:
        state = {
            "model": module.clip.state_dict(),
            "heads": module.heads.state_dict() if module.heads is not None else None,
            "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(), "step": step,
            "epoch": step // s.plan.steps_per_epoch, "rng": rng, "data_passes": passes,
            "config": _stored_config(s),
        }
        path = ckpt.save_checkpoint(s.out_dir, state, keep_last=s.config.checkpoint.keep_last)
    barrier(env)
    return path


def _stored_config(s: Session) -> dict[str, Any]:
    """The resolved config, its model section completed with the architecture and preprocessing, so a
    checkpoint is a model id of its own (`treeclip.model.create_model(CHECKPOINT)`)."""
    stored = s.config.to_dict()
    stored["model"].update(model_cfg=model_config(s.config.model.name),
                           preprocess_cfg=dict(s.module.clip.visual.preprocess_cfg))
    return stored
