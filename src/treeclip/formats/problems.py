"""A bad row, file or image: reported with where it happened and why, never fatal on its own; and
``problems.csv`` (``file, line, reason``), the full list a command writes next to its output."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class Problem:
    """A bad source row or file: reported, never fatal."""

    origin: str  # "file:line" or "file"
    reason: str


PROBLEM_COLUMNS = ("file", "line", "reason")
MAX_EXAMPLES = 20


def problem_kind(reason: str) -> str:
    """The reason without its particulars ("image not found: /x/y.jpg" → "image not found"), for counting."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip() or reason


def split_origin(origin: str) -> tuple[str, str]:
    """("file", "line") of a "file:line" origin ("" for the line when there is none)."""
    head, colon, tail = origin.rpartition(":")
    return (head, tail) if colon and tail.isdigit() else (origin, "")


def problems_csv(problems: Iterable[Problem]) -> str:
    """The text of ``problems.csv``: one row per problem with its file, line and reason."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PROBLEM_COLUMNS)
    for problem in problems:
        writer.writerow([*split_origin(problem.origin), problem.reason])
    return buffer.getvalue()


def summary_lines(problems: Sequence[Problem], *, examples: int = MAX_EXAMPLES) -> list[str]:
    """At most `examples` problems as "origin: reason" lines, then one count line per kind of reason."""
    lines = [f"{p.origin}: {p.reason}" for p in problems[:examples]]
    if len(problems) > examples:
        lines.append(f"... and {len(problems) - examples} more")
    counts = Counter(problem_kind(p.reason) for p in problems)
    lines += [f"{count:>8}  {kind}" for kind, count in counts.most_common()]
    return lines
