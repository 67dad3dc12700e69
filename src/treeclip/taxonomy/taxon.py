"""`Taxon`: an immutable 7-rank lineage plus a common name, compared and hashed by lineage only.

A lineage is a tuple of seven strings, kingdom first; "" marks an unknown rank. The known ranks form one
contiguous run: leading ranks may be unknown (a bare binomial has only genus and species), but an empty
rank between two known ones is a *gap* and is rejected, as is a species epithet without a genus.
The constructor validates but does not clean; use `taxon_from_fields` / the parsers to clean raw labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ranks import RANK_NAMES, Rank

N_RANKS = len(RANK_NAMES)
Lineage = tuple[str, str, str, str, str, str, str]


def check_lineage(lineage: Any) -> Lineage:
    """The lineage padded to seven ranks; ValueError for non-strings, too many ranks, or a gap."""
    if isinstance(lineage, str) or not isinstance(lineage, (tuple, list)):
        raise ValueError(f"lineage must be a tuple of strings, got {lineage!r}")
    if len(lineage) > N_RANKS:
        raise ValueError(f"lineage has {len(lineage)} ranks, at most {N_RANKS} allowed: {lineage!r}")
    for rank, value in zip(RANK_NAMES, lineage):
        if not isinstance(value, str):
            raise ValueError(f"{rank} must be a string, got {value!r} in lineage {lineage!r}")
    full = tuple(lineage) + ("",) * (N_RANKS - len(lineage))
    _check_gaps(full)
    return full  # type: ignore[return-value]


def _check_gaps(lineage: tuple[str, ...]) -> None:
    present = [i for i, value in enumerate(lineage) if value]
    if present and present[-1] - present[0] + 1 != len(present):
        missing = next(i for i in range(present[0], present[-1]) if not lineage[i])
        below = next(i for i in present if i > missing)
        raise ValueError(
            f"lineage has a gap: {RANK_NAMES[below]} {lineage[below]!r} is set but {RANK_NAMES[missing]} "
            f"above it is empty in {lineage!r}"
        )
    if lineage[Rank.SPECIES] and not lineage[Rank.GENUS]:
        raise ValueError(f"species epithet {lineage[Rank.SPECIES]!r} has no genus in {lineage!r}")


@dataclass(frozen=True, slots=True, eq=False)
class Taxon:
    """Seven ranks (species = lowercase epithet) and a common name; eq/hash/order use the lineage only."""

    lineage: Lineage = ("",) * N_RANKS  # type: ignore[assignment]
    common: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.common, str):
            raise ValueError(f"common name must be a string, got {self.common!r}")
        object.__setattr__(self, "lineage", check_lineage(self.lineage))

    @classmethod
    def from_ranks(
        cls,
        kingdom: str = "",
        phylum: str = "",
        cls_: str = "",
        order: str = "",
        family: str = "",
        genus: str = "",
        species: str = "",
        common: str = "",
    ) -> Taxon:
        """Taxon from keyword ranks (``cls_`` is the class rank), validated but not cleaned."""
        return cls((kingdom, phylum, cls_, order, family, genus, species), common)

    # comparison and hashing: lineage only
    def __eq__(self, other: object) -> bool:
        return self.lineage == other.lineage if isinstance(other, Taxon) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.lineage)

    def __lt__(self, other: Taxon) -> bool:
        return self.lineage < other.lineage if isinstance(other, Taxon) else NotImplemented

    def __le__(self, other: Taxon) -> bool:
        return self.lineage <= other.lineage if isinstance(other, Taxon) else NotImplemented

    def __gt__(self, other: Taxon) -> bool:
        return self.lineage > other.lineage if isinstance(other, Taxon) else NotImplemented

    def __ge__(self, other: Taxon) -> bool:
        return self.lineage >= other.lineage if isinstance(other, Taxon) else NotImplemented

    # ranks
    @property
    def kingdom(self) -> str:
        return self.lineage[Rank.KINGDOM]

    @property
    def phylum(self) -> str:
        return self.lineage[Rank.PHYLUM]

    @property
    def cls(self) -> str:
        """The class rank (``class`` is a Python keyword)."""
        return self.lineage[Rank.CLASS]

    @property
    def order(self) -> str:
        return self.lineage[Rank.ORDER]

    @property
    def family(self) -> str:
        return self.lineage[Rank.FAMILY]

    @property
    def genus(self) -> str:
        return self.lineage[Rank.GENUS]

    @property
    def species(self) -> str:
        """The species epithet (lowercase), not the binomial; see `scientific`."""
        return self.lineage[Rank.SPECIES]

    # derived names
    @property
    def depth(self) -> int:
        """Number of present ranks."""
        return sum(1 for value in self.lineage if value)

    @property
    def rank(self) -> Rank | None:
        """The deepest present rank, or None for an empty lineage."""
        for index in range(N_RANKS - 1, -1, -1):
            if self.lineage[index]:
                return Rank(index)
        return None

    @property
    def scientific(self) -> str:
        """"Genus epithet", "Genus" without an epithet, "" without a genus."""
        genus, epithet = self.lineage[Rank.GENUS], self.lineage[Rank.SPECIES]
        return f"{genus} {epithet}" if epithet else genus

    @property
    def taxonomic(self) -> str:
        """The present ranks joined by spaces, kingdom first."""
        return " ".join(value for value in self.lineage if value)

    @property
    def tagged(self) -> str:
        """"kingdom K phylum P ... species s" over the present ranks."""
        return " ".join(f"{name} {value}" for name, value in zip(RANK_NAMES, self.lineage, strict=True) if value)

    @property
    def common_or_fallback(self) -> str:
        """The common name, else the scientific name, else the taxonomic string."""
        return self.common or self.scientific or self.taxonomic

    def prefix(self, rank: Rank | str) -> Taxon:
        """This taxon truncated to `rank` (inclusive); the common name is dropped."""
        keep = Rank.parse(rank) + 1
        return Taxon(self.lineage[:keep] + ("",) * (N_RANKS - keep))

    def ranks(self) -> dict[str, str]:
        """{"kingdom": ..., ..., "species": epithet} (all seven keys, "" when unknown)."""
        return dict(zip(RANK_NAMES, self.lineage, strict=True))
