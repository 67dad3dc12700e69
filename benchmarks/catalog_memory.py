"""Peak memory of treeclip on a TreeOfLife-10M-sized catalog: plan (+ exclude) and make-benchmark.

A catalog of N rows (default 10,000,000; TreeOfLife-10M's size) is generated as CSV with pyarrow, in the
layout `treeclip build --source csv:` and `treeclip make-benchmark --catalog` read (path, source, kingdom ...
species, common, sha256). No images are needed: the rows name files that do not exist, except a few species
whose images make-benchmark samples. Each stage runs in its own Python process and reports its peak resident
memory (``VmHWM`` of ``/proc/self/status``; ``resource.getrusage`` elsewhere):

- ``read``: the catalog streamed through `treeclip.formats` (the floor every stage pays);
- ``make-benchmark``: `treeclip.eval.heldout.make_benchmark` over the whole catalog, 5 listed species;
- ``plan``: `treeclip.data.plan.plan_build` over the whole catalog as a ``csv:`` source with an exclusion
  file (the 5 benchmark species): both passes, repeated ids, hashes, exclusion, dedup, splits, and the jobs'
  items files written under the stage's ``out/.build/plan/``; image hashing is replaced by a hash of the path
  (the images do not exist), so the figure is the plan's own memory; images "exist" for every row. With one
  worker every plan job (one per source, then one per bucket of ~131k rows) runs in this process, so the
  peak is the driver's state plus the largest job's;
- ``catalog-write``: a build's last step on the driver, as `treeclip.data.build` runs it: ``catalog.parquet``
  concatenated from the shards' catalog parts (Arrow IPC, 1,000 rows each: the catalog's rows as a shard job
  makes them, written beforehand by `treeclip.data.catalog.write_catalog_part` in a child process, whose
  time is reported as ``worker_seconds``); ``seconds``/``peak_mb`` are the driver's step alone;
- ``catalog-json``: the same step as it was before (issue 15): every shard's rows read back from a JSON
  journal entry (written beforehand in a child process, as the shard jobs wrote them) and turned into Arrow
  on the driver; the baseline for ``catalog-write``;
- ``bad-images``: `treeclip.data.build.build_dataset` (one worker: every job in this process) over a ``csv:``
  source of N files that exist but are no image (N = the catalog's rows, each file's bytes distinct), so every
  image is skipped while its shard is written: the driver's memory as the bad images grow (before issue 15
  the driver held every bad image's row until ``dropped.csv`` was written); ``peak_mb`` is the peak from the
  start of shard writing (Linux: the peak is restarted through ``/proc/self/clear_refs`` when planning
  ends), ``plan_peak_mb`` the peak until then;
- ``baseline``: what the old readers did, the whole catalog as Python dicts (``csv.DictReader`` into a list).

    python -m benchmarks.catalog_memory [--rows N] [--stages read,make-benchmark,plan,baseline]

The goal (issue 12) is every treeclip stage within 2 GB at 10M rows; figures go to ``benchmarks/RESULTS.md``
through `benchmarks.run` (``--only catalog``) or are printed here.
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
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("read", "make-benchmark", "plan", "catalog-write", "catalog-json", "bad-images", "baseline")
SHARD_ROWS = 1000  # rows per shard part (treeclip build's default --shard-size)
LIMIT_MB = 2048
LISTED = 5
_GENERA = 2_000
_EPITHETS = 25  # 50,000 species


def write_catalog(folder: Path, rows: int, *, chunk: int = 500_000) -> tuple[Path, Path]:
    """(catalog.csv, species.txt) in `folder`; the listed species' first rows point at real tiny images."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    catalog, species = folder / "catalog.csv", folder / "species.txt"
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    genera, epithets = _names("Gen", LISTED), _names("ep", LISTED)
    species.write_text("".join(f"{genera[g]} {epithets[g]}\n" for g in range(LISTED)))
    with pacsv.CSVWriter(catalog, _schema(pa)) as writer:
        for start in range(0, rows, chunk):
            writer.write_table(_chunk(pa, start, min(rows, start + chunk)))
    for index in range(LISTED * 4):  # rows 0..19: 4 images of each listed species
        Image.new("RGB", (4, 4), (index * 10, 0, 0)).save(images / f"{index}.jpg")
    return catalog, species


def _schema(pa: object) -> object:
    names = ("id", "split", "source", "source_id", "path", "kingdom", "phylum", "class", "order", "family", "genus",
             "species", "common", "sha256")
    return pa.schema([(name, pa.string()) for name in names])  # type: ignore[attr-defined]


def _letters(number: int) -> str:
    """A pronounceable-enough lowercase word for a number (taxon names cannot hold digits)."""
    word = ""
    while True:
        number, digit = divmod(number, 20)
        word += "bcdfghjklmnprstvwxyz"[digit] + "aeiou"[digit % 5]
        if not number:
            return word


def _names(prefix: str, count: int, suffix: str = "") -> object:
    import numpy as np  # noqa: PLC0415

    return np.array([f"{prefix}{_letters(i)}{suffix}" for i in range(count)])


def _chunk(pa: object, start: int, stop: int) -> object:
    import numpy as np  # noqa: PLC0415

    index = np.arange(start, stop)
    listed = index < LISTED * 4
    genus = np.where(listed, index % LISTED, (index * 7919) % _GENERA)
    epithet = np.where(listed, genus % _EPITHETS, (index * 104729) % _EPITHETS)
    text = np.char.mod
    columns = {
        "id": text("%d", index),
        "split": np.full(len(index), "train"),
        "source": np.where(index % 3 == 0, "eol", "inat21"),
        "source_id": text("src%d", index),
        "path": np.where(listed, text("images/%d.jpg", index), text("images/missing/%d.jpg", index)),
        "kingdom": np.full(len(index), "Animalia"), "phylum": _names("Phy", 30)[genus % 30],
        "class": _names("Cla", 100)[genus % 100], "order": _names("Ord", 400, "iformes")[genus % 400],
        "family": _names("Fam", 1000, "idae")[genus % 1000], "genus": _names("Gen", _GENERA)[genus],
        "species": _names("ep", _EPITHETS)[epithet], "common": text("common name %d", genus * 100 + epithet),
        "sha256": text("%064x", index),
    }
    return pa.table({name: pa.array(values.astype(str)) for name, values in columns.items()},  # type: ignore[attr-defined]
                    schema=_schema(pa))


def stage(name: str, catalog: Path, species: Path, work: Path) -> dict[str, float]:
    """Run one stage in this process; its figures (peak MB, seconds, what it found)."""
    start = time.perf_counter()
    found = STAGE_FUNCTIONS[name](catalog, species, work)
    return {"peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - start, **found}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM (reset by exec, unlike ru_maxrss, which a child
    started by fork + exec inherits from its parent), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read(catalog: Path, species: Path, work: Path) -> dict[str, float]:
    from treeclip.formats import TAXON_ROLES, open_table, resolve, taxon_of  # noqa: PLC0415

    table = open_table(catalog)
    columns = resolve(table.header, TAXON_ROLES)
    taxa, rows = set(), 0
    for item in table.rows(columns):
        if isinstance(item, tuple):
            rows += 1
            taxa.add(taxon_of(item[1], "", strict=False).__repr__())
    return {"rows": rows, "taxa": len(taxa)}


def _make_benchmark(catalog: Path, species: Path, work: Path) -> dict[str, float]:
    from treeclip.eval.heldout import make_benchmark  # noqa: PLC0415

    result = make_benchmark(catalog=catalog, species_file=species, out_dir=work / "bench", images_per_species=3)
    return {"species": len(result.kept), "images": sum(result.kept.values())}


def _plan(catalog: Path, species: Path, work: Path) -> dict[str, float]:
    import hashlib  # noqa: PLC0415

    from treeclip.data import plan as plan_module  # noqa: PLC0415
    from treeclip.data.align import Aligner  # noqa: PLC0415
    from treeclip.data.exclude import load_exclusions  # noqa: PLC0415
    from treeclip.data.sources import open_source  # noqa: PLC0415

    # no images exist: every path "is a file" and hashes to a digest of its name (documented above)
    Path.is_file = lambda self: True  # type: ignore[method-assign]
    os.path.isfile = lambda path: True
    plan_module.sha256_file = lambda path: hashlib.sha256(str(path).encode()).hexdigest()
    problems = [0]
    plan = plan_module.plan_build(
        sources=[open_source(f"csv:{catalog}")], out=str(work / "out"), aligner=Aligner(),
        exclusions=load_exclusions([species]), image_size=224, resize_mode="squash", quality=95, shard_size=1000,
        val_fraction=0.05, seed=0, on_problem=lambda p: problems.__setitem__(0, problems[0] + 1))
    return {"planned": plan.counts["planned"], "excluded": plan.counts["excluded"], "jobs": len(plan.jobs),
            "problems": problems[0]}


def shard_rows(catalog: Path) -> Iterator[list[dict[str, object]]]:
    """The catalog's rows as shard jobs make their catalog rows (`treeclip.data.shards.catalog_row`'s
    columns, an absolute path), `SHARD_ROWS` at a time."""
    import pyarrow.csv as pacsv  # noqa: PLC0415

    with pacsv.open_csv(catalog, read_options=pacsv.ReadOptions(block_size=1 << 20)) as reader:
        held: list[dict[str, object]] = []
        for batch in reader:
            for row in batch.to_pylist():
                held.append(dict(row, id=f"{int(row['id']):024x}", path=f"/data/treeoflife/{row['path']}",
                                 width=1024, height=768, license="cc-by-4.0", owner="A. Photographer"))
                if len(held) == SHARD_ROWS:
                    yield held
                    held = []
        if held:
            yield held


def write_parts(catalog: Path, folder: Path, kind: str) -> None:
    """Each shard's catalog rows as the shard jobs write them (atomically, synced): an Arrow part (`kind`
    "arrow") or, as before issue 15, a JSON journal entry holding the rows ("json")."""
    from treeclip.atomic import atomic_write  # noqa: PLC0415
    from treeclip.data.catalog import catalog_table, write_catalog_part  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    for index, rows in enumerate(shard_rows(catalog)):
        if kind == "arrow":
            write_catalog_part(catalog_table(rows), folder / f"train-{index:06d}.arrow")
        else:
            entry = {"shard": f"train/shard-{index:06d}.tar", "fingerprint": "0" * 64, "rows": rows, "skipped": []}
            atomic_write(folder / f"train-{index:06d}.json", json.dumps(entry, ensure_ascii=False))


def _parts_in_child(catalog: Path, folder: Path, kind: str) -> float:
    """`write_parts` in a spawned process (its memory is not the driver's); its wall seconds."""
    import multiprocessing  # noqa: PLC0415

    start = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(target=write_parts, args=(catalog, folder, kind))
    child.start()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"writing the {kind} parts failed (exit {child.exitcode})")
    return time.perf_counter() - start


def _catalog_write(catalog: Path, species: Path, work: Path) -> dict[str, float]:
    from treeclip.data.catalog import read_catalog_part, write_catalog as write_parquet  # noqa: PLC0415

    worker_seconds = _parts_in_child(catalog, work / "parts", "arrow")
    start, cpu = time.perf_counter(), time.process_time()
    written = write_parquet((read_catalog_part(p) for p in sorted((work / "parts").glob("*.arrow"))),
                            work / "catalog.parquet")
    return _catalog_figures(work / "catalog.parquet", written, (time.perf_counter() - start,
                                                                time.process_time() - cpu), worker_seconds)


def _catalog_json(catalog: Path, species: Path, work: Path) -> dict[str, float]:
    from treeclip.data.catalog import catalog_table, write_catalog as write_parquet  # noqa: PLC0415

    worker_seconds = _parts_in_child(catalog, work / "parts", "json")
    start, cpu = time.perf_counter(), time.process_time()
    entries = sorted((work / "parts").glob("*.json"))
    written = write_parquet((catalog_table(json.loads(p.read_text(encoding="utf-8"))["rows"]) for p in entries),
                            work / "catalog.parquet")
    return _catalog_figures(work / "catalog.parquet", written, (time.perf_counter() - start,
                                                                time.process_time() - cpu), worker_seconds)


def _catalog_figures(path: Path, rows: int, driver: tuple[float, float], worker_seconds: float) -> dict[str, object]:
    """A catalog stage's figures: rows, the driver's wall and CPU seconds, the parts' writing (wall), size and
    the file's sha256 prefix (the same in both stages)."""
    from treeclip.data.images import sha256_file  # noqa: PLC0415

    return {"rows": rows, "driver_seconds": round(driver[0], 2), "driver_cpu_seconds": round(driver[1], 2),
            "worker_seconds": round(worker_seconds, 2), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)[:16]}


def _bad_images(catalog: Path, species: Path, work: Path) -> dict[str, float]:
    from treeclip.data.build import build_dataset  # noqa: PLC0415

    rows = sum(1 for _ in open(catalog, "rb")) - 1  # noqa: SIM115 - the catalog's row count
    (work / "src" / "img").mkdir(parents=True)
    with (work / "src" / "bad.csv").open("w", encoding="utf-8") as table:
        table.write("path,kingdom,genus,species\n")
        for index in range(rows):
            (work / "src" / "img" / f"{index}.jpg").write_bytes(b"not an image %d\n" % index)
            table.write(f"img/{index}.jpg,Animalia,Morus,bassanus\n")
    plan_peak: list[float] = []

    def after_planning(done: int, total: int) -> None:  # shard writing starts: restart the peak (Linux)
        if done == 0:
            plan_peak.append(peak_rss_mb())
            Path("/proc/self/clear_refs").write_text("5")

    start = time.perf_counter()
    result = build_dataset(sources=[f"csv:{work / 'src' / 'bad.csv'}"], out=work / "out", workers=1,
                           on_problem=lambda problem: None, progress=after_planning)  # not logged one by one
    dropped = sum(1 for _ in open(work / "out" / "dropped.csv", "rb")) - 1  # noqa: SIM115
    return {"bad_images": result.counts["bad_images"], "dropped_rows": dropped, "plan_peak_mb": round(plan_peak[0]),
            "build_seconds": round(time.perf_counter() - start, 1)}


def _baseline(catalog: Path, species: Path, work: Path) -> dict[str, float]:
    import csv  # noqa: PLC0415

    with open(catalog, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {"rows": len(rows)}


STAGE_FUNCTIONS = {"read": _read, "make-benchmark": _make_benchmark, "plan": _plan, "catalog-write": _catalog_write,
                   "catalog-json": _catalog_json, "bad-images": _bad_images, "baseline": _baseline}


def run_stage(name: str, catalog: Path, species: Path, work: Path) -> dict[str, float]:
    """Run `stage` in a fresh Python process (so that peaks do not mix) and return its figures."""
    code = ("import json, sys; from pathlib import Path; from benchmarks.catalog_memory import stage; "
            f"print(json.dumps(stage({name!r}, Path({str(catalog)!r}), Path({str(species)!r}), "
            f"Path({str(work)!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(rows: int, stages: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{stage: figures} on a generated catalog of `rows` rows."""
    with tempfile.TemporaryDirectory(prefix="treeclip-catalog-") as tmp:
        folder = Path(tmp)
        catalog, species = write_catalog(folder, rows)
        return {name: run_stage(name, catalog, species, folder / name) for name in stages}


def markdown(rows: int, figures: dict[str, dict[str, float]]) -> str:
    """A results table: stage, rows, peak MB, within 2 GB, seconds, what it found; with the machine's load."""
    lines = ["| stage | rows | peak MB | within 2 GB | seconds | found |", "|---|---:|---:|---|---:|---|"]
    for name, f in figures.items():
        found = ", ".join(f"{k} {v:,}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in f.items()
                          if k not in ("peak_mb", "seconds", "error"))
        lines.append(f"| {name} | {rows:,} | {f.get('peak_mb', float('nan')):,.0f} | "
                     f"{'yes' if f.get('peak_mb', LIMIT_MB + 1) <= LIMIT_MB else 'NO'} | "
                     f"{f.get('seconds', float('nan')):,.0f} | {f.get('error', found)} |")
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return "\n".join(lines) + f"\n\nLoad average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} cores.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.catalog_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="catalog rows (default 10,000,000)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--results", type=Path, help="also append the table to this markdown file")
    args = parser.parse_args(argv)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    figures = measure(args.rows, stages)
    for name, found in figures.items():
        flag = "" if "peak_mb" not in found else ("ok" if found["peak_mb"] <= LIMIT_MB else "OVER 2 GB")
        print(f"{name:>15}: {json.dumps(found)} {flag}", flush=True)
    if args.results:
        with args.results.open("a", encoding="utf-8") as handle:
            handle.write(markdown(args.rows, figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


SIZES = {"full": (10_000_000, 1_000_000), "quick": (100_000, 50_000)}  # (catalog rows, baseline rows)


def suite_rows(mode: str) -> list[dict[str, object]]:
    """The suite's rows (`benchmarks.run`): each treeclip stage's peak MB beside the list-of-dicts baseline's.
    Every treeclip stage, planning included, runs on the whole catalog; the baseline holds every row in Python
    (10M rows need ~13 GB), so it runs on the smaller one and is scaled."""
    rows, small = SIZES[mode]
    big = measure(rows, ("read", "make-benchmark", "plan"))
    baseline = measure(small, ("baseline",))["baseline"]
    per_row = baseline.get("peak_mb", float("nan")) / small
    found = []
    for name, figures, count in [("read", big["read"], rows), ("make-benchmark", big["make-benchmark"], rows),
                                 ("plan + exclude", big["plan"], rows)]:
        ours = figures.get("peak_mb", float("nan"))
        verdict = "within" if ours <= LIMIT_MB else "OVER"
        found.append({"treeclip": f"{name}, {count:,} rows", "ours": ours, "theirs": per_row * count,
                      "note": f"{verdict} 2 GB; {figures.get('seconds', 0):.0f} s; baseline measured at "
                              f"{small:,} rows ({baseline.get('peak_mb', 0):.0f} MB) and scaled"})
    return found
