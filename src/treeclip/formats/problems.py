"""A bad row, file or image: reported with where it happened and why, never fatal on its own; and
``problems.csv`` (``file, line, reason``), the full list a command writes next to its output (`problems_csv`,
or `ProblemLog`, which appends to the file as problems are met, for lists that grow with the input)."""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Problem:
    """A bad source row or file: reported, never fatal."""

    origin: str  # "file:line" or "file"
    reason: str


PROBLEMS = "problems.csv"  # the file name a command gives its problem list
PROBLEM_COLUMNS = ("file", "line", "reason")
MAX_EXAMPLES = 20


_PARTICULARS = (
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"),  # quoted names and ids
    (re.compile(r"\S*/\S*"), "…"),  # paths and URLs
    (re.compile(r"\b\d+\b"), "N"),  # ids, sizes, line numbers
)


def problem_kind(reason: str) -> str:
    """The reason without its particulars, for counting: "image not found: /x/y.jpg" → "image not found",
    "source id 'a1' repeated; kept the first" → "source id '…' repeated; kept the first"."""
    kind = re.split(r"[:(]", reason, maxsplit=1)[0].strip() or reason
    for particular, placeholder in _PARTICULARS:
        kind = particular.sub(placeholder, kind)
    return kind


def split_origin(origin: str) -> tuple[str, str]:
    """("file", "line") of a "file:line" origin ("" for the line when there is none)."""
    head, colon, tail = origin.rpartition(":")
    return (head, tail) if colon and tail.isdigit() else (origin, "")


def problems_csv(problems: Iterable[Problem]) -> str:
    """The text of ``problems.csv``: one row per problem with its file, line and reason."""
    buffer = io.StringIO()
    _write_rows(buffer, problems, header=True)
    return buffer.getvalue()


def _write_rows(handle: TextIO, problems: Iterable[Problem], *, header: bool = False) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    if header:
        writer.writerow(PROBLEM_COLUMNS)
    for problem in problems:
        writer.writerow([*split_origin(problem.origin), problem.reason])


def read_problems(path: str | Path) -> Iterator[Problem]:
    """The problems of a ``problems.csv`` file, in its order, one row at a time."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        next(rows, None)
        for file, line, reason in rows:
            yield Problem(f"{file}:{line}" if line else file, reason)


class ProblemLog:
    """A ``problems.csv`` file (with its header) that problems are appended to as they are met,
    `batch_rows` per write, so memory holds one batch whatever their number; iterating reads the file back
    in order."""

    batch_rows = 4096

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._held: list[Problem] = []
        self._count = 0
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            _write_rows(handle, (), header=True)

    def append(self, problem: Problem) -> None:
        self._held.append(problem)
        self._count += 1
        if len(self._held) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        """Write the problems held so far to the file."""
        if self._held:
            with open(self.path, "a", newline="", encoding="utf-8") as handle:
                _write_rows(handle, self._held)
            self._held = []

    def move(self, path: str | Path) -> None:
        """Flush, then rename the file to `path` (same filesystem: the rename is atomic)."""
        self.flush()
        os.replace(self.path, path)
        self.path = Path(path)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Problem]:
        self.flush()
        return read_problems(self.path)


def summary_lines(problems: Iterable[Problem], *, examples: int = MAX_EXAMPLES) -> list[str]:
    """At most `examples` problems as "origin: reason" lines, then one count line per kind of reason (one
    pass over `problems`, which may be a `ProblemLog`: only the examples and the counts are held)."""
    lines: list[str] = []
    counts: Counter[str] = Counter()
    for problem in problems:
        if len(lines) < examples:
            lines.append(f"{problem.origin}: {problem.reason}")
        counts[problem_kind(problem.reason)] += 1
    total = sum(counts.values())
    if total > examples:
        lines.append(f"... and {total - examples} more")
    lines += [f"{count:>8}  {kind}" for kind, count in counts.most_common()]
    return lines
