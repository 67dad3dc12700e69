"""``treeclip build``: turn image sources into WebDataset shards, a catalog and an alignment report."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from treeclip.cli._options import RAY_ENGINE, add_engine_arguments

if TYPE_CHECKING:
    from treeclip.data.records import Problem

REQUIRES = (RAY_ENGINE,)
HELP = "build WebDataset shards + catalog from image sources (inat21, bioscan, eol, tol10m, csv, folder, wds)"
SOURCE_KINDS = ("inat21:ROOT, bioscan:TSV[,IMAGE_ROOT], eol:MANIFEST_CSV[,IMAGE_ROOT],TAXONOMY_FILE, "
                "tol10m:CATALOG_CSV,IMAGE_ROOT, csv:FILE, folder:ROOT[,TAXONOMY_CSV], wds:GLOB")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", action="append", required=True, metavar="KIND:PATH",
                        help=f"an image source (repeatable; earlier sources win exact duplicates): {SOURCE_KINDS}")
    parser.add_argument("--out", required=True, metavar="SHARDS", help="output folder (must be new or empty)")
    parser.add_argument("--image-size", type=int, default=224, metavar="PX", help="stored image size (default 224)")
    parser.add_argument("--resize", choices=("squash", "shorter"), default="squash",
                        help="squash to PX×PX as BioCLIP's shards (default), or keep aspect with shorter side PX")
    parser.add_argument("--shard-size", type=int, default=1000, metavar="N", help="images per shard (default 1000)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="processes that decode and write shards (default: up to 4)")
    parser.add_argument("--exclude", action="append", default=[], metavar="FILE",
                        help="species names (one per line) or a catalog CSV/Parquet of species, sha256 or paths "
                             "to keep out, e.g. an evaluation set (repeatable)")
    parser.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                        help="fraction of images in the val split, chosen by a hash of each image's id, so re-runs and "
                             "added sources never move an image; sources' own splits are ignored (default 0.05)")
    parser.add_argument("--backbone", metavar="FILE",
                        help="a reference taxonomy (7-rank CSV or parent-pointer table) to fill missing ranks")
    parser.add_argument("--quality", type=int, default=95, metavar="Q",
                        help="JPEG quality of stored images (default 95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and shard-order hashes (default 0)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted build in --out")
    add_engine_arguments(parser, local="processes writing shards", shared_files="inputs and --out")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415 - keep `treeclip build --help` light

    from treeclip.data.build import build_dataset  # noqa: PLC0415
    from treeclip.errors import InputError  # noqa: PLC0415

    bar = tqdm(unit="img", desc="build", disable=None, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    def report(problem: Problem) -> None:
        tqdm.write(f"{problem.origin}: {problem.reason}", file=sys.stderr)

    try:
        result = build_dataset(
            sources=args.source, out=args.out, image_size=args.image_size, resize=args.resize,
            shard_size=args.shard_size, workers=args.workers, exclude=args.exclude, val_fraction=args.val_fraction,
            backbone=args.backbone, resume=args.resume, seed=args.seed, quality=args.quality,
            on_problem=report, progress=progress, engine=args.engine, ray_address=args.ray_address,
        )
    finally:
        bar.close()
    print(_summary(result.out, result.manifest))
    if result.problems:
        raise InputError(f"{len(result.problems)} problems (listed above); the other images were built")
    return 0


def _summary(out: object, manifest: dict[str, Any]) -> str:
    counts, splits = manifest["counts"], manifest["splits"]
    shards = ", ".join(f"{name} {s['samples']} images in {s['shards']} shards" for name, s in splits.items())
    dropped = ", ".join(f"{k} {counts[k]}" for k in ("unresolved", "excluded", "duplicates", "unreadable",
                                                     "bad_images", "repeated_id") if counts.get(k))
    return f"{out}: {counts['records']} records → {shards}" + (f"; left out: {dropped}" if dropped else "")
