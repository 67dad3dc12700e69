"""Training throughput: `treeclip train` (the library loop) against a minimal hand-written open_clip loop.

Both train the same tiny architecture on the same generated shards through the same loader with the same
arguments (transform, text types, shuffle buffer), one process, fp32. The hand-written loop does less work
(no learning-rate schedule, logit-scale clamp, loss check or metrics), so the library loop should be at most
as fast; the goal is >= 0.95 of it.

Each figure is the MEDIAN step time after a short warm-up, not the mean: on a shared machine other people's
processes stall single steps for seconds, and a mean over a dozen steps then swings by tens of percent.
The loops alternate, and the one that goes first alternates by round, so neither always runs on a warmer
(or busier) machine. Samples per CPU-second of this process (median over steps) are reported too.

An earlier version of this file reported treeclip 1.36x faster than the plain loop: it took the mean over
7 steps, always ran treeclip first and gave the plain loop different loader arguments; with medians and
alternation the two loops are within a few percent of each other (benchmarks/RESULTS.md).

    python benchmarks/train.py [--model treeclip-tiny] [--batch 32] [--steps 25] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
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


Stamps = list[tuple[float, float]]  # (wall clock, process CPU time) after each step


def stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def rate(stamps: Stamps, batch: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) from the median step after the warm-up."""
    timed = stamps[WARMUP:]
    return tuple(batch / statistics.median(b[i] - a[i] for a, b in zip(timed, timed[1:])) for i in (0, 1))


def bench_config(model: str, batch: int, steps: int) -> Config:
    return load_config(preset="tiny", overrides=[
        f"model.name={model}", f"train.batch_size={batch}", f"train.max_steps={steps}", "eval.every_steps=0",
        f"checkpoint.every_steps={steps}", f"log.every_steps={steps}", "log.tensorboard=false",
    ])


def treeclip_loop(shards: Path, out: Path, *, model: str, batch: int, steps: int) -> tuple[float, float]:
    stamps: Stamps = []
    loop.train(bench_config(model, batch, steps), data_dir=shards, out_dir=out,
               on_step=lambda _: stamps.append(stamp()))
    return rate(stamps, batch)


def open_clip_loop(shards: Path, *, model: str, batch: int, steps: int) -> tuple[float, float]:
    """The shortest faithful CLIP loop: open_clip model, AdamW, ClipLoss, the same loader and lr."""
    config = bench_config(model, batch, steps)
    torch.manual_seed(0)
    clip, preprocess, _ = open_clip.create_model_and_transforms(model)
    tokenizer = open_clip.get_tokenizer(model)
    optimizer = make_optimizer(clip.named_parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                               eps=config.optim.eps, weight_decay=config.optim.weight_decay)
    loss_fn = open_clip.ClipLoss()
    urls = sorted(str(p) for p in (shards / "train").glob("*.tar"))
    stamps: Stamps = []
    data_pass = 0
    while len(stamps) < steps:
        for batch_dict in make_loader(urls, transform=preprocess, tokenizer=tokenizer, batch_size=batch,
                                      text_mix=config.data.text_mix, text_types=config.text_types,
                                      shuffle_buffer=config.data.shuffle_buffer, seed=config.train.seed,
                                      epoch=data_pass, partial=False):
            image_features, text_features, scale = clip(batch_dict["image"], batch_dict["text"])
            loss = loss_fn(image_features, text_features, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stamps.append(stamp())
            if len(stamps) == steps:
                break
        data_pass += 1
    return rate(stamps, batch)


def compare(shards: Path, work: Path, *, model: str, batch: int, steps: int, repeats: int
            ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(treeclip rounds, open_clip rounds), the first loop of each round alternating."""
    ours, theirs = [], []
    for round_ in range(repeats):
        runs = [lambda r=round_: ours.append(treeclip_loop(shards, work / f"run{r}", model=model, batch=batch,
                                                            steps=steps)),
                lambda: theirs.append(open_clip_loop(shards, model=model, batch=batch, steps=steps))]
        for run in runs if round_ % 2 == 0 else runs[::-1]:
            run()
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="treeclip-tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="treeclip-bench-") as tmp:
        shards = write_shards(Path(tmp) / "shards", n_species=9, per_species={"train": 64, "val": 2})
        ours, theirs = compare(shards, Path(tmp), model=args.model, batch=args.batch, steps=args.steps,
                               repeats=args.repeats)
    print(f"model {args.model}, batch {args.batch}, {args.steps} steps ({WARMUP} warm-up), median step, "
          f"{torch.get_num_threads()} threads, best of {args.repeats} alternating rounds")
    print("| loop | samples/s (wall) | samples per CPU-s | rounds (wall) |\n|---|---|---|---|")
    for name, rounds in (("treeclip train", ours), ("hand-written open_clip", theirs)):
        best = [max(r[i] for r in rounds) for i in (0, 1)]
        print(f"| {name} | {best[0]:.1f} | {best[1]:.1f} | {', '.join(f'{r[0]:.1f}' for r in rounds)} |")
    ratios = [max(r[i] for r in ours) / max(r[i] for r in theirs) for i in (0, 1)]
    print(f"| ratio (goal >= 0.95) | {ratios[0]:.3f} | {ratios[1]:.3f} | |")


if __name__ == "__main__":
    main()
