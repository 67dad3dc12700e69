"""``treeclip check``: verify a shard folder written by ``treeclip build``."""

from __future__ import annotations

import argparse
import sys

HELP = "verify a shard folder: tar integrity, images and texts of every sample, counts against the manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", metavar="SHARDS", help="the --out folder of treeclip build")


def run(args: argparse.Namespace) -> int:
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
