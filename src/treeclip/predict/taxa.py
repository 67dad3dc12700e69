"""Reading taxa from files: a taxonomy/label table (CSV, TSV or Parquet: 7-rank tables, treeclip catalogs,
BioCLIP's annotation CSVs, checklists with a scientific name) or a bank's ``txt_emb_species.json``.

Rank columns are found by `treeclip.formats.columns` (``cls`` before ``class``, Darwin Core terms, common
variants; ``columns`` = ``--columns role=COLUMN`` overrides) and cleaned with the taxonomy cleaner, so a
``species`` column may hold binomials. Rows that name no usable taxon are counted: a file where most rows are
unusable or fall back to a shallower rank than the table's deepest column gets a warning that says so.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from treeclip.errors import UsageError
from treeclip.formats import TAXON_ROLES, Problem, has_ranks, open_table, resolve, taxon_of
from treeclip.formats.banks import read_names
from treeclip.formats.problems import problem_kind
from treeclip.taxonomy import RANK_NAMES, Taxon

log = logging.getLogger(__name__)
COLUMN_HINT = "kingdom ... species (cls or class), scientific_name/sciName/scientificName, common_name"


def read_taxa(path: str | os.PathLike[str], *, keep_partial: bool = True,
              columns: Mapping[str, str] | None = None, problems: list[Problem] | None = None) -> list[Taxon]:
    """The distinct taxa of a taxonomy file, in first-seen order (common name of the first occurrence).

    With ``keep_partial=False`` only taxa known to the species are kept. Rows without a usable taxon are
    appended to `problems` when given. UsageError when none is usable.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"taxonomy file not found: {path}")
    seen: dict[Taxon, Taxon] = {}
    kinds: Counter[str] = Counter()
    rows = 0
    for item in _file_taxa(file, columns or {}):
        rows += 1
        if isinstance(item, Problem):
            kinds[problem_kind(item.reason)] += 1
            log.debug("%s: %s", item.origin, item.reason)
            if problems is not None:
                problems.append(item)
        elif item not in seen and (keep_partial or item.species):
            seen[item] = item
    for reason, count in kinds.most_common():
        log.warning("%s: skipped %d of %d rows: %s", file, count, rows, reason)
    if not seen:
        raise UsageError(f"{file} holds no usable taxa: expected rank columns ({COLUMN_HINT}), --columns "
                         "rank=COLUMN for other names, or a bank's txt_emb_species.json")
    _warn_shallow(file, list(seen))
    return list(seen)


def _warn_shallow(file: Path, taxa: list[Taxon]) -> None:
    """Warn when most taxa stop above the deepest rank any taxon of the file reaches."""
    deepest = max(taxon.depth for taxon in taxa)
    shallow = sum(taxon.depth < deepest for taxon in taxa)
    if shallow * 2 > len(taxa):
        log.warning("%s: %d of %d taxa stop above %s (the deepest rank in the file); check the columns "
                    "(--columns rank=COLUMN)", file, shallow, len(taxa), RANK_NAMES[deepest - 1])


def _file_taxa(file: Path, columns: Mapping[str, str]) -> Iterator[Taxon | Problem]:
    if file.suffix.lower() == ".json":
        yield from _json_taxa(file)
    else:
        yield from _table_taxa(file, columns)


def _json_taxa(file: Path) -> Iterator[Taxon | Problem]:
    try:
        lineages, commons = read_names(file)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {file} as a bank's txt_emb_species.json: {exc}") from exc
    for index, (lineage, common) in enumerate(zip(lineages, commons, strict=True)):
        try:
            yield Taxon(lineage, common)
        except ValueError as exc:
            yield Problem(f"{file}[{index}]", f"unusable entry: {exc}")


def _table_taxa(file: Path, overrides: Mapping[str, str]) -> Iterator[Taxon | Problem]:
    table = open_table(file, what="taxonomy file")
    columns = resolve(table.header, TAXON_ROLES, overrides, where=str(file))
    if not has_ranks(columns):
        raise UsageError(f"{file} has no rank columns (its columns: {', '.join(table.header)}); expected some of "
                         f"{COLUMN_HINT}, or name them with --columns rank=COLUMN")
    for item in table.rows(columns):
        yield item if isinstance(item, Problem) else taxon_of(item[1], table.where(item[0]), strict=False)
