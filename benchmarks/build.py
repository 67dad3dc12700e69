"""Throughput of `treeclip build` against a plain single-process decode → resize → JPEG-encode loop.

Generates N JPEGs (random sizes between 256 and 500 px, smooth random content, 10 species) listed in a
``csv:`` source, then times on the same files:

- ``plain loop``: PIL open → RGB → resize to PX×PX (bicubic) → JPEG encode, one process, no output files;
- ``treeclip build`` with 1 and 2 workers: the whole build (two source passes, alignment, sha256 of every
  file, decode with draft mode, resize, encode, tar writing, catalog, manifest).

Usage: ``python benchmarks/build.py [--images 1000] [--image-size 224] [--workers 1,2] [--shard-size 100]``
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from treeclip.data.build import build_dataset

GENERA = ("Alphornis", "Betornis", "Gammornis")
EPITHETS = ("albus", "niger", "ruber", "viridis", "major", "minor", "alpinus", "montanus", "borealis", "australis")
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def make_images(root: Path, count: int, seed: int = 0) -> tuple[Path, list[Path]]:
    """`count` JPEGs of 256–500 px and a csv: catalog naming 10 species."""
    rng = np.random.default_rng(seed)
    paths, rows = [], []
    for i in range(count):
        width, height = (int(v) for v in rng.integers(256, 501, size=2))
        coarse = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        noise = rng.integers(-12, 13, (height, width, 3))
        pixels = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int64) + noise
        path = root / "images" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
        paths.append(path)
        species = i % 10
        lineage = ("Animalia", "Chordata", "Aves", "Passeriformes", "Benchidae", GENERA[species // 4],
                   EPITHETS[species])
        rows.append({"path": f"images/{i:05d}.jpg", **dict(zip(RANKS, lineage)), "common": f"Bird {species}"})
    catalog = root / "catalog.csv"
    with catalog.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", *RANKS, "common"])
        writer.writeheader()
        writer.writerows(rows)
    return catalog, paths


def plain_loop(paths: list[Path], size: int) -> None:
    for path in paths:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        resized.save(io.BytesIO(), format="JPEG", quality=95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="treeclip-bench-") as tmp:
        root = Path(tmp)
        catalog, paths = make_images(root / "src", args.images)
        plain_loop(paths[:20], args.image_size)  # warm the page cache and PIL's plugins
        start = time.perf_counter()
        plain_loop(paths, args.image_size)
        results = [("plain loop (PIL, 1 process)", 1, time.perf_counter() - start)]
        for workers in (int(w) for w in args.workers.split(",")):
            out = root / f"out{workers}"
            seconds = time_build(catalog, out, images=args.images, image_size=args.image_size,
                                 shard_size=args.shard_size, workers=workers)
            results.append(("treeclip build", workers, seconds))
            shutil.rmtree(out)
    print_table(results, args.images)


def time_build(catalog: Path, out: Path, *, images: int, image_size: int, shard_size: int, workers: int,
               engine: str = "local") -> float:
    """Seconds of one whole `build_dataset` of the csv: `catalog` into `out` (checked: every image built)."""
    start = time.perf_counter()
    result = build_dataset(sources=[f"csv:{catalog}"], out=out, image_size=image_size, shard_size=shard_size,
                           workers=workers, val_fraction=0.05, engine=engine)
    seconds = time.perf_counter() - start
    if result.problems or result.counts["samples"] != images:
        raise SystemExit(f"build wrote {result.counts['samples']} of {images} images: {result.problems[:3]}")
    return seconds


def print_table(results: list[tuple[str, int, float]], count: int) -> None:
    base = count / results[0][2]
    print(f"{count} JPEGs of 256-500 px → shards")
    print(f"| {'method':<28} | workers | seconds | images/s | vs plain loop |")
    print(f"|{'-' * 30}|---------|---------|----------|---------------|")
    for name, workers, seconds in results:
        rate = count / seconds
        print(f"| {name:<28} | {workers:>7} | {seconds:7.2f} | {rate:8.1f} | {rate / base:12.2f}x |")


if __name__ == "__main__":
    main()
