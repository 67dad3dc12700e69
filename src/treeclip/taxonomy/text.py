"""Text types and the one renderer of taxon names and captions (BioCLIP-compatible strings).

Fallbacks, so that no caption is ever empty or holds a placeholder: the scientific name falls back to the
taxonomic string (a taxon known only above genus); the common name falls back to the scientific name, then
to the taxonomic string; and a taxon with no ranks at all renders as its common name.
"""

from __future__ import annotations

from enum import Enum

from .taxon import Taxon


class TextType(str, Enum):
    """The seven caption kinds; the value is the shard file stem (``f"{value}.txt"``)."""

    SCI = "sci"
    COM = "com"
    TAXON = "taxon"
    SCI_COM = "sci_com"
    TAXON_COM = "taxon_com"
    TAXON_TAG = "taxonTag"
    TAXON_TAG_COM = "taxonTag_com"

    @property
    def filename(self) -> str:
        """The shard member name, e.g. "taxonTag_com.txt"."""
        return f"{self.value}.txt"


TRAIN_TEXT_TYPES: tuple[TextType, ...] = (
    TextType.SCI,
    TextType.COM,
    TextType.TAXON,
    TextType.SCI_COM,
    TextType.TAXON_COM,
)
CLASS_STRING_KINDS: tuple[str, ...] = tuple(t.value for t in TextType) + ("asis",)
RAW_NAME_FILES: tuple[str, ...] = ("scientific_name.txt", "taxonomic_name.txt", "common_name.txt")


def _parse_text_type(text_type: TextType | str) -> TextType:
    try:
        return TextType(text_type)
    except ValueError:
        valid = ", ".join(t.value for t in TextType)
        raise ValueError(f"unknown text type {text_type!r}; expected one of {valid}") from None


def _names(taxon: Taxon) -> tuple[str, str, str, str]:
    """(scientific, taxonomic, tagged, common) with the documented fallbacks applied."""
    if not isinstance(taxon, Taxon):
        raise ValueError(f"expected a Taxon, got {taxon!r}")
    taxonomic = taxon.taxonomic or taxon.common
    if not taxonomic:
        raise ValueError(f"cannot render a taxon with neither ranks nor a common name: {taxon!r}")
    scientific = taxon.scientific or taxonomic
    tagged = taxon.tagged or taxonomic
    return scientific, taxonomic, tagged, taxon.common or scientific


def render_name(taxon: Taxon, text_type: TextType | str) -> str:
    """The name part of a caption, e.g. "Ptilotula penicillata with common name White-plumed Honeyeater"."""
    kind = _parse_text_type(text_type)
    sci, tax, tagged, com = _names(taxon)
    if kind is TextType.SCI:
        return sci
    if kind is TextType.COM:
        return com
    if kind is TextType.TAXON:
        return tax
    if kind is TextType.TAXON_TAG:
        return tagged
    head = {TextType.SCI_COM: sci, TextType.TAXON_COM: tax, TextType.TAXON_TAG_COM: tagged}[kind]
    return f"{head} with common name {com}"


def render_caption(taxon: Taxon, text_type: TextType | str) -> str:
    """The training caption: "a photo of " + render_name + "."."""
    return f"a photo of {render_name(taxon, text_type)}."


def shard_texts(taxon: Taxon) -> dict[str, str]:
    """The text members of one shard sample: the seven captions and the three raw names.

    As in the released TreeOfLife-10M shards, ``scientific_name.txt`` and ``taxonomic_name.txt`` hold
    `Taxon.scientific` and `Taxon.taxonomic` as they are ("" scientific name above genus), while
    ``common_name.txt`` holds the common name after its fallback (scientific, then taxonomic).
    ValueError for a taxon without ranks: every training sample needs a lineage.
    """
    if not isinstance(taxon, Taxon) or not taxon.depth:
        raise ValueError(f"a shard sample needs a taxon with at least one rank, got {taxon!r}")
    texts = {kind.filename: render_caption(taxon, kind) for kind in TextType}
    texts.update(zip(RAW_NAME_FILES, (taxon.scientific, taxon.taxonomic, taxon.common_or_fallback), strict=True))
    return texts


def class_string(taxon: Taxon, kind: TextType | str) -> str:
    """The class name used inside prompt templates for evaluation.

    `kind` is a text type value ("sci", "com", "taxon", "sci_com", "taxon_com", "taxonTag", ...) or "asis":
    the dataset's own label, which is kept in the common-name field (falling back like "com").
    A class without a common name gets BioCLIP's evaluation fallback for the "+ common" kinds: the text
    without "with common name" (``sci_com`` → ``sci``, ``taxon_com`` → ``taxon``), never "X with common name X".
    """
    if kind == "asis":
        return render_name(taxon, TextType.COM)
    if kind not in CLASS_STRING_KINDS:
        raise ValueError(f"unknown class-string kind {kind!r}; expected one of {', '.join(CLASS_STRING_KINDS)}")
    if str(kind).endswith("_com") and not taxon.common:
        return render_name(taxon, str(kind).removesuffix("_com"))
    return render_name(taxon, kind)
