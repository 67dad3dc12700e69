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

Interim names (BOLD placeholders such as ``phyMalaise01``, ``eulophMalaise01``, ``ChrysSA``, ``AlticinaeGEN``,
the epithet of ``Dalbominus Malaise5255``: digits, inner capitals, ``GEN``/``Malaise``) are not taxa: the
record is cut back to the deepest valid rank (genus, family or order), never dropped and never given an
invented genus; `BioscanSource.interim` counts such rows and the end of the file (or part) logs the count.
Licence and holder go into the catalog: pre-release ``licence``/``licence_holder``, released
``copyright_license``/``copyright_holder`` (or ``copyright_institution``).
``split_hint``: the ``split`` column, else BIOSCAN-1M's default partition ``large_diptera_family`` (values
train / validation / test / no_split, kept raw). ``source_id``: processid, else image_file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from treeclip.formats import Table, resolve, taxon_of
from treeclip.formats.tables import TablePart

from ..records import Problem, Record
from .base import Source, first_existing, int_text, table_parts, table_rows

log = logging.getLogger(__name__)

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
SPLIT_COLUMNS = ("split", "large_diptera_family")
LICENSE_COLUMNS = ("licence", "license", "copyright_license", "copyright_licence")
OWNER_COLUMNS = ("licence_holder", "license_holder", "copyright_holder", "copyright_institution")
_INTERIM = re.compile(r"\d|[a-z][A-Z]|GEN$|Malaise")


def is_interim(name: str) -> bool:
    """Whether a BOLD genus/epithet is an interim placeholder (``phyMalaise01``, ``ChrysSA``, ``AlticinaeGEN``)."""
    return bool(name) and bool(_INTERIM.search(name))


def without_interim(genus: str, species: str) -> tuple[str, str]:
    """(genus, species) with interim placeholders removed: a placeholder genus takes the species with it."""
    if is_interim(genus):
        return "", ""
    words = species.split()
    return (genus, "") if any(is_interim(word) for word in words) else (genus, species)


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

    def records(self, part: TablePart | None = None) -> Iterator[Record | Problem]:
        self.interim = 0
        for item in table_rows(self.path, "bioscan: metadata table", self._columns, part):
            yield item if isinstance(item, Problem) else self._record(*item)
        if self.interim:
            log.warning("%s: %d rows name an interim (placeholder) genus or species; kept at their deepest valid "
                        "rank", self.path, self.interim)

    def parts(self, *, rows: int, prefix: str) -> list[TablePart | None]:
        return table_parts(self.path, "bioscan: metadata table", self._columns, rows=rows, prefix=prefix)

    def _columns(self, table: Table) -> dict[str, str | None] | Problem:
        found = {name: table.find(name) for name in ("image_file", "processid", "chunk_number", "chunk")}
        if found["image_file"] is None and found["processid"] is None:
            return Problem(table.where(1), "neither an image_file nor a processid column")
        ranks = resolve(table.header, RANKS, self.columns, where=str(self.path))
        extra = {"split": table.find(*SPLIT_COLUMNS), "license": table.find(*LICENSE_COLUMNS),
                 "owner": table.find(*OWNER_COLUMNS)}
        return {**found, **ranks, **extra}

    def _record(self, table: Table, line: int, row: dict[str, str]) -> Record | Problem:
        where = table.where(line)
        processid = row.get("processid", "")
        image_file = row.get("image_file") or (f"{processid}.jpg" if processid else "")
        if not image_file:
            return Problem(where, "no image_file or processid")
        split = row.get("split", "")
        image = first_existing(self._candidates(row, image_file, split))
        if image is None:
            return Problem(where, f"image not found under {self.image_root}: {image_file}")
        genus, species = without_interim(row.get("genus", ""), row.get("species", ""))
        self.interim += (genus, species) != (row.get("genus", ""), row.get("species", ""))
        ranks = {**{rank: row.get(rank, "") for rank in RANKS}, "genus": genus, "species": species}
        ranks["kingdom"] = ranks["kingdom"] or "Animalia"
        taxon = taxon_of(ranks, where, strict=False)
        if isinstance(taxon, Problem):
            return taxon
        return Record(self.kind, processid or image_file, str(image), taxon, split_hint=split,
                      license=row.get("license", ""), owner=row.get("owner", ""), origin=where)

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
