"""Training throughput: `treeclip train` (the library loop) against a minimal hand-written open_clip loop.

Both train the same tiny architecture on the same generated shards through the same loader with the same
arguments (transform, text types, shuffle buffer), one process, fp32, one torch thread. The hand-written loop
does less work (no learning-rate schedule, logit-scale clamp, loss check or metrics), so the library loop
should be at most as fast; the goal is >= 0.95 of it.

The two loops run in LOCKSTEP in one process: after each `treeclip train` step (its ``on_step`` callback)
the hand-written loop takes one step, so the two alternate step by step and see the same machine load, and
each figure is the median step time after a short warm-up. On a shared machine other processes stall single
steps for seconds and change the load from one minute to the next; running one loop after the other (as an
earlier version of this file did, treeclip always first, mean over 7 steps, with different loader arguments
for the two loops) then reports noise: that version's "treeclip 1.36x faster than the plain loop" was such
noise, and its repetition here swung from 0.93x to 1.96x between runs. Samples per CPU-second (median over
steps) are reported too.

    python benchmarks/train.py [--model treeclip-tiny] [--batch 32] [--steps 25]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _shards import write_shards  # noqa: E402 - the test helper that writes tiny shards

from treeclip.data.loader import make_loader  # noqa: E402
from treeclip.train import loop  # noqa: E402
from treeclip.train.config import Config, load_config  # noqa: E402
from treeclip.train.optim import make_optimizer  # noqa: E402

WARMUP = 5


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def clock() -> Timing:
    return time.perf_counter(), time.process_time()


def since(start: Timing) -> Timing:
    now = clock()
    return now[0] - start[0], now[1] - start[1]


def rate(durations: list[Timing], batch: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) of the median step after the warm-up."""
    timed = durations[WARMUP:]
    return tuple(batch / statistics.median(d[i] for d in timed) for i in (0, 1))


def bench_config(model: str, batch: int, steps: int) -> Config:
    return load_config(preset="tiny", overrides=[
        f"model.name={model}", f"train.batch_size={batch}", f"train.max_steps={steps}", "eval.every_steps=0",
        f"checkpoint.every_steps={steps}", f"log.every_steps={steps}", "log.tensorboard=false",
    ])


def open_clip_steps(shards: Path, config: Config) -> Iterator[None]:
    """The shortest faithful CLIP loop (open_clip model, AdamW, ClipLoss, the same loader and lr); yields once
    after its setup and then after every step."""
    model = config.model.name
    torch.manual_seed(0)
    clip, preprocess, _ = open_clip.create_model_and_transforms(model)
    tokenizer = open_clip.get_tokenizer(model)
    optimizer = make_optimizer(clip.named_parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                               eps=config.optim.eps, weight_decay=config.optim.weight_decay)
    loss_fn = open_clip.ClipLoss()
    urls = sorted(str(p) for p in (shards / "train").glob("*.tar"))
    yield
    for data_pass in itertools.count():
        for batch in make_loader(urls, transform=preprocess, tokenizer=tokenizer, batch_size=config.train.batch_size,
                                 text_mix=config.data.text_mix, text_types=config.text_types,
                                 shuffle_buffer=config.data.shuffle_buffer, seed=config.train.seed,
                                 epoch=data_pass, partial=False):
            image_features, text_features, scale = clip(batch["image"], batch["text"])
            loss = loss_fn(image_features, text_features, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            yield


def compare(shards: Path, out: Path, *, model: str, batch: int, steps: int
            ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(treeclip, open_clip) rates, each (samples/s, samples per CPU-s), the loops taking turns step by step."""
    config = bench_config(model, batch, steps)
    theirs_steps = open_clip_steps(shards, config)
    next(theirs_steps)  # the plain loop's setup
    ours: list[Timing] = []
    theirs: list[Timing] = []
    started = [clock()]

    def after_our_step(_: dict) -> None:
        ours.append(since(started[0]))
        start = clock()
        next(theirs_steps)
        theirs.append(since(start))
        started[0] = clock()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loop.train(config, data_dir=shards, out_dir=out, on_step=after_our_step)
    finally:
        torch.set_num_threads(threads)
    return rate(ours, batch), rate(theirs, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="treeclip-tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="treeclip-bench-") as tmp:
        shards = write_shards(Path(tmp) / "shards", n_species=9, per_species={"train": 64, "val": 2})
        ours, theirs = compare(shards, Path(tmp) / "run", model=args.model, batch=args.batch, steps=args.steps)
    print(f"model {args.model}, batch {args.batch}, {args.steps} steps in lockstep ({WARMUP} warm-up), median step, "
          "1 torch thread")
    print("| loop | samples/s (wall) | samples per CPU-s |\n|---|---|---|")
    for name, figures in (("treeclip train", ours), ("hand-written open_clip", theirs)):
        print(f"| {name} | {figures[0]:.1f} | {figures[1]:.1f} |")
    print(f"| ratio (goal >= 0.95) | {ours[0] / theirs[0]:.3f} | {ours[1] / theirs[1]:.3f} |")


if __name__ == "__main__":
    main()
