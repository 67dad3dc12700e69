"""Request limits, the request guard, the bounded inference queue and the text-side variant cache.

One worker thread owns the model's image tower. Requests hand it preprocessed pixels as jobs; the worker
takes a job, gathers the jobs already waiting (up to `max_batch` images) and scores each group of jobs that
ask the same question (same group key) in one model call, then splits the answers back per job. The event
loop only awaits futures, so it never blocks on the model.

`Guard` (ASGI middleware) runs before anything parses a request: it checks the ``Host`` header (localhost
names, IP literals and the configured host names only, so a DNS-rebinding page cannot reach a local
server), refuses cross-origin POSTs (``Origin`` other than the server's own, or ``Sec-Fetch-Site`` other than
same-origin/none: a web page cannot drive the server with a form), takes one of the `queue_size` places
*before* reading the body (503 + ``Retry-After`` when none is free), refuses a declared ``Content-Length``
over the limit (413) without reading it, caps the body while it streams (413) and gives the whole body
`body_timeout_s` to arrive (408). So at most `queue_size` bodies of at most `max_upload_bytes` are in memory.
A multipart part naming its file only as RFC 5987 ``filename*=UTF-8''...`` (which the multipart parser
ignores, turning the upload into a text field) gets the decoded name as ``filename``. Every response carries
``X-Content-Type-Options: nosniff``. uvicorn's `limit_concurrency` (set from
`max_connections` by ``treeclip serve``) caps open connections.

`VariantCache` prepares request-specific text sides (custom labels, checklist subsets) on a thread of their
own, so a request with a new label set never stalls the image requests on the model thread; the last
`variant_cache` variants are kept, including the ones that failed (a subset matching nothing).
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import queue
import re
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

MB = 1024 * 1024
Scorer = Callable[[torch.Tensor], list[Any]]  # preprocessed pixels [n, 3, H, W] -> one answer per image


@dataclass(frozen=True)
class Limits:
    """What one server accepts; the defaults are the `treeclip serve` defaults."""

    max_upload_bytes: int = 20 * MB  # per request body (413 above)
    max_pixels: int = 50_000_000  # per image, checked from the header before decoding (400 above)
    max_files: int = 64  # per request (400 above)
    max_labels: int = 100  # custom labels per request (400 above); a new label set costs 80 encodings per label
    queue_size: int = 32  # requests admitted at once; more get 503 + Retry-After
    timeout_s: float = 60.0  # per request, from admission to answer (503 + Retry-After when exceeded)
    max_batch: int = 8  # images per model call, gathered from concurrent requests (more pays on a GPU)
    decode_workers: int = 2  # image decoding threads
    retry_after_s: int = 1
    body_timeout_s: float = 60.0  # for the whole request body to arrive (408 after)
    max_connections: int = 256  # open connections (uvicorn's limit_concurrency; 503 above)
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides localhost names and IP literals
    variant_cache: int = 64  # label sets / checklists kept encoded (failures included)

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_files", "max_labels", "queue_size", "max_batch",
                     "decode_workers", "retry_after_s", "max_connections", "variant_cache"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class Busy(Exception):
    """The server cannot take or finish this request now; answered 503 with Retry-After."""


@dataclass
class Job:
    """Pixels of one request, the question (`key` + `score`) and where the answers go."""

    key: Hashable
    score: Scorer
    pixels: torch.Tensor
    future: Future = field(default_factory=Future)


class DecodePool:
    """Image decoding threads, started on first use; `close` stops them and a later use starts new ones (an
    app's lifespan may run more than once)."""

    def __init__(self, *, workers: int) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="treeclip-decode")
            return self._executor

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


class InferenceQueue:
    """Bounded admission plus one worker thread that batches concurrent jobs (see the module docstring)."""

    def __init__(self, *, max_pending: int, max_batch: int) -> None:
        self.max_pending, self.max_batch = max_pending, max_batch
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._pending, self._lock = 0, threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0  # model calls so far (for tests and benchmarks)

    @property
    def pending(self) -> int:
        return self._pending

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the `max_pending` places for the duration of a request; `Busy` when none is free."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise Busy(f"server busy: {self._pending} requests in progress; retry later")
            self._pending += 1
        try:
            yield
        finally:
            with self._lock:
                self._pending -= 1

    def submit(self, key: Hashable, score: Scorer, pixels: torch.Tensor) -> Future:
        """Queue pixels for scoring; the future gives one answer per image (cancel it to drop the job)."""
        self._start()
        job = Job(key, score, pixels)
        self._jobs.put(job)
        return job.future

    def close(self) -> None:
        """Stop the worker after the jobs already queued (a later `submit` starts a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="treeclip-inference", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        carry: Job | None = None
        while True:
            first = carry or self._jobs.get()
            if first is None:
                return
            jobs, carry = self._gather(first)
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            for key in dict.fromkeys(job.key for job in live):
                self._run([job for job in live if job.key == key])

    def _gather(self, first: Job) -> tuple[list[Job], Job | None]:
        """`first` plus the jobs waiting now, up to `max_batch` images; the job that did not fit is carried."""
        jobs, images = [first], len(first.pixels)
        while images < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # stop after this round
                break
            if images + len(job.pixels) > self.max_batch:
                return jobs, job
            jobs.append(job)
            images += len(job.pixels)
        return jobs, None

    def _run(self, jobs: list[Job]) -> None:
        """Score jobs with the same key in one call and hand each its share of the answers."""
        try:
            answers = jobs[0].score(torch.cat([job.pixels for job in jobs]))
        except Exception as exc:  # noqa: BLE001 - the requests get the error; the worker keeps serving
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.batches += 1
        start = 0
        for job in jobs:
            job.future.set_result(answers[start : start + len(job.pixels)])
            start += len(job.pixels)


class VariantCache:
    """Builds request variants (e.g. a classifier for a label set) on one thread of its own, keeping the last
    `size` results, failures included (see the module docstring)."""

    def __init__(self, build: Callable[[Hashable], Any], *, size: int) -> None:
        self.build, self.size = build, size
        self._done: OrderedDict[Hashable, tuple[bool, Any]] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treeclip-text")
        self.builds = 0  # variants built so far (for tests and benchmarks)

    async def get(self, key: Hashable) -> Any:
        """The variant for `key`, built off the event loop and off the model thread; re-raises its failure."""
        ok, value = await asyncio.wrap_future(self._executor.submit(self._lookup, key))
        if not ok:
            raise value
        return value

    def _lookup(self, key: Hashable) -> tuple[bool, Any]:
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        self.builds += 1
        try:
            result = (True, self.build(key))
        except Exception as exc:  # noqa: BLE001 - the failure is cached and re-raised to each asker
            result = (False, exc)
        self._done[key] = result
        while len(self._done) > self.size:
            self._done.popitem(last=False)
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


LOCAL_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
SAME_ORIGIN_FETCH = frozenset({b"same-origin", b"none"})
NOSNIFF = (b"x-content-type-options", b"nosniff")


def host_allowed(host: str, extra: tuple[str, ...]) -> bool:
    """True for localhost names, IP literals and the `extra` names (a Host header's port is ignored)."""
    name = host.strip().lower()
    if name.startswith("["):  # [IPv6]:port
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name in LOCAL_HOSTS or name in {e.lower() for e in extra} or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware enforcing `Limits` before the app parses anything (see the module docstring)."""

    def __init__(self, app: Any, *, limits: Limits, jobs: InferenceQueue) -> None:
        self.app, self.limits, self.jobs = app, limits, jobs

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_nosniff(send)
        headers = dict(scope["headers"])
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        admitted = False
        try:
            with self.jobs.admit():
                admitted = True
                body = await self._body(headers, receive)
                if isinstance(body, tuple):
                    await _answer(send, *body)
                    return
                replay = _replay(_plain_filenames(body, headers.get(b"content-type", b"")), receive)
                del body  # the replay holds the only reference, dropped once the app has read it
                await self.app(scope, replay, send)
        except Busy as exc:
            if admitted:
                raise
            await self._body(headers, receive, keep=False)  # read and drop it, so the client sees the 503
            await _answer(send, 503, str(exc), {"Retry-After": str(self.limits.retry_after_s)})

    def _refusal(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host, self.limits.allowed_hosts):
            return 400, "Host header not allowed; use localhost, an IP address or a name given with --allow-host"
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return None
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1").split("://", 1)[-1].lower() != host.lower():
            return 403, "cross-origin requests are refused; call the API from its own page or without a browser"
        site = headers.get(b"sec-fetch-site")
        if site is not None and site.lower() not in SAME_ORIGIN_FETCH:
            return 403, "cross-site requests are refused; call the API from its own page or without a browser"
        return None

    async def _body(self, headers: dict[bytes, bytes], receive: Callable, *,
                    keep: bool = True) -> bytes | tuple[int, str]:
        """The whole body (dropped as it arrives unless `keep`), or (status, reason) when it is too large, too
        slow or the client left."""
        limit = self.limits.max_upload_bytes
        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            return 400, "invalid Content-Length header"
        if declared is not None and int(declared) > limit:
            return 413, f"request body over the upload limit of {limit / 2**20:g} MB"
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return 400, "the client went away"
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if keep:
                        chunks.append(chunk)
                    if size > limit:
                        return 413, f"request body over the upload limit of {limit / 2**20:g} MB"
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return 408, f"request body not received within {self.limits.body_timeout_s:g} s"


_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?', re.IGNORECASE)
_EXTENDED = re.compile(rb"filename\*\s*=\s*([^;\r\n]+)", re.IGNORECASE)


def _plain_filenames(body: bytes, content_type: bytes) -> bytes:
    """`body` with each part's RFC 5987 ``filename*`` also given as a plain ``filename`` (see the module
    docstring); only part headers change."""
    boundary = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith(b"multipart/form-data") or boundary is None or b"filename*" not in body:
        return body
    part_headers = re.compile(rb"(--" + re.escape(boundary.group(1)) + rb"\r\n)(.*?)(\r\n\r\n)", re.DOTALL)

    def fix(match: re.Match) -> bytes:
        headers, extended = match.group(2), _EXTENDED.search(match.group(2))
        if extended is None or re.search(rb"filename\s*=", headers, re.IGNORECASE):
            return match.group(0)
        charset, _, text = email.utils.decode_rfc2231(extended.group(1).strip().decode("latin-1"))
        try:
            name = urllib.parse.unquote(text, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            return match.group(0)  # an unknown charset or bad bytes: left for the parser, as before
        plain = b'filename="' + name.translate({34: "%22", 13: None, 10: None}).encode() + b'"'
        return match.group(1) + headers[: extended.start()] + plain + headers[extended.end():] + match.group(3)

    return part_headers.sub(fix, body)


def _with_nosniff(send: Callable) -> Callable:
    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", []) if h[0].lower() != NOSNIFF[0]]
            message = {**message, "headers": [*headers, NOSNIFF]}
        await send(message)

    return sending


async def _answer(send: Callable, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """A JSON problem response; the connection is closed (the unread body is not drained)."""
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Callable) -> Callable:
    """A `receive` that gives the buffered body once (keeping no reference to it), then defers to the client's
    channel."""
    held: list[bytes] = [body]
    del body

    async def replayed() -> dict:
        if not held:
            return await receive()
        return {"type": "http.request", "body": held.pop(), "more_body": False}

    return replayed
