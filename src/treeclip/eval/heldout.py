"""Held-out benchmarks (``treeclip make-benchmark``), made the way BioCLIP made Rare Species.

From a catalog (CSV, TSV or Parquet, read by `treeclip.formats`, streamed: only the listed species' rows are
kept in memory; ``path``, ``source``, the rank columns ``kingdom ... species`` — ``cls``/``class`` by the column
rules —, optional ``common`` and ``sha256``) and a species list, keep the listed species that have at least N usable images and
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from treeclip.atomic import atomic_path, atomic_write
from treeclip.data.images import sha256_file
from treeclip.errors import UsageError
from treeclip.formats import PATH_ALIASES, TAXON_ROLES, Problem, has_ranks, open_table, resolve, taxon_of
from treeclip.formats.species_lists import read_name_lines
from treeclip.taxonomy import Taxon, parse_binomial

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


def read_catalog(path: str | os.PathLike[str], species: Iterable[str] | None = None,
                 columns: Mapping[str, str] | None = None) -> list[CatalogImage]:
    """The species-level images of a catalog, streamed and kept only for the listed `species` (binomials; all
    when None), so memory grows with the benchmark, not the catalog. Rows without a local path are kept with
    path "" so that their source still counts."""
    table = open_table(Path(path), what="--catalog")
    roles = resolve(table.header, TAXON_ROLES, columns, where=str(path))
    extra = {"path": table.find(*PATH_ALIASES), "source": table.find("source"),
             "sha256": table.find("sha256")}
    if extra["path"] is None or not has_ranks(roles):
        raise UsageError(f"catalog {path}: missing the path or rank columns (expected {CATALOG_LAYOUT})")
    wanted = None if species is None else {name.casefold() for name in species}
    base, images = table.path.parent, []
    for item in table.rows({**roles, **extra}):
        if isinstance(item, Problem):
            raise UsageError(f"{item.origin}: {item.reason}")
        line, row = item
        taxon = taxon_of(row, table.where(line), strict=False)
        key = taxon.scientific.casefold() if isinstance(taxon, Taxon) and taxon.species else ""
        if not key or (wanted is not None and key not in wanted):
            continue
        image = Path(row["path"]).expanduser()
        located = "" if not row["path"] else str(image if image.is_absolute() else base / image)
        images.append(CatalogImage(located, row["source"], taxon, row["sha256"]))
    return images


def read_species_list(path: str | os.PathLike[str]) -> list[str]:
    """Binomials ("Genus epithet") from a text file (one per line, # comments) or a table with a species /
    scientific_name column, in file order."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"species list {path} not found (expected {SPECIES_LAYOUT})")
    if path.suffix.lower() in (".csv", ".tsv", ".parquet"):
        table = open_table(path, what="species list")
        column = table.find("species", "scientific_name", "sciname", "scientificname", "binomial", "name")
        if column is None:
            raise UsageError(f"species list {path}: no species column (expected {SPECIES_LAYOUT})")
        names = [item[1]["name"] for item in table.rows({"name": column}) if isinstance(item, tuple)]
    else:
        names = [name for _, name in read_name_lines(path)]
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
    return _sample(by_species, training, species, n_images=n_images, seed=seed)


def _sample(by_species: Mapping[str, list[CatalogImage]], training: Mapping[str, set[str]], species: Sequence[str],
            *, n_images: int, seed: int) -> tuple[dict[str, list[CatalogImage]], dict[str, str]]:
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
                   seed: int = 0, link: str = "copy", columns: Mapping[str, str] | None = None) -> HeldoutResult:
    """Build a held-out benchmark in the Rare Species layout plus its exclusion file (see module docstring)."""
    if images_per_species < 1:
        raise UsageError(f"--images must be at least 1, got {images_per_species}")
    if link not in LINK_MODES:
        raise UsageError(f"link mode {link!r}: expected one of {', '.join(LINK_MODES)}")
    species = read_species_list(species_file)
    images = read_catalog(catalog, species, columns)
    chosen, skipped = select_images(images, species, n_images=images_per_species,
                                    exclude_sources=tuple(exclude_sources), seed=seed)
    out = Path(out_dir)
    write_benchmark(chosen, out, link=link)
    result = HeldoutResult(out, {b: len(images) for b, images in chosen.items()}, skipped)
    summary = {"catalog": str(catalog), "species_list": str(species_file), "images_per_species": images_per_species,
               "exclude_sources": list(exclude_sources), "seed": seed, "kept": result.kept, "skipped": skipped}
    atomic_write(out / "heldout.json", json.dumps(summary, indent=1) + "\n")
    return result
