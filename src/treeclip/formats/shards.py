"""The shard folder's formats: tar member names, ``taxon.json``, ``manifest.json`` and ``catalog.parquet``.

- A **member name** ``dir/KEY.ext.txt`` splits into the key ``dir/KEY`` and the suffix ``ext.txt`` at the first
  dot of its basename (webdataset's rule).
- ``KEY.taxon.json`` is ``{"kingdom", ..., "species", "common"}`` (the species epithet); readers also accept
  ``cls`` for class and ``{"lineage": [7 names], "common": ...}``. At most `MAX_TAXON_JSON` bytes are read.
- ``manifest.json`` holds ``"shards": [{"name": "train/shard-000000.tar", "split": "train", "samples": N}]``
  (paths relative to the manifest's folder) plus the build's parameters, sources, splits and counts.
- ``catalog.parquet`` has one row per image: `CATALOG_COLUMNS` then `EXTRA_COLUMNS` (licence, owner).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from treeclip.taxonomy import RANK_NAMES, Taxon, taxon_from_fields

MANIFEST = "manifest.json"
CATALOG = "catalog.parquet"
TAXON_JSON = "taxon.json"
MANIFEST_FORMAT = "treeclip-shards/1"
MAX_TAXON_JSON = 64 * 1024
CATALOG_COLUMNS: tuple[str, ...] = (
    "id", "split", "source", "source_id", "path", *RANK_NAMES, "common", "width", "height", "sha256",
)
EXTRA_COLUMNS: tuple[str, ...] = ("license", "owner")
_INT_COLUMNS = frozenset({"width", "height"})
_FIELDS = ("kingdom", "phylum", "cls", "order", "family", "genus", "species")


def shard_name(split: str, index: int) -> str:
    """The shard path relative to the output root, e.g. ``train/shard-000003.tar``."""
    return f"{split}/shard-{index:06d}.tar"


def split_member(name: str) -> tuple[str, str] | None:
    """('dir/key', 'ext.txt') for 'dir/key.ext.txt'; None for names without a suffix."""
    folder, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{folder}/{stem}" if folder else stem), suffix


def read_member(member: tuple[str, int, int]) -> bytes:
    """The bytes of a tar member located by (tar path, data offset, size) — `tarfile.TarInfo.offset_data` of a
    plain or gzip-compressed tar — without reading the rest of the archive."""
    import gzip  # noqa: PLC0415

    path, offset, size = member
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if compressed else open)(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise OSError(f"{path}: member at {offset} is truncated ({len(data)} of {size} bytes)")
    return data


def taxon_json(taxon: Taxon) -> str:
    """The ``taxon.json`` member: the seven ranks and the common name."""
    return json.dumps({**taxon.ranks(), "common": taxon.common}, ensure_ascii=False)


def read_taxon_json(data: bytes) -> Taxon:
    """The Taxon of a ``taxon.json`` member (cleaned); ValueError for anything unusable (too big, too deeply
    nested, not an object, names that are not names)."""
    if len(data) > MAX_TAXON_JSON:
        raise ValueError(f"taxon.json is {len(data)} bytes (at most {MAX_TAXON_JSON})")
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("taxon.json is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"taxon.json is not UTF-8 ({exc.reason})") from None
    if not isinstance(value, dict):
        raise ValueError(f"taxon.json holds {type(value).__name__}, not an object")
    if "lineage" in value:
        lineage = value["lineage"]
        if not isinstance(lineage, list) or len(lineage) > len(_FIELDS):
            raise ValueError("taxon.json 'lineage' is not a list of at most 7 names")
        fields = dict(zip(_FIELDS, (_text(name) for name in lineage)))
    else:
        lowered = {str(key).strip().lower(): item for key, item in value.items()}
        fields = {field: _text(lowered.get(field, lowered.get("class" if field == "cls" else field)))
                  for field in _FIELDS}
    common = _text(value.get("common", value.get("common_name")))
    return taxon_from_fields(**fields, common=common)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"taxon.json value {str(value)[:40]!r} is not a name")
    return str(value)


def shard_entry(name: str, split: str, samples: int) -> dict[str, Any]:
    """One ``manifest.json`` shard entry."""
    return {"name": name, "split": split, "samples": samples}


def manifest(shards: Iterable[Mapping[str, Any]], **fields: Any) -> dict[str, Any]:
    """A ``manifest.json`` document: the format tag, `fields` (parameters, sources, splits, counts ...) and
    the shard entries (`shard_entry`)."""
    return {"format": MANIFEST_FORMAT, **fields, "shards": [dict(entry) for entry in shards]}


def manifest_text(document: Mapping[str, Any]) -> str:
    """The file text of a manifest document."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a shard folder; OSError when missing, ValueError when it is not a manifest."""
    document = json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("shards"), list):
        raise ValueError(f"{Path(root) / MANIFEST} has no 'shards' list")
    for entry in document["shards"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or \
                not isinstance(entry.get("samples"), int):
            raise ValueError(f"{Path(root) / MANIFEST}: a shard entry lacks 'name' or 'samples': {entry!r}")
    return document


def shard_counts(document: Mapping[str, Any]) -> dict[str, int]:
    """{shard path relative to the manifest's folder: samples}."""
    return {entry["name"]: entry["samples"] for entry in document["shards"]}


def catalog_schema() -> Any:
    """The Arrow schema of ``catalog.parquet``: strings everywhere except int32 width/height."""
    import pyarrow as pa  # noqa: PLC0415 - heavy; only the writer needs it

    columns = CATALOG_COLUMNS + EXTRA_COLUMNS
    return pa.schema([(name, pa.int32() if name in _INT_COLUMNS else pa.string()) for name in columns])
