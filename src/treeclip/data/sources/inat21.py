"""``inat21:ROOT`` — the iNat2021 layout.

``ROOT/{train,train_mini,val}/NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_epithet/*.jpg``, and when present
the COCO-style ``ROOT/{train,train_mini,val}.json`` (``images[].file_name`` relative to ROOT,
``images[].id``, ``annotations[].image_id/category_id``, ``categories[]`` with ``kingdom ... genus,
specific_epithet, common_name, image_dir_name``).

- A split with a readable JSON is read from it (the JSON lists the images; a listed file missing on disk is
  a Problem). A split without one, or whose JSON is unreadable (a Problem), is read from its folders.
- Names: the JSON categories win over folder names, for every split (matched by ``image_dir_name``, else by
  the image's annotation; an image whose category a partial JSON lacks falls back to its folder name);
  common names come only from the JSON. Folders no category names are parsed
  with ``parse_inat21_dirname``.
- The JSON files are streamed with ijson (iNat21's train.json lists 2.7M images): memory holds the 10k
  categories, plus an image→category map only for files whose categories lack ``image_dir_name``.
- ``split_hint`` is the raw split folder name (``train``, ``train_mini`` or ``val``); note that train_mini
  is a subset of train, so reading both yields the same files twice (the build's sha256 dedup keeps one).
- Each image's ``license`` (named through the JSON's ``licenses`` list) and ``rights_holder`` go into the
  catalog's licence and owner columns.
- ``source_id`` is the image path relative to ROOT; ``origin`` is ``split.json:images[i]`` or the file path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson

from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon, parse_inat21_dirname, taxon_from_fields

from ..records import Problem, Record
from .base import Source, checked_taxon, iter_images, one_line, subdirs

log = logging.getLogger(__name__)

SPLITS = ("train", "train_mini", "val")


class _Categories:
    """Taxa of the JSON categories: by image_dir_name (all files) and by (file, category id)."""

    def __init__(self) -> None:
        self.by_dir: dict[str, Taxon] = {}
        self.by_id: dict[tuple[Path, int], Taxon] = {}
        self.complete: dict[Path, bool] = {}  # every category of the file has an image_dir_name
        self.unreadable: set[Path] = set()


class INat21Source(Source):
    """iNat2021 folders, with names from its JSON annotation files when present."""

    kind = "inat21"
    usage = "inat21:ROOT"

    def locate(self, path: str) -> Path:
        root = self.existing(path, "iNat2021 root", directory=True)
        if not any((root / split).is_dir() or (root / f"{split}.json").is_file() for split in SPLITS):
            raise UsageError(
                f"source {self.spec!r}: {root} has none of {', '.join(SPLITS)} (folders or .json files); "
                f"syntax: {self.usage}"
            )
        return root

    def records(self, part: None = None) -> Iterator[Record | Problem]:
        categories = _Categories()
        json_files = {split: self.path / f"{split}.json" for split in SPLITS}
        for json_path in json_files.values():
            if json_path.is_file():
                yield from _read_categories(json_path, categories)
        for split, json_path in json_files.items():
            if json_path.is_file() and json_path not in categories.unreadable:
                yield from self._json_split(split, json_path, categories)
            elif (self.path / split).is_dir():
                yield from self._folder_split(split, categories)

    def _json_split(self, split: str, json_path: Path, categories: _Categories) -> Iterator[Record | Problem]:
        by_image: dict[int, int] | None = None
        try:
            licenses = _licenses(json_path)
            with open(json_path, "rb") as handle:
                for index, image in enumerate(ijson.items(handle, "images.item", use_float=True)):
                    where = f"{json_path}:images[{index}]"
                    file_name = str(image.get("file_name", "")).replace("\\", "/")
                    taxon = categories.by_dir.get(Path(file_name).parent.name)
                    if taxon is None and not categories.complete.get(json_path, False):
                        by_image = _annotations(json_path) if by_image is None else by_image
                        taxon = categories.by_id.get((json_path, by_image.get(image.get("id"), -1)))
                    taxon = taxon or _folder_taxon(Path(file_name).parent.name)
                    record = self._json_record(split, where, file_name, taxon)
                    if isinstance(record, Record):
                        record.license = _license(image.get("license"), licenses)
                        record.owner = str(image.get("rights_holder") or "")
                    yield record
        except (ijson.JSONError, OSError) as exc:
            yield Problem(str(json_path), f"unreadable JSON: {one_line(exc)}")

    def _json_record(self, split: str, where: str, file_name: str, taxon: Taxon | None) -> Record | Problem:
        if not file_name:
            return Problem(where, "image entry without file_name")
        if taxon is None:
            return Problem(where, f"no usable category for {file_name}")
        path = self.path / file_name
        if not path.is_file():
            return Problem(where, f"image not found: {path}")
        return Record(self.kind, file_name, str(path), taxon, split_hint=split, origin=where)

    def _folder_split(self, split: str, categories: _Categories) -> Iterator[Record | Problem]:
        for class_dir in subdirs(self.path / split):
            taxon = categories.by_dir.get(class_dir.name) or checked_taxon(
                str(class_dir), parse_inat21_dirname, class_dir.name
            )
            if isinstance(taxon, Problem):
                yield taxon
                continue
            for image in iter_images(class_dir):
                relative = image.relative_to(self.path).as_posix()
                yield Record(self.kind, relative, str(image), taxon, split_hint=split, origin=str(image))


def _read_categories(json_path: Path, categories: _Categories) -> Iterator[Problem]:
    """Add a JSON file's categories; a Problem per bad category, or one for the file if it is unreadable."""
    complete = True
    try:
        with open(json_path, "rb") as handle:
            for index, category in enumerate(ijson.items(handle, "categories.item", use_float=True)):
                taxon = checked_taxon(f"{json_path}:categories[{index}]", _category_taxon, category)
                if isinstance(taxon, Problem):
                    yield taxon
                    continue
                categories.by_id[(json_path, category.get("id"))] = taxon
                if category.get("image_dir_name"):
                    categories.by_dir[str(category["image_dir_name"])] = taxon
                else:
                    complete = False
    except (ijson.JSONError, OSError) as exc:
        categories.unreadable.add(json_path)
        yield Problem(str(json_path), f"unreadable JSON: {one_line(exc)}")
    categories.complete[json_path] = complete


def category_taxa(json_path: Path) -> dict[str, Taxon]:
    """{image_dir_name: taxon with its common name} of an iNat2021 JSON's categories (bad ones logged)."""
    categories = _Categories()
    for problem in _read_categories(json_path, categories):
        log.warning("%s: %s", problem.origin, problem.reason)
    return categories.by_dir


def _category_taxon(category: dict[str, Any]) -> Taxon:
    def text(key: str) -> str:
        value = category.get(key)
        return "" if value is None else str(value)

    return taxon_from_fields(
        kingdom=text("kingdom"),
        phylum=text("phylum"),
        cls=text("class"),
        order=text("order"),
        family=text("family"),
        genus=text("genus"),
        species=text("specific_epithet") or text("name"),
        common=text("common_name"),
    )


def _folder_taxon(name: str) -> Taxon | None:
    """The taxon of an iNat2021 class folder name, for images a partial JSON has no category for."""
    try:
        return parse_inat21_dirname(name) if name else None
    except ValueError:
        return None


def _licenses(json_path: Path) -> dict[object, str]:
    """{licence id: its name (else url)} from the JSON's ``licenses`` list."""
    with open(json_path, "rb") as handle:
        return {item.get("id"): str(item.get("name") or item.get("url") or "")
                for item in ijson.items(handle, "licenses.item", use_float=True) if isinstance(item, dict)}


def _license(value: object, licenses: dict[object, str]) -> str:
    """An image's licence: its name from ``licenses``, else the id as written ("" when absent)."""
    if value is None or value == "":
        return ""
    return licenses.get(value) or f"iNat2021 licence id {value}"


def _annotations(json_path: Path) -> dict[int, int]:
    """image id → category id, streamed from the file's annotations."""
    with open(json_path, "rb") as handle:
        return {
            item.get("image_id"): item.get("category_id")
            for item in ijson.items(handle, "annotations.item", use_float=True)
        }
