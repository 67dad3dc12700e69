"""The build's tables: ``catalog.parquet`` (one row per image in the shards, in shard order: the train shards,
then the val shards, each shard's samples in tar order) and ``dropped.csv``.

Each shard job turns its catalog rows into an Arrow table (`catalog_table`) and writes it as a catalog part
(`write_catalog_part`: one Arrow IPC file, one record batch); the build concatenates the parts in shard order
into ``catalog.parquet`` (`write_catalog`), so the process that writes the catalog never turns rows into
Python values."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treeclip.atomic import atomic_path
from treeclip.formats.shards import CATALOG, CATALOG_COLUMNS, EXTRA_COLUMNS, MANIFEST, catalog_schema

DROPPED = "dropped.csv"
DROPPED_COLUMNS: tuple[str, ...] = ("id", "source", "source_id", "path", "origin", "reason", "kept_id")
__all__ = ["CATALOG", "CATALOG_COLUMNS", "DROPPED", "DROPPED_COLUMNS", "EXTRA_COLUMNS", "MANIFEST", "catalog_table",
           "read_catalog_part", "write_catalog", "write_catalog_part", "write_dropped"]

if TYPE_CHECKING:
    import pyarrow as pa


def catalog_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """One shard's catalog rows as an Arrow table of the catalog schema (a column a row lacks is "")."""
    import pyarrow as pa  # noqa: PLC0415 - heavy; only the build needs it

    schema = catalog_schema()
    return pa.Table.from_pylist([{name: row.get(name, "") for name in schema.names} for row in rows], schema=schema)


def write_catalog_part(table: pa.Table, path: str | Path) -> str:
    """Write one shard's catalog table atomically as an Arrow IPC file of one record batch (the chunk
    `write_catalog` then writes, so the Parquet bytes do not depend on how rows were batched); returns the
    file's sha256, which the shard's journal entry records."""
    from treeclip.data.images import sha256_file  # noqa: PLC0415
    from treeclip.data.partitions import write_ipc  # noqa: PLC0415

    with atomic_path(path) as tmp:
        write_ipc(table, tmp, chunk_rows=max(1, table.num_rows))
    return sha256_file(path)


def read_catalog_part(path: str | Path) -> pa.Table:
    """A catalog part written by `write_catalog_part`."""
    from treeclip.data.partitions import read_ipc  # noqa: PLC0415

    return read_ipc(path)


def write_catalog(parts: Iterable[pa.Table], path: str | Path, *, row_group_rows: int = 65_536) -> int:
    """Write the catalog atomically from its parts (one shard's table each, in shard order), streaming: at
    most `row_group_rows` rows (plus one part) are held at once. Returns the row count."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    schema = catalog_schema()
    total, pending, held = 0, [], 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for table in parts:
            if table.num_rows:
                pending.append(table)
                held += table.num_rows
            if held >= row_group_rows:
                writer.write_table(pa.concat_tables(pending), row_group_size=row_group_rows)
                total, pending, held = total + held, [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=row_group_rows)
            total += held
    return total


def write_dropped(rows: Iterable[Mapping[str, str]], path: str | Path) -> None:
    """Write every record left out of the shards, with the reason (and the kept copy for duplicates),
    atomically, streaming the rows."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=DROPPED_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({name: row.get(name, "") for name in DROPPED_COLUMNS})
