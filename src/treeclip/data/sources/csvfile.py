"""``csv:FILE`` — a generic table with one image per row (what ``treeclip synth`` writes), CSV, TSV or Parquet.

Columns (matched by `treeclip.formats.columns`; ``--columns role=COLUMN`` overrides):
- the image path: the first of `treeclip.formats.PATH_ALIASES` (``path``, ``filepath``, ``file_name``,
  ``filename``, ``image``, ``image_path``, ``file``), relative to the table's folder. Absolute paths and ``..`` escapes are refused
  (each row a problem) unless ``--allow-absolute-paths`` is given;
- ranks: ``kingdom, phylum, cls``/``class``, ``order, family, genus, species`` (an epithet or a binomial),
  a full ``scientific_name``/``sciName``/``scientificName``; optional ``common``/``common_name``/
  ``vernacularName``. BioCLIP's ``cls`` + ``class`` header reads ``cls`` as the class rank;
- optional ``split``, ``id`` (else the path as written is the source id), licence (``license``,
  ``licence``, ``copyright_license``) and owner (``owner``, ``licence_holder``, ``rights_holder``,
  ``copyright_holder``).
A header that names no image or rank column, or a table with no data rows, is one Problem.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from treeclip.formats import PATH_ALIASES, Table, has_ranks, resolve, taxon_of
from treeclip.formats.columns import TAXON_ROLES, lineage_gap
from treeclip.formats.tables import TablePart

from ..records import Problem, Record
from .base import Source, contained_path, table_parts, table_rows

LICENSE_COLUMNS = ("license", "license_name", "licence", "copyright_license", "licence_name")
OWNER_COLUMNS = ("owner", "copyright_owner", "rights_holder", "rightsholder", "licence_holder", "license_holder",
                 "copyright_holder")
OPTIONAL_COLUMNS = {"split": ("split",), "id": ("id",), "license": LICENSE_COLUMNS, "owner": OWNER_COLUMNS}


class CsvSource(Source):
    """Images listed in a CSV/TSV/Parquet table with rank columns."""

    kind = "csv"
    usage = "csv:FILE"

    def locate(self, path: str) -> Path:
        return self.existing(path, "CSV", directory=False)

    def records(self, part: TablePart | None = None) -> Iterator[Record | Problem]:
        self._folder = os.path.abspath(self.path.parent)
        for item in table_rows(self.path, "csv: table", self._columns, part):
            yield item if isinstance(item, Problem) else self._record(*item)

    def parts(self, *, rows: int, prefix: str) -> list[TablePart | None]:
        return table_parts(self.path, "csv: table", self._columns, rows=rows, prefix=prefix)

    def _columns(self, table: Table) -> dict[str, str | None] | Problem:
        ranks = resolve(table.header, TAXON_ROLES, self.columns, where=str(self.path))
        path = self.columns.get("path") or table.find(*PATH_ALIASES)
        if path is None:
            return Problem(table.where(1), f"no image path column (one of {', '.join(PATH_ALIASES)})")
        if not has_ranks(ranks):
            return Problem(table.where(1), "no rank columns (kingdom ... species, or scientific_name)")
        optional = {name: self.columns.get(name) or table.find(*aliases) for name, aliases in OPTIONAL_COLUMNS.items()}
        return {**ranks, "path": path, **optional}

    def _record(self, table: Table, line: int, row: dict[str, str]) -> Record | Problem:
        where = table.where(line)
        value = row["path"]
        if not value:
            return Problem(where, "empty image path")
        image, refused = contained_path(self._folder, value, allow_absolute=self.allow_absolute_paths)
        if refused:
            return Problem(where, refused)
        if not os.path.isfile(image):
            return Problem(where, f"image not found: {image}")
        taxon = taxon_of(row, where, strict=False)
        if isinstance(taxon, Problem):
            return taxon
        return Record(source=self.kind, source_id=row.get("id") or value.replace("\\", "/"), path=image,
                      taxon=taxon, split_hint=row.get("split", ""), license=row.get("license", ""),
                      owner=row.get("owner", ""), origin=where, gap=lineage_gap(row))
