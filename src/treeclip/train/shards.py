"""Finding the shards of a ``treeclip build`` folder, their sample counts, and the training lineages."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from treeclip.data.loader import IMAGE_KEYS, num_samples, sample_lineage
from treeclip.data.sources.wds import sample_taxon
from treeclip.errors import UsageError
from treeclip.formats import open_table
from treeclip.formats.shards import CATALOG, TarReader, TarSample, split_member
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
    """Samples with an image, as the loader reads them (no member data is read)."""
    return sum(1 for sample in _tar_samples(path, lambda name, size: False)
               if any(suffix in sample.members for suffix in IMAGE_KEYS))


def _is_text(name: str, _size: int) -> bool:
    parts = split_member(name)
    return parts is not None and parts[1].lower().endswith(_TEXT_SUFFIXES)


def _tar_samples(path: str | Path, want: Callable[[str, int], bool]) -> Iterator[TarSample]:
    """The samples of one shard; UsageError naming it when it cannot be read to the end."""
    try:
        with open(path, "rb") as stream:
            yield from TarReader(stream).samples(want)
    except (OSError, ValueError) as error:
        raise UsageError(f"--data: cannot read shard {path} ({error}); rebuild it with treeclip build") from None


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
    """The text and JSON members of each sample that has some (``{"__key__": key, "taxon.json": b"...", ...}``);
    images are passed over unread."""
    for shard in shards:
        for sample in _tar_samples(shard, _is_text):
            texts = {suffix: entry.data for suffix, entry in sample.members.items() if entry.data is not None}
            if texts:
                yield {"__key__": sample.key, **texts}
