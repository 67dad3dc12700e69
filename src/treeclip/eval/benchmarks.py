"""Evaluation benchmarks: a registry of loaders, each turning a data set on disk into a `Benchmark`
(image paths, integer labels, and one class per label with its taxon and the data set's own label text).

A task is named ``[NAME=]KIND:PATH`` (``--task`` of ``treeclip eval``; NAME labels it in reports):

===============  ======================================================================================
``rare:DIR``     Rare Species in BioCLIP's layout: ``DIR/metadata.csv`` with the columns
                 ``,kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class`` (a leading
                 unnamed index column); ``filepath`` is relative to DIR; ``species`` is the epithet (a
                 binomial also works). What ``treeclip make-benchmark`` writes.
``bioclip-csv:FILE``  one of BioCLIP's evaluation CSVs: ``,filepath,class`` (+ optional rank columns as
                 above); ``filepath`` is relative to the CSV's folder; ``class`` is the label.
``metaalbum:DIR``  a Meta-Album data set: ``DIR/labels.csv`` (``FILE_NAME,CATEGORY,SUPER_CATEGORY``, or
                 the column names that ``DIR/info.json`` gives as ``image_column_name`` /
                 ``category_column_name``), ``DIR/info.json``, images in ``DIR/images/``.
``inat21:DIR``   iNat2021 validation images: ``DIR/val/<id>_<Kingdom>_..._<Genus>_<epithet>/*.jpg`` (or
                 the class folders directly in DIR).
``csv:FILE``, ``folder:DIR[,TAXONOMY]``  any table or folder source of ``treeclip build``.
``synth:DIR[:VARIANT]``  the miniature tree of life written by ``treeclip synth`` (``DIR/catalog.csv``):
                 ``unseen`` (default; images and label set = the held-out species), ``seen`` (val images of
                 the training species; label set = those species) or ``open`` (unseen-species images, label
                 set = every species in the catalog).
===============  ======================================================================================

Dataset labels that name no taxon (e.g. ``Tomato___Late_blight``) become classes with an empty lineage whose
text in every text type is the label itself. Missing or malformed files raise `UsageError` naming the file
and the expected layout.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon, class_string, parse_inat21_dirname, parse_label, taxon_from_fields

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
RARE_LAYOUT = "DIR/metadata.csv with columns ,kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class"
BIOCLIP_CSV_LAYOUT = "a CSV with columns ,filepath,class (filepath relative to the CSV's folder)"
METAALBUM_LAYOUT = "DIR/labels.csv (FILE_NAME,CATEGORY,SUPER_CATEGORY), DIR/info.json and DIR/images/"
INAT21_LAYOUT = "DIR/val/<id>_<Kingdom>_<Phylum>_<Class>_<Order>_<Family>_<Genus>_<epithet>/ image folders"
SYNTH_LAYOUT = "the folder written by `treeclip synth` (DIR/catalog.csv with path, split, kingdom..species, common)"
SYNTH_VARIANTS = ("unseen", "seen", "open")
_RANK_FIELDS = ("kingdom", "phylum", "cls", "order", "family", "genus", "species")


@dataclass
class Benchmark:
    """Images with integer labels into `classes`; `class_names` holds each class's own label text ("asis")."""

    name: str
    paths: list[str]
    labels: list[int]
    classes: list[Taxon]
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels) or len(self.classes) != len(self.class_names):
            raise ValueError("a benchmark needs one label per image and one name per class")

    @property
    def taxonomic(self) -> bool:
        """Whether every class has a lineage, so hierarchy metrics apply."""
        return bool(self.classes) and all(taxon.depth for taxon in self.classes)

    def class_strings(self, kind: str) -> list[str]:
        """The class text of each class for a text type (`treeclip.taxonomy.class_string`) or "asis"."""
        if kind == "asis":
            return list(self.class_names)
        return [class_string(t, kind) if t.depth else name for t, name in zip(self.classes, self.class_names)]

    def taxa(self) -> list[Taxon]:
        """The taxon of every image."""
        return [self.classes[label] for label in self.labels]


def _assemble(name: str, items: Iterable[tuple[str, str, Taxon]]) -> Benchmark:
    """A Benchmark from (image path, class key, taxon) triples; classes sorted by key."""
    items = list(items)
    if not items:
        raise UsageError(f"task {name!r} holds no images")
    keys = sorted({key for _, key, _ in items})
    index = {key: i for i, key in enumerate(keys)}
    taxa: dict[str, Taxon] = {}
    for _, key, taxon in items:
        taxa.setdefault(key, taxon)
    return Benchmark(name=name, paths=[path for path, _, _ in items], labels=[index[key] for _, key, _ in items],
                     classes=[taxa[key] for key in keys], class_names=keys)


def _check_images(paths: Sequence[str], table: Path, layout: str) -> None:
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise UsageError(f"{table}: {len(missing)} listed image(s) not found, e.g. {missing[0]} (expected {layout})")


def _read_csv(path: Path, required: Sequence[str], layout: str) -> list[dict[str, str]]:
    """Rows of a CSV that must exist and hold the `required` columns; UsageError otherwise."""
    if not path.is_file():
        raise UsageError(f"{path} not found (expected {layout})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in required if column not in (reader.fieldnames or [])]
            if missing:
                raise UsageError(f"{path}: missing column(s) {', '.join(missing)} (expected {layout})")
            rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (csv.Error, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not a readable CSV ({error}); expected {layout}") from None
    if not rows:
        raise UsageError(f"{path} lists no images (expected {layout})")
    return rows


def _label_taxon(label: str) -> Taxon:
    """The taxon a dataset label names, or a rank-less class carrying the label as its name."""
    return parse_label(label) or Taxon(common=label)


def _row_taxon(row: dict[str, str], table: Path, line: int) -> Taxon:
    fields = {field: row.get(field, "") for field in _RANK_FIELDS}
    try:
        return taxon_from_fields(**fields, common=row.get("common_name", ""), strict=False)
    except ValueError as error:
        raise UsageError(f"{table}:{line}: unusable taxon names ({error})") from None


def _metadata_items(table: Path, rows: list[dict[str, str]], taxonomic: bool) -> list[tuple[str, str, Taxon]]:
    items = []
    for line, row in enumerate(rows, start=2):
        label = row.get("class", "")
        taxon = _row_taxon(row, table, line) if taxonomic else _label_taxon(label)
        key = label or (class_string(taxon, "sci") if taxon.depth else "")
        if not key or not row["filepath"]:
            raise UsageError(f"{table}:{line}: empty filepath or class")
        items.append((str(table.parent / row["filepath"]), key, taxon))
    return items


def load_rare(path: str, name: str = "") -> Benchmark:
    """Rare Species (BioCLIP's layout): ``DIR/metadata.csv`` with rank columns, ``filepath`` and ``class``."""
    table = Path(path) / "metadata.csv"
    rows = _read_csv(table, ("kingdom", "phylum", "cls", "order", "family", "genus", "species", "filepath"),
                     RARE_LAYOUT)
    items = _metadata_items(table, rows, taxonomic=True)
    _check_images([p for p, _, _ in items], table, RARE_LAYOUT)
    return _assemble(name or f"rare:{path}", items)


def load_bioclip_csv(path: str, name: str = "") -> Benchmark:
    """One of BioCLIP's evaluation CSVs (``,filepath,class``; rank columns used when all are present)."""
    table = Path(path)
    rows = _read_csv(table, ("filepath", "class"), BIOCLIP_CSV_LAYOUT)
    items = _metadata_items(table, rows, taxonomic=all(field in rows[0] for field in _RANK_FIELDS))
    _check_images([p for p, _, _ in items], table, BIOCLIP_CSV_LAYOUT)
    return _assemble(name or f"bioclip-csv:{path}", items)


def _metaalbum_columns(root: Path) -> tuple[str, str]:
    info_path = root / "info.json"
    if not info_path.is_file():
        raise UsageError(f"{info_path} not found (expected {METAALBUM_LAYOUT})")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"{info_path}: not valid JSON ({error}); expected {METAALBUM_LAYOUT}") from None
    if not isinstance(info, dict):
        raise UsageError(f"{info_path}: expected a JSON object (expected {METAALBUM_LAYOUT})")
    return info.get("image_column_name", "FILE_NAME"), info.get("category_column_name", "CATEGORY")


def load_metaalbum(path: str, name: str = "") -> Benchmark:
    """A Meta-Album data set folder: ``labels.csv`` + ``info.json`` + ``images/``."""
    root = Path(path)
    image_column, category_column = _metaalbum_columns(root)
    table = root / "labels.csv"
    rows = _read_csv(table, (image_column, category_column), METAALBUM_LAYOUT)
    images = root / "images" if (root / "images").is_dir() else root
    items = [(str(images / row[image_column]), row[category_column], _label_taxon(row[category_column]))
             for row in rows]
    _check_images([p for p, _, _ in items], table, METAALBUM_LAYOUT)
    return _assemble(name or f"metaalbum:{path}", items)


def load_inat21(path: str, name: str = "") -> Benchmark:
    """iNat2021 validation images from their class folders (``DIR/val`` or DIR itself)."""
    root = Path(path) / "val" if (Path(path) / "val").is_dir() else Path(path)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory (expected {INAT21_LAYOUT})")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            taxon = parse_inat21_dirname(folder.name)
        except ValueError:
            raise UsageError(f"{folder}: not an iNat2021 class folder name (expected {INAT21_LAYOUT})") from None
        items += [(str(f), folder.name, taxon) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise UsageError(f"{root}: no class folders with images (expected {INAT21_LAYOUT})")
    return _assemble(name or f"inat21:{path}", items)


def _source_records(spec: str) -> list[tuple[str, Taxon, str]]:
    """(path, taxon, split hint) of every usable record of a `treeclip build` source; problems are logged."""
    from treeclip.data.records import Problem  # noqa: PLC0415 - sources pull in the whole data layer
    from treeclip.data.sources import open_source  # noqa: PLC0415

    found = []
    for item in open_source(spec).records():
        if isinstance(item, Problem):
            log.warning("%s: %s (skipped)", item.origin, item.reason)
        elif item.path:
            found.append((item.path, item.taxon, item.split_hint))
    return found


def _taxon_items(records: Iterable[tuple[str, Taxon, str]]) -> list[tuple[str, str, Taxon]]:
    """Records keyed by their lineage (the taxonomic string), as class keys."""
    return [(path, taxon.taxonomic, taxon) for path, taxon, _ in records]


def load_source(spec: str, name: str = "") -> Benchmark:
    """Any ``csv:`` or ``folder:`` source of ``treeclip build``, one class per distinct lineage."""
    return _assemble(name or spec, _taxon_items(_source_records(spec)))


def load_synth(path: str, name: str = "", variant: str = "unseen") -> Benchmark:
    """The miniature tree of life: unseen-species, seen-species (val images) or open (all species) task."""
    if variant not in SYNTH_VARIANTS:
        raise UsageError(f"synth task variant {variant!r}: expected one of {', '.join(SYNTH_VARIANTS)}")
    catalog = Path(path) / "catalog.csv"
    if not catalog.is_file():
        raise UsageError(f"{catalog} not found (expected {SYNTH_LAYOUT})")
    records = _source_records(f"csv:{catalog}")
    wanted_split = "val" if variant == "seen" else "unseen"
    chosen = [r for r in records if r[2] == wanted_split]
    if not chosen:
        raise UsageError(f"{catalog}: no images with split {wanted_split!r} (expected {SYNTH_LAYOUT})")
    benchmark = _assemble(name or f"synth:{path}:{variant}", _taxon_items(chosen))
    return _with_label_set(benchmark, {r[1] for r in records}) if variant == "open" else benchmark


def _with_label_set(benchmark: Benchmark, taxa: Iterable[Taxon]) -> Benchmark:
    """The same images with the label set widened to `taxa` (classes without images are allowed)."""
    by_key = {t.taxonomic: t for t in taxa} | {t.taxonomic: t for t in benchmark.classes}
    keys = sorted(by_key)
    index = {key: i for i, key in enumerate(keys)}
    labels = [index[benchmark.classes[label].taxonomic] for label in benchmark.labels]
    return Benchmark(name=benchmark.name, paths=benchmark.paths, labels=labels,
                     classes=[by_key[k] for k in keys], class_names=keys)


Loader = Callable[[str, str], Benchmark]
LOADERS: dict[str, Loader] = {
    "rare": load_rare,
    "bioclip-csv": load_bioclip_csv,
    "metaalbum": load_metaalbum,
    "inat21": load_inat21,
    "csv": lambda path, name: load_source(f"csv:{path}", name),
    "folder": lambda path, name: load_source(f"folder:{path}", name),
    "synth": lambda path, name: _load_synth_spec(path, name),
}
TASK_SYNTAX = "KIND:PATH with KIND one of " + ", ".join(LOADERS) + " (synth:DIR[:unseen|seen|open])"


def _load_synth_spec(path: str, name: str) -> Benchmark:
    """``DIR[:VARIANT]`` → load_synth (a trailing ``:unseen``/``:seen``/``:open`` names the variant)."""
    head, colon, tail = path.rpartition(":")
    if colon and tail in SYNTH_VARIANTS:
        return load_synth(head, name, tail)
    return load_synth(path, name)


def load_task(spec: str) -> Benchmark:
    """The Benchmark a ``[NAME=]KIND:PATH`` task spec names (NAME, else the spec, names it in reports);
    UsageError for an unknown kind or a bad layout."""
    label, eq, rest = spec.partition("=")
    name, spec = (label.strip(), rest.strip()) if eq and not any(c in label for c in ":/\\") else ("", spec)
    kind, colon, path = spec.partition(":")
    loader = LOADERS.get(kind.strip().lower()) if colon else None
    if loader is None or not path.strip():
        raise UsageError(f"task {spec!r}: expected [NAME=]{TASK_SYNTAX}")
    return loader(path.strip(), name or spec)
