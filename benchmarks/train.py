"""Training throughput: `treeclip train` (the library loop) against a minimal hand-written open_clip loop.

Both train the same tiny architecture on the same generated shards through the same loader, one process,
fp32; the figure is samples per second over the steps after a short warm-up (setup, validation and
checkpoint writing excluded). The two loops alternate for --repeats rounds and the best round of each is
reported. On a shared machine wall-clock rates swing with other people's load, so samples per CPU-second
of this process (all its threads) are reported too: the fairer comparison of the two loops' own cost.

    python benchmarks/train.py [--model treeclip-tiny] [--batch 32] [--steps 30] [--repeats 2]
"""

from __future__ import annotations

import argparse
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
from treeclip.train.config import load_config  # noqa: E402
from treeclip.train.optim import make_optimizer  # noqa: E402

WARMUP = 5


Stamps = list[tuple[float, float]]  # (wall clock, process CPU time) after each step


def stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def rate(stamps: Stamps, batch: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) from the end of the warm-up to the last step."""
    samples = batch * (len(stamps) - 1 - WARMUP)
    return tuple(samples / (stamps[-1][i] - stamps[WARMUP][i]) for i in (0, 1))


def treeclip_loop(shards: Path, out: Path, *, model: str, batch: int, steps: int) -> tuple[float, float]:
    config = load_config(preset="tiny", overrides=[
        f"model.name={model}", f"train.batch_size={batch}", f"train.max_steps={steps}", "eval.every_steps=0",
        f"checkpoint.every_steps={steps}", f"log.every_steps={steps}", "log.tensorboard=false",
    ])
    stamps: Stamps = []
    loop.train(config, data_dir=shards, out_dir=out, on_step=lambda _: stamps.append(stamp()))
    return rate(stamps, batch)


def open_clip_loop(shards: Path, *, model: str, batch: int, steps: int) -> tuple[float, float]:
    """The shortest faithful CLIP loop: open_clip model, AdamW, ClipLoss, the same loader and lr."""
    config = load_config(preset="tiny")
    torch.manual_seed(0)
    clip, preprocess, _ = open_clip.create_model_and_transforms(model)
    tokenizer = open_clip.get_tokenizer(model)
    optimizer = make_optimizer(clip.named_parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                               eps=config.optim.eps, weight_decay=config.optim.weight_decay)
    loss_fn = open_clip.ClipLoss()
    stamps: Stamps = []
    data_pass = 0
    while len(stamps) < steps:
        for batch_dict in make_loader(str(shards / "train"), transform=preprocess, tokenizer=tokenizer,
                                      batch_size=batch, shuffle_buffer=config.data.shuffle_buffer,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="treeclip-tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="treeclip-bench-") as tmp:
        shards = write_shards(Path(tmp) / "shards", n_species=9, per_species={"train": 64, "val": 2})
        ours, theirs = [], []
        for round_ in range(args.repeats):
            ours.append(treeclip_loop(shards, Path(tmp) / f"run{round_}", model=args.model, batch=args.batch,
                                      steps=args.steps))
            theirs.append(open_clip_loop(shards, model=args.model, batch=args.batch, steps=args.steps))
    print(f"model {args.model}, batch {args.batch}, {args.steps} steps ({WARMUP} warm-up), "
          f"{torch.get_num_threads()} threads, best of {args.repeats} rounds")
    print("| loop | samples/s (wall) | samples per CPU-s | rounds (wall) |\n|---|---|---|---|")
    for name, rounds in (("treeclip train", ours), ("hand-written open_clip", theirs)):
        best = [max(r[i] for r in rounds) for i in (0, 1)]
        print(f"| {name} | {best[0]:.1f} | {best[1]:.1f} | {', '.join(f'{r[0]:.1f}' for r in rounds)} |")
    ratios = [max(r[i] for r in ours) / max(r[i] for r in theirs) for i in (0, 1)]
    print(f"| ratio (goal >= 0.95) | {ratios[0]:.3f} | {ratios[1]:.3f} | |")


if __name__ == "__main__":
    main()
