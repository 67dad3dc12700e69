"""Ranks, taxa, name cleaning and parsing, text types, prompt templates and the taxon tree (stdlib only)."""

from .parse import (
    KNOWN_KINGDOMS,
    clean_common,
    clean_name,
    normalize_kingdom,
    parse_binomial,
    parse_inat21_dirname,
    parse_lineage_key,
    parse_label,
    parse_taxonomic_string,
    taxon_from_fields,
)
from .ranks import RANK_NAMES, Rank
from .taxon import Taxon
from .templates import OPENAI_TEMPLATES, PHOTO_TEMPLATES, TEMPLATE_SET_NAMES, get_templates
from .text import (
    CLASS_STRING_KINDS,
    TRAIN_TEXT_TYPES,
    TextType,
    class_string,
    render_caption,
    render_name,
    shard_texts,
)
from .tree import TaxonTree

__all__ = [
    "CLASS_STRING_KINDS",
    "KNOWN_KINGDOMS",
    "OPENAI_TEMPLATES",
    "PHOTO_TEMPLATES",
    "RANK_NAMES",
    "TEMPLATE_SET_NAMES",
    "TRAIN_TEXT_TYPES",
    "Rank",
    "Taxon",
    "TaxonTree",
    "TextType",
    "class_string",
    "clean_common",
    "clean_name",
    "get_templates",
    "normalize_kingdom",
    "parse_binomial",
    "parse_inat21_dirname",
    "parse_lineage_key",
    "parse_label",
    "parse_taxonomic_string",
    "render_caption",
    "render_name",
    "shard_texts",
    "taxon_from_fields",
]
