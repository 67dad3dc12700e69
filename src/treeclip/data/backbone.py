"""Reading a taxonomic backbone (``--backbone FILE``) into lineages for the `Aligner`.

Two layouts, tab- or comma-separated (the header's first tab decides), recognised by their header:
- a **7-rank table**: columns named by rank (``kingdom, phylum, class, order, family, genus, species``;
  also ``specificEpithet``, ``division``, ...) and optionally a common name (``common``, ``common_name``,
  ``vernacularName``); other columns are ignored;
- a **parent-pointer table** in Darwin Core style (GBIF backbone ``Taxon.tsv``, EOL Dynamic Hierarchy):
  ``taxonID, parentNameUsageID, taxonRank, scientificName`` (``canonicalName`` is preferred when present,
  rows whose ``taxonomicStatus`` is a synonym or misapplied are skipped). Each row at one of the seven ranks
  becomes a lineage by walking up its parents (memoised: each row is walked once); nodes of other ranks
  (subfamily, tribe, unranked, ...) and names that clean to nothing are walked through. A missing parent ends
  the walk; every node on a parent cycle becomes a root; an ancestor whose rank is not above its child's is
  ignored with everything above it. Since a lineage cannot have gaps, a rank missing along the way (a genus
  directly under an order) leaves only the unbroken run of ranks above the node. Breaks are logged.
Names are cleaned by `treeclip.taxonomy.taxon_from_fields`; bad rows are counted and logged, never fatal.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from treeclip.errors import UsageError
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon, taxon_from_fields

log = logging.getLogger(__name__)

PARENT_COLUMNS = ("taxonid", "parentnameusageid", "taxonrank", "scientificname")
COMMON_COLUMNS = ("common", "commonname", "vernacularname", "vernacular")
EMPTY = ("",) * len(RANK_NAMES)
_FIELDS = ("kingdom", "phylum", "cls", "order", "family", "genus", "species")


def read_backbone(path: str | Path) -> list[Taxon]:
    """Every lineage in a backbone file (see the module docstring); UsageError for a missing or unknown file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--backbone {path}: no such file; give a 7-rank CSV or a Darwin Core taxon table")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        delimiter = "\t" if "\t" in handle.readline() else ","
        handle.seek(0)
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        rows = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = [_column_key(name) for name in next(rows, [])]
        table = _Table(header, rows, str(path))
        if all(column in header for column in PARENT_COLUMNS):
            taxa = _parent_pointer_taxa(table)
        elif _rank_columns(header):
            taxa = list(_rank_table_taxa(table))
        else:
            raise UsageError(f"--backbone {path}: header names neither the ranks (kingdom, ..., species) nor "
                             f"the Darwin Core columns {', '.join(PARENT_COLUMNS)}")
    for reason, n in sorted(table.problems.items()):
        log.warning("%s: %d rows: %s (first at line %d)", path, n, reason, table.first_line[reason])
    log.info("backbone %s: %d lineages", path, len(taxa))
    return taxa


def _column_key(name: str) -> str:
    """A header name without namespace, case and punctuation: "dwc:parentNameUsageID" -> "parentnameusageid"."""
    return re.sub(r"[^a-z0-9]", "", name.rsplit(":", 1)[-1].lower())


def _rank_of(text: str) -> int:
    """The rank index of a rank name, -1 for any other rank (subfamily, tribe, unranked, ...)."""
    try:
        return int(Rank.parse(text))
    except ValueError:
        return -1


def _rank_columns(header: list[str]) -> dict[int, int]:
    """{rank index: column index} for header names that are ranks (the first column of each rank)."""
    columns: dict[int, int] = {}
    for index, name in enumerate(header):
        rank = _rank_of(name)
        if rank >= 0:
            columns.setdefault(rank, index)
    return columns


@dataclass
class _Table:
    """The rows of a backbone file after its header, counting the problems met."""

    header: list[str]
    rows: Iterator[list[str]]
    origin: str
    problems: Counter[str] = field(default_factory=Counter)
    first_line: dict[str, int] = field(default_factory=dict)

    def problem(self, reason: str, line: int) -> None:
        """Count a problem (logged once per reason by `read_backbone`, with its first line)."""
        self.first_line.setdefault(reason, line)
        self.problems[reason] += 1
        log.debug("%s:%d: %s", self.origin, line, reason)

    def column(self, *names: str) -> int | None:
        return next((self.header.index(n) for n in names if n in self.header), None)

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """(line number, fields) of every row with as many fields as the header; others are counted."""
        for line, row in enumerate(self.rows, start=2):
            if len(row) == len(self.header):
                yield line, row
            elif any(row):
                self.problem(f"the number of fields differs from the header's {len(self.header)}", line)


def _taxon(names: list[str], common: str, table: _Table, line: int) -> Taxon | None:
    """A cleaned taxon from raw rank names, or None (counted) when nothing usable is left."""
    taxon = taxon_from_fields(**dict(zip(_FIELDS, names)), common=common, strict=False)
    if not any(taxon.lineage):
        table.problem("no usable rank names", line)
        return None
    return taxon


def _rank_table_taxa(table: _Table) -> Iterator[Taxon]:
    columns = _rank_columns(table.header)
    common = table.column(*COMMON_COLUMNS)
    for line, row in table.records():
        names = [row[columns[rank]] if rank in columns else "" for rank in range(len(RANK_NAMES))]
        taxon = _taxon(names, row[common] if common is not None else "", table, line)
        if taxon is not None:
            yield taxon


@dataclass(frozen=True, slots=True)
class _Node:
    parent: str
    rank: int  # -1 for ranks outside the seven
    name: str
    line: int


def _parent_pointer_taxa(table: _Table) -> list[Taxon]:
    nodes = _read_nodes(table)
    walker = _Walker(nodes, table)
    taxa = []
    for node_id, node in nodes.items():
        if node.rank >= 0:
            lineage = walker.lineage(node_id)
            if lineage[node.rank]:
                taxa.append(Taxon(lineage))
    return taxa


def _read_nodes(table: _Table) -> dict[str, _Node]:
    """{taxonID: node} of the accepted rows."""
    ids, parents, ranks, names = (table.header.index(c) for c in PARENT_COLUMNS)
    canonical, status = table.column("canonicalname"), table.column("taxonomicstatus")
    nodes: dict[str, _Node] = {}
    for line, row in table.records():
        if status is not None and ("synonym" in row[status].lower() or row[status].lower() == "misapplied"):
            continue
        name = (row[canonical] if canonical is not None else "") or row[names]
        if row[ids] in nodes:
            table.problem("repeated taxonID (the first is kept)", line)
            continue
        nodes[row[ids]] = _Node(row[parents].strip(), _rank_of(row[ranks]), name.strip(), line)
    return nodes


def _clean(rank: int, name: str, genus: str) -> tuple[str, str]:
    """(cleaned name, genus) of one node; a species' binomial may name the genus ("" when unusable)."""
    if rank == Rank.SPECIES:
        taxon = taxon_from_fields(genus=genus, species=name, strict=False)
        return taxon.species, taxon.genus
    return taxon_from_fields(**{_FIELDS[rank]: name}, strict=False).lineage[rank], genus


class _Walker:
    """Lineages of parent-pointer nodes, memoised so every node is walked once."""

    def __init__(self, nodes: dict[str, _Node], table: _Table) -> None:
        self._nodes = nodes
        self._table = table
        self._memo: dict[str, tuple[str, ...]] = {}

    def lineage(self, node_id: str) -> tuple[str, ...]:
        """The cleaned rank names from the root down to the node (ranks above a break left empty)."""
        chain: list[str] = []
        current, above = node_id, EMPTY
        while current and current not in self._memo:
            if current not in self._nodes:
                self._problem("missing parent", chain[-1])
                break
            if current in chain:  # every node on a cycle becomes a root
                start = chain.index(current)
                for member in chain[start:]:
                    self._problem("cycle in the parent pointers", member)
                    self._memo[member] = self._extend(EMPTY, member)
                chain = chain[:start]
                break
            chain.append(current)
            current = self._nodes[current].parent
        if current in self._memo:
            above = self._memo[current]
        for member in reversed(chain):
            above = self._memo[member] = self._extend(above, member)
        return self._memo[node_id]

    def _extend(self, above: tuple[str, ...], node_id: str) -> tuple[str, ...]:
        """The cleaned names down to this node; unranked nodes and unusable names are walked through."""
        node = self._nodes[node_id]
        if node.rank < 0:
            return above
        name, genus = _clean(node.rank, node.name, above[Rank.GENUS])
        if not name:
            return above
        deepest = max((i for i, known in enumerate(above) if known), default=-1)
        if node.rank <= deepest:
            self._problem(f"rank {RANK_NAMES[deepest]} above rank {RANK_NAMES[node.rank]}", node_id)
            above = EMPTY
        names = list(above)
        names[node.rank] = name
        if node.rank == Rank.SPECIES:
            names[Rank.GENUS] = genus
        top = node.rank  # keep only the unbroken run of ranks that ends at this node
        while top > 0 and names[top - 1]:
            top -= 1
        return ("",) * top + tuple(names[top:])

    def _problem(self, reason: str, node_id: str) -> None:
        self._table.problem(f"{reason}; lineages end there", self._nodes[node_id].line)
