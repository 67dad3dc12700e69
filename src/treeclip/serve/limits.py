"""Request limits and the bounded inference queue.

One worker thread owns the model. Requests hand it preprocessed pixels as jobs; the worker takes a job,
gathers the jobs already waiting (up to `max_batch` images) and scores each group of jobs that ask the
same question (same group key) in one model call, then splits the answers back per job. The event loop only
awaits futures, so it never blocks on the model.

Admission is bounded: at most `max_pending` requests may be inside the server at once (reading, decoding,
waiting or running); one more is refused at once with `Busy`, which the app answers with 503 and a
``Retry-After`` header.
"""

from __future__ import annotations

import logging
import queue
import threading
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

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_files", "max_labels", "queue_size", "max_batch",
                     "decode_workers", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


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
