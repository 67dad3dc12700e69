"""Reading a taxonomic backbone (``--backbone FILE``) into lineages for the `Aligner`.

Several files may be given (``--backbone`` is repeatable): partial tables complete one another in the
alignment (a bird checklist giving order/family/genus/species, a second table the ranks above the orders).
Two layouts, CSV/TSV/Parquet read by `treeclip.formats`, recognised by their header:
- a **rank table**: columns found by `treeclip.formats.columns` (``kingdom ... species``, ``cls``/``class``,
  ``specificEpithet``, a full ``scientific_name``/``scientificName``, prefixed checklist columns such as
  ``ebird_order``; ``--columns rank=COLUMN`` for others) and optionally a common name; a row with a gap keeps
  its deepest unbroken run of ranks;
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

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from treeclip.errors import UsageError
from treeclip.formats import TAXON_ROLES, Problem, Table, has_ranks, open_table, resolve, taxon_of
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon, taxon_from_fields

log = logging.getLogger(__name__)

PARENT_COLUMNS = ("taxonid", "parentnameusageid", "taxonrank", "scientificname")
EMPTY = ("",) * len(RANK_NAMES)
_FIELDS = ("kingdom", "phylum", "cls", "order", "family", "genus", "species")


def read_backbones(paths: Iterable[str | Path], *, columns: Mapping[str, str] | None = None) -> list[Taxon]:
    """The lineages of every backbone file, in order (partial tables complete one another in the alignment)."""
    return [taxon for path in paths for taxon in read_backbone(path, columns=columns)]


def read_backbone(path: str | Path, *, columns: Mapping[str, str] | None = None) -> list[Taxon]:
    """Every lineage in a backbone file (see the module docstring); UsageError for a missing or unknown file.

    `columns` ({role: column}, ``--columns``) overrides the rank-column rules of a 7-rank table."""
    table = _Table(open_table(path, what="--backbone"))
    parent = {name: table.source.find(name) for name in (*PARENT_COLUMNS, "canonicalname", "taxonomicstatus")}
    ranks = resolve(table.source.header, TAXON_ROLES, columns, where=str(path))
    if all(parent[name] for name in PARENT_COLUMNS):
        taxa = _parent_pointer_taxa(table, parent)
    elif has_ranks(ranks):
        taxa = list(_rank_table_taxa(table, ranks))
    else:
        raise UsageError(f"--backbone {path}: header names neither the ranks (kingdom, ..., species, or a "
                         f"scientific name) nor the Darwin Core columns {', '.join(PARENT_COLUMNS)}; name them "
                         "with --columns rank=COLUMN")
    for reason, n in sorted(table.problems.items()):
        log.warning("%s: %d rows: %s (first at %s)", path, n, reason, table.first[reason])
    if not taxa:
        raise UsageError(f"--backbone {path}: no usable lineage in {table.rows} rows")
    log.info("backbone %s: %d lineages", path, len(taxa))
    return taxa


def _rank_of(text: str) -> int:
    """The rank index of a rank name, -1 for any other rank (subfamily, tribe, unranked, ...)."""
    try:
        return int(Rank.parse(text))
    except ValueError:
        return -1


@dataclass
class _Table:
    """The rows of a backbone file, counting the problems met."""

    source: Table
    problems: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)
    rows: int = 0

    def problem(self, reason: str, where: str) -> None:
        """Count a problem (logged once per reason by `read_backbone`, with its first place)."""
        place = where.rsplit(":", 1)[-1]
        self.first.setdefault(reason, f"line {place}" if place.isdigit() else where)
        self.problems[reason] += 1
        log.debug("%s: %s", where, reason)

    def records(self, columns: Mapping[str, str | None]) -> Iterator[tuple[int, dict[str, str]]]:
        """(line, values) of every readable row; the others are counted."""
        for item in self.source.rows(columns):
            self.rows += 1
            if isinstance(item, Problem):
                self.problem(item.reason.split(" (", 1)[0], item.origin)
            else:
                yield item


def _rank_table_taxa(table: _Table, columns: Mapping[str, str]) -> Iterator[Taxon]:
    for line, row in table.records(columns):
        taxon = taxon_of(row, table.source.where(line), strict=False)
        if isinstance(taxon, Problem):
            table.problem(taxon.reason.split(":", 1)[0], taxon.origin)
        else:
            yield taxon


@dataclass(frozen=True, slots=True)
class _Node:
    parent: str
    rank: int  # -1 for ranks outside the seven
    name: str
    line: int


def _parent_pointer_taxa(table: _Table, columns: Mapping[str, str | None]) -> list[Taxon]:
    nodes = _read_nodes(table, columns)
    walker = _Walker(nodes, table)
    taxa = []
    for node_id, node in nodes.items():
        if node.rank >= 0:
            lineage = walker.lineage(node_id)
            if lineage[node.rank]:
                taxa.append(Taxon(lineage))
    return taxa


def _read_nodes(table: _Table, columns: Mapping[str, str | None]) -> dict[str, _Node]:
    """{taxonID: node} of the accepted rows."""
    nodes: dict[str, _Node] = {}
    for line, row in table.records(columns):
        status = row["taxonomicstatus"].lower()
        if "synonym" in status or status == "misapplied":
            continue
        name = row["canonicalname"] or row["scientificname"]
        if row["taxonid"] in nodes:
            table.problem("repeated taxonID (the first is kept)", table.source.where(line))
            continue
        nodes[row["taxonid"]] = _Node(row["parentnameusageid"].strip(), _rank_of(row["taxonrank"]), name.strip(),
                                      line)
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
        self._table.problem(f"{reason}; lineages end there", self._table.source.where(self._nodes[node_id].line))
