"""What every source reader shares: the `Source` base class, CSV/TSV reading with line numbers, column
aliases, taxon checking and image lookup helpers."""

from __future__ import annotations

import csv
import functools
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon, taxon_from_fields

from ..records import Problem, Record

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})

# normalised header name → taxon_from_fields keyword; first match wins
RANK_ALIASES: dict[str, tuple[str, ...]] = {
    "kingdom": ("kingdom",),
    "phylum": ("phylum", "division"),
    "cls": ("class", "cls", "class_"),
    "order": ("order",),
    "family": ("family",),
    "genus": ("genus",),
    "species": ("species", "specific_epithet", "epithet"),
    "common": ("common", "common_name", "vernacular_name", "vernacularname", "vernacular"),
}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class Source(ABC):
    """A stream of `Record`s (and `Problem`s) from one data set on disk.

    Subclasses set `kind` and `params` (the names of the spec's optional extra fields, in positional
    order) and implement `records`. Constructors only check that the paths exist; reading happens lazily.
    """

    kind: ClassVar[str]
    params: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()
    usage: ClassVar[str]  # e.g. "bioscan:TSV[,IMAGE_ROOT]"

    def __init__(self, spec: str, path: str, options: Mapping[str, str]) -> None:
        self.spec = spec
        self.options = dict(options)
        self.path = self.locate(path)

    @abstractmethod
    def locate(self, path: str) -> Path:
        """Check the spec's main path (and options) and return it absolute; UsageError when wrong."""

    @abstractmethod
    def records(self) -> Iterator[Record | Problem]:
        """Yield one Record per usable image and one Problem per bad row or file, streaming."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def existing(self, value: str, what: str, *, directory: bool) -> Path:
        """`value` as an absolute path to an existing directory (or file); UsageError otherwise."""
        path = Path(value).expanduser().resolve()
        if not (path.is_dir() if directory else path.is_file()):
            kind = "directory" if directory else "file"
            raise UsageError(f"source {self.spec!r}: {what} {kind} not found: {value} (syntax: {self.usage})")
        return path


def origin(path: str | os.PathLike[str], line: int) -> str:
    """'file:line' for Problems and Record.origin."""
    return f"{path}:{line}"


def normalise_header(name: str) -> str:
    """'EOL content ID' → 'eol_content_id'; 'Class ' → 'class'."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def find_column(columns: Sequence[str], aliases: Sequence[str]) -> str | None:
    """The first of `aliases` present among the (normalised) `columns`, else None."""
    present = set(columns)
    return next((alias for alias in aliases if alias in present), None)


def guess_delimiter(path: Path, header: str) -> str:
    """Tab for .tsv/.tab files or a header with tabs and no commas; comma otherwise."""
    if path.suffix.lower() in {".tsv", ".tab"}:
        return "\t"
    return "\t" if "\t" in header and "," not in header else ","


@contextmanager
def open_table(path: Path) -> Iterator[tuple[list[str], Iterator[tuple[int, dict[str, str]] | Problem]]]:
    """(normalised header, rows) of a CSV/TSV file; rows stream as (line number, {column: stripped value}).

    A row with the wrong number of fields, or one the csv module cannot parse, becomes a Problem and the
    reading continues. Undecodable bytes are replaced (U+FFFD) rather than stopping the file. An unreadable
    header gives an empty header and a single Problem.
    """
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        header_line = handle.readline()
        handle.seek(0)
        reader = csv.reader(handle, delimiter=guess_delimiter(path, header_line), strict=True)
        try:
            header = [normalise_header(name) for name in next(reader)]
        except (StopIteration, csv.Error) as exc:
            yield [], iter([Problem(origin(path, 1), f"no readable header row ({str(exc) or 'empty file'})")])
            return
        yield header, _rows(path, reader, header)


def _rows(path: Path, reader: csv.Reader, header: list[str]) -> Iterator[tuple[int, dict[str, str]] | Problem]:
    while True:
        previous = reader.line_num
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Problem(origin(path, reader.line_num), f"malformed row: {exc}")
            if reader.line_num == previous:
                return
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            yield Problem(origin(path, reader.line_num), f"expected {len(header)} fields, found {len(row)}")
            continue
        yield reader.line_num, {name: value.strip() for name, value in zip(header, row, strict=True)}


def rank_columns(columns: Sequence[str]) -> dict[str, str]:
    """taxon_from_fields keyword → column name, for the rank/common columns present."""
    found = {}
    for keyword, aliases in RANK_ALIASES.items():
        column = find_column(columns, aliases)
        if column is not None:
            found[keyword] = column
    return found


def fields_taxon(where: str, fields: Mapping[str, str]) -> Taxon | Problem:
    """`taxon_from_fields(**fields)` checked like `checked_taxon`, cached: big tables repeat a few names."""
    result = _cached_fields_taxon(tuple(sorted(fields.items())))
    return Problem(where, result) if isinstance(result, str) else result


@functools.lru_cache(maxsize=1 << 16)
def _cached_fields_taxon(items: tuple[tuple[str, str], ...]) -> Taxon | str:
    result = checked_taxon("", taxon_from_fields, **dict(items))
    return result.reason if isinstance(result, Problem) else result


def checked_taxon(where: str, parse: Callable[..., Taxon | None], *args: Any, **kwargs: Any) -> Taxon | Problem:
    """`parse(*args, **kwargs)` as a Taxon, or a Problem at `where` when the names are unusable or absent.

    A common name that merely repeats the scientific or taxonomic name (TreeOfLife-10M's fallback) is
    dropped, so that the fallback is applied once, downstream, from the aligned lineage.
    """
    try:
        taxon = parse(*args, **kwargs)
    except ValueError as exc:
        return Problem(where, f"unusable taxon names: {exc}")
    if taxon is None or taxon.depth == 0:
        return Problem(where, "no taxonomic names")
    common = taxon.common.casefold()
    if common and common in (taxon.scientific.casefold(), taxon.taxonomic.casefold()):
        return Taxon(taxon.lineage)
    return taxon


def first_existing(candidates: Iterable[Path]) -> Path | None:
    """The first candidate that is a file, else None."""
    return next((path for path in candidates if path.is_file()), None)


def subdirs(path: Path) -> list[Path]:
    """The visible sub-folders of `path`, sorted by name."""
    return sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def iter_images(folder: Path) -> Iterator[Path]:
    """Image files (by extension) below `folder`, in a stable sorted depth-first order; hidden ones skipped."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(current) / name


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (ijson and tarfile messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def int_text(value: str) -> str:
    """An integer id as text, undoing the float formatting pandas gives nullable ints ("18.0" → "18")."""
    head, dot, tail = value.partition(".")
    return head if dot and head.isdigit() and set(tail) <= {"0"} else value
