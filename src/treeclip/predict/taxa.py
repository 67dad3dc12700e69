"""Reading taxa from files: a 7-rank CSV/TSV, a treeclip catalog (CSV or Parquet), or a bank's json.

Rank columns are found by name (``kingdom`` … ``species``/``specific_epithet``, ``common``/``common_name``,
the same aliases the source readers use) and cleaned with `treeclip.taxonomy.taxon_from_fields`, so a
``species`` column may hold binomials. Rows that name no usable taxon are logged and skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from treeclip.data.records import Problem
from treeclip.data.sources.base import RANK_ALIASES, fields_taxon, open_table, rank_columns
from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon

log = logging.getLogger(__name__)


def read_taxa(path: str | os.PathLike[str], *, keep_partial: bool = True) -> list[Taxon]:
    """The distinct taxa of a taxonomy file, in first-seen order (common name of the first occurrence).

    With ``keep_partial=False`` only taxa known to the species are kept.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"taxonomy file not found: {path}")
    seen: dict[Taxon, Taxon] = {}
    problems = 0
    for item in _file_taxa(file):
        if isinstance(item, Problem):
            problems += 1
            log.debug("%s: %s", item.origin, item.reason)
        elif item not in seen and (keep_partial or item.species):
            seen[item] = item
    if problems:
        log.warning("%s: skipped %d rows without a usable taxon", file, problems)
    if not seen:
        raise UsageError(f"{file} holds no usable taxa: expected rank columns ({', '.join(_column_names())}) "
                         "or a bank's txt_emb_species.json")
    return list(seen)


def _column_names() -> list[str]:
    return [aliases[0] for aliases in RANK_ALIASES.values()]


def _file_taxa(file: Path) -> Iterator[Taxon | Problem]:
    suffix = file.suffix.lower()
    if suffix == ".json":
        yield from _json_taxa(file)
    elif suffix == ".parquet":
        yield from _parquet_taxa(file)
    else:
        yield from _table_taxa(file)


def _json_taxa(file: Path) -> Iterator[Taxon | Problem]:
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from exc
    if not isinstance(entries, list):
        raise UsageError(f"{file} is not a bank json (a list of [[7 ranks], common name])")
    for line, entry in enumerate(entries, 1):
        try:
            ranks, common = entry
            yield Taxon(tuple(str(name or "") for name in ranks), str(common or ""))
        except (TypeError, ValueError) as exc:
            yield Problem(f"{file}[{line}]", f"unusable entry: {exc}")


def _table_taxa(file: Path) -> Iterator[Taxon | Problem]:
    with open_table(file) as (header, rows):
        columns = rank_columns(header)
        if not any(key != "common" for key in columns):
            raise UsageError(f"{file} has no rank columns; expected some of {', '.join(_column_names())}")
        yield from _rows_taxa(file, rows, columns)


def _rows_taxa(file: Path, rows: Iterable[tuple[int, dict[str, str]] | Problem],
               columns: Mapping[str, str]) -> Iterator[Taxon | Problem]:
    for row in rows:
        if isinstance(row, Problem):
            yield row
            continue
        line, values = row
        yield fields_taxon(f"{file}:{line}", {key: values[column] for key, column in columns.items()})


def _parquet_taxa(file: Path) -> Iterator[Taxon | Problem]:
    import pyarrow.parquet as pq  # noqa: PLC0415 - heavy; only Parquet inputs need it

    try:
        table = pq.read_table(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UsageError(f"cannot read Parquet file {file}: {exc}") from exc
    columns = rank_columns([name.lower() for name in table.column_names])
    by_lower = {name.lower(): name for name in table.column_names}
    if not any(key != "common" for key in columns):
        raise UsageError(f"{file} has no rank columns; expected some of {', '.join(_column_names())}")
    data = {key: table.column(by_lower[column]).to_pylist() for key, column in columns.items()}
    for index in range(table.num_rows):
        values = {key: str(data[key][index] or "") for key in columns}
        yield fields_taxon(f"{file}[{index}]", values)
