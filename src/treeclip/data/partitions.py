"""Disk-backed partitions for the build plan's group-by stages (`treeclip.data.plan`).

A stage job writes its output rows as one Arrow IPC file, grouped by the partition each row goes to, with
the partitions' row offsets in the file's schema metadata (`write_partitioned`); the next stage's job for
partition p reads partition p of every such file (`read_partition`, memory-mapped). Tables sorted by
(stage, position) are merged in that order by `merged_rows`, one record batch per file at a time. So the
process that plans holds a folder name and counts, never rows or per-file offsets, whatever the number of
images; a job holds one partition.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

_CHUNK_ROWS = 4096  # rows per record batch written
_MERGE_ROWS = 256  # rows per record batch of a file `merged_rows` reads: what it holds per file
_ROWS_AT_ONCE = 64  # rows per file turned into Python values at once by `merged_rows`
_ENDS = b"treeclip.partition_ends"  # schema metadata: the end row of each partition, as JSON


def write_ipc(table: pa.Table, path: str | Path, *, chunk_rows: int = _CHUNK_ROWS) -> None:
    """Write `table` to an Arrow IPC file in record batches of `chunk_rows` rows."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=chunk_rows)


def write_sorted(table: pa.Table, path: str | Path) -> None:
    """Write a table sorted by `merged_rows`'s key, in the small batches `merged_rows` reads."""
    write_ipc(table, path, chunk_rows=_MERGE_ROWS)


def read_ipc(path: str | Path) -> pa.Table:
    """A whole Arrow IPC file, memory-mapped."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def write_partitioned(table: pa.Table, partition: np.ndarray, partitions: int, path: str | Path) -> np.ndarray:
    """Write `table` to `path` grouped by `partition` (row order kept within a partition); return the row
    count of each of the `partitions` partitions."""
    counts = np.bincount(partition, minlength=partitions)
    ends = json.dumps(np.cumsum(counts).tolist()).encode()
    table = table.take(pa.array(np.argsort(partition, kind="stable")))
    write_ipc(table.replace_schema_metadata({**(table.schema.metadata or {}), _ENDS: ends}), path)
    return counts


def read_partition(paths: Sequence[str | Path], partition: int, schema: pa.Schema) -> pa.Table:
    """Partition `partition` of each `write_partitioned` file, concatenated in the order of `paths`."""
    tables = []
    for path in paths:
        table = read_ipc(path)
        ends = [0, *json.loads(table.schema.metadata[_ENDS])]
        if ends[partition + 1] > ends[partition]:
            tables.append(table.slice(ends[partition], ends[partition + 1] - ends[partition]))
    return pa.concat_tables(tables).replace_schema_metadata(None) if tables else schema.empty_table()


def _file_rows(path: str | Path, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows of an IPC file, one record batch read at a time (the file is open only while one is read,
    so any number of files can be merged; no pages stay mapped)."""
    index, batches = 0, 1
    while index < batches:
        with pa.OSFile(str(path)) as source:
            reader = pa.ipc.open_file(source)
            batches = reader.num_record_batches
            batch = reader.get_batch(index).select(list(columns)) if index < batches else None
        index += 1
        for start in range(0, batch.num_rows if batch is not None else 0, _ROWS_AT_ONCE):
            yield from batch.slice(start, _ROWS_AT_ONCE).to_pylist()


def merged_rows(paths: Sequence[str | Path], columns: Sequence[str],
                key: Sequence[str] = ("stage", "position")) -> Iterator[dict[str, Any]]:
    """The rows of IPC files each sorted by `key` (`write_sorted`), merged in `key` order (ties: the earlier
    file first); per file, one small record batch is held at a time."""
    wanted = list(dict.fromkeys([*key, *columns]))
    return heapq.merge(*(_file_rows(path, wanted) for path in paths), key=lambda row: tuple(row[k] for k in key))
