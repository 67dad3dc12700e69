"""Planning a build: which images go into which shard, decided before any image is decoded.

1. Pass 1 streams every source into the `Aligner` (and reports the sources' bad rows and files).
2. Pass 2 streams the sources again and resolves each record's taxon; records the alignment drops, records
   their source marks as held out (``split=unseen``, as `treeclip synth` marks its unseen species), and
   source ids repeated within a source (reported), are left out.
3. The sha256 of every remaining image's source bytes is taken (threads; hashing and file reads release
   the GIL). Unreadable files are reported and left out.
4. Exclusions: every record matching an `--exclude` entry (name, hash, path or id) is left out, and so is
   every other copy of an excluded image's bytes, so an evaluation image cannot leak in under another label.
5. Exact duplicates: among records with the same sha256 the first in source order (the order of
   ``--source`` options, then each source's own order) is kept; the others are dropped with ``kept_id``.
6. Splits come from a hash of each stable id (`treeclip.data.splits`); within a split, images are ordered
   by a seeded hash of the stable id and cut into shards of `shard_size`.

Because duplicates are resolved here, from hashes of every candidate, the plan is exact and a pure
function of the inputs: a resumed build recomputes the very same shard jobs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from treeclip.data.align import Aligner, Alignment
from treeclip.data.exclude import Exclusions
from treeclip.data.images import sha256_file
from treeclip.data.records import Problem, Record
from treeclip.data.shards import ShardJob, WorkItem
from treeclip.data.splits import SPLITS, assign_split, sample_key, shard_order, stable_id
from treeclip.data.sources import Source
from treeclip.taxonomy import Taxon

log = logging.getLogger(__name__)
ProblemHandler = Callable[[Problem], None]
_HASH_BATCH = 4096  # files in flight at once: bounds the futures held in memory
HELD_OUT_SPLIT = "unseen"  # a source split that must never reach training (evaluation-only taxa)


@dataclass
class Plan:
    """The shard jobs, everything left out (with reasons), the problems met and the alignment."""

    jobs: list[ShardJob]
    alignment: Alignment
    dropped: list[dict[str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    source_counts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Candidate:
    order: int
    record: Record
    taxon: Taxon
    stable: str
    key: str


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
    threads: int = 1,
    on_problem: ProblemHandler | None = None,
) -> Plan:
    """Run the planning passes described in the module docstring and return the shard jobs."""
    report = _Reporter(on_problem)
    per_source = _observe(sources, aligner, report)
    plan = Plan(jobs=[], alignment=aligner.finalize(), problems=report.problems)
    plan.source_counts = [{"spec": src.spec, "kind": src.kind, **n} for src, n in zip(sources, per_source)]
    plan.counts["records"] = sum(n["records"] for n in per_source)
    candidates = _resolve(sources, plan, report)
    hashes = _hash_all(candidates, plan, report, threads)
    kept = _dedup(_exclude(candidates, hashes, exclusions, plan), hashes, plan)
    plan.jobs = _shard_jobs(kept, hashes, out=out, shard_size=shard_size, val_fraction=val_fraction, seed=seed,
                            image_size=image_size, resize_mode=resize_mode, quality=quality)
    plan.counts["planned"] = len(kept)
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


def _observe(sources: Sequence[Source], aligner: Aligner, report: _Reporter) -> list[dict[str, int]]:
    counts = []
    for source in sources:
        n = {"records": 0, "problems": 0}
        for item in source.records():
            if isinstance(item, Problem):
                n["problems"] += 1
                report(item)
            else:
                n["records"] += 1
                aligner.observe(item)
        counts.append(n)
    return counts


def _records(sources: Sequence[Source]) -> Iterator[tuple[str, Record]]:
    for source in sources:
        yield from ((source.spec, item) for item in source.records() if isinstance(item, Record))


def _drop(plan: Plan, record: Record, reason: str, counter: str, *, key: str, kept_id: str = "") -> None:
    plan.counts[counter] += 1
    plan.dropped.append({"id": key, "source": record.source, "source_id": record.source_id, "path": record.path,
                         "origin": record.origin, "reason": reason, "kept_id": kept_id})


def _resolve(sources: Sequence[Source], plan: Plan, report: _Reporter) -> list[_Candidate]:
    """Pass 2: aligned taxa; records without one, and ids repeated within a source, are dropped.

    Two sources of one kind may use the same source id for different images (two ``folder:`` roots with
    the same layout): the later source's id is then qualified by its spec, ``"{source_id}@{spec}"``.
    """
    candidates, owner = [], {}  # key → spec of the source holding it
    for order, (spec, record) in enumerate(_records(sources)):
        taxon = plan.alignment.resolve(record)
        stable = stable_id(record.source, record.source_id)
        if owner.get(sample_key(stable), spec) != spec:
            stable = stable_id(record.source, f"{record.source_id}@{spec}")
        key = sample_key(stable)
        if record.split_hint == HELD_OUT_SPLIT:
            _drop(plan, record, f"held out by its source (split={HELD_OUT_SPLIT})", "held_out", key=key)
        elif taxon is None or not (taxon.taxonomic or taxon.common):
            reason = f"not aligned: {plan.alignment.why_dropped(record) or 'empty taxon'}"
            _drop(plan, record, reason, "unresolved", key=key)
        elif key in owner:
            report(Problem(record.origin or spec, f"source id {record.source_id!r} repeated; kept the first"))
            _drop(plan, record, "repeated source id", "repeated_id", key=key)
        else:
            owner[key] = spec
            plan.counts["no_kingdom"] += not taxon.kingdom
            candidates.append(_Candidate(order, record, taxon, stable, key))
    return candidates


def _hash_one(record: Record) -> str:
    return record.sha256 or sha256_file(record.path)


def _hash_all(candidates: list[_Candidate], plan: Plan, report: _Reporter, threads: int) -> dict[str, str]:
    """{key: sha256 of the source bytes}; unreadable images are reported and dropped."""
    hashes = {}
    for candidate, (digest, error) in zip(candidates, _hash_stream(candidates, threads)):
        if error:
            record = candidate.record
            report(Problem(record.origin or record.path, f"cannot read image {record.path}: {error}"))
            _drop(plan, record, f"cannot read image: {error}", "unreadable", key=candidate.key)
        else:
            hashes[candidate.key] = digest
    return hashes


def _hash_stream(candidates: list[_Candidate], threads: int) -> Iterator[tuple[str, str]]:
    """(sha256, error) per candidate, in order, hashing `_HASH_BATCH` files at a time on `threads` threads."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(candidates), _HASH_BATCH):
            yield from pool.map(_try_hash, (c.record for c in candidates[start:start + _HASH_BATCH]))


def _try_hash(record: Record) -> tuple[str, str]:
    try:
        return _hash_one(record), ""
    except OSError as exc:
        return "", exc.strerror or str(exc)


def _exclude(candidates: Iterable[_Candidate], hashes: dict[str, str], exclusions: Exclusions,
             plan: Plan) -> list[_Candidate]:
    """Drop excluded records and every copy of their bytes."""
    readable = [c for c in candidates if c.key in hashes]
    if not exclusions:
        return readable
    reasons = {c.key: reason for c in readable  # only the matches: memory grows with the excluded images
               if (reason := exclusions.match(stable=c.stable, path=c.record.path, taxon=c.taxon,
                                              sha256=hashes[c.key]))}
    tainted = {hashes[key]: reason for key, reason in reasons.items()}
    kept = []
    for candidate in readable:
        reason = reasons.get(candidate.key) or tainted.get(hashes[candidate.key], "")
        if reason:
            if candidate.key not in reasons:
                reason = f"same bytes as an excluded image: {reason}"
            _drop(plan, candidate.record, reason, "excluded", key=candidate.key)
        else:
            kept.append(candidate)
    return kept


def _dedup(candidates: Iterable[_Candidate], hashes: dict[str, str], plan: Plan) -> list[_Candidate]:
    """Keep the first record (in source order) of each distinct sha256."""
    first: dict[str, str] = {}
    kept = []
    for candidate in sorted(candidates, key=lambda c: c.order):
        digest = hashes[candidate.key]
        if digest in first:
            _drop(plan, candidate.record, f"exact duplicate of {first[digest]}", "duplicates", key=candidate.key,
                  kept_id=first[digest])
        else:
            first[digest] = candidate.key
            kept.append(candidate)
    return kept


def _shard_jobs(kept: list[_Candidate], hashes: dict[str, str], *, out: str, shard_size: int, val_fraction: float,
                seed: int, image_size: int, resize_mode: str, quality: int) -> list[ShardJob]:
    by_split: dict[str, list[_Candidate]] = {split: [] for split in SPLITS}
    for candidate in kept:
        by_split[assign_split(candidate.stable, val_fraction=val_fraction, seed=seed)].append(candidate)
    jobs = []
    for split, members in by_split.items():
        members.sort(key=lambda c: (shard_order(c.stable, seed=seed), c.key))
        for index, start in enumerate(range(0, len(members), shard_size)):
            items = tuple(_work_item(c, hashes[c.key]) for c in members[start:start + shard_size])
            jobs.append(ShardJob(out=out, split=split, index=index, items=items, image_size=image_size,
                                 resize_mode=resize_mode, quality=quality))
    return jobs


def _work_item(candidate: _Candidate, digest: str) -> WorkItem:
    record = candidate.record
    return WorkItem(key=candidate.key, source=record.source, source_id=record.source_id, path=record.path,
                    taxon=candidate.taxon, sha256=digest, origin=record.origin, license=record.license,
                    owner=record.owner, member=record.member)
