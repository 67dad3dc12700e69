"""The training loader's CPU cost per sample, before and after its speed-ups, side by side in one run on the same
generated shards:

- "old": webdataset's tarfile-based reader, the transform step by step;
- "previous": treeclip's `TarReader` (only the members used), the crop on the PIL image, ToTensor + Normalize
  in place in the batch tensor (the loader before tensor geometry);
- "new": the same with the geometry (random resized crop) on a uint8 tensor by torchvision's kernels;
- "uint8": that, handing over uint8 batches (``normalize=False``, what the training loop asks: ToTensor +
  Normalize then run on the GPU, not counted here).

Every path runs `treeclip.data.loader.make_loader` in this process on one torch thread with the model's training
transform (random resized crop, ToTensor, normalise) and tokenizer, the way `benchmarks/gpu.py` measures
"loader samples/s per core": samples per CPU-second of this process (other processes' load does not count,
but shares the caches). "old" swaps the loader's shard reader back to ``wds.tarfile_to_samples`` and passes
the transform wrapped in a function, which the loader applies as given; "previous" turns tensor geometry off.
The rounds alternate old, previous, new, uint8, old, ... and the median of each is reported, with the batches
compared (same seed): old and previous bit for bit, new against previous in 8-bit levels, uint8 normalised
(`treeclip.pixels.normalize_uint8`) against new bit for bit, so a faster path that changes the data
is reported as such.

A second table measures the paths as training runs them: two worker processes at the training
batch (256), in samples per CPU-second of the workers and this process together (the workers' CPU includes
handing each batch over through shared memory, which uint8 makes 4x smaller, and starting the two workers once
per 1,024 samples, which real training amortises over a whole pass).

The shards are BioCLIP's layout as ``treeclip build`` writes it (JPEG + 10 caption files + taxon.json per
sample), 224 px JPEGs (`tests/_shards.py`).

Usage: ``python benchmarks/loader.py [--samples 768] [--batch 32] [--rounds 5] [--model ViT-B-16]
[--worker-batch 256] [--worker-rounds 3]``
Figures: docs/training.md, "Feeding the GPU".
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
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
from treeclip.pixels import normalize_uint8

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _shards import write_shards  # noqa: E402 - the test suite's generator of real-layout shards


def old_reader(_suffixes: Any) -> Callable:
    """The loader's shard reader before `TarReader`: webdataset's tarfile expander, every member read."""
    return wds.tarfile_to_samples(handler=loader._log_and_continue)


PATHS = {"old": "wds.tarfile_to_samples, transform step by step",
         "previous": "TarReader, PIL crop, ToTensor + Normalize in the batch tensor",
         "new": "TarReader, crop on a uint8 tensor, ToTensor + Normalize in the batch tensor",
         "uint8": "TarReader, crop on a uint8 tensor, uint8 batches (normalised on the GPU)"}
WORKER_PATHS = ("old", "previous", "new", "uint8")


def batches(urls: list[str], transform: Callable, tokenizer: Callable, *, batch: int, path: str,
            workers: int = 0) -> Iterator[dict[str, Any]]:
    reader, tensor_steps = loader._TarSamples, loader.tensor_steps
    loader._TarSamples = old_reader if path == "old" else reader
    loader.tensor_steps = tensor_steps if path in ("new", "uint8") else lambda steps: None
    as_given = (lambda image: transform(image)) if path == "old" else transform
    try:
        torch.manual_seed(0)  # the transform's crops draw from torch's global generator
        yield from loader.make_loader(urls, transform=as_given, tokenizer=tokenizer, batch_size=batch,
                                      shuffle_buffer=0, partial=False, seed=0, normalize=path != "uint8",
                                      num_workers=workers)
    finally:
        loader._TarSamples, loader.tensor_steps = reader, tensor_steps


def rate(urls: list[str], transform: Callable, tokenizer: Callable, *, batch: int, path: str) -> float:
    """Samples per CPU-second after the first batch (opening the first shard is not part of the rate)."""
    stream = batches(urls, transform, tokenizer, batch=batch, path=path)
    next(stream)
    start, count = time.process_time(), 0
    for item in stream:
        count += len(item["__key__"])
    return count / (time.process_time() - start)


def worker_rate(urls: list[str], transform: Callable, tokenizer: Callable, *, batch: int, path: str,
                workers: int = 2) -> float:
    """Samples per CPU-second of a `path` loader with worker processes: the workers' CPU (reaped when the pass
    ends) and this process's (receiving the batches)."""
    children, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    count = sum(len(item["__key__"])
                for item in batches(urls, transform, tokenizer, batch=batch, path=path, workers=workers))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime + time.process_time() - start
    return count / spent


def same_batches(a: list[dict[str, Any]], b: list[dict[str, Any]], *, images: bool = True) -> bool:
    """Keys, text types, lineage, token ids (and with `images` the image tensors) equal."""
    return len(a) == len(b) and all(
        x["__key__"] == y["__key__"] and x["text_type"] == y["text_type"] and x["lineage"] == y["lineage"]
        and torch.equal(x["text"], y["text"]) and (not images or torch.equal(x["image"], y["image"]))
        for x, y in zip(a, b))


def compare(urls: list[str], transform: Callable, tokenizer: Callable, *, batch: int) -> str:
    """How the paths' batches compare (same seed), in words."""
    runs = {path: list(batches(urls, transform, tokenizer, batch=batch, path=path)) for path in PATHS}
    normalize = transform.transforms[-1]  # open_clip's training transform ends in Normalize
    per_level = torch.tensor(normalize.std).view(1, 3, 1, 1) * 255
    levels = torch.cat([((x["image"] - y["image"]).abs() * per_level).flatten()
                        for x, y in zip(runs["new"], runs["previous"])])
    normalised = [{**x, "image": normalize_uint8(x["image"], normalize.mean, normalize.std)} for x in runs["uint8"]]
    return (f"old = previous bit for bit: {'yes' if same_batches(runs['old'], runs['previous']) else 'NO'}; "
            f"new vs previous: keys, texts, token ids equal: "
            f"{'yes' if same_batches(runs['new'], runs['previous'], images=False) else 'NO'}, pixels differ by "
            f"at most {levels.max():.2f} levels, {(levels > 0.01).float().mean():.2%} of values differ; "
            f"uint8 normalised = new bit for bit: {'yes' if same_batches(normalised, runs['new']) else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=768, help="training samples in the shards (9 species)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each path, alternating")
    parser.add_argument("--model", default="ViT-B-16", help="whose training transform and tokenizer")
    parser.add_argument("--worker-batch", type=int, default=256, help="batch of the 2-worker measurement")
    parser.add_argument("--worker-rounds", type=int, default=3, help="runs of float and uint8 batches, alternating")
    args = parser.parse_args()
    started, load_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()[0]
    _, transform, _, tokenizer = create_model(args.model)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_shards(Path(tmp), n_species=9, per_species={"train": -(-args.samples // 9), "val": 1},
                            image_size=224)
        urls = sorted(str(path) for path in (root / "train").glob("*.tar"))
        comparison = compare(urls, transform, tokenizer, batch=args.batch)
        runs: dict[str, list[float]] = {path: [] for path in PATHS}
        for _ in range(args.rounds):
            for path in runs:
                runs[path].append(rate(urls, transform, tokenizer, batch=args.batch, path=path))
        two = write_shards(Path(tmp) / "workers", n_species=9, per_species={"train": -(-4 * args.worker_batch // 9),
                           "val": 1}, shards={"train": 2, "val": 1}, image_size=224)  # 2 batches per worker
        two_urls = sorted(str(path) for path in (two / "train").glob("*.tar"))
        handed: dict[str, list[float]] = {path: [] for path in WORKER_PATHS}
        for _ in range(args.worker_rounds):
            for path in handed:
                handed[path].append(worker_rate(two_urls, transform, tokenizer, batch=args.worker_batch, path=path))
    medians = {path: statistics.median(values) for path, values in runs.items()}
    print(f"date: {started}, cores: {os.cpu_count()}, CPU: {platform.processor() or platform.machine()}, "
          f"torch: {torch.__version__}, load at start: {load_start:.2f}, at end: {os.getloadavg()[0]:.2f}, "
          f"model: {args.model}, samples: {args.samples}, batch: {args.batch}, rounds: {args.rounds}")
    print("\n| loader path | samples per CPU-second (median) | all rounds |\n|---|---|---|")
    for path, label in PATHS.items():
        print(f"| {path}: {label} | {medians[path]:,.1f} | {', '.join(f'{value:,.0f}' for value in runs[path])} |")
    print("\n" + ", ".join(f"{path} / {base}: {medians[path] / medians[base]:.2f}x"
                           for path, base in (("previous", "old"), ("new", "previous"), ("uint8", "previous"),
                                              ("uint8", "old"))))
    print(comparison)
    print(f"\n| 2 workers, batch {args.worker_batch} | samples per CPU-second (workers + main, median) | all rounds |"
          "\n|---|---|---|")
    for path, values in handed.items():
        rounds = ", ".join(f"{value:,.0f}" for value in values)
        print(f"| {path}: {PATHS[path]} | {statistics.median(values):,.1f} | {rounds} |")
    worker_medians = {path: statistics.median(values) for path, values in handed.items()}
    print("\nwith 2 workers: " + ", ".join(
        f"{path} / {base}: {worker_medians[path] / worker_medians[base]:.2f}x"
        for path, base in (("previous", "old"), ("new", "previous"), ("uint8", "new"), ("uint8", "previous"),
                           ("uint8", "old"))) + "; with 2 workers / in this process: " + ", ".join(
        f"{path} {worker_medians[path] / medians[path]:.2f}" for path in WORKER_PATHS)
        + f"; load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
