"""`Aligner` (pass 1: observe every record) and `Alignment` (pass 2: resolve each record's taxon)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from treeclip.data.align import nodes
from treeclip.data.align.nodes import Lineage, Placement, Prefix
from treeclip.data.align.report import build_report, summarize
from treeclip.data.records import Record
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon

log = logging.getLogger(__name__)

BACKBONE = "backbone"  # the source name of backbone common names in `common_precedence`
DEFAULT_COMMON_PRECEDENCE = ("inat21", "eol", "tol10m", "wds", BACKBONE, "csv", "folder", "bioscan")
DEFAULT_SOURCE_PRECEDENCE = ("inat21", "bioscan", "eol", "tol10m", "wds", "csv", "folder")

DROP_EMPTY = "no taxon"
DROP_AMBIGUOUS = "ambiguous homonym: the ranks above it fit several taxa"
DROP_NO_KINGDOM = "no kingdom known from any source or the backbone"
DROP_UNSEEN = "not observed by the aligner"


def source_order(precedence: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    """Sort key of a source kind: its place in `precedence`, unlisted kinds after, alphabetically."""
    index = {name: i for i, name in enumerate(precedence)}
    return lambda source: (index.get(source, len(index)), source)


@dataclass
class Alignment:
    """The aligned taxon (or the drop reason) of every observed lineage, the report and the decisions."""

    taxa: dict[Lineage, Taxon]
    dropped: dict[Lineage, str]
    report: dict[str, Any]
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def resolve(self, record: Record) -> Taxon | None:
        """The aligned taxon of a record, or None when the alignment drops it (see `why_dropped`)."""
        return self.taxa.get(record.taxon.lineage)

    def why_dropped(self, record: Record) -> str:
        """Why `resolve` returns None for this record; "" when it does not."""
        lineage = record.taxon.lineage
        if lineage in self.taxa:
            return ""
        return self.dropped.get(lineage, DROP_UNSEEN)

    def summary(self) -> str:
        """The report as readable text."""
        return summarize(self.report)


class Aligner:
    """Accumulates records (cheap: counts per distinct lineage and source), then aligns them at once.

    `backbone` lineages (e.g. from `treeclip.data.backbone.read_backbone`) take part like records but carry
    no record counts and win conflicts; it is consumed by `finalize` (call it once). `common_precedence` orders the source
    kinds (and "backbone") whose common names are preferred; `source_precedence` breaks conflict ties.
    With `require_kingdom`, records whose kingdom cannot be resolved are dropped; otherwise kept as given.
    """

    def __init__(self, backbone: Iterable[Taxon] = (),
                 common_precedence: Sequence[str] = DEFAULT_COMMON_PRECEDENCE,
                 source_precedence: Sequence[str] = DEFAULT_SOURCE_PRECEDENCE, *,
                 require_kingdom: bool = True) -> None:
        self._backbone = backbone
        self._common_precedence = tuple(common_precedence)
        self._source_precedence = tuple(source_precedence)
        self._require_kingdom = require_kingdom
        self._tally: dict[Lineage, Counter[str]] = {}
        self._commons: dict[tuple[Lineage, str], Counter[str]] = {}

    def observe(self, record: Record) -> None:
        """Count one record under its lineage and source, with its common name."""
        lineage = record.taxon.lineage
        tally = self._tally.get(lineage)
        if tally is None:
            tally = self._tally[lineage] = Counter()
        tally[record.source] += 1
        if record.taxon.common:
            names = self._commons.setdefault((lineage, record.source), Counter())
            names[record.taxon.common] += 1

    def absorb(self, other: Aligner) -> None:
        """Add the counts `other` observed (e.g. one source's, counted by another process). Absorbing the
        sources' aligners in source order leaves the state that observing all their records in order leaves."""
        for lineage, counts in other._tally.items():
            self._tally.setdefault(lineage, Counter()).update(counts)
        for key, names in other._commons.items():
            self._commons.setdefault(key, Counter()).update(names)

    def finalize(self) -> Alignment:
        """Align every observed lineage (see `treeclip.data.align`) and build the report."""
        backbone = _backbone_commons(self._backbone)
        solver = _Solver(self._tally, set(backbone), source_order(self._source_precedence))
        resolved = solver.run([*(lineage for lineage in self._tally if any(lineage)),
                               *(lineage for lineage in backbone if lineage not in self._tally)])
        final, dropped = self._final(resolved, solver.ambiguous)
        commons, named_by = self._common_names(final, resolved, backbone)
        taxa = {lineage: Taxon(aligned, commons.get(aligned, "")) for lineage, aligned in final.items()}
        settings = {"common_precedence": list(self._common_precedence),
                    "source_precedence": list(self._source_precedence), "require_kingdom": self._require_kingdom}
        report = build_report(tally=self._tally, final=final, dropped=dropped, decisions=solver.decisions,
                              named_by=named_by, backbone_taxa=len(backbone), settings=settings)
        log.info("aligned %d lineages into %d taxa; %d decisions", len(self._tally), len(set(final.values())),
                 len(solver.decisions))
        return Alignment(taxa=taxa, dropped=dropped, report=report, decisions=solver.decisions)

    def _final(self, resolved: dict[Lineage, Lineage],
               ambiguous: Container[Lineage]) -> tuple[dict[Lineage, Lineage], dict[Lineage, str]]:
        final, dropped = {}, {}
        for lineage in self._tally:
            aligned = resolved.get(lineage, lineage)
            if not any(lineage):
                dropped[lineage] = DROP_EMPTY
            elif self._require_kingdom and not aligned[Rank.KINGDOM]:
                dropped[lineage] = DROP_AMBIGUOUS if lineage in ambiguous else DROP_NO_KINGDOM
            else:
                final[lineage] = aligned
        return final, dropped

    def _common_names(self, final: dict[Lineage, Lineage], resolved: dict[Lineage, Lineage],
                      backbone: dict[Lineage, str]) -> tuple[dict[Lineage, str], dict[Lineage, str]]:
        """{aligned lineage: common name} chosen by source precedence, and the source that named each."""
        merged: dict[Lineage, dict[str, Counter[str]]] = {}
        for (lineage, source), names in self._commons.items():
            if lineage in final:
                merged.setdefault(final[lineage], {}).setdefault(source, Counter()).update(names)
        kept = set(final.values())
        for lineage, common in backbone.items():
            aligned = resolved.get(lineage, lineage)
            if common and aligned in kept:
                merged.setdefault(aligned, {}).setdefault(BACKBONE, Counter())[common] += 1
        order = source_order(self._common_precedence)
        commons, named_by = {}, {}
        for aligned, per_source in merged.items():
            source = min(per_source, key=order)
            commons[aligned] = min(per_source[source].items(), key=lambda item: (-item[1], item[0]))[0]
            named_by[aligned] = source
        return commons, named_by


def _backbone_commons(backbone: Iterable[Taxon]) -> dict[Lineage, str]:
    """{backbone lineage: its first non-empty common name, or ""}."""
    commons: dict[Lineage, str] = {}
    for taxon in backbone:
        if any(taxon.lineage) and not commons.get(taxon.lineage):
            commons[taxon.lineage] = taxon.common
    return commons


class _Solver:
    """Resolves lineages rank by rank, kingdom first, so each rank sees canonical ranks above it."""

    def __init__(self, tally: dict[Lineage, Counter[str]], backbone: set[Lineage],
                 order: Callable[[str], tuple[int, str]]) -> None:
        self.tally = tally
        self.backbone = backbone
        self.order = order
        self.decisions: list[dict[str, Any]] = []
        self.ambiguous: dict[Lineage, dict[str, Any]] = {}  # lineage -> its deepest ambiguity
        self._current: dict[Lineage, list[str]] = {}
        self._records = {lineage: sum(counts.values()) for lineage, counts in tally.items()}

    def run(self, lineages: list[Lineage]) -> dict[Lineage, Lineage]:
        """{lineage: aligned lineage} for every given lineage."""
        self._current = {lineage: list(lineage) for lineage in lineages}
        for rank in range(Rank.PHYLUM, len(RANK_NAMES)):
            for key, placements in self._placements(rank).items():
                if len(placements) > 1:
                    self._resolve(rank, key, list(placements.values()))
        resolved = {lineage: tuple(names) for lineage, names in self._current.items()}
        self._log_ambiguities(resolved)
        return resolved

    def _placements(self, rank: int) -> dict[tuple[str, ...], dict[Prefix, Placement]]:
        """{node key: {prefix: placement}}; a species node is keyed by genus and epithet."""
        placements: dict[tuple[str, ...], dict[Prefix, Placement]] = {}
        for lineage, names in self._current.items():
            if not lineage[rank]:
                continue
            key = (lineage[Rank.GENUS], lineage[rank]) if rank == Rank.SPECIES else (lineage[rank],)
            prefix = tuple(names[:rank])
            by_prefix = placements.setdefault(key, {})
            placement = by_prefix.get(prefix)
            if placement is None:
                placement = by_prefix[prefix] = Placement(prefix)
            placement.lineages.append(lineage)
            placement.records += self._records.get(lineage, 0)
            placement.backbone = placement.backbone or lineage in self.backbone
        return placements

    def _resolve(self, rank: int, key: tuple[str, ...], placements: list[Placement]) -> None:
        outcome = nodes.resolve_node(placements, tally=self.tally, source_order=self.order)
        for placement in placements:
            canonical = outcome.mapping.get(placement.prefix)
            if canonical is not None and canonical != placement.prefix:
                for lineage in placement.lineages:
                    self._current[lineage][:rank] = canonical
        self._log(rank, key, outcome)

    def _log(self, rank: int, key: tuple[str, ...], outcome: nodes.Outcome) -> None:
        """Log the node's homonyms, conflicts and ambiguities that concern records."""
        where, name = {"rank": RANK_NAMES[rank], "name": " ".join(key)}, key[-1]
        named = [g for g in outcome.groups if sum(c.records for c in g) > 0]
        if len(named) > 1:
            self.decisions.append({"kind": "homonym", **where, "taxa": [
                {"lineage": [*g[0].prefix, name], "records": sum(c.records for c in g)} for g in named]})
        for conflict in outcome.conflicts:
            if any(c.records for c in conflict.candidates):
                self.decisions.append({"kind": "conflict", **where, **self._conflict(conflict, name)})
        for ambiguity in outcome.ambiguities:
            decision = {"kind": "ambiguous", **where, "lineage": [*ambiguity.placement.prefix, name],
                        "records": 0, "options": [[*option, name] for option in ambiguity.options]}
            self.ambiguous.update(dict.fromkeys(ambiguity.placement.lineages, decision))

    def _log_ambiguities(self, resolved: dict[Lineage, Lineage]) -> None:
        """Log each ambiguity with the records it left without a kingdom (a deeper rank may resolve it)."""
        for lineage, decision in list(self.ambiguous.items()):
            if resolved[lineage][Rank.KINGDOM]:
                del self.ambiguous[lineage]
            else:
                decision["records"] += self._records.get(lineage, 0)
        logged = {id(d): d for d in self.ambiguous.values() if d["records"]}
        self.decisions.extend(logged.values())

    def _conflict(self, conflict: nodes.Conflict, name: str) -> dict[str, Any]:
        winner, *losers = conflict.candidates
        return {
            "rule": conflict.rule,
            "chosen": [*winner.prefix, name],
            "records_moved": sum(c.records for c in losers),
            "candidates": [{"lineage": [*c.prefix, name], "records": c.records, "backbone": c.backbone,
                            "sources": dict(sorted(sources.items()))}
                           for c, sources in zip(conflict.candidates, conflict.sources)],
        }
