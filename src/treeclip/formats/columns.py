"""Which header column holds which rank: the aliases, their precedence, and ``--columns rank=COLUMN``.

Columns are compared as `compact_key`s (case, spaces, ``_``, ``-``, camelCase and a ``dwc:`` namespace
ignored). For each role the first alias present wins:

=============  =====================================================================================
kingdom        kingdom, regnum
phylum         phylum, division
class          **cls**, class, classis — ``cls`` first: BioCLIP's CSVs (``,kingdom,phylum,cls,order,family,
               genus,species,common_name,filepath,class``) hold the class *rank* in ``cls`` and the *label*
               (often the binomial) in ``class``. A lone ``class`` is the rank only when another rank column
               (kingdom, phylum, order, family, genus) is present; otherwise it is the label (``,filepath,class``).
order          order, ordo
family         family, familia
genus          genus
species        species, specificEpithet, epithet, species_epithet (an epithet or a binomial)
scientific     scientificName, sciName, scientific_name, binomial, canonicalName, taxon_name, species_name
               (the full name; used for the ranks the rank columns leave empty)
taxon_rank     taxonRank (Darwin Core: the rank the scientificName is at)
common         common, common_name, vernacularName, vernacular, english_name, common_name_en
label          label, class (see above), category, class_name
=============  =====================================================================================

Prefixed rank columns of checklists (``ebird_order``, ``ebird_family``, ``ebird_common_name``) are used when
no exact alias is present. ``--columns rank=COLUMN,...`` overrides any of these for layouts no rule guesses.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from treeclip.errors import UsageError
from treeclip.taxonomy import RANK_NAMES, Taxon, taxon_from_fields

from .problems import Problem
from .tables import column_key, compact_key

RANK_ROLES = RANK_NAMES  # kingdom ... species
TAXON_ROLES = (*RANK_NAMES, "scientific", "taxon_rank", "common")
ALIASES: dict[str, tuple[str, ...]] = {
    "kingdom": ("kingdom", "regnum"),
    "phylum": ("phylum", "division", "divisio"),
    "class": ("cls", "class", "classis"),
    "order": ("order", "ordo"),
    "family": ("family", "familia"),
    "genus": ("genus",),
    "species": ("species", "specificepithet", "epithet", "speciesepithet"),
    "scientific": ("scientificname", "sciname", "binomial", "canonicalname", "taxonname", "speciesname"),
    "taxon_rank": ("taxonrank",),
    "common": ("common", "commonname", "vernacularname", "vernacular", "englishname", "commonnameen"),
    "label": ("label", "class", "category", "classname"),
}
# An image path column, in order of preference (Table.find compares them as compact keys).
PATH_ALIASES = ("path", "filepath", "file_path", "file_name", "filename", "image", "image_path", "file")
_CLASS_NEIGHBOURS = ("kingdom", "phylum", "order", "family", "genus")
_PREFIXABLE = ("kingdom", "phylum", "order", "family", "genus", "common_name")
_FIELD = {"class": "cls"}  # taxon_from_fields keyword of a role


def parse_column_map(text: str | None, *, option: str = "--columns") -> dict[str, str]:
    """{role: column} from ``rank=COLUMN,...`` (roles: the ranks, scientific, common, label, path, ...)."""
    mapping: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        role, eq, column = item.partition("=")
        role = column_key(role)
        role = "class" if role == "cls" else role
        if not eq or not role or not column.strip():
            raise UsageError(f"{option} {text!r}: expected ROLE=COLUMN[,ROLE=COLUMN...], e.g. class=cls,species=epithet")
        mapping[role] = column.strip()
    return mapping


def resolve(header: Sequence[str], roles: Sequence[str], overrides: Mapping[str, str] | None = None,
            *, where: str = "table") -> dict[str, str]:
    """{role: header column} for the `roles` found in `header` (see the module docstring); `overrides` first.

    UsageError when an override names a column the header lacks."""
    by_key: dict[str, str] = {}
    for name in header:
        by_key.setdefault(compact_key(name), name)
    found: dict[str, str] = {}
    for role in roles:
        column = next((by_key[a] for a in ALIASES.get(role, (role,)) if a in by_key), None)
        column = column or _prefixed(header, role)
        if column is not None:
            found[role] = column
    _settle_class(found, by_key)
    for role, column in (overrides or {}).items():
        if column not in header and compact_key(column) not in by_key:
            raise UsageError(f"--columns {role}={column}: {where} has no column {column!r} "
                             f"(its columns: {', '.join(header)})")
        found[role] = column if column in header else by_key[compact_key(column)]
    return found


def _prefixed(header: Sequence[str], role: str) -> str | None:
    """A checklist's prefixed column for a role ("ebird_order" → order), when exactly one matches."""
    suffix = "common_name" if role == "common" else role
    if suffix not in _PREFIXABLE:
        return None
    matches = [name for name in header if column_key(name).endswith("_" + suffix)]
    return matches[0] if len(matches) == 1 else None


def _settle_class(found: dict[str, str], by_key: Mapping[str, str]) -> None:
    """Apply the ``cls``/``class`` rule: a lone ``class`` beside no other rank column is a label."""
    column = found.get("class")
    if column is not None and compact_key(column) == "class" and not any(n in by_key for n in _CLASS_NEIGHBOURS):
        del found["class"]
    if found.get("label") is not None and found["label"] == found.get("class"):
        del found["label"]


def has_ranks(columns: Mapping[str, str]) -> bool:
    """Whether any rank (or a full scientific name) column was found."""
    return any(role in columns for role in (*RANK_ROLES, "scientific"))


def taxon_of(values: Mapping[str, str], where: str, *, strict: bool = True) -> Taxon | Problem:
    """The Taxon of one row's role values (ranks, scientific, taxon_rank, common), or a Problem.

    A full scientific name fills the ranks the rank columns leave empty (its taxon_rank places a uninomial);
    a common name that only repeats the scientific or taxonomic name (TreeOfLife-10M's fallback) is dropped.
    With strict=False a lineage with a gap keeps its deepest unbroken run (the alignment fills the rest).
    """
    items = tuple(values.get(role, "") for role in TAXON_ROLES)
    result = _cached_taxon(items, strict)
    return Problem(where, result) if isinstance(result, str) else result


@functools.lru_cache(maxsize=1 << 16)
def _cached_taxon(items: tuple[str, ...], strict: bool) -> Taxon | str:
    values = dict(zip(TAXON_ROLES, items, strict=True))
    fields = {_FIELD.get(role, role): values[role] for role in RANK_ROLES}
    _fill_from_scientific(fields, values["scientific"], values["taxon_rank"])
    try:
        taxon = taxon_from_fields(**fields, common=values["common"])
    except ValueError as exc:
        if strict or "gap" not in str(exc):
            return f"unusable taxon names: {exc}"
        try:
            taxon = _deepest_run(fields, values["common"])
        except ValueError:
            return f"unusable taxon names: {exc}"
    if taxon.depth == 0:
        return "no taxonomic names"
    return without_repeated_common(taxon)


def lineage_gap(values: Mapping[str, str]) -> str:
    """The given ranks that `taxon_of(values, ..., strict=False)` empties to mend a gap in the row's lineage
    (``"kingdom, phylum, class, order"`` for a row with its family empty), or "" when nothing is emptied."""
    items = tuple(values.get(role, "") for role in TAXON_ROLES)
    loose = _cached_taxon(items, False)  # the cached result `taxon_of` just used
    if isinstance(loose, str):
        return ""
    emptied = [role for role, given, kept in zip(RANK_ROLES, items, loose.lineage) if given and not kept]
    strict = _cached_taxon(items, True) if emptied else ""  # only then: a gap, or names cleaned away?
    return ", ".join(emptied) if isinstance(strict, str) and "gap" in strict else ""


def without_repeated_common(taxon: Taxon) -> Taxon:
    """The taxon without a common name that only repeats its scientific or taxonomic name (the fallback
    TreeOfLife-10M writes), so that the fallback is applied once, downstream."""
    common = taxon.common.casefold()
    if common and common in (taxon.scientific.casefold(), taxon.taxonomic.casefold()):
        return Taxon(taxon.lineage)
    return taxon


def _fill_from_scientific(fields: dict[str, str], scientific: str, rank: str) -> None:
    if not scientific:
        return
    rank = rank.strip().lower()
    if rank in RANK_NAMES and rank != "species":
        key = _FIELD.get(rank, rank)
        fields[key] = fields[key] or scientific
    elif not fields["species"]:
        fields["species"] = scientific


def _deepest_run(fields: dict[str, str], common: str) -> Taxon:
    """The taxon from the deepest unbroken run of filled rank fields (others emptied)."""
    names = [fields[_FIELD.get(role, role)] for role in RANK_ROLES]
    top = max(i for i, name in enumerate(names) if name)
    while top > 0 and names[top - 1]:
        top -= 1
    kept = {_FIELD.get(role, role): (name if i >= top else "") for i, (role, name) in enumerate(zip(RANK_ROLES, names))}
    return taxon_from_fields(**kept, common=common)
