"""Disk-backed partitions for the build plan's group-by stages (`treeclip.data.plan`).

A stage job writes its output rows as one Arrow IPC file, grouped by the partition each row goes to, each
partition in record batches of its own, with the partitions' first batch indexes in the file's schema
metadata (`write_partitioned`); the next stage's job for partition p reads only partition p's record
batches of every such file (`read_partition`), so it holds its partition and nothing else of the files. Tables sorted by
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
_BATCHES = b"treeclip.partition_batches"  # schema metadata: each partition's first batch index (JSON)


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
    """Write `table` to `path` grouped by `partition` (row order kept within a partition), each partition
    in record batches of at most `_CHUNK_ROWS` rows of its own; return each partition's row count."""
    counts = np.bincount(partition, minlength=partitions)
    first_batch = np.concatenate([[0], np.cumsum(-(-counts // _CHUNK_ROWS))]).tolist()
    table = table.take(pa.array(np.argsort(partition, kind="stable"))).combine_chunks()
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), _BATCHES: json.dumps(first_batch)})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        row = 0
        for count in counts.tolist():
            for start in range(row, row + count, _CHUNK_ROWS):
                writer.write_batch(table.slice(start, min(_CHUNK_ROWS, row + count - start)).to_batches()[0])
            row += count
    return counts


def read_partition(paths: Sequence[str | Path], partition: int, schema: pa.Schema) -> pa.Table:
    """Partition `partition` of each `write_partitioned` file, concatenated in the order of `paths`: only
    its record batches are read."""
    batches = []
    for path in paths:
        with pa.OSFile(str(path)) as source:
            reader = pa.ipc.open_file(source)
            first_batch = json.loads(reader.schema.metadata[_BATCHES])
            batches += [reader.get_batch(i) for i in range(first_batch[partition], first_batch[partition + 1])]
    return pa.Table.from_batches(batches).replace_schema_metadata(None) if batches else schema.empty_table()


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
