"""CPU int8 inference: dynamic quantisation of the image tower's Linear layers.

Chosen over ONNX Runtime because it needs no export step or extra dependency and keeps the open_clip
module (and so every code path) unchanged. Weights are stored as int8 with per-tensor scales and
activations are quantised on the fly per batch; attention's fused input projection stays float.
``benchmarks/predict.py`` measures its speed and top-1 agreement with fp32.
"""

from __future__ import annotations

import copy
import warnings

import torch

PRECISIONS = ("fp32", "int8")


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a CLIP model whose image tower runs its Linear layers in int8 (CPU only)."""
    from torch.ao.quantization import quantize_dynamic  # noqa: PLC0415 - only int8 runs need it

    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao eager quantisation still works
        warnings.filterwarnings("ignore", message=".*quantize_per_", category=UserWarning)
        quantized.visual = quantize_dynamic(quantized.visual, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized


def with_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """`model` as is for fp32, its int8 copy for int8; ValueError for anything else."""
    if precision == "fp32":
        return model
    if precision == "int8":
        return quantize_int8(model)
    raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
