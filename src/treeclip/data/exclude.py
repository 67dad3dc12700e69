"""`--exclude FILE`: species names, image hashes, paths or ids to keep out of a build (e.g. an eval set).

A file is read by its form (all through `treeclip.formats`):
- a table (``.csv``/``.tsv``/``.parquet``, or a first line naming a known column). Columns used, whichever
  are present: names (``binomial``, ``scientific_name``/``sciName``/``scientificName``, or ``species`` — a
  binomial, or an epithet joined to ``genus``, as in TreeOfLife-10M / Rare Species catalogs; BioCLIP's
  ``cls``/``class`` header is read by the column rules, so ``class`` is never taken for a rank); images
  (``sha256``; a path column, one of `treeclip.formats.PATH_ALIASES` as in ``csv:`` sources, resolved against
  the table's folder; ``source`` + ``source_id`` of a treeclip catalog; ``eol_content_id``, or the content id
  in an EOL file name ``<content>_<page>_eol-full-size-copy.jpg``);
- BioCLIP's ``seen_in_training.json`` / ``unseen_in_training.json`` (keys ``Genus species`` or
  ``Kingdom-...-epithet``; the EOL file names of the values exclude those images too);
- otherwise a plain list of species names, one per line (``#`` comments and blank lines ignored).

A name excludes the taxon whose scientific name ("Genus epithet", or "Genus" for a genus-level record) is
exactly that name after cleaning (authorities, years and case ignored). A file that yields nothing is an error.

Image hashes, paths and ids can number millions (a TreeOfLife-10M catalog as an exclusion table), so they are
kept as `KeySet`s: sorted 16-byte digests with the index of the file each came from, ~18 bytes an entry,
never a Python string per row. Species names (tens of thousands at most) stay a dict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from treeclip.errors import UsageError
from treeclip.formats import PATH_ALIASES, Table, compact_key, open_table, resolve
from treeclip.formats.species_lists import eol_content_id, key_taxon, read_json_list, read_name_lines
from treeclip.formats.tables import sniff_delimiter
from treeclip.taxonomy import Taxon, parse_binomial, taxon_from_fields

_NAME_COLUMNS = ("binomial", "scientific_name", "sciname", "scientificname")
_KNOWN_COLUMNS = frozenset(compact_key(c) for c in (*_NAME_COLUMNS, *PATH_ALIASES, "species", "sha256",
                                                     "source_id", "eol_content_id", "genus"))


def normalize_name(text: str, genus: str = "") -> str:
    """The comparable form of a scientific name ("genus epithet" or "genus", cleaned, lowercase); "" if none.

    With `genus`, `text` is a species field (an epithet or a binomial) of a table row."""
    try:
        taxon = taxon_from_fields(genus=genus, species=text, strict=False) if genus else parse_binomial(text)
    except ValueError:
        return ""
    return taxon.scientific.lower()


class KeySet:
    """A set of strings, each with the name of the file it came from (the first file, for a repeated one),
    stored as sorted 16-byte BLAKE2b digests of the strings and a file index (a 128-bit digest makes a
    false match as likely as two random sha256 prefixes agreeing on 32 hex digits)."""

    _CHUNK = 65_536

    def __init__(self) -> None:
        self._files: list[str] = []
        self._pending: list[bytes] = []
        self._pending_file: list[int] = []
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self._digests = np.empty(0, "S16")
        self._file = np.empty(0, np.uint16)

    @staticmethod
    def _digest(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def add(self, text: str, file: str) -> None:
        if not self._files or self._files[-1] != file:
            self._files.append(file)
        self._pending.append(self._digest(text))
        self._pending_file.append(len(self._files) - 1)
        if len(self._pending) >= self._CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._chunks.append((np.array(self._pending, "S16"), np.array(self._pending_file, np.uint16)))
            self._pending, self._pending_file = [], []

    def _settle(self) -> None:
        """Merge added entries into the sorted arrays; the earliest entry of a repeated string wins."""
        self._flush()
        if self._chunks:
            digests = np.concatenate([self._digests, *(d for d, _ in self._chunks)])
            files = np.concatenate([self._file, *(f for _, f in self._chunks)])
            self._chunks = []
            self._digests, first = np.unique(digests, return_index=True)
            self._file = files[first]

    def get(self, text: str) -> str:
        """The file `text` came from, or "" when it is not in the set."""
        self._settle()
        if not len(self._digests):
            return ""
        digest = np.array([self._digest(text)], "S16")
        at = min(int(np.searchsorted(self._digests, digest)[0]), len(self._digests) - 1)
        return self._files[self._file[at]] if self._digests[at] == digest[0] else ""

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and bool(self.get(text))

    def __len__(self) -> int:
        self._settle()
        return len(self._digests)


@dataclass
class Exclusions:
    """What to keep out, with the file each entry came from (for the drop reason)."""

    names: dict[str, str] = field(default_factory=dict)
    hashes: KeySet = field(default_factory=KeySet)
    paths: KeySet = field(default_factory=KeySet)
    ids: KeySet = field(default_factory=KeySet)  # stable ids "source:source_id"

    def __bool__(self) -> bool:
        return bool(self.names or self.hashes or self.paths or self.ids)

    def size(self) -> int:
        return len(self.names) + len(self.hashes) + len(self.paths) + len(self.ids)

    def match(self, *, stable: str, path: str, taxon: Taxon, sha256: str) -> str:
        """The reason this image is excluded, or "" when it is not."""
        name = taxon.scientific.lower()
        if name and name in self.names:
            return f"excluded species {taxon.scientific!r} ({self.names[name]})"
        if file := self.hashes.get(sha256):
            return f"excluded image sha256 ({file})"
        if path and self.paths and (file := self.paths.get(_resolved(path))):
            return f"excluded image path ({file})"
        if file := self.ids.get(stable):
            return f"excluded image id ({file})"
        return ""


def load_exclusions(files: Iterable[str | Path]) -> Exclusions:
    """Read every `--exclude` file; `UsageError` for a missing or unreadable one, or one that yields nothing."""
    exclusions = Exclusions()
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise UsageError(f"--exclude {file}: no such file; give a species list or a catalog CSV/Parquet")
        before = exclusions.size()
        try:
            if path.suffix.lower() == ".json":
                _add_json(exclusions, path)
            elif _is_table(path):
                _add_table(exclusions, open_table(path, what="--exclude"))
            else:
                _add_names(exclusions, path)
        except (OSError, ValueError) as exc:  # ValueError: bad UTF-8, JSON or Parquet
            raise UsageError(f"--exclude {file}: cannot read it ({exc})") from None
        if exclusions.size() == before:
            raise UsageError(f"--exclude {file}: yields no species, hash, path or id to exclude; give a species "
                             "list, BioCLIP's *_in_training.json or a table with species/sha256/path columns")
    return exclusions


def _resolved(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _is_table(path: Path) -> bool:
    if path.suffix.lower() in (".csv", ".tsv", ".parquet"):
        return True
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    return any(compact_key(cell) in _KNOWN_COLUMNS for cell in first.split(sniff_delimiter(path)))


def _add_names(exclusions: Exclusions, path: Path) -> None:
    for _, text in read_name_lines(path):
        if name := normalize_name(text):
            exclusions.names.setdefault(name, path.name)


def _add_json(exclusions: Exclusions, path: Path) -> None:
    for key, images in read_json_list(path):
        try:
            name = key_taxon(key).scientific.lower()
        except ValueError:
            name = ""
        if name:
            exclusions.names.setdefault(name, path.name)
        for image in images:
            if content := eol_content_id(image):
                exclusions.ids.add(f"eol:{content}", path.name)


def _add_table(exclusions: Exclusions, table: Table) -> None:
    columns = {
        **resolve(table.header, ("genus", "species", "scientific")),
        "binomial": table.find("binomial"),
        "sha256": table.find("sha256"),
        "path": table.find(*PATH_ALIASES),
        "source": table.find("source"),
        "source_id": table.find("source_id"),
        "eol_content_id": table.find("eol_content_id"),
    }
    origin = table.path.name
    for item in table.rows(columns):
        if isinstance(item, tuple):
            _add_row(exclusions, item[1], table.path.parent, origin)


def _add_row(exclusions: Exclusions, row: dict[str, str], folder: Path, origin: str) -> None:
    if name := _row_name(row):
        exclusions.names.setdefault(name, origin)
    if row["sha256"]:
        exclusions.hashes.add(row["sha256"].lower(), origin)
    if row["path"]:
        exclusions.paths.add(_resolved(folder / row["path"]), origin)
        if content := eol_content_id(row["path"]):
            exclusions.ids.add(f"eol:{content}", origin)
    if row["source"] and row["source_id"]:
        exclusions.ids.add(f"{row['source']}:{row['source_id']}", origin)
    if row["eol_content_id"]:
        exclusions.ids.add(f"eol:{row['eol_content_id']}", origin)


def _row_name(row: dict[str, str]) -> str:
    full = row["binomial"] or row.get("scientific", "")
    if full:
        return normalize_name(full)
    species = row.get("species", "")
    if not species:
        return ""
    return normalize_name(species) if " " in species.strip() else normalize_name(species, genus=row.get("genus", ""))
