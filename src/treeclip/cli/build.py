"""``treeclip build``: turn image sources into WebDataset shards, a catalog and an alignment report."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from treeclip.cli._options import RAY_ENGINE, add_engine_arguments

REQUIRES = (RAY_ENGINE,)
HELP = "build WebDataset shards + catalog from image sources (inat21, bioscan, eol, tol10m, csv, folder, wds, download)"
SOURCE_KINDS = ("inat21:ROOT, bioscan:TSV[,IMAGE_ROOT], eol:MANIFEST_CSV[,IMAGE_ROOT],TAXONOMY_FILE, "
                "tol10m:CATALOG_CSV,IMAGE_ROOT, csv:FILE, folder:ROOT[,TAXONOMY_CSV], wds:GLOB, download:DIR")


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
    parser.add_argument("--backbone", action="append", default=[], metavar="FILE",
                        help="a reference taxonomy (rank table, checklist or parent-pointer table) to fill missing "
                             "ranks; repeatable: partial tables complete one another")
    parser.add_argument("--columns", metavar="ROLE=COLUMN[,...]",
                        help="column names for tables no rule recognises, e.g. class=cls,species=epithet,path=img")
    parser.add_argument("--allow-absolute-paths", action="store_true",
                        help="let csv: tables name images outside their own folder (absolute or ../ paths)")
    parser.add_argument("--quality", type=int, default=95, metavar="Q",
                        help="JPEG quality of stored images (default 95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and shard-order hashes (default 0)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted build in --out")
    add_engine_arguments(parser, local="processes reading sources and writing shards, threads hashing",
                         shared_files="inputs and --out")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415 - keep `treeclip build --help` light

    from treeclip.data.build import build_dataset  # noqa: PLC0415
    from treeclip.errors import InputError  # noqa: PLC0415
    from treeclip.formats import parse_column_map  # noqa: PLC0415
    from treeclip.formats.problems import summary_lines  # noqa: PLC0415

    columns = parse_column_map(args.columns)
    bar = tqdm(unit="img", desc="build", disable=None, file=sys.stderr)
    progress = _Progress(bar)
    try:
        result = build_dataset(
            sources=args.source, out=args.out, image_size=args.image_size, resize=args.resize,
            shard_size=args.shard_size, workers=args.workers, exclude=args.exclude, val_fraction=args.val_fraction,
            backbone=args.backbone, columns=columns, allow_absolute_paths=args.allow_absolute_paths,
            resume=args.resume, seed=args.seed, quality=args.quality, progress=progress, on_problem=progress.problem,
            engine=args.engine, ray_address=args.ray_address,
        )
    finally:
        bar.close()
    for line in summary_lines(result.problems):  # read back from problems.csv, which the build wrote
        print(line, file=sys.stderr)
    print(_summary(result.out, result.manifest))
    if not result.counts.get("samples"):
        raise InputError(f"--out {result.out}: the build wrote no images ({len(result.problems)} problems, see "
                         f"{result.out / 'problems.csv'} and dropped.csv); check the --source paths, --columns "
                         "and --exclude")
    if result.problems:
        raise InputError(f"{len(result.problems)} problems (counted above, all in {result.out / 'problems.csv'}); "
                         "the other images were built")
    return 0


class _Progress:
    """Build progress: a bar on a terminal; plain "build: N/M images" lines (every 10%) when piped."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.done = 0
        self.problems = 0
        self.next_line = 0.0

    def problem(self, _problem: object) -> None:
        """Count a problem on the bar (they are listed, counted by reason, after the build)."""
        self.problems += 1
        self.bar.set_postfix(problems=self.problems, refresh=False)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done)
        self.done += done
        if self.bar.disable and total and self.done >= self.next_line:
            print(f"build: {self.done}/{total} images, {self.problems} problems", file=sys.stderr, flush=True)
            self.next_line = self.done + max(1, total // 10)


def _summary(out: object, manifest: dict[str, Any]) -> str:
    counts, splits = manifest["counts"], manifest["splits"]
    shards = ", ".join(f"{name} {s['samples']} images in {s['shards']} shards" for name, s in splits.items())
    dropped = ", ".join(f"{k} {counts[k]}" for k in ("unresolved", "excluded", "duplicates", "unreadable",
                                                     "bad_images", "repeated_id") if counts.get(k))
    partial = (f"; {counts['no_kingdom']} kept without a kingdom (species-only labels: --backbone fills their "
               "higher ranks)") if counts.get("no_kingdom") else ""
    return (f"{out}: {counts['records']} records → {shards}" + (f"; left out: {dropped}" if dropped else "")
            + partial + _gaps(counts))


def _gaps(counts: dict[str, int]) -> str:
    """The rows whose lineage had a gap (a rank empty between two given ones), filled or cut back."""
    filled, kept = counts.get("gap_filled", 0), counts.get("gap_kept", 0)
    if not filled + kept:
        return ""
    return (f"; {filled + kept} rows had a gap in their ranks (e.g. family empty under a known order): {filled} "
            f"filled by the alignment, {kept} kept from their deepest unbroken run of ranks down"
            + (" (--backbone fills them)" if kept else ""))
