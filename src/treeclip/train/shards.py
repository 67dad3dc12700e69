"""Finding the shards of a ``treeclip build`` folder, their sample counts, and the training lineages."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from treeclip.data.loader import IMAGE_KEYS, num_samples, sample_lineage
from treeclip.data.sources.wds import sample_taxon
from treeclip.errors import UsageError
from treeclip.formats import open_table
from treeclip.formats.shards import CATALOG
from treeclip.taxonomy import RANK_NAMES, Taxon

_TEXT_SUFFIXES = (".txt", ".json")


def find_shards(data_dir: Path, split: str, *, required: bool = True) -> list[str]:
    """The sorted ``DATA/split/*.tar`` paths; UsageError naming the folder when required and absent."""
    folder = Path(data_dir) / split
    shards = sorted(str(p) for p in folder.glob("*.tar")) if folder.is_dir() else []
    if required and not shards:
        raise UsageError(f"--data {data_dir}: no shards in {folder} (expected {split}/*.tar from treeclip build)")
    return shards


def count_samples(shards: Sequence[str]) -> int:
    """Samples in `shards`: from ``manifest.json`` when it lists them all, else counted in the tars."""
    known = num_samples(list(shards))
    return known if known is not None else sum(_count_tar(Path(shard)) for shard in shards)


def _count_tar(path: Path) -> int:
    try:
        with tarfile.open(path, "r") as tar:
            return len({_split(m.name)[0] for m in tar if _split(m.name)[1] in IMAGE_KEYS})
    except (OSError, tarfile.TarError) as error:
        raise UsageError(f"--data: cannot read shard {path} ({error}); rebuild it with treeclip build") from None


def _split(name: str) -> tuple[str, str]:
    """(key, suffix) of a WebDataset member name: the key ends at the first dot of the file name."""
    stem, _, suffix = Path(name).name.partition(".")
    return str(Path(name).parent / stem), suffix.lower()


def train_lineages(data_dir: Path, shards: Sequence[str]) -> list[tuple[str, ...]]:
    """The lineage of every training image: from ``catalog.parquet`` when present, else the shards."""
    catalog = Path(data_dir) / CATALOG
    return list(_catalog_lineages(catalog) if catalog.is_file() else _shard_lineages(shards))


def _catalog_lineages(path: Path) -> Iterator[tuple[str, ...]]:
    for _, data in open_table(path, what="catalog").columns(["split", *RANK_NAMES]):
        for split, *lineage in zip(data["split"], *(data[name] for name in RANK_NAMES), strict=True):
            if split == "train":
                yield tuple(value or "" for value in lineage)


def _shard_lineages(shards: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Lineages read like the loader reads them (``taxon.json``, else the name texts)."""
    for sample in _text_members(shards):
        yield sample_lineage(sample)


def shard_taxa(shards: Sequence[str]) -> dict[tuple[str, ...], Taxon]:
    """Every species-level taxon of `shards` with its common name, by lineage: the class texts of zero-shot
    validation are rendered from these exactly as evaluation renders its classes."""
    taxa: dict[tuple[str, ...], Taxon] = {}
    for sample in _text_members(shards):
        taxon = sample_taxon(str(sample["__key__"]), sample)
        if isinstance(taxon, Taxon) and taxon.lineage[-1]:
            taxa.setdefault(taxon.lineage, taxon)
    return taxa


def _text_members(shards: Sequence[str]) -> Iterator[dict[str, bytes | str]]:
    """The text and JSON members of each sample (``{"__key__": key, "taxon.json": b"...", ...}``)."""
    for shard in shards:
        samples: dict[str, dict[str, bytes | str]] = {}
        with tarfile.open(shard, "r") as tar:
            for member in tar:
                key, suffix = _split(member.name)
                if member.isfile() and suffix.endswith(_TEXT_SUFFIXES):
                    samples.setdefault(key, {"__key__": key})[suffix] = tar.extractfile(member).read()
        yield from samples.values()
