"""``bioscan:TSV[,IMAGE_ROOT]`` — BIOSCAN-1M (and BIOSCAN-5M) insect metadata.

The metadata table (tab-separated ``BIOSCAN_Insect_Dataset_metadata.tsv``; BIOSCAN-5M's CSV works too) has
``processid, sampleid, phylum, class, order, family, subfamily, genus, species, image_file, chunk_number``
and split columns. Ranks: kingdom is ``Animalia`` (unless a ``kingdom`` column says otherwise); empty and
``not_classified`` ranks are missing; species fields holding binomials ("Aedes vexans") are reduced to the
epithet by the taxonomy cleaner; subfamily and tribe are not Linnaean 7-rank levels and are ignored.

Images are looked up under IMAGE_ROOT (default: the table's folder), first match wins:
``IMAGE_ROOT/part{chunk_number}/{image_file}`` (the released BIOSCAN-1M packages, e.g. ``cropped_256/part18/
5351601.jpg``), ``IMAGE_ROOT/{chunk_number}/{image_file}``, ``IMAGE_ROOT/{split}/{chunk}/{image_file}``
(BIOSCAN-5M: ``images/cropped_256/train/a/PROCESSID.jpg``), ``IMAGE_ROOT/{split}/{image_file}`` and
``IMAGE_ROOT/{image_file}``; ``image_file`` defaults to ``{processid}.jpg``.

``split_hint``: the ``split`` column, else BIOSCAN-1M's default partition ``large_diptera_family`` (values
train / validation / test / no_split, kept raw). ``source_id``: processid, else image_file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..records import Problem, Record
from .base import Source, fields_taxon, find_column, first_existing, int_text, open_table, origin

RANKS = {
    "kingdom": "kingdom",
    "phylum": "phylum",
    "cls": "class",
    "order": "order",
    "family": "family",
    "genus": "genus",
    "species": "species",
}
SPLIT_COLUMNS = ("split", "large_diptera_family")


class BioscanSource(Source):
    """BIOSCAN-1M/5M metadata rows joined to their image files."""

    kind = "bioscan"
    params = ("images",)
    usage = "bioscan:TSV[,IMAGE_ROOT]"

    def locate(self, path: str) -> Path:
        table = self.existing(path, "metadata table", directory=False)
        images = self.options.get("images")
        self.image_root = self.existing(images, "image root", directory=True) if images else table.parent
        return table

    def records(self) -> Iterator[Record | Problem]:
        with open_table(self.path) as (header, rows):
            if header and not {"image_file", "processid"} & set(header):
                yield Problem(origin(self.path, 1), "neither an image_file nor a processid column")
                return
            split_column = find_column(header, SPLIT_COLUMNS)
            for item in rows:
                yield item if isinstance(item, Problem) else self._record(*item, split_column)

    def _record(self, line: int, row: dict[str, str], split_column: str | None) -> Record | Problem:
        where = origin(self.path, line)
        processid = row.get("processid", "")
        image_file = row.get("image_file") or (f"{processid}.jpg" if processid else "")
        if not image_file:
            return Problem(where, "no image_file or processid")
        split = row.get(split_column, "") if split_column else ""
        image = first_existing(self._candidates(row, image_file, split))
        if image is None:
            return Problem(where, f"image not found under {self.image_root}: {image_file}")
        fields = {keyword: row.get(column, "") for keyword, column in RANKS.items()}
        fields["kingdom"] = fields["kingdom"] or "Animalia"
        taxon = fields_taxon(where, fields)
        if isinstance(taxon, Problem):
            return taxon
        return Record(self.kind, processid or image_file, str(image), taxon, split_hint=split, origin=where)

    def _candidates(self, row: dict[str, str], image_file: str, split: str) -> Iterator[Path]:
        root = self.image_root
        chunk = int_text(row.get("chunk_number", "") or row.get("chunk", ""))
        if chunk:
            yield root / f"part{chunk}" / image_file
            yield root / chunk / image_file
            if split:
                yield root / split / chunk / image_file
        if split:
            yield root / split / image_file
        yield root / image_file
