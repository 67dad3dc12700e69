"""``treeclip download``: fetch the images of URL catalogs into a folder ``treeclip build`` reads."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from treeclip.cli._options import Requirement

REQUIRES = (Requirement("download", ("httpx", "pyrate_limiter", "tenacity")),)
HELP = ("fetch the images of URL catalogs (EOL media manifest, GBIF download, TreeOfLife-200M, CSV of url + taxa) "
        "into DIR for treeclip build --source download:DIR; resumable")
PROGRESS_EVERY_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("catalogs", nargs="+", metavar="CATALOG",
                        help="an EOL media manifest, a GBIF download folder (multimedia.txt + occurrence.txt), a "
                             "TreeOfLife-200M catalog or a CSV/TSV/Parquet with a url column and rank columns")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder; run again to resume")
    parser.add_argument("--taxonomy", metavar="FILE",
                        help="page-id taxonomy for EOL manifests (7-rank table with page_id, or EOL's taxon.tab)")
    parser.add_argument("--workers", type=int, default=8, metavar="N", help="parallel requests (default 8)")
    parser.add_argument("--rate", type=float, default=10.0, metavar="R",
                        help="requests per second per host, 0 for no limit (default 10)")
    parser.add_argument("--retries", type=int, default=4, metavar="N",
                        help="retries of 429/5xx/timeouts/truncated bodies, with exponential backoff (default 4)")
    parser.add_argument("--backoff", type=float, default=1.0, metavar="S",
                        help="first backoff wait in seconds, doubling per retry (default 1)")
    parser.add_argument("--max-wait", type=float, default=60.0, metavar="S",
                        help="longest wait between tries, also caps a server's Retry-After (default 60)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="per-request timeout (default 30)")
    parser.add_argument("--max-mb", type=float, default=50.0, metavar="MB", help="largest image accepted (default 50)")
    parser.add_argument("--max-redirects", type=int, default=5, metavar="N", help="redirects followed (default 5)")
    parser.add_argument("--part", default="0/1", metavar="I/N",
                        help="fetch only part I of N (by a hash of each URL): N machines or processes share the "
                             "catalogs, each with its own --out; build with one --source download:DIR per part")
    parser.add_argument("--retry-failed", action="store_true",
                        help="on resume, try again the URLs an earlier run recorded as failed")


def _check(args: argparse.Namespace) -> None:
    from treeclip.errors import UsageError  # noqa: PLC0415

    for name in ("workers", "retries", "max_redirects"):
        if getattr(args, name) < (1 if name == "workers" else 0):
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be "
                             f"{'at least 1' if name == 'workers' else 'zero or more'}")
    for name in ("rate", "backoff", "max_wait", "timeout", "max_mb"):
        value = getattr(args, name)
        if value < 0 or (value == 0 and name in ("timeout", "max_mb")):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be positive")
    for catalog in args.catalogs:
        if not Path(catalog).exists():
            raise UsageError(f"catalog {catalog}: no such file or folder")
    index, slash, parts = args.part.partition("/")
    if not (slash and index.isdigit() and parts.isdigit() and int(index) < int(parts)):
        raise UsageError(f"--part {args.part}: expected I/N with 0 <= I < N, e.g. 0/4")
    if args.taxonomy and not Path(args.taxonomy).is_file():
        raise UsageError(f"--taxonomy {args.taxonomy}: no such file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: is a file; give a folder")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from treeclip.data.download.runner import download  # noqa: PLC0415 - httpx etc. load only here
    from treeclip.formats.problems import summary_lines  # noqa: PLC0415

    progress = _Progress()
    summary = download(args.catalogs, args.out, taxonomy=args.taxonomy, workers=args.workers,
                       retry_failed=args.retry_failed, part=_part(args.part), progress=progress, rate=args.rate, retries=args.retries,
                       backoff=args.backoff, max_wait=args.max_wait, timeout=args.timeout,
                       max_bytes=int(args.max_mb * (1 << 20)), max_redirects=args.max_redirects)
    if summary.problems:
        print(f"{len(summary.problems)} catalog rows skipped (all in {Path(args.out) / 'problems.csv'}):",
              file=sys.stderr)
        print("\n".join(summary_lines(summary.problems)), file=sys.stderr)
    print(_summary_text(summary, args.out))
    if summary.tried + summary.skipped + summary.other_parts == 0:
        print(f"treeclip download: nothing to fetch: the catalogs gave no usable rows "
              f"({len(summary.problems)} problems, see {Path(args.out) / 'problems.csv'})", file=sys.stderr)
        return 1
    return 1 if summary.failed or summary.problems else 0


def _part(text: str) -> tuple[int, int]:
    index, _, parts = text.partition("/")
    return int(index), int(parts)


def _summary_text(summary: Any, out: str) -> str:
    lines = [f"{out}: {summary.fetched} fetched ({summary.bytes / 1e6:.1f} MB), {summary.recovered} recovered, "
             f"{summary.skipped} already done, {summary.failed} failed, {len(summary.problems)} catalog problems"]
    lines += [f"{count:>8}  {reason}" for reason, count in summary.reasons.most_common()]
    if summary.other_parts:
        lines.append(f"{summary.other_parts} URLs left to the other --part runs")
    if summary.torn_bytes:
        lines.append(f"repaired a torn last line of status.csv ({summary.torn_bytes} bytes) left by a killed run")
    lines.append(f"status table: {Path(out) / 'status.csv'}; build with: treeclip build --source download:{out}")
    return "\n".join(lines)


class _Progress:
    """A progress line on stderr every 10 s: settled URLs by outcome."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, summary: Any) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            print(f"download: {summary.tried} tried ({summary.fetched} ok, {summary.failed} failed, "
                  f"{summary.recovered} recovered), {summary.bytes / 1e6:.1f} MB", file=sys.stderr, flush=True)
