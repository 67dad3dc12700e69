"""The batch runner: expand inputs, decode in parallel ahead of the model, score, hand rows to a writer.

Decoding (`treeclip.data.images.decode_image` + the model's preprocessing) runs in a thread pool that keeps
up to `prefetch` batches in flight while the model computes the current one; Pillow and torch release the
GIL in their heavy parts, so decoding hides behind compute. An unreadable image becomes an error row
(``{name_key: name, "error": reason}``) and the rest of its batch still runs.
"""

from __future__ import annotations

import glob
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from treeclip.data.engines import check_engine
from treeclip.data.images import ImageError, check_geometry, decode_image
from treeclip.data.sources.base import iter_images
from treeclip.errors import UsageError

ImageItem = str | os.PathLike[str] | Image.Image
Row = dict[str, Any]
Scorer = Callable[[torch.Tensor, list[str]], list[Row]]


def expand_inputs(specs: Sequence[str]) -> list[str]:
    """Image paths from files, folders (recursive, image extensions), glob patterns and ``@LIST`` files
    (one path per line, relative to the list's folder), in order, without duplicates."""
    paths: list[str] = []
    for spec in specs:
        paths.extend(_expand(spec))
    if not paths:
        raise UsageError(f"no images found in {' '.join(specs)}; give image files, folders, globs or @LIST")
    return list(dict.fromkeys(paths))


def _expand(spec: str) -> list[str]:
    if spec.startswith("@"):
        return _list_file(Path(spec[1:]))
    path = Path(spec)
    if path.is_dir():
        return [str(image) for image in iter_images(path)]
    if path.is_file():
        return [spec]
    if glob.has_magic(spec):
        found = sorted(glob.glob(spec, recursive=True))
        return [path for item in found for path in _expand(item)]
    raise UsageError(f"image input not found: {spec} (give files, folders, glob patterns or @LIST)")


def _list_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read image list {path}: {exc.strerror or exc}") from exc
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [str(path.parent / entry) if not os.path.isabs(entry) else entry for entry in entries]


def item_name(item: ImageItem, index: int) -> str:
    """The name an input is reported under: its path, or its position for an in-memory image."""
    return str(index) if isinstance(item, Image.Image) else os.fspath(item)


@dataclass
class Batch:
    """Decoded images of one batch (``pixels`` is None when none decoded) and the failures."""

    names: list[str]
    pixels: torch.Tensor | None
    errors: list[tuple[str, str]]


def _load(item: ImageItem, preprocess: Callable[[Image.Image], torch.Tensor],
          draft_size: int | None) -> torch.Tensor | str:
    """Preprocessed pixels, or the reason the image cannot be used."""
    try:
        if isinstance(item, Image.Image):
            check_geometry(item.size)
            return preprocess(item.convert("RGB"))
        return preprocess(decode_image(item, draft_size=draft_size))
    except ImageError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - a transform failing on one odd image must not stop the run
        return f"cannot preprocess: {error}"


def decoded_batches(items: Sequence[ImageItem], names: Sequence[str], *,
                    preprocess: Callable[[Image.Image], torch.Tensor], batch_size: int, workers: int,
                    draft_size: int | None = None, prefetch: int = 2) -> Iterator[Batch]:
    """Batches in input order, decoded by `workers` threads up to `prefetch` batches ahead (JPEGs at a
    reduced scale no smaller than `draft_size`, when given)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    starts = range(0, len(items), batch_size)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[tuple[int, list[Future]]] = deque()
        for start in starts:
            chunk = items[start : start + batch_size]
            pending.append((start, [pool.submit(_load, item, preprocess, draft_size) for item in chunk]))
            if len(pending) > prefetch:
                yield _collect(*pending.popleft(), names)
        while pending:
            yield _collect(*pending.popleft(), names)


def _collect(start: int, futures: list[Future], names: Sequence[str]) -> Batch:
    good_names, tensors, errors = [], [], []
    for offset, future in enumerate(futures):
        result, name = future.result(), names[start + offset]
        if isinstance(result, str):
            errors.append((name, result))
        else:
            good_names.append(name)
            tensors.append(result)
    return Batch(good_names, torch.stack(tensors) if tensors else None, errors)


def run_batches(items: Sequence[ImageItem], *, score: Scorer, preprocess: Callable[[Image.Image], torch.Tensor],
                batch_size: int = 32, workers: int = 2, name_key: str = "file_name", draft_size: int | None = None,
                progress: Callable[[int], Any] | None = None) -> Iterator[list[Row]]:
    """Rows per batch (scored rows in input order, then the batch's error rows)."""
    names = [item_name(item, i) for i, item in enumerate(items)]
    for batch in decoded_batches(items, names, preprocess=preprocess, batch_size=batch_size, workers=workers,
                                 draft_size=draft_size):
        rows = score(batch.pixels, batch.names) if batch.pixels is not None else []
        rows.extend({name_key: name, "error": reason} for name, reason in batch.errors)
        if progress is not None:
            progress(len(batch.names) + len(batch.errors))
        yield rows


def run_to_writer(items: Sequence[str], *, score: Scorer, preprocess: Callable[[Image.Image], torch.Tensor],
                  writer: Any, batch_size: int = 32, workers: int = 2, name_key: str = "file_name",
                  draft_size: int | None = None, progress: Callable[[int], Any] | None = None,
                  engine: str = "local", ray_address: str | None = None) -> list[tuple[str, str]]:
    """Score the `items` not yet in ``writer.done``, writing each batch as it completes; returns the
    (name, reason) of every image that could not be read. ``engine="ray"`` scores the same batches on Ray
    actors (`treeclip.predict.ray_engine`; a cluster at `ray_address`, else a local runtime)."""
    check_engine(engine, ray_address)
    todo = [item for item in items if item not in writer.done]
    options = {"score": score, "preprocess": preprocess, "batch_size": batch_size, "workers": workers,
               "name_key": name_key, "draft_size": draft_size, "progress": progress}
    if engine == "ray":
        from treeclip.predict.ray_engine import ray_batches  # noqa: PLC0415 - Ray is optional

        batches = ray_batches(todo, **options, ray_address=ray_address)
    else:
        batches = run_batches(todo, **options)
    errors: list[tuple[str, str]] = []
    for rows in batches:
        writer.write(rows)
        errors.extend((row[name_key], row["error"]) for row in rows if "error" in row)
    return errors
