"""Predict's pixel paths against the PIL float path on a trained model: answers, features and images/s.

`treeclip predict` can hand the model (`treeclip.predict.runner.decoded_batches`):

- **float** — the reference: PIL decode (JPEG draft mode) + the model's transform in float, in the decoding
  threads (what every release before uint8 batches did);
- **uint8, threads / processes** — the same PIL decode and resize/crop, the pixels sent as uint8 and
  normalised on the model's device (`treeclip.pixels.normalize_uint8`);
- **device** — JPEGs decoded by ``torchvision.io.decode_jpeg`` on the model's device (here the CPU, i.e.
  libjpeg-turbo; nvJPEG on CUDA) at full resolution, resized/cropped/normalised there by torch.

For each photo size (the trained model's source images upscaled to camera sizes and saved as JPEG quality 90)
it reports, per path, species top-1 agreement with the float path (95% Wilson interval), the mean and minimum
cosine of the image features, and images/s end to end on this CPU (one run, the machine's load noted).

Usage: ``python benchmarks/predict_paths.py --trained MODEL --bank BANK --images DIR [--per-size 100]``
(e.g. the demo's model, bank and world/images); writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.results import write_section  # noqa: E402
from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: E402
from treeclip.predict.runner import run_batches  # noqa: E402

PATHS = (("float, threads (reference)", "threads", False, True), ("uint8, threads", "threads", True, True),
         ("uint8, processes", "processes", True, True), ("device (cpu)", "device", False, False),
         ("float, threads, no draft mode", "threads", False, False))  # (label, decoder, uint8, draft mode)
NEAR_TIE = 1e-3  # reference probability gap between top-1 and top-2 under which an answer is a near-tie
SIZES = ((640, 480), (1024, 768), (4000, 3000))


def camera_jpegs(sources: list[Path], folder: Path, size: tuple[int, int]) -> list[str]:
    """Each source image upscaled (bicubic) to `size` and saved as a quality-90 JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, source in enumerate(sources):
        path = folder / f"{index:05d}.jpg"
        with Image.open(source) as image:
            image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def run_path(classifier: TreeOfLifeClassifier, paths: list[str], *, decoder: str, uint8: bool, batch: int,
             workers: int, draft: bool = True) -> tuple[torch.Tensor, float, Counter]:
    """(unit features of every image in order, images/s wall, where the device path decoded them)."""
    report: Counter = Counter()

    def score(pixels: torch.Tensor, names: list[str]) -> list[dict[str, Any]]:
        return [{"features": F.normalize(classifier.embed(pixels), dim=-1)}]

    start = time.perf_counter()
    batches = run_batches(paths, score=score, preprocess=classifier.preprocess, batch_size=batch, workers=workers,
                          draft_size=classifier.draft_size if draft else None, decoder=decoder, uint8=uint8,
                          device=classifier.device, report=report)
    features = torch.cat([rows[0]["features"] for rows in batches])
    return features, len(paths) / (time.perf_counter() - start), report


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    centre, spread = successes / n, z * z / n
    middle = (centre + spread / 2) / (1 + spread)
    half = z * math.sqrt(centre * (1 - centre) / n + spread / (4 * n)) / (1 + spread)
    return max(0.0, middle - half), min(1.0, middle + half)


def compare(classifier: TreeOfLifeClassifier, paths: list[str], *, batch: int,
            workers: int) -> tuple[list[dict], float]:
    """(one row per path: agreement of its species top-1 and its features with the float path's, and its top-1
    agreement with the float path decoding at full resolution (no JPEG draft mode, as the device path), the
    float path's median probability gap between its top-1 and top-2 species)."""
    run_path(classifier, paths[:batch], decoder="threads", uint8=False, batch=batch, workers=workers)  # warm-up
    runs = {label: run_path(classifier, paths, decoder=decoder, uint8=uint8, batch=batch, workers=workers,
                            draft=draft) for label, decoder, uint8, draft in PATHS}
    reference, full = runs[PATHS[0][0]][0], runs[PATHS[-1][0]][0]
    top2 = torch.softmax(classifier.logits(reference), dim=1).topk(2, dim=1).values
    gaps = top2[:, 0] - top2[:, 1]
    reference_top1, full_top1 = classifier.logits(reference).argmax(dim=1), classifier.logits(full).argmax(dim=1)
    rows = []
    for label, decoder, _, _ in PATHS:
        features, rate, report = runs[label]
        top1 = classifier.logits(features).argmax(dim=1)
        flips = top1 != reference_top1
        same, cosines = len(paths) - int(flips.sum()), (features * reference).sum(dim=1)
        rows.append({"path": label, "images": len(paths), "same": same, "interval": wilson(same, len(paths)),
                     "near_ties": int((flips & (gaps < NEAR_TIE)).sum()), "mean_cos": float(cosines.mean()),
                     "min_cos": float(cosines.min()), "same_as_full": int((top1 == full_top1).sum()), "rate": rate,
                     "fallbacks": sum(n for how, n in report.items() if how != "on the device")
                     if decoder == "device" else None})
    return rows, float(gaps.median())


def markdown(results: dict[str, list[dict]], settings: str, margin: str) -> str:
    lines = ["## Predict pixel paths against the PIL float path (`python benchmarks/predict_paths.py`)", "",
             "uint8 batches (normalised on the model's device) and JPEGs decoded on the device "
             "(`--decode device`; here torchvision's CPU decoder, libjpeg-turbo), each against the float path "
             "(PIL decode with JPEG draft mode + the float transform) on the same JPEGs, one run. images/s are "
             "this shared 2-core CPU's, end to end with the model: they rank nothing about a GPU host "
             "(`benchmarks/gpu.py` measures that).", "", settings, "",
             "| photos | path | images | same top-1 | agreement (95% interval) | flips at a near-tie "
             f"(top-2 gap < {NEAR_TIE:g}) | mean feature cosine | min feature cosine | same top-1 as float without "
             "draft mode | images/s (CPU) | decoded on the CPU instead |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size, rows in results.items():
        for row in rows:
            low, high = row["interval"]
            fallbacks = "" if row["fallbacks"] is None else str(row["fallbacks"])
            lines.append(f"| {size} | {row['path']} | {row['images']} | {row['same']} | "
                         f"{100 * row['same'] / row['images']:.2f}% ({100 * low:.2f}%-{100 * high:.2f}%) | "
                         f"{row['near_ties']} of {row['images'] - row['same']} | {row['mean_cos']:.6f} | "
                         f"{row['min_cos']:.6f} | {row['same_as_full']} | {row['rate']:.1f} | {fallbacks} |")
    lines += ["", margin]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", required=True, help="a trained small model (hub folder or checkpoint)")
    parser.add_argument("--bank", required=True, help="its label bank")
    parser.add_argument("--images", required=True, help="folder of the model's kind of images (searched recursively)")
    parser.add_argument("--per-size", type=int, default=100, help="photos per size (default 100)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES),
                        help="photo sizes, WIDTHxHEIGHT,... (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    sizes = [tuple(int(side) for side in size.split("x")) for size in args.sizes.split(",")]
    load_start = os.getloadavg()
    candidates = sorted(path for path in Path(args.images).rglob("*") if path.suffix.lower() in (".png", ".jpg"))
    step = max(1, len(candidates) // args.per_size)
    sources = candidates[::step][: args.per_size]
    classifier = TreeOfLifeClassifier.from_pretrained(args.trained, args.bank)
    results, gaps = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            paths = camera_jpegs(sources, Path(tmp) / f"{width}x{height}", (width, height))
            results[f"{width}x{height}"], gap = compare(classifier, paths, batch=args.batch, workers=args.workers)
            gaps.append(gap)
    load_end = os.getloadavg()
    settings = (f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, cores: {os.cpu_count()}, "
                f"CPU: {platform.machine()}, torch: {torch.__version__}, torch threads: {torch.get_num_threads()}, "
                f"load at start: {' '.join(f'{x:.1f}' for x in load_start)}, load at end: "
                f"{' '.join(f'{x:.1f}' for x in load_end)}, model: {Path(args.trained).name} "
                f"({classifier.preprocess.describe()}, draft >= {classifier.draft_size} px), bank: "
                f"{Path(args.bank).name}, {len(sources)} source images from {Path(args.images).name}, batch "
                f"{args.batch}, {args.workers} workers")
    margin = ("Median float-path probability gap between the top-1 and top-2 species, per size: "
              + ", ".join(f"{size} {gap:.4f}" for size, gap in zip(results, gaps, strict=True)) + ".")
    text = markdown(results, settings, margin)
    print(text)
    if not args.no_write:
        write_section("predict_paths.py", text)


if __name__ == "__main__":
    main()
