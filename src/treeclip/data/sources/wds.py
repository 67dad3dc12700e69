"""``wds:GLOB`` — existing WebDataset shards (ours, or the released TreeOfLife-10M ones), to filter, re-split
or re-shard.

GLOB is a shard file, a glob (``shards/train/*.tar``, ``**`` allowed), a webdataset brace range
(``shard-{000000..000165}.tar``) or a folder (every ``.tar``/``.tar.gz``/``.tgz`` below it). Tars are read
with the standard `tarfile` module in streaming mode; a sample is the run of consecutive members sharing a
key (the member path up to the first dot of its basename), as webdataset defines it.

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
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from braceexpand import braceexpand

from treeclip.data.images import sha256_bytes
from treeclip.errors import UsageError
from treeclip.formats.shards import TAXON_JSON, read_taxon_json, split_member
from treeclip.taxonomy import Taxon, clean_common, parse_label

from ..records import Problem, Record
from .base import Source, checked_taxon, one_line

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_TEXT_BYTES = 1024 * 1024
NAME_KEYS = ("taxonTag.txt", "taxonomic_name.txt", "scientific_name.txt")
SPLIT_NAMES = frozenset({"train", "train_small", "train_mini", "val", "validation", "test"})
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class WdsSource(Source):
    """Samples of WebDataset tar shards, with their image bytes."""

    kind = "wds"
    usage = "wds:GLOB (a .tar file, a glob, a {000000..000009} range or a folder of shards)"

    def locate(self, path: str) -> Path:
        self.shards = expand_shards(path)
        if not self.shards:
            raise UsageError(f"source {self.spec!r}: no shard files match {path} (syntax: {self.usage})")
        return Path(path)

    def records(self) -> Iterator[Record | Problem]:
        for shard in self.shards:
            split = shard.parent.name if shard.parent.name in SPLIT_NAMES else ""
            for sample in read_samples(shard):
                if isinstance(sample, Problem):
                    yield sample
                else:
                    yield self._record(shard, split, *sample)

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
    for a member over the size limits (skipped unread) or when the tar breaks (the sample being read then
    is dropped)."""
    key, files = "", {}
    try:
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                split = split_member(member.name) if member.isfile() else None
                if split is None:
                    continue
                if split[0] != key and files:
                    yield key, files
                    files = {}
                key = split[0]
                image = split[1].lower() in IMAGE_KEYS
                if member.size > (MAX_IMAGE_BYTES if image else MAX_TEXT_BYTES):
                    yield Problem(f"{shard}:{key}", f"member {member.name} is {member.size} bytes; skipped "
                                  f"(limit {MAX_IMAGE_BYTES if image else MAX_TEXT_BYTES})")
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle else b""
                files[split[1]] = (member.offset_data, member.size, sha256_bytes(data)) if image else data
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Problem(str(shard), f"unreadable shard: {one_line(exc)}")
        return
    if files:
        yield key, files


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

