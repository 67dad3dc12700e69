"""A nearest-neighbour index over L2-normalised embeddings (cosine = inner product), built with faiss.

faiss-cpu is used because usearch is not available from the package index here. Up to `EXACT_LIMIT`
vectors the index is exact (``IndexFlatIP``: a brute-force scan, ~10 ms per query over 100k 512-d vectors);
beyond, an HNSW graph (``IndexHNSWFlat``, inner product) keeps queries sub-linear.

An index folder holds ``index.faiss``, ``paths.json`` (the row → image path list) and ``index.json``
(model id, dim, count, kind).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from treeclip.atomic import atomic_path, atomic_write
from treeclip.errors import UsageError

EXACT_LIMIT = 200_000
HNSW_NEIGHBOURS = 32
INDEX_FILE, PATHS_FILE, META_FILE = "index.faiss", "paths.json", "index.json"


def _faiss() -> Any:
    try:
        import faiss  # noqa: PLC0415 - optional dependency, only index/search need it
    except ImportError as exc:
        raise UsageError("vector search needs faiss: pip install faiss-cpu") from exc
    return faiss


@dataclass
class VectorIndex:
    """A faiss index with the image path of every row and the model that made the vectors."""

    index: Any
    paths: list[str]
    model_id: str

    @classmethod
    def build(cls, vectors: np.ndarray, paths: Sequence[str], *, model_id: str = "",
              kind: str = "auto") -> VectorIndex:
        """Index `vectors` (``[n, dim]``, normalised here); kind "flat", "hnsw" or "auto" (by size)."""
        faiss = _faiss()
        data = _normalised(vectors)
        if kind == "auto":
            kind = "flat" if len(data) <= EXACT_LIMIT else "hnsw"
        if kind == "flat":
            index = faiss.IndexFlatIP(data.shape[1])
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(data.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown index kind {kind!r}; expected auto, flat or hnsw")
        index.add(data)
        return cls(index, list(paths), model_id)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        """For each query vector, the k nearest (path, cosine similarity), best first."""
        scores, ids = self.index.search(_normalised(queries), min(k, len(self.paths)))
        return [[(self.paths[i], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
                for row_s, row_i in zip(scores, ids, strict=True)]

    def save(self, out: str | os.PathLike[str]) -> Path:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / INDEX_FILE) as tmp:
            _faiss().write_index(self.index, str(tmp))
        atomic_write(folder / PATHS_FILE, json.dumps(self.paths, ensure_ascii=False))
        meta = {"model": self.model_id, "dim": self.index.d, "count": len(self.paths),
                "kind": type(self.index).__name__}
        atomic_write(folder / META_FILE, json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> VectorIndex:
        root = Path(folder)
        if not (root / INDEX_FILE).is_file():
            raise UsageError(f"{folder} is not a vector index (no {INDEX_FILE}); build one with `treeclip index`")
        meta = json.loads((root / META_FILE).read_text(encoding="utf-8"))
        paths = json.loads((root / PATHS_FILE).read_text(encoding="utf-8"))
        return cls(_faiss().read_index(str(root / INDEX_FILE)), paths, meta.get("model", ""))


def _normalised(vectors: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    if data.ndim != 2 or len(data) == 0:
        raise UsageError(f"expected a non-empty [n, dim] matrix of embeddings, got shape {data.shape}")
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    return data / np.maximum(norms, 1e-12)


def read_embeddings(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[str], str]:
    """(vectors, paths, model id) from a `treeclip embed` Parquet file; error rows are skipped."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UsageError(f"cannot read embeddings {path}: {exc}") from exc
    if "embedding" not in table.column_names:
        raise UsageError(f"{path} has no 'embedding' column; make it with `treeclip embed`")
    rows = [row for row in table.to_pylist() if row.get("embedding") is not None]
    if not rows:
        raise UsageError(f"{path} holds no embeddings")
    models = {row.get("model") or "" for row in rows}
    return (np.asarray([row["embedding"] for row in rows], dtype=np.float32), [row["path"] for row in rows],
            sorted(models)[0] if len(models) == 1 else "")
