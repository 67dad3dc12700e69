"""`download`: fetch every image of some URL catalogs into a folder that ``treeclip build --source
download:DIR`` reads.

The folder: ``images/XX/KEY.EXT`` (KEY = a hash of the URL, XX its first two characters), ``status.csv``
(the status table and resume journal, see `journal`), ``problems.csv`` (catalog rows that named nothing to
fetch) and ``status.csv.lock`` (one writer at a time).

Resuming (running again with the same folder) fetches only URLs that are not yet in the status table.
An image is written under its final name (atomically) before its row is appended, so a kill between the
two leaves an image without a row: the next run finds it, checks it and records it without fetching it
again ("recovered"). Only requests in flight at the kill are repeated. The same URL in several catalog rows
is fetched once; the later rows are problems ("repeated URL").
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeclip.atomic import OutputLock, atomic_write
from treeclip.formats.problems import problems_csv

from ..images import sha256_bytes
from ..records import Problem
from .catalogs import Task, read_catalog
from .fetch import IMAGE_FORMATS, Fetched, Fetcher, image_extension
from .journal import ERROR, OK, STATUS_FILE, Journal, digest

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
PROBLEMS_FILE = "problems.csv"
RECOVERED = "recovered: written by an earlier run that stopped before recording it"


@dataclass
class Summary:
    """What a download run did: outcome counts, error reasons, catalog problems."""

    fetched: int = 0  # images fetched and written by this run
    skipped: int = 0  # URLs already settled by an earlier run
    recovered: int = 0
    failed: int = 0
    bytes: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    torn_bytes: int = 0
    other_parts: int = 0  # URLs left to the other parts of a `part` split

    @property
    def tried(self) -> int:
        return self.fetched + self.recovered + self.failed


Progress = Callable[[Summary], None]


def download(catalogs: Sequence[str | Path], out: str | Path, *, taxonomy: str | Path | None = None,
             workers: int = 8, retry_failed: bool = False, part: tuple[int, int] = (0, 1),
             progress: Progress | None = None, **fetch_options: Any) -> Summary:
    """Fetch the images of `catalogs` into `out` (see the module docstring); `fetch_options` go to `Fetcher`
    (rate, retries, backoff, max_wait, timeout, max_bytes, max_redirects). `part` = (i, n) fetches only the
    URLs whose key falls in part i of n, so n machines (or processes) share the catalogs, each with its own
    `out`. UsageError for a catalog of no known kind or a folder another download is writing."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [read_catalog(path, taxonomy=taxonomy) for path in catalogs]  # checks every catalog before fetching
    with OutputLock(out / STATUS_FILE, option="--out"):
        journal = Journal(out)
        summary = Summary(torn_bytes=journal.torn_bytes)
        fetcher = Fetcher(**fetch_options)
        try:
            _run(_unique(tasks, summary, part), out, journal, fetcher, summary, workers=workers,
                 retry_failed=retry_failed, progress=progress)
        finally:
            fetcher.close()
            journal.close()
            atomic_write(out / PROBLEMS_FILE, problems_csv(summary.problems))
    return summary


def _unique(catalogs: Iterable[Iterator[Task | Problem]], summary: Summary, part: tuple[int, int]
            ) -> Iterator[Task]:
    """The tasks of all catalogs in this part, each URL once; problems (and repeated URLs) go to the summary
    (catalog problems are reported by part 0 only, so that n parts report each once)."""
    seen: set[bytes] = set()
    index, parts = part
    for catalog in catalogs:
        for item in catalog:
            if isinstance(item, Problem):
                if index == 0:
                    summary.problems.append(item)
            elif int(item.key[:8], 16) % parts != index:
                summary.other_parts += 1
            elif digest(item.key) in seen:
                summary.problems.append(Problem(item.origin, "repeated URL (fetched once, for its first row)"))
            else:
                seen.add(digest(item.key))
                yield item


def _run(tasks: Iterator[Task], out: Path, journal: Journal, fetcher: Fetcher, summary: Summary, *,
         workers: int, retry_failed: bool, progress: Progress | None) -> None:
    """Fetch in a thread pool with a bounded number of tasks in flight; record results in this thread."""
    pending: dict[Future[Fetched], Task] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="download")
    try:
        for task in tasks:
            if _settled(task, out, journal, summary, retry_failed):
                continue
            pending[pool.submit(_fetch_to_disk, fetcher, out, task)] = task
            if len(pending) >= 2 * workers:
                _collect(pending, out, journal, summary, progress)
        while pending:
            _collect(pending, out, journal, summary, progress)
    finally:  # on SIGTERM/Ctrl-C: queued fetches are cancelled, not run unrecorded
        pool.shutdown(wait=not pending, cancel_futures=True)


def _settled(task: Task, out: Path, journal: Journal, summary: Summary, retry_failed: bool) -> bool:
    """Whether the task needs no fetch: already recorded, or its image is on disk from a killed run."""
    succeeded = journal.done.get(digest(task.key))
    if succeeded or (succeeded is False and not retry_failed):
        summary.skipped += 1
        return True
    image = _existing_image(out, task.key)
    if image is None:
        return False
    data = image.read_bytes()
    try:
        image_extension(data, "", 0)
    except Exception:  # noqa: BLE001 - a bad leftover is fetched again
        image.unlink()
        return False
    journal.record(_row(task, out, image, data, Fetched(True, RECOVERED, 0, data, "", image.suffix, 0)))
    summary.recovered += 1
    return True


def _collect(pending: dict[Future[Fetched], Task], out: Path, journal: Journal, summary: Summary,
             progress: Progress | None) -> None:
    """Record the fetches that have finished (waiting for at least one)."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        task = pending.pop(future)
        result = future.result()
        if result.ok:
            image = _image_path(out, task.key, result.extension)
            journal.record(_row(task, out, image, result.data, result))
            summary.fetched += 1
            summary.bytes += len(result.data)
        else:
            journal.record(_row(task, out, None, b"", result))
            summary.failed += 1
            summary.reasons[_reason_kind(result.reason)] += 1
            log.info("%s: %s (%s)", task.origin, result.reason, task.url)
        if progress is not None:
            progress(summary)


def _fetch_to_disk(fetcher: Fetcher, out: Path, task: Task) -> Fetched:
    """Fetch a task's URL and, when it is an image, write it under its final name (in the worker thread, so
    that a kill after the write lets the next run recover it instead of fetching it again)."""
    result = fetcher.fetch(task.url)
    if result.ok:
        atomic_write(_image_path(out, task.key, result.extension), result.data)
    return result


def _reason_kind(reason: str) -> str:
    """A reason without its particulars, for counting ("HTTP 404", "not an image", "timed out")."""
    return reason.split(" (", 1)[0].split(":", 1)[0]


def _image_path(out: Path, key: str, extension: str) -> Path:
    return out / IMAGES_DIR / key[:2] / f"{key}{extension}"


def _existing_image(out: Path, key: str) -> Path | None:
    folder = out / IMAGES_DIR / key[:2]
    return next((folder / f"{key}{ext}" for ext in IMAGE_FORMATS.values() if (folder / f"{key}{ext}").is_file()),
                None)


def _row(task: Task, out: Path, image: Path | None, data: bytes, result: Fetched) -> dict[str, object]:
    ranks = dict(zip(("kingdom", "phylum", "class", "order", "family", "genus", "species"), task.taxon.lineage))
    return {
        "key": task.key, "url": task.url, "outcome": OK if result.ok else ERROR, "reason": result.reason,
        "http_status": result.http_status or "", "bytes": len(data) if image else "",
        "sha256": sha256_bytes(data) if image else "", "content_type": result.content_type,
        "path": os.path.relpath(image, out).replace(os.sep, "/") if image else "", "source": task.source,
        "source_id": task.source_id, "license": task.license, "owner": task.owner, **ranks,
        "common": task.taxon.common, "origin": task.origin, "attempts": result.attempts,
    }


__all__ = ["Summary", "download"]
