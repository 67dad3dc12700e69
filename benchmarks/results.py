"""``benchmarks/RESULTS.md``: one marked section per benchmark, each rewritten by its own benchmark alone.

A section lies between ``<!-- NAME: begin -->`` and ``<!-- NAME: end -->``. `write_section` replaces that
span and leaves every other byte of the file as it was (other benchmarks' sections, hand-written notes); a
section not in the file yet is appended. The file is replaced atomically, so a crash never leaves it torn.
"""

from __future__ import annotations

import re
from pathlib import Path

from treeclip.atomic import atomic_write

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# treeclip benchmark results\n"


def markers(name: str) -> tuple[str, str]:
    """The begin and end comment lines of section `name`."""
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Put `body` (markdown) as section `name` of the results file at `path`: in place of the section's old
    text, else at the end (a new file starts with the title)."""
    begin, end = markers(name)
    if begin in body or end in body:
        raise ValueError(f"section {name!r}: the body must not hold its own markers")
    block = f"{begin}\n{body.strip()}\n{end}\n"
    current = path.read_text(encoding="utf-8") if path.is_file() else TITLE
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if len(pattern.findall(current)) > 1:
        raise ValueError(f"{path}: section {name!r} appears more than once; remove the stale copy by hand")
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current)
    else:
        updated = current.rstrip("\n") + "\n\n" + block
    atomic_write(path, updated)
