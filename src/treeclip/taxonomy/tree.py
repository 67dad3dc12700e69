"""`TaxonTree`: the tree spanned by many taxa, for hierarchy metrics and generators.

Nodes are lineage prefixes: ``()`` is the root, ``("Animalia",)`` a kingdom, ... a 7-tuple a species.
A taxon known only from some rank down (e.g. a bare binomial) hangs below ``""`` nodes for its unknown ranks.
Building is linear in the number of taxa (at most seven prefixes each); lookups are dictionary reads.
"""

from __future__ import annotations

from collections.abc import Iterable

from .ranks import Rank
from .taxon import Taxon

Prefix = tuple[str, ...]


def _present(taxon: Taxon | Prefix) -> Prefix:
    """The lineage cut after its deepest present rank (leading unknown ranks kept as "")."""
    lineage = taxon.lineage if isinstance(taxon, Taxon) else tuple(taxon)
    end = len(lineage)
    while end and not lineage[end - 1]:
        end -= 1
    return lineage[:end]


class TaxonTree:
    """Children, paths, lowest common ancestors and taxonomic distances over a set of taxa.

    `children`, `taxa_at` and `leaves` describe the taxa given; `path`, `lca` and `distance` are pure lineage
    arithmetic and accept any Taxon or lineage tuple, in the tree or not.
    """

    def __init__(self, taxa: Iterable[Taxon]) -> None:
        self._children: dict[Prefix, dict[str, None]] = {(): {}}
        self._taxa: dict[Prefix, Taxon] = {}
        for taxon in taxa:
            self._add(taxon)

    def _add(self, taxon: Taxon) -> None:
        if not isinstance(taxon, Taxon):
            raise ValueError(f"TaxonTree takes Taxon objects, got {taxon!r}")
        key = _present(taxon)
        if not key:
            raise ValueError(f"cannot place a taxon without ranks in the tree: {taxon!r}")
        known = self._taxa.get(key)
        if known is None or (taxon.common and not known.common):
            self._taxa[key] = taxon
        children = self._children
        depth = len(key)
        while depth and key[:depth] not in children:  # find the deepest node already in the tree
            depth -= 1
        for end in range(depth + 1, len(key) + 1):
            children[key[:end]] = {}
            children[key[: end - 1]][key[end - 1]] = None

    def __len__(self) -> int:
        """Number of distinct taxa given (by lineage)."""
        return len(self._taxa)

    def __contains__(self, node: object) -> bool:
        """Whether a Taxon or a lineage prefix (taken as given) is a node of the tree."""
        if isinstance(node, Taxon):
            return _present(node) in self._children
        return isinstance(node, tuple) and node in self._children

    def children(self, prefix: Prefix) -> list[str]:
        """Sorted names one rank below the node `prefix` (``()`` for the kingdoms); KeyError for an unknown one.

        The prefix is taken as given: ``("Animalia", "")`` is the unknown phylum below Animalia, not Animalia.
        """
        node = tuple(prefix)
        if node not in self._children:
            raise KeyError(f"lineage prefix {node!r} is not in the tree")
        return sorted(self._children[node])

    def path(self, taxon: Taxon | Prefix) -> list[Prefix]:
        """The lineage prefixes from the kingdom down to `taxon` itself."""
        key = _present(taxon)
        return [key[: depth + 1] for depth in range(len(key))]

    def lca(self, a: Taxon | Prefix, b: Taxon | Prefix) -> Prefix:
        """The longest common lineage prefix, ending at a known rank (``()`` when even the kingdoms differ)."""
        key_a, key_b = _present(a), _present(b)
        depth = 0
        for x, y in zip(key_a, key_b):
            if x != y:
                break
            depth += 1
        return _present(key_a[:depth])

    def distance(self, a: Taxon | Prefix, b: Taxon | Prefix) -> int:
        """Ranks from the deeper of the two taxa up to their LCA: 0 same taxon, 1 same genus, 7 other kingdom."""
        return max(len(_present(a)), len(_present(b))) - len(self.lca(a, b))

    def taxa_at(self, rank: Rank | str) -> list[Prefix]:
        """Sorted distinct prefixes that reach `rank` (e.g. every genus as a 6-tuple)."""
        length = Rank.parse(rank) + 1
        return sorted(node for node in self._children if len(node) == length and node[-1])

    def leaves(self) -> list[Taxon]:
        """The given taxa that have no descendants in the tree, sorted by lineage."""
        return [self._taxa[key] for key in sorted(self._taxa) if not self._children[key]]
