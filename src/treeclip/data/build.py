"""`build_dataset`: sources → aligned taxa → WebDataset shards + catalog, resumable after a crash.

Output layout (``OUT/``): ``train/shard-NNNNNN.tar`` and ``val/shard-NNNNNN.tar``; then, written last,
``catalog.parquet``, ``dropped.csv`` (every record left out and why), ``problems.csv`` (every bad row, file
and image: appended to ``OUT/.build/problems.csv`` as they are met, renamed into place), ``alignment.json`` and
``alignment.txt`` (the alignment report and its readable summary) and finally ``manifest.json``: a build is
complete exactly when its manifest exists. ``OUT/.build/`` holds the resume journal (`treeclip.data.shards`),
while the build runs the plan's partitions, dropped-row files and items files (`treeclip.data.plan`), and the build lock
(``OUT/.build/lock``): a second build or ``--resume`` of the same folder while one runs is refused with one
line, before it touches any file.

Engines (`treeclip.data.engines`, ``--engine local|ray``): the same stage functions run in this process, a
process pool, or as Ray tasks (every planning stage over disk-backed partitions, and shard writing), under
one Ray session per build; every output is byte-identical either way. The driver never holds per-image
rows: shard workers return a summary (sample count and that shard's bad images, reported then dropped),
``catalog.parquet`` is concatenated from the shards' Arrow catalog parts one shard at a time (rows in shard
order: train shards, then val, each in tar order), ``dropped.csv`` is streamed from the plan's sorted files,
and the bad images met while writing shards are read back from the journal entries, in shard order, for
``problems.csv`` and ``dropped.csv``.

Resume: the plan (`treeclip.data.plan`) is a pure function of the inputs, so a resumed build recomputes it,
removes temporary files and shards that are not in it, keeps every shard whose tar and journal match the
plan, and writes only the others. A crash at any moment therefore leaves every image exactly once.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treeclip import __version__
from treeclip.data.align import Aligner, write_report
from treeclip.atomic import OutputLock, atomic_write, fsync_path, is_temp_file
from treeclip.data.backbone import read_backbones
from treeclip.data.catalog import CATALOG, DROPPED, MANIFEST, read_catalog_part, write_catalog, write_dropped
from treeclip.data.engines import check_engine, engine_session, map_unordered
from treeclip.data.exclude import load_exclusions
from treeclip.formats.shards import manifest as make_manifest
from treeclip.formats.shards import manifest_text, shard_entry, shard_name
from treeclip.data.images import RESIZE_MODES
from treeclip.data.plan import Plan, plan_build
from treeclip.data.records import Problem
from treeclip.data.shards import (JOURNAL_DIR, PLAN_DIR, ShardJob, ShardResult, catalog_part_path, completed_shard,
                                  journal_path, journal_skipped, write_shard)
from treeclip.data.sources import open_source
from treeclip.formats.problems import PROBLEMS, ProblemLog
from treeclip.data.splits import SPLITS
from treeclip.errors import UsageError

log = logging.getLogger(__name__)
BUILD_DIR = ".build"
Progress = Callable[[int, int], None]  # (images just finished, total images)


@dataclass(frozen=True)
class _Written:
    """A finished shard as the driver keeps it: its place, sample count and number of bad images (its catalog
    rows stay in its catalog part and its bad images in its journal entry, read back one shard at a time)."""

    split: str
    index: int
    samples: int
    bad_images: int

    @classmethod
    def of(cls, result: ShardResult) -> _Written:
        return cls(result.split, result.index, result.samples, len(result.skipped))

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


@dataclass
class BuildResult:
    """What a build produced: counts, problems (bad rows, files and images: ``OUT/problems.csv``, read back
    when iterated) and the manifest."""

    out: Path
    manifest: dict[str, Any]
    problems: ProblemLog

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]


def build_dataset(
    *,
    sources: Sequence[str],
    out: str | Path,
    image_size: int = 224,
    resize: str = "squash",
    shard_size: int = 1000,
    workers: int = 1,
    exclude: Sequence[str | Path] = (),
    val_fraction: float = 0.05,
    backbone: str | Path | Sequence[str | Path] | None = None,
    columns: Mapping[str, str] | None = None,
    allow_absolute_paths: bool = False,
    resume: bool = False,
    seed: int = 0,
    quality: int = 95,
    on_problem: Callable[[Problem], None] | None = None,
    progress: Progress | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> BuildResult:
    """Build WebDataset shards from `sources` ("KIND:PATH[,EXTRA]" specs) into `out`.

    `columns` ({role: column}) overrides the column rules of every table read; `allow_absolute_paths` lets
    tables name images outside their own folder; `backbone` is one file or several.
    Bad source rows/files/images are reported through `on_problem` and skipped; the returned result lists
    them. Raises `UsageError` for bad arguments, an unknown source kind or path, or a non-empty `out`
    without `resume`. `engine` says who writes the shards (`treeclip.data.engines`: ``local`` processes, or
    Ray at `ray_address` / a local Ray runtime); the shards are the same either way.
    """
    check_engine(engine, ray_address)
    _check_arguments(image_size=image_size, resize=resize, shard_size=shard_size, workers=workers,
                     val_fraction=val_fraction, quality=quality, sources=sources)
    opened = [open_source(spec, columns=columns, allow_absolute_paths=allow_absolute_paths) for spec in sources]
    backbones = [backbone] if isinstance(backbone, (str, Path)) else list(backbone or ())
    # species-only labels are kept at the ranks they have (counted as "no_kingdom"), never dropped for that
    aligner = Aligner(backbone=read_backbones(backbones, columns=columns), require_kingdom=False)
    exclusions = load_exclusions(exclude)
    out = Path(out)
    _check_out(out, resume=resume)
    (out / JOURNAL_DIR).mkdir(parents=True, exist_ok=True)
    with OutputLock(out, option="--out", lock_file=out / BUILD_DIR / "lock"), \
            engine_session(engine, ray_address, workers=workers):
        _clean_for_resume(out)
        problems = ProblemLog(out / BUILD_DIR / PROBLEMS)
        plan = plan_build(sources=opened, out=str(out.absolute()), aligner=aligner, exclusions=exclusions,
                          image_size=image_size, resize_mode=resize, quality=quality, shard_size=shard_size,
                          val_fraction=val_fraction, seed=seed, workers=workers, engine=engine,
                          ray_address=ray_address, on_problem=on_problem, problems=problems)
        _remove_stale(out, plan.jobs)
        results = sorted(_run_jobs(plan.jobs, workers=workers, on_problem=on_problem, progress=progress,
                                   engine=engine, ray_address=ray_address),
                         key=lambda r: (SPLITS.index(r.split), r.index))
        params = {"image_size": image_size, "resize": resize, "shard_size": shard_size,
                  "val_fraction": val_fraction,
                  "seed": seed, "quality": quality, "exclude": [str(p) for p in exclude],
                  "backbone": [str(b) for b in backbones] or None}
        for skipped in _bad_images(out, results):
            problems.append(_skipped_problem(skipped))
        manifest = _finish(out, plan, results, params, problems)
        shutil.rmtree(out / PLAN_DIR, ignore_errors=True)  # the jobs' items files: rewritten by any resume
        return BuildResult(out=out, manifest=manifest, problems=problems)


def _check_arguments(*, image_size: int, resize: str, shard_size: int, workers: int, val_fraction: float,
                     quality: int, sources: Sequence[str]) -> None:
    checks = [
        (bool(sources), "--source: give at least one KIND:PATH"),
        (image_size >= 1, f"--image-size {image_size}: must be a positive number of pixels"),
        (resize in RESIZE_MODES, f"--resize {resize}: must be one of {', '.join(RESIZE_MODES)}"),
        (shard_size >= 1, f"--shard-size {shard_size}: must be at least 1"),
        (workers >= 1, f"--workers {workers}: must be at least 1"),
        (0.0 <= val_fraction < 1.0, f"--val-fraction {val_fraction}: must be in [0, 1)"),
        (1 <= quality <= 100, f"--quality {quality}: must be in 1..100"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def _check_out(out: Path, *, resume: bool) -> None:
    """Refuse to overwrite anything but a treeclip build being resumed."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder; choose a new output folder")
    if out.is_dir() and any(out.iterdir()):
        is_build = (out / BUILD_DIR).is_dir() or (out / MANIFEST).is_file()
        if not resume:
            raise UsageError(f"--out {out}: folder is not empty; pass --resume to finish that build, "
                             "or choose a new output folder")
        if not is_build:
            raise UsageError(f"--out {out}: not a treeclip build folder (no {BUILD_DIR}/ or {MANIFEST}); "
                             "choose a new output folder")


def _clean_for_resume(out: Path) -> None:
    """Drop the old manifest and every temporary file (only ever called while holding the lock)."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in out.rglob("*"):
        if path.is_file() and is_temp_file(path):
            path.unlink()


def _remove_stale(out: Path, jobs: Iterable[ShardJob]) -> None:
    """Delete shards, journal entries and catalog parts that a previous, different plan left behind."""
    jobs = list(jobs)
    wanted = {out / job.name for job in jobs} | {journal_path(out, job.split, job.index) for job in jobs} \
        | {catalog_part_path(out, job.split, job.index) for job in jobs}
    for folder in [out / split for split in SPLITS] + [out / JOURNAL_DIR]:
        for path in folder.glob("*") if folder.is_dir() else ():
            if path not in wanted:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _run_jobs(jobs: list[ShardJob], *, workers: int, on_problem: Callable[[Problem], None] | None,
              progress: Progress | None, engine: str, ray_address: str | None) -> Iterator[_Written]:
    """Yield every shard's summary: kept ones first, then the newly written ones as they finish; each
    shard's bad images are reported as it comes, then only their number is kept."""
    total = sum(job.count for job in jobs)
    if progress:
        progress(0, total)
    kept: list[ShardResult] = []
    todo: list[ShardJob] = []
    for job in jobs:
        done = completed_shard(job)
        if done is None:
            todo.append(job)
        else:
            kept.append(done)
    log.info("%d complete shards kept, %d to write", len(kept), len(todo))
    written = map_unordered(write_shard, todo, engine=engine, workers=workers, ray_address=ray_address)
    for result in itertools.chain(kept, written):
        for skipped in result.skipped:
            problem = _skipped_problem(skipped)
            if on_problem:
                on_problem(problem)
            else:
                log.warning("%s: %s", problem.origin, problem.reason)
        if progress:
            progress(result.samples + len(result.skipped), total)
        yield _Written.of(result)


def _bad_images(out: Path, results: Iterable[_Written]) -> Iterator[dict[str, str]]:
    """The images skipped while writing shards, in shard order, read back from the journal entries."""
    for result in results:
        if result.bad_images:
            yield from journal_skipped(out, result.split, result.index)


def _skipped_problem(skipped: dict[str, str]) -> Problem:
    return Problem(skipped["origin"], skipped["reason"])


def _finish(out: Path, plan: Plan, results: list[_Written], params: dict[str, Any],
            problems: ProblemLog) -> dict[str, Any]:
    """Write the catalog (the shards' catalog parts, one at a time), dropped list (the plan's, then the bad
    images, streamed), problem list and alignment report, then the manifest (last)."""
    samples = write_catalog((read_catalog_part(catalog_part_path(out, r.split, r.index)) for r in results),
                            out / CATALOG)
    bad = (dict(s, id=s["key"]) for s in _bad_images(out, results))
    write_dropped(itertools.chain(plan.dropped_rows(), bad), out / DROPPED)
    problems.flush()
    fsync_path(problems.path)
    problems.move(out / PROBLEMS)
    fsync_path(out)
    write_report(plan.alignment, out / "alignment.json")
    atomic_write(out / "alignment.txt", plan.alignment.summary())
    manifest = _manifest(plan, results, params, problems, bad_images=sum(r.bad_images for r in results),
                         samples=samples)
    atomic_write(out / MANIFEST, manifest_text(manifest))
    return manifest


def _manifest(plan: Plan, results: list[_Written], params: dict[str, Any], problems: ProblemLog, *,
              bad_images: int, samples: int) -> dict[str, Any]:
    shards = [shard_entry(r.name, r.split, r.samples) for r in results]
    splits = {split: {"samples": sum(s["samples"] for s in shards if s["split"] == split),
                      "shards": sum(1 for s in shards if s["split"] == split)} for split in SPLITS}
    counts = Counter({"records": 0, "unresolved": 0, "held_out": 0, "repeated_id": 0, "unreadable": 0, "excluded": 0,
                      "duplicates": 0})
    counts.update(plan.counts)
    counts.update({"bad_images": bad_images, "samples": samples})
    return make_manifest(
        shards,
        treeclip_version=__version__,
        parameters=params,
        sources=plan.source_counts,
        splits=splits,
        counts=dict(counts),
        problems={"count": len(problems), "first": [f"{p.origin}: {p.reason}" for p in itertools.islice(problems, 50)]},
    )
