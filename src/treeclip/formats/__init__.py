"""Every file format's one reader (and writer where treeclip writes it): tables, column aliases, species lists,
shard/manifest/catalog schemas, label-bank json. Only the standard library, pyarrow and `treeclip.taxonomy`."""

from .columns import ALIASES, PATH_ALIASES, TAXON_ROLES, has_ranks, parse_column_map, resolve, taxon_of
from .problems import Problem
from .tables import Table, column_key, compact_key, open_table

__all__ = ["ALIASES", "PATH_ALIASES", "TAXON_ROLES", "Problem", "Table", "column_key", "compact_key", "has_ranks", "open_table",
           "parse_column_map", "resolve", "taxon_of"]
