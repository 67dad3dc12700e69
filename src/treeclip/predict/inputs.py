"""The image inputs of a command: files, folders, glob patterns and ``@LIST`` files, expanded to paths.

Light (no torch, no image library), so a command checks its inputs before loading a model."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from treeclip.data.sources.base import iter_images
from treeclip.errors import UsageError


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
