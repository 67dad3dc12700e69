"""The build's tables: ``catalog.parquet`` (one row per image in the shards, in shard order: the train shards,
then the val shards, each shard's samples in tar order) and ``dropped.csv``."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from treeclip.atomic import atomic_path
from treeclip.formats.shards import CATALOG, CATALOG_COLUMNS, EXTRA_COLUMNS, MANIFEST, catalog_schema

DROPPED = "dropped.csv"
DROPPED_COLUMNS: tuple[str, ...] = ("id", "source", "source_id", "path", "origin", "reason", "kept_id")
__all__ = ["CATALOG", "CATALOG_COLUMNS", "DROPPED", "DROPPED_COLUMNS", "EXTRA_COLUMNS", "MANIFEST", "write_catalog",
           "write_dropped"]


def write_catalog(parts: Iterable[Sequence[Mapping[str, Any]]], path: str | Path, *,
                  row_group_rows: int = 65_536) -> int:
    """Write the catalog atomically from its parts (one shard's rows each, in shard order), streaming: at
    most `row_group_rows` rows are held at once, as Arrow columns. Returns the row count."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    schema = catalog_schema()
    total, pending, held = 0, [], 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for rows in parts:
            if rows:
                pending.append(pa.Table.from_pylist([{name: row.get(name, "") for name in schema.names}
                                                     for row in rows], schema=schema))
                held += len(rows)
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
