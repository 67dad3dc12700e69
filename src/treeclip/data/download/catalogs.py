"""URL catalogs read into download `Task`s: what to fetch, and the taxon, licence and owner it carries.

Every table is read through `treeclip.formats` (one table reader, one set of column aliases). Kinds, told
apart by their files and headers:

- **GBIF** occurrence download (Darwin Core Archive, unzipped): a folder holding ``multimedia.txt`` and
  ``occurrence.txt`` (or either file's path). ``multimedia.txt`` (``gbifID, type, format, identifier,
  references, title, description, source, audience, created, creator, contributor, publisher, license,
  rightsHolder``) gives one image URL per row in ``identifier``; ``occurrence.txt`` gives the taxon of its
  ``gbifID`` (``kingdom, phylum, class, order, family, genus, specificEpithet, species`` (a binomial),
  ``scientificName, taxonRank``, ``vernacularName`` when present). Rows whose ``type`` is not ``StillImage``
  are reported and skipped; the owner is ``rightsHolder``, else ``creator``. Source id: ``gbifID/N`` (the
  N-th image of the occurrence in file order). The occurrence taxa are held in memory (one entry per
  occurrence with a usable taxon; the taxa themselves are shared).
- **EOL** media manifest: a table with ``EOL content ID, EOL page ID, Medium Source URL, EOL Full-Size
  Copy URL, License Name, Copyright Owner``. The full-size copy URL is fetched (the source URL when it is
  empty). EOL media carry only page ids, so ``--taxonomy FILE`` is required (the file the ``eol:`` source
  takes: a 7-rank table keyed by page id, or a parent-pointer ``taxon.tab``).
- **URL table** (plain CSV/TSV/Parquet, and the TreeOfLife-200M ``catalog.parquet``): a URL column (``url``,
  ``source_url``, ``image_url``, ``identifier``, ``photo_url``, ``media_url``, ``image``), rank columns or a
  ``scientific_name`` (the `treeclip.formats.columns` aliases), optional id (``uuid``, ``id``,
  ``source_id``, ``gbif_id``), provider (``data_source``: gbif, eol, ... becomes the task's source),
  licence and owner columns (as for the ``csv:`` source, plus ``publisher`` as the owner when nothing
  better is given). Of the TreeOfLife-200M catalog, ``uuid``, ``source_url`` and ``data_source`` are
  confirmed (Imageomics/distributed-downloader's ``tol200m_general`` initializer reads them); its rank,
  licence and owner column names are assumed to follow the aliases (not checked against the file).

A row without a usable URL (http/https only) or taxon is a `Problem`; the rest of the catalog is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from treeclip.errors import UsageError
from treeclip.formats import Table, has_ranks, open_table, resolve, taxon_of
from treeclip.formats.columns import TAXON_ROLES
from treeclip.taxonomy import Taxon

from ..records import Problem
from ..sources.base import int_text, taxa_by_key
from ..sources.csvfile import LICENSE_COLUMNS, OWNER_COLUMNS

URL_COLUMNS = ("url", "source_url", "image_url", "identifier", "photo_url", "media_url", "image")
ID_COLUMNS = ("uuid", "id", "source_id", "gbif_id", "treeoflife_id")
EOL_COLUMNS = ("eol_content_id", "eol_page_id", "eol_full_size_copy_url", "medium_source_url", "license_name",
               "copyright_owner")
GBIF_MEDIA_COLUMNS = ("gbifid", "type", "identifier", "license", "rightsholder", "creator")
IMAGE_TYPE = "stillimage"


@dataclass(frozen=True, slots=True)
class Task:
    """One image to fetch: its URL and what the build needs to know about it."""

    url: str
    source: str  # catalog kind: gbif, eol, table
    source_id: str
    taxon: Taxon
    license: str
    owner: str
    origin: str  # "file:line" of the catalog row

    @property
    def key(self) -> str:
        """The image's stable name in the output: a hash of its URL (the same URL is fetched once)."""
        return hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:32]


def read_catalog(path: str | Path, *, taxonomy: str | Path | None = None) -> Iterator[Task | Problem]:
    """The tasks (and row problems) of one catalog file or GBIF folder; UsageError when it is none of the
    known kinds or a required file is missing."""
    path = Path(path)
    gbif = _gbif_files(path)
    if gbif is not None:
        return _gbif_tasks(*gbif)
    table = open_table(path, what="catalog")
    if table.find("eol_content_id") and table.find("eol_page_id"):
        if taxonomy is None:
            raise UsageError(f"catalog {path}: an EOL media manifest carries only page ids; give --taxonomy FILE "
                             "(a 7-rank table with page_id, or EOL's taxon.tab)")
        return _eol_tasks(table, Path(taxonomy))
    if table.find(*URL_COLUMNS) is None:
        raise UsageError(f"catalog {path}: no URL column (one of {', '.join(URL_COLUMNS)}) and not an EOL manifest "
                         "or a GBIF multimedia.txt")
    return _table_tasks(table)


def _gbif_files(path: Path) -> tuple[Path, Path] | None:
    """(multimedia.txt, occurrence.txt) when `path` is a GBIF download folder or one of its two files;
    UsageError for a zipped download or a folder without both files."""
    if path.suffix.lower() == ".zip":
        raise UsageError(f"catalog {path}: unzip the GBIF download first and give its folder")
    if not path.is_dir() and path.name not in ("multimedia.txt", "occurrence.txt"):
        return None
    folder = path if path.is_dir() else path.parent
    media, occurrences = folder / "multimedia.txt", folder / "occurrence.txt"
    if not (media.is_file() and occurrences.is_file()):
        raise UsageError(f"catalog {path}: a GBIF download folder needs multimedia.txt and occurrence.txt")
    return media, occurrences


def http_url(value: str) -> str:
    """Why `value` is not a fetchable URL ("" when it is one): only http and https with a host."""
    parsed = urlparse(value)
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        return f"not an http(s) URL: {value[:80]!r}"
    return ""


def _task(url: str, source: str, source_id: str, taxon: Taxon | Problem, row: Mapping[str, str],
          where: str) -> Task | Problem:
    if isinstance(taxon, Problem):
        return taxon
    if not url:
        return Problem(where, "empty URL")
    refused = http_url(url)
    if refused:
        return Problem(where, refused)
    return Task(url, source, source_id or url, taxon, row.get("license", ""), row.get("owner", ""), where)


def _table_tasks(table: Table) -> Iterator[Task | Problem]:
    ranks = resolve(table.header, TAXON_ROLES, where=str(table.path))
    if not has_ranks(ranks):
        yield Problem(table.where(1), "no rank columns (kingdom ... species, or scientific_name)")
        return
    owner = table.find(*OWNER_COLUMNS) or table.find("publisher")
    columns = {**ranks, "url": table.find(*URL_COLUMNS), "id": table.find(*ID_COLUMNS),
               "license": table.find(*LICENSE_COLUMNS), "owner": owner, "provider": table.find("data_source")}
    for item in table.rows(columns):
        if isinstance(item, Problem):
            yield item
            continue
        line, row = item
        where = table.where(line)
        yield _task(row["url"], row["provider"] or "table", row["id"], taxon_of(row, where, strict=False), row, where)


def _eol_tasks(table: Table, taxonomy: Path) -> Iterator[Task | Problem]:
    from ..sources.eol import EolSource  # noqa: PLC0415 - the eol source's taxonomy reader, used as is

    source = EolSource(f"eol:{table.path},taxonomy={taxonomy}", str(table.path), {"taxonomy": str(taxonomy)})
    pages = yield from source.page_taxa()  # the one reader of EOL page taxonomies
    columns = {name: table.find(name, name.removeprefix("eol_")) for name in EOL_COLUMNS}
    columns = {**columns, "license": columns.pop("license_name"), "owner": columns.pop("copyright_owner")}
    for item in table.rows(columns):
        if isinstance(item, Problem):
            yield item
            continue
        line, row = item
        where = table.where(line)
        content, page = int_text(row["eol_content_id"]), int_text(row["eol_page_id"])
        taxon = pages.get(page)
        if taxon is None:
            yield Problem(where, f"EOL page {page or '(empty)'} is not in the taxonomy {taxonomy}")
            continue
        url = row["eol_full_size_copy_url"] or row["medium_source_url"]
        yield _task(url, "eol", content, taxon, row, where)


def _gbif_tasks(media: Path, occurrences: Path) -> Iterator[Task | Problem]:
    taxa = yield from _gbif_taxa(open_table(occurrences, what="GBIF occurrence table"))
    table = open_table(media, what="GBIF multimedia table")
    columns = {name: table.find(name) for name in GBIF_MEDIA_COLUMNS}
    if columns["gbifid"] is None or columns["identifier"] is None:
        yield Problem(table.where(1), "multimedia.txt needs gbifID and identifier columns")
        return
    images_of: dict[str, int] = {}
    for item in table.rows(columns):
        if isinstance(item, Problem):
            yield item
            continue
        line, row = item
        where = table.where(line)
        if columns["type"] and row["type"].lower() != IMAGE_TYPE:
            yield Problem(where, f"not an image: type {row['type'] or '(empty)'}")
            continue
        occurrence = row["gbifid"]
        taxon = taxa.get(occurrence) or Problem(where, f"gbifID {occurrence} has no usable taxon in {occurrences}")
        number = images_of[occurrence] = images_of.get(occurrence, -1) + 1
        row = {**row, "owner": row["rightsholder"] or row["creator"]}
        yield _task(row["identifier"], "gbif", f"{occurrence}/{number}", taxon, row, where)


def _gbif_taxa(table: Table) -> Iterator[Problem]:
    """Yield the occurrence table's problems; return {gbifID: Taxon}."""
    ranks = resolve(table.header, TAXON_ROLES, where=str(table.path))
    occurrence = table.find("gbifid")
    if occurrence is None or not has_ranks(ranks):
        yield Problem(table.where(1), "occurrence.txt needs gbifID and rank columns")
        return {}
    return (yield from taxa_by_key(table, {**ranks, "gbifid": occurrence}, "gbifid"))
