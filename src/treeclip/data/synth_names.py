"""Names for the miniature tree of life: Latin-like scientific names per rank and partly informative common names.

Scientific names are built from pronounceable syllables plus the suffix a real nomenclature code would use
at that rank. Each kingdom follows one code, as real kingdoms do: zoological (orders -iformes/-ida, families
-idae), botanical (phyla -phyta, classes -opsida, orders -ales, families -aceae) or mycological (phyla
-mycota, classes -mycetes, orders -ales, families -aceae). Names are unique per rank unless a deliberate
homonym is asked for (a genus name reused in another kingdom, like *Oenanthe* the wheatear and *Oenanthe*
the water-dropwort).

Common names are one or two adjectives and a head noun. Like real ones they are partly informative: relatives
tend to share the head noun (warblers, sedges, boletes). The rates are measured on real names, the eBird 2024
taxonomy (11,145 bird species; PyPI ``birdnames`` 0.1.3): two species of one genus share the head noun of their
common name in 90% of pairs, two species of one family but different genera in 26%, species of different
families in 0.2%. Here a genus takes its family's noun with probability `FAMILY_NOUN` (else a random noun) and a
species its genus's noun with probability `GENUS_NOUN` (else a random one), which gives ≈ 0.90 and ≈ 0.26 (and
1/64 across families, the chance of two random nouns). Adjectives are random. Birds are among the most
regularly named groups, so these rates are an upper end for real common names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from treeclip.taxonomy import Rank

ZOOLOGICAL, BOTANICAL, MYCOLOGICAL = "zoological", "botanical", "mycological"
CODES = (ZOOLOGICAL, BOTANICAL, MYCOLOGICAL)

_ONSETS = ("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ch", "ph", "th", "tr", "pr",
           "cr", "gl", "st", "x", "z", "qu", "h", "br", "pl", "sc")
_VOWELS = ("a", "e", "i", "o", "u", "a", "o", "ae", "y")
_CODAS = ("", "", "", "", "n", "r", "s", "l", "m", "x", "nt", "st")

_SUFFIXES: dict[str, tuple[tuple[str, ...], ...]] = {  # per code: one tuple of endings per rank
    ZOOLOGICAL: (("alia", "ozoa"), ("ata", "oda", "ozoa", "ifera"), ("ia", "ea", "opoda", "ata"),
                 ("iformes", "ida", "optera"), ("idae",), ("us", "a", "ops", "odon", "ix", "ella", "is"),
                 ("us", "a", "um", "is", "ensis", "ii", "ata", "oides", "ica", "alis", "ifer")),
    BOTANICAL: (("ae", "plastida"), ("phyta",), ("opsida",), ("ales",), ("aceae",),
                ("um", "a", "anthus", "ia", "is", "ella", "carpus"),
                ("a", "um", "is", "ensis", "ii", "iflora", "ifolia", "oides", "alis", "escens")),
    MYCOLOGICAL: (("i", "ista"), ("mycota",), ("mycetes",), ("ales",), ("aceae",),
                  ("ia", "ella", "omyces", "a", "us", "ospora"),
                  ("a", "us", "um", "is", "ensis", "ii", "ata", "oides", "ina", "escens")),
}

_ADJECTIVES = (
    "Spotted", "Lesser", "Greater", "Golden", "Dusky", "Crested", "Banded", "Pale", "Scarlet", "Velvet",
    "Marsh", "Mountain", "Silver", "Common", "Northern", "Southern", "Painted", "Tufted", "Glossy", "Rusty",
    "Ashy", "Striped", "Hooded", "Little", "Giant", "Rough", "Smooth", "Amber", "Azure", "Copper", "Ivory",
    "Shadow", "Meadow", "Desert", "River", "Forest", "Coastal", "Woolly", "Bristly", "Horned", "Ringed",
    "Freckled", "Mottled", "Slender", "Stout", "Royal", "Humble", "Wandering", "Hidden", "Whispering",
    "Bright", "Sooty", "Jade", "Crimson", "Ochre", "Plumed", "Spiny", "Lantern", "Moonlit", "Sunny", "Frosty",
    "Ember", "Eastern", "Western", "Cave", "Reed", "Dwarf", "Hairy", "Fringed", "Nimble", "Sleepy", "Pied",
)
_NOUNS = (
    "Creeper", "Darter", "Glider", "Wisp", "Hopper", "Crawler", "Bloom", "Cap", "Shell", "Spinner", "Weaver",
    "Runner", "Drifter", "Burrower", "Fan", "Bell", "Thorn", "Moss", "Horn", "Moth", "Finch", "Toad", "Sedge",
    "Fern", "Lily", "Puffball", "Snail", "Newt", "Wren", "Shrimp", "Eel", "Orchid", "Bracket", "Lichen",
    "Sprite", "Warbler", "Skipper", "Beetle", "Tuft", "Cup", "Star", "Button", "Lantern", "Whisker",
    "Nibbler", "Grazer", "Piper", "Dancer", "Sleeper", "Trumpet", "Brush", "Plume", "Sparrow", "Minnow",
    "Mallow", "Clover", "Morel", "Jelly", "Comb", "Urchin", "Bug", "Tern", "Vole", "Lark",
)
_MAX_TRIES = 200
GENUS_NOUN = 0.95  # a species uses its genus's head noun (0.95² ≈ 0.90 of same-genus pairs share it)
FAMILY_NOUN = 0.54  # a genus uses its family's head noun (0.95² · 0.54² ≈ 0.26 of same-family pairs)


def kingdom_codes(n_kingdoms: int, rng: np.random.Generator) -> list[str]:
    """A nomenclature code per kingdom: the three codes in turn, from a random start."""
    start = int(rng.integers(len(CODES)))
    return [CODES[(start + i) % len(CODES)] for i in range(n_kingdoms)]


def _stem(rng: np.random.Generator, syllables: int) -> str:
    parts = [_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables)]
    return "".join(parts) + _CODAS[rng.integers(len(_CODAS))]


def _join(stem: str, suffix: str) -> str:
    """Stem + suffix without a clash of vowels at the seam (``Torami`` + ``idae`` → ``Toramidae``)."""
    if suffix[0] in "aeiouy":
        stem = stem.rstrip("aeiouy") or stem
    return stem + suffix


def latin_name(rank: Rank, code: str, rng: np.random.Generator, syllables: int = 2) -> str:
    """One Latin-like name at `rank` under nomenclature `code` (species epithets lowercase)."""
    endings = _SUFFIXES[code][rank]
    name = _join(_stem(rng, syllables), endings[rng.integers(len(endings))])
    return name.lower() if rank == Rank.SPECIES else name.capitalize()


class NameBook:
    """Hands out names that are unique per rank (and common names unique overall), in call order."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._used: dict[object, set[str]] = {}
        self._nouns: dict[object, str] = {}  # head noun of each family and genus, drawn on first use

    def _unique(self, key: object, draw: Callable[[int], str]) -> str:
        used = self._used.setdefault(key, set())
        for attempt in range(_MAX_TRIES):
            name = draw(attempt)
            if name not in used:
                used.add(name)
                return name
        raise RuntimeError(f"could not find a new name for {key} after {_MAX_TRIES} tries")

    def scientific(self, rank: Rank, code: str) -> str:
        """A new name at `rank`; longer stems are tried as the short ones run out."""
        return self._unique(rank, lambda attempt: latin_name(rank, code, self._rng, 2 + attempt // 20))

    def common(self, *, family: object, genus: object) -> str:
        """A new common name for a species of `genus` in `family` (any hashable ids): one or two adjectives
        and a head noun that relatives tend to share; it never contains a scientific name."""
        noun = self._noun(("genus", genus), ("family", family), FAMILY_NOUN)
        if self._rng.random() >= GENUS_NOUN:
            noun = self._random_noun()
        return self._unique("common", lambda attempt: self._common_name(noun, attempt))

    def _noun(self, key: object, parent: object, inherit: float) -> str:
        """The head noun of `key`: its `parent`'s (a family's own noun is random) with probability `inherit`."""
        if key not in self._nouns:
            if parent not in self._nouns:
                self._nouns[parent] = self._random_noun()
            self._nouns[key] = self._nouns[parent] if self._rng.random() < inherit else self._random_noun()
        return self._nouns[key]

    def _random_noun(self) -> str:
        return _NOUNS[self._rng.integers(len(_NOUNS))]

    def _common_name(self, noun: str, attempt: int) -> str:
        n_adjectives = 1 + int(self._rng.random() < 0.3 + attempt / 20)
        picks = self._rng.choice(len(_ADJECTIVES), size=n_adjectives, replace=False)
        return " ".join([*(_ADJECTIVES[i] for i in picks), noun])
