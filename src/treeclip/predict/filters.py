"""Filters of a bank's columns (checklists and clades, one mechanism), custom label lists and bins.

A checklist entry is a `Taxon` with some ranks set, e.g. a binomial (genus + epithet), a genus or a
family; a bank column is kept when, for some entry, every rank the entry sets is equal (case-insensitive)
in the column's lineage. A clade (``--within Aves``, ``--within "Insecta,Arachnida"``) keeps the columns
with that name at any rank ("Genus epithet" names a species). `filter_columns` intersects both; predictions
over the kept columns are renormalised once (the softmax runs over them, then any location prior is applied
and the result normalised a single time).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from treeclip.errors import UsageError
from treeclip.formats import Problem, open_table
from treeclip.taxonomy import Rank, Taxon

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


def clade_columns(lineages: Sequence[Sequence[str]], clades: Sequence[str]) -> np.ndarray:
    """Sorted indices of the bank columns inside any of the named clades; UsageError naming the clades that
    match no column (a typo would otherwise silently shrink the answer set)."""
    wanted = {name.strip().casefold() for name in clades if name.strip()}
    if not wanted:
        raise UsageError("--within names no clade; give e.g. --within Aves or --within 'Insecta,Arachnida'")
    found: set[str] = set()
    keep = np.zeros(len(lineages), dtype=bool)
    for column, lineage in enumerate(lineages):
        names = {name.casefold() for name in lineage[: Rank.GENUS + 1] if name}
        if lineage[Rank.SPECIES]:
            names.add(f"{lineage[Rank.GENUS]} {lineage[Rank.SPECIES]}".casefold())
        hits = names & wanted
        if hits:
            keep[column] = True
            found |= hits
    missing = sorted(wanted - found)
    if missing:
        raise UsageError(f"--within: {', '.join(missing)} names no taxon of the label bank; check the spelling")
    return np.flatnonzero(keep)


def split_clades(values: Sequence[str]) -> list[str]:
    """Clade names from ``--within`` values, each a name or a comma-separated list."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def filter_columns(lineages: Sequence[Sequence[str]], *, checklist: Iterable[Taxon] | None = None,
                   within: Sequence[str] | None = None) -> np.ndarray | None:
    """The bank columns kept by a checklist and/or clades (their intersection); None when neither is given.
    UsageError when nothing is left."""
    if checklist is None and not within:
        return None
    keep = np.arange(len(lineages))
    if checklist is not None:
        keep = np.intersect1d(keep, checklist_columns(lineages, checklist))
        if len(keep) == 0:
            raise UsageError("the checklist matches no taxon of the label bank; check its names and rank columns")
    if within:
        keep = np.intersect1d(keep, clade_columns(lineages, within))
        if len(keep) == 0:
            raise UsageError(f"no taxon of the checklist lies within {', '.join(within)}")
    return keep


def read_checklist(path: str | os.PathLike[str], *, columns: Mapping[str, str] | None = None) -> list[Taxon]:
    """Checklist entries from a CSV with one or more rank columns (e.g. ``species`` binomials, ``genus``);
    `columns` ({role: column}, ``--columns``) names columns no rule recognises."""
    return read_taxa(path, columns=columns)


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
    table = open_table(path, what="bins file")
    if len(table.header) < 2:
        raise UsageError(f"{table.path}: a bins file needs two columns (label, group) and a header row")
    bins: dict[str, str] = {}
    for row in table.rows({"label": table.header[0], "group": table.header[1]}):
        if isinstance(row, Problem):
            raise UsageError(f"{row.origin}: {row.reason}")
        if row[1]["label"] and row[1]["group"]:
            bins[row[1]["label"]] = row[1]["group"]
    if not bins:
        raise UsageError(f"{table.path} maps no labels to groups")
    return bins
