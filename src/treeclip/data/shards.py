"""Writing and verifying WebDataset shards: one work item per image, one job per shard.

A shard job is written by one (spawn-safe, top-level) function: every image is read, checked against the
sha256 taken when the build was planned, decoded, resized and JPEG-encoded; the samples go to
``{split}/shard-NNNNNN.tar`` through a temporary name and `os.replace`, so a shard exists only when
complete. Tar members (ustar format) carry fixed metadata (mtime 0, uid/gid 0, mode 0644) and a fixed
order (``KEY.jpg``, the text files of `treeclip.taxonomy.shard_texts` sorted by name, ``KEY.taxon.json``),
so the same inputs give byte-identical shards.

A job names its images by a small Parquet file (``.build/plan/{split}-NNNNNN.parquet``, one row per
`WorkItem`, written by `treeclip.data.plan`), so a job is a few bytes to send to a worker process or a Ray
task, and the `WorkItem`s of one shard exist only while that shard is written or checked.

Each finished shard has, written in this order *before* the tar is moved into place, a catalog part
(``.build/journal/{split}-NNNNNN.arrow``: its catalog rows, `treeclip.data.catalog.write_catalog_part`) and a
journal entry (``.build/journal/{split}-NNNNNN.json``) holding the job's fingerprint, the part's sha256 and
the images it had to skip (bad images: the build reads them back from here, in shard order, for
``problems.csv`` and ``dropped.csv``). A resumed build keeps a shard only when the journal's fingerprint
equals the new plan's (same images, same bytes, same taxa, same parameters), the part's bytes have the
journalled sha256 and the tar lists exactly the part's samples; otherwise the shard is written again.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeclip import __version__
from treeclip.atomic import atomic_path, atomic_write
from treeclip.data.catalog import catalog_table, read_catalog_part, write_catalog_part
from treeclip.data.images import ImageError, decode_image, encode_jpeg, read_header, resize, sha256_bytes, sha256_file
from treeclip.formats.shards import TAXON_JSON, TarReader, read_member, shard_name, taxon_json
from treeclip.taxonomy import RANK_NAMES, Taxon, shard_texts

JOURNAL_DIR = ".build/journal"
PLAN_DIR = ".build/plan"
# the columns of a job's items file: one row per WorkItem (taxon as its seven ranks and common name)
ITEM_COLUMNS = ("key", "source", "source_id", "path", "origin", "license", "owner", "sha256", "member_tar",
                "member_offset", "member_size", *RANK_NAMES, "common")


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One planned image: where its bytes are, its key, its resolved taxon and its source hash."""

    key: str
    source: str
    source_id: str
    path: str
    taxon: Taxon
    sha256: str
    origin: str = ""
    license: str = ""
    owner: str = ""
    member: tuple[str, int, int] | None = None  # an image inside a tar (wds source): read by offset

    def fingerprint_parts(self) -> tuple[str, ...]:
        return (self.key, self.sha256, self.path, *self.taxon.lineage, self.taxon.common, self.license, self.owner)


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its place, the file listing its `count` images, and the image parameters."""

    out: str
    split: str
    index: int
    items_file: str  # Parquet, `ITEM_COLUMNS`, in shard order (see `items_path`)
    count: int
    image_size: int
    resize_mode: str
    quality: int

    @property
    def name(self) -> str:
        """The shard path relative to the output root, e.g. ``train/shard-000003.tar``."""
        return shard_name(self.split, self.index)

    def load_items(self) -> tuple[WorkItem, ...]:
        """The job's work items, read from its items file."""
        return read_items(self.items_file)

    def fingerprint(self, items: tuple[WorkItem, ...] | None = None) -> str:
        """A hash of everything that determines the shard's bytes (`items`: the loaded items, if at hand)."""
        digest = hashlib.sha256(f"{__version__}|{self.image_size}|{self.resize_mode}|{self.quality}".encode())
        for item in self.load_items() if items is None else items:
            digest.update(("\n" + "\t".join(item.fingerprint_parts())).encode("utf-8"))
        return digest.hexdigest()


def items_path(out: str | Path, split: str, index: int) -> Path:
    """Where the plan writes the items file of shard `index` of `split`."""
    return Path(out) / PLAN_DIR / f"{split}-{index:06d}.parquet"


def read_items(path: str | Path) -> tuple[WorkItem, ...]:
    """The `WorkItem`s of an items file (see `ITEM_COLUMNS`), in order."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    columns = pq.read_table(path, columns=list(ITEM_COLUMNS)).to_pydict()
    rows = zip(*(columns[name] for name in ITEM_COLUMNS), strict=True)
    return tuple(_work_item(dict(zip(ITEM_COLUMNS, row, strict=True))) for row in rows)


def _work_item(row: dict[str, Any]) -> WorkItem:
    member = (row["member_tar"], row["member_offset"], row["member_size"]) if row["member_tar"] is not None else None
    taxon = Taxon(tuple(row[rank] for rank in RANK_NAMES), row["common"])
    return WorkItem(key=row["key"], source=row["source"], source_id=row["source_id"], path=row["path"], taxon=taxon,
                    sha256=row["sha256"], origin=row["origin"], license=row["license"], owner=row["owner"],
                    member=member)


@dataclass
class ShardResult:
    """What a written (or verified) shard holds: its sample count (the rows are in its catalog part), and the
    images skipped with their reason (at most one shard's)."""

    split: str
    index: int
    samples: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)  # key, source, source_id, path, origin, reason

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def journal_path(out: str | Path, split: str, index: int) -> Path:
    return Path(out) / JOURNAL_DIR / f"{split}-{index:06d}.json"


def catalog_part_path(out: str | Path, split: str, index: int) -> Path:
    """Where shard `index` of `split` keeps its catalog rows (an Arrow IPC file, beside its journal entry)."""
    return Path(out) / JOURNAL_DIR / f"{split}-{index:06d}.arrow"


def sample_members(key: str, taxon: Taxon, jpeg: bytes) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in their fixed order."""
    members = [(f"{key}.jpg", jpeg)]
    texts = shard_texts(taxon)
    members += [(f"{key}.{name}", texts[name].encode("utf-8")) for name in sorted(texts)]
    members.append((f"{key}.{TAXON_JSON}", taxon_json(taxon).encode("utf-8")))
    return members


class ShardTarWriter:
    """A ustar tar written member by member to one buffered file, with the bytes `tarfile` writes for the
    same members (fixed metadata: mtime 0, uid/gid 0, mode 0644; tested byte for byte), without its
    per-member cost: each header is a constant template with the name, size and checksum filled in, then the
    data and NUL padding to 512 bytes; `close` adds the two NUL end blocks and pads to tarfile's 10240-byte
    record. Member names are at most 100 UTF-8 bytes (sample keys are 24 hex digits)."""

    _MODE_IDS = b"0000644\0" + b"0000000\0" * 2  # mode 0644, uid 0, gid 0
    # mtime 0, checksum placeholder (8 spaces), regular file, no link, ustar magic, no user/group names,
    # no device numbers (empty for regular files, as tarfile writes), no prefix, padding to 512
    _TAIL = (b"00000000000\0" + b" " * 8 + tarfile.REGTYPE + tarfile.NUL * 100 + tarfile.POSIX_MAGIC
             + tarfile.NUL * (64 + 16 + 167))
    _TAIL_SUM = sum(_MODE_IDS) + sum(_TAIL)

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed by close()
        self._written = 0

    def add(self, name: str, data: bytes) -> None:
        """Append one regular-file member."""
        encoded = name.encode("utf-8", "surrogateescape")
        if len(encoded) > 100 or len(data) >= 8**11:
            raise ValueError(f"tar member {name!r}: name over 100 bytes or data of 8 GiB or more")
        size = b"%011o\0" % len(data)
        checksum = sum(encoded) + sum(size) + self._TAIL_SUM
        header = b"".join((encoded, tarfile.NUL * (100 - len(encoded)), self._MODE_IDS, size, self._TAIL[:12],
                           b"%06o\0 " % checksum, self._TAIL[20:]))
        padding = -len(data) % tarfile.BLOCKSIZE
        self._file.write(header)
        self._file.write(data)
        self._file.write(tarfile.NUL * padding)
        self._written += len(header) + len(data) + padding

    def close(self) -> None:
        """End the archive as `tarfile` does and close the file."""
        self._written += 2 * tarfile.BLOCKSIZE
        self._file.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE + -self._written % tarfile.RECORDSIZE))
        self._file.close()

    def __enter__(self) -> ShardTarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()


def _read_source(item: WorkItem) -> bytes:
    try:
        data = read_member(item.member) if item.member else Path(item.path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if sha256_bytes(data) != item.sha256:
        raise ImageError("file changed while the build was running (sha256 differs from the plan)")
    return data


def encode_item(item: WorkItem, *, image_size: int, resize_mode: str, quality: int) -> tuple[bytes, int, int]:
    """(JPEG bytes, source width, source height) of one image; `ImageError` when unusable."""
    data = _read_source(item)
    image = decode_image(data, draft_size=image_size)
    width, height = read_header(data).size  # full resolution as displayed; the decoder may have used a draft
    return encode_jpeg(resize(image, image_size, resize_mode), quality=quality), width, height


def catalog_row(item: WorkItem, split: str, width: int, height: int) -> dict[str, Any]:
    """One catalog row (see `treeclip.data.catalog.CATALOG_COLUMNS`)."""
    ranks = dict(zip(RANK_NAMES, item.taxon.lineage))
    return {
        "id": item.key, "split": split, "source": item.source, "source_id": item.source_id, "path": item.path,
        **ranks, "common": item.taxon.common, "width": width, "height": height, "sha256": item.sha256,
        "license": item.license, "owner": item.owner,
    }


def skipped_entry(item: WorkItem, reason: str) -> dict[str, str]:
    return {"key": item.key, "source": item.source, "source_id": item.source_id, "path": item.path,
            "origin": item.origin or item.path or item.source_id, "reason": reason}


def write_shard(job: ShardJob) -> ShardResult:
    """Write one shard atomically (catalog part, then journal, then the tar); bad images are skipped and
    listed."""
    result = ShardResult(job.split, job.index)
    rows: list[dict[str, Any]] = []
    target = Path(job.out) / job.name
    items = job.load_items()
    with atomic_path(target) as tmp:
        with ShardTarWriter(tmp) as tar:
            for item in items:
                try:
                    jpeg, width, height = encode_item(
                        item, image_size=job.image_size, resize_mode=job.resize_mode, quality=job.quality
                    )
                except ImageError as exc:
                    result.skipped.append(skipped_entry(item, f"bad image {item.path or item.source_id}: {exc}"))
                    continue
                for name, data in sample_members(item.key, item.taxon, jpeg):
                    tar.add(name, data)
                rows.append(catalog_row(item, job.split, width, height))
        result.samples = len(rows)
        part_sha256 = write_catalog_part(catalog_table(rows), catalog_part_path(job.out, job.split, job.index))
        _write_journal(job, result, items, part_sha256)
    return result


def _write_journal(job: ShardJob, result: ShardResult, items: tuple[WorkItem, ...], part_sha256: str) -> None:
    entry = {"shard": job.name, "fingerprint": job.fingerprint(items), "samples": result.samples,
             "catalog_sha256": part_sha256, "skipped": result.skipped}
    atomic_write(journal_path(job.out, job.split, job.index), json.dumps(entry, ensure_ascii=False))


def list_samples(path: str | Path) -> dict[str, list[str]]:
    """{key: [member suffixes in order]} of a tar, its headers read to the end (`TarReader`, no member data);
    ValueError/OSError if bad."""
    samples: dict[str, list[str]] = {}
    with open(path, "rb") as stream:
        for sample in TarReader(stream).samples(lambda name, size: False):
            samples.setdefault(sample.key, []).extend(sample.members)
    return samples


def journal_skipped(out: str | Path, split: str, index: int) -> list[dict[str, str]]:
    """The images a finished shard skipped (its journal entry's list), in tar order."""
    return json.loads(journal_path(out, split, index).read_text(encoding="utf-8"))["skipped"]


def completed_shard(job: ShardJob) -> ShardResult | None:
    """The journalled result of `job` if its shard is complete and matches the plan (journal fingerprint,
    catalog part sha256, tar samples = the part's ids), else None: the shard is then written again."""
    tar_path, journal = Path(job.out) / job.name, journal_path(job.out, job.split, job.index)
    part = catalog_part_path(job.out, job.split, job.index)
    if not (tar_path.is_file() and journal.is_file() and part.is_file()):
        return None
    try:
        entry = json.loads(journal.read_text(encoding="utf-8"))
        if entry.get("fingerprint") != job.fingerprint() or entry.get("catalog_sha256") != sha256_file(part):
            return None
        ids = read_catalog_part(part).column("id").to_pylist()
        samples = list_samples(tar_path)
    except (OSError, ValueError, KeyError):
        return None
    if list(samples) != ids or entry.get("samples") != len(ids):
        return None
    return ShardResult(job.split, job.index, len(ids), entry["skipped"])
