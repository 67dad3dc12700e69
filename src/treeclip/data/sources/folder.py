"""``folder:ROOT[,TAXONOMY_CSV]`` — one folder per class, images anywhere below it.

Layouts: ``ROOT/CLASS/**/image`` or, when every folder in ROOT is a split name (train, train_mini, val,
validation, test), ``ROOT/SPLIT/CLASS/**/image`` with the split kept as the split hint.

A class folder's name is looked up in the optional TAXONOMY_CSV first (a ``folder``/``label``/``name``/
``dirname`` column matched case-insensitively with ``_`` = space, plus rank columns as in ``csv:``), and is
otherwise parsed as a taxon label (``treeclip.taxonomy.parse_label``: binomials, taxonomic strings, iNat
folder names, the hyphen-joined 7-rank names of Rare Species ``Animalia-Chordata-...-Genus-epithet`` ...). A folder that is neither is one Problem, and its images are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from treeclip.formats import Table, resolve, taxon_of
from treeclip.formats.columns import TAXON_ROLES
from treeclip.taxonomy import Taxon, parse_label

from ..records import Problem, Record
from .base import Source, checked_taxon, is_image_name, iter_images, subdirs, table_rows

SPLIT_NAMES = frozenset({"train", "train_mini", "val", "validation", "test"})
KEY_COLUMNS = ("folder", "label", "name", "dirname", "directory", "class_name")


class Piece(NamedTuple):
    """Images of a class folder read by one job: of `folder` and everything below it (`whole`), or of `folder`
    itself only (its sub-folders are pieces of their own)."""

    split: str
    class_dir: str
    folder: str
    whole: bool


class FolderPart(NamedTuple):
    """A run of pieces of class folders of a folder source; `number` is its place."""

    number: int
    pieces: tuple[Piece, ...]


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
        pieces = (Piece(split, str(d), str(d), True) for split, d in self._class_dirs()) if part is None else part.pieces
        for piece in pieces:
            class_dir = Path(piece.class_dir)
            taxon = mapping.get(folder_key(class_dir.name))
            taxon = taxon or checked_taxon(str(class_dir), parse_label, class_dir.name)
            if isinstance(taxon, Problem):
                if piece.folder == piece.class_dir:  # a class folder's first piece reports it
                    yield Problem(str(class_dir), f"folder name {class_dir.name!r} is not a taxon name and is not mapped")
                continue
            for image in iter_images(Path(piece.folder)) if piece.whole else _own_images(piece.folder):
                relative = image.relative_to(self.path).as_posix()
                yield Record(self.kind, relative, str(image), taxon, split_hint=piece.split, origin=str(image))

    def parts(self, *, rows: int, prefix: str) -> list[FolderPart | None]:
        """Runs of pieces of about `rows` images each, in the order `records` reads them: whole class folders,
        and a class folder of more than `rows` images cut at its sub-folders (deeper where they are big too).
        The split job walks the tree once, counting images; it holds a count per folder of the class folder
        being walked and the pieces' paths, never the images'."""
        parts: list[FolderPart] = []
        run: list[Piece] = []
        count = 0
        for split, class_dir in self._class_dirs():
            for folder, whole, images in _pieces(str(class_dir), rows)[1]:
                run.append(Piece(split, str(class_dir), folder, whole))
                count += images
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


def _pieces(folder: str, rows: int) -> tuple[int, list[tuple[str, bool, int]]]:
    """(images below `folder`, its pieces as (folder, whole, images)) in `iter_images` order: the whole folder
    when it holds at most `rows` images, else its own images, then each sub-folder's pieces (the sub-folders
    `os.walk` enters: visible, not symbolic links)."""
    current, dirs, files = next(os.walk(folder), (folder, [], []))
    own = sum(1 for name in files if is_image_name(name))
    below = [_pieces(os.path.join(current, name), rows) for name in sorted(dirs)
             if not name.startswith(".") and not os.path.islink(os.path.join(current, name))]
    total = own + sum(images for images, _ in below)
    if total <= rows:
        return total, [(folder, True, total)]
    return total, [(folder, False, own), *(piece for _, pieces in below for piece in pieces)]


def _own_images(folder: str) -> Iterator[Path]:
    """The images of `folder` itself (not of its sub-folders), as `iter_images` yields them."""
    current, _, files = next(os.walk(folder), (folder, [], []))
    return (Path(current) / name for name in sorted(files) if is_image_name(name))
