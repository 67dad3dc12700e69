"""Held-out benchmarks (``treeclip make-benchmark``), made the way BioCLIP made Rare Species.

From a catalog (CSV or Parquet, with ``path``, ``source``, the rank columns ``kingdom ... species``, optional
``common`` and ``sha256``) and a species list, keep the listed species that have at least N usable images and
appear in none of the named training sources, sample N images of each with a seed, and write:

- ``OUT/metadata.csv`` in the Rare Species layout (``,kingdom,phylum,cls,order,family,genus,species,
  common_name,filepath,class``; ``species`` = epithet, ``class`` = the binomial, ``filepath`` relative to
  OUT) and the images under ``OUT/images/<Genus_epithet>/`` (copied, or linked);
- ``OUT/exclude.csv``, the file ``treeclip build --exclude`` takes: columns ``species,sha256,path``, one
  row per benchmark image (binomial, SHA-256 of the image bytes, absolute source path);
- ``OUT/heldout.json``: parameters, kept species and the reason each other listed species was skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from treeclip.atomic import atomic_path, atomic_write
from treeclip.data.images import sha256_file
from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon, parse_binomial, taxon_from_fields

METADATA_COLUMNS = ("", "kingdom", "phylum", "cls", "order", "family", "genus", "species", "common_name",
                    "filepath", "class")
EXCLUDE_COLUMNS = ("species", "sha256", "path")
LINK_MODES = ("copy", "symlink", "hardlink")
CATALOG_LAYOUT = ("a CSV or Parquet catalog with columns path, source, kingdom, phylum, class, order, family, "
                  "genus, species")
SPECIES_LAYOUT = "a text file with one binomial per line, or a CSV with a species/scientific_name column"


@dataclass
class CatalogImage:
    path: str
    source: str
    taxon: Taxon
    sha256: str = ""


@dataclass
class HeldoutResult:
    out_dir: Path
    kept: dict[str, int] = field(default_factory=dict)  # binomial → images written
    skipped: dict[str, str] = field(default_factory=dict)  # binomial → reason


def _catalog_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise UsageError(f"catalog {path} not found (expected {CATALOG_LAYOUT})")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        return [{k: "" if v is None else str(v) for k, v in row.items()} for row in pq.read_table(path).to_pylist()]
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(handle)]


def read_catalog(path: str | os.PathLike[str]) -> list[CatalogImage]:
    """The catalog's images with a species-level taxon (rows without genus + epithet are ignored; a row
    without a path is kept with path "" so that its source still counts)."""
    path = Path(path)
    rows = _catalog_rows(path)
    missing = [c for c in ("path", "genus", "species") if rows and c not in rows[0]]
    if not rows or missing:
        raise UsageError(f"catalog {path}: missing column(s) {', '.join(missing) or 'and rows'} "
                         f"(expected {CATALOG_LAYOUT})")
    base = path.parent
    images = []
    for row in rows:
        taxon = taxon_from_fields(kingdom=row.get("kingdom", ""), phylum=row.get("phylum", ""),
                                  cls=row.get("class", row.get("cls", "")), order=row.get("order", ""),
                                  family=row.get("family", ""), genus=row["genus"], species=row["species"],
                                  common=row.get("common", row.get("common_name", "")), strict=False)
        if taxon.species:  # rows without a local path still count for the training sources
            image = Path(row["path"]).expanduser()
            located = "" if not row["path"] else str(image if image.is_absolute() else base / image)
            images.append(CatalogImage(located, row.get("source", ""), taxon, row.get("sha256", "")))
    return images


def read_species_list(path: str | os.PathLike[str]) -> list[str]:
    """Binomials ("Genus epithet") from a text file (one per line, # comments) or a CSV, in file order."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"species list {path} not found (expected {SPECIES_LAYOUT})")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        column = next((c for c in ("species", "scientific_name", "binomial", "name") if c in (reader.fieldnames or [])),
                      None)
        if column is None:
            raise UsageError(f"species list {path}: no species column (expected {SPECIES_LAYOUT})")
        names = [row[column] for row in reader]
    else:
        names = [line.split("#", 1)[0] for line in text.splitlines()]
    binomials = [_binomial(name.strip(), path) for name in names if name.strip()]
    if not binomials:
        raise UsageError(f"species list {path} names no species (expected {SPECIES_LAYOUT})")
    return list(dict.fromkeys(binomials))


def _binomial(name: str, path: Path) -> str:
    try:
        taxon = parse_binomial(name)
    except ValueError:
        taxon = None
    if taxon is None or not taxon.species:
        raise UsageError(f"species list {path}: {name!r} is not a binomial (expected {SPECIES_LAYOUT})")
    return taxon.scientific


def _species_seed(seed: int, binomial: str) -> np.random.Generator:
    """A generator per species, so adding a species to the list never changes the others' samples."""
    return np.random.default_rng([seed, int(hashlib.sha256(binomial.encode()).hexdigest()[:12], 16)])


def select_images(images: Sequence[CatalogImage], species: Sequence[str], *, n_images: int,
                  exclude_sources: Sequence[str], seed: int) -> tuple[dict[str, list[CatalogImage]], dict[str, str]]:
    """({binomial: sampled images}, {binomial: reason skipped}) for the listed species."""
    by_species: dict[str, list[CatalogImage]] = defaultdict(list)
    training: dict[str, set[str]] = defaultdict(set)
    for image in images:
        key = image.taxon.scientific.casefold()
        if image.source in exclude_sources:
            training[key].add(image.source)
        else:
            by_species[key].append(image)
    chosen, skipped = {}, {}
    for binomial in species:
        key = binomial.casefold()
        candidates = sorted({i.sha256 or i.path: i for i in by_species.get(key, [])}.values(), key=lambda i: i.path)
        candidates = [i for i in candidates if i.path and Path(i.path).is_file()]
        if training.get(key):
            skipped[binomial] = f"in training source(s) {', '.join(sorted(training[key]))}"
        elif len(candidates) < n_images:
            skipped[binomial] = f"only {len(candidates)} usable image(s), {n_images} needed"
        else:
            picks = _species_seed(seed, key).choice(len(candidates), size=n_images, replace=False)
            chosen[binomial] = [candidates[i] for i in sorted(picks)]
    return chosen, skipped


def _place(source: Path, target: Path, link: str) -> None:
    with atomic_path(target) as tmp:
        if link == "symlink":
            os.symlink(source.resolve(), tmp)
        elif link == "hardlink":
            os.link(source, tmp)
        else:
            shutil.copyfile(source, tmp)


def _metadata_row(index: int, image: CatalogImage, filepath: str) -> dict[str, str]:
    t = image.taxon
    return dict(zip(METADATA_COLUMNS, (str(index), t.kingdom, t.phylum, t.cls, t.order, t.family, t.genus,
                                       t.species, t.common, filepath, t.scientific)))


def _csv_text(columns: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_benchmark(chosen: dict[str, list[CatalogImage]], out_dir: Path, *, link: str) -> None:
    """Images, metadata.csv (written last) and exclude.csv in the Rare Species layout."""
    metadata, exclude = [], []
    for binomial, images in chosen.items():
        folder = binomial.replace(" ", "_")
        for number, image in enumerate(images):
            filepath = f"images/{folder}/{number:03d}_{Path(image.path).name}"
            _place(Path(image.path), out_dir / filepath, link)
            metadata.append(_metadata_row(len(metadata), image, filepath))
            exclude.append({"species": binomial, "sha256": image.sha256 or sha256_file(image.path),
                            "path": str(Path(image.path).resolve())})
    atomic_write(out_dir / "exclude.csv", _csv_text(EXCLUDE_COLUMNS, exclude))
    atomic_write(out_dir / "metadata.csv", _csv_text(METADATA_COLUMNS, metadata))


def make_benchmark(*, catalog: str | os.PathLike[str], species_file: str | os.PathLike[str],
                   out_dir: str | os.PathLike[str], images_per_species: int, exclude_sources: Sequence[str] = (),
                   seed: int = 0, link: str = "copy") -> HeldoutResult:
    """Build a held-out benchmark in the Rare Species layout plus its exclusion file (see module docstring)."""
    if images_per_species < 1:
        raise UsageError(f"--images must be at least 1, got {images_per_species}")
    if link not in LINK_MODES:
        raise UsageError(f"link mode {link!r}: expected one of {', '.join(LINK_MODES)}")
    species = read_species_list(species_file)
    chosen, skipped = select_images(read_catalog(catalog), species, n_images=images_per_species,
                                    exclude_sources=tuple(exclude_sources), seed=seed)
    out = Path(out_dir)
    write_benchmark(chosen, out, link=link)
    result = HeldoutResult(out, {b: len(images) for b, images in chosen.items()}, skipped)
    summary = {"catalog": str(catalog), "species_list": str(species_file), "images_per_species": images_per_species,
               "exclude_sources": list(exclude_sources), "seed": seed, "kept": result.kept, "skipped": skipped}
    atomic_write(out / "heldout.json", json.dumps(summary, indent=1) + "\n")
    return result
