"""The shard folder's formats: tar member names, ``taxon.json``, ``manifest.json`` and ``catalog.parquet``.

- A **member name** ``dir/KEY.ext.txt`` splits into the key ``dir/KEY`` and the suffix ``ext.txt`` at the first
  dot of its basename (webdataset's rule).
- ``KEY.taxon.json`` is ``{"kingdom", ..., "species", "common"}`` (the species epithet); readers also accept
  ``cls`` for class and ``{"lineage": [7 names], "common": ...}``. At most `MAX_TAXON_JSON` bytes are read.
- ``manifest.json`` holds ``"shards": [{"name": "train/shard-000000.tar", "split": "train", "samples": N}]``
  (paths relative to the manifest's folder) plus the build's parameters, sources, splits and counts.
- ``catalog.parquet`` has one row per image: `CATALOG_COLUMNS` then `EXTRA_COLUMNS` (licence, owner).
- Shards are POSIX tars (ustar, pax or GNU long names; plain or gzip-compressed). `TarReader` is the one tar
  reader: it streams the members in order (`TarReader.entries`, with each data offset and size) or the samples
  (`TarReader.samples`); `read_member` reads one member again by its offset.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
    path, offset, size = member
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if compressed else open)(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise OSError(f"{path}: member at {offset} is truncated ({len(data)} of {size} bytes)")
    return data


_BLOCK = 512
_REGULAR = frozenset(b"0\x007")  # regular file, old-style regular file, contiguous file (as `tarfile`)
_LONG_NAME, _LONG_LINK, _PAX, _PAX_GLOBAL = ord("L"), ord("K"), ord("x"), ord("g")
_POSIX_MAGIC = b"ustar\x0000"
_UNREAD_COMPRESSIONS = {b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (``__meta__``, ``__x__/...``)


class TarEntry(NamedTuple):
    """One regular member: its name, where its data lies (`read_member`'s offset: in the uncompressed archive)
    and its data (None when the reader was told to pass it over)."""

    name: str
    offset: int
    size: int
    data: bytes | None


@dataclass
class TarSample:
    """A webdataset sample: the run of consecutive members sharing a key (`split_member`), by lower-cased
    suffix; `duplicates` names later members that repeat a suffix (dropped, the first is kept)."""

    key: str
    members: dict[str, TarEntry] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)


class TarReader:
    """Streams the regular members of a tar in archive order with a few slices per 512-byte header instead of
    `tarfile`'s full TarInfo (the training loader's reading: ~0.1 instead of ~0.34 CPU-ms per 12-member
    sample, `benchmarks/loader.py`).

    Reads what `tarfile` reads for regular files: ustar names with their prefix, GNU ``L`` long names, pax
    ``path``/``size`` records (per member and global); gzip-compressed tars are decompressed on the fly.
    Other members (directories, links, devices, sparse files) are skipped and counted in `skipped` by tar
    type. Members that `want` rejects are passed over without being read (seeked past when the stream can
    seek) and yielded with ``None`` as data. A bad header checksum, a damaged gzip stream or a truncated
    archive raises ValueError; `current` then names the member being read (None between members).
    """

    def __init__(self, stream: Any) -> None:
        if not hasattr(stream, "peek"):  # a pipe: buffered here so its first bytes can be looked at
            stream = io.BufferedReader(_RawStream(stream))
        magic = stream.peek(4)[:4]
        for prefix, compression in _UNREAD_COMPRESSIONS.items():
            if magic.startswith(prefix):
                raise ValueError(f"a {compression}-compressed tar (only plain and gzip tars are read; recompress it)")
        gzipped = magic[:2] == b"\x1f\x8b"
        self.stream = gzip.GzipFile(fileobj=stream) if gzipped else stream
        self.skipped: dict[str, int] = {}
        self.current: str | None = None
        self._seekable = not gzipped and getattr(stream, "seekable", lambda: False)()
        self._size = _remaining(stream) if self._seekable else None  # to see a truncation when seeking past it
        self._offset = 0

    def members(self, want: Callable[[str], bool] | None = None) -> Iterator[tuple[str, bytes | None]]:
        """Every regular member's name and data (None where `want` rejects the name)."""
        wanted = None if want is None else (lambda name, _size: want(name))
        for entry in self.entries(wanted):
            yield entry.name, entry.data

    def samples(self, want: Callable[[str, int], bool] | None = None) -> Iterator[TarSample]:
        """The webdataset samples of the archive (`TarSample`), reading the members `want(name, size)` accepts.
        Names without a suffix and webdataset's ``__meta__`` members are skipped (counted in `skipped`). When the
        archive breaks, the sample in progress is still yielded if the member that broke belongs to another
        key (the sample's run had ended), then the ValueError is raised."""
        sample: TarSample | None = None
        try:
            for entry in self.entries(want):
                meta = _META.match(entry.name) is not None
                parts = None if meta else split_member(entry.name)
                if parts is None:
                    reason = "metadata" if meta else "no suffix"
                    self.skipped[reason] = self.skipped.get(reason, 0) + 1
                    continue
                key, suffix = parts[0], parts[1].lower()
                if sample is None or key != sample.key:
                    if sample is not None:
                        yield sample
                    sample = TarSample(key)
                if suffix in sample.members:
                    sample.duplicates.append(entry.name)
                else:
                    sample.members[suffix] = entry
        except ValueError:
            broken = split_member(self.current) if self.current else None
            if sample is not None and broken is not None and broken[0] != sample.key:
                yield sample
            raise
        if sample is not None:
            yield sample

    def entries(self, want: Callable[[str, int], bool] | None = None) -> Iterator[TarEntry]:
        """Every regular member (`TarEntry`), its data read where `want(name, size)` accepts it."""
        defaults: dict[str, str] = {}
        while (header := self._header()) is not None:
            name, size, kind = header
            records, long_name = dict(defaults), None
            while kind in (_LONG_NAME, _LONG_LINK, _PAX, _PAX_GLOBAL):
                data = self._data(size)
                if kind == _LONG_NAME:
                    long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif kind != _LONG_LINK:
                    parsed = _pax_records(data, self._offset)
                    (defaults if kind == _PAX_GLOBAL else records).update(parsed)
                    if kind == _PAX_GLOBAL:
                        records.update(parsed)
                header = self._header()
                if header is None:
                    raise ValueError(f"tar ends after an extended header at byte {self._offset}")
                name, size, kind = header
            name = records.get("path", long_name or name)
            size = int(records.get("size", size))
            self.current, offset = name, self._offset
            if kind not in _REGULAR or name.endswith("/"):
                self._skip(size)
                kind_name = chr(kind) if kind else "0"
                self.skipped[kind_name] = self.skipped.get(kind_name, 0) + 1
            elif want is None or want(name, size):
                yield TarEntry(name, offset, size, self._data(size))
            else:
                self._skip(size)
                yield TarEntry(name, offset, size, None)
            self.current = None

    def _header(self) -> tuple[str, int, int] | None:
        """(name, size, type byte) of the next header; None at the end of the archive."""
        block = self._read(_BLOCK, allow_eof=True)
        if not block or block.count(0) == _BLOCK:
            return None
        stored = block[148:156].split(b"\0", 1)[0].strip()
        if not stored or int(stored, 8) != sum(block) - sum(block[148:156]) + 8 * 32:
            raise ValueError(f"bad tar header checksum at byte {self._offset - _BLOCK}")
        name = block[:100].split(b"\0", 1)[0]
        if block[257:265] == _POSIX_MAGIC and block[345] != 0:
            name = block[345:500].split(b"\0", 1)[0] + b"/" + name
        return name.decode("utf-8", "surrogateescape"), _size(block[124:136]), block[156]

    def _data(self, size: int) -> bytes:
        data = self._read(size)
        self._skip_padding(size)
        return data

    def _skip(self, size: int) -> None:
        padded = size + (-size % _BLOCK)
        if self._seekable:
            self.stream.seek(padded, 1)
            self._offset += padded
            if self._offset > self._size:
                raise ValueError(f"tar is truncated at byte {self._size}")
        else:
            self._read(padded)

    def _skip_padding(self, size: int) -> None:
        if size % _BLOCK:
            self._read(-size % _BLOCK)

    def _read(self, size: int, allow_eof: bool = False) -> bytes:
        try:
            data = self.stream.read(size)
        except (EOFError, zlib.error) as exc:  # gzip's: the compressed stream ends early or is damaged
            raise ValueError(f"damaged gzip stream at byte {self._offset} ({exc})") from None
        if len(data) != size and not (allow_eof and not data):
            raise ValueError(f"tar is truncated at byte {self._offset + len(data)}")
        self._offset += len(data)
        return data


def _remaining(stream: Any) -> int:
    """The bytes from a seekable stream's position to its end."""
    here = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(here)
    return end - here


class _RawStream(io.RawIOBase):
    """Any object with ``read(n)`` as a raw stream, for `io.BufferedReader`."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.source = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _size(field: bytes) -> int:
    """A header's size field: octal text, or base-256 when the first byte has its top bit set (GNU)."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big") + ((field[0] & 0x3F) << 88)
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes, offset: int) -> dict[str, str]:
    """The ``LENGTH key=value\\n`` records of a pax extended header."""
    records, position = {}, 0
    while position < len(data) and data[position] != 0:
        length_text, space, _ = data[position:position + 32].partition(b" ")
        if not space or not length_text.isdigit() or int(length_text) <= len(length_text) + 1:
            raise ValueError(f"bad pax extended header before byte {offset}")
        record = data[position + len(length_text) + 1:position + int(length_text) - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += int(length_text)
    return records


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
