"""The build's tables: ``catalog.parquet`` (one row per image in the shards) and ``dropped.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from treeclip.atomic import atomic_path, atomic_write
from treeclip.formats.shards import CATALOG, CATALOG_COLUMNS, EXTRA_COLUMNS, MANIFEST, catalog_schema

DROPPED = "dropped.csv"
DROPPED_COLUMNS: tuple[str, ...] = ("id", "source", "source_id", "path", "origin", "reason", "kept_id")
__all__ = ["CATALOG", "CATALOG_COLUMNS", "DROPPED", "DROPPED_COLUMNS", "EXTRA_COLUMNS", "MANIFEST", "write_catalog",
           "write_dropped"]


def write_catalog(rows: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write the rows (sorted by split then id) to a Parquet file atomically; returns the row count."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    schema = catalog_schema()
    ordered = sorted(rows, key=lambda row: (row["split"], row["id"]))
    table = pa.Table.from_pylist([{name: row.get(name, "") for name in schema.names} for row in ordered],
                                 schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


def write_dropped(rows: Iterable[Mapping[str, str]], path: str | Path) -> None:
    """Write every record left out of the shards, with the reason (and the kept copy for duplicates)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DROPPED_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: row.get(name, "") for name in DROPPED_COLUMNS})
    atomic_write(path, buffer.getvalue())
