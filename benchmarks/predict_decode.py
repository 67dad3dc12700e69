"""Predict's decoding, threads against worker processes, side by side in one run on the same JPEG files.

`treeclip.predict.runner.decoded_batches` decodes + preprocesses in a thread pool or in forked DataLoader
worker processes. Threads share one GIL: the Python-level part of every image (PIL calls, the transform's
steps, tensor wrapping) runs one thread at a time, so the pool stopped at ~410 images/s on a 16-core H200 host
whatever its size. This script measures, on this machine:

1. the CPU cost of each stage for one image on one thread (decode with JPEG draft mode, then each step of the
   model's inference transform);
2. images/s (wall) and images per CPU-second (this process plus its reaped workers) of the decoding alone, for
   threads and processes at 1, 2 and all cores' workers, with the time to the first batch (start-up) and the
   pixels of every configuration compared bit for bit with one thread's;
3. decoding beside a thread busy with pure Python (what the main thread is while it drives a GPU): threads
   against one worker process (the GIL);
4. end-to-end `TreeOfLifeClassifier.predict` on the CPU (a small model, so decoding matters) with each decoder
   for 1, 2, 4, 8, 16 and 32 batches and all the images: the crossover where worker processes pay for themselves.

Usage: ``python benchmarks/predict_decode.py [--images 512] [--size 640x480] [--batch 32] [--model ViT-B-16]``
Prints markdown tables; the figures are kept in benchmarks/RESULTS.md (section "Predict decoding").
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from treeclip.data.images import decode_image
from treeclip.model import create_model
from treeclip.predict.runner import decoded_batches

Transform = Callable[[Image.Image], torch.Tensor]


def write_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """Camera-like JPEGs (smooth colour fields with fine grain, quality 90), as `benchmarks/gpu.py` writes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        grain = rng.normal(0, 6, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(base, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children already reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stage_costs(paths: list[str], preprocess: Transform, draft_size: int | None) -> list[tuple[str, float]]:
    """CPU ms per image of decoding and of each transform step, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    totals: dict[str, float] = {}
    for path in paths:
        start = time.process_time()
        value = decode_image(path, draft_size=draft_size)
        totals["decode (JPEG draft mode)"] = totals.get("decode (JPEG draft mode)", 0.0) + time.process_time() - start
        for step in preprocess.transforms:
            start = time.process_time()
            value = step(value)
            name = getattr(step, "__name__", type(step).__name__)
            totals[name] = totals.get(name, 0.0) + time.process_time() - start
    torch.set_num_threads(threads)
    rows = [(name, 1000 * total / len(paths)) for name, total in totals.items()]
    return [*rows, ("total", sum(ms for _, ms in rows))]


@dataclass
class Run:
    decoder: str
    workers: int
    images: int
    wall_s: float
    cpu_s: float
    first_batch_s: float
    output: torch.Tensor  # what the run produced (pixels, or the predicted scores), compared across decoders

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s

    @property
    def images_per_cpu_s(self) -> float:
        return self.images / self.cpu_s


def decode_run(paths: list[str], preprocess: Transform, *, decoder: str, workers: int, batch: int,
               draft_size: int | None) -> Run:
    """Decode every path once through `decoded_batches`, timing wall, CPU and the first batch."""
    cpu, start = cpu_seconds(), time.perf_counter()
    first, batches = 0.0, []
    for decoded in decoded_batches(paths, paths, preprocess=preprocess, batch_size=batch, workers=workers,
                                   draft_size=draft_size, decoder=decoder):
        first = first or time.perf_counter() - start
        batches.append(decoded.pixels)
    wall = time.perf_counter() - start
    return Run(decoder, workers, len(paths), wall, cpu_seconds() - cpu, first, torch.cat(batches))


def best_of(repeats: int, make: Callable[[], Run]) -> Run:
    runs = [make() for _ in range(repeats)]
    return min(runs, key=lambda run: run.wall_s)


def side_by_side(paths: list[str], preprocess: Transform, *, batch: int, draft_size: int | None,
                 repeats: int) -> list[Run]:
    counts = sorted({1, 2, os.cpu_count() or 1})
    runs = []
    for workers in counts:
        for decoder in ("threads", "processes"):
            runs.append(best_of(repeats, lambda d=decoder, w=workers: decode_run(
                paths, preprocess, decoder=d, workers=w, batch=batch, draft_size=draft_size)))
    return runs


def beside_busy_python(paths: list[str], preprocess: Transform, *, batch: int, draft_size: int | None
                       ) -> list[tuple[str, float, float]]:
    """(decoder, images/s alone, images/s while another thread of this process runs pure Python), 1 worker.

    On a GPU the main thread is such a thread much of the time (launching kernels, building rows): each time a
    decoding thread gives the GIL back (around every PIL and torch call), it waits up to the switch interval
    (5 ms) to get it again. A worker process has its own GIL."""
    rows = []
    for decoder in ("threads", "processes"):
        alone = decode_run(paths, preprocess, decoder=decoder, workers=1, batch=batch, draft_size=draft_size)
        stop = threading.Event()
        spinner = threading.Thread(target=_spin, args=(stop,))
        spinner.start()
        try:
            busy = decode_run(paths, preprocess, decoder=decoder, workers=1, batch=batch, draft_size=draft_size)
        finally:
            stop.set()
            spinner.join()
        rows.append((decoder, alone.images_per_s, busy.images_per_s))
    return rows


def _spin(stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        count += 1


def predict_side_by_side(paths: list[str], *, model_name: str, batch: int, workers: int, repeats: int
                         ) -> list[tuple[int, Run, Run]]:
    """(images, threads run, processes run) of `TreeOfLifeClassifier.predict` on the CPU (1,000 taxa) for
    1, 2, 4, 8, 16 and 32 batches and all the images: where worker processes start to pay for themselves."""
    from treeclip.model.bank import LabelBank  # noqa: PLC0415
    from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: PLC0415

    model, _, preprocess, _ = create_model(model_name)
    dim = model.text_projection.shape[1] if model.text_projection is not None else model.visual.output_dim
    matrix = np.random.default_rng(0).standard_normal((dim, 1000)).astype(np.float32)
    bank = LabelBank(matrix / np.linalg.norm(matrix, axis=0),
                     [("K", "P", "C", "O", "F", f"G{i // 8}", f"s{i}") for i in range(1000)], [""] * 1000)
    classifier = TreeOfLifeClassifier(model=model.eval(), preprocess=preprocess, bank=bank)
    classifier.predict(paths[:batch], batch_size=batch, workers=workers, decoder="threads")  # warm-up

    def timed(subset: list[str], decoder: str) -> Run:
        cpu, start = cpu_seconds(), time.perf_counter()
        rows = classifier.predict(subset, batch_size=batch, workers=workers, decoder=decoder)
        wall = time.perf_counter() - start
        return Run(decoder, workers, len(subset), wall, cpu_seconds() - cpu, 0.0,
                   torch.tensor([row["score"] for row in rows]))

    counts = sorted({min(len(paths), n * batch) for n in (1, 2, 4, 8, 16, 32)} | {len(paths)})
    return [(count, best_of(repeats, lambda c=count: timed(paths[:c], "threads")),
             best_of(repeats, lambda c=count: timed(paths[:c], "processes"))) for count in counts]


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", default="640x480", help="JPEG width x height (default 640x480)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-16", help="whose preprocessing is measured (default ViT-B-16)")
    parser.add_argument("--e2e-model", default="treeclip-tiny", help="model of the end-to-end predict rows")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per configuration")
    args = parser.parse_args()
    size = tuple(int(part) for part in args.size.lower().split("x"))
    start_load, started = load(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    _, _, preprocess, _ = create_model(args.model)
    draft = preprocess.draft_size
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp) / "jpegs", args.images, size)
        decode_run(paths[: args.batch], preprocess, decoder="threads", workers=1, batch=args.batch,
                   draft_size=draft)  # warm the page cache and the imports
        costs = stage_costs(paths[:64], preprocess, draft)
        runs = side_by_side(paths, preprocess, batch=args.batch, draft_size=draft, repeats=args.repeats)
        contention = beside_busy_python(paths[: 3 * args.batch], preprocess, batch=args.batch, draft_size=draft)
        predicted = predict_side_by_side(paths, model_name=args.e2e_model, batch=args.batch, workers=2,
                                         repeats=args.repeats)
    reference = runs[0].output
    print(f"date: {started}, cores: {os.cpu_count()}, CPU: {platform.processor() or platform.machine()}, "
          f"torch: {torch.__version__}, torch threads: {torch.get_num_threads()}, load at start: {start_load}, "
          f"load at end: {load()}, photos: {args.images} "
          f"JPEGs {size[0]}x{size[1]}, {args.model} preprocessing ({preprocess.describe()}, draft >= {draft} px), "
          f"batch {args.batch}, best of {args.repeats}\n")
    print("| stage (1 thread) | CPU ms per image |\n|---|---:|")
    for name, ms in costs:
        print(f"| {name} | {ms:.2f} |")
    print(f"\nOne core at that cost: {1000 / costs[-1][1]:,.0f} images/s.\n")
    print("| decoder | workers | images/s (wall) | vs threads, same workers | images per CPU-s | first batch s "
          "| pixels equal to 1 thread's |\n|---|---:|---:|---:|---:|---:|---|")
    threads_rate = {run.workers: run.images_per_s for run in runs if run.decoder == "threads"}
    for run in runs:
        print(f"| {run.decoder} | {run.workers} | {run.images_per_s:,.1f} | "
              f"{run.images_per_s / threads_rate[run.workers]:.2f}x | {run.images_per_cpu_s:,.1f} | "
              f"{run.first_batch_s:.3f} | {torch.equal(run.output, reference)} |")
    print(f"\n| 1 decoding worker, {3 * args.batch} images | images/s alone | images/s beside a busy Python thread | "
          "ratio |\n|---|---:|---:|---:|")
    for decoder, alone, busy in contention:
        print(f"| {decoder} | {alone:,.1f} | {busy:,.1f} | {busy / alone:.2f}x |")
    print(f"\n| {args.e2e_model} predict, CPU, 1,000 taxa, 2 workers: images | threads images/s | processes "
          "images/s | processes / threads | threads images per CPU-s | processes images per CPU-s | same scores |\n"
          "|---:|---:|---:|---:|---:|---:|---|")
    for count, threads, processes in predicted:
        print(f"| {count} | {threads.images_per_s:,.1f} | {processes.images_per_s:,.1f} | "
              f"{processes.images_per_s / threads.images_per_s:.2f}x | {threads.images_per_cpu_s:,.1f} | "
              f"{processes.images_per_cpu_s:,.1f} | {torch.equal(threads.output, processes.output)} |")


if __name__ == "__main__":
    main()
