"""The one reader of tables: CSV, TSV and Parquet through pyarrow, streamed in batches.

- The delimiter is decided once from the file name (``.tsv``/``.tab`` → tab) or else from the header line
  (the most frequent of ``,`` tab ``;`` ``|``); a UTF-8 BOM and CRLF line ends are handled. TSV files are read
  without quote processing (GBIF/BIOSCAN names hold stray ``"``); CSV values may be quoted and span lines.
- Only the requested columns are parsed, as text (ids keep their leading zeros; nothing becomes a float).
- A row with the wrong number of fields, a value that is not UTF-8 or one that spans lines (an unclosed quote)
  becomes a `Problem` naming the file and row; the other rows are read. A header naming one column twice is
  refused when that column is used.
- Row numbers (``file:N`` in problems and `Record.origin`) are exact and count as a spreadsheet shows the
  table: the header is row 1, a quoted value spanning several lines is one row, blank lines are not rows;
  malformed rows keep their numbers (pyarrow's `InvalidRow.number`, given when the CSV reader is
  single-threaded). In Parquet, row N is the (N-1)-th row of the file (the header counts as row 1).
Memory is one batch (a 1 MiB block of CSV: ~130 MB of reader buffers, against ~270 MB with 4 MiB blocks at the
same speed; a row longer than a block is "unreadable from here on"; 64k Parquet rows) at a time, whatever the
size of the file.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count, islice
from pathlib import Path
from typing import Any

from treeclip.errors import UsageError

from .problems import Problem

BATCH_ROWS = 1 << 16
_BLOCK_BYTES = 1 << 20  # CSV bytes parsed at once
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
    read: int = 0  # data rows `rows` has read (well-formed, whatever their values)

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

    def rows(self, columns: Mapping[str, str | None], part: TablePart | None = None) -> Iterator[Row | Problem]:
        """(row number, {name: stripped text}) per row, for `columns` = {name: header column or None ("" always)};
        a bad row's Problem comes in its place among the rows. With `part` (from `parts`), only that part's
        rows, exactly as they come when the whole table is read."""
        used = sorted({c for c in columns.values() if c})
        self.check_unique(used)
        for batch in self._batches(used, part):
            numbers = batch.numbers.to_pylist()
            data = dict(zip(used, (_texts(column) for column in batch.columns), strict=True))
            self.read += len(numbers)
            problems = iter(batch.problems)
            problem = next(problems, None)
            for offset, number in enumerate(numbers):
                while problem is not None and problem[0] < number:
                    yield Problem(self.where(problem[0]), problem[1])
                    problem = next(problems, None)
                values = {name: data[c][offset] if c else "" for name, c in columns.items()}
                bad = _bad_values(values)
                yield Problem(self.where(number), bad) if bad else (number, values)
            for number, reason in ([problem] if problem is not None else []) + list(problems):
                yield Problem(self.where(number), reason)

    def columns(self, names: Sequence[str]) -> Iterator[tuple[int, dict[str, list[str | None]]]]:
        """Whole batches as (first row number, {column: values}); a non-UTF-8 value is None. Row problems are
        appended to `self.problems`."""
        used = sorted(set(names))
        self.check_unique(used)
        for batch in self._batches(used, None):
            self.problems.extend(Problem(self.where(number), reason) for number, reason in batch.problems)
            if len(batch.numbers):
                texts = {c: _texts(column) for c, column in zip(used, batch.columns, strict=True)}
                yield batch.numbers[0].as_py(), texts

    def parts(self, columns: Mapping[str, str | None], *, rows: int, prefix: str) -> list[TablePart]:
        """The table cut into parts of about `rows` rows that `rows(columns, part)` reads one by one, for
        jobs of their own. Parquet: runs of whole row groups (nothing is written). CSV/TSV (which cannot be
        cut at byte offsets: a quoted value may hold a line break): the used columns read once, streaming,
        into Arrow IPC files ``{prefix}-NNNNNN.arrow`` of `rows` rows each, with their row numbers and the
        problems met among them; a part never starts with a problem, so the last part holds the trailing ones."""
        used = sorted({c for c in columns.values() if c})
        self.check_unique(used)
        if not self.delimiter:
            return _row_group_parts(self.path, rows)
        return _staged_parts(_csv_batches(self, used), used, rows=rows, prefix=prefix)

    def _batches(self, used: list[str], part: TablePart | None) -> Iterator[_Batch]:
        if not used:
            return
        if part is not None and part.staged:
            yield from _staged_batches(part.staged, used)
        elif not self.delimiter:
            yield from _parquet_batches(self, used, part or TablePart())
        else:
            yield from _csv_batches(self, used)


@dataclass(frozen=True)
class TablePart:
    """A part of a table (`Table.parts`): Parquet row groups [first_group, end_group) whose first row is
    `first_row`, or (`staged`) the Arrow IPC file holding a CSV/TSV part's used columns."""

    first_group: int = 0
    end_group: int | None = None  # None: to the last row group
    first_row: int = 2
    staged: str = ""


@dataclass
class _Batch:
    """Consecutive rows of a table: their row numbers (int64), the used columns as read (binary for CSV;
    `_texts` turns them into text), and the problems (row number, reason) met before the last of them (or,
    in a table's last batch, after it)."""

    numbers: Any
    columns: list[Any]
    problems: list[tuple[int, str]]


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


def _parse_options(delimiter: str, skipped: list[tuple[int, str]] | None) -> Any:
    import pyarrow.csv as pacsv  # noqa: PLC0415 - pyarrow loads only when a table is read

    def skip(row: Any) -> str:
        if skipped is not None:
            reason = f"expected {row.expected_columns} fields, found {row.actual_columns}: {row.text[:80]!r}"
            skipped.append((row.number, f"malformed row skipped ({reason})"))
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


def _csv_batches(table: Table, used: list[str]) -> Iterator[_Batch]:
    """The used columns of a CSV/TSV file, one block at a time. The malformed rows' numbers come from
    pyarrow (`InvalidRow.number`, single-threaded reading); every other row takes the next number that is not
    a malformed row's, so the numbers are exact whatever was skipped before."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415

    positions = [str(i) for i in range(len(table.header))]
    wanted = [str(table.header.index(c)) for c in used]
    skipped: list[tuple[int, str]] = []
    reader = pacsv.open_csv(
        table.path,
        read_options=pacsv.ReadOptions(column_names=positions, skip_rows=1, block_size=_BLOCK_BYTES,
                                       use_threads=False),
        parse_options=_parse_options(table.delimiter, skipped),
        convert_options=pacsv.ConvertOptions(include_columns=wanted, column_types=dict.fromkeys(wanted, pa.binary()),
                                             strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    following = 2  # the number the next well-formed row takes unless a malformed row has it
    try:
        for block in reader:
            pending = sorted(skipped)
            taken = {number for number, _ in pending}
            numbers = list(islice((n for n in count(following) if n not in taken), block.num_rows))
            following = numbers[-1] + 1 if numbers else following
            skipped[:] = [problem for problem in pending if problem[0] >= following]
            yield _Batch(pa.array(numbers, pa.int64()), [block.column(w) for w in wanted],
                         [problem for problem in pending if problem[0] < following])
    except (OSError, ValueError) as exc:
        skipped.append((following, f"unreadable from here on: {exc}"))
    if skipped:
        yield _Batch(pa.array([], pa.int64()), [pa.array([], pa.binary()) for _ in used], sorted(skipped))


def _texts(column: Any) -> list[str | None]:
    """Stripped text values of a column of any type ("" for a null); None for a value that is not UTF-8."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    try:
        values = pc.fill_null(column.cast(pa.string()), "").to_pylist()
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


def _parquet_batches(table: Table, used: list[str], part: TablePart) -> Iterator[_Batch]:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    file = pq.ParquetFile(table.path)
    groups = range(part.first_group, file.num_row_groups if part.end_group is None else part.end_group)
    following = part.first_row
    for batch in file.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=used):
        yield _Batch(pa.array(range(following, following + batch.num_rows), pa.int64()), batch.columns, [])
        following += batch.num_rows


def _row_group_parts(path: Path, rows: int) -> list[TablePart]:
    """Runs of whole row groups of about `rows` rows, each with at least one row (one part for an empty
    file; empty row groups join the part before them)."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    metadata = pq.ParquetFile(path).metadata
    sizes = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
    parts, first, first_row, held, left = [], 0, 2, 0, sum(sizes)
    for group, size in enumerate(sizes):
        held, left = held + size, left - size
        if held >= rows and left:
            parts.append(TablePart(first, group + 1, first_row))
            first, first_row, held = group + 1, first_row + held, 0
    return [*parts, TablePart(first, None, first_row)]


_STAGED_USED = b"treeclip.staged_columns"  # schema metadata of a staged part: the used columns (JSON)
_STAGED_PROBLEMS = b"problems"  # a staged batch's metadata: its problems (JSON)


def _staged_parts(batches: Iterator[_Batch], used: list[str], *, rows: int, prefix: str) -> list[TablePart]:
    """`batches` written to IPC files of `rows` rows each: a batch is cut where a part is full, and the
    problems before the cut's last row go with the rows before it (the rest with the rows after it)."""
    import pyarrow as pa  # noqa: PLC0415

    schema = pa.schema([("row", pa.int64()), *((f"c{i}", pa.binary()) for i in range(len(used)))],
                       metadata={_STAGED_USED: json.dumps(used)})
    paths: list[str] = []
    writer, held = None, 0
    try:
        for batch in batches:
            count, start, problems = len(batch.numbers), 0, batch.problems
            while True:
                if writer is None or (held >= rows and start < count):
                    if writer is not None:
                        writer.close()
                    paths.append(f"{prefix}-{len(paths):06d}.arrow")
                    writer, held = pa.ipc.new_file(paths[-1], schema), 0
                end = start + min(count - start, rows - held)
                last = batch.numbers[end - 1].as_py() if end < count else None
                mine = [problem for problem in problems if last is None or problem[0] < last]
                problems = problems[len(mine):]
                arrays = [batch.numbers, *batch.columns]
                writer.write_batch(pa.record_batch([a.slice(start, end - start) for a in arrays], schema=schema),
                                   custom_metadata={_STAGED_PROBLEMS: json.dumps(mine)})
                held, start = held + end - start, end
                if start >= count:
                    break
        if writer is None:  # no rows and no problems: one empty part
            paths.append(f"{prefix}-000000.arrow")
            writer = pa.ipc.new_file(paths[-1], schema)
    finally:
        if writer is not None:
            writer.close()
    return [TablePart(staged=path) for path in paths]


def _staged_batches(path: str, used: list[str]) -> Iterator[_Batch]:
    import pyarrow as pa  # noqa: PLC0415

    with pa.OSFile(path) as source:
        reader = pa.ipc.open_file(source)
        staged = json.loads(reader.schema.metadata[_STAGED_USED])
        if not set(used) <= set(staged):
            raise ValueError(f"{path}: staged without the columns {sorted(set(used) - set(staged))}")
        for index in range(reader.num_record_batches):
            batch, metadata = reader.get_batch_with_custom_metadata(index)
            problems = [(number, reason) for number, reason in json.loads(metadata[_STAGED_PROBLEMS])]
            yield _Batch(batch.column(0), [batch.column(1 + staged.index(c)) for c in used], problems)
