"""The one reader of tables: CSV, TSV and Parquet through pyarrow, streamed in batches.

- The delimiter is decided once from the file name (``.tsv``/``.tab`` → tab) or else from the header line
  (the most frequent of ``,`` tab ``;`` ``|``); a UTF-8 BOM and CRLF line ends are handled. TSV files are read
  without quote processing (GBIF/BIOSCAN names hold stray ``"``); CSV values may be quoted and span lines.
- Only the requested columns are parsed, as text (ids keep their leading zeros; nothing becomes a float).
- A row with the wrong number of fields, a value that is not UTF-8 or one that spans lines (an unclosed quote)
  becomes a `Problem` naming the file and line; the other rows are read. A header naming one column twice is refused when that column is used.
- Line numbers are 1 + the record number among well-formed rows (exact unless values span lines, or blank or
  malformed lines come earlier); a malformed row's Problem quotes its text instead (pyarrow gives no number).
Memory is one batch (64k rows) at a time, whatever the size of the file.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeclip.errors import UsageError

from .problems import Problem

BATCH_ROWS = 1 << 16
_DELIMITERS = (",", "\t", ";", "|")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

Row = tuple[int, dict[str, str]]


def column_key(name: str) -> str:
    """A header name in snake case without namespace: "dwc:scientificName" → "scientific_name";
    "EOL content ID" → "eol_content_id"; "Class " → "class"."""
    name = name.strip().rsplit(":", 1)[-1]
    name = _CAMEL.sub("_", name).lower()
    return "_".join(re.sub(r"[^a-z0-9]+", " ", name).split())


def compact_key(name: str) -> str:
    """`column_key` without separators ("scientific_name" → "scientificname"), for alias matching."""
    return column_key(name).replace("_", "")


def _first_line(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    return head.removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0].decode("utf-8", errors="replace")


def sniff_delimiter(path: Path) -> str:
    """Tab for ``.tsv``/``.tab``; otherwise the most frequent of , tab ; | in the header line (comma on ties)."""
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    line = _first_line(path)
    counts = {delimiter: line.count(delimiter) for delimiter in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


@dataclass
class Table:
    """A table file's header (original names, in order) and a streaming row reader."""

    path: Path
    header: list[str]
    delimiter: str = ""  # "" for Parquet
    problems: list[Problem] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """The header as `column_key`s."""
        return [column_key(name) for name in self.header]

    def find(self, *aliases: str) -> str | None:
        """The header name of the first alias present (aliases compared as `compact_key`s), else None."""
        by_key: dict[str, str] = {}
        for name in self.header:
            by_key.setdefault(compact_key(name), name)
        return next((by_key[compact_key(a)] for a in aliases if compact_key(a) in by_key), None)

    def where(self, line: int | None = None) -> str:
        """'file:line' (or the file) for Problems and Record.origin."""
        return f"{self.path}:{line}" if line is not None else str(self.path)

    def check_unique(self, columns: Sequence[str]) -> None:
        """UsageError when a used column appears twice in the header (which one is meant is unknowable)."""
        counts = Counter(self.header)
        doubled = sorted({c for c in columns if counts[c] > 1})
        if doubled:
            raise UsageError(f"{self.path}: column {doubled[0]!r} appears {counts[doubled[0]]} times in the header; "
                             "rename one (or choose one with --columns)")

    def rows(self, columns: Mapping[str, str | None]) -> Iterator[Row | Problem]:
        """(line, {name: stripped text}) per row, for `columns` = {name: header column or None ("" always)}."""
        used = sorted({c for c in columns.values() if c})
        self.check_unique(used)
        for start, data, problems in self._batches(used):
            yield from problems
            for offset in range(len(data[used[0]]) if used else 0):
                values = {name: data[c][offset] if c else "" for name, c in columns.items()}
                line = start + offset
                problem = _bad_values(values)
                if problem:
                    yield Problem(self.where(line), problem)
                    continue
                yield line, values

    def columns(self, names: Sequence[str]) -> Iterator[tuple[int, dict[str, list[str | None]]]]:
        """Whole batches as (first line, {column: values}); a non-UTF-8 value is None. Row problems are
        appended to `self.problems`."""
        used = sorted(set(names))
        self.check_unique(used)
        for start, data, problems in self._batches(used):
            self.problems.extend(problems)
            yield start, data

    def _batches(self, used: list[str]) -> Iterator[tuple[int, dict[str, list[Any]], list[Problem]]]:
        reader = _parquet_batches if not self.delimiter else _csv_batches
        yield from reader(self, used)


def _bad_values(values: Mapping[str, str | None]) -> str:
    """Why a row's values are unusable ("" when they are fine): not UTF-8, or a line break inside a value
    (a name or path never spans lines; an unclosed quote makes one swallow the lines after it)."""
    for name, value in values.items():
        if value is None:
            return f"{name} is not valid UTF-8 text"
        if "\n" in value or "\r" in value:
            return f"{name} spans several lines ({value[:60]!r}...): an unclosed quote or a broken value"
    return ""


def open_table(path: str | os.PathLike[str], *, what: str = "table") -> Table:
    """The header of a CSV/TSV/Parquet file; UsageError naming the file when it is missing or unreadable."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what} {file}: no such file")
    try:
        if file.suffix.lower() == ".parquet":
            return Table(file, _parquet_header(file))
        delimiter = sniff_delimiter(file)
        return Table(file, _csv_header(file, delimiter), delimiter)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"{what} {file}: not a readable table ({' '.join(str(exc).split())})") from None


def _parse_options(delimiter: str, skipped: list[str] | None) -> Any:
    import pyarrow.csv as pacsv  # noqa: PLC0415 - pyarrow loads only when a table is read

    def skip(row: Any) -> str:
        if skipped is not None:
            skipped.append(f"expected {row.expected_columns} fields, found {row.actual_columns}: {row.text[:80]!r}")
        return "skip"

    quoted = delimiter != "\t"
    return pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False,
                              newlines_in_values=quoted, invalid_row_handler=skip)


def _csv_header(file: Path, delimiter: str) -> list[str]:
    import pyarrow.csv as pacsv  # noqa: PLC0415

    if not _first_line(file).strip():
        raise ValueError("the first line (the header) is empty")
    reader = pacsv.open_csv(file, parse_options=_parse_options(delimiter, None),
                            convert_options=pacsv.ConvertOptions(include_columns=[]))
    return [name.strip() for name in reader.schema.names]


def _csv_batches(table: Table, used: list[str]) -> Iterator[tuple[int, dict[str, list[Any]], list[Problem]]]:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415

    positions = [str(i) for i in range(len(table.header))]
    wanted = [str(table.header.index(c)) for c in used]
    skipped: list[str] = []
    reader = pacsv.open_csv(
        table.path,
        read_options=pacsv.ReadOptions(column_names=positions, skip_rows=1, block_size=1 << 22),
        parse_options=_parse_options(table.delimiter, skipped),
        convert_options=pacsv.ConvertOptions(include_columns=wanted, column_types=dict.fromkeys(wanted, pa.binary()),
                                             strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    line = 2
    try:
        for batch in reader:
            data = {c: _texts(batch.column(w)) for c, w in zip(used, wanted, strict=True)}
            problems = [Problem(table.where(), f"malformed row skipped ({reason})") for reason in skipped]
            skipped.clear()
            yield line, data, problems
            line += batch.num_rows
    except (OSError, ValueError) as exc:
        yield line, {c: [] for c in used}, [Problem(table.where(line), f"unreadable from here on: {exc}")]


def _texts(column: Any) -> list[str | None]:
    """Stripped text values of a binary/string column; None for a value that is not UTF-8."""
    import pyarrow as pa  # noqa: PLC0415

    try:
        values = column.cast(pa.string()).to_pylist()
    except (ValueError, TypeError):
        values = [_decode(value) for value in column.to_pylist()]
    return [value.strip() if value is not None else None for value in values]


def _decode(value: bytes | None) -> str | None:
    try:
        return "" if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parquet_header(file: Path) -> list[str]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    return list(pq.ParquetFile(file).schema_arrow.names)


def _parquet_batches(table: Table, used: list[str]) -> Iterator[tuple[int, dict[str, list[Any]], list[Problem]]]:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    line = 2
    for batch in pq.ParquetFile(table.path).iter_batches(batch_size=BATCH_ROWS, columns=used):
        data = {}
        for name in used:
            column = batch.column(name)
            if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
                column = column.cast(pa.string())
            data[name] = [("" if v is None else v.strip()) for v in column.to_pylist()]
        yield line, data, []
        line += batch.num_rows
