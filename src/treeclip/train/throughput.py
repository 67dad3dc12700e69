"""Training speed: samples/s (global and per device) and model FLOPs utilisation (MFU).

MFU = the model FLOPs one device does per second / the device's dense peak. The model FLOPs of one training
sample (forward + backward of both towers as configured: patch dropout and a frozen text tower count, the
recomputation of gradient checkpointing does not) are counted once per run by
`torch.utils.flop_counter.FlopCounterMode` on a two-sample step of the real model (matmuls, convolutions,
attention; element-wise work is not counted, as is usual for MFU). The contrastive loss over the batch adds
O(batch x embed_dim) per sample, negligible beside the towers. Peaks are the vendors' dense bf16/fp16
tensor-core figures (no sparsity), looked up by device name; ``train.peak_tflops`` gives any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name();
# the first match wins, so more specific names come first.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0),
                    ("RTX 4090", 165.0), ("A6000", 155.0))


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like `torch.cuda.get_device_name()`, or None when not listed."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def count_flops_per_sample(module: torch.nn.Module, *, tokenizer: Callable[[list[str]], torch.Tensor],
                           device: torch.device, samples: int = 2) -> int:
    """Model FLOPs of one training sample, forward + backward, counted on a `samples`-sample step.

    `module` is a `treeclip.train.objectives.TrainModule`. The RNG state, the gradients (cleared) and the
    gradient-checkpointing setting are left as they were.
    """
    clip = module.clip
    size = clip.visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    images = torch.zeros(samples, 3, height, width, device=device)
    texts = tokenizer(["a photo of a plant."] * samples).to(device)
    checkpointing = bool(getattr(clip.visual.transformer, "grad_checkpointing", False))
    clip.set_grad_checkpointing(False)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                FlopCounterMode(display=False) as counter:
            outputs = module(images) if module.heads is not None else module(images, texts)
            sum(output.float().sum() for output in outputs).backward()
    finally:
        clip.set_grad_checkpointing(checkpointing)
        module.zero_grad(set_to_none=True)
    return counter.get_total_flops() // samples


class Throughput:
    """Samples/s since the last tick (global and per device) and MFU; validation and checkpoint time are
    excluded by calling `reset` after them."""

    def __init__(self, batch_size: int, *, world_size: int = 1, flops_per_sample: int = 0,
                 peak_tflops: float | None = None) -> None:
        self.batch_size, self.world_size = batch_size, world_size
        self.flops_per_sample, self.peak_tflops = flops_per_sample, peak_tflops
        self.last = time.perf_counter()

    def tick(self) -> dict[str, float]:
        """``samples_per_s``, ``samples_per_s_per_device``, ``tflops_per_device`` and ``mfu`` (when the
        device's peak is known) of the step that just ended."""
        now = time.perf_counter()
        rate, self.last = self.batch_size / max(now - self.last, 1e-9), now
        per_device = rate / self.world_size
        tflops = per_device * self.flops_per_sample / 1e12
        figures = {"samples_per_s": rate, "samples_per_s_per_device": per_device, "tflops_per_device": tflops}
        if self.peak_tflops:
            figures["mfu"] = tflops / self.peak_tflops
        return figures

    def reset(self) -> None:
        self.last = time.perf_counter()
