"""GPU throughput of BioCLIP's architecture: a ViT-B-16 CLIP training step at bf16, and inference.

One prepared script for a GPU machine, synthetic data and random weights (no downloads), under 5 minutes:

- training: AdamW + CLIP contrastive loss, bf16 autocast, batch 256 (per GPU), images 224 px, 77 tokens;
  samples/s over the timed steps after a warm-up, and model FLOPs utilisation (MFU) = achieved FLOP/s /
  the GPU's peak dense bf16 FLOP/s. The FLOPs of one step (forward + backward) are counted by
  `torch.utils.flop_counter.FlopCounterMode` on a real step (matmuls, convolutions and attention); the peak
  is looked up by device name (`PEAK_BF16_TFLOPS`; pass --peak-tflops for others);
- inference: image-tower images/s at bf16 (`encode_image`, inference mode).

It prints a table and writes the figures as JSON. ``--cpu-smoke`` runs the same code path on the CPU with a
tiny model and batch, to test the script itself where there is no GPU.

    python benchmarks/gpu.py [--batch 256] [--steps 20] [--warmup 5] [--json gpu_results.json]
    python benchmarks/gpu.py --cpu-smoke --json /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from treeclip.atomic import atomic_write
from treeclip.model import create_model

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0),
                    ("RTX 4090", 165.0), ("A6000", 155.0))


@dataclass(frozen=True)
class Setup:
    model: str
    batch: int
    inference_batch: int
    steps: int
    warmup: int
    device: str


@dataclass
class Results:
    device_name: str
    model: str
    batch: int
    train_samples_per_s: float
    train_step_ms: float
    flops_per_sample: float  # forward + backward, counted
    achieved_tflops: float
    peak_bf16_tflops: float | None
    mfu: float | None
    inference_images_per_s: float
    torch: str
    python: str


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def synthetic_batch(model: torch.nn.Module, batch: int, device: torch.device,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images at the model's input size and random token ids at its context length."""
    size = model.visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    images = torch.randn(batch, 3, height, width, generator=generator).to(device)
    tokens = torch.randint(1, model.vocab_size, (batch, model.context_length), generator=generator).to(device)
    return images, tokens


def make_train_step(model: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    loss_fn = open_clip.ClipLoss()

    def step(images: torch.Tensor, tokens: torch.Tensor) -> float:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            image_features, text_features, scale = model(images, tokens)
            loss = loss_fn(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(fn: Callable[[], object], *, steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def count_step_flops(step: Callable[[torch.Tensor, torch.Tensor], float], images: torch.Tensor,
                     tokens: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        step(images, tokens)
    return counter.get_total_flops()


def run(setup: Setup, peak: float | None) -> Results:
    device = torch.device(setup.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = create_model(setup.model)[0].to(device).train()
    generator = torch.Generator().manual_seed(0)
    images, tokens = synthetic_batch(model, setup.batch, device, generator)
    step = make_train_step(model, device)
    flops = count_step_flops(step, images, tokens)
    seconds = timed_steps(lambda: step(images, tokens), steps=setup.steps, warmup=setup.warmup, device=device)
    achieved = flops / seconds / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    peak = peak if peak is not None else peak_tflops(name) if device.type == "cuda" else None
    inference = _inference_rate(model, setup, device, generator)
    return Results(device_name=name, model=setup.model, batch=setup.batch,
                   train_samples_per_s=setup.batch / seconds, train_step_ms=seconds * 1e3,
                   flops_per_sample=flops / setup.batch, achieved_tflops=achieved, peak_bf16_tflops=peak,
                   mfu=achieved / peak if peak else None, inference_images_per_s=inference,
                   torch=torch.__version__, python=platform.python_version())


def _inference_rate(model: torch.nn.Module, setup: Setup, device: torch.device,
                    generator: torch.Generator) -> float:
    model.eval()
    images, _ = synthetic_batch(model, setup.inference_batch, device, generator)

    @torch.inference_mode()
    def encode() -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return model.encode_image(images)

    return setup.inference_batch / timed_steps(encode, steps=setup.steps, warmup=setup.warmup, device=device)


def table(results: Results) -> str:
    mfu = f"{results.mfu:.1%}" if results.mfu is not None else "n/a (unknown peak; pass --peak-tflops)"
    peak = f"{results.peak_bf16_tflops:g}" if results.peak_bf16_tflops else "unknown"
    rows = [("device", results.device_name), ("model", f"{results.model}, random weights, bf16 autocast"),
            ("train batch (per GPU)", str(results.batch)),
            ("train samples/s", f"{results.train_samples_per_s:,.1f}"),
            ("train step (ms)", f"{results.train_step_ms:,.1f}"),
            ("model FLOPs per sample (fwd+bwd, counted)", f"{results.flops_per_sample / 1e9:,.1f} GFLOP"),
            ("achieved TFLOP/s", f"{results.achieved_tflops:,.2f}"), ("peak dense bf16 TFLOP/s", peak),
            ("MFU", mfu), ("inference images/s (image tower)", f"{results.inference_images_per_s:,.1f}")]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--inference-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not in the table")
    parser.add_argument("--json", type=Path, default=Path("gpu_results.json"), help="where to write the figures")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny model and batch on the CPU: tests this script's code path, not a GPU figure")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        setup = Setup(model="treeclip-test", batch=4, inference_batch=4, steps=2, warmup=1, device="cpu")
    elif not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; run on a GPU machine, or pass --cpu-smoke to test the script")
    else:
        setup = Setup(model=args.model, batch=args.batch, inference_batch=args.inference_batch, steps=args.steps,
                      warmup=args.warmup, device="cuda")
    results = run(setup, args.peak_tflops)
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, json.dumps(asdict(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
