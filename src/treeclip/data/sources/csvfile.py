"""``csv:FILE`` — a generic table with one image per row (what ``treeclip synth`` writes).

Columns (header names are matched case-insensitively, spaces = underscores):
- the image path: ``path``, ``filepath``, ``file_path``, ``file_name``, ``filename``, ``image``,
  ``image_path`` or ``file``; relative paths resolve against the CSV's folder;
- ranks: ``kingdom, phylum, class`` (or ``cls``), ``order, family, genus, species`` (an epithet or a
  binomial); optional ``common`` / ``common_name`` / ``vernacular_name``;
- optional ``split``, ``id`` (else the path as written is the source id), ``license``, ``owner``.
Tab-separated files (``.tsv`` or a tab-only header) work too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..records import Problem, Record
from .base import Source, fields_taxon, find_column, open_table, origin, rank_columns

PATH_COLUMNS = ("path", "filepath", "file_path", "file_name", "filename", "image", "image_path", "file")
LICENSE_COLUMNS = ("license", "license_name", "licence")
OWNER_COLUMNS = ("owner", "copyright_owner", "rights_holder", "rightsholder")
OPTIONAL_COLUMNS = {
    "path": PATH_COLUMNS,
    "split": ("split",),
    "id": ("id",),
    "license": LICENSE_COLUMNS,
    "owner": OWNER_COLUMNS,
}


class CsvSource(Source):
    """Images listed in a CSV/TSV table with rank columns."""

    kind = "csv"
    usage = "csv:FILE"

    def locate(self, path: str) -> Path:
        return self.existing(path, "CSV", directory=False)

    def records(self) -> Iterator[Record | Problem]:
        with open_table(self.path) as (header, rows):
            columns = {name: find_column(header, aliases) for name, aliases in OPTIONAL_COLUMNS.items()}
            ranks = rank_columns(header)
            if header and columns["path"] is None:
                yield Problem(origin(self.path, 1), f"no image path column (one of {', '.join(PATH_COLUMNS)})")
                return
            if header and not set(ranks) - {"common"}:
                yield Problem(origin(self.path, 1), "no rank columns (kingdom ... species)")
                return
            base = str(self.path.parent)
            for item in rows:
                yield item if isinstance(item, Problem) else self._record(*item, base, columns, ranks)

    def _record(
        self, line: int, row: dict[str, str], base: str, columns: dict[str, str | None], ranks: dict[str, str]
    ) -> Record | Problem:
        where = origin(self.path, line)
        cells = {name: row[column] if column else "" for name, column in columns.items()}
        value = cells["path"]
        if not value:
            return Problem(where, "empty image path")
        image = os.path.join(base, os.path.expanduser(value))  # an absolute value stays as it is
        if not os.path.isfile(image):
            return Problem(where, f"image not found: {image}")
        taxon = fields_taxon(where, {keyword: row[column] for keyword, column in ranks.items()})
        if isinstance(taxon, Problem):
            return taxon
        return Record(
            source=self.kind,
            source_id=cells["id"] or value.replace("\\", "/"),
            path=image,
            taxon=taxon,
            split_hint=cells["split"],
            license=cells["license"],
            owner=cells["owner"],
            origin=where,
        )
