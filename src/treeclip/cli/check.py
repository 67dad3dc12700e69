"""``treeclip check``: verify a shard folder written by ``treeclip build``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "verify a shard folder: tar integrity, images and texts of every sample, counts against the manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", metavar="SHARDS", help="the --out folder of treeclip build")


def _check_folder(shards: Path) -> None:
    """One-line `UsageError` for a path that is not a shard folder at all (missing, a file, or a folder with
    no shard, manifest or unfinished build in it), before anything heavy is imported."""
    from treeclip.errors import UsageError  # noqa: PLC0415 - light

    if not shards.is_dir():
        raise UsageError(f"{shards}: {'is a file' if shards.exists() else 'does not exist'}; give the --out "
                         "folder of a treeclip build")
    started = (shards / "manifest.json").is_file() or (shards / ".build").exists()
    if not started and next(shards.rglob("*.tar"), None) is None:
        raise UsageError(f"{shards}: holds no shards (.tar files) and no manifest.json, so it is not the output "
                         "of treeclip build; give the build's --out folder")


def run(args: argparse.Namespace) -> int:
    _check_folder(Path(args.shards))
    from treeclip.data.check import check_shards  # noqa: PLC0415 - keep `--help` light

    report = check_shards(args.shards)
    splits = ", ".join(f"{split or '.'} {n}" for split, n in sorted(report.split_counts().items()))
    print(f"{args.shards}: {len(report.shards)} shards, {len(report.keys)} samples ({splits or 'none'})")
    if report.ok:
        print("OK")
        return 0
    for problem in report.problems:
        sys.stderr.write(f"{problem}\n")
    sys.stderr.write(f"{len(report.problems)} problems\n")
    return 1
