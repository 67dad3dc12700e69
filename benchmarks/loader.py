"""The training loader's CPU cost per sample, before and after its speed-ups, side by side in one run on the same
generated shards: "old" (webdataset's tarfile-based reader, the transform step by step), "reader" (treeclip's
`TarReader`, only the members used) and "new" (that, plus ToTensor + Normalize done in place in the batch
tensor: `treeclip.data.loader.ImageTransform`).

Both paths run `treeclip.data.loader.make_loader` in this process on one torch thread with the model's training
transform (random resized crop, ToTensor, normalise) and tokenizer, the way `benchmarks/gpu.py` measures
"loader samples/s per core": samples per CPU-second of this process (other processes' load does not count,
but shares the caches). "old" swaps the loader's shard reader back to ``wds.tarfile_to_samples``; "old" and
"reader" pass the transform wrapped in a function, which the loader applies as given. The rounds alternate
old, reader, new, old, ... and the median of each is reported, with the batches of old and new compared
(images and token ids, same seed) so a faster path that changes the data would be reported as such.

The shards are BioCLIP's layout as ``treeclip build`` writes it (JPEG + 10 caption files + taxon.json per
sample), 224 px JPEGs (`tests/_shards.py`).

Usage: ``python benchmarks/loader.py [--samples 768] [--batch 32] [--rounds 5] [--model ViT-B-16]``
Figures: docs/training.md, "Feeding the GPU".
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import webdataset as wds

from treeclip.data import loader
from treeclip.model import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _shards import write_shards  # noqa: E402 - the test suite's generator of real-layout shards


def old_reader(_suffixes: Any) -> Callable:
    """The loader's shard reader before `TarReader`: webdataset's tarfile expander, every member read."""
    return wds.tarfile_to_samples(handler=loader._log_and_continue)


PATHS = {"old": "wds.tarfile_to_samples, transform step by step", "reader": "TarReader, transform step by step",
         "new": "TarReader, ToTensor + Normalize in the batch tensor"}


def batches(urls: list[str], transform: Callable, tokenizer: Callable, *, batch: int, path: str
            ) -> Iterator[dict[str, Any]]:
    original = loader._TarSamples
    loader._TarSamples = old_reader if path == "old" else original
    as_given = transform if path == "new" else lambda image: transform(image)
    try:
        torch.manual_seed(0)  # the transform's crops draw from torch's global generator
        yield from loader.make_loader(urls, transform=as_given, tokenizer=tokenizer, batch_size=batch,
                                      shuffle_buffer=0, partial=False, seed=0)
    finally:
        loader._TarSamples = original


def rate(urls: list[str], transform: Callable, tokenizer: Callable, *, batch: int, path: str) -> float:
    """Samples per CPU-second after the first batch (opening the first shard is not part of the rate)."""
    stream = batches(urls, transform, tokenizer, batch=batch, path=path)
    next(stream)
    start, count = time.process_time(), 0
    for item in stream:
        count += len(item["__key__"])
    return count / (time.process_time() - start)


def same_batches(urls: list[str], transform: Callable, tokenizer: Callable, *, batch: int) -> bool:
    old = list(batches(urls, transform, tokenizer, batch=batch, path="old"))
    new = list(batches(urls, transform, tokenizer, batch=batch, path="new"))
    return len(old) == len(new) and all(
        a["__key__"] == b["__key__"] and a["text_type"] == b["text_type"] and a["lineage"] == b["lineage"]
        and torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"]) for a, b in zip(old, new))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=768, help="training samples in the shards (9 species)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each path, alternating")
    parser.add_argument("--model", default="ViT-B-16", help="whose training transform and tokenizer")
    args = parser.parse_args()
    started, load_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()[0]
    _, transform, _, tokenizer = create_model(args.model)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_shards(Path(tmp), n_species=9, per_species={"train": -(-args.samples // 9), "val": 1},
                            image_size=224)
        urls = sorted(str(path) for path in (root / "train").glob("*.tar"))
        equal = same_batches(urls, transform, tokenizer, batch=args.batch)
        runs: dict[str, list[float]] = {path: [] for path in PATHS}
        for _ in range(args.rounds):
            for path in runs:
                runs[path].append(rate(urls, transform, tokenizer, batch=args.batch, path=path))
    old, reader, new = (statistics.median(runs[path]) for path in PATHS)
    print(f"date: {started}, cores: {os.cpu_count()}, CPU: {platform.processor() or platform.machine()}, "
          f"torch: {torch.__version__}, load at start: {load_start:.2f}, at end: {os.getloadavg()[0]:.2f}, "
          f"model: {args.model}, samples: {args.samples}, batch: {args.batch}, rounds: {args.rounds}")
    print("\n| loader path | samples per CPU-second (median) | all rounds |\n|---|---|---|")
    for path, label in PATHS.items():
        print(f"| {path}: {label} | {statistics.median(runs[path]):,.1f} | "
              f"{', '.join(f'{value:,.0f}' for value in runs[path])} |")
    print(f"\nreader / old: {reader / old:.2f}x, new / old: {new / old:.2f}x; batches of new and old identical "
          f"(images, token ids, keys, text types, lineage): {'yes' if equal else 'NO'}")


if __name__ == "__main__":
    main()
