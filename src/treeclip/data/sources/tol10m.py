"""``tol10m:CATALOG_CSV,IMAGE_ROOT`` — the TreeOfLife-10M ``metadata/catalog.csv`` layout.

Columns: ``split, treeoflife_id, eol_content_id, eol_page_id, bioscan_part, bioscan_filename,
inat21_filename, inat21_cls_name, inat21_cls_num, kingdom, phylum, class, order, family, genus, species,
common``. ``source_id`` is ``treeoflife_id``; ``split_hint`` is ``split``. Rows with split ``train_small``
are skipped: the dataset card describes them as a duplicated 1M subset of ``train``. A ``common`` that
only repeats the scientific or taxonomic name (the catalog's fallback) is dropped.

Images are found under IMAGE_ROOT in the layout of BioCLIP's reproduction scripts
(``Imageomics/bioclip`` ``src/imageomics/disk_reproduce.py``: ``dataset/{eol,inat21/train,bioscan}``):
- EOL rows: ``eol/{treeoflife_id}.jpg`` (the released ``EOL/image_set_NN.tar.gz`` hold files named
  ``<treeoflife_id>.jpg``; ``EOL/`` works too) or ``eol/{content_id}_{page_id}_eol-full-size-copy.jpg``
  (the name BioCLIP's downloader gives);
- BIOSCAN-1M rows: ``bioscan/part{bioscan_part}/{bioscan_filename}``;
- iNat21 rows: ``inat21/train/{inat21_cls_num:05d}_{inat21_cls_name}/{inat21_filename}`` (or without
  ``train/``);
- any row: ``{treeoflife_id}.jpg`` directly under IMAGE_ROOT.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from treeclip.formats import Table, resolve, taxon_of
from treeclip.formats.columns import TAXON_ROLES, lineage_gap
from treeclip.formats.tables import TablePart

from ..records import Problem, Record
from .base import Source, first_existing, int_text, table_parts, table_rows

SKIPPED_SPLITS = frozenset({"train_small"})
OTHER_COLUMNS = ("treeoflife_id", "split", "eol_content_id", "eol_page_id", "bioscan_part", "bioscan_filename",
                 "inat21_filename", "inat21_cls_name", "inat21_cls_num")


class Tol10mSource(Source):
    """TreeOfLife-10M catalog rows joined to locally extracted images."""

    kind = "tol10m"
    params = ("images",)
    required = ("images",)
    usage = "tol10m:CATALOG_CSV,IMAGE_ROOT"

    def locate(self, path: str) -> Path:
        self.image_root = self.existing(self.options["images"], "image root", directory=True)
        return self.existing(path, "catalog", directory=False)

    def records(self, part: TablePart | None = None) -> Iterator[Record | Problem]:
        for item in table_rows(self.path, "tol10m: catalog", self._columns, part):
            if isinstance(item, Problem):
                yield item
            elif item[2]["split"] not in SKIPPED_SPLITS:
                yield self._record(*item)

    def parts(self, *, rows: int, prefix: str) -> list[TablePart | None]:
        return table_parts(self.path, "tol10m: catalog", self._columns, rows=rows, prefix=prefix)

    def _columns(self, table: Table) -> dict[str, str | None] | Problem:
        if table.find("treeoflife_id") is None:
            return Problem(table.where(1), "no treeoflife_id column: not a TreeOfLife-10M catalog")
        return {**resolve(table.header, TAXON_ROLES, self.columns, where=str(self.path)),
                **{name: table.find(name) for name in OTHER_COLUMNS}}

    def _record(self, table: Table, line: int, row: dict[str, str]) -> Record | Problem:
        where = table.where(line)
        tol_id = row["treeoflife_id"]
        if not tol_id:
            return Problem(where, "empty treeoflife_id")
        image = first_existing(self._candidates(row, tol_id))
        if image is None:
            return Problem(where, f"image for {tol_id} not found under {self.image_root}")
        taxon = taxon_of(row, where, strict=False)
        if isinstance(taxon, Problem):
            return taxon
        return Record(self.kind, tol_id, str(image), taxon, split_hint=row.get("split", ""), origin=where,
                      gap=lineage_gap(row))

    def _candidates(self, row: dict[str, str], tol_id: str) -> Iterator[Path]:
        root = self.image_root
        content, page = int_text(row.get("eol_content_id", "")), int_text(row.get("eol_page_id", ""))
        if content:
            yield from (root / folder / f"{tol_id}.jpg" for folder in ("eol", "EOL"))
            yield root / "eol" / f"{content}_{page}_eol-full-size-copy.jpg"
            yield root / "eol" / f"{content}_{page}_eol_full-size-copy.jpg"  # as some dataset cards spell it
        if row.get("bioscan_filename"):
            yield root / "bioscan" / f"part{int_text(row.get('bioscan_part', ''))}" / row["bioscan_filename"]
        if row.get("inat21_filename"):
            class_dir = _inat21_class_dir(row)
            yield root / "inat21" / "train" / class_dir / row["inat21_filename"]
            yield root / "inat21" / class_dir / row["inat21_filename"]
        yield root / f"{tol_id}.jpg"


def _inat21_class_dir(row: dict[str, str]) -> str:
    """iNat21's class folder: the 5-digit class number, '_', then the class name (unless it has the number)."""
    name, number = row.get("inat21_cls_name", ""), int_text(row.get("inat21_cls_num", ""))
    if name[:1].isdigit() or not number.isdigit():
        return name
    return f"{int(number):05d}_{name}"
