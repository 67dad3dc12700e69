"""`--exclude FILE`: species names, image hashes, paths or ids to keep out of a build (e.g. an eval set).

A file is read as a table when it is Parquet (``.parquet``) or CSV/TSV (``.csv``/``.tsv``, or a first line
that names a known column); otherwise as a plain list of species names, one per line (``#`` comments and
blank lines ignored). Table columns used, case-insensitively, whichever are present:

- names: ``binomial``, ``scientific_name``, ``sciname``, or ``species`` (a binomial, or an epithet joined
  to the ``genus`` column, as in TreeOfLife-10M / Rare Species catalogs);
- images: ``sha256``; ``path``/``file_path``/``filepath``/``image_path``/``file_name`` (relative paths
  resolve against the table's folder); ``source`` + ``source_id`` (a treeclip catalog); ``eol_content_id``.

A name excludes the taxon whose scientific name ("Genus epithet", or "Genus" for a genus-level record) is
exactly that name after cleaning (authorities, years and case ignored).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon, parse_binomial, taxon_from_fields

_NAME_COLUMNS = ("binomial", "scientific_name", "sciname", "species")
_PATH_COLUMNS = ("path", "file_path", "filepath", "image_path", "file_name")
_KNOWN_COLUMNS = frozenset(_NAME_COLUMNS + _PATH_COLUMNS + ("sha256", "source_id", "eol_content_id", "genus"))


def normalize_name(text: str, genus: str = "") -> str:
    """The comparable form of a scientific name ("genus epithet" or "genus", cleaned, lowercase); "" if none.

    With `genus`, `text` is a species field (an epithet or a binomial) of a table row."""
    try:
        taxon = taxon_from_fields(genus=genus, species=text, strict=False) if genus else parse_binomial(text)
    except ValueError:
        return ""
    return taxon.scientific.lower()


@dataclass
class Exclusions:
    """What to keep out, with the file each entry came from (for the drop reason)."""

    names: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # stable ids "source:source_id"

    def __bool__(self) -> bool:
        return bool(self.names or self.hashes or self.paths or self.ids)

    def match(self, *, stable: str, path: str, taxon: Taxon, sha256: str) -> str:
        """The reason this image is excluded, or "" when it is not."""
        name = taxon.scientific.lower()
        if name and name in self.names:
            return f"excluded species {taxon.scientific!r} ({self.names[name]})"
        if sha256 in self.hashes:
            return f"excluded image sha256 ({self.hashes[sha256]})"
        resolved = _resolved(path) if path and self.paths else ""
        if resolved in self.paths:
            return f"excluded image path ({self.paths[resolved]})"
        if stable in self.ids:
            return f"excluded image id ({self.ids[stable]})"
        return ""


def load_exclusions(files: Iterable[str | Path]) -> Exclusions:
    """Read every `--exclude` file; `UsageError` for a missing or unreadable one."""
    exclusions = Exclusions()
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise UsageError(f"--exclude {file}: no such file; give a species list or a catalog CSV/Parquet")
        try:
            if _is_table(path):
                _add_rows(exclusions, _table_rows(path), path)
            else:
                _add_names(exclusions, path)
        except (OSError, ValueError, csv.Error) as exc:  # ValueError: bad UTF-8 or Parquet
            raise UsageError(f"--exclude {file}: cannot read it ({exc})") from None
    return exclusions


def _resolved(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _is_table(path: Path) -> bool:
    if path.suffix.lower() in (".csv", ".tsv", ".parquet"):
        return True
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    return any(cell.strip().lower() in _KNOWN_COLUMNS for cell in first.replace("\t", ",").split(","))


def _table_rows(path: Path) -> Iterator[Mapping[str, str]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 - heavy, only for Parquet exclusion files

        for row in pq.read_table(path).to_pylist():
            yield {str(k).lower(): "" if v is None else str(v) for k, v in row.items()}
        return
    with path.open(newline="", encoding="utf-8-sig") as handle:
        first = handle.readline()
        handle.seek(0)
        delimiter = "\t" if path.suffix.lower() == ".tsv" or first.count("\t") > first.count(",") else ","
        for row in csv.DictReader(handle, delimiter=delimiter):
            yield {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}


def _add_names(exclusions: Exclusions, path: Path) -> None:
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        text = line.split("#", 1)[0].strip()
        if text and (name := normalize_name(text)):
            exclusions.names.setdefault(name, path.name)


def _add_rows(exclusions: Exclusions, rows: Iterable[Mapping[str, str]], path: Path) -> None:
    for row in rows:
        name = _row_name(row)
        if name:
            exclusions.names.setdefault(name, path.name)
        if row.get("sha256"):
            exclusions.hashes.setdefault(row["sha256"].lower(), path.name)
        image = next((row[c] for c in _PATH_COLUMNS if row.get(c)), "")
        if image:
            exclusions.paths.setdefault(_resolved(path.parent / image), path.name)
        if row.get("source") and row.get("source_id"):
            exclusions.ids.setdefault(f"{row['source']}:{row['source_id']}", path.name)
        if row.get("eol_content_id"):
            exclusions.ids.setdefault(f"eol:{row['eol_content_id']}", path.name)


def _row_name(row: Mapping[str, str]) -> str:
    for column in ("binomial", "scientific_name", "sciname"):
        if row.get(column):
            return normalize_name(row[column])
    species = row.get("species", "")
    if not species:
        return ""
    return normalize_name(species) if " " in species.strip() else normalize_name(species, genus=row.get("genus", ""))
