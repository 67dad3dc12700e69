"""`treeclip predict` / `treeclip embed` on Ray: the same batches, scored by Ray tasks across a cluster.

The driver cuts the images still to do into chunks of whole batches (`CHUNK_BATCHES` batches of
`batch_size`, so every batch holds exactly the images it holds on the local engine) and submits one task per
chunk, each running the local engine's own `run_batches`. The scorer and the preprocessing (the model, the
label bank and the options) are put into the object store once; each Ray worker process unpickles them on its
first chunk and keeps them for the run's later chunks, so nodes need no copy of the model files and pooled
workers pay the model load once. The driver writes the chunks' rows in input order, so the output file, and
resuming it, is the same as with the local engine. Image paths must be readable at the same path on every
node (a shared filesystem). Each task reserves one CPU and decodes with `workers` threads (never forked
processes: a Ray worker runs threads of its own).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from treeclip.data.engines import ray_session
from treeclip.predict.runner import ImageItem, Row, Scorer, run_batches

CHUNK_BATCHES = 4  # batches per task: large enough to amortise a round trip, small enough to balance load
IN_FLIGHT_PER_CPU = 2


_WORKER_JOB: dict[str, dict[str, Any]] = {}  # in a Ray worker: the unpickled job of the latest run


def score_chunk(job_box: list[Any], chunk: list[ImageItem]) -> list[tuple[int, list[Row]]]:
    """(images, rows) per batch of one chunk, the rows exactly as `run_batches` gives them locally.

    `job_box` holds the job's object ref inside a list, so that Ray passes the ref rather than its value.
    """
    import ray  # noqa: PLC0415 - runs inside a Ray worker

    ref = job_box[0]
    if ref.hex() not in _WORKER_JOB:
        _WORKER_JOB.clear()
        _WORKER_JOB[ref.hex()] = ray.get(ref)
    counts: list[int] = []
    batches = list(run_batches(chunk, **_WORKER_JOB[ref.hex()], progress=counts.append))
    return list(zip(counts, batches, strict=True))


def ray_batches(items: Sequence[ImageItem], *, score: Scorer, preprocess: Callable[[Image.Image], torch.Tensor],
                batch_size: int, workers: int, name_key: str, draft_size: int | None,
                progress: Callable[[int], Any] | None = None, ray_address: str | None = None) -> Iterator[list[Row]]:
    """Rows per batch, in input order, computed by Ray tasks (see the module docstring)."""
    if not items:
        return
    chunk_size = batch_size * CHUNK_BATCHES
    chunks = [list(items[start : start + chunk_size]) for start in range(0, len(items), chunk_size)]
    with ray_session(ray_address) as ray:
        job = ray.put({"score": score, "preprocess": preprocess, "batch_size": batch_size, "workers": workers,
                       "name_key": name_key, "draft_size": draft_size, "decoder": "threads"})
        task = ray.remote(num_cpus=1)(score_chunk)
        limit = IN_FLIGHT_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: deque[Any] = deque()
        for chunk in chunks:
            pending.append(task.remote([job], chunk))
            if len(pending) >= limit:
                yield from _report(ray.get(pending.popleft()), progress)
        while pending:
            yield from _report(ray.get(pending.popleft()), progress)


def _report(batches: list[tuple[int, list[Row]]], progress: Callable[[int], Any] | None) -> Iterator[list[Row]]:
    for count, rows in batches:
        if progress is not None:
            progress(count)
        yield rows
