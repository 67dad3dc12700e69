"""The alignment report (``alignment.json``), its readable summary, and writing them atomically.

Report keys: ``records`` (in/out/dropped, and per source), ``taxa`` (distinct lineages in, aligned taxa out,
backbone lineages), ``filled_ranks`` and ``changed_ranks`` (records per rank whose name was filled in or
changed by a conflict), ``homonyms``/``conflicts``/``ambiguous`` (count, records, per rank or rule, the largest
examples: decisions as in `Alignment.decisions`; conflicts add ``records_moved``), ``dropped`` (records per
reason), ``common_names`` (taxa with and without one, and which source named them) and ``settings``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treeclip.atomic import atomic_write
from treeclip.taxonomy import RANK_NAMES

if TYPE_CHECKING:
    from treeclip.data.align.aligner import Alignment

Lineage = tuple[str, ...]
N_EXAMPLES = 10


def build_report(*, tally: Mapping[Lineage, Counter[str]], final: Mapping[Lineage, Lineage],
                 dropped: Mapping[Lineage, str], decisions: list[dict[str, Any]], named_by: Mapping[Lineage, str],
                 backbone_taxa: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The report dict: record counts per source, filled/changed ranks, decisions by kind, drops, names."""
    kept_taxa = set(final.values())
    return {
        "records": _record_counts(tally, final),
        "taxa": {"in": len(tally), "out": len(kept_taxa), "backbone": backbone_taxa},
        "filled_ranks": _rank_counts(tally, final, filled=True),
        "changed_ranks": _rank_counts(tally, final, filled=False),
        "homonyms": _kind_summary(decisions, "homonym", "rank"),
        "conflicts": _conflicts(decisions),
        "ambiguous": _kind_summary(decisions, "ambiguous", "rank"),
        "dropped": _dropped(tally, dropped),
        "common_names": {"taxa_with": len(named_by), "taxa_without": len(kept_taxa) - len(named_by),
                         "by_source": dict(sorted(Counter(named_by.values()).items()))},
        "settings": settings,
    }


def _record_counts(tally: Mapping[Lineage, Counter[str]], final: Mapping[Lineage, Lineage]) -> dict[str, Any]:
    per_source: dict[str, dict[str, int]] = {}
    for lineage, counts in tally.items():
        outcome = "out" if lineage in final else "dropped"
        for source, n in counts.items():
            row = per_source.setdefault(source, {"in": 0, "out": 0, "dropped": 0})
            row["in"] += n
            row[outcome] += n
    total = {key: sum(row[key] for row in per_source.values()) for key in ("in", "out", "dropped")}
    return {**total, "per_source": dict(sorted(per_source.items()))}


def _rank_counts(tally: Mapping[Lineage, Counter[str]], final: Mapping[Lineage, Lineage],
                 filled: bool) -> dict[str, int]:
    """Records per rank whose name was filled in (was empty) or changed (was a different name)."""
    counts = dict.fromkeys(RANK_NAMES, 0)
    for lineage, aligned in final.items():
        n = sum(tally[lineage].values())
        for rank, before, after in zip(RANK_NAMES, lineage, aligned):
            if before != after and bool(before) != filled:
                counts[rank] += n
    return counts


def _decision_records(decision: dict[str, Any]) -> int:
    if decision["kind"] == "homonym":
        return sum(taxon["records"] for taxon in decision["taxa"])
    if decision["kind"] == "conflict":
        return sum(candidate["records"] for candidate in decision["candidates"])
    return decision["records"]


def _kind_summary(decisions: list[dict[str, Any]], kind: str, by: str) -> dict[str, Any]:
    """Count, records, per-`by` counts and the largest examples of one kind of decision."""
    chosen = [d for d in decisions if d["kind"] == kind]
    examples = sorted(chosen, key=lambda d: (-_decision_records(d), d["rank"], d["name"]))[:N_EXAMPLES]
    return {"count": len(chosen), "records": sum(_decision_records(d) for d in chosen),
            f"per_{by}": dict(sorted(Counter(d[by] for d in chosen).items())), "examples": examples}


def _conflicts(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    summary = _kind_summary(decisions, "conflict", "rule")
    moved = sum(d["records_moved"] for d in decisions if d["kind"] == "conflict")
    return {**summary, "records_moved": moved}


def _dropped(tally: Mapping[Lineage, Counter[str]], dropped: Mapping[Lineage, str]) -> dict[str, int]:
    reasons: Counter[str] = Counter()
    for lineage, reason in dropped.items():
        reasons[reason] += sum(tally[lineage].values())
    return dict(sorted(reasons.items()))


def _lineage(names: list[str]) -> str:
    return " ".join(name for name in names if name) or "(none)"


def _counts_line(counts: Mapping[str, int]) -> str:
    shown = [f"{key} {n:,}" for key, n in counts.items() if n]
    return ", ".join(shown) or "none"


def _example(decision: dict[str, Any]) -> str:
    head = f"{decision['rank']} {decision['name']}"
    if decision["kind"] == "homonym":
        return f"{head}: " + " | ".join(f"{_lineage(t['lineage'])} ({t['records']:,})" for t in decision["taxa"])
    if decision["kind"] == "conflict":
        options = " vs ".join(f"{_lineage(c['lineage'])} ({c['records']:,})" for c in decision["candidates"])
        return f"{head}: chose {_lineage(decision['chosen'])} by {decision['rule']}; {options}"
    return f"{head} ({decision['records']:,} records): fits " + " | ".join(map(_lineage, decision["options"]))


def summarize(report: dict[str, Any]) -> str:
    """Readable text of a report made by `build_report`."""
    records, taxa = report["records"], report["taxa"]
    lines = [f"records: {records['in']:,} in, {records['out']:,} out, {records['dropped']:,} dropped; "
             f"taxa: {taxa['in']:,} distinct lineages in, {taxa['out']:,} aligned taxa out "
             f"(backbone: {taxa['backbone']:,} taxa)"]
    for source, row in records["per_source"].items():
        lines.append(f"  {source}: {row['in']:,} in, {row['out']:,} out, {row['dropped']:,} dropped")
    lines.append(f"filled ranks (records): {_counts_line(report['filled_ranks'])}")
    lines.append(f"ranks changed by conflicts (records): {_counts_line(report['changed_ranks'])}")
    for title, key, by in (("homonyms kept apart", "homonyms", "per_rank"),
                           ("conflicts resolved", "conflicts", "per_rule"),
                           ("ambiguous, left unfilled", "ambiguous", "per_rank")):
        part = report[key]
        lines.append(f"{title}: {part['count']:,} ({_counts_line(part[by])}), {part['records']:,} records")
        lines.extend(f"  e.g. {_example(d)}" for d in part["examples"][:3])
    lines.append(f"dropped (records): {_counts_line(report['dropped'])}")
    names = report["common_names"]
    lines.append(f"common names: {names['taxa_with']:,} taxa named ({_counts_line(names['by_source'])}), "
                 f"{names['taxa_without']:,} without")
    return "\n".join(lines) + "\n"


def write_report(alignment: Alignment, path: str | Path) -> Path:
    """Write the report to `path` (JSON) and every decision to ``<stem>.decisions.jsonl`` beside it, atomically.

    Returns the decisions file's path.
    """
    path = Path(path)
    atomic_write(path, json.dumps(alignment.report, indent=2, ensure_ascii=False) + "\n")
    decisions = path.with_name(f"{path.stem}.decisions.jsonl")
    atomic_write(decisions, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in alignment.decisions))
    return decisions
