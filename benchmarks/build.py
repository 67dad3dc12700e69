"""Throughput of `treeclip build` against a plain single-process decode → resize → JPEG-encode loop.

Generates N distinct JPEGs of camera-like sizes (4 in 5 are 1024×768 or 768×1024, 1 in 5 is 2048×1536;
smooth colour regions plus fine noise, quality 90; each a different crop of one random canvas, so no two
are duplicates) listed in a ``csv:`` source, then times on the same files, one after the other:

- ``plain loop``: PIL open → RGB → resize to PX×PX (bicubic) → JPEG encode (quality 95), one process, no
  output files; the issue's baseline;
- ``plain loop + draft``: the same with ``Image.draft`` (libjpeg DCT scaling) before decoding, to show how
  much of the build's speed is draft mode alone;
- ``treeclip build`` with each worker count: the whole build (source passes, alignment, sha256 at planning
  and again when each image is read, decode with draft mode, resize, encode, tar, catalog, journal).

The machine may be shared, so each figure comes with the 1-minute load average before it and with images per
CPU-second (this process's CPU time plus its finished children's, so worker processes count) beside images
per wall second. "per core" ratios compare images per CPU-second with the plain loop's.

The table goes to its own marked section of ``benchmarks/RESULTS.md`` (the other sections are kept).

Usage: ``python benchmarks/build.py [--images 5000] [--image-size 224] [--workers 1,2] [--shard-size 250]
[--results FILE]``
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import RESULTS, write_section  # noqa: E402
from treeclip.data.build import build_dataset  # noqa: E402

GENERA = ("Alphornis", "Betornis", "Gammornis")
EPITHETS = ("albus", "niger", "ruber", "viridis", "major", "minor", "alpinus", "montanus", "borealis", "australis")
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
SIZES = ((1024, 768), (768, 1024), (1024, 768), (768, 1024), (2048, 1536))  # cycled: 1 in 5 is large
IMAGE_NOTE = "JPEGs, 4/5 1024x768 or 768x1024 and 1/5 2048x1536"


@dataclass(frozen=True)
class Timing:
    """One timed run: images, wall seconds, CPU seconds (process + finished children), load before it."""

    images: int
    wall: float
    cpu: float
    load: float

    @property
    def per_second(self) -> float:
        return self.images / self.wall

    @property
    def per_cpu_second(self) -> float:
        return self.images / self.cpu


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and by its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(images: int, fn: Callable[[], object]) -> Timing:
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return Timing(images, time.perf_counter() - wall, cpu_seconds() - cpu, load)


def make_images(root: Path, count: int, seed: int = 0) -> tuple[Path, list[Path]]:
    """`count` distinct JPEGs of camera-like sizes (see the module docstring) and a csv: catalog of 10 species."""
    rng = np.random.default_rng(seed)
    canvas = _canvas(rng, 2400, 3200)
    paths, rows = [], []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        top, left = (int(v) for v in rng.integers(0, (canvas.shape[0] - height, canvas.shape[1] - width)))
        path = root / "images" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas[top:top + height, left:left + width]).save(path, format="JPEG", quality=90)
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


def _canvas(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random colour regions (~100 px) plus ±12 per-pixel noise: photo-like JPEG cost."""
    coarse = Image.fromarray(rng.integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels += rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return pixels.clip(0, 255).astype(np.uint8)


def plain_loop(paths: list[Path], size: int, *, draft: bool = False) -> None:
    """The baseline: open, (optionally draft,) RGB, bicubic resize to size×size, JPEG encode in memory."""
    for path in paths:
        with Image.open(path) as image:
            if draft:
                image.draft("RGB", (size, size))
            resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        resized.save(io.BytesIO(), format="JPEG", quality=95)


def time_plain(paths: list[Path], size: int, *, draft: bool = False) -> Timing:
    plain_loop(paths[:20], size, draft=draft)  # warm the page cache and PIL's plugins
    return timed(len(paths), lambda: plain_loop(paths, size, draft=draft))


def time_build(catalog: Path, out: Path, *, images: int, image_size: int, shard_size: int, workers: int,
               engine: str = "local") -> Timing:
    """One whole `build_dataset` of the csv: `catalog` into `out` (checked: every image built)."""
    def build() -> None:
        result = build_dataset(sources=[f"csv:{catalog}"], out=out, image_size=image_size, shard_size=shard_size,
                               workers=workers, val_fraction=0.05, engine=engine)
        if result.problems or result.counts["samples"] != images:
            first = result.manifest["problems"]["first"][:3]
            raise SystemExit(f"build wrote {result.counts['samples']} of {images} images: {first}")
    return timed(images, build)


def table(results: list[tuple[str, int, Timing]], plain: Timing) -> str:
    """Markdown: wall and per-CPU-second rates, each against the plain loop's."""
    lines = ["| method | workers | load before | seconds | images/s | vs plain (wall) | images/CPU-s | "
             "vs plain (per core) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, workers, t in results:
        lines.append(f"| {name} | {workers} | {t.load:.1f} | {t.wall:.1f} | {t.per_second:.1f} | "
                     f"{t.per_second / plain.per_second:.2f}x | {t.per_cpu_second:.1f} | "
                     f"{t.per_cpu_second / plain.per_cpu_second:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"markdown output (default {RESULTS})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="treeclip-bench-") as tmp:
        root = Path(tmp)
        catalog, paths = make_images(root / "src", args.images)
        plain = time_plain(paths, args.image_size)
        results = [("plain loop (PIL)", 1, plain),
                   ("plain loop + draft", 1, time_plain(paths, args.image_size, draft=True))]
        for workers in (int(w) for w in args.workers.split(",")):
            out = root / f"out{workers}"
            results.append(("treeclip build", workers, time_build(
                catalog, out, images=args.images, image_size=args.image_size, shard_size=args.shard_size,
                workers=workers)))
            shutil.rmtree(out)
    text = (f"## Build throughput (`python benchmarks/build.py --images {args.images}`)\n\n"
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.images} {IMAGE_NOTE} → "
            f"{args.image_size} px shards of {args.shard_size}; {os.cpu_count()} cores, shared (1-min load "
            f"averages listed). Per core = images per CPU-second (this process and its workers) against the "
            f"plain loop's.\n\n{table(results, plain)}\n")
    write_section("build.py", text, args.results)
    print(text)


if __name__ == "__main__":
    main()
