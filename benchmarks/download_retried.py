"""Peak memory and time of the ``download:`` split job as the status table grows (issue 15).

A ``treeclip download`` status table of N rows is generated (1% of the URLs retried: a failed row, then the
final ``ok`` row at the end of the table; the images need not exist), then each variant runs in its own
Python process: the table staged into parts of 250,000 rows (`DownloadSource.parts` without the retried
URLs: the floor both variants pay), then, with the peak restarted (``/proc/self/clear_refs``, Linux), the
retried URLs' final rows found over the staged parts, with wall and CPU seconds and peak memory (``VmHWM``):

- ``split``: as the split job finds them (an 8-byte digest per row sorted in place, then the repeated
  digests' rows by exact key);
- ``baseline``: as before issue 15 (a Python dict of every URL key's last row).

    python -m benchmarks.download_retried [--rows 1000000,3000000] [--dir /tmp/download-retried]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("baseline", "split")


def generate(rows: int, folder: Path) -> Path:
    """A status.csv of `rows` rows, 1% of its URLs retried (their final row last)."""
    from treeclip.data.download.journal import STATUS_COLUMNS  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    retried = rows // 100
    keys = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(rows - retried)]
    again = random.Random(0).sample(range(len(keys)), retried)
    failed = set(again)
    with open(folder / "status.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(STATUS_COLUMNS)
        for index in [*range(len(keys)), *again]:
            key, outcome = keys[index], "error" if index in failed else "ok"
            failed.discard(index)
            values = {"key": key, "url": f"https://example.org/img/{index}.jpg", "outcome": outcome,
                      "reason": "HTTP 500" if outcome == "error" else "", "bytes": "12345", "sha256": key * 2,
                      "path": f"images/{key[:2]}/{key}.jpg", "source": "table", "source_id": str(index),
                      "license": "cc-by", "owner": "Someone", "kingdom": "Animalia", "genus": "Morus",
                      "species": "alba", "origin": f"urls.csv:{index + 2}", "attempts": "1"}
            writer.writerow([values.get(name, "") for name in STATUS_COLUMNS])
    return folder


def _dict_retried(source: object, parts: list[object]) -> dict[str, int]:
    """The baseline: every URL key's last row in a Python dict (the split job before issue 15)."""
    from treeclip.data.sources.base import table_rows  # noqa: PLC0415
    from treeclip.formats.problems import Problem  # noqa: PLC0415

    last: dict[str, int] = {}
    again: set[str] = set()
    for part in parts:
        for item in table_rows(source.status, "download: status table", lambda t: {"key": t.find("key")}, part):  # type: ignore[attr-defined]
            if not isinstance(item, Problem):
                key = item[2]["key"]
                if key in last:
                    again.add(key)
                last[key] = item[1]
    return {key: last[key] for key in again}


def _peak_mb() -> float:
    """This process's peak resident memory since the last `_restart_peak` (``VmHWM``)."""
    status = Path("/proc/self/status").read_text()
    return round(int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024)


def _restart_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size (Linux)


def run_variant(variant: str, folder: Path) -> dict[str, float]:
    """One variant in this process (called in a child process by `main`): the table staged into parts, then
    (the peak restarted) the retried URLs found over the parts, each step timed with its own peak."""
    from treeclip.data.sources import open_source  # noqa: PLC0415

    source = open_source(f"download:{folder}")
    find = _dict_retried.__get__(source) if variant == "baseline" else source._retried  # noqa: SLF001
    source._retried = lambda parts: {}  # type: ignore[method-assign]  # noqa: SLF001
    prefix = folder / f"parts-{variant}" / "part"
    prefix.parent.mkdir(exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    parts = [part.table for part in source.parts(rows=250_000, prefix=str(prefix))]
    staged = {"stage_seconds": round(time.perf_counter() - wall, 2), "stage_peak_mb": _peak_mb(), "parts": len(parts)}
    _restart_peak()
    floor = _peak_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    retried = find(parts)
    return {**staged, "resolve_seconds": round(time.perf_counter() - wall, 2),
            "resolve_cpu_seconds": round(time.process_time() - cpu, 2), "resolve_peak_mb": _peak_mb(),
            "resolve_peak_above_start_mb": _peak_mb() - floor, "retried_urls": len(retried)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,3000000", help="status table sizes, comma-separated")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/download-retried"))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # a child process's one run
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.dir)))
        return 0
    for rows in (int(n) for n in args.rows.split(",")):
        folder = generate(rows, args.dir / f"rows-{rows}")
        results = {}
        for variant in VARIANTS:
            child = subprocess.run([sys.executable, "-m", "benchmarks.download_retried", "--variant", variant,
                                    "--dir", str(folder)], capture_output=True, text=True, check=True)
            results[variant] = json.loads(child.stdout.splitlines()[-1])
        ratio = results["split"]["resolve_peak_above_start_mb"] / max(1, results["baseline"]["resolve_peak_above_start_mb"])
        print(json.dumps({"rows": rows, "load": round(os.getloadavg()[0], 1), **results,
                          "resolve_memory_ratio_split_vs_baseline": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
