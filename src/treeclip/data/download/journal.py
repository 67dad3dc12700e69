"""``status.csv``: the download's status table and its resume journal, one file.

One row per URL tried, appended as soon as the URL is settled (the image is already in place) and flushed
(synced to disk at least once a second): ``key, url, outcome (ok|error), reason, http_status, bytes, sha256,
content_type, path, source, source_id, license, owner, kingdom ... species, common, origin, attempts``.
Values never hold line breaks (they are replaced by spaces), so one row is one line and a kill can only leave
a torn last line, which the next run cuts off (`repair`) before appending. `path` is relative to the
download folder.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

from treeclip.taxonomy import RANK_NAMES

STATUS_FILE = "status.csv"
STATUS_COLUMNS = ("key", "url", "outcome", "reason", "http_status", "bytes", "sha256", "content_type", "path",
                  "source", "source_id", "license", "owner", *RANK_NAMES, "common", "origin", "attempts")
OK, ERROR = "ok", "error"
SYNC_EVERY_S = 1.0


def digest(key: str) -> bytes:
    """12 bytes of a URL key (a hex sha256 prefix): what the resume and repeat checks keep in memory per URL
    (about 100 bytes with the set or dict entry, against about 250 for the hex text and its origin)."""
    return bytes.fromhex(key[:24])


def _line(values: Mapping[str, object]) -> str:
    buffer = io.StringIO()
    row = [" ".join(str(values.get(name, "")).splitlines()) for name in STATUS_COLUMNS]
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


def repair(path: Path) -> int:
    """Cut a torn last line (no line end) left by a kill; the number of bytes removed."""
    size = path.stat().st_size
    with open(path, "rb+") as handle:
        handle.seek(max(0, size - (1 << 16)))
        tail = handle.read()
        if not tail or tail.endswith(b"\n"):
            return 0
        keep = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        handle.truncate(keep)
        return size - keep


def read_journal(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a status table, as dicts (a missing file has none)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


class Journal:
    """The status table open for appending, after repairing it; `done` maps the `digest` of each URL key
    already settled to whether it succeeded."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATUS_FILE
        self.torn_bytes = repair(self.path) if self.path.is_file() else 0
        self.done: dict[bytes, bool] = {}
        for row in read_journal(self.path):  # a retried URL's last row wins
            self.done[digest(row["key"])] = row["outcome"] == OK
        fresh = not self.path.is_file() or self.path.stat().st_size == 0
        self._handle: TextIO = open(self.path, "a", encoding="utf-8", newline="")
        self._synced = 0.0
        if fresh:
            self._append(",".join(STATUS_COLUMNS) + "\n")

    def record(self, values: Mapping[str, object]) -> None:
        """Append one settled URL durably."""
        self._append(_line(values))

    def _append(self, text: str) -> None:
        """Write and flush to the OS (a killed process loses nothing flushed); sync to disk at most every
        `SYNC_EVERY_S` (a power cut loses at most that much, and those images are recovered from disk)."""
        self._handle.write(text)
        self._handle.flush()
        now = time.monotonic()
        if now - self._synced >= SYNC_EVERY_S:
            os.fsync(self._handle.fileno())
            self._synced = now

    def close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
