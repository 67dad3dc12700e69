"""Cleaning and parsing of the taxon labels found in real datasets.

Conventions (all table-tested in tests/test_taxonomy_parse.py):
- Names lose underscores, surplus spaces, HTML tags, anything in parentheses or brackets (subgenera,
  authorities with years), trailing authorities (``Amanita excelsa Gonn. & Rabenh.``), and the markers
  ``subsp.``/``ssp.``/``var.``/``f.``/``cv.``; genus and higher names are capitalised, epithets lowercase.
- ``Genus sp.``/``spp.`` is the genus alone. Uncertain identifications (``cf.``, ``aff.``) keep only what is
  certain: ``Amanita cf. excelsa`` is the genus ``Amanita``; a name that starts with ``cf.`` is empty.
- Hybrids: the sign (``×``, or a lone ``x``) is dropped from a nothogenus (``×Triticosecale``) or a
  nothospecies (``Mentha × piperita`` → ``Mentha piperita``); a hybrid formula between two parents
  (``Salix alba × Salix fragilis``) is reduced to the first parent's genus, the only certain rank.
- Placeholders ("unknown", "not_classified", "(unidentified)", "NA", "none", "incertae sedis", "sp.", ...)
  become "". Non-strings raise ValueError; so does a value that cannot be a name (e.g. "12345").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from .ranks import RANK_NAMES, Rank
from .taxon import N_RANKS, Taxon

_PLACEHOLDERS = frozenset(
    {
        "", "unknown", "unk", "unidentified", "unclassified", "not classified", "not assigned", "unassigned",
        "undetermined", "indet", "indet.", "na", "n/a", "n.a.", "nan", "none", "null", "nil", "missing",
        "no data", "incertae sedis", "pleasehelp", "please help", "?", "-", "--", ".", "sp", "sp.", "spp",
        "spp.",
    }
)
_PLACEHOLDER_PREFIXES = ("unknown ", "unclassified ", "unidentified ", "undetermined ", "incertae sedis")
_KINGDOM_SYNONYMS = {
    "metazoa": "Animalia", "animals": "Animalia", "animal": "Animalia",
    "archaeplastida": "Plantae", "chloroplastida": "Plantae", "viridiplantae": "Plantae",
    "embryophyta": "Plantae", "plants": "Plantae", "plant": "Plantae", "green plants": "Plantae",
    "eumycota": "Fungi", "mycota": "Fungi", "fungus": "Fungi", "true fungi": "Fungi",
    "eubacteria": "Bacteria", "archaebacteria": "Archaea", "virus": "Viruses", "viruses": "Viruses",
}
KNOWN_KINGDOMS = frozenset({"Animalia", "Plantae", "Fungi", "Bacteria", "Archaea", "Protozoa", "Chromista", "Viruses"})
_HYBRID_SIGNS = frozenset({"×", "x", "X"})
_SP_MARKERS = frozenset({"sp", "sp.", "spp", "spp.", "sp.nov.", "nov.", "n.sp.", "gen."})
_UNCERTAIN = frozenset({"cf", "cf.", "aff", "aff.", "?", "nr.", "near"})
_NOT_AN_EPITHET = _SP_MARKERS | _UNCERTAIN
_INFRA_MARKERS = frozenset({"subsp.", "subsp", "ssp.", "ssp", "var.", "var", "f.", "fo.", "forma", "subvar.", "cv."})
_AUTHOR_PARTICLES = frozenset(
    {"de", "da", "del", "di", "van", "von", "der", "den", "du", "le", "la", "ex", "et", "in", "and", "non", "sensu",
     "auct", "auct.", "emend", "emend.", "nom"}
)
_SEPARATORS = re.compile(r"\s*[;|>]\s*")
_QIIME_PREFIX = re.compile(r"^([kdpcofgs])__", re.IGNORECASE)
_QIIME_RANKS = {"k": 0, "d": 0, "p": 1, "c": 2, "o": 3, "f": 4, "g": 5, "s": 6}
_CAPTION = re.compile(r"^\s*a photo of\s+(.*?)\s*\.?\s*$", re.IGNORECASE | re.DOTALL)
_INAT21 = re.compile(r"^\d+_[^_]+(_[^_]+){6,}$")
_FAMILY_SUFFIXES = ("idae", "aceae")
_ORDER_SUFFIXES = ("ales", "iformes")


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    return value


def _normal_spacing(text: str) -> str:
    text = re.sub(r"<[^>]*>", " ", text).replace("_", " ")
    return " ".join(text.split())


def _is_placeholder(text: str) -> bool:
    key = _normal_spacing(text).lower().strip("()[]{}\"' ")
    return key in _PLACEHOLDERS or key.startswith(_PLACEHOLDER_PREFIXES) or "incertae sedis" in key


def _tokens(text: str) -> list[str]:
    """Words of a name with parenthesised/bracketed parts removed and hybrid signs split off."""
    text = _normal_spacing(text)
    text = re.sub(r"\([^()]*\)|\[[^\[\]]*\]", " ", text)
    text = re.sub(r"[()\[\]]", " ", text).replace("×", " × ")
    return text.split()


def _is_word(token: str) -> bool:
    core = token.replace("-", "")
    return len(core) >= 2 and core.isalpha()


def _capitalise(word: str) -> str:
    return word[:1].upper() + word[1:].lower()


def _authority_like(token: str) -> bool:
    return any(ch in token for ch in ".,&:;'\"") or any(ch.isdigit() for ch in token)


def _is_epithet(token: str, first: bool, shouting: bool, later: list[str]) -> bool:
    """Whether `token` (after a genus, or after an epithet when not `first`) is an epithet."""
    if not _is_word(token) or token.lower() in _AUTHOR_PARTICLES:
        return False
    if token.islower():
        return True
    if token.isupper():
        return first or shouting
    return first and token.istitle() and not any(_authority_like(t) for t in later)


def _name_parts(tokens: list[str], shouting: bool | None = None) -> list[str]:
    """[Genus, epithet, infraspecific epithet] (as many as are present) from the words of a name."""
    if tokens and tokens[0] in _HYBRID_SIGNS:
        tokens = tokens[1:]
    if not tokens:
        return []
    if not _is_word(tokens[0]):
        raise ValueError(f"{' '.join(tokens)!r} is not a taxon name")
    shouting = tokens[0].isupper() if shouting is None else shouting
    parts = [_capitalise(tokens[0])]
    for index, token in enumerate(tokens[1:], start=1):
        low = token.lower()
        if len(parts) == 3 or low in _SP_MARKERS:
            break
        if low in _UNCERTAIN or (token in _HYBRID_SIGNS and len(parts) > 1):
            return parts[:1]
        if token in _HYBRID_SIGNS or (low in _INFRA_MARKERS and len(parts) > 1):
            continue
        word = token.rstrip(",;:")
        if not _is_epithet(word, len(parts) == 1, shouting, tokens[index + 1 :]):
            break
        parts.append(word.lower())
        if word != token:
            break
    return parts


def clean_name(text: str) -> str:
    """A scientific name without authorities, years, parentheses, markers or odd spacing ("" for placeholders).

    ``"Passer domesticus (Linnaeus, 1758)"`` → ``"Passer domesticus"``; ``"Canis lupus subsp. familiaris"``
    → ``"Canis lupus familiaris"``; ``"passer DOMESTICUS"`` → ``"Passer domesticus"``; ``"AVES"`` → ``"Aves"``.
    """
    _require_str(text, "name")
    tokens = _tokens(text)
    if _is_placeholder(text) or not tokens or tokens[0].lower() in _UNCERTAIN:
        return ""
    return " ".join(_name_parts(tokens))


def clean_common(text: str) -> str:
    """A common name with underscores, HTML and surplus spaces removed, case kept ("" for placeholders)."""
    _require_str(text, "common name")
    return "" if _is_placeholder(text) else _normal_spacing(text)


def normalize_kingdom(text: str) -> str:
    """The canonical kingdom: Metazoa → Animalia, Archaeplastida/Chloroplastida/Viridiplantae → Plantae,
    Eumycota → Fungi, Eubacteria → Bacteria, ...; other names are cleaned and kept."""
    _require_str(text, "kingdom")
    key = _normal_spacing(text).lower()
    if key in _KINGDOM_SYNONYMS:
        return _KINGDOM_SYNONYMS[key]
    name = _uninomial(text)
    return _KINGDOM_SYNONYMS.get(name.lower(), name)


def _uninomial(text: str) -> str:
    """The cleaned one-word name of a rank above species."""
    name = clean_name(text)
    return name.split(" ", 1)[0]


def _split_species(species: str, genus: str) -> tuple[str, str]:
    """(genus named inside the species field or "", lowercase epithet or "")."""
    tokens = _tokens(species)
    if tokens and tokens[0] in _HYBRID_SIGNS:  # "× piperita": the epithet of a nothospecies
        tokens = tokens[1:]
    if _is_placeholder(species) or not tokens or tokens[0].lower() in _NOT_AN_EPITHET:
        return "", ""
    head = tokens[0]
    if len(tokens) > 1 and not (head.islower() and genus and head != genus.lower()):
        parts = _name_parts(tokens)  # a binomial, possibly repeating the genus field
        if len(parts) > 1 or not head.islower():
            return parts[0], parts[1] if len(parts) > 1 else ""
    if not _is_word(head):  # the epithet comes first: "penicillata", "lupus familiaris", "alba Mill."
        raise ValueError(f"{species!r} is not an epithet")
    return "", head.lower()


def _truncate_at_gap(lineage: list[str]) -> list[str]:
    """The contiguous run of known ranks that starts at the first known one; the rest emptied."""
    start = next((i for i, value in enumerate(lineage) if value), N_RANKS)
    if start == Rank.SPECIES:
        return [""] * N_RANKS
    end = next((i for i in range(start, N_RANKS) if not lineage[i]), N_RANKS)
    return lineage[:end] + [""] * (N_RANKS - end)


def _clean_field(cleaner: Callable[[str], str], value: str, rank: str, strict: bool) -> str:
    if not value:
        return ""
    try:
        return cleaner(value)
    except ValueError as error:
        if strict:
            raise ValueError(f"{rank} {value!r}: {error}") from None
        return ""


def taxon_from_fields(
    *,
    kingdom: str = "",
    phylum: str = "",
    cls: str = "",
    order: str = "",
    family: str = "",
    genus: str = "",
    species: str = "",
    common: str = "",
    strict: bool = True,
) -> Taxon:
    """A cleaned Taxon from raw rank fields (see the module docstring for the cleaning rules).

    The species field may hold an epithet or a binomial; a genus named there fills a missing genus field, and
    one that contradicts the genus field raises ValueError. strict=False truncates the lineage at the first gap
    (and drops unparseable or contradicting fields) instead of raising.
    """
    raw = (kingdom, phylum, cls, order, family, genus, species, common)
    for name, value in zip((*RANK_NAMES, "common"), raw, strict=True):
        _require_str(value, name)
    return _cached_taxon(raw, strict)


@lru_cache(maxsize=1 << 16)
def _cached_taxon(raw: tuple[str, ...], strict: bool) -> Taxon:
    """taxon_from_fields on checked strings; cached because dataset rows repeat the same taxa many times."""
    kingdom, species, common = raw[0], raw[6], raw[7]
    lineage = [_clean_field(normalize_kingdom, kingdom, "kingdom", strict)]
    lineage += [_clean_field(_uninomial, v, r, strict) for r, v in zip(RANK_NAMES[1:6], raw[1:6], strict=True)]
    named_genus, epithet = _resolve_species(species, lineage[Rank.GENUS], strict)
    lineage[Rank.GENUS] = lineage[Rank.GENUS] or named_genus
    lineage.append(epithet)
    if not strict:
        lineage = _truncate_at_gap(lineage)
    return Taxon(tuple(lineage), clean_common(common))  # type: ignore[arg-type]


def _resolve_species(species: str, genus: str, strict: bool) -> tuple[str, str]:
    try:
        named_genus, epithet = _split_species(species, genus)
    except ValueError as error:
        if strict:
            raise ValueError(f"species {species!r}: {error}") from None
        return "", ""
    if named_genus and genus and named_genus != genus:
        if strict:
            raise ValueError(f"species {species!r} names genus {named_genus!r} but the genus field is {genus!r}")
        return "", ""
    return named_genus, epithet


def parse_binomial(text: str) -> Taxon:
    """Genus and epithet (only) from a binomial, trinomial or genus name; ValueError if there is no name."""
    parts = _name_parts(_tokens(text)) if clean_name(text) else []
    if not parts:
        raise ValueError(f"no scientific name in {text!r}")
    epithet = parts[1] if len(parts) > 1 else ""
    return Taxon(("",) * Rank.GENUS + (parts[0], epithet))  # type: ignore[arg-type]


def parse_inat21_dirname(name: str) -> Taxon:
    """The 7 ranks of an iNat2021 class folder such as
    ``03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata`` (a path is accepted)."""
    _require_str(name, "iNat2021 folder name")
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    parts = base.split("_")
    if parts and parts[0].isdigit():
        parts = parts[1:]
    if len(parts) < N_RANKS or not all(parts):
        raise ValueError(f"{name!r} is not an iNat2021 class folder name (id_Kingdom_..._Genus_epithet)")
    kingdom, phylum, cls, order, family, genus = parts[:6]
    species = " ".join(parts[6:])
    return taxon_from_fields(
        kingdom=kingdom, phylum=phylum, cls=cls, order=order, family=family, genus=genus, species=species
    )


def parse_lineage_key(text: str) -> Taxon:
    """The 7 ranks of a hyphen-joined key such as ``Animalia-Arthropoda-Arachnida-Araneae-Pisauridae-Dolomedes-
    plantarius`` (Rare Species folders, BioCLIP's ``unseen_in_training.json``); ValueError for anything else."""
    _require_str(text, "lineage key")
    parts = text.strip().split("-")
    if len(parts) != N_RANKS or not all(part.strip() for part in parts) or \
            normalize_kingdom(parts[0]) not in KNOWN_KINGDOMS:
        raise ValueError(f"{text!r} is not a Kingdom-Phylum-Class-Order-Family-Genus-epithet key")
    kingdom, phylum, cls, order, family, genus, species = parts
    return taxon_from_fields(kingdom=kingdom, phylum=phylum, cls=cls, order=order, family=family, genus=genus,
                             species=species)


def _is_lineage_key(body: str) -> bool:
    parts = body.split("-")
    return len(parts) == N_RANKS and " " not in body and normalize_kingdom(parts[0]) in KNOWN_KINGDOMS


def _fields_from_separated(text: str) -> list[str]:
    fields = [""] * N_RANKS
    items = _SEPARATORS.split(text.strip().rstrip(";|>").strip())
    if len(items) > N_RANKS:
        raise ValueError(f"more than {N_RANKS} ranks in taxonomic string {text!r}")
    if not any(_QIIME_PREFIX.match(item) for item in items):
        return (items + fields)[:N_RANKS]
    for item in items:
        match = _QIIME_PREFIX.match(item)
        if not match:
            raise ValueError(f"{item!r} lacks a rank prefix (k__, p__, ...) in {text!r}")
        fields[_QIIME_RANKS[match.group(1).lower()]] = item[match.end() :]
    return fields


def _fields_from_tagged(tokens: list[str], text: str) -> list[str]:
    fields = [""] * N_RANKS
    rank: int | None = None
    for token in tokens:
        if token.lower() in RANK_NAMES:
            rank = RANK_NAMES.index(token.lower())
        elif rank is None:
            raise ValueError(f"{token!r} has no rank tag before it in {text!r}")
        else:
            fields[rank] = f"{fields[rank]} {token}".strip()
    return fields


def _is_tagged(tokens: list[str]) -> bool:
    """Whether words hold rank tags ("kingdom Animalia phylum ..."); tags other than the first are lowercase."""
    return bool(tokens) and (tokens[0].lower() in RANK_NAMES or any(token in RANK_NAMES for token in tokens))


def parse_taxonomic_string(text: str) -> Taxon:
    """A Taxon from "Animalia Chordata Aves ..." (kingdom first, species last), from the same separated by
    ";", "|" or ">", from QIIME/GTDB style "k__Animalia;p__Chordata;...", or from the tagged form
    "kingdom Animalia phylum Chordata ...". Missing trailing ranks are allowed; ValueError if nothing is left."""
    _require_str(text, "taxonomic string")
    tokens = _tokens(text)
    if _SEPARATORS.search(text):
        fields = _fields_from_separated(text)
    elif _is_tagged(tokens):
        fields = _fields_from_tagged(tokens, text)
    else:
        fields = tokens[:6] + [" ".join(tokens[6:])] if len(tokens) > 6 else tokens + [""] * (N_RANKS - len(tokens))
    taxon = taxon_from_fields(
        kingdom=fields[0], phylum=fields[1], cls=fields[2], order=fields[3], family=fields[4],
        genus=fields[5], species=fields[6],
    )
    if not taxon.depth:
        raise ValueError(f"no ranks in taxonomic string {text!r}")
    return taxon


def _split_caption(text: str) -> tuple[str, str]:
    """(name, common) from a caption or label such as "a photo of X with common name Y."."""
    match = _CAPTION.match(text)
    body = match.group(1) if match else text.strip()
    name, _, common = body.partition(" with common name ")
    return name.strip(), clean_common(common)


def _looks_like_name(tokens: list[str]) -> bool:
    """Whether words read as a Latin name: a genus, then an epithet or a sp./cf./hybrid marker."""
    if tokens and tokens[0] in _HYBRID_SIGNS:
        tokens = tokens[1:]
    if not tokens or not tokens[0].isalpha():
        return False
    genus = tokens[0]
    if len(tokens) == 1:
        return genus.istitle()
    second = tokens[1].rstrip(",;:")
    if second.lower() in _NOT_AN_EPITHET or second in _HYBRID_SIGNS:
        return True
    if second.islower():
        return _is_word(second)
    return second.isupper() and not genus.isupper() and _is_word(second)


def _single_rank(name: str) -> Taxon:
    """A one-word name placed by its standard suffix: family (-idae, -aceae), order (-ales, -iformes), else genus."""
    word = clean_name(name)
    rank = Rank.GENUS
    if word.endswith(_FAMILY_SUFFIXES):
        rank = Rank.FAMILY
    elif word.endswith(_ORDER_SUFFIXES):
        rank = Rank.ORDER
    return Taxon(("",) * rank + (word,))  # type: ignore[arg-type]


def _parse_body(body: str) -> Taxon | None:
    tokens = _tokens(body)
    if not tokens or _is_placeholder(body) or re.search(r"_{3,}", body):
        return None
    if _INAT21.match(body.replace("\\", "/").rsplit("/", 1)[-1]):
        return parse_inat21_dirname(body)
    if _is_lineage_key(body):
        return parse_lineage_key(body)
    if _SEPARATORS.search(body) or _is_tagged(tokens) or normalize_kingdom(tokens[0]) in KNOWN_KINGDOMS:
        return parse_taxonomic_string(body)
    if not _looks_like_name(tokens):
        return None
    return _single_rank(body) if len(tokens) == 1 else parse_binomial(body)


def parse_label(text: str) -> Taxon | None:
    """The Taxon a free-form label names, or None for a label that is not a taxon ("Tomato___Late_blight").

    Understands iNat2021 folder names, taxonomic strings (plain, separated, QIIME, tagged), binomials and
    trinomials with authorities, single names (placed by suffix), and captions "a photo of X with common name
    Y." (Y becomes the common name). The test is syntactic: a Title Case or ALL CAPS pair of words
    ("American Goldfinch") is not read as a binomial, but a lowercase pair ("passer domesticus") is.
    """
    _require_str(text, "label")
    body, common = _split_caption(text)
    try:
        taxon = _parse_body(body)
    except ValueError:
        return None
    if taxon is None:
        return None
    return Taxon(taxon.lineage, common) if common else taxon
