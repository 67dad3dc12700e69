"""Atomic, durable file output and exclusive output locks.

`atomic_path` writes to a temporary name in the same folder, flushes it to disk, renames it into place and
flushes the folder, so a killed process or a power cut leaves either the old file or the new one, never a
mix. `OutputLock` is an exclusive ``fcntl.flock`` on ``OUTPUT.lock`` beside an output, so a second process
writing the same output is refused instead of interleaving with (or deleting) the first one's work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from treeclip.errors import UsageError

TMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".lock"


def temp_path(path: Path) -> Path:
    """A temporary sibling of `path` unique to this process (so concurrent writers never collide)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's or a folder's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is synced and replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if tmp.is_file():
            fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
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


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file guarding an output: ``OUTPUT.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


class OutputLock:
    """An exclusive lock on an output, held until `release` (or the process ends, however it ends).

    The lock file also keeps a short note from its holder (`note`, `previous_note`), e.g. how much of the
    output is known to be complete; it survives a kill, so the next holder reads what the last one knew.
    A second process asking for the lock gets a `UsageError` naming the output and the holder's pid.
    """

    def __init__(self, output: str | os.PathLike[str], *, option: str = "--output",
                 lock_file: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(lock_file) if lock_file is not None else lock_path(output)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = re.search(r"pid (\d+)", self._read())
            self.release()
            raise UsageError(f"{option} {os.fspath(output)} is being written by another process"
                             f"{f' (pid {holder.group(1)})' if holder else ''}; wait for it to finish or "
                             f"choose another {option}") from None
        self.previous_note = re.sub(r"^pid \d+ ?", "", self._read()).strip()
        self.note(self.previous_note)

    def _read(self) -> str:
        assert self._fd is not None
        return os.pread(self._fd, 4096, 0).decode("utf-8", errors="replace")

    def note(self, text: str) -> None:
        """Replace the note (one line, prefixed with this process's pid)."""
        assert self._fd is not None
        data = f"pid {os.getpid()} {text}".strip().encode() + b"\n"
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
