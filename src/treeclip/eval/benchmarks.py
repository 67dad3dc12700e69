"""Evaluation benchmarks: a registry of loaders, each turning a data set on disk into a `Benchmark`
(image paths, integer labels, and one class per label with its taxon and the data set's own label text).

A task is named ``[NAME=]KIND:PATH[,EXTRA]`` (``--task`` of ``treeclip eval``; NAME labels it in reports):

===============  ======================================================================================
``rare:DIR``     Rare Species, either in BioCLIP's layout (``DIR/metadata.csv`` with
                 ``,kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class``: ``cls`` is the
                 class rank, ``class`` the label; ``filepath`` relative to DIR; what ``treeclip make-benchmark``
                 writes) or as downloaded from the hub (``metadata.csv`` with ``file_name, rarespecies_id,
                 eol_content_id, eol_page_id, kingdom ... species, sciName, common``; images in DIR, under
                 ``DIR/<Kingdom-Phylum-...-Genus-epithet>/`` folders, or anywhere one level down).
                 Default text type ``taxon_com`` (BioCLIP's).
``bioclip-csv:FILE``  one of BioCLIP's evaluation CSVs: ``,filepath,class`` (+ optional rank columns);
                 ``filepath`` relative to the CSV's folder. Default ``asis`` without rank columns (Meta-Album
                 tasks), ``taxon_com`` with them.
``metaalbum:DIR``  a Meta-Album data set: ``DIR/labels.csv`` (``FILE_NAME,CATEGORY,...``, or the columns
                 ``DIR/info.json`` names), images in ``DIR/images/``. Default ``asis``.
``inat21:DIR``   iNat2021 validation images ``DIR/val/<id>_<Kingdom>_..._<epithet>/*.jpg`` (or the class
                 folders in DIR); names and common names from ``DIR/val.json`` when present, the folder name
                 for categories it lacks. Default ``taxon_com``.
``csv:FILE``, ``folder:DIR[,TAXONOMY]``  any table or folder source of ``treeclip build``.
``synth:DIR[:VARIANT]``  the miniature tree of life written by ``treeclip synth``: ``unseen`` (default),
                 ``seen`` (val images of the training species) or ``open`` (unseen images, every species).
===============  ======================================================================================

Labels are used verbatim for ``asis`` (``Katodinium_or_Torodinium``, ``rice leaf roller``). A label is given a
lineage only when it *is* a scientific name (nothing dropped when parsed); otherwise every text type uses the
label. Two classes that would get the same text for a text type raise `UsageError` naming both. Missing or
malformed files raise `UsageError` naming the file and the expected layout.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from treeclip.errors import UsageError
from treeclip.formats import PATH_ALIASES, TAXON_ROLES, Problem, Table, has_ranks, open_table, resolve, taxon_of
from treeclip.taxonomy import Taxon, class_string, parse_inat21_dirname, parse_label

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
RARE_LAYOUT = ("DIR/metadata.csv with ,kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class "
               "(BioCLIP) or file_name,...,kingdom..species,sciName,common (as downloaded)")
BIOCLIP_CSV_LAYOUT = "a CSV with columns ,filepath,class (filepath relative to the CSV's folder)"
METAALBUM_LAYOUT = "DIR/labels.csv (FILE_NAME,CATEGORY,SUPER_CATEGORY), DIR/info.json and DIR/images/"
INAT21_LAYOUT = "DIR/val/<id>_<Kingdom>_<Phylum>_<Class>_<Order>_<Family>_<Genus>_<epithet>/ image folders"
SYNTH_LAYOUT = "the folder written by `treeclip synth` (DIR/catalog.csv with path, split, kingdom..species, common)"
SYNTH_VARIANTS = ("unseen", "seen", "open")
Item = tuple[str, str, Taxon]  # image path, class key (the label), taxon


@dataclass
class Benchmark:
    """Images with integer labels into `classes`; `class_names` holds each class's own label text ("asis");
    `default_text_type` is the text type BioCLIP's evaluation uses for this kind of task."""

    name: str
    paths: list[str]
    labels: list[int]
    classes: list[Taxon]
    class_names: list[str]
    default_text_type: str = "taxon_com"

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels) or len(self.classes) != len(self.class_names):
            raise ValueError("a benchmark needs one label per image and one name per class")

    @property
    def taxonomic(self) -> bool:
        """Whether every class has a lineage, so hierarchy metrics apply."""
        return bool(self.classes) and all(taxon.depth for taxon in self.classes)

    def class_strings(self, kind: str) -> list[str]:
        """The class text of each class for a text type (`treeclip.taxonomy.class_string`) or "asis" (the
        label verbatim); UsageError when two classes would get the same text."""
        texts = self.texts(kind)
        first: dict[str, str] = {}
        for name, text in zip(self.class_names, texts, strict=True):
            if text in first:
                raise UsageError(f"task {self.name!r}: classes {first[text]!r} and {name!r} both get the text "
                                 f"{text!r} for text type {kind}; evaluate with --text-type asis or fix the labels")
            first[text] = name
        return texts

    def texts(self, kind: str) -> list[str]:
        """The class texts for a text type without the distinctness check (for audits such as classes.csv)."""
        if kind == "asis":
            return list(self.class_names)
        return [class_string(t, kind) if t.depth else name for t, name in zip(self.classes, self.class_names)]

    def taxa(self) -> list[Taxon]:
        """The taxon of every image."""
        return [self.classes[label] for label in self.labels]


def _assemble(name: str, items: Iterable[Item], default_text_type: str = "taxon_com") -> Benchmark:
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
                     classes=[taxa[key] for key in keys], class_names=keys, default_text_type=default_text_type)


def _check_images(paths: Sequence[str], table: Path, layout: str) -> None:
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise UsageError(f"{table}: {len(missing)} listed image(s) not found, e.g. {missing[0]} (expected {layout})")


def _table(path: Path, layout: str) -> Table:
    if not path.is_file():
        raise UsageError(f"{path} not found (expected {layout})")
    return open_table(path, what="task table")


def _rows(table: Table, columns: Mapping[str, str | None], layout: str) -> list[tuple[int, dict[str, str]]]:
    """The rows of a task table; UsageError at the first bad row (a benchmark must be read whole)."""
    rows = []
    for item in table.rows(columns):
        if isinstance(item, Problem):
            raise UsageError(f"{item.origin}: {item.reason} (expected {layout})")
        rows.append(item)
    if not rows:
        raise UsageError(f"{table.path} lists no images (expected {layout})")
    return rows


def label_taxon(label: str) -> Taxon:
    """The taxon a dataset label names when the label *is* that name (nothing dropped: ``Lamium_galeobdolon``,
    ``Canis lupus``); otherwise a rank-less class carrying the label (``rice leaf roller``,
    ``Chaetoceros_didymus_flagellate``, ``Katodinium_or_Torodinium``)."""
    taxon = parse_label(label)
    spoken = " ".join(label.replace("_", " ").split()).casefold()
    if taxon is not None and taxon.depth and spoken in (taxon.scientific.casefold(), taxon.taxonomic.casefold()):
        return taxon
    return Taxon(common=label)


def _metadata_items(table: Table, overrides: Mapping[str, str], layout: str) -> tuple[list[Item], bool]:
    """(items, whether rank columns were used) of a BioCLIP-style metadata table."""
    ranks = resolve(table.header, (*TAXON_ROLES, "label"), overrides, where=str(table.path))
    path_column = overrides.get("path") or table.find(*PATH_ALIASES)
    missing = [what for what, ok in (("filepath", path_column), ("class", "label" in ranks or has_ranks(ranks)))
               if not ok]
    if missing:
        raise UsageError(f"{table.path}: missing column(s) {', '.join(missing)} (expected {layout})")
    taxonomic = has_ranks(ranks)
    items = []
    for line, row in _rows(table, {**ranks, "path": path_column}, layout):
        label = row.get("label", "")
        taxon = taxon_of(row, table.where(line), strict=False) if taxonomic else label_taxon(label)
        if isinstance(taxon, Problem):
            raise UsageError(f"{taxon.origin}: {taxon.reason}")
        key = label or taxon.scientific or taxon.taxonomic
        if not key or not row["path"]:
            raise UsageError(f"{table.where(line)}: empty image path or class (expected {layout})")
        items.append((row["path"], key, taxon))
    return items, taxonomic


def load_rare(path: str, name: str = "", columns: Mapping[str, str] | None = None) -> Benchmark:
    """Rare Species in BioCLIP's layout or as downloaded (see the module docstring)."""
    root = Path(path)
    table = _table(root / "metadata.csv", RARE_LAYOUT)
    items, _ = _metadata_items(table, columns or {}, RARE_LAYOUT)
    items = [(str(_rare_image(root, file, taxon)), key, taxon) for file, key, taxon in items]
    _check_images([p for p, _, _ in items], table.path, RARE_LAYOUT)
    return _assemble(name or f"rare:{path}", items)


def _rare_image(root: Path, file: str, taxon: Taxon) -> Path:
    """A Rare Species image: DIR/file, else in its ``Kingdom-...-epithet`` folder (in DIR or the hub's
    ``DIR/dataset/``), else one or two folders down."""
    direct = root / file
    if direct.is_file():
        return direct
    base = Path(file).name
    for folder in (root / "-".join(taxon.lineage), root / "dataset" / "-".join(taxon.lineage)):
        if (folder / base).is_file():
            return folder / base
    found = (p for pattern in (f"*/{base}", f"*/*/{base}") for p in root.glob(pattern) if p.is_file())
    return next(found, direct)


def load_bioclip_csv(path: str, name: str = "", columns: Mapping[str, str] | None = None) -> Benchmark:
    """One of BioCLIP's evaluation CSVs (``,filepath,class``; rank columns used when present)."""
    table = _table(Path(path), BIOCLIP_CSV_LAYOUT)
    items, taxonomic = _metadata_items(table, columns or {}, BIOCLIP_CSV_LAYOUT)
    items = [(str(table.path.parent / file), key, taxon) for file, key, taxon in items]
    _check_images([p for p, _, _ in items], table.path, BIOCLIP_CSV_LAYOUT)
    return _assemble(name or f"bioclip-csv:{path}", items, "taxon_com" if taxonomic else "asis")


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


def load_metaalbum(path: str, name: str = "", columns: Mapping[str, str] | None = None) -> Benchmark:
    """A Meta-Album data set folder: ``labels.csv`` + ``info.json`` + ``images/``."""
    root = Path(path)
    image_column, category_column = _metaalbum_columns(root)
    table = _table(root / "labels.csv", METAALBUM_LAYOUT)
    missing = [c for c in (image_column, category_column) if c not in table.header]
    if missing:
        raise UsageError(f"{table.path}: missing column(s) {', '.join(missing)} (expected {METAALBUM_LAYOUT})")
    images = root / "images" if (root / "images").is_dir() else root
    rows = _rows(table, {"file": image_column, "label": category_column}, METAALBUM_LAYOUT)
    items = [(str(images / row["file"]), row["label"], label_taxon(row["label"])) for _, row in rows]
    _check_images([p for p, _, _ in items], table.path, METAALBUM_LAYOUT)
    return _assemble(name or f"metaalbum:{path}", items, "asis")


def load_inat21(path: str, name: str = "", columns: Mapping[str, str] | None = None) -> Benchmark:
    """iNat2021 validation images from their class folders, named by ``val.json`` where it has them."""
    from treeclip.data.sources.inat21 import category_taxa  # noqa: PLC0415 - ijson only when needed

    root = Path(path) / "val" if (Path(path) / "val").is_dir() else Path(path)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory (expected {INAT21_LAYOUT})")
    json_path = next((p for p in (Path(path) / "val.json", root / "val.json") if p.is_file()), None)
    named = category_taxa(json_path) if json_path else {}
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        taxon = named.get(folder.name) or _inat21_folder_taxon(folder)
        items += [(str(f), folder.name, taxon) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise UsageError(f"{root}: no class folders with images (expected {INAT21_LAYOUT})")
    return _assemble(name or f"inat21:{path}", items)


def _inat21_folder_taxon(folder: Path) -> Taxon:
    try:
        return parse_inat21_dirname(folder.name)
    except ValueError:
        raise UsageError(f"{folder}: not an iNat2021 class folder name (expected {INAT21_LAYOUT})") from None


def _source_records(spec: str, columns: Mapping[str, str] | None = None) -> list[tuple[str, Taxon, str]]:
    """(path, taxon, split hint) of every usable record of a `treeclip build` source; problems are logged."""
    from treeclip.data.records import Problem as SourceProblem  # noqa: PLC0415 - the whole data layer
    from treeclip.data.sources import open_source  # noqa: PLC0415

    found = []
    for item in open_source(spec, columns=columns).records():
        if isinstance(item, SourceProblem):
            log.warning("%s: %s (skipped)", item.origin, item.reason)
        elif item.path:
            found.append((item.path, item.taxon, item.split_hint))
    return found


def _taxon_items(records: Iterable[tuple[str, Taxon, str]]) -> list[Item]:
    """Records keyed by their lineage (the taxonomic string), as class keys."""
    return [(path, taxon.taxonomic, taxon) for path, taxon, _ in records]


def load_source(spec: str, name: str = "", columns: Mapping[str, str] | None = None) -> Benchmark:
    """Any ``csv:`` or ``folder:`` source of ``treeclip build``, one class per distinct lineage."""
    return _assemble(name or spec, _taxon_items(_source_records(spec, columns)))


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


Loader = Callable[[str, str, Mapping[str, str]], Benchmark]
LOADERS: dict[str, Loader] = {
    "rare": load_rare,
    "bioclip-csv": load_bioclip_csv,
    "metaalbum": load_metaalbum,
    "inat21": load_inat21,
    "csv": lambda path, name, columns: load_source(f"csv:{path}", name, columns),
    "folder": lambda path, name, columns: load_source(f"folder:{path}", name, columns),
    "synth": lambda path, name, columns: _load_synth_spec(path, name),
}
TASK_SYNTAX = ("[NAME=]KIND:PATH[,EXTRA] with KIND one of " + ", ".join(LOADERS)
               + " (folder:DIR,TAXONOMY; synth:DIR[:unseen|seen|open])")
_SPEC_START = re.compile(r"^\s*(?:[A-Za-z0-9_.-]+\s*=\s*)?(" + "|".join(map(re.escape, LOADERS)) + r")\s*:",
                         re.IGNORECASE)


def _load_synth_spec(path: str, name: str) -> Benchmark:
    """``DIR[:VARIANT]`` → load_synth (a trailing ``:unseen``/``:seen``/``:open`` names the variant)."""
    head, colon, tail = path.rpartition(":")
    if colon and tail in SYNTH_VARIANTS:
        return load_synth(head, name, tail)
    return load_synth(path, name)


def split_task_specs(values: Sequence[str]) -> list[str]:
    """Task specs from ``--task`` values: commas separate tasks, except inside a task's own extra fields
    (``a=folder:DIR,TAXONOMY,b=rare:DIR`` is two tasks). UsageError naming the expected shape otherwise."""
    specs: list[str] = []
    for value in values:
        for part in value.split(","):
            if _SPEC_START.match(part):
                specs.append(part.strip())
            elif specs and part.strip():
                specs[-1] += "," + part.strip()
            elif part.strip():
                raise UsageError(f"--task {value!r}: {part.strip()!r} is not a task; expected {TASK_SYNTAX}")
    if not specs:
        raise UsageError(f"--task: no task given; expected {TASK_SYNTAX}")
    return specs


def load_task(spec: str, columns: Mapping[str, str] | None = None) -> Benchmark:
    """The Benchmark a ``[NAME=]KIND:PATH[,EXTRA]`` task spec names (NAME, else the spec, names it in
    reports); UsageError for an unknown kind or a bad layout. `columns` overrides table column rules."""
    match = _SPEC_START.match(spec)
    if match is None:
        raise UsageError(f"task {spec!r}: expected {TASK_SYNTAX}")
    name = spec[:match.start(1)].strip().rstrip("=").strip()
    body = spec[match.start(1):].strip()
    kind, _, path = body.partition(":")
    if not path.strip():
        raise UsageError(f"task {spec!r}: no path after {kind}:; expected {TASK_SYNTAX}")
    return LOADERS[kind.strip().lower()](path.strip(), name or body, columns or {})
