"""Pass 1 and pass 2 of a build's plan with a big one-file catalog cut into parts, on 1 and 2 workers.

A generated ``csv:`` catalog of N rows (`benchmarks.catalog_memory`'s layout: 50,000 species) whose rows name
20 real tiny images, reused, so every row costs the real ``os.path.isfile`` of the ``csv:`` source (the stat
that is slow on a cluster's shared filesystem) in every worker. Each run plans the build
(`treeclip.data.plan.plan_build`, the local engine) up to pass 2 (the later stages are measured by
`benchmarks.catalog_memory`) in a fresh process and reports, per phase, wall seconds and CPU seconds (that
process plus its finished pool processes): the split (the CSV staged to Arrow part files), pass 1 and pass 2;
and the planning process's peak resident memory (with 2 workers the jobs run in pool processes, so that peak
is the driver's own, plus the split job's, which runs in it).

    python -m benchmarks.plan_parts [--rows 1000000] [--part-rows 131072] [--workers 1,2]

Runs: each worker count with parts of `--part-rows`, and 2 workers with the catalog as one part (what the
plan did before sources were cut into parts). Numbers depend on the machine's load, printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGES = 20


def write_catalog(folder: Path, rows: int, *, chunk: int = 500_000) -> Path:
    """``catalog.csv`` of `rows` rows naming ``images/0.jpg`` ... ``images/19.jpg`` (written here), in turn."""
    import numpy as np  # noqa: PLC0415
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from benchmarks.catalog_memory import _chunk, _schema  # noqa: PLC0415 - the same generated rows

    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index in range(IMAGES):
        Image.new("RGB", (4, 4), (index * 10, 0, 0)).save(folder / "images" / f"{index}.jpg")
    catalog = folder / "catalog.csv"
    with pacsv.CSVWriter(catalog, _schema(pa)) as writer:
        for start in range(0, rows, chunk):
            table = _chunk(pa, start, min(rows, start + chunk))
            paths = np.char.mod("images/%d.jpg", np.arange(start, start + table.num_rows) % IMAGES)
            writer.write_table(table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)))
    return catalog


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def plan_once(catalog: Path, out: Path, workers: int, part_rows: int) -> dict[str, float]:
    """Plan a build of `catalog` in this process; wall and CPU seconds per phase, peak MB, counts."""
    from benchmarks.catalog_memory import peak_rss_mb  # noqa: PLC0415
    from treeclip.data import plan as plan_module  # noqa: PLC0415
    from treeclip.data.align import Aligner  # noqa: PLC0415
    from treeclip.data.exclude import Exclusions  # noqa: PLC0415
    from treeclip.data.sources import open_source  # noqa: PLC0415

    figures: dict[str, float] = {}

    def timed(name: str, fn: object) -> object:
        def run(*args: object, **kwargs: object) -> object:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            result = fn(*args, **kwargs)  # type: ignore[operator]
            figures[f"{name}_s"] = round(time.perf_counter() - wall, 1)
            figures[f"{name}_cpu_s"] = round(_cpu_seconds() - cpu, 1)
            return result
        return run

    plan_module._PART_ROWS = part_rows
    plan_module._plan_images = lambda *args, **kwargs: None  # the stages after pass 2: catalog_memory measures them
    for name, attribute in (("split", "_split"), ("pass1", "_observe"), ("pass2", "_resolve")):
        setattr(plan_module, attribute, timed(name, getattr(plan_module, attribute)))
    start = time.perf_counter()
    plan = plan_module.plan_build(
        sources=[open_source(f"csv:{catalog}")], out=str(out), aligner=Aligner(), exclusions=Exclusions(),
        image_size=224, resize_mode="squash", quality=95, shard_size=1000, val_fraction=0.05, seed=0,
        workers=workers, on_problem=lambda problem: None)
    figures.update(plan_s=round(time.perf_counter() - start, 1), peak_mb=round(peak_rss_mb()),
                   records=plan.counts["records"])
    return figures


def run(catalog: Path, out: Path, workers: int, part_rows: int) -> dict[str, float]:
    """`plan_once` in a fresh Python process (the peak is its own); the load average before it."""
    code = ("import json; from pathlib import Path; from benchmarks.plan_parts import plan_once; "
            f"print(json.dumps(plan_once(Path({str(catalog)!r}), Path({str(out)!r}), {workers}, {part_rows})))")
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=False)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return {"workers": workers, "part_rows": part_rows, "load_before": round(load, 1),
            **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_parts", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="catalog rows (default 1,000,000)")
    parser.add_argument("--part-rows", type=int, default=131_072, help="rows per part (default 131,072)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run with parts (default 1,2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="treeclip-parts-") as tmp:
        catalog = write_catalog(Path(tmp), args.rows)
        runs = [(int(w), args.part_rows) for w in args.workers.split(",")] + [(2, 1 << 40)]
        for index, (workers, part_rows) in enumerate(runs):
            print(json.dumps(run(catalog, Path(tmp) / f"out{index}", workers, part_rows)), flush=True)
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()} on {os.cpu_count()} cores", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
