"""Checklists (restricting a bank to taxa named by rank values), custom label lists and bins.

A checklist entry is a `Taxon` with some ranks set, e.g. a binomial (genus + epithet), a genus or a
family; a bank column is kept when, for some entry, every rank the entry sets is equal (case-insensitive)
in the column's lineage. Predictions over the kept columns are renormalised (the softmax runs over them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from treeclip.data.records import Problem
from treeclip.data.sources.base import open_table
from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon

from .taxa import read_taxa


def checklist_columns(lineages: Sequence[Sequence[str]], entries: Iterable[Taxon]) -> np.ndarray:
    """Sorted indices of the bank columns matched by any checklist entry."""
    by_ranks: dict[tuple[int, ...], set[tuple[str, ...]]] = {}
    for entry in entries:
        ranks = tuple(i for i, name in enumerate(entry.lineage) if name)
        if ranks:
            by_ranks.setdefault(ranks, set()).add(tuple(entry.lineage[i].casefold() for i in ranks))
    keep = np.zeros(len(lineages), dtype=bool)
    for ranks, wanted in by_ranks.items():
        keep |= np.fromiter((tuple(lineage[i].casefold() for i in ranks) in wanted for lineage in lineages),
                            dtype=bool, count=len(lineages))
    return np.flatnonzero(keep)


def read_checklist(path: str | os.PathLike[str]) -> list[Taxon]:
    """Checklist entries from a CSV with one or more rank columns (e.g. ``species`` binomials, ``genus``)."""
    return read_taxa(path)


def read_labels(values: Sequence[str]) -> list[str]:
    """Custom labels from arguments: each value is a label, a comma-separated list, or ``@FILE`` / a ``.txt``
    file with one label per line. Duplicates are dropped, order kept."""
    labels: list[str] = []
    for value in values:
        if value.startswith("@") or (value.endswith(".txt") and os.path.isfile(value)):
            labels.extend(_lines(Path(value.removeprefix("@"))))
        else:
            labels.extend(part.strip() for part in value.split(","))
    unique = list(dict.fromkeys(label for label in labels if label))
    if not unique:
        raise UsageError("--labels names no labels; give labels, a comma-separated list or @FILE")
    return unique


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise UsageError(f"cannot read labels file {path}: {exc.strerror or exc}") from exc


def read_bins(path: str | os.PathLike[str]) -> dict[str, str]:
    """Label → group from a CSV whose first column is the label and second the group (header row first)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"bins file not found: {path}")
    bins: dict[str, str] = {}
    with open_table(file) as (header, rows):
        if len(header) < 2:
            raise UsageError(f"{file}: a bins file needs two columns (label, group) and a header row")
        for row in rows:
            if isinstance(row, Problem):
                raise UsageError(f"{row.origin}: {row.reason}")
            values = list(row[1].values())
            if values[0] and values[1]:
                bins[values[0]] = values[1]
    if not bins:
        raise UsageError(f"{file} maps no labels to groups")
    return bins
