"""Disk-backed partitions for the build plan's group-by stages (`treeclip.data.plan`).

A stage job writes its output rows as one Arrow IPC file, grouped by the partition each row goes to, and
returns only the row offsets of the partitions (`write_partitioned`); the next stage's job for partition p
reads its `Slice` of every such file (`read_slices`, memory-mapped). Tables sorted by (stage, position) are
merged in that order by `merged_rows`, one record batch per file at a time. So the process that plans holds
offsets and file names, never rows, whatever the number of images; a job holds one partition.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

_CHUNK_ROWS = 4096  # rows per record batch written: the unit `merged_rows` holds per file
Slice = tuple[str, int, int]  # (IPC file, first row, end row) of one partition in one file


def write_ipc(table: pa.Table, path: str | Path) -> None:
    """Write `table` to an Arrow IPC file in record batches of `_CHUNK_ROWS` rows."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=_CHUNK_ROWS)


def read_ipc(path: str | Path) -> pa.Table:
    """A whole Arrow IPC file, memory-mapped."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def write_partitioned(table: pa.Table, partition: np.ndarray, partitions: int, path: str | Path) -> list[Slice]:
    """Write `table` to `path` grouped by `partition` (row order kept within a partition); return each
    partition's slice of the file (`partitions` of them, empty ones included)."""
    order = np.argsort(partition, kind="stable")
    write_ipc(table.take(pa.array(order)), path)
    ends = np.cumsum(np.bincount(partition, minlength=partitions)).tolist()
    return [(str(path), start, end) for start, end in zip([0, *ends[:-1]], ends)]


def read_slices(slices: Sequence[Slice], schema: pa.Schema) -> pa.Table:
    """The rows of the given slices, concatenated in order."""
    tables = [read_ipc(path).slice(start, end - start) for path, start, end in slices if end > start]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _file_rows(path: str | Path, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    for index in range(reader.num_record_batches):
        yield from reader.get_batch(index).select(list(columns)).to_pylist()


def merged_rows(paths: Sequence[str | Path], columns: Sequence[str],
                key: Sequence[str] = ("stage", "position")) -> Iterator[dict[str, Any]]:
    """The rows of IPC files each sorted by `key`, merged in `key` order (ties: the earlier file first)."""
    wanted = list(dict.fromkeys([*key, *columns]))
    return heapq.merge(*(_file_rows(path, wanted) for path in paths), key=lambda row: tuple(row[k] for k in key))
