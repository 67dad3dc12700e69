"""What a source reader yields: a `Record` per image, or a `Problem` per bad row or file."""

from __future__ import annotations

from dataclasses import dataclass

from treeclip.formats.problems import Problem
from treeclip.taxonomy import Taxon


@dataclass(slots=True)
class Record:
    """One image from one source, before alignment."""

    source: str  # source kind: inat21, bioscan, eol, tol10m, csv, folder, wds, download
    source_id: str  # stable within the source (relative path, content id, key)
    path: str  # absolute local image path ("" when the image lives inside a shard)
    taxon: Taxon  # cleaned, possibly partial lineage + common name
    split_hint: str = ""  # the source's own split, if any
    license: str = ""
    owner: str = ""
    origin: str = ""  # "file:line" for error messages
    member: tuple[str, int, int] | None = None  # (tar, offset, size) of an image inside a shard (wds)
    sha256: str = ""  # the image bytes' sha256 when the source already read them (wds)
    gap: str = ""  # given ranks emptied to mend a gap in the row's lineage (`treeclip.formats.lineage_gap`)

__all__ = ["Problem", "Record"]
