"""`--exclude FILE`: species names, image hashes, paths or ids to keep out of a build (e.g. an eval set).

A file is read by its form (all through `treeclip.formats`):
- a table (``.csv``/``.tsv``/``.parquet``, or a first line naming a known column). Columns used, whichever
  are present: names (``binomial``, ``scientific_name``/``sciName``/``scientificName``, or ``species`` — a
  binomial, or an epithet joined to ``genus``, as in TreeOfLife-10M / Rare Species catalogs; BioCLIP's
  ``cls``/``class`` header is read by the column rules, so ``class`` is never taken for a rank); images
  (``sha256``; ``path``/``filepath``/``file_name`` resolved against the table's folder; ``source`` +
  ``source_id`` of a treeclip catalog; ``eol_content_id``, or the content id in an EOL file name
  ``<content>_<page>_eol-full-size-copy.jpg``);
- BioCLIP's ``seen_in_training.json`` / ``unseen_in_training.json`` (keys ``Genus species`` or
  ``Kingdom-...-epithet``; the EOL file names of the values exclude those images too);
- otherwise a plain list of species names, one per line (``#`` comments and blank lines ignored).

A name excludes the taxon whose scientific name ("Genus epithet", or "Genus" for a genus-level record) is
exactly that name after cleaning (authorities, years and case ignored). A file that yields nothing is an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from treeclip.errors import UsageError
from treeclip.formats import Table, compact_key, open_table, resolve
from treeclip.formats.species_lists import eol_content_id, key_taxon, read_json_list, read_name_lines
from treeclip.formats.tables import sniff_delimiter
from treeclip.taxonomy import Taxon, parse_binomial, taxon_from_fields

_NAME_COLUMNS = ("binomial", "scientific_name", "sciname", "scientificname")
_PATH_COLUMNS = ("path", "file_path", "filepath", "image_path", "file_name")
_KNOWN_COLUMNS = frozenset(compact_key(c) for c in (*_NAME_COLUMNS, *_PATH_COLUMNS, "species", "sha256",
                                                     "source_id", "eol_content_id", "genus"))


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

    def size(self) -> int:
        return len(self.names) + len(self.hashes) + len(self.paths) + len(self.ids)

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
                exclusions.ids.setdefault(f"eol:{content}", path.name)


def _add_table(exclusions: Exclusions, table: Table) -> None:
    columns = {
        **resolve(table.header, ("genus", "species", "scientific")),
        "binomial": table.find("binomial"),
        "sha256": table.find("sha256"),
        "path": table.find(*_PATH_COLUMNS),
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
        exclusions.hashes.setdefault(row["sha256"].lower(), origin)
    if row["path"]:
        exclusions.paths.setdefault(_resolved(folder / row["path"]), origin)
        if content := eol_content_id(row["path"]):
            exclusions.ids.setdefault(f"eol:{content}", origin)
    if row["source"] and row["source_id"]:
        exclusions.ids.setdefault(f"{row['source']}:{row['source_id']}", origin)
    if row["eol_content_id"]:
        exclusions.ids.setdefault(f"eol:{row['eol_content_id']}", origin)


def _row_name(row: dict[str, str]) -> str:
    full = row["binomial"] or row.get("scientific", "")
    if full:
        return normalize_name(full)
    species = row.get("species", "")
    if not species:
        return ""
    return normalize_name(species) if " " in species.strip() else normalize_name(species, genus=row.get("genus", ""))
