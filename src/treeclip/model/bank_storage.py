"""Compact label-bank matrices: float16, or int8 with one float32 scale per column (per taxon).

A bank's ``txt_emb_species.npy`` may be stored as

- ``float32`` (the released format), 4 bytes per value;
- ``float16`` (the released format too), 2 bytes per value;
- ``int8`` with ``txt_emb_species_scale.npy`` (float32 ``[n_taxa]``): column ``j`` is ``q[:, j] * scale[j]``,
  with ``scale[j] = max|x[:, j]| / 127`` (symmetric rounding), 1 byte per value. treeclip-only: other readers
  of the released format expect a float matrix.

All stay memory-mapped. `BankMatrix` multiplies image features by a compact matrix without ever holding it
in float32: ``features @ matrix`` converts `chunk` columns at a time (on the device, for a GPU), so the
memory the bank occupies is its stored size plus one chunk.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
INT8_MAX = 127
DEFAULT_CHUNK = 16384


def storage_dtype(name: str) -> str:
    """The numpy dtype name of a storage name (fp32/fp16/int8, or float32/float16/int8); ValueError else."""
    dtype = DTYPES.get(name, name)
    if dtype not in DTYPES.values():
        raise ValueError(f"unknown bank dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return dtype


def quantize_columns(matrix: np.ndarray, *, chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(int8 ``[dim, n]``, float32 scales ``[n]``) of a ``[dim, n]`` matrix, column-symmetric, in chunks."""
    dim, n = matrix.shape
    codes, scales = np.empty((dim, n), dtype=np.int8), np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(matrix[:, start : start + chunk], dtype=np.float32)
        scale = np.abs(block).max(axis=0) / INT8_MAX
        scale[scale == 0] = 1.0
        codes[:, start : start + chunk] = np.rint(block / scale).clip(-INT8_MAX, INT8_MAX)
        scales[start : start + chunk] = scale
    return codes, scales


def stored_bytes(matrix: np.ndarray, scales: np.ndarray | None) -> int:
    """Bytes of a bank matrix as stored (and as resident once every page has been read)."""
    return int(matrix.nbytes + (scales.nbytes if scales is not None else 0))


class BankMatrix:
    """A ``[dim, n]`` float16/int8 bank matrix that right-multiplies float32 features chunk by chunk.

    ``features @ bank_matrix`` (features ``[B, dim]``) gives float32 ``[B, n]`` scores, as with the float32
    matrix, without materialising it. On a CUDA device the stored matrix is copied there once, compact.
    """

    def __init__(self, matrix: np.ndarray, scales: np.ndarray | None, *, device: str | torch.device = "cpu",
                 chunk: int = DEFAULT_CHUNK) -> None:
        self.device, self.chunk = torch.device(device), chunk
        self.shape = tuple(matrix.shape)
        with warnings.catch_warnings():  # a read-only memory map is only ever read here
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = torch.from_numpy(matrix).to(self.device)
            self.scales = torch.from_numpy(np.asarray(scales)).to(self.device) if scales is not None else None

    def __rmatmul__(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        out = features.new_empty(features.shape[0], self.shape[1])
        for start in range(0, self.shape[1], self.chunk):
            end = min(start + self.chunk, self.shape[1])
            out[:, start:end] = features @ self.matrix[:, start:end].float()
            if self.scales is not None:
                out[:, start:end] *= self.scales[start:end]
        return out
