"""Resumable writers for prediction rows: CSV, JSON Lines, Parquet and Darwin Core (CSV).

Rows are appended batch by batch and flushed, so a killed run keeps every batch already written. Reopening
an existing output resumes it: the file is read back, a torn last line is cut off, the rows of the last
image are dropped (its top-k rows may be incomplete) and every image still in the file is reported in
`done`, for the caller to skip. A repaired file is rewritten atomically. Parquet cannot be appended to,
so each batch becomes an atomically written part file in ``OUTPUT.parts/`` and `close` merges the parts
(with any earlier output) into ``OUTPUT`` atomically.

Error rows (``{name_key: name, "error": reason}``) fill the ``error`` column (CSV, JSONL, Parquet) or
``identificationRemarks`` (Darwin Core).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from treeclip.atomic import atomic_path, atomic_write
from treeclip.errors import UsageError
from treeclip.taxonomy import RANK_NAMES

Row = dict[str, Any]
FORMATS = ("csv", "jsonl", "parquet", "dwc")
ERROR = "error"
DWC_COLUMNS = ("scientificName", "taxonRank", "kingdom", "phylum", "class", "order", "family", "genus",
               "specificEpithet", "vernacularName", "associatedMedia", "identificationRemarks")
DWC_MEDIA = "associatedMedia"


def dwc_row(row: Row, *, name_key: str = "file_name", model_id: str = "") -> Row:
    """A prediction row as Darwin Core terms (deepest named rank → scientificName and taxonRank)."""
    out = dict.fromkeys(DWC_COLUMNS, "")
    out[DWC_MEDIA] = row[name_key]
    if ERROR in row:
        out["identificationRemarks"] = f"error: {row[ERROR]}"
        return out
    for rank in RANK_NAMES[:-1]:
        out[rank] = row.get(rank, "")
    out["specificEpithet"] = row.get("species_epithet", "")
    out["vernacularName"] = row.get("common_name", "")
    deepest = [rank for rank in RANK_NAMES[:-1] if out[rank]]
    if out["specificEpithet"]:
        out["scientificName"], out["taxonRank"] = f"{out['genus']} {out['specificEpithet']}", "species"
    elif deepest:
        out["scientificName"], out["taxonRank"] = out[deepest[-1]], deepest[-1]
    elif row.get("classification"):
        out["scientificName"] = row["classification"]
    out["identificationRemarks"] = f"treeclip zero-shot; model {model_id or 'unknown'}; score {row['score']:.6g}"
    return out


class RowWriter:
    """Appends rows to one output; `done` holds the names already there (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None, *, fmt: str, columns: Sequence[str],
                 name_key: str = "file_name", model_id: str = "") -> None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
        if path is None and fmt == "parquet":
            raise UsageError("--format parquet needs --output FILE")
        self.path = Path(path) if path is not None else None
        self.fmt, self.name_key, self.model_id = fmt, name_key, model_id
        self.key = DWC_MEDIA if fmt == "dwc" else name_key
        self.columns = list(DWC_COLUMNS) if fmt == "dwc" else [*columns, ERROR]
        self.done: set[str] = set()
        self._parts = 0
        self._stream: IO[str] | None = None
        if self.path is None:
            self._stream = sys.stdout
            self._start_text(new=True)
        elif fmt == "parquet":
            self._open_parquet()
        else:
            self._open_text()

    # ---- text formats (csv, dwc, jsonl)

    def _open_text(self) -> None:
        assert self.path is not None
        existing = self.path.is_file() and self.path.stat().st_size > 0
        if existing:
            self._resume_text()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
        self._start_text(new=not existing)

    def _start_text(self, *, new: bool) -> None:
        if self.fmt != "jsonl":
            self._csv = csv.DictWriter(self._stream, fieldnames=self.columns, extrasaction="ignore",
                                       lineterminator="\n")
            if new:
                self._csv.writeheader()
                self._stream.flush()

    def _resume_text(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        complete = data[:cut].decode("utf-8", errors="replace")
        if self.fmt == "jsonl":
            rows = [json.loads(line) for line in complete.splitlines() if line.strip()]
            header = None
        else:
            reader = csv.DictReader(io.StringIO(complete))
            rows, header = list(reader), reader.fieldnames
            if header is not None and list(header) != self.columns:
                raise UsageError(f"{self.path} exists with other columns ({','.join(header)}); "
                                 "choose another --output or remove it")
        kept = _drop_last_name(rows, self.key)
        self.done = {row[self.key] for row in kept}
        if len(kept) != len(rows) or cut != len(data) or (header is None and self.fmt != "jsonl"):
            self._rewrite(kept)

    def _rewrite(self, rows: list[Row]) -> None:
        assert self.path is not None
        buffer = io.StringIO()
        if self.fmt == "jsonl":
            buffer.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write(self.path, buffer.getvalue())

    # ---- parquet

    @property
    def _parts_dir(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".parts")

    def _open_parquet(self) -> None:
        import pyarrow.parquet as pq  # noqa: PLC0415

        sources = ([self.path] if self.path.is_file() else []) + sorted(self._parts_dir.glob("part-*.parquet"))
        for source in sources:
            self.done.update(str(name) for name in pq.read_table(source, columns=[self.key]).column(0).to_pylist())
        self._parts = len(sources)

    def _write_part(self, rows: list[Row]) -> None:
        import pyarrow.parquet as pq  # noqa: PLC0415

        self._parts_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._parts_dir / f"part-{self._parts:06d}.parquet") as tmp:
            pq.write_table(self._table(rows), tmp)
        self._parts += 1

    def _table(self, rows: list[Row]) -> Any:
        import pyarrow as pa  # noqa: PLC0415

        fields = [(name, pa.float64() if name == "score" else pa.list_(pa.float32()) if name == "embedding"
                   else pa.string()) for name in self.columns]
        schema = pa.schema(fields)
        return pa.Table.from_pylist([{name: row.get(name) for name in self.columns} for row in rows], schema=schema)

    def _merge_parquet(self) -> None:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        parts = sorted(self._parts_dir.glob("part-*.parquet"))
        if not parts and self.path.is_file():
            return
        tables = ([pq.read_table(self.path)] if self.path.is_file() else []) + [pq.read_table(p) for p in parts]
        merged = pa.concat_tables(tables) if tables else self._table([])
        with atomic_path(self.path) as tmp:
            pq.write_table(merged, tmp)
        shutil.rmtree(self._parts_dir, ignore_errors=True)

    # ---- public

    def write(self, rows: list[Row]) -> None:
        """Append one batch of rows and make it durable against the process being killed."""
        if not rows:
            return
        self.done.update(str(row[self.name_key]) for row in rows)
        if self.fmt == "parquet":
            self._write_part(rows)
            return
        assert self._stream is not None
        if self.fmt == "jsonl":
            self._stream.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        elif self.fmt == "dwc":
            self._csv.writerows(dwc_row(row, name_key=self.name_key, model_id=self.model_id) for row in rows)
        else:
            self._csv.writerows(rows)
        self._stream.flush()

    def close(self) -> None:
        """Finish the output (Parquet: merge the parts)."""
        if self.fmt == "parquet":
            self._merge_parquet()
        elif self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_last_name(rows: list[Row], key: str) -> list[Row]:
    """`rows` without the trailing run of rows of the last image (they may be an incomplete top-k)."""
    if not rows:
        return rows
    last = rows[-1].get(key)
    end = len(rows)
    while end > 0 and rows[end - 1].get(key) == last:
        end -= 1
    return rows[:end]
