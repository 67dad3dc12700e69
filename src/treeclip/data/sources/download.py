"""``download:DIR`` — the output folder of ``treeclip download``: its ``status.csv`` and ``images/``.

Each ``ok`` row of the status table is a Record with the image under DIR, the taxon (the ``kingdom ...
species, common`` columns), licence and owner; its source id is ``SOURCE:SOURCE_ID`` of the catalog
(``gbif:1234/0``, ``eol:5678``, ``table:<uuid>``). A URL that failed is a Problem ("not downloaded: why")
unless a later row of the table (``--retry-failed``) got it; a missing image file is a Problem too.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from treeclip.formats import Table, resolve, taxon_of
from treeclip.formats.columns import TAXON_ROLES
from treeclip.formats.tables import TablePart

from ..records import Problem, Record
from .base import Source, contained_path, table_parts, table_rows

STATUS_FILE = "status.csv"  # the name `treeclip.data.download.journal` writes
COLUMNS = ("key", "outcome", "reason", "path", "source", "source_id", "license", "owner", "url")


@dataclass(frozen=True)
class DownloadPart:
    """A part of the status table, and the file naming the final row of each retried URL key."""

    table: TablePart | None
    retried: str


class DownloadSource(Source):
    """Images fetched by ``treeclip download``, with the taxa, licences and owners of their catalogs."""

    kind = "download"
    usage = "download:DIR"

    def locate(self, path: str) -> Path:
        folder = self.existing(path, "download", directory=True)
        self.status = folder / STATUS_FILE
        self.existing(str(self.status), "status table (run treeclip download first)", directory=False)
        return folder

    def records(self, part: DownloadPart | None = None) -> Iterator[Record | Problem]:
        self._folder = str(self.path)
        retried = self._retried([None]) if part is None else json.loads(Path(part.retried).read_text())
        for item in table_rows(self.status, "download: status table", self._columns, part and part.table):
            if isinstance(item, Problem):
                yield item
                continue
            table, line, row = item
            if retried.get(row["key"], line) == line:
                yield self._record(table, line, row)

    def parts(self, *, rows: int, prefix: str) -> list[DownloadPart]:
        """The status table's parts, with the last row of each retried URL key in ``{prefix}-retried.json``."""
        parts = table_parts(self.status, "download: status table", self._columns, rows=rows, prefix=prefix)
        retried = Path(f"{prefix}-retried.json")
        retried.write_text(json.dumps(self._retried(parts)))
        return [DownloadPart(part, str(retried)) for part in parts]

    def _retried(self, parts: list[TablePart | None]) -> dict[str, int]:
        """The row of the final attempt of each URL key with several rows (``--retry-failed``), without a
        per-URL map: pass one keeps a 64-bit digest per row (an array, not a dict) and finds the digests met
        more than once by sorting them in place; pass two keeps the rows of those digests only, by their
        exact key, so keys sharing a digest are still told apart."""
        repeated = _repeated_digests(self._keys(parts))
        last: dict[str, int] = {}
        again: set[str] = set()
        for key, line in self._keys(parts) if repeated else ():
            if _key_digest(key) in repeated:
                if key in last:
                    again.add(key)
                last[key] = line
        return {key: last[key] for key in again}

    def _keys(self, parts: list[TablePart | None]) -> Iterator[tuple[str, int]]:
        """(URL key, row number) of each readable row of the status table's `parts`, in order."""
        for part in parts:
            for item in table_rows(self.status, "download: status table", lambda t: {"key": t.find("key")}, part):
                if not isinstance(item, Problem):
                    yield item[2]["key"], item[1]

    def _columns(self, table: Table) -> dict[str, str | None] | Problem:
        found = {name: table.find(name) for name in COLUMNS}
        missing = [name for name in ("key", "outcome", "path") if found[name] is None]
        if missing:
            return Problem(table.where(1), f"not a treeclip download status table (no {', '.join(missing)} column)")
        return {**resolve(table.header, TAXON_ROLES, where=str(table.path)), **found}

    def _record(self, table: Table, line: int, row: dict[str, str]) -> Record | Problem:
        where = table.where(line)
        if row["outcome"] != "ok":
            return Problem(where, f"not downloaded: {row['reason'] or row['outcome']} ({row['url']})")
        image, refused = contained_path(self._folder, row["path"], allow_absolute=False)
        if refused or not os.path.isfile(image):
            return Problem(where, refused or f"downloaded image missing: {image}")
        taxon = taxon_of(row, where, strict=False)
        if isinstance(taxon, Problem):
            return taxon
        return Record(source=self.kind, source_id=f"{row['source']}:{row['source_id']}", path=image, taxon=taxon,
                      license=row["license"], owner=row["owner"], origin=where)


def _key_digest(key: str) -> int:
    """A URL key's 64-bit digest for pass one: Python's own string hash (fast; salted
    per process, which is fine as both passes run in one). Equal keys have equal digests; the converse is
    checked in pass two."""
    return hash(key)


def _repeated_digests(keys: Iterator[tuple[str, int]]) -> set[int]:
    """The digests of the keys that occur more than once: 8 bytes a row, sorted in place (an Arrow
    `value_counts` hash table costs ~90 bytes a row more), then neighbours compared."""
    import numpy as np  # noqa: PLC0415

    digests = array("q", (_key_digest(key) for key, _ in keys))
    ordered = np.frombuffer(digests, np.int64)
    ordered.sort()
    return set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
