"""The batch runner: decode in parallel ahead of the model, score, hand rows to a writer.

Decoding (`treeclip.data.images.decode_image` + the model's preprocessing) runs ahead of the model, up to
`prefetch` batches in flight while it computes the current one, in a thread pool or in worker processes
(`use_processes` picks by measurement: threads scale to ~2 cores, as part of each image's work holds the GIL;
forked DataLoader workers scale with the cores, each decoding whole batches that arrive through shared
memory, pinned for a CUDA device). Both give the same batches bit for bit. With ``uint8`` they give uint8
pixels (`treeclip.model.preprocess.Preprocess.to_uint8`: the transform but its float conversion and
normalisation, which the scorer runs on the model's device): a quarter of the bytes through shared and pinned
memory. ``decoder="device"`` decodes JPEGs on the model's device instead (`treeclip.predict.decode_device`).
An unreadable image becomes an error row (``{name_key: name, "error": reason}``) and the rest of its batch
still runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import default_collate

from treeclip.data.engines import check_engine
from treeclip.data.images import ImageError, decode_image
from treeclip.errors import UsageError

ImageItem = str | os.PathLike[str] | Image.Image
Row = dict[str, Any]
Scorer = Callable[[torch.Tensor, list[str]], list[Row]]
DECODERS = ("auto", "threads", "processes", "device")
log = logging.getLogger(__name__)
PROCESS_MIN_BATCHES = 4  # auto: processes for runs of at least this many batches...
THREADS_SCALE_TO = 2  # ...and more workers than decoding threads scale to (see `use_processes`)
START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"  # of the decoding worker processes


def item_name(item: ImageItem, index: int) -> str:
    """The name an input is reported under: its path, or its position for an in-memory image."""
    return str(index) if isinstance(item, Image.Image) else os.fspath(item)


@dataclass
class Batch:
    """Decoded images of one batch (``pixels`` is None when none decoded) and the failures."""

    names: list[str]
    pixels: torch.Tensor | None
    errors: list[tuple[str, str]]


def load_pixels(item: ImageItem, preprocess: Callable[[Image.Image], torch.Tensor],
                draft_size: int | None) -> torch.Tensor | str:
    """Preprocessed pixels, or the reason the image cannot be used; a PIL image gives the pixels of the file it
    was decoded from (`treeclip.data.images.decode_image`)."""
    try:
        return preprocess(decode_image(item, draft_size=draft_size))
    except ImageError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - a transform failing on one odd image must not stop the run
        return f"cannot preprocess: {error}"


Decoded = tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]


def _gather(results: list[torch.Tensor | str]) -> Decoded:
    """(offsets of the decoded images, their pixels stacked, (offset, reason) of the rest) of one batch.
    torch's `default_collate` is `torch.stack`, straight into shared memory inside a loader worker (one copy
    fewer on the way to the main process)."""
    good = [offset for offset, result in enumerate(results) if not isinstance(result, str)]
    errors = [(offset, result) for offset, result in enumerate(results) if isinstance(result, str)]
    pixels = default_collate([results[offset] for offset in good]) if good else None
    return good, pixels, errors


def _batch(decoded: Decoded, names: Sequence[str]) -> Batch:
    good, pixels, errors = decoded
    return Batch([names[offset] for offset in good], pixels, [(names[offset], reason) for offset, reason in errors])


def use_processes(decoder: str, *, images: int, batch_size: int, workers: int, prefetch: int = 2,
                  image_bytes: int = 3 * 224 * 224 * 4) -> bool:
    """Whether `decoded_batches` decodes in worker processes: ``threads``/``processes`` as asked (``device``:
    no); ``auto``:
    processes on Linux for more than 2 workers and at least `PROCESS_MIN_BATCHES` batches, else threads, and
    threads (with a warning) when /dev/shm cannot hold the batches in flight (a container's default is 64 MB;
    a worker there would die of a bus error), `image_bytes` being one preprocessed image.

    Measured (`benchmarks/predict_decode.py`, benchmarks/RESULTS.md): threads stop scaling at ~2 cores (12-16
    threads decoded 410 images/s on a 16-core host, ~2 cores' worth; a decoding thread beside a thread busy
    with Python ran 0.04x its rate alone, a worker process 0.82x), while 2 threads on 2 cores ran 1.2-1.3x
    2 processes; processes cost 0.2-0.4 s more to the first batch (fork, and one worker decodes a whole batch)
    and 10-20% more CPU per image (the pixels cross through shared memory)."""
    if decoder not in DECODERS:
        raise UsageError(f"--decode must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder != "auto":
        return decoder == "processes"
    # auto never picks "device": on CUDA it waits for benchmarks/gpu.py's measurement (README, GPU section)
    batches = -(-images // batch_size)
    if not (sys.platform.startswith("linux") and workers > THREADS_SCALE_TO and batches >= PROCESS_MIN_BATCHES):
        return False
    needed, free = min(workers, batches) * max(1, prefetch) * batch_size * image_bytes, _shared_memory_free()
    if free is not None and free < needed:
        log.warning("decoding in threads: /dev/shm has %d MB free and worker processes would keep about %d MB of "
                    "batches there; give it more (docker --shm-size) or fewer --workers / a smaller --batch-size",
                    free >> 20, needed >> 20)
        return False
    return True


def _shared_memory_free() -> int | None:
    """Free bytes of /dev/shm, where torch puts the tensors worker processes send (None where it is absent)."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


def _image_bytes(preprocess: Callable[[Image.Image], torch.Tensor], uint8: bool) -> int:
    """Bytes of one preprocessed image (float32, or uint8): the model's input size when `preprocess` names it,
    else 224."""
    size = getattr(preprocess, "size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    return 3 * height * width * (1 if uint8 else 4)


def decoded_batches(items: Sequence[ImageItem], names: Sequence[str], *,
                    preprocess: Callable[[Image.Image], torch.Tensor], batch_size: int, workers: int,
                    draft_size: int | None = None, prefetch: int = 2, decoder: str = "auto",
                    pin_memory: bool = False, uint8: bool = False, device: str | torch.device = "cpu",
                    report: Counter | None = None) -> Iterator[Batch]:
    """Batches in input order, decoded up to `prefetch` batches ahead (per worker, with processes) by
    `workers` threads or worker processes (`decoder`: threads, processes or auto, see `use_processes`); JPEGs
    at a reduced scale no smaller than `draft_size`, when given. With processes, each worker decodes whole
    batches and the pixels arrive in pinned memory when `pin_memory`; the outputs equal the threads'. With
    `uint8` (`preprocess` a `treeclip.model.preprocess.Preprocess`) the pixels are uint8, to be normalised by
    the scorer (`Preprocess.normalize`). ``decoder="device"``: JPEGs decoded on `device`, float pixels there,
    `report` counting where each image was decoded (`treeclip.predict.decode_device`)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if decoder == "device" or uint8:
        _check_splits(preprocess, decoder)
    if decoder == "device":
        from treeclip.predict.decode_device import device_batches  # noqa: PLC0415 - a cycle: it builds Batches

        yield from device_batches(items, names, preprocess=preprocess, batch_size=batch_size, workers=workers,
                                  device=torch.device(device), draft_size=draft_size, prefetch=prefetch,
                                  report=report)
        return
    image_bytes = _image_bytes(preprocess, uint8)
    if uint8:
        preprocess = preprocess.to_uint8
    if use_processes(decoder, images=len(items), batch_size=batch_size, workers=workers, prefetch=prefetch,
                     image_bytes=image_bytes):
        yield from _process_batches(items, names, preprocess=preprocess, batch_size=batch_size,
                                    workers=max(1, workers), draft_size=draft_size, prefetch=prefetch,
                                    pin_memory=pin_memory)
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[tuple[int, list[Future]]] = deque()
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            pending.append((start, [pool.submit(load_pixels, item, preprocess, draft_size) for item in chunk]))
            if len(pending) > prefetch:
                yield _collect(*pending.popleft(), names)
        while pending:
            yield _collect(*pending.popleft(), names)


def _check_splits(preprocess: Any, decoder: str) -> None:
    """UsageError unless `preprocess` can run its steps apart (`treeclip.model.preprocess.Preprocess.steps`),
    and, for the device decoder, on a tensor."""
    steps = getattr(preprocess, "steps", None)
    if steps is None:
        raise UsageError(f"--decode {decoder}: this model's preprocessing cannot be split into resize/crop and "
                         "normalisation steps; use --decode threads or processes")
    if decoder == "device" and steps.pil_only:
        raise UsageError(f"--decode device: this model's preprocessing ({', '.join(steps.pil_only)}) runs on PIL "
                         "images only; use --decode threads or processes")


def _collect(start: int, futures: list[Future], names: Sequence[str]) -> Batch:
    return _batch(_gather([future.result() for future in futures]), names[start : start + len(futures)])


class _Decoding(torch.utils.data.Dataset):
    """Item `index` → its preprocessed pixels or the reason it cannot be used (called in the workers)."""

    def __init__(self, items: Sequence[ImageItem], preprocess: Callable[[Image.Image], torch.Tensor],
                 draft_size: int | None) -> None:
        self.items, self.preprocess, self.draft_size = items, preprocess, draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor | str:
        return load_pixels(self.items[index], self.preprocess, self.draft_size)


def _process_batches(items: Sequence[ImageItem], names: Sequence[str], *,
                     preprocess: Callable[[Image.Image], torch.Tensor], batch_size: int, workers: int,
                     draft_size: int | None, prefetch: int, pin_memory: bool) -> Iterator[Batch]:
    """`decoded_batches` on a torch DataLoader: forked workers on Linux (the items and the transform are
    inherited, nothing is pickled), spawned elsewhere (both must pickle; the caller's script needs the
    ``if __name__ == "__main__":`` guard). The workers are shut down and reaped when the iteration ends,
    fails or is abandoned (Ctrl-C, SIGTERM through the CLI, a closed generator)."""
    if not items:
        return
    loader = torch.utils.data.DataLoader(
        _Decoding(items, preprocess, draft_size), batch_size=batch_size, shuffle=False,
        num_workers=min(workers, -(-len(items) // batch_size)), collate_fn=_gather, pin_memory=pin_memory,
        prefetch_factor=max(1, prefetch), multiprocessing_context=START_METHOD, worker_init_fn=_stop_like_ctrl_c)
    batches = iter(loader)
    try:
        for index, decoded in enumerate(batches):
            yield _batch(decoded, names[index * batch_size : (index + 1) * batch_size])
    finally:
        del batches  # the last reference: torch's iterator stops and joins its workers now


def _stop_like_ctrl_c(_: int) -> None:
    """Worker set-up: SIGTERM stops a worker as Ctrl-C does (torch's worker loop exits quietly), so a signal
    sent to the whole process group is reported once, by the main process, not also as a crashed worker. The
    worker's fd-passing thread (multiprocessing's resource sharer, which hands batches' shared memory to the
    main process) reports a connection the main process dropped through `sys.excepthook`: on an interrupt that
    is expected, and the main process reports any real failure itself, so such errors stay quiet here."""
    signal.signal(signal.SIGTERM, _interrupt_once)
    signal.signal(signal.SIGINT, _interrupt_once)
    sys.excepthook = _quiet_dropped_connections(sys.excepthook)


def _interrupt_once(signum: int, frame: Any) -> None:
    """The first SIGTERM or SIGINT raises KeyboardInterrupt (torch's worker loop catches it); later ones must
    not: a worker still cleaning up after the first is sent SIGTERM again by the DataLoader's shutdown (it
    terminates workers slow to exit), which raised in multiprocessing's clean-up and printed a traceback. So
    after the first, SIGTERM ends the worker as by default and SIGINT is left to the main process."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _quiet_dropped_connections(hook: Callable[..., Any]) -> Callable[..., Any]:
    def excepthook(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if not issubclass(kind, (ConnectionError, EOFError)):
            hook(kind, value, traceback)
    return excepthook


def run_batches(items: Sequence[ImageItem], *, score: Scorer, preprocess: Callable[[Image.Image], torch.Tensor],
                batch_size: int = 32, workers: int = 2, name_key: str = "file_name", draft_size: int | None = None,
                progress: Callable[[int], Any] | None = None, decoder: str = "auto", pin_memory: bool = False,
                uint8: bool = False, device: str | torch.device = "cpu",
                report: Counter | None = None) -> Iterator[list[Row]]:
    """Rows per batch (scored rows in input order, then the batch's error rows); `decoder`, `pin_memory`,
    `uint8`, `device` and `report` as in `decoded_batches`."""
    names = [item_name(item, i) for i, item in enumerate(items)]
    for batch in decoded_batches(items, names, preprocess=preprocess, batch_size=batch_size, workers=workers,
                                 draft_size=draft_size, decoder=decoder, pin_memory=pin_memory, uint8=uint8,
                                 device=device, report=report):
        rows = score(batch.pixels, batch.names) if batch.pixels is not None else []
        rows.extend({name_key: name, "error": reason} for name, reason in batch.errors)
        if progress is not None:
            progress(len(batch.names) + len(batch.errors))
        yield rows


def run_to_writer(items: Sequence[str], *, score: Scorer, preprocess: Callable[[Image.Image], torch.Tensor],
                  writer: Any, batch_size: int = 32, workers: int = 2, name_key: str = "file_name",
                  draft_size: int | None = None, progress: Callable[[int], Any] | None = None,
                  engine: str = "local", ray_address: str | None = None, decoder: str = "auto",
                  pin_memory: bool = False, uint8: bool = False, device: str | torch.device = "cpu",
                  report: Counter | None = None) -> list[tuple[str, str]]:
    """Score the `items` not yet in ``writer.done``, writing each batch as it completes; returns the
    (name, reason) of every image that could not be read. ``engine="ray"`` scores the same batches on Ray
    actors (`treeclip.predict.ray_engine`; a cluster at `ray_address`, else a local runtime), each decoding
    float pixels with threads; the local engine decodes as `decoder` says (with `pin_memory`, `uint8`,
    `device` and `report` as in `decoded_batches`)."""
    if engine == "ray" and decoder not in ("auto", "threads"):
        raise UsageError(f"--decode {decoder} applies to the local engine; Ray tasks decode with threads "
                         "(drop --decode or use --engine local)")
    check_engine(engine, ray_address)
    todo = [item for item in items if item not in writer.done]
    options = {"score": score, "preprocess": preprocess, "batch_size": batch_size, "workers": workers,
               "name_key": name_key, "draft_size": draft_size, "progress": progress}
    if engine == "ray":
        from treeclip.predict.ray_engine import ray_batches  # noqa: PLC0415 - Ray is optional

        batches = ray_batches(todo, **options, ray_address=ray_address)
    else:
        batches = run_batches(todo, **options, decoder=decoder, pin_memory=pin_memory, uint8=uint8, device=device,
                              report=report)
    errors: list[tuple[str, str]] = []
    for rows in batches:
        writer.write(rows)
        errors.extend((row[name_key], row["error"]) for row in rows if "error" in row)
    return errors
