"""Atomic file output: write to a temporary name in the same folder, then `os.replace` it into place."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A temporary sibling of `path` unique to this process (so concurrent writers never collide)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text is UTF-8 encoded) to `path` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def is_temp_file(path: Path) -> bool:
    """True for a leftover temporary file written by `atomic_path`."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
