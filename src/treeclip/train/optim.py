"""AdamW with CLIP's parameter groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Gains, biases, the logit scale (and other vectors/scalars) are not decayed, as in CLIP and BioCLIP."""
    return param.ndim < 2 or name.endswith(".bias") or "logit_scale" in name or "logit_bias" in name


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and undecayed gains/biases/logit scale (trainable params only)."""
    decay, plain = [], []
    for name, param in named:
        if param.requires_grad:
            (plain if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def make_optimizer(
    named: Iterable[tuple[str, nn.Parameter]], *, lr: float, betas: tuple[float, float], eps: float,
    weight_decay: float, fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over `param_groups`; `fused` (CUDA only) updates all parameters in one kernel."""
    return torch.optim.AdamW(param_groups(named, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps` (or constant).

    `step` counts optimizer steps from 0; the schedule is a pure function of it, so the step number is the
    whole scheduler state a checkpoint needs.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
