"""The seven Linnaean ranks used throughout treeclip."""

from __future__ import annotations

from enum import IntEnum

RANK_NAMES: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

_ALIASES: dict[str, str] = {
    "cls": "class",
    "class_": "class",
    "division": "phylum",
    "epithet": "species",
    "specific_epithet": "species",
    "specificepithet": "species",
    "species_epithet": "species",
}


class Rank(IntEnum):
    """A taxonomic rank; the value is its index in a lineage tuple (kingdom = 0 ... species = 6)."""

    KINGDOM = 0
    PHYLUM = 1
    CLASS = 2
    ORDER = 3
    FAMILY = 4
    GENUS = 5
    SPECIES = 6

    @classmethod
    def parse(cls, name: str | Rank) -> Rank:
        """Rank from a name such as "Kingdom", "class", "cls" or "specific_epithet"; ValueError otherwise."""
        if isinstance(name, Rank):
            return name
        if not isinstance(name, str):
            raise ValueError(f"rank name must be a string, got {name!r}")
        key = name.strip().lower().replace(" ", "_").replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in RANK_NAMES:
            raise ValueError(f"unknown rank name {name!r}; expected one of {', '.join(RANK_NAMES)}")
        return cls(RANK_NAMES.index(key))

    @property
    def label(self) -> str:
        """The lowercase rank name ("kingdom", ..., "species")."""
        return RANK_NAMES[self.value]
