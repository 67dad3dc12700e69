"""The miniature tree of life: a generated world in which appearance is inherited along a taxonomy.

`build_world` makes the taxonomy (seven ranks, Latin-like names, common names), evolves a trait vector
down it and picks the held-out (``unseen``) species; `write_world` renders every species' images into
``OUT/images/<Genus>_<epithet>/NNNNNN.png`` one species at a time (nothing accumulates in memory) and
writes ``catalog.csv`` (the generic ``csv:`` source layout, with each image's place and date as
``decimalLatitude, decimalLongitude, eventDate``), ``taxonomy.csv``, ``world.json``, ``unseen.txt`` (the
held-out binomials, one a line: the ``--exclude`` list that keeps them out of a build) and
``occurrences.csv`` (Darwin Core occurrence records drawn from every species' range, for `treeclip prior
build`; see `treeclip.data.synth_geo` for the geography).

Trait model: the root is the zero vector; every taxon's vector is its parent's plus Gaussian noise whose
scale `RANK_NOISE` shrinks with rank, so two species share the noise of all ranks above their lowest common
ancestor and their expected squared trait distance grows with taxonomic distance.

Determinism: every random choice comes from a generator seeded by ``(seed, stream, key)``; the images of a
species depend only on ``(seed, species index)``, never on processing order. Images are PNG: lossless (the
builder does the one lossy JPEG encoding), with no timestamps, so equal seeds give byte-identical trees.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from treeclip.atomic import atomic_path, atomic_write
from treeclip.data.synth_geo import (LOCATION_COLUMNS, OCCURRENCE_COLUMNS, RANGE_KM, RANK_SPREAD_KM,
                                     points_in_range, range_centres, range_radii)
from treeclip.data.synth_names import NameBook, kingdom_codes
from treeclip.data.synth_render import TRAIT_DIM, TRAITS, Phenotype, render
from treeclip.errors import UsageError
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon

log = logging.getLogger(__name__)

DEFAULT_SPECIES = 300
N_RANKS = len(RANK_NAMES)
RANK_NOISE = (1.0, 0.7, 0.5, 0.38, 0.3, 0.24, 0.18)  # trait noise added at kingdom ... species
CATALOG_COLUMNS = ("path", "split", *RANK_NAMES, "common", *LOCATION_COLUMNS)
TAXONOMY_COLUMNS = (*RANK_NAMES, "common", "status")
TRAIN, VAL, UNSEEN, SEEN = "train", "val", "unseen", "seen"
IMAGE_DIR, IMAGE_SUFFIX = "images", ".png"
OCCURRENCES = "occurrences.csv"
OUTPUTS = (IMAGE_DIR, "catalog.csv", "taxonomy.csv", "unseen.txt", "world.json", OCCURRENCES)
_SHAPE, _NAMES, _TRAITS, _HOLDOUT, _IMAGES, _GEO, _RECORDS = range(7)  # independent random streams
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthSpecies:
    """One species of the world."""

    index: int
    taxon: Taxon
    unseen: bool


@dataclass(frozen=True)
class World:
    """The taxonomy, per-species trait vectors and hold-out choice of one seed."""

    seed: int
    species: tuple[SynthSpecies, ...]
    traits: np.ndarray  # [n_species, TRAIT_DIM]
    taxa_per_rank: dict[str, int]
    codes: dict[str, str]  # kingdom name -> nomenclature code
    centres: np.ndarray  # [n_species, 2] range centre (lat, lon)
    radii: np.ndarray  # [n_species] range radius, km

    @property
    def n_unseen(self) -> int:
        """Number of held-out species."""
        return sum(member.unseen for member in self.species)


@dataclass(frozen=True)
class SynthSummary:
    """What `write_world` wrote."""

    out_dir: Path
    species: int
    unseen: int
    images: dict[str, int]  # per split
    taxa_per_rank: dict[str, int]


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *keys]))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


# ----------------------------------------------------------------------------------------------- tree shape
def _n_children(size: int, rank: int, rng: np.random.Generator) -> int:
    """Children of a node with `size` species below: about size^(1/ranks left), jittered; ≥2 kingdoms."""
    if rank == Rank.SPECIES:
        return size
    guess = round(size ** (1.0 / (N_RANKS - rank)) * math.exp(rng.normal(0.0, 0.3)))
    if rank == Rank.KINGDOM:
        guess = max(guess, 2)
    return int(min(max(guess, 1), size))


def _split_count(size: int, parts: int, rng: np.random.Generator) -> list[int]:
    """A random composition of `size` into `parts` positive integers."""
    cuts = np.sort(rng.choice(size - 1, size=parts - 1, replace=False)) + 1 if parts > 1 else []
    return np.diff([0, *cuts, size]).tolist()


def _shape_from_count(species: int, rng: np.random.Generator) -> list[list[int]]:
    """Parent index of every node, rank by rank, for a random tree with `species` leaves."""
    parents, sizes = [], [species]
    for rank in range(N_RANKS):
        rank_parents, rank_sizes = [], []
        for parent, size in enumerate(sizes):
            children = _split_count(size, _n_children(size, rank, rng), rng)
            rank_parents += [parent] * len(children)
            rank_sizes += children
        parents.append(rank_parents)
        sizes = rank_sizes
    return parents


def _shape_from_branching(branching: Sequence[int]) -> list[list[int]]:
    """Parent index of every node, rank by rank, for a regular tree with `branching` children per rank."""
    counts = np.cumprod(branching).tolist()
    return [[node // branching[rank] for node in range(counts[rank])] for rank in range(N_RANKS)]


def _check_shape(species: int | None, branching: Sequence[int] | None) -> None:
    _require(species is None or branching is None, "give either species or branching, not both")
    if branching is not None:
        _require(len(branching) == N_RANKS and all(isinstance(b, int) and b >= 1 for b in branching),
                 f"branching needs {N_RANKS} positive counts (kingdom ... species), got {tuple(branching)}")
    if species is not None:
        _require(isinstance(species, int) and species >= 1, f"species must be at least 1, got {species}")


# ------------------------------------------------------------------------------------------ names and traits
def _kingdom_of(parents: list[list[int]]) -> list[list[int]]:
    """The kingdom index of every node, rank by rank."""
    kingdoms = [list(range(len(parents[0])))]
    for rank in range(1, N_RANKS):
        kingdoms.append([kingdoms[-1][parent] for parent in parents[rank]])
    return kingdoms


def _genus_names(kingdoms: list[int], codes: list[str], book: NameBook, rng: np.random.Generator,
                 homonyms: float) -> list[str]:
    """Genus names, unique within each kingdom; a `homonyms` fraction reuses a genus of another kingdom."""
    names, fresh, taken = [], [], [set() for _ in codes]
    for kingdom in kingdoms:
        options = [name for other, name in fresh if other != kingdom and name not in taken[kingdom]] \
            if homonyms and rng.random() < homonyms else []
        name = options[rng.integers(len(options))] if options else book.scientific(Rank.GENUS, codes[kingdom])
        if not options:
            fresh.append((kingdom, name))
        taken[kingdom].add(name)
        names.append(name)
    return names


def _names(parents: list[list[int]], seed: int, homonyms: float) -> tuple[list[list[str]], list[str], list[str]]:
    """Names of every node rank by rank, the kingdoms' codes, and one common name per species."""
    rng = _rng(seed, _NAMES)
    kingdoms = _kingdom_of(parents)
    codes = kingdom_codes(len(parents[0]), rng)
    book = NameBook(rng)
    names = []
    for rank in Rank:
        if rank == Rank.GENUS:
            names.append(_genus_names(kingdoms[rank], codes, book, rng, homonyms))
        else:
            names.append([book.scientific(rank, codes[k]) for k in kingdoms[rank]])
    commons = [book.common(family=parents[Rank.GENUS][genus], genus=genus) for genus in parents[Rank.SPECIES]]
    return names, codes, commons


def _traits(parents: list[list[int]], seed: int) -> np.ndarray:
    """Species trait vectors: each node is its parent's vector plus noise of its rank's scale."""
    vectors = np.zeros((1, TRAIT_DIM))
    for rank in range(N_RANKS):
        noise = _rng(seed, _TRAITS, rank).standard_normal((len(parents[rank]), TRAIT_DIM))
        vectors = vectors[parents[rank]] + RANK_NOISE[rank] * noise
    return vectors


def _choose_unseen(genus_of: list[int], fraction: float, rng: np.random.Generator) -> set[int]:
    """Species to hold out: only from genera of ≥2 species, always leaving each genus a seen species."""
    target = round(fraction * len(genus_of))
    sizes = np.bincount(genus_of)
    held = np.zeros_like(sizes)
    unseen: set[int] = set()
    for index in rng.permutation(len(genus_of)).tolist():
        if len(unseen) == target:
            break
        genus = genus_of[index]
        if held[genus] < sizes[genus] - 1:
            held[genus] += 1
            unseen.add(index)
    if len(unseen) < target:
        log.warning("only %d of %d requested unseen species fit (each genus keeps a seen species)",
                    len(unseen), target)
    return unseen


def _lineages(parents: list[list[int]]) -> np.ndarray:
    """[n_species, 7] node index of every species at each rank."""
    paths = np.zeros((len(parents[-1]), N_RANKS), dtype=np.int64)
    paths[:, -1] = np.arange(len(parents[-1]))
    for rank in range(N_RANKS - 1, 0, -1):
        paths[:, rank - 1] = np.asarray(parents[rank])[paths[:, rank]]
    return paths


def build_world(*, species: int | None = None, branching: Sequence[int] | None = None, seed: int = 0,
                holdout: float = 0.1, homonyms: float = 0.0) -> World:
    """The taxonomy, traits and unseen species for `species` (random shape) or `branching` (regular)."""
    _check_shape(species, branching)
    _require(isinstance(seed, int) and seed >= 0, f"seed must be a non-negative integer, got {seed}")
    _require(0.0 <= holdout < 1.0, f"holdout must be in [0, 1), got {holdout}")
    _require(0.0 <= homonyms <= 1.0, f"homonyms must be in [0, 1], got {homonyms}")
    if branching is not None:
        parents = _shape_from_branching(branching)
    else:
        parents = _shape_from_count(DEFAULT_SPECIES if species is None else species, _rng(seed, _SHAPE))
    names, codes, commons = _names(parents, seed, homonyms)
    paths = _lineages(parents)
    unseen = _choose_unseen(paths[:, Rank.GENUS].tolist(), holdout, _rng(seed, _HOLDOUT))
    members = tuple(
        SynthSpecies(index=i, taxon=Taxon(tuple(names[r][node] for r, node in enumerate(path)), commons[i]),
                     unseen=i in unseen)
        for i, path in enumerate(paths.tolist())
    )
    geo = _rng(seed, _GEO)
    return World(seed=seed, species=members, traits=_traits(parents, seed),
                 taxa_per_rank={name: len(level) for name, level in zip(RANK_NAMES, parents)},
                 codes=dict(zip(names[Rank.KINGDOM], codes)), centres=range_centres(paths, geo),
                 radii=range_radii(len(members), geo))


# ------------------------------------------------------------------------------------------------- writing
def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out` unless `overwrite`; then remove what an earlier run wrote there."""
    _require(not out.exists() or out.is_dir(), f"{out} exists and is not a folder; choose another OUT")
    if out.exists() and any(out.iterdir()):
        _require(overwrite, f"{out} is not empty; pass --overwrite to replace it or choose an empty folder")
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def png_bytes(image: Image.Image) -> bytes:
    """PNG bytes without metadata (no timestamps), so equal pixels give equal files."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def image_splits(n_images: int, *, unseen: bool, val_fraction: float, rng: np.random.Generator) -> list[str]:
    """The split of each image of one species; a seen species keeps at least one training image."""
    if unseen:
        return [UNSEEN] * n_images
    splits = [TRAIN] * n_images
    for index in rng.choice(n_images, size=min(round(val_fraction * n_images), n_images - 1), replace=False):
        splits[index] = VAL
    return splits


def _write_species(out: Path, world: World, member: SynthSpecies, *, images_per_species: int,
                   image_size: int, val_fraction: float) -> Iterator[list[str]]:
    """Render and write one species' images; yield their catalog rows."""
    rng = _rng(world.seed, _IMAGES, member.index)
    splits = image_splits(images_per_species, unseen=member.unseen, val_fraction=val_fraction, rng=rng)
    phenotype = Phenotype.from_traits(world.traits[member.index])
    folder = f"{IMAGE_DIR}/{member.taxon.genus}_{member.taxon.species}"
    places = points_in_range(world.centres[member.index], world.radii[member.index], len(splits),
                             _rng(world.seed, _GEO, member.index))
    for number, (split, place) in enumerate(zip(splits, places, strict=True)):
        path = f"{folder}/{number:06d}{IMAGE_SUFFIX}"
        atomic_write(out / path, png_bytes(render(phenotype, rng, image_size)))
        yield [path, split, *member.taxon.lineage, member.taxon.common, *place]


def occurrence_rows(world: World, per_species: int) -> Iterator[list[object]]:
    """Darwin Core occurrence records: `per_species` points from each species' range (seen and unseen)."""
    for member in world.species:
        points = points_in_range(world.centres[member.index], world.radii[member.index], per_species,
                                 _rng(world.seed, _RECORDS, member.index))
        for number, (lat, lon, date) in enumerate(points):
            yield [f"synth:{member.index}:{number}", *member.taxon.lineage, member.taxon.scientific, lat, lon, date,
                   "HUMAN_OBSERVATION"]


def _write_csv(path: Path, header: Sequence[str], rows: Iterator[Sequence[str]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _world_json(world: World, parameters: dict[str, object], images: dict[str, int]) -> str:
    unseen = world.n_unseen
    document = {
        "generator": "treeclip synth",
        "format": 1,
        "parameters": parameters,
        "image_format": IMAGE_SUFFIX.lstrip("."),
        "counts": {"taxa": world.taxa_per_rank, "species": {SEEN: len(world.species) - unseen, UNSEEN: unseen},
                   "images": images},
        "kingdom_codes": world.codes,
        "trait_model": {"traits": list(TRAITS), "rank_noise": dict(zip(RANK_NAMES, RANK_NOISE))},
        "geography": {"range_km": RANGE_KM, "rank_spread_km": dict(zip(RANK_NAMES, RANK_SPREAD_KM)),
                      "occurrences_per_species": parameters["occurrences_per_species"]},
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_world(out_dir: str | Path, *, species: int | None = None, branching: Sequence[int] | None = None,
                images_per_species: int = 20, image_size: int = 64, seed: int = 0, holdout: float = 0.1,
                val_fraction: float = 0.1, homonyms: float = 0.0, occurrences_per_species: int = 40,
                overwrite: bool = False, progress: Progress | None = None) -> SynthSummary:
    """Generate a world into `out_dir`, streaming images species by species; `progress(done, total)`."""
    _require(isinstance(images_per_species, int) and images_per_species >= 1,
             f"images_per_species must be at least 1, got {images_per_species}")
    _require(isinstance(image_size, int) and 8 <= image_size <= 2048,
             f"image_size must be between 8 and 2048 pixels, got {image_size}")
    _require(0.0 <= val_fraction < 1.0, f"val_fraction must be in [0, 1), got {val_fraction}")
    _require(isinstance(occurrences_per_species, int) and occurrences_per_species >= 0,
             f"occurrences_per_species must be a non-negative integer, got {occurrences_per_species}")
    world = build_world(species=species, branching=branching, seed=seed, holdout=holdout, homonyms=homonyms)
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    images = {TRAIN: 0, VAL: 0, UNSEEN: 0}

    def rows() -> Iterator[list[str]]:
        for member in world.species:
            for row in _write_species(out, world, member, images_per_species=images_per_species,
                                      image_size=image_size, val_fraction=val_fraction):
                images[row[1]] += 1
                yield row
            if progress is not None:
                progress(member.index + 1, len(world.species))

    _write_csv(out / "catalog.csv", CATALOG_COLUMNS, rows())
    _write_csv(out / "taxonomy.csv", TAXONOMY_COLUMNS,
               ([*m.taxon.lineage, m.taxon.common, UNSEEN if m.unseen else SEEN] for m in world.species))
    atomic_write(out / "unseen.txt", "".join(f"{m.taxon.scientific}\n" for m in world.species if m.unseen))
    _write_csv(out / OCCURRENCES, OCCURRENCE_COLUMNS, occurrence_rows(world, occurrences_per_species))
    parameters = {"species": len(world.species), "branching": list(branching) if branching else None,
                  "images_per_species": images_per_species, "image_size": image_size, "seed": seed,
                  "holdout": holdout, "val_fraction": val_fraction, "homonyms": homonyms,
                  "occurrences_per_species": occurrences_per_species}
    atomic_write(out / "world.json", _world_json(world, parameters, images))
    log.info("wrote %d species (%d unseen), %s images to %s", len(world.species), world.n_unseen, images, out)
    return SynthSummary(out_dir=out, species=len(world.species), unseen=world.n_unseen, images=images,
                        taxa_per_rank=world.taxa_per_rank)
