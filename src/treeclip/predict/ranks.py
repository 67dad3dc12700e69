"""Rank aggregation: species probabilities summed over lineage prefixes, vectorised.

`RankIndex` numbers, once per bank, the distinct lineage prefixes at every rank ("groups") and records
for each group its parent group one rank up. Aggregating a batch of species probabilities to rank R is then
a chain of ``index_add`` operations: one over the bank's columns (species → genus) and, above it, over the
much smaller group vectors (genus → family → …). No Python loop ever runs over taxa per image.

At species rank every bank column is its own group (as pybioclip: duplicates are not merged). A group whose
own rank name is empty (a taxon known only to a higher rank) is "unnamed": it carries probability mass but
is never reported as an answer at that rank by the roll-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from treeclip.taxonomy import Rank


@dataclass(frozen=True)
class RankGroups:
    """The groups of one rank: which group each bank column falls in, plus per-group facts."""

    of_column: np.ndarray  # int64 [n_taxa]: group id of every bank column
    representative: np.ndarray  # int64 [n_groups]: a bank column inside the group (its first)
    named: np.ndarray  # bool [n_groups]: the group's own rank name is non-empty
    parent: np.ndarray  # int64 [n_groups]: group id one rank up (-1 at kingdom)

    def __len__(self) -> int:
        return len(self.representative)


class RankIndex:
    """Groups of every rank for a list of 7-rank lineages; see the module docstring."""

    def __init__(self, lineages: Sequence[Sequence[str]]) -> None:
        self.n_taxa = len(lineages)
        self.groups: list[RankGroups] = []
        parent_of_column = np.full(self.n_taxa, -1, dtype=np.int64)
        for rank in Rank:
            groups = _rank_groups(lineages, rank, parent_of_column)
            self.groups.append(groups)
            parent_of_column = groups.of_column
        self._tensors: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _index(self, rank: Rank, what: str, device: torch.device) -> torch.Tensor:
        """Group ids of the columns (or parent ids of the groups) of `rank`, cached per device."""
        key = (rank * 2 + (what == "parent"), device)
        if key not in self._tensors:
            groups = self.groups[rank]
            ids = torch.from_numpy(groups.parent if what == "parent" else groups.of_column)
            self._tensors[key] = ids.to(device)
        return self._tensors[key]

    def aggregate(self, probs: torch.Tensor, rank: Rank) -> torch.Tensor:
        """``[B, n_groups(rank)]`` group probabilities from ``[B, n_taxa]`` species probabilities."""
        if rank == Rank.SPECIES:
            return probs
        device = probs.device
        summed = _scatter_sum(probs, self._index(Rank.GENUS, "column", device), len(self.groups[Rank.GENUS]))
        for level in range(Rank.GENUS, rank, -1):
            summed = _scatter_sum(summed, self._index(Rank(level), "parent", device), len(self.groups[level - 1]))
        return summed

    def aggregate_all(self, probs: torch.Tensor) -> list[torch.Tensor]:
        """Group probabilities at every rank, kingdom first, from one pass up the tree."""
        device = probs.device
        levels = [probs, _scatter_sum(probs, self._index(Rank.GENUS, "column", device), len(self.groups[Rank.GENUS]))]
        for level in range(Rank.GENUS, Rank.KINGDOM, -1):
            parents = self._index(Rank(level), "parent", device)
            levels.append(_scatter_sum(levels[-1], parents, len(self.groups[level - 1])))
        return levels[::-1]


def _scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    return values.new_zeros(values.shape[0], size).index_add_(1, index, values)


def _rank_groups(lineages: Sequence[Sequence[str]], rank: Rank, parent_of_column: np.ndarray) -> RankGroups:
    """Number the prefixes ``lineage[: rank + 1]`` (keyed by parent group and own name)."""
    n_taxa = len(lineages)
    if rank == Rank.SPECIES:
        columns = np.arange(n_taxa, dtype=np.int64)
        named = np.fromiter((bool(lineage[rank]) for lineage in lineages), dtype=bool, count=n_taxa)
        return RankGroups(columns, columns.copy(), named, parent_of_column.copy())
    ids: dict[tuple[int, str], int] = {}
    of_column = np.empty(n_taxa, dtype=np.int64)
    representative, named, parent = [], [], []
    for column, (lineage, up) in enumerate(zip(lineages, parent_of_column.tolist(), strict=True)):
        key = (up, lineage[rank])
        group = ids.get(key)
        if group is None:
            group = ids[key] = len(representative)
            representative.append(column)
            named.append(bool(lineage[rank]))
            parent.append(up)
        of_column[column] = group
    return RankGroups(of_column, np.asarray(representative, dtype=np.int64), np.asarray(named, dtype=bool),
                      np.asarray(parent, dtype=np.int64))
