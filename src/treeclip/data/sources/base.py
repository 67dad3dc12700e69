"""What every source reader shares: the `Source` base class, CSV/TSV reading with line numbers, column
aliases, taxon checking and image lookup helpers."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from treeclip.errors import UsageError
from treeclip.formats import Table, open_table
from treeclip.formats.tables import TablePart
from treeclip.formats.columns import taxon_of, without_repeated_common
from treeclip.taxonomy import Taxon

from ..records import Problem, Record

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})

class Source(ABC):
    """A stream of `Record`s (and `Problem`s) from one data set on disk.

    Subclasses set `kind` and `params` (the names of the spec's optional extra fields, in positional
    order) and implement `records`. Constructors only check that the paths exist; reading happens lazily.
    """

    kind: ClassVar[str]
    params: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()
    usage: ClassVar[str]  # e.g. "bioscan:TSV[,IMAGE_ROOT]"

    def __init__(self, spec: str, path: str, options: Mapping[str, str], *,
                 columns: Mapping[str, str] | None = None, allow_absolute_paths: bool = False) -> None:
        self.spec = spec
        self.options = dict(options)
        self.columns = dict(columns or {})  # --columns role=COLUMN overrides for the source's tables
        self.allow_absolute_paths = allow_absolute_paths
        self.path = self.locate(path)

    @abstractmethod
    def locate(self, path: str) -> Path:
        """Check the spec's main path (and options) and return it absolute; UsageError when wrong."""

    @abstractmethod
    def records(self, part: Any = None) -> Iterator[Record | Problem]:
        """Yield one Record per usable image and one Problem per bad row or file, streaming: of the whole
        source, or of one of its `parts`."""

    def parts(self, *, rows: int, prefix: str) -> Sequence[Any]:
        """The parts `records(part)` reads the source in, as separate jobs, each of about `rows` rows, their
        records and problems in the whole source's order when taken part after part. This may read the source
        once (a CSV/TSV table is staged to Arrow files ``{prefix}-*``); a source that cannot be cut is one
        part, None (the whole source)."""
        return [None]

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


def open_source_table(path: Path, what: str) -> Table | Problem:
    """The table at `path`, or a Problem naming it when it cannot be read (the other sources still run)."""
    try:
        return open_table(path, what=what)
    except UsageError as exc:
        return Problem(str(path), str(exc))


def table_rows(path: Path, what: str, choose: Callable[[Table], Mapping[str, str | None] | Problem],
               part: TablePart | None = None) -> Iterator[tuple[Table, int, dict[str, str]] | Problem]:
    """(table, row number, values) of every row of a source's table (or of its `part`, from `table_parts`), for
    the columns `choose` picks from its header.

    Problems: a table that cannot be read, a header `choose` refuses or that names a used column twice, each
    bad row, and a table without data rows (a header-only file must not look like an empty successful source;
    a part has no rows only when its table has none)."""
    table = _chosen(path, what, choose)
    if isinstance(table, Problem):
        yield table
        return
    table, columns = table
    for item in table.rows(columns, part):
        yield item if isinstance(item, Problem) else (table, *item)
    if not table.read:
        yield Problem(table.where(), "no data rows (only a header)")


def table_parts(path: Path, what: str, choose: Callable[[Table], Mapping[str, str | None] | Problem], *,
                rows: int, prefix: str) -> list[TablePart | None]:
    """A source table's parts of about `rows` rows for `table_rows` (`Table.parts`: a CSV/TSV is staged to
    ``{prefix}-NNNNNN.arrow`` files); one part, the whole table, when its header is refused (its problem is
    then reported by reading it whole)."""
    table = _chosen(path, what, choose)
    return [None] if isinstance(table, Problem) else list(table[0].parts(table[1], rows=rows, prefix=prefix))


def _chosen(path: Path, what: str, choose: Callable[[Table], Mapping[str, str | None] | Problem]
            ) -> tuple[Table, Mapping[str, str | None]] | Problem:
    """The table at `path` and the columns `choose` picks, or the Problem with either."""
    table = open_source_table(path, what)
    if isinstance(table, Problem):
        return table
    columns = choose(table)
    if isinstance(columns, Problem):
        return columns
    try:
        table.check_unique([column for column in columns.values() if column])
    except UsageError as exc:  # a doubled column: which one is meant is unknowable
        return Problem(table.where(1), str(exc).removeprefix(f"{table.path}: "))
    return table, columns


def contained_path(base: str, value: str, *, allow_absolute: bool) -> tuple[str, str]:
    """(path, "") of the image `value` of a table row joined to the table's absolute folder `base`, or
    ("", why it is refused): absolute paths and ``..`` escapes leave the folder and are refused unless
    `allow_absolute` (a lexical check: symlinks the user placed in the folder are followed, as for a folder
    source). Plain strings, not `Path`s: pathlib interns every part, which a 10M-row table pays for."""
    candidate = os.path.expanduser(value)
    resolved = os.path.normpath(os.path.join(base, candidate))
    if allow_absolute or (not os.path.isabs(candidate) and resolved.startswith(base + os.sep)):
        return resolved, ""
    return "", f"image path {value!r} leaves the table's folder {base} (pass --allow-absolute-paths to allow it)"


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
    return without_repeated_common(taxon)


def first_existing(candidates: Iterable[Path]) -> Path | None:
    """The first candidate that is a file, else None."""
    return next((path for path in candidates if path.is_file()), None)


def subdirs(path: Path) -> list[Path]:
    """The visible sub-folders of `path`, sorted by name."""
    return sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def iter_images(folder: Path) -> Iterator[Path]:
    """Image files (by extension) below `folder`, in a stable sorted depth-first order (a folder's own images,
    then each sub-folder's); hidden ones skipped."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(current) / name for name in sorted(files) if is_image_name(name))


def is_image_name(name: str) -> bool:
    """Whether a file name is a visible image's (by extension), as `iter_images` takes it."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (ijson and tarfile messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def int_text(value: str) -> str:
    """An integer id as text, undoing the float formatting pandas gives nullable ints ("18.0" → "18")."""
    head, dot, tail = value.partition(".")
    return head if dot and head.isdigit() and set(tail) <= {"0"} else value


def taxa_by_key(table: Table, columns: Mapping[str, str], key: str, *, normalise: Callable[[str], str] = str,
                keep: Container[str] | None = None) -> Generator[Problem, None, dict[str, Taxon]]:
    """Yield each unusable row's problem; return {normalise(row[key]): Taxon} for the rest (`columns`: the taxon
    roles' columns plus `key`; lineages with a gap keep their deepest unbroken run). With `keep`, only the rows
    whose key is in it are parsed and reported (the others, and the table's bad rows, are skipped unread)."""
    taxa: dict[str, Taxon] = {}
    for item in table.rows(columns):
        if isinstance(item, Problem) or (keep is not None and normalise(item[1][key]) not in keep):
            if keep is None:
                yield item  # type: ignore[misc]
            continue
        line, row = item
        taxon = taxon_of(row, table.where(line), strict=False)
        if isinstance(taxon, Problem):
            yield taxon
        else:
            taxa[normalise(row[key])] = taxon
    return taxa
