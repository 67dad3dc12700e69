"""Planning a build: which images go into which shard, decided before any image is decoded.

1. Pass 1 reads every source into an `Aligner` tally (and reports the sources' bad rows and files): one
   `observe_source` job per source on the build's engine (in this process, a process pool or Ray tasks);
   the per-source tallies (distinct lineage and source counts) are merged in source order.
2. Pass 2 streams the sources again and resolves each record's taxon; records the alignment drops, records
   their source marks as held out (``split=unseen``, as `treeclip synth` marks its unseen species), and
   source ids repeated within a source (reported), are left out. Rows whose source mended a gap in their
   lineage (`Record.gap`) are counted: ``gap_filled`` when the alignment gave the emptied ranks back (from
   the backbone or other records of the taxon), ``gap_kept`` when they stay at their deepest unbroken run.
3. The sha256 of every remaining image's source bytes is taken where the bytes are read: `hash_batch` over
   the spill's batches on the build's engine (threads locally, Ray Data tasks on Ray). Unreadable files are
   reported and left out.
4. Exclusions: every record matching an `--exclude` entry (name, hash, path or id) is left out, and so is
   every other copy of an excluded image's bytes, so an evaluation image cannot leak in under another label.
5. Exact duplicates: among records with the same sha256 the first in source order (the order of
   ``--source`` options, then each source's own order) is kept; the others are dropped with ``kept_id``.
6. Splits come from a hash of each stable id (`treeclip.data.splits`); within a split, images are ordered
   by a seeded hash of the stable id and cut into shards of `shard_size`.

Because duplicates are resolved here, from hashes of every candidate, the plan is exact and a pure
function of the inputs: a resumed build recomputes the very same shard jobs.

**Memory is columnar.** No Python object lives per image beyond one batch of `_BATCH` records. Pass 2 writes
each candidate's strings (ids, path, origin, licence...) to a Parquet spill file (``OUT/.build/candidates.parquet``)
and keeps in memory only fixed-width columns (`_Columns`: 12-byte key, 32-byte sha256, taxon index, split, shard
order: ~70 bytes per image). Repeated ids, exclusion of copies and exact duplicates are set operations on those
arrays (sort/unique/search); later steps stream the spill file batch by batch. The shard jobs are written as one
small items file per shard (`treeclip.data.shards.items_path`) through a bucketed external sort, so a job is a
file name and a count. Every step is a per-batch map or a group-by on the key/sha256 columns, the shape a
distributed dataframe engine (Ray Data) can run as is.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from treeclip.data.align import Aligner, Alignment
from treeclip.data.engines import map_table_batches, map_unordered
from treeclip.data.exclude import Exclusions
from treeclip.data.images import sha256_file
from treeclip.data.records import Problem, Record
from treeclip.data.shards import ITEM_COLUMNS, PLAN_DIR, ShardJob, items_path
from treeclip.data.splits import SPLITS, VAL, assign_split, sample_key, shard_order, stable_id
from treeclip.data.sources import Source
from treeclip.taxonomy import RANK_NAMES, Taxon

log = logging.getLogger(__name__)
ProblemHandler = Callable[[Problem], None]
HELD_OUT_SPLIT = "unseen"  # a source split that must never reach training (evaluation-only taxa)
SPILL_FILE = ".build/candidates.parquet"
_BATCH = 16_384  # records per pass-2 batch and rows per spill read
_HASH_ROWS = 256  # files per `hash_batch` call: a unit of work for a thread or a Ray Data task
_BUCKET_ROWS = 65_536  # rows per bucket (an Arrow IPC stream file) of the external sort that writes the items files
_KEY = "S12"  # a sample key (24 hex digits) as raw bytes
_DIGEST = "S32"  # a sha256 as raw bytes
_SPILL_SCHEMA = pa.schema([
    *((name, pa.string()) for name in ("key", "stable", "source", "source_id", "path", "origin", "license", "owner",
                                       "sha256", "member_tar")),
    ("member_offset", pa.int64()), ("member_size", pa.int64()), ("taxon", pa.int32()),
])


@dataclass
class Plan:
    """The shard jobs, everything left out (with reasons), the problems met and the alignment."""

    jobs: list[ShardJob]
    alignment: Alignment
    dropped: list[dict[str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    source_counts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Columns:
    """The fixed-width, in-memory columns of the candidates (row i = row i of the spill file)."""

    spill: Path
    taxa: list[Taxon]  # the distinct aligned taxa; `taxon` indexes them
    key: np.ndarray  # S12
    taxon: np.ndarray  # int32
    val: np.ndarray  # bool: in the val split
    order: np.ndarray  # float64: `shard_order` of the stable id
    digest: np.ndarray = field(default_factory=lambda: np.empty(0, _DIGEST))  # S32, set by `_hash_all`
    alive: np.ndarray = field(default_factory=lambda: np.empty(0, bool))  # not dropped (yet)

    def key_hex(self, index: int) -> str:
        return self.key[index:index + 1].tobytes().hex()  # tobytes keeps trailing zero bytes


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
) -> Plan:
    """Run the planning passes described in the module docstring, write the jobs' items files under
    ``out/.build/plan/`` (replacing earlier ones) and return the shard jobs. Hashing (step 3) runs on
    `engine` (`treeclip.data.engines.map_table_batches`: `workers` threads, or Ray Data); the plan is the
    same on either."""
    report = _Reporter(on_problem)
    per_source = _observe(sources, aligner, report, engine=engine, workers=workers, ray_address=ray_address)
    plan = Plan(jobs=[], alignment=aligner.finalize(), problems=report.problems)
    plan.source_counts = [{"spec": src.spec, "kind": src.kind, **n} for src, n in zip(sources, per_source)]
    plan.counts["records"] = sum(n["records"] for n in per_source)
    plan_dir = Path(out) / PLAN_DIR
    shutil.rmtree(plan_dir, ignore_errors=True)
    plan_dir.mkdir(parents=True)
    spill = Path(out) / SPILL_FILE
    try:
        columns = _resolve(sources, plan, report, spill, val_fraction=val_fraction, seed=seed)
        _hash_all(columns, plan, report, engine=engine, workers=workers, ray_address=ray_address)
        _exclude(columns, exclusions, plan)
        _dedup(columns, plan)
        plan.jobs = _shard_jobs(columns, out=out, shard_size=shard_size, image_size=image_size,
                                resize_mode=resize_mode, quality=quality)
    finally:
        spill.unlink(missing_ok=True)
    plan.counts["planned"] = sum(job.count for job in plan.jobs)
    return plan


class _Reporter:
    """Collects problems and forwards each to the caller as it happens."""

    def __init__(self, handler: ProblemHandler | None) -> None:
        self.problems: list[Problem] = []
        self._handler = handler

    def __call__(self, problem: Problem) -> None:
        self.problems.append(problem)
        if self._handler is not None:
            self._handler(problem)
        else:
            log.warning("%s: %s", problem.origin, problem.reason)


@dataclass
class _Observed:
    """Pass 1 over one source: its alignment tally (counts per distinct lineage and source), problems, counts."""

    index: int
    aligner: Aligner
    problems: list[Problem]
    counts: dict[str, int]


def observe_source(job: tuple[int, Source]) -> _Observed:
    """Pass 1 for one source, a job for any engine (`treeclip.data.engines.map_unordered`): only its tally,
    which grows with its distinct lineages, not its records, comes back."""
    index, source = job
    observed = _Observed(index, Aligner(), [], {"records": 0, "problems": 0})
    for item in source.records():
        if isinstance(item, Problem):
            observed.counts["problems"] += 1
            observed.problems.append(item)
        else:
            observed.counts["records"] += 1
            observed.aligner.observe(item)
    return observed


def _observe(sources: Sequence[Source], aligner: Aligner, report: _Reporter, *, engine: str, workers: int,
             ray_address: str | None) -> list[dict[str, int]]:
    """Pass 1: one `observe_source` job per source on the engine; tallies merged (and problems reported)
    in source order, so the alignment does not depend on which job finished first."""
    observed = sorted(map_unordered(observe_source, list(enumerate(sources)), engine=engine, workers=workers,
                                    ray_address=ray_address), key=lambda o: o.index)
    for one in observed:
        for problem in one.problems:
            report(problem)
        aligner.absorb(one.aligner)
    return [one.counts for one in observed]


def _drop(plan: Plan, row: Record | dict[str, Any], reason: str, counter: str, *, key: str,
          kept_id: str = "") -> None:
    fields = row if isinstance(row, dict) else {name: getattr(row, name) for name in
                                                 ("source", "source_id", "path", "origin")}
    plan.counts[counter] += 1
    plan.dropped.append({"id": key, "source": fields["source"], "source_id": fields["source_id"],
                         "path": fields["path"], "origin": fields["origin"], "reason": reason, "kept_id": kept_id})


def _in_sorted(values: np.ndarray, sorted_arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Whether each value occurs in any of the sorted arrays."""
    found = np.zeros(len(values), bool)
    for array in sorted_arrays:
        if len(array) and len(values):
            at = np.minimum(np.searchsorted(array, values), len(array) - 1)
            found |= array[at] == values
    return found


def _chunks(array: np.ndarray, size: int = 1 << 20) -> Iterator[np.ndarray]:
    return (array[start:start + size] for start in range(0, len(array), size))


def _merge_sorted(array: np.ndarray, values: np.ndarray) -> np.ndarray:
    values = np.sort(values)
    return np.insert(array, np.searchsorted(array, values), values)


class _Pass2:
    """Pass 2, one batch of records at a time: drops in record order, candidates to the spill and columns."""

    def __init__(self, plan: Plan, report: _Reporter, spill: Path, *, val_fraction: float, seed: int) -> None:
        self.plan, self.report = plan, report
        self.val_fraction, self.seed = val_fraction, seed
        self.writer = pq.ParquetWriter(spill, _SPILL_SCHEMA)
        self.taxon_ids: dict[tuple[tuple[str, ...], str], int] = {}
        self.taxa: list[Taxon] = []
        self.parts: dict[str, list[np.ndarray]] = {"key": [], "taxon": [], "val": [], "order": []}
        self.owners: list[tuple[str, np.ndarray]] = []  # (spec, sorted accepted keys) of each finished source

    def source(self, source: Source) -> None:
        accepted = np.empty(0, _KEY)
        records = (item for item in source.records() if isinstance(item, Record))
        while batch := list(islice(records, _BATCH)):
            accepted = _merge_sorted(accepted, self._batch(source.spec, batch, accepted))
        self.owners.append((source.spec, accepted))

    def _batch(self, spec: str, records: list[Record], accepted: np.ndarray) -> np.ndarray:
        """Handle one batch; return the keys it accepted.

        Two sources of one kind may use the same source id for different images (two ``folder:`` roots with
        the same layout): the later source's id is then qualified by its spec, ``"{source_id}@{spec}"``."""
        stables = [stable_id(r.source, r.source_id) for r in records]
        keys = _keys(stables)
        others = [keys_ for owner, keys_ in self.owners if owner != spec]
        for i in np.flatnonzero(_in_sorted(keys, others)):
            stables[i] = stable_id(records[i].source, f"{records[i].source_id}@{spec}")
            keys[i] = bytes.fromhex(sample_key(stables[i]))
        taxa = [self.plan.alignment.resolve(record) for record in records]
        usable = np.array([r.split_hint != HELD_OUT_SPLIT and t is not None and bool(t.taxonomic or t.common)
                           for r, t in zip(records, taxa)], bool)
        repeated = usable & _in_sorted(keys, [keys_ for _, keys_ in self.owners] + [accepted])
        first = np.zeros(len(keys), bool)
        first[np.flatnonzero(usable)[np.unique(keys[usable], return_index=True)[1]]] = True
        repeated |= usable & ~first
        rows = [self._one(spec, record, taxon, stable, key, repeat)
                for record, taxon, stable, key, repeat in zip(records, taxa, stables, _hex(keys), repeated)]
        taken = [row for row in rows if row is not None]
        if taken:
            self.writer.write_table(pa.Table.from_pylist(taken, schema=_SPILL_SCHEMA))
            kept = usable & ~repeated
            self.parts["key"].append(keys[kept])
            self.parts["taxon"].append(np.array([row["taxon"] for row in taken], np.int32))
            self.parts["val"].append(np.array([assign_split(row["stable"], val_fraction=self.val_fraction,
                                                            seed=self.seed) == VAL for row in taken], bool))
            self.parts["order"].append(np.array([shard_order(row["stable"], seed=self.seed) for row in taken]))
        return keys[usable & ~repeated]

    def _one(self, spec: str, record: Record, taxon: Taxon | None, stable: str, key: str,
             repeated: bool) -> dict[str, Any] | None:
        """The spill row of a candidate, or None when the record is dropped (and recorded as such)."""
        plan = self.plan
        if record.split_hint == HELD_OUT_SPLIT:
            _drop(plan, record, f"held out by its source (split={HELD_OUT_SPLIT})", "held_out", key=key)
        elif taxon is None or not (taxon.taxonomic or taxon.common):
            reason = f"not aligned: {plan.alignment.why_dropped(record) or 'empty taxon'}"
            _drop(plan, record, reason, "unresolved", key=key)
        elif repeated:
            self.report(Problem(record.origin or spec, f"source id {record.source_id!r} repeated; kept the first"))
            _drop(plan, record, "repeated source id", "repeated_id", key=key)
        else:
            plan.counts["no_kingdom"] += not taxon.kingdom
            if record.gap:
                _count_gap(plan, record, taxon)
            member = record.member or (None, None, None)
            return {"key": key, "stable": stable, "source": record.source, "source_id": record.source_id,
                    "path": record.path, "origin": record.origin, "license": record.license, "owner": record.owner,
                    "sha256": record.sha256, "member_tar": member[0], "member_offset": member[1],
                    "member_size": member[2], "taxon": self._taxon_id(taxon)}
        return None

    def _taxon_id(self, taxon: Taxon) -> int:
        index = self.taxon_ids.get((taxon.lineage, taxon.common))
        if index is None:
            index = self.taxon_ids[(taxon.lineage, taxon.common)] = len(self.taxa)
            self.taxa.append(taxon)
        return index

    def finish(self, spill: Path) -> _Columns:
        self.writer.close()
        empty = {"key": np.empty(0, _KEY), "taxon": np.empty(0, np.int32), "val": np.empty(0, bool),
                 "order": np.empty(0, float)}
        parts = {name: np.concatenate(arrays) if arrays else empty[name] for name, arrays in self.parts.items()}
        columns = _Columns(spill=spill, taxa=self.taxa, **parts)
        columns.alive = np.ones(len(columns.key), bool)
        return columns


def _count_gap(plan: Plan, record: Record, taxon: Taxon) -> None:
    """Count a row whose lineage had a gap: ``gap_filled`` when the alignment (the backbone, or other records
    of its taxon) gave back the ranks its source emptied, else ``gap_kept`` (kept from its deepest unbroken run)."""
    emptied = [RANK_NAMES.index(rank.strip()) for rank in record.gap.split(",")]
    filled = all(taxon.lineage[rank] for rank in emptied)
    plan.counts["gap_filled" if filled else "gap_kept"] += 1
    log.debug("%s: lineage gap, %s emptied; %s", record.origin, record.gap, "filled" if filled else "kept as is")


def _keys(stables: Sequence[str]) -> np.ndarray:
    return np.array([bytes.fromhex(sample_key(stable)) for stable in stables], _KEY)


def _hex(array: np.ndarray) -> list[str]:
    """The hex digits of each fixed-width bytes value (trailing zero bytes included)."""
    raw, width = array.tobytes(), array.itemsize
    return [raw[i:i + width].hex() for i in range(0, len(raw), width)]


def _resolve(sources: Sequence[Source], plan: Plan, report: _Reporter, spill: Path, *, val_fraction: float,
             seed: int) -> _Columns:
    """Pass 2: aligned taxa; records without one, and ids repeated within a source, are dropped."""
    pass2 = _Pass2(plan, report, spill, val_fraction=val_fraction, seed=seed)
    for source in sources:
        pass2.source(source)
    return pass2.finish(spill)


def _spill_rows(columns: _Columns, names: Sequence[str], wanted: np.ndarray | None = None
                ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(candidate index, {name: value}) of the spill's rows, in order; only the `wanted` ones if given."""
    start = 0
    for batch in pq.ParquetFile(columns.spill).iter_batches(batch_size=_BATCH, columns=list(names)):
        stop = start + batch.num_rows
        if wanted is None:
            picked = range(start, stop)
        else:
            picked = wanted[np.searchsorted(wanted, start):np.searchsorted(wanted, stop)]
        if len(picked):
            values = batch.take(pa.array(np.asarray(picked) - start)).to_pydict()
            for i, index in enumerate(picked):
                yield int(index), {name: values[name][i] for name in names}
        start = stop


_DROP_FIELDS = ("key", "source", "source_id", "path", "origin")


def _hash_all(columns: _Columns, plan: Plan, report: _Reporter, *, engine: str, workers: int,
              ray_address: str | None) -> None:
    """Fill `columns.digest` with the sha256 of each candidate's source bytes, taken by `hash_batch` on the
    engine's workers (where the bytes are read); unreadable images are reported and dropped."""
    digests = np.zeros(len(columns.key), _DIGEST)
    failed: dict[int, str] = {}
    start = 0
    for table in map_table_batches(hash_batch, str(columns.spill), columns=("path", "sha256"),
                                   batch_rows=_HASH_ROWS, engine=engine, workers=workers, ray_address=ray_address):
        stop = start + table.num_rows
        digests[start:stop] = np.array(table.column("digest").to_pylist(), _DIGEST)
        failed.update((start + int(i), table.column("error")[int(i)].as_py())
                      for i in np.flatnonzero(np.asarray(table.column("error").is_valid())))
        start = stop
    for index, row in _spill_rows(columns, _DROP_FIELDS, np.array(sorted(failed), np.int64)):
        error = failed[index]
        report(Problem(row["origin"] or row["path"], f"cannot read image {row['path']}: {error}"))
        _drop(plan, row, f"cannot read image: {error}", "unreadable", key=row["key"])
        columns.alive[index] = False
    columns.digest = digests


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


def _exclude(columns: _Columns, exclusions: Exclusions, plan: Plan) -> None:
    """Drop excluded records and every copy of their bytes."""
    if not exclusions:
        return
    alive = np.flatnonzero(columns.alive)
    reasons = {index: reason for index, row in _spill_rows(columns, ("stable", "path"), alive)  # only the matches
               if (reason := exclusions.match(stable=row["stable"], path=row["path"],
                                              taxon=columns.taxa[columns.taxon[index]],
                                              sha256=_hex(columns.digest[index:index + 1])[0]))}
    matched = np.array(sorted(reasons, reverse=True), np.int64)  # a copy takes the last match's reason
    tainted_digests, last = np.unique(columns.digest[matched], return_index=True)
    tainted = np.concatenate([np.empty(0, np.int64)] + [  # in chunks: no whole-column copy of the digests
        chunk[_in_sorted(columns.digest[chunk], [tainted_digests])] for chunk in _chunks(alive)])
    for index, row in _spill_rows(columns, _DROP_FIELDS, tainted):
        reason = reasons.get(index)
        if reason is None:
            at = np.searchsorted(tainted_digests, columns.digest[index])
            reason = f"same bytes as an excluded image: {reasons[int(matched[last[at]])]}"
        _drop(plan, row, reason, "excluded", key=row["key"])
    columns.alive[tainted] = False


def _dedup(columns: _Columns, plan: Plan) -> None:
    """Keep the first record (in source order) of each distinct sha256.

    Memory: candidates are first grouped by an 8-byte prefix of their sha256 (a sort of 8-byte integers);
    only those sharing a prefix with another (the duplicates, and rare prefix collisions) are grouped by
    their whole sha256."""
    alive = np.flatnonzero(columns.alive)
    prefix = columns.digest.view(np.uint64)[::4][alive]  # the first 8 bytes of each sha256
    order = np.argsort(prefix, kind="stable")
    ordered = prefix[order]
    del prefix
    same = ordered[1:] == ordered[:-1]
    shared = np.zeros(len(alive), bool)
    shared[1:] |= same
    shared[:-1] |= same
    suspects = np.sort(alive[order[shared]])  # in source order
    del order, ordered, same, shared
    _, first, group = np.unique(columns.digest[suspects], return_index=True, return_inverse=True)
    kept_of = suspects[first[group.ravel()]]  # per suspect: the candidate kept for its bytes
    duplicates = suspects[kept_of != suspects]
    kept_by_index = dict(zip(duplicates.tolist(), kept_of[kept_of != suspects].tolist()))
    for index, row in _spill_rows(columns, _DROP_FIELDS, duplicates):
        kept = columns.key_hex(kept_by_index[index])
        _drop(plan, row, f"exact duplicate of {kept}", "duplicates", key=row["key"], kept_id=kept)
    columns.alive[duplicates] = False


def _shard_jobs(columns: _Columns, *, out: str, shard_size: int, image_size: int, resize_mode: str,
                quality: int) -> list[ShardJob]:
    """Cut each split, in shard order, into jobs of `shard_size` and write their items files."""
    position = np.full(len(columns.key), -1, np.int64)  # each kept candidate's place in the jobs' sequence
    jobs, starts, placed = [], [], 0
    for split in SPLITS:
        members = np.flatnonzero(columns.alive & (columns.val == (split == VAL)))
        members = members[np.lexsort((columns.key[members], columns.order[members]))]
        position[members] = placed + np.arange(len(members))
        for index, start in enumerate(range(0, len(members), shard_size)):
            count = min(shard_size, len(members) - start)
            jobs.append(ShardJob(out=out, split=split, index=index, items_file=str(items_path(out, split, index)),
                                 count=count, image_size=image_size, resize_mode=resize_mode, quality=quality))
            starts.append(placed + start)
        placed += len(members)
    _write_items(columns, position, jobs, np.array(starts, np.int64))
    return jobs


def _write_items(columns: _Columns, position: np.ndarray, jobs: list[ShardJob], starts: np.ndarray) -> None:
    """Write every job's items file: the spill's kept rows are first spread into buckets of whole jobs
    (`_BUCKET_ROWS` rows each), then each bucket is sorted by position and cut into its jobs."""
    if not jobs:
        return
    bucket_of_job = starts // _BUCKET_ROWS
    folder = Path(jobs[0].items_file).parent
    schema = _SPILL_SCHEMA.append(pa.field("position", pa.int64()))
    with contextlib.ExitStack() as stack:
        writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        for table in _kept_rows(columns, position):
            buckets = bucket_of_job[np.searchsorted(starts, table.column("position").to_numpy(), side="right") - 1]
            for bucket in np.unique(buckets).tolist():
                if bucket not in writers:
                    sink = stack.enter_context(pa.OSFile(str(folder / f"bucket-{bucket}.arrow"), "wb"))
                    writers[bucket] = stack.enter_context(pa.ipc.new_stream(sink, schema))
                writers[bucket].write_table(table.take(pa.array(np.flatnonzero(buckets == bucket))))
    for bucket in sorted(writers):
        _cut_bucket(columns, folder / f"bucket-{bucket}.arrow", jobs, starts)


def _kept_rows(columns: _Columns, position: np.ndarray) -> Iterator[pa.Table]:
    """The spill's kept rows, batch by batch, with their position and the sha256 taken (not the given one)."""
    start = 0
    for batch in pq.ParquetFile(columns.spill).iter_batches(batch_size=_BATCH):
        where = position[start:start + batch.num_rows]
        rows = np.flatnonzero(where >= 0)
        table = pa.Table.from_batches([batch]).take(pa.array(rows)).append_column("position", pa.array(where[rows]))
        digests = pa.array(_hex(columns.digest[start + rows]), pa.string())
        start += batch.num_rows
        yield table.set_column(table.schema.get_field_index("sha256"), "sha256", digests)


def _cut_bucket(columns: _Columns, path: Path, jobs: list[ShardJob], starts: np.ndarray) -> None:
    with pa.OSFile(str(path), "rb") as source:
        table = pa.ipc.open_stream(source).read_all().sort_by("position")
    path.unlink()
    taxa = pa.table({**{rank: [t.lineage[i] for t in columns.taxa] for i, rank in enumerate(RANK_NAMES)},
                     "common": [t.common for t in columns.taxa]}, schema=pa.schema(
                         [(name, pa.string()) for name in (*RANK_NAMES, "common")])).take(table.column("taxon"))
    for name in taxa.column_names:
        table = table.append_column(name, taxa.column(name))
    positions = table.column("position").to_numpy()
    first_job, last_job = np.searchsorted(starts, positions[[0, -1]], side="right") - 1
    for job_index in range(int(first_job), int(last_job) + 1):
        job = jobs[job_index]
        offset = int(starts[job_index] - positions[0])
        pq.write_table(table.slice(offset, job.count).select(list(ITEM_COLUMNS)), job.items_file)
