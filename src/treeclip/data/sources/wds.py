"""``wds:GLOB`` — existing WebDataset shards (ours, or the released TreeOfLife-10M ones), to filter, re-split
or re-shard.

GLOB is a shard file, a glob (``shards/train/*.tar``, ``**`` allowed), a webdataset brace range
(``shard-{000000..000165}.tar``) or a folder (every ``.tar``/``.tar.gz``/``.tgz`` below it). Tars are read
by `treeclip.formats.shards.TarReader` (plain or gzip); a sample is the run of consecutive members sharing a
key (the member path up to the first dot of its basename), suffixes lower-cased, as webdataset defines it.

Each sample becomes a Record that points at its image member (first of ``.jpg .jpeg .png .webp``) by tar path,
offset and size, with the sha256 taken while streaming: image bytes are never kept (the shard writer reads
the member again). Members over `MAX_IMAGE_BYTES` (images) or `MAX_TEXT_BYTES` (everything else) are skipped
unread, with a Problem, so a huge member cannot exhaust memory. The sample's
the taxon recovered from, in order: ``taxon.json`` (an object with the rank names as keys, ``class`` or
``cls``, plus ``common``/``common_name``, or ``{"lineage": [...7...], "common": ...}``); the tagged caption
``taxonTag.txt`` (unambiguous even when ranks are missing); ``taxonomic_name.txt``;
``scientific_name.txt``. The common name comes from ``taxon.json`` or ``common_name.txt``.
``source_id`` is the key, ``origin`` is ``shard:key``, ``split_hint`` the shard's folder name when it is
a split name (``SHARDS/train/shard-000000.tar`` → ``train``).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from braceexpand import braceexpand

from treeclip.data.images import sha256_bytes
from treeclip.errors import UsageError
from treeclip.formats.shards import TAXON_JSON, TarReader, TarSample, read_taxon_json, split_member
from treeclip.taxonomy import Taxon, clean_common, parse_label

from ..records import Problem, Record
from .base import Source, checked_taxon, one_line

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_TEXT_BYTES = 1024 * 1024
NAME_KEYS = ("taxonTag.txt", "taxonomic_name.txt", "scientific_name.txt")
SPLIT_NAMES = frozenset({"train", "train_small", "train_mini", "val", "validation", "test"})
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
log = logging.getLogger(__name__)


class WdsSource(Source):
    """Samples of WebDataset tar shards, with their image bytes."""

    kind = "wds"
    usage = "wds:GLOB (a .tar file, a glob, a {000000..000009} range or a folder of shards)"

    def locate(self, path: str) -> Path:
        self.shards = expand_shards(path)
        if not self.shards:
            raise UsageError(f"source {self.spec!r}: no shard files match {path} (syntax: {self.usage})")
        return Path(path)

    def records(self, part: tuple[int, int] | None = None) -> Iterator[Record | Problem]:
        for shard in self.shards if part is None else self.shards[part[0]:part[1]]:
            split = shard.parent.name if shard.parent.name in SPLIT_NAMES else ""
            for sample in read_samples(shard):
                if isinstance(sample, Problem):
                    yield sample
                else:
                    yield self._record(shard, split, *sample)

    def parts(self, *, rows: int, prefix: str) -> list[tuple[int, int] | None]:
        """One part per shard, as [start, stop) into `shards` (a shard's sample count is unknown until it is
        read, and the split job reads none; a shard is what a job reads in one stream)."""
        return [(index, index + 1) for index in range(len(self.shards))] if len(self.shards) > 1 else [None]

    def _record(self, shard: Path, split: str, key: str, files: dict[str, Any]) -> Record | Problem:
        where = f"{shard}:{key}"
        image = next((files[ext] for ext in IMAGE_KEYS if ext in files), None)
        if image is None:
            return Problem(where, f"sample has no image ({', '.join(IMAGE_KEYS)})")
        taxon = sample_taxon(where, {name: data for name, data in files.items() if isinstance(data, bytes)})
        if isinstance(taxon, Problem):
            return taxon
        offset, size, digest = image
        return Record(self.kind, key, "", taxon, split_hint=split, origin=where, member=(str(shard), offset, size),
                      sha256=digest)


def expand_shards(pattern: str) -> list[Path]:
    """Shard files named by a folder, a glob or a brace range, sorted and de-duplicated."""
    root = Path(pattern).expanduser()
    if root.is_dir():
        found = [path for path in root.rglob("*") if path.is_file() and path.name.endswith(SHARD_SUFFIXES)]
    else:
        found = [Path(name) for each in braceexpand(str(root)) for name in glob.glob(each, recursive=True)]
    return sorted({path.resolve() for path in found if path.is_file()})


def read_samples(shard: Path) -> Iterator[tuple[str, dict[str, Any]] | Problem]:
    """(key, {suffix: bytes, or (offset, size, sha256) for images}) per sample of a tar, streaming; a Problem
    for a member over the size limits (skipped unread), for a repeated suffix (the first is kept) and when the
    tar breaks (a sample whose members were not all read is then dropped)."""
    try:
        with open(shard, "rb") as stream:
            reader = TarReader(stream)
            for sample in reader.samples(_within_limits):
                yield from _sample_files(shard, sample)
        if reader.skipped:
            log.info("%s: skipped %d members that are not samples' files (%s)", shard, sum(reader.skipped.values()),
                     reader.skipped)
    except (ValueError, OSError) as exc:
        yield Problem(str(shard), f"unreadable shard: {one_line(exc)}")


def _limit(name: str) -> int:
    parts = split_member(name)
    return MAX_IMAGE_BYTES if parts is not None and parts[1].lower() in IMAGE_KEYS else MAX_TEXT_BYTES


def _within_limits(name: str, size: int) -> bool:
    return size <= _limit(name)


def _sample_files(shard: Path, sample: TarSample) -> Iterator[tuple[str, dict[str, Any]] | Problem]:
    where, files = f"{shard}:{sample.key}", {}
    for suffix, (name, offset, size, data) in sample.members.items():
        if data is None:
            yield Problem(where, f"member {name} is {size} bytes; skipped (limit {_limit(name)})")
        else:
            files[suffix] = (offset, size, sha256_bytes(data)) if suffix in IMAGE_KEYS else data
    yield from (Problem(where, f"member {name} repeats a suffix of its sample; the first kept")
                for name in sample.duplicates)
    if files:
        yield sample.key, files


def sample_taxon(where: str, files: dict[str, bytes]) -> Taxon | Problem:
    """The taxon of a sample from taxon.json, else from its name texts (see the module docstring).

    Member names are matched case-insensitively (webdataset lower-cases them: ``taxontag.txt``).
    """
    files = {name.lower(): data for name, data in files.items()}
    if TAXON_JSON in files:
        try:
            taxon = read_taxon_json(files[TAXON_JSON])
        except ValueError as exc:
            return Problem(where, f"unreadable taxon.json: {one_line(exc)}")
        return checked_taxon(where, lambda: taxon)
    common = files.get("common_name.txt", b"").decode("utf-8", "replace").strip()
    for name in NAME_KEYS:
        if name.lower() in files:
            text = files[name.lower()].decode("utf-8", "replace").strip()
            return checked_taxon(where, _taxon_from_text, text, common)
    return Problem(where, f"no taxon.json nor any of {', '.join(NAME_KEYS)}")


def _taxon_from_text(text: str, common: str) -> Taxon | None:
    taxon = parse_label(text)
    return None if taxon is None else Taxon(taxon.lineage, clean_common(common) or taxon.common)

