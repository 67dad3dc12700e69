"""Who runs a batch of independent jobs: this machine's processes (``local``) or a Ray cluster (``ray``).

An engine only changes *where* a top-level, picklable function runs on each job; the function itself (for
instance `treeclip.data.shards.write_shard`, which writes its shard and journal entry) and every output it
writes stay the same, so a build or a prediction gives the same files on either engine and resumes the
same way. Ray is imported lazily, only when ``engine="ray"``; it connects to a running cluster at
`ray_address` (``"auto"``, ``"ray://HOST:10001"``, ``"HOST:6379"``) or starts a local one, and reuses a Ray
session the caller already started. On a cluster, the inputs and the output folder must be on a filesystem
every node sees, at the same path, and treeclip must be installed on every node.

The work is `map_unordered`: independent jobs (one shard, one source, one partition of a build's plan) as Ray
tasks or in a spawned process pool; an input every job needs, such as a build's alignment table, can be sent
once instead of in every job. `engine_session` holds one Ray runtime for a whole job, so it starts once.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

from treeclip.errors import UsageError

log = logging.getLogger(__name__)
ENGINES = ("local", "ray")
RAY_HINT = "pip install 'treeclip[ray]'"
Job = TypeVar("Job")
Result = TypeVar("Result")


def check_engine(engine: str, ray_address: str | None = None) -> None:
    """`UsageError` for an unknown engine, a Ray address without the Ray engine, Ray not installed, or a
    ``HOST:PORT`` address where nothing listens (checked now, before hours of planning)."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: must be one of {', '.join(ENGINES)}")
    if ray_address and engine != "ray":
        raise UsageError("--ray-address needs --engine ray")
    if engine == "ray":
        import_ray()
        if ray_address:
            _check_reachable(ray_address)


def import_ray() -> Any:
    """The `ray` module, or a `UsageError` saying how to install it."""
    try:
        import ray  # noqa: PLC0415 - optional dependency, imported only for --engine ray
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray, which is not installed: {RAY_HINT}") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """The `ray` module, connected: to the session already running in this process, to the cluster at
    `address`, or to a new local runtime with `num_cpus` CPUs (shut down on exit)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        options["address"] = address
    else:
        options["num_cpus"] = num_cpus
    try:
        ray.init(**options)
    except ConnectionError as exc:
        raise UsageError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc})") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def engine_session(engine: str, ray_address: str | None = None, *, workers: int = 1) -> Iterator[None]:
    """Hold the engine's runtime while the block runs (Ray: connected once, reused by every call inside;
    local: nothing to hold)."""
    if engine != "ray":
        yield
        return
    with ray_session(ray_address, num_cpus=workers):
        yield


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` nobody listens on (Ray itself retries for minutes); other forms
    (``auto``, ``ray://...``) are left to Ray."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                         "check the head node's address and port (default 6379)") from exc


def map_unordered(fn: Callable[..., Result], jobs: Sequence[Job], *, engine: str = "local", workers: int = 1,
                  ray_address: str | None = None, shared: Any = None) -> Iterator[Result]:
    """``fn(job)`` for every job, yielded as they finish: in this process (one worker or one job), in
    `workers` spawned processes, or as Ray tasks of one CPU each (a new local Ray runtime gets `workers`
    CPUs; a running cluster uses all of its own). With `shared` (not None), each call is ``fn(job, shared)``
    and `shared` is sent once, not with every job: put once in Ray's object store (each task gets its
    reference), or handed once to each pool process as it starts."""
    check_engine(engine, ray_address)
    extra = () if shared is None else (shared,)
    if engine == "ray":
        yield from _ray_map(fn, jobs, workers=workers, address=ray_address, extra=extra)
    elif workers == 1 or len(jobs) <= 1:
        yield from (fn(job, *extra) for job in jobs)
    else:
        # Callers' scripts need the usual ``if __name__ == "__main__":`` guard (spawn start method).
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_keep_shared if extra
                                                       else None, initargs=extra) as pool:
            yield from pool.imap_unordered(partial(_call_shared, fn) if extra else fn, jobs)


_SHARED: list[Any] = []  # in a pool process: the `shared` input it was started with


def _keep_shared(*shared: Any) -> None:
    _SHARED[:] = shared


def _call_shared(fn: Callable[[Job, Any], Result], job: Job) -> Result:
    return fn(job, _SHARED[0])


def _ray_map(fn: Callable[..., Result], jobs: Sequence[Job], *, workers: int, address: str | None,
             extra: tuple[Any, ...]) -> Iterator[Result]:
    """Ray tasks of one CPU each; a local runtime gets `workers` CPUs. At most twice the cluster's CPUs of
    jobs are in flight, so the object store never holds every job (or result) at once; a shared input is
    put in it once (Ray hands each task the object behind the reference)."""
    if not jobs:
        return
    with ray_session(address, num_cpus=workers) as ray:
        task = ray.remote(num_cpus=1)(fn)
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        log.info("ray: %d jobs on %s CPUs", len(jobs), ray.cluster_resources().get("CPU"))
        refs = tuple(ray.put(value) for value in extra)
        yield from _drain(ray, (task.remote(job, *refs) for job in jobs), limit)


def _drain(ray: Any, submissions: Iterable[Any], limit: int) -> Iterator[Any]:
    """Results of the submitted object refs as they complete, keeping at most `limit` in flight."""
    pending: list[Any] = []
    for ref in submissions:
        pending.append(ref)
        if len(pending) >= limit:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
