"""Batched, L2-normalised image and text features, and an on-disk cache so repeated evaluations of the same
model on the same data never recompute them.

A cache entry is one ``.npy`` file named by a hash of its key parts (model fingerprint, data fingerprint,
preprocessing, ...) with the parts written next to it as JSON, for inspection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from treeclip.atomic import atomic_path, atomic_write
from treeclip.data.images import ImageError, decode_image
from treeclip.errors import UsageError

log = logging.getLogger(__name__)

Progress = Callable[[int], Any]
ImageInput = str | os.PathLike[str] | Image.Image


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes (with the project's decoder, which checks and converts a PIL image as it does a file) and
    preprocesses one image per item."""

    def __init__(self, images: Sequence[ImageInput], preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.images[index]
        try:
            return self.preprocess(decode_image(item))
        except ImageError as error:
            raise UsageError(f"cannot read image {_describe(item, index)}: {error}; fix or remove it") from None


def _describe(item: ImageInput, index: int) -> str:
    """A file's path, or an in-memory image's position in the input."""
    return f"#{index} (in-memory image)" if isinstance(item, Image.Image) else os.fspath(item)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put a module in eval mode for a block, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def encode_images(model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                  images: Sequence[ImageInput], *, batch_size: int = 64, device: str | torch.device = "cpu",
                  num_workers: int = 0, progress: Progress | None = None) -> np.ndarray:
    """L2-normalised image features, float32 ``[len(images), dim]``, in input order; a PIL image gives the same
    features as the file it was decoded from."""
    loader = torch.utils.data.DataLoader(_ImageDataset(images, preprocess), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers)
    chunks = []
    with eval_mode(model), torch.inference_mode():
        for batch in loader:
            chunks.append(F.normalize(model.encode_image(batch.to(device)).float(), dim=-1).cpu().numpy())
            if progress is not None:
                progress(len(batch))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


# fingerprints: cheap, stable across processes, and changing whenever the thing they stand for changes
def _stat_digest(paths: Sequence[Path], root: Path | None = None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        name = str(path.relative_to(root)) if root else str(path.resolve())
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model_id: str, model: torch.nn.Module | None = None) -> str:
    """Local model files: path + size + mtime of every file; otherwise the weights' hash (or the bare id)."""
    path = Path(model_id)
    if path.is_file():
        return f"file:{_stat_digest([path])}"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return f"dir:{path.resolve()}:{_stat_digest(files, path)}"
    return f"weights:{weights_digest(model)}" if model is not None else f"id:{model_id}"


def files_fingerprint(paths: Sequence[str | os.PathLike[str]]) -> str:
    """A hash of the ordered image paths with their sizes and modification times."""
    return _stat_digest([Path(p) for p in paths])


def preprocess_fingerprint(preprocess: object) -> str:
    """The transform's repr without memory addresses (stable across processes)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))


def texts_fingerprint(texts: Sequence[str]) -> str:
    """A hash of the ordered texts."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


class FeatureCache:
    """``ROOT/<hash of key parts>.npy`` (+ ``.json`` holding the parts); `root=None` disables caching."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None

    def path(self, parts: Mapping[str, str]) -> Path | None:
        """Where the array for `parts` lives (None without a cache folder)."""
        if self.root is None:
            return None
        key = hashlib.sha256(json.dumps(dict(parts), sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{key}.npy"

    def get_or_compute(self, parts: Mapping[str, str], compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for `parts`, computing and storing it on a miss."""
        path = self.path(parts)
        if path is not None and path.is_file():
            log.info("feature cache hit: %s", path)
            return np.load(path)
        array = compute()
        if path is not None:
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)
            atomic_write(path.with_suffix(".json"), json.dumps(dict(parts), indent=1, sort_keys=True))
        return array
