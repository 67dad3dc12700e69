"""``eol:MANIFEST_CSV[,IMAGE_ROOT],TAXONOMY`` — Encyclopedia of Life media joined to a taxonomy.

Spec: ``eol:MANIFEST_CSV,IMAGE_ROOT,TAXONOMY_FILE``, or with names ``eol:MANIFEST_CSV,taxonomy=FILE[,images=DIR]``
(IMAGE_ROOT defaults to the manifest's folder; the taxonomy is required, EOL media carry only page ids).

The manifest has ``EOL content ID, EOL page ID, Medium Source URL, EOL Full-Size Copy URL, License Name,
Copyright Owner``; licence and owner are kept on each Record, the content id is its ``source_id``.

The taxonomy file (CSV or tab-separated) is one of:
- a 7-rank table keyed by page id: a ``page_id`` / ``eol_page_id`` / ``eolid`` column, rank columns
  ``kingdom ... species`` (``class`` or ``cls``), optional ``common`` / ``vernacular_name``;
- a Darwin Core parent-pointer table (EOL Dynamic Hierarchy ``taxon.tab``, GBIF backbone ...):
  ``taxonID, parentNameUsageID, taxonRank, scientificName`` (``canonicalName`` preferred when present),
  optional ``eolID`` and ``vernacularName``. Page ids match ``eolID`` when the column exists, else ``taxonID``.
  Each page's node is walked up its parents, filling kingdom/phylum (or division)/class/order/family/
  genus/species from the first node of each rank; other ranks are passed through. A walk stops at an
  unknown or empty parent (partial lineage); a cycle makes the page a Problem. When the ranks found leave a
  gap (a chain with no order node, say), the deepest contiguous run is kept, since the genus and species
  identify the organism and the alignment can refill the higher ranks.

Images are found under IMAGE_ROOT as ``{content_id}.jpg`` (or another image extension),
``{content_id}_{page_id}_eol-full-size-copy.jpg`` (the name BioCLIP's downloader, the Rare Species files and
TreeOfLife-10M give; ``_eol_full-size-copy.jpg`` as some dataset cards spell it is tried next), also in any
sub-folder one level down (the downloader's dated folders such as
``2024-03-20/``), or the basename of either URL; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import unquote, urlparse

from treeclip.taxonomy import RANK_NAMES, Taxon, parse_binomial, taxon_from_fields

from treeclip.formats import Table, has_ranks, resolve
from treeclip.formats.columns import TAXON_ROLES
from treeclip.formats.tables import TablePart

from ..records import Problem, Record
from .base import (IMAGE_EXTENSIONS, Source, checked_taxon, first_existing, int_text, open_source_table, subdirs,
                   table_parts, table_rows, taxa_by_key)

PAGE_COLUMNS = ("page_id", "eol_page_id", "eolid", "eol_id", "pageid")
DWC_COLUMNS = ("taxonid", "parentnameusageid", "taxonrank", "scientificname", "canonicalname", "eolid",
               "vernacularname")
EOL_SUFFIXES = ("_eol-full-size-copy.jpg", "_eol_full-size-copy.jpg")  # the downloader's; a dataset card's
RANK_INDEX = {**{name: index for index, name in enumerate(RANK_NAMES)}, "division": 1}
MAX_DEPTH = 1_000  # no real taxonomy is this deep; stops a walk in a pathological file
MANIFEST_COLUMNS = ("eol_content_id", "eol_page_id", "license_name", "copyright_owner", "eol_full_size_copy_url",
                    "medium_source_url")


class EolPart(NamedTuple):
    """A part of the media manifest (`rows`, from `table_parts`); `number` is its place."""

    number: int
    rows: TablePart | None


class PageTaxa(Protocol):
    """page id → its Taxon, a Problem (a bad lineage), or None (unknown page)."""

    def get(self, page: str, /) -> Taxon | Problem | None: ...


class _Node(NamedTuple):
    parent: str
    rank: int  # index into RANK_NAMES, -1 for ranks outside the seven
    name: str
    vernacular: str


class EolSource(Source):
    """EOL media manifest rows with lineages from a page-id taxonomy."""

    kind = "eol"
    params = ("images", "taxonomy")
    required = ("taxonomy",)
    usage = "eol:MANIFEST_CSV[,IMAGE_ROOT],TAXONOMY_FILE or eol:MANIFEST_CSV,taxonomy=FILE[,images=DIR]"

    def locate(self, path: str) -> Path:
        manifest = self.existing(path, "media manifest", directory=False)
        images = self.options.get("images")
        self.image_root = self.existing(images, "image root", directory=True) if images else manifest.parent
        self.taxonomy = self.existing(self.options["taxonomy"], "taxonomy", directory=False)
        return manifest

    def records(self, part: EolPart | None = None) -> Iterator[Record | Problem]:
        """With a `part` after the first: only the taxonomy's rows of the part's pages are parsed (a rank table;
        a parent-pointer table is read whole, every node may be an ancestor), and its problems are not reported."""
        rows = None if part is None else part.rows
        first = part is None or part.number == 0
        pages = yield from self._page_taxa(report=first, keep=None if first else self._pages_of(rows))
        self._folders = [self.image_root, *subdirs(self.image_root)]
        for item in table_rows(self.path, "eol: media manifest", self._columns, rows):
            yield item if isinstance(item, Problem) else self._record(*item, pages)

    def _pages_of(self, rows: TablePart | None) -> set[str]:
        """The page ids of the manifest's rows (of a part)."""
        return {int_text(item[2]["eol_page_id"]) for item in table_rows(self.path, "eol: media manifest",
                                                                         self._columns, rows)
                if not isinstance(item, Problem)}

    def parts(self, *, rows: int, prefix: str) -> list[EolPart | None]:
        """The manifest's parts (`table_parts`: a CSV/TSV staged to Arrow files, Parquet cut at row groups);
        every part's job reads the whole taxonomy again, the first reports its problems."""
        parts = table_parts(self.path, "eol: media manifest", self._columns, rows=rows, prefix=prefix)
        return [None] if len(parts) < 2 else [EolPart(number, part) for number, part in enumerate(parts)]

    def _columns(self, table: Table) -> dict[str, str | None] | Problem:
        columns = {name: table.find(name, name.removeprefix("eol_")) for name in MANIFEST_COLUMNS}
        if columns["eol_content_id"] is None or columns["eol_page_id"] is None:
            return Problem(table.where(1), "manifest needs 'EOL content ID' and 'EOL page ID' columns")
        return columns

    def _page_taxa(self, *, report: bool, keep: set[str] | None) -> Generator[Problem, None, PageTaxa]:
        """`page_taxa(keep=keep)`, its problems yielded only when `report`."""
        taxa = self.page_taxa(keep=keep)
        while True:
            try:
                problem = next(taxa)
            except StopIteration as done:
                return done.value
            if report:
                yield problem

    def _record(self, table: Table, line: int, row: dict[str, str], pages: PageTaxa) -> Record | Problem:
        where = table.where(line)
        content_id, page_id = int_text(row["eol_content_id"]), int_text(row["eol_page_id"])
        if not content_id or not page_id:
            return Problem(where, "empty content id or page id")
        taxon = pages.get(page_id)
        if taxon is None:
            return Problem(where, f"EOL page {page_id} is not in the taxonomy {self.taxonomy}")
        if isinstance(taxon, Problem):
            return Problem(where, f"EOL page {page_id}: {taxon.reason}")
        image = first_existing(self._candidates(row, content_id, page_id))
        if image is None:
            return Problem(where, f"image for content {content_id} not found under {self.image_root}")
        return Record(
            self.kind,
            content_id,
            str(image),
            taxon,
            license=row["license_name"],
            owner=row["copyright_owner"],
            origin=where,
        )

    def _candidates(self, row: dict[str, str], content_id: str, page_id: str) -> Iterator[Path]:
        root = self.image_root
        yield root / f"{content_id}.jpg"
        yield from (folder / f"{content_id}_{page_id}{suffix}" for suffix in EOL_SUFFIXES for folder in self._folders)
        for column in ("eol_full_size_copy_url", "medium_source_url"):
            name = Path(unquote(urlparse(row.get(column, "")).path)).name
            if name:
                yield root / name
        yield from (root / f"{content_id}{ext}" for ext in sorted(IMAGE_EXTENSIONS - {".jpg"}))

    def page_taxa(self, *, keep: set[str] | None = None) -> Generator[Problem, None, PageTaxa]:
        """Yield the taxonomy file's Problems; return its page id → taxon lookup (of the pages in `keep` only,
        when given, for a rank table: see `taxa_by_key`)."""
        table = open_source_table(self.taxonomy, "eol: taxonomy")
        if isinstance(table, Problem):
            yield table
            return {}
        dwc = {name: table.find(name) for name in DWC_COLUMNS}
        if all(dwc[name] for name in DWC_COLUMNS[:4]):
            return (yield from _parent_pointer_pages(table, dwc))
        ranks = resolve(table.header, TAXON_ROLES, self.columns, where=str(self.taxonomy))
        page = table.find(*PAGE_COLUMNS)
        if page is not None and has_ranks(ranks):
            return (yield from _rank_table_pages(table, {**ranks, "page": page}, keep))
        yield Problem(table.where(1), "taxonomy is neither a 7-rank table with a page_id column nor a parent-pointer "
                      "table (taxonID, parentNameUsageID, taxonRank, scientificName)")
        return {}


def _rank_table_pages(table: Table, columns: dict[str, str], keep: set[str] | None
                      ) -> Generator[Problem, None, PageTaxa]:
    """page id → Taxon for every usable row of a 7-rank table (whose page is in `keep`, when given)."""
    return (yield from taxa_by_key(table, columns, "page", normalise=int_text, keep=keep))


class _ParentPointers:
    """Page lineages from a parent-pointer table, walked on first use and remembered."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nodes: dict[str, _Node] = {}
        self.page_to_node: dict[str, str] = {}
        self.walked: dict[str, Taxon | Problem | None] = {}

    def get(self, page: str) -> Taxon | Problem | None:
        if page not in self.walked:
            node = self.page_to_node.get(page)
            self.walked[page] = None if node is None else _walk(self.nodes, node, self.path)
        return self.walked[page]


def _parent_pointer_pages(source: Table, columns: dict[str, str | None]) -> Generator[Problem, None, PageTaxa]:
    """Every node of a Darwin Core table, indexed by page id (eolID when present, else taxonID)."""
    table = _ParentPointers(source.path)
    for item in source.rows(columns):
        if isinstance(item, Problem):
            yield item
            continue
        _, row = item
        taxon_id = row["taxonid"]
        rank = RANK_INDEX.get(row["taxonrank"].strip().lower(), -1)
        name = row["canonicalname"] or row["scientificname"]
        table.nodes[taxon_id] = _Node(row["parentnameusageid"], rank, name, row["vernacularname"])
        page = int_text(row["eolid"]) if columns["eolid"] else taxon_id
        if page:
            table.page_to_node.setdefault(page, taxon_id)
    return table


def _walk(nodes: dict[str, _Node], start: str, path: Path) -> Taxon | Problem:
    """The lineage of node `start` from its ancestors (see the module docstring)."""
    names = [""] * len(RANK_NAMES)
    seen: set[str] = set()
    node_id = start
    while node_id in nodes and len(seen) < MAX_DEPTH:
        if node_id in seen:
            return Problem(str(path), f"parent cycle through taxonID {node_id}")
        seen.add(node_id)
        node = nodes[node_id]
        if node.rank >= 0 and not names[node.rank]:
            names[node.rank] = node.name
        node_id = node.parent
    if names[6] and not names[5]:  # a species node under no genus node: its binomial names the genus
        with contextlib.suppress(ValueError):  # an unusable species name is reported below
            names[5] = parse_binomial(names[6]).genus
    names = _deepest_run(names)
    fields = dict(zip(("kingdom", "phylum", "cls", "order", "family", "genus", "species"), names))
    return checked_taxon(str(path), taxon_from_fields, **fields, common=nodes[start].vernacular)


def _deepest_run(names: list[str]) -> list[str]:
    """Names with everything above the deepest contiguous run of present ranks emptied."""
    present = [index for index, name in enumerate(names) if name]
    if not present:
        return names
    top = present[-1]
    while top > 0 and names[top - 1]:
        top -= 1
    return [""] * top + names[top:]
