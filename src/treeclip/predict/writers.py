"""Resumable writers for prediction rows: CSV, JSON Lines, Parquet and Darwin Core (CSV).

An output is locked (`treeclip.atomic.OutputLock`, ``OUTPUT.lock``) while it is written, so a second
process writing it is refused with one line. Rows are appended batch by batch and flushed; after each batch
the lock file records how many bytes of the output are complete. Reopening an existing output resumes it:
the file is cut back to the last complete batch (or, without that record, to its last complete CSV record or
JSON line, dropping the rows of the last image, whose top-k may be incomplete) and every image still in the
file is reported in `done`, for the caller to skip. A repaired file is rewritten atomically. Parquet cannot be
appended to, so each batch becomes an atomically written part file in ``OUTPUT.parts/`` and `close` merges
the parts (with any earlier output) into ``OUTPUT`` atomically; parts whose images are all in ``OUTPUT``
already (a kill between the merge and the parts' removal) are removed, never merged twice.

CSV and Darwin Core text is RFC 4180 (CRLF line ends, so a lone ``\r`` in a value is quoted), and a text
value that a spreadsheet would run as a formula (it starts with ``= + - @``, a tab or a CR) is written with
a leading ``'`` (OWASP's CSV-injection escaping; reading the output back removes it).

Error rows (``{name_key: name, "error": reason}``) fill the ``error`` column (CSV, JSONL, Parquet); Darwin Core
writes no record for an unreadable image (the caller lists it in its problems file). A Darwin Core record is
one identification of one image (``occurrenceID`` = the image, ``identificationID`` = image#n): with several
answers per image (``--k > 1``) the first is marked "primary identification" in ``identificationRemarks`` and
the others "alternative identification n". Parquet outputs carry `metadata` (model id and revision, bank) in
the file's schema metadata.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from treeclip.atomic import OutputLock, atomic_path, atomic_write
from treeclip.errors import UsageError
from treeclip.taxonomy import RANK_NAMES

Row = dict[str, Any]
FORMATS = ("csv", "jsonl", "parquet", "dwc")
ERROR = "error"
DWC_COLUMNS = ("scientificName", "taxonRank", "kingdom", "phylum", "class", "order", "family", "genus",
               "specificEpithet", "vernacularName", "associatedMedia", "identificationRemarks", "occurrenceID",
               "identificationID")
DWC_MEDIA = "associatedMedia"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_LINE_END = "\r\n"
_COMMITTED = re.compile(r"committed (\d+)")


def dwc_row(row: Row, *, name_key: str = "file_name", model_id: str = "", position: int = 1) -> Row:
    """A prediction row (the `position`-th answer of its image, from 1) as Darwin Core terms (deepest named
    rank → scientificName and taxonRank)."""
    out = dict.fromkeys(DWC_COLUMNS, "")
    out[DWC_MEDIA] = out["occurrenceID"] = row[name_key]
    out["identificationID"] = f"{row[name_key]}#{position}"
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
    which = "primary identification" if position == 1 else f"alternative identification {position}"
    out["identificationRemarks"] = (f"{which}; treeclip zero-shot; model {model_id or 'unknown'}; "
                                    f"score {row['score']:.6g}")
    if row.get("prior"):
        out["identificationRemarks"] += f"; location prior: {row['prior']}"
    return out


def _dwc_rows(rows: list[Row], *, name_key: str, model_id: str) -> list[Row]:
    """The Darwin Core records of a batch (an image's rows are consecutive); error rows give none."""
    records, previous, position = [], None, 0
    for row in rows:
        if ERROR in row:
            continue
        position = position + 1 if row[name_key] == previous else 1
        previous = row[name_key]
        records.append(dwc_row(row, name_key=name_key, model_id=model_id, position=position))
    return records


class RowWriter:
    """Appends rows to one output; `done` holds the names already there (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None, *, fmt: str, columns: Sequence[str],
                 name_key: str = "file_name", model_id: str = "", metadata: Mapping[str, str] | None = None) -> None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
        if path is None and fmt == "parquet":
            raise UsageError("--format parquet needs --output FILE")
        self.path = Path(path) if path is not None else None
        self.fmt, self.name_key, self.model_id = fmt, name_key, model_id
        self.metadata = {"treeclip": json.dumps({"model": model_id, **(metadata or {})}, ensure_ascii=False)}
        self.key = DWC_MEDIA if fmt == "dwc" else name_key
        self.columns = list(DWC_COLUMNS) if fmt == "dwc" else [*columns, ERROR]
        self.done: set[str] = set()
        self._parts = 0
        self._stream: IO[str] | None = None
        self._lock: OutputLock | None = None
        if self.path is None:
            self._stream = sys.stdout
            self._start_text(new=True)
            return
        self._lock = OutputLock(self.path)
        try:
            self._open_parquet() if fmt == "parquet" else self._open_text()
        except BaseException:
            self._lock.release()
            raise

    # ---- text formats (csv, dwc, jsonl)

    def _open_text(self) -> None:
        assert self.path is not None and self._lock is not None
        existing = self.path.is_file() and self.path.stat().st_size > 0
        if existing:
            self._resume_text()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
        self._start_text(new=not existing)
        self._commit()

    def _start_text(self, *, new: bool) -> None:
        if self.fmt != "jsonl":
            self._csv = csv.DictWriter(self._stream, fieldnames=self.columns, extrasaction="ignore",
                                       lineterminator=CSV_LINE_END)
            if new:
                self._csv.writeheader()
                self._stream.flush()

    def _commit(self) -> None:
        """Record in the lock file that the output is complete up to its current size."""
        if self._lock is not None and self._stream is not None:
            self._lock.note(f"committed {os.fstat(self._stream.fileno()).st_size}")

    def _resume_text(self) -> None:
        assert self.path is not None and self._lock is not None
        data = self.path.read_bytes()
        committed = _COMMITTED.search(self._lock.previous_note)
        whole_batches = committed is not None and int(committed.group(1)) <= len(data)
        if whole_batches:
            data = data[: int(committed.group(1))]
        text = data.decode("utf-8", errors="replace")
        if self.fmt == "jsonl":
            rows, end, header = _json_lines(text, self.path), text.rfind("\n") + 1, None
        else:
            records, end = _csv_records(text, self.path)
            header = records[0] if records else None
            if header is not None and header != self.columns:
                raise UsageError(f"{self.path} exists with other columns ({','.join(header)}); "
                                 "choose another --output or remove it")
            rows = [dict(zip(self.columns, map(_unescape, record))) for record in records[1:]]
        kept = rows if whole_batches else _drop_last_name(rows, self.key)
        self.done = {row[self.key] for row in kept}
        if len(kept) != len(rows) or end != len(text) or len(data) != self.path.stat().st_size \
                or (header is None and self.fmt != "jsonl"):
            self._rewrite(kept)

    def _rewrite(self, rows: list[Row]) -> None:
        assert self.path is not None
        buffer = io.StringIO()
        if self.fmt == "jsonl":
            buffer.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore",
                                    lineterminator=CSV_LINE_END)
            writer.writeheader()
            writer.writerows(_escaped(row) for row in rows)
        atomic_write(self.path, buffer.getvalue())

    # ---- parquet

    @property
    def _parts_dir(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".parts")

    def _open_parquet(self) -> None:
        import pyarrow.parquet as pq  # noqa: PLC0415

        def names(source: Path) -> set[str]:
            return {str(name) for name in pq.read_table(source, columns=[self.key]).column(0).to_pylist()}

        if self.path.is_file():
            self.done = names(self.path)
        for part in sorted(self._parts_dir.glob("part-*.parquet")):
            in_part = names(part)
            if in_part and in_part <= self.done:  # merged into OUTPUT before a kill removed the parts
                part.unlink()
            self.done |= in_part
        self._parts = max([int(p.stem.split("-")[1]) + 1 for p in self._parts_dir.glob("part-*.parquet")], default=0)

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
        schema = pa.schema(fields, metadata=self.metadata)
        return pa.Table.from_pylist([{name: row.get(name) for name in self.columns} for row in rows], schema=schema)

    def _merge_parquet(self) -> None:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        parts = sorted(self._parts_dir.glob("part-*.parquet"))
        if not parts and self.path.is_file():
            return
        tables = ([pq.read_table(self.path)] if self.path.is_file() else []) + [pq.read_table(p) for p in parts]
        merged = pa.concat_tables(tables).replace_schema_metadata(self.metadata) if tables else self._table([])
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
            self._csv.writerows(_escaped(record) for record in _dwc_rows(rows, name_key=self.name_key,
                                                                         model_id=self.model_id))
        else:
            self._csv.writerows(_escaped(row) for row in rows)
        self._stream.flush()
        self._commit()

    def close(self) -> None:
        """Finish the output (Parquet: merge the parts)."""
        try:
            if self.fmt == "parquet" and self._lock is not None:
                self._merge_parquet()
            elif self._stream is not None and self._stream is not sys.stdout:
                self._stream.close()
        finally:
            self._stream = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

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


def _needs_escape(value: str) -> bool:
    """True for text a spreadsheet would run as a formula, and for escaped-looking text (kept reversible)."""
    return value.startswith(FORMULA_START) or (value.startswith("'") and _needs_escape(value[1:]))


def _escape(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and _needs_escape(value) else value


def _unescape(value: str) -> str:
    return value[1:] if value.startswith("'") and _needs_escape(value[1:]) else value


def _escaped(row: Row) -> Row:
    return {key: _escape(value) for key, value in row.items()}


def _csv_records(text: str, path: Path) -> tuple[list[list[str]], int]:
    """The complete CSV records of `text` (quoted newlines included) and where the last one ends; a torn
    record at the end is left out, a broken one before the end is a UsageError."""
    consumed = 0

    def lines() -> Any:
        nonlocal consumed
        for line in io.StringIO(text, newline=""):
            consumed += len(line)
            yield line

    records, end = [], 0
    try:
        for record in csv.reader(lines(), strict=True):
            if not text[consumed - 1 : consumed] in ("\n", "\r"):
                break
            records.append(record)
            end = consumed
    except csv.Error as exc:
        if consumed < len(text):
            raise UsageError(f"{path}: CSV record ending at character {consumed} is broken ({exc}); "
                             "choose another --output or remove it") from None
    return records, end


def _json_lines(text: str, path: Path) -> list[Row]:
    """The rows of the complete (newline-terminated) lines of a JSON Lines text; UsageError on a broken one."""
    rows = []
    for number, line in enumerate(text[: text.rfind("\n") + 1].split("\n")[:-1], start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}: line {number} is not JSON ({exc.msg}); choose another --output "
                                 "or remove it") from None
    return rows
