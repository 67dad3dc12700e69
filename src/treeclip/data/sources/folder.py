"""``folder:ROOT[,TAXONOMY_CSV]`` — one folder per class, images anywhere below it.

Layouts: ``ROOT/CLASS/**/image`` or, when every folder in ROOT is a split name (train, train_mini, val,
validation, test), ``ROOT/SPLIT/CLASS/**/image`` with the split kept as the split hint.

A class folder's name is looked up in the optional TAXONOMY_CSV first (a ``folder``/``label``/``name``/
``dirname`` column matched case-insensitively with ``_`` = space, plus rank columns as in ``csv:``), and is
otherwise parsed as a taxon label (``treeclip.taxonomy.parse_label``: binomials, taxonomic strings, iNat
folder names, the hyphen-joined 7-rank names of Rare Species ``Animalia-Chordata-...-Genus-epithet`` ...). A folder that is neither is one Problem, and its images are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from treeclip.formats import Table, resolve, taxon_of
from treeclip.formats.columns import TAXON_ROLES
from treeclip.taxonomy import Taxon, parse_label

from ..records import Problem, Record
from .base import Source, checked_taxon, iter_images, subdirs, table_rows

SPLIT_NAMES = frozenset({"train", "train_mini", "val", "validation", "test"})
KEY_COLUMNS = ("folder", "label", "name", "dirname", "directory", "class_name")


class FolderPart(NamedTuple):
    """A run of class folders ((split hint, path) each) of a folder source; `number` is its place."""

    number: int
    class_dirs: tuple[tuple[str, str], ...]


def folder_key(name: str) -> str:
    """Case- and separator-insensitive key of a folder name."""
    return " ".join(name.replace("_", " ").split()).casefold()


class FolderSource(Source):
    """Class folders named by taxon or mapped to lineages by a CSV."""

    kind = "folder"
    params = ("taxonomy",)
    usage = "folder:ROOT[,TAXONOMY_CSV]"

    def locate(self, path: str) -> Path:
        if self.options.get("taxonomy"):
            self.options["taxonomy"] = str(self.existing(self.options["taxonomy"], "taxonomy CSV", directory=False))
        return self.existing(path, "image", directory=True)

    def records(self, part: FolderPart | None = None) -> Iterator[Record | Problem]:
        mapping: dict[str, Taxon] = {}
        if self.options.get("taxonomy"):
            for problem in self._read_mapping(Path(self.options["taxonomy"]), mapping):
                if part is None or part.number == 0:  # every part reads the table; the first reports its rows
                    yield problem
        class_dirs = self._class_dirs() if part is None else ((split, Path(path)) for split, path in part.class_dirs)
        for split, class_dir in class_dirs:
            taxon = mapping.get(folder_key(class_dir.name))
            taxon = taxon or checked_taxon(str(class_dir), parse_label, class_dir.name)
            if isinstance(taxon, Problem):
                yield Problem(str(class_dir), f"folder name {class_dir.name!r} is not a taxon name and is not mapped")
                continue
            for image in iter_images(class_dir):
                relative = image.relative_to(self.path).as_posix()
                yield Record(self.kind, relative, str(image), taxon, split_hint=split, origin=str(image))

    def parts(self, *, rows: int, prefix: str) -> list[FolderPart | None]:
        """Runs of whole class folders of about `rows` images each, in the order `records` reads them. The split
        job walks the tree once, counting each class folder's images (`iter_images`, one directory listing
        held at a time); it holds the class folders' paths, never the images'. A class folder is never cut."""
        parts: list[FolderPart] = []
        run: list[tuple[str, str]] = []
        count = 0
        for split, class_dir in self._class_dirs():
            run.append((split, str(class_dir)))
            count += max(1, sum(1 for _ in iter_images(class_dir)))  # an unusable folder is one problem
            if count >= rows:
                parts.append(FolderPart(len(parts), tuple(run)))
                run, count = [], 0
        if run:
            parts.append(FolderPart(len(parts), tuple(run)))
        return [None] if len(parts) < 2 else parts

    def _class_dirs(self) -> Iterator[tuple[str, Path]]:
        top = subdirs(self.path)
        if top and all(folder.name.lower() in SPLIT_NAMES for folder in top):
            for split_dir in top:
                yield from ((split_dir.name, class_dir) for class_dir in subdirs(split_dir))
        else:
            yield from (("", class_dir) for class_dir in top)

    def _read_mapping(self, path: Path, mapping: dict[str, Taxon]) -> Iterator[Problem]:
        for item in table_rows(path, "folder: taxonomy", self._mapping_columns):
            taxon = item if isinstance(item, Problem) else taxon_of(item[2], item[0].where(item[1]), strict=False)
            if isinstance(taxon, Problem):
                yield taxon
            else:
                mapping[folder_key(item[2]["folder"])] = taxon  # type: ignore[index]

    def _mapping_columns(self, table: Table) -> dict[str, str] | Problem:
        key = self.columns.get("folder") or table.find(*KEY_COLUMNS)
        if key is None:
            return Problem(table.where(1), f"no folder name column (one of {', '.join(KEY_COLUMNS)})")
        return {**resolve(table.header, TAXON_ROLES, self.columns, where=str(table.path)), "folder": key}
