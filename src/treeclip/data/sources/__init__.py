"""Source readers: turn a data set on disk into a stream of `Record`s (and `Problem`s for bad rows/files).

A source is named by a spec ``KIND:PATH[,EXTRA...]``. Extra fields are positional, in the order the kind
lists them, or ``name=value``; commas separate fields, so paths cannot contain commas.

=========  =============================================================  ===============================
kind       spec                                                           extras
=========  =============================================================  ===============================
inat21     ``inat21:ROOT``                                                 none
bioscan    ``bioscan:TSV[,IMAGE_ROOT]``                                    ``images``
eol        ``eol:MANIFEST_CSV[,IMAGE_ROOT],TAXONOMY``                      ``images``, ``taxonomy`` (req.)
tol10m     ``tol10m:CATALOG_CSV,IMAGE_ROOT``                               ``images`` (required)
csv        ``csv:FILE``                                                    none
folder     ``folder:ROOT[,TAXONOMY_CSV]``                                  ``taxonomy``
wds        ``wds:GLOB``  (a shard file, a glob, or a folder of ``.tar``)  none
download   ``download:DIR`` (the output of ``treeclip download``)         none
=========  =============================================================  ===============================

Each module's docstring describes its layout. Every reader streams (memory grows with the number of taxa,
never with the number of images), sets `Record.origin` to ``file:row`` (the table row as a spreadsheet numbers
it, `treeclip.formats.tables`; ``file:images[i]`` for JSON, ``shard:key`` for tars), and turns every bad row or
file into a `Problem` without stopping. The sources that read one main table row by row (csv, tol10m, bioscan,
download, eol's manifest) can be read in parts (`Source.parts`, then `records(part)` per part: the build's plan
runs a job per part), and so can wds (a part per tar) and folder (runs of class folders); inat21 is one part.
"""

from __future__ import annotations

from collections.abc import Mapping

from treeclip.errors import UsageError

from .base import Source
from .bioscan import BioscanSource
from .csvfile import CsvSource
from .download import DownloadSource
from .eol import EolSource
from .folder import FolderSource
from .inat21 import INat21Source
from .tol10m import Tol10mSource
from .wds import WdsSource

SOURCES: dict[str, type[Source]] = {
    cls.kind: cls for cls in (INat21Source, BioscanSource, EolSource, Tol10mSource, CsvSource, FolderSource, WdsSource,
                              DownloadSource)
}
KINDS: tuple[str, ...] = tuple(SOURCES)


def open_source(spec: str, *, columns: Mapping[str, str] | None = None, allow_absolute_paths: bool = False) -> Source:
    """The Source a ``KIND:PATH[,EXTRA]`` spec names; UsageError for an unknown kind or a missing path.

    `columns` ({role: column}, from ``--columns``) overrides the column rules of the source's tables;
    `allow_absolute_paths` lets a table name images outside its own folder."""
    kind, colon, rest = spec.partition(":")
    cls = SOURCES.get(kind.strip().lower()) if colon else None
    if cls is None:
        raise UsageError(
            f"source {spec!r}: unknown kind {kind.strip()!r}; use KIND:PATH[,EXTRA] with KIND one of {', '.join(KINDS)}"
        )
    path, *extras = (field.strip() for field in rest.split(","))
    if not path:
        raise UsageError(f"source {spec!r}: no path given (syntax: {cls.usage})")
    options = _options(spec, cls, [extra for extra in extras if extra])
    return cls(spec, path, options, columns=columns, allow_absolute_paths=allow_absolute_paths)


def _options(spec: str, cls: type[Source], extras: list[str]) -> dict[str, str]:
    """Positional and name=value extras mapped to the kind's parameter names."""
    options: dict[str, str] = {}
    positional = [extra for extra in extras if "=" not in extra]
    if len(positional) > len(cls.params):
        raise UsageError(f"source {spec!r}: too many fields (syntax: {cls.usage})")
    options.update(zip(cls.params, positional))
    for extra in extras:
        if "=" in extra:
            name, _, value = extra.partition("=")
            name = name.strip().lower()
            if name not in cls.params:
                known = ", ".join(f"{p}=" for p in cls.params) or "none"
                raise UsageError(f"source {spec!r}: unknown option {name!r} (options: {known}; syntax: {cls.usage})")
            options[name] = value.strip()
    missing = [name for name in cls.required if not options.get(name)]
    if missing:
        raise UsageError(f"source {spec!r}: missing {', '.join(missing)} field (syntax: {cls.usage})")
    return options


__all__ = ["KINDS", "SOURCES", "Source", "open_source"]
