"""Planning a build: which images go into which shard, decided before any image is decoded.

0. Each source is cut into parts of about `_PART_ROWS` rows (`Source.parts`, one `split_source` job per
   source: a CSV/TSV table is read once and staged to Arrow files, a Parquet table is cut at row groups;
   `wds:` is a part per tar, `folder:` runs of class folders; a JSON source is one part).
1. Pass 1 reads every source part into an `Aligner` tally (and reports the parts' bad rows and files): one
   `observe_source` job per (source, part) on the build's engine (in this process, a process pool or Ray
   tasks); the tallies (distinct lineage and source counts) are merged in (source, part) order.
2. Pass 2, one `resolve_source` job per (source, part) (the alignment sent once to every worker; a part's
   first record index is the sum of pass 1's record counts of the parts before it, so every record keeps its
   position in its source), streams the part again and resolves each record's taxon; records the alignment
   drops and records their source marks as held out (``split=unseen``, as `treeclip synth` marks its unseen
   species) are left out. Rows whose source mended a
   gap in their lineage (`Record.gap`) are counted: ``gap_filled`` when the alignment gave the emptied ranks
   back (from the backbone or other records of the taxon), ``gap_kept`` when they stay at their deepest
   unbroken run.
3. Source ids repeated within a source are left out (reported); two sources of one kind that use the same
   source id for different images keep both, the later one's id qualified by its spec (``"{id}@{spec}"``).
   Then the sha256 of every remaining image's source bytes is taken where the bytes are read (`hash_batch`);
   unreadable files are reported and left out. Both happen in `settle_ids` jobs, one per id bucket.
4. Exclusions: every record matching an `--exclude` entry (name, hash, path or id) is left out, and so is
   every other copy of an excluded image's bytes, so an evaluation image cannot leak in under another label.
5. Exact duplicates: among records with the same sha256 the first in source order (the order of
   ``--source`` options, then each source's own order) is kept; the others are dropped with ``kept_id``.
   Steps 4 and 5 run in `settle_bytes` jobs, one per sha256 bucket.
6. Splits come from a hash of each stable id (`treeclip.data.splits`); within a split, images are ordered
   by a seeded hash of the stable id and cut into shards of `shard_size`: `order_range` jobs, one per range
   of that hash, sort their range and write the shards' items files.

Because duplicates are resolved here, from hashes of every candidate, the plan is exact and a pure
function of the inputs: a resumed build recomputes the very same shard jobs.

**Driver memory does not grow with the image count.** Every per-image step is a job on the build's engine
(`treeclip.data.engines.map_unordered`: this process, a process pool, or Ray tasks) over disk-backed
partitions (`treeclip.data.partitions`, Arrow IPC files under ``OUT/.build/plan/work/``): records are
hash-partitioned by source id (every record whose id could be equal to another's, qualified or not, shares a
bucket, so each bucket replays the repeated-id rule exactly), then by sha256 (every copy of an image shares a
bucket), then range-partitioned by the seeded shard-order hash (uniform, so ranges balance), each range
sorted on its own and placed by the counts of the ranges before it. Each row carries its position (source
index, record index), so every rule is "first in source order" as in one pass. The process that plans holds
the alignment, the partitions' row offsets, the shard jobs and the counts; the rows left out (``dropped.csv``)
stay in sorted files merged when written (`Plan.dropped_rows`), and the problems met go to a `ProblemLog`
file as they are read back (pass 1's from one file per source part, in (source, part) order; then those of
the id buckets, merged from their sorted files), so nothing the driver holds grows with the bad rows either.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from treeclip.data.align import Aligner, Alignment
from treeclip.data.catalog import DROPPED_COLUMNS
from treeclip.data.engines import map_unordered
from treeclip.data.exclude import Exclusions
from treeclip.data.images import sha256_file
from treeclip.data.partitions import merged_rows, read_ipc, read_partition, write_ipc, write_partitioned, write_sorted
from treeclip.data.records import Problem, Record
from treeclip.data.shards import ITEM_COLUMNS, PLAN_DIR, ShardJob, items_path
from treeclip.data.splits import SPLITS, VAL, assign_split, sample_key, shard_order, stable_id
from treeclip.data.sources import Source
from treeclip.errors import InputError
from treeclip.formats.problems import ProblemLog, read_problems
from treeclip.taxonomy import RANK_NAMES, Taxon

log = logging.getLogger(__name__)
Result = TypeVar("Result")
ProblemHandler = Callable[[Problem], None]
HELD_OUT_SPLIT = "unseen"  # a source split that must never reach training (evaluation-only taxa)
WORK_DIR = "work"  # under PLAN_DIR: the partitions, removed when the plan is made
DROPPED_DIR = "dropped"  # under PLAN_DIR: the sorted files of rows left out, kept until dropped.csv is written
_BATCH = 16_384  # records per pass-2 batch
_HASH_ROWS = 256  # files per `hash_batch` call
_BUCKET_ROWS = 131_072  # target rows per partition (id, sha256 and shard-order buckets): a job's share
_SPILL_ROWS = 32_768  # records per pass-2 output file (partitioned by id bucket)
_PART_ROWS = 131_072  # rows per source part (`Source.parts`): a pass-1 and a pass-2 job each, a bucket's share
_ROW_BITS = 40  # a position is (source index << _ROW_BITS) | record index within the source
_HELD_OUT, _UNRESOLVED = 1, 2  # pass-2 status of a row (0: a candidate)
_TAXON_COLUMNS = (*RANK_NAMES, "common")
_ITEM_FIELDS = [(name, pa.string()) for name in ("key", "source", "source_id", "path", "origin", "license",
                                                  "owner", "sha256", "member_tar")] + [
    ("member_offset", pa.int64()), ("member_size", pa.int64()), *((name, pa.string()) for name in _TAXON_COLUMNS)]
_ROW_SCHEMA = pa.schema([  # pass 2's output: one row per record
    ("position", pa.int64()), ("group", pa.uint64()), ("stable", pa.string()), *_ITEM_FIELDS,
    ("status", pa.int8()), ("reason", pa.string()), ("no_kingdom", pa.bool_()), ("gap", pa.string()),
])
_CANDIDATE_SCHEMA = pa.schema([("position", pa.int64()), ("stable", pa.string()), *_ITEM_FIELDS,
                               ("digest", pa.binary(32))])
_RANGED_SCHEMA = pa.schema([*_ITEM_FIELDS, ("shard_order", pa.float64())])
_DROPPED_SCHEMA = pa.schema([("stage", pa.int8()), ("position", pa.int64()),
                             *((name, pa.string()) for name in ("id", "source", "source_id", "path", "origin",
                                                                "reason", "kept_id", "problem_origin",
                                                                "problem_reason"))])


@dataclass
class Plan:
    """The shard jobs, the files of everything left out (with reasons), the problems met and the alignment."""

    jobs: list[ShardJob]
    alignment: Alignment
    problems: ProblemLog
    dropped_files: list[str] = field(default_factory=list)  # sorted by (stage, position): see `dropped_rows`
    counts: Counter[str] = field(default_factory=Counter)
    source_counts: list[dict[str, Any]] = field(default_factory=list)

    def dropped_rows(self) -> Iterator[dict[str, str]]:
        """Every record left out, with its reason: the pass-2 drops, unreadable, excluded, then duplicate
        images, each in source order (merged from the jobs' sorted files, one batch per file at a time)."""
        for row in merged_rows(self.dropped_files, DROPPED_COLUMNS):
            yield {name: row[name] for name in DROPPED_COLUMNS}


def plan_build(
    *,
    sources: Sequence[Source],
    out: str,
    aligner: Aligner,
    exclusions: Exclusions,
    image_size: int,
    resize_mode: str,
    quality: int,
    shard_size: int,
    val_fraction: float,
    seed: int,
    workers: int = 1,
    engine: str = "local",
    ray_address: str | None = None,
    on_problem: ProblemHandler | None = None,
    problems: ProblemLog | None = None,
) -> Plan:
    """Run the planning passes described in the module docstring on `engine` (`workers` processes, or Ray
    tasks), write the jobs' items files under ``out/.build/plan/`` (replacing earlier ones) and return the
    shard jobs. The plan is the same on either engine and for any number of workers. The problems met are
    appended to `problems` (default: a new ``out/.build/plan/problems.csv``) and passed to `on_problem`."""
    plan_dir = Path(out) / PLAN_DIR
    shutil.rmtree(plan_dir, ignore_errors=True)
    work = plan_dir / WORK_DIR
    work.mkdir(parents=True)
    (plan_dir / DROPPED_DIR).mkdir()
    report = _Reporter(ProblemLog(plan_dir / "problems.csv") if problems is None else problems, on_problem)
    try:
        plan = _plan(report, sources=sources, aligner=aligner, exclusions=exclusions, out=out, shard_size=shard_size,
                     image_size=image_size, resize_mode=resize_mode, quality=quality, val_fraction=val_fraction,
                     seed=seed, workers=workers, engine=engine, ray_address=ray_address)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plan.counts["planned"] = sum(job.count for job in plan.jobs)
    return plan


def _plan(report: _Reporter, *, sources: Sequence[Source], aligner: Aligner, exclusions: Exclusions, out: str,
          shard_size: int, image_size: int, resize_mode: str, quality: int, val_fraction: float, seed: int,
          workers: int, engine: str, ray_address: str | None) -> Plan:
    work = Path(out) / PLAN_DIR / WORK_DIR
    read = _Runner(engine=engine, workers=workers, ray_address=ray_address)
    parts = _split(sources, read, work=str(work))
    counts = _observe(parts, aligner, report, read)
    plan = Plan(jobs=[], alignment=aligner.finalize(), problems=report.problems)
    plan.source_counts = [{"spec": src.spec, "kind": src.kind,
                           **{name: sum(n[name] for part, n in zip(parts, counts) if part.index == i)
                              for name in ("records", "problems")}} for i, src in enumerate(sources)]
    plan.counts["records"] = sum(n["records"] for n in plan.source_counts)
    buckets = max(1, math.ceil(plan.counts["records"] / _BUCKET_ROWS))
    local_workers = workers if buckets > 1 or len(parts) > 1 or engine != "local" else 1  # else no pool to start
    run = _Runner(engine=engine, workers=local_workers, ray_address=ray_address)
    _resolve(parts, counts, plan.alignment, run, buckets=buckets, work=str(work))
    _plan_images(plan, run, report, sources=sources, exclusions=exclusions, buckets=buckets, out=out,
                 shard_size=shard_size, image_size=image_size, resize_mode=resize_mode, quality=quality,
                 val_fraction=val_fraction, seed=seed)
    report.problems.flush()
    return plan


@dataclass(frozen=True)
class _Runner:
    engine: str
    workers: int
    ray_address: str | None

    def __call__(self, fn: Callable[..., Any], jobs: Sequence[Any], shared: Any = None) -> Iterator[Any]:
        """Every job's result as it finishes (each stage's results are combined in an order-free way); a
        `shared` input (the alignment, the exclusions) is sent to the workers once, not in every job."""
        return map_unordered(fn, jobs, engine=self.engine, workers=self.workers, ray_address=self.ray_address,
                             shared=shared)


def _plan_images(plan: Plan, run: _Runner, report: _Reporter, *, sources: Sequence[Source], exclusions: Exclusions,
                 buckets: int, out: str, shard_size: int, image_size: int, resize_mode: str, quality: int,
                 val_fraction: float, seed: int) -> None:
    work = Path(out) / PLAN_DIR / WORK_DIR
    dropped = Path(out) / PLAN_DIR / DROPPED_DIR
    specs = tuple(src.spec for src in sources)
    tally = _Tally()
    for result in run(settle_ids, [_IdsJob(b, specs, buckets, str(work), str(dropped)) for b in range(buckets)]):
        tally.add(result.tally)
        plan.dropped_files.append(result.dropped)
    _remove(work, "resolved-*.arrow")
    for row in merged_rows(plan.dropped_files, ("problem_origin", "problem_reason")):
        if row["problem_reason"] is not None:
            report(Problem(row["problem_origin"], row["problem_reason"]))
    ranges, counts = buckets, np.zeros(2 * buckets, np.int64)  # rows per (split, shard-order range)
    for result in run(settle_bytes, [_BytesJob(q, val_fraction, seed, ranges, str(work), str(dropped))
                                     for q in range(buckets)], exclusions):
        tally.add(result.tally)
        plan.dropped_files.append(result.dropped)
        counts += result.counts
    tally.into(plan.counts)
    _remove(work, "bytes-*.arrow")
    plan.jobs = _shard_jobs(counts.reshape(2, ranges), run, out=out, shard_size=shard_size, image_size=image_size,
                            resize_mode=resize_mode, quality=quality)


def _remove(folder: Path, pattern: str) -> None:
    """Delete a finished stage's partition files (disk: ~360 B per record each stage at 10M records)."""
    for path in folder.glob(pattern):
        path.unlink()


class _Reporter:
    """Appends problems to the log and forwards each to the caller as it happens."""

    def __init__(self, problems: ProblemLog, handler: ProblemHandler | None) -> None:
        self.problems = problems
        self._handler = handler

    def __call__(self, problem: Problem) -> None:
        self.problems.append(problem)
        if self._handler is not None:
            self._handler(problem)
        else:
            log.warning("%s: %s", problem.origin, problem.reason)


class _Tally:
    """Counts with the position of their first row, so that they are listed in the order one pass over the
    records in source order would first meet them (the manifest lists its counts in that order)."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # name -> [count, first position]

    def count(self, name: str, mask: np.ndarray, positions: np.ndarray, *, present: bool = False) -> None:
        """Count the rows in `mask` (a boolean array over `positions`), first met at the first of them, or
        with `present` at the first of `positions` (listed even when none is counted)."""
        hits = np.flatnonzero(mask)
        if present and len(positions):
            self.add({name: [len(hits), int(positions.min())]})
        elif len(hits):
            self.add({name: [len(hits), int(positions[hits].min())]})

    def add(self, counts: dict[str, list[int]]) -> None:
        for name, (number, first) in counts.items():
            mine = self.counts.setdefault(name, [0, first])
            mine[0] += number
            mine[1] = min(mine[1], first)

    def into(self, counter: Counter[str]) -> None:
        stage = {"unreadable": 1, "excluded": 2, "duplicates": 3}
        for name, (number, _) in sorted(self.counts.items(), key=lambda item: (
                stage.get(item[0], 0), item[1][1], item[0] != "no_kingdom")):
            counter[name] += number


@dataclass(frozen=True)
class _PartJob:
    """One part of one source (`Source.parts`; `part` None: the whole source), read by a pass-1 and a pass-2
    job; `first` is the source's record index of the part's first record (pass 2), `records` its count."""

    index: int  # the source's, in --source order
    number: int  # the part's, within its source
    source: Source
    part: Any
    problems: str = ""  # pass 1's problem file
    first: int = 0
    records: int = 0
    buckets: int = 0
    work: str = ""


@dataclass(frozen=True)
class _SplitJob:
    index: int
    source: Source
    rows: int
    prefix: str


def split_source(one: _SplitJob) -> tuple[int, list[Any]]:
    """A source's parts (`Source.parts`, which may stage a CSV/TSV table to Arrow files: one read of it), a
    job for any engine."""
    return one.index, list(one.source.parts(rows=one.rows, prefix=one.prefix))


def _split(sources: Sequence[Source], run: _Runner, *, work: str) -> list[_PartJob]:
    """Every source's parts, in (source, part) order: the order of the build's records."""
    jobs = [_SplitJob(index, source, _PART_ROWS, str(Path(work) / f"staged-{index:06d}"))
            for index, source in enumerate(sources)]
    parts = dict(run(split_source, jobs))
    return [_PartJob(index, number, source, part, str(Path(work) / f"problems-{index:06d}-{number:06d}.csv"))
            for index, source in enumerate(sources) for number, part in enumerate(parts[index])]


@dataclass
class _Observed:
    """Pass 1 over one source part: its alignment tally (counts per distinct lineage and source), its
    problems' file (``problems.csv`` format) and counts."""

    index: int
    number: int
    aligner: Aligner
    problems: str
    counts: dict[str, int]


def observe_source(job: _PartJob) -> _Observed:
    """Pass 1 for one source part, a job for any engine (`treeclip.data.engines.map_unordered`): its problems
    go to the file `job.problems`; only its tally, which grows with its distinct lineages, not its records,
    comes back."""
    problems = ProblemLog(job.problems)
    observed = _Observed(job.index, job.number, Aligner(), job.problems, {"records": 0, "problems": 0})
    for item in job.source.records(job.part):
        if isinstance(item, Problem):
            observed.counts["problems"] += 1
            problems.append(item)
        else:
            observed.counts["records"] += 1
            observed.aligner.observe(item)
    problems.flush()
    return observed


def _observe(parts: Sequence[_PartJob], aligner: Aligner, report: _Reporter, run: _Runner) -> list[dict[str, int]]:
    """Pass 1: one `observe_source` job per source part on the engine; tallies merged (and problems reported,
    read back from the jobs' files) in (source, part) order, so neither depends on which job finished first:
    a result that comes early waits, the others are merged as they come. Returns each part's counts."""
    place = {(part.index, part.number): k for k, part in enumerate(parts)}
    early: dict[int, _Observed] = {}
    counts: list[dict[str, int]] = []
    for observed in run(observe_source, parts):
        early[place[observed.index, observed.number]] = observed
        while len(counts) in early:
            one = early.pop(len(counts))
            for problem in read_problems(one.problems):
                report(problem)
            Path(one.problems).unlink()
            aligner.absorb(one.aligner)
            counts.append(one.counts)
    return counts


# ---- pass 2: one job per source part --------------------------------------------------------------------------

def _resolve(parts: Sequence[_PartJob], counts: Sequence[dict[str, int]], alignment: Alignment, run: _Runner, *,
             buckets: int, work: str) -> None:
    """Pass 2: one `resolve_source` job per source part, its first record index the sum of the pass-1 record
    counts of the source's parts before it (so each record keeps its position in its source); then the
    staged part files are deleted."""
    slim = Alignment(taxa=alignment.taxa, dropped=alignment.dropped, report={})
    jobs, first = [], Counter[int]()
    for part, n in zip(parts, counts, strict=True):
        jobs.append(replace(part, first=first[part.index], records=n["records"], buckets=buckets, work=work))
        first[part.index] += n["records"]
    for _ in run(resolve_source, jobs, slim):
        pass
    _remove(Path(work), "staged-*")


def _released(result: Result) -> Result:
    """A job's result, once the Arrow memory it freed is handed back to the OS (the memory pool keeps freed
    pages otherwise: measured +150-220 MB retained after 23 jobs run in one process, growing with jobs)."""
    pa.default_memory_pool().release_unused()
    return result


def id_group(source: str, source_id: str) -> int:
    """The id bucket hash of a record: of its source kind and its id up to the first ``@``, which a
    qualified id (``"{id}@{spec}"``) keeps, so every id that could equal another's hashes alike."""
    text = f"{source}:{source_id.partition('@')[0]}"
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def resolve_source(one: _PartJob, alignment: Alignment) -> int:
    """Pass 2 for one source part: its records resolved by `alignment` (shared by every job), one row each
    (`_ROW_SCHEMA`, positions from the part's first record index), written partitioned by id bucket, one
    ``resolved-SOURCE-PART-SPILL.arrow`` file per `_SPILL_ROWS` records; returns the record count, which
    must be pass 1's (else the source changed between the passes and positions would collide)."""
    records = (item for item in one.source.records(one.part) if isinstance(item, Record))
    count, spill, held = 0, 0, []
    while True:
        batch = list(islice(records, _BATCH))
        if batch:
            held.append(_resolved_rows(batch, alignment, (one.index << _ROW_BITS) + one.first + count))
            count += len(batch)
        if held and (not batch or sum(t.num_rows for t in held) >= _SPILL_ROWS):
            table = pa.concat_tables(held)
            bucket = (table.column("group").to_numpy() % np.uint64(one.buckets)).astype(np.int64)
            path = Path(one.work) / f"resolved-{one.index:06d}-{one.number:06d}-{spill:06d}.arrow"
            write_partitioned(table, bucket, one.buckets, path)
            spill, held = spill + 1, []
        if not batch:
            break
    if count != one.records:
        raise InputError(f"source {one.source.spec!r} changed while the build was planning: {one.records} records "
                         f"in its first reading, {count} in its second (part {one.number}); run the build again")
    return _released(count)


def _resolved_rows(records: list[Record], alignment: Alignment, first: int) -> pa.Table:
    rows = []
    for offset, record in enumerate(records):
        stable = stable_id(record.source, record.source_id)
        taxon = alignment.resolve(record)
        status, reason, gap = 0, "", ""
        if record.split_hint == HELD_OUT_SPLIT:
            status, reason = _HELD_OUT, f"held out by its source (split={HELD_OUT_SPLIT})"
        elif taxon is None or not (taxon.taxonomic or taxon.common):
            status = _UNRESOLVED
            reason = f"not aligned: {alignment.why_dropped(record) or 'empty taxon'}"
        elif record.gap:
            gap = _gap(record, taxon)
        taxon = taxon if status == 0 else Taxon()
        member = record.member or (None, None, None)
        rows.append({
            "position": first + offset, "group": id_group(record.source, record.source_id), "stable": stable,
            "key": sample_key(stable), "source": record.source, "source_id": record.source_id, "path": record.path,
            "origin": record.origin, "license": record.license, "owner": record.owner, "sha256": record.sha256,
            "member_tar": member[0], "member_offset": member[1], "member_size": member[2],
            **dict(zip(RANK_NAMES, taxon.lineage)), "common": taxon.common, "status": status, "reason": reason,
            "no_kingdom": not taxon.kingdom, "gap": gap})
    return pa.Table.from_pylist(rows, schema=_ROW_SCHEMA)


def _gap(record: Record, taxon: Taxon) -> str:
    """A row whose lineage had a gap: ``filled`` when the alignment (the backbone, or other records of its
    taxon) gave back the ranks its source emptied, else ``kept`` (kept from its deepest unbroken run)."""
    emptied = [RANK_NAMES.index(rank.strip()) for rank in record.gap.split(",")]
    filled = all(taxon.lineage[rank] for rank in emptied)
    log.debug("%s: lineage gap, %s emptied; %s", record.origin, record.gap, "filled" if filled else "kept as is")
    return "filled" if filled else "kept"


# ---- repeated ids and hashing: one job per id bucket ----------------------------------------------------------

@dataclass(frozen=True)
class _IdsJob:
    bucket: int  # its rows: this partition of every ``resolved-*.arrow`` file (in source order, by name)
    specs: tuple[str, ...]
    buckets: int  # sha256 buckets to write
    work: str
    dropped: str


@dataclass
class _Settled:
    dropped: str  # the rows left out, sorted by (stage, position)
    tally: dict[str, list[int]]


def settle_ids(one: _IdsJob) -> _Settled:
    """Repeated ids and hashing for one id bucket: the bucket's candidates, with the sha256 taken, written by
    sha256 bucket; the rows left out written sorted by position (with their problems)."""
    rows = read_partition(sorted(Path(one.work).glob("resolved-*.arrow")), one.bucket, _ROW_SCHEMA)
    keys, stables, repeated = replay_ids(rows, one.specs)
    rows = rows.set_column(rows.schema.get_field_index("key"), "key", pa.array(keys, pa.string()))
    rows = rows.set_column(rows.schema.get_field_index("stable"), "stable", pa.array(stables, pa.string()))
    positions = rows.column("position").to_numpy()
    status = rows.column("status").to_numpy()
    accepted = (status == 0) & ~repeated
    tally = _Tally()
    for name, mask in (("held_out", status == _HELD_OUT), ("unresolved", status == _UNRESOLVED),
                       ("repeated_id", repeated)):
        tally.count(name, mask, positions)
    _count_kept(tally, rows, accepted, positions)
    drops = [_resolve_drops(rows, status, repeated, one.specs)]
    candidates = rows.filter(pa.array(accepted))
    digests, errors = _hash(candidates)
    bad = np.array([error is not None for error in errors], bool)
    tally.count("unreadable", bad, candidates.column("position").to_numpy())
    drops.append(_unreadable_drops(candidates, bad, errors))
    readable = candidates.select(list(_CANDIDATE_SCHEMA.names[:-1])).append_column(
        "digest", pa.array(digests, pa.binary(32))).filter(pa.array(~bad))
    dropped = str(Path(one.dropped) / f"ids-{one.bucket:06d}.arrow")
    write_sorted(pa.concat_tables(drops).sort_by([("stage", "ascending"), ("position", "ascending")]), dropped)
    partition = _digest_bucket(readable.column("digest"), one.buckets)
    write_partitioned(readable, partition, one.buckets, Path(one.work) / f"bytes-{one.bucket:06d}.arrow")
    return _released(_Settled(dropped, tally.counts))


def _count_kept(tally: _Tally, rows: pa.Table, accepted: np.ndarray, positions: np.ndarray) -> None:
    """The accepted rows' counts: no kingdom (listed whenever a row is accepted), gaps filled or kept."""
    no_kingdom = rows.column("no_kingdom").to_numpy(zero_copy_only=False)
    gap = np.array(rows.column("gap").to_pylist(), object)
    if accepted.any():
        tally.count("no_kingdom", (accepted & no_kingdom)[accepted], positions[accepted], present=True)
    tally.count("gap_filled", accepted & (gap == "filled"), positions)
    tally.count("gap_kept", accepted & (gap == "kept"), positions)


def replay_ids(rows: pa.Table, specs: Sequence[str]) -> tuple[list[str], list[str], np.ndarray]:
    """(key, stable id, repeated) of each row of one id bucket, rows in source order: a one-pass replay of
    the rule. A row whose id another (earlier) source of a different spec already took gets its id qualified
    by its own spec; an accepted row (a candidate whose key no earlier row took) takes its key; a candidate
    whose key was taken is a repeated id. Only rows sharing their `id_group` with another row can interact,
    so only they are replayed one by one."""
    keys = rows.column("key").to_pylist()
    stables = rows.column("stable").to_pylist()
    repeated = np.zeros(len(keys), bool)
    if not len(keys):
        return keys, stables, repeated
    _, inverse, sizes = np.unique(rows.column("group").to_numpy(), return_inverse=True, return_counts=True)
    shared = np.flatnonzero(sizes[inverse.ravel()] > 1)
    source_index = (rows.column("position").to_numpy() >> _ROW_BITS)[shared].tolist()
    candidate = (rows.column("status").to_numpy() == 0)[shared].tolist()
    kinds = rows.column("source").take(pa.array(shared)).to_pylist()
    ids = rows.column("source_id").take(pa.array(shared)).to_pylist()
    taken: dict[str, int] = {}  # key -> index of the source that accepted it
    for at, row in enumerate(shared.tolist()):
        source, key = source_index[at], keys[row]
        owner = taken.get(key)
        if owner is not None and owner < source and specs[owner] != specs[source]:
            stables[row] = stable_id(kinds[at], f"{ids[at]}@{specs[source]}")
            keys[row] = key = sample_key(stables[row])
        if candidate[at]:
            if key in taken:
                repeated[row] = True
            else:
                taken[key] = source
    return keys, stables, repeated


def _drop_table(rows: pa.Table, stage: int, reasons: Sequence[str], kept_ids: Sequence[str] | None = None,
                problems: Sequence[tuple[str, str] | None] | None = None) -> pa.Table:
    """The dropped-file rows of `rows` (left out at `stage`, with their reasons)."""
    count = rows.num_rows
    problems = problems or [None] * count
    return pa.table({
        "stage": pa.array([stage] * count, pa.int8()), "position": rows.column("position"),
        **{name: rows.column(name) for name in ("source", "source_id", "path", "origin")},
        "reason": pa.array(reasons, pa.string()), "kept_id": pa.array(kept_ids or [""] * count, pa.string()),
        "problem_origin": pa.array([p and p[0] for p in problems], pa.string()),
        "problem_reason": pa.array([p and p[1] for p in problems], pa.string()),
        "id": rows.column("key"),
    }).select(_DROPPED_SCHEMA.names).cast(_DROPPED_SCHEMA)


def _resolve_drops(rows: pa.Table, status: np.ndarray, repeated: np.ndarray, specs: Sequence[str]) -> pa.Table:
    left_out = rows.filter(pa.array((status != 0) | repeated))
    is_repeated = repeated[(status != 0) | repeated]
    reasons = [reason if not again else "repeated source id"
               for reason, again in zip(left_out.column("reason").to_pylist(), is_repeated.tolist())]
    problems = [(origin or specs[position >> _ROW_BITS], f"source id {source_id!r} repeated; kept the first")
                if again else None
                for origin, source_id, position, again in zip(
                    left_out.column("origin").to_pylist(), left_out.column("source_id").to_pylist(),
                    left_out.column("position").to_pylist(), is_repeated.tolist())]
    return _drop_table(left_out, 0, reasons, problems=problems)


def _unreadable_drops(candidates: pa.Table, bad: np.ndarray, errors: list[str | None]) -> pa.Table:
    unreadable = candidates.filter(pa.array(bad))
    errors = [error for error in errors if error is not None]
    problems = [(origin or path, f"cannot read image {path}: {error}") for origin, path, error in zip(
        unreadable.column("origin").to_pylist(), unreadable.column("path").to_pylist(), errors)]
    return _drop_table(unreadable, 1, [f"cannot read image: {error}" for error in errors], problems=problems)


def _hash(candidates: pa.Table) -> tuple[list[bytes], list[str | None]]:
    digests: list[bytes] = []
    errors: list[str | None] = []
    for start in range(0, candidates.num_rows, _HASH_ROWS):
        result = hash_batch(candidates.slice(start, _HASH_ROWS).select(["path", "sha256"]))
        digests += result.column("digest").to_pylist()
        errors += result.column("error").to_pylist()
    return digests, errors


def hash_batch(batch: pa.Table) -> pa.Table:
    """A plan stage, one batch at a time on any engine: the raw sha256 of each row's image (the source's own
    ``sha256`` when it gave one, else the file's bytes) and, for a file that cannot be read, the error
    (the digest then is all zero bytes)."""
    digests, errors = [], []
    for path, given in zip(batch.column("path").to_pylist(), batch.column("sha256").to_pylist()):
        try:
            digests.append(bytes.fromhex(given or sha256_file(path)))
            errors.append(None)
        except OSError as exc:
            digests.append(bytes(32))
            errors.append(exc.strerror or str(exc))
    return pa.table({"digest": pa.array(digests, pa.binary(32)), "error": pa.array(errors, pa.string())})


def _digest_bucket(digests: pa.ChunkedArray, buckets: int) -> np.ndarray:
    """The sha256 bucket of each digest: its first 8 bytes modulo the bucket count."""
    raw = np.frombuffer(b"".join(digests.to_pylist()), np.uint8).reshape(-1, 32)[:, :8].copy()
    return (raw.view(">u8").ravel() % np.uint64(buckets)).astype(np.int64)


# ---- exclusion, exact duplicates, splits: one job per sha256 bucket -------------------------------------------

@dataclass(frozen=True)
class _BytesJob:
    bucket: int  # its rows: this partition of every id bucket's ``bytes-*.arrow`` output
    val_fraction: float
    seed: int
    ranges: int  # shard-order ranges per split
    work: str
    dropped: str


@dataclass
class _Kept:
    counts: np.ndarray  # rows per (split, range): partition split index * ranges + range
    dropped: str
    tally: dict[str, list[int]]


def settle_bytes(one: _BytesJob, exclusions: Exclusions) -> _Kept:
    """Exclusion (`exclusions`: shared by every bucket's job), exact duplicates, split and shard order for one
    sha256 bucket (every copy of an image is in the same bucket): the kept rows written by (split, shard-order
    range)."""
    rows = read_partition(sorted(Path(one.work).glob("bytes-*.arrow")), one.bucket, _CANDIDATE_SCHEMA)
    rows = rows.sort_by("position")
    positions = rows.column("position").to_numpy()
    tally = _Tally()
    excluded, drops = exclude_copies(rows, exclusions)
    tally.count("excluded", excluded, positions)
    duplicate, kept_of = first_copies(rows, ~excluded)
    tally.count("duplicates", duplicate, positions)
    keys = rows.column("key").to_pylist()
    drops.append(_drop_table(rows.filter(pa.array(duplicate)), 3,
                             [f"exact duplicate of {keys[k]}" for k in kept_of[duplicate].tolist()],
                             kept_ids=[keys[k] for k in kept_of[duplicate].tolist()]))
    dropped = str(Path(one.dropped) / f"bytes-{one.bucket:06d}.arrow")
    write_sorted(pa.concat_tables(drops), dropped)
    kept = rows.filter(pa.array(~excluded & ~duplicate))
    stables = kept.column("stable").to_pylist()
    val = np.array([assign_split(s, val_fraction=one.val_fraction, seed=one.seed) == VAL for s in stables], bool)
    order = np.array([shard_order(s, seed=one.seed) for s in stables], np.float64)
    partition = val * one.ranges + np.minimum((order * one.ranges).astype(np.int64), one.ranges - 1)
    digests = pa.array([d.hex() for d in kept.column("digest").to_pylist()], pa.string())
    ranged = kept.set_column(kept.schema.get_field_index("sha256"), "sha256", digests).select(
        [name for name, _ in _ITEM_FIELDS]).append_column("shard_order", pa.array(order))
    counts = write_partitioned(ranged, partition, 2 * one.ranges, Path(one.work) / f"kept-{one.bucket:06d}.arrow")
    return _released(_Kept(counts, dropped, tally.counts))


def exclude_copies(rows: pa.Table, exclusions: Exclusions) -> tuple[np.ndarray, list[pa.Table]]:
    """(excluded, [dropped-file rows]) of rows in source order: every row an exclusion matches, and every
    other copy of a matched row's bytes (with the reason of the last match of those bytes)."""
    excluded = np.zeros(rows.num_rows, bool)
    if not exclusions or not rows.num_rows:
        return excluded, []
    reasons: dict[int, str] = {}
    digests = rows.column("digest").to_pylist()
    columns = {name: rows.column(name).to_pylist() for name in ("stable", "path", *_TAXON_COLUMNS)}
    for i, digest in enumerate(digests):
        taxon = Taxon(tuple(columns[rank][i] for rank in RANK_NAMES), columns["common"][i])
        if reason := exclusions.match(stable=columns["stable"][i], path=columns["path"][i], taxon=taxon,
                                      sha256=digest.hex()):
            reasons[i] = reason
    last = {digests[i]: reason for i, reason in reasons.items()}  # in row order: the last match wins
    excluded[:] = [digest in last for digest in digests]
    why = [reasons.get(i) or f"same bytes as an excluded image: {last[digests[i]]}" for i in np.flatnonzero(excluded)]
    return excluded, [_drop_table(rows.filter(pa.array(excluded)), 2, why)]


def first_copies(rows: pa.Table, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate, kept) over rows in source order: among the `alive` rows of each sha256, all but the first
    are duplicates; `kept` gives each row's first copy (the row itself when it is the first or not alive)."""
    kept = np.arange(rows.num_rows)
    living = np.flatnonzero(alive)
    if len(living):
        digests = np.array(rows.column("digest").take(pa.array(living)).to_pylist(), "S32")
        _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
        kept[living] = living[first[inverse.ravel()]]
    return kept != np.arange(rows.num_rows), kept


# ---- shard order and items files: one job per shard-order range -----------------------------------------------

@dataclass(frozen=True)
class _RangeJob:
    split: str
    partition: int  # its rows: this partition of every sha256 bucket's ``kept-*.arrow`` output
    start: int  # the range's first position in its split
    total: int  # rows in the split
    shard_size: int
    out: str
    work: str


def _shard_jobs(counts: np.ndarray, run: _Runner, *, out: str, shard_size: int, image_size: int, resize_mode: str,
                quality: int) -> list[ShardJob]:
    """Cut each split, in shard order, into jobs of `shard_size` and write their items files: each range job
    writes the shards it holds whole and a fragment of the ones it shares with a neighbour, joined here."""
    ranges = counts.shape[1]
    jobs, range_jobs = [], []
    for s, split in enumerate(SPLITS):
        split_counts = counts[s]
        total = int(split_counts.sum())
        starts = np.concatenate([[0], np.cumsum(split_counts)[:-1]])
        range_jobs += [_RangeJob(split, s * ranges + r, int(starts[r]), total, shard_size, out,
                                 str(Path(out) / PLAN_DIR / WORK_DIR))
                       for r in range(ranges) if split_counts[r]]
        jobs += [ShardJob(out=out, split=split, index=index, items_file=str(items_path(out, split, index)),
                          count=min(shard_size, total - start), image_size=image_size, resize_mode=resize_mode,
                          quality=quality) for index, start in enumerate(range(0, total, shard_size))]
    fragments: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for written in run(order_range, range_jobs):
        for split, index, start, path in written:
            fragments.setdefault((split, index), []).append((start, path))
    for (split, index), parts in fragments.items():
        write_items(pa.concat_tables([read_ipc(path) for _, path in sorted(parts)]), items_path(out, split, index))
    return jobs


def order_range(one: _RangeJob) -> list[tuple[str, int, int, str]]:
    """Sort one shard-order range of one split (by shard order, then key) and write the items files of the
    shards wholly inside it; returns (split, shard index, range start, fragment file) of the shards it holds
    only part of (at most two: a range is a run of positions)."""
    rows = read_partition(sorted(Path(one.work).glob("kept-*.arrow")), one.partition, _RANGED_SCHEMA)
    rows = rows.sort_by([("shard_order", "ascending"), ("key", "ascending")])
    end = one.start + rows.num_rows
    fragments = []
    for shard in range(one.start // one.shard_size, (end - 1) // one.shard_size + 1):
        low, high = shard * one.shard_size, min((shard + 1) * one.shard_size, one.total)
        part = rows.slice(max(low, one.start) - one.start, min(high, end) - max(low, one.start))
        if low >= one.start and high <= end:
            write_items(part, items_path(one.out, one.split, shard))
        else:
            path = str(Path(one.work) / f"part-{one.split}-{shard:06d}-{one.start:012d}.arrow")
            write_ipc(part, path)
            fragments.append((one.split, shard, one.start, path))
    return _released(fragments)


def write_items(rows: pa.Table, path: str | Path) -> None:
    """One shard job's items file (`treeclip.data.shards.ITEM_COLUMNS`), rows in shard order."""
    pq.write_table(rows.select(list(ITEM_COLUMNS)), path)
