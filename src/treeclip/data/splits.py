"""Stable ids, sample keys, train/val assignment and shard order, all derived from hashes of the stable id.

A record's stable id is ``"{source}:{source_id}"``. Everything here is a pure function of that id (and the
build seed), never of the other records, so re-running a build or adding a source never moves an existing
image to the other split. Sources' own split hints are deliberately ignored: mixing e.g. iNat21's ``val``
folder with hash-assigned EOL images would give uneven per-source validation fractions, whereas a hash gives
every source the same fraction (BioCLIP holds out 5% per source).
"""

from __future__ import annotations

import hashlib

TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)
KEY_HEX_DIGITS = 24  # 96 bits: collisions are detected anyway, and are vanishingly rare below 10^12 images
_SCALE = float(1 << 64)


def stable_id(source: str, source_id: str) -> str:
    """The id that names one image of one source across builds."""
    return f"{source}:{source_id}"


def sample_key(stable: str) -> str:
    """The WebDataset key of an image: hex digits of its stable id's hash (no dots, no slashes)."""
    return hashlib.sha256(stable.encode("utf-8")).hexdigest()[:KEY_HEX_DIGITS]


def _unit(stable: str, seed: int, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{seed}:{stable}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_split(stable: str, *, val_fraction: float, seed: int = 0) -> str:
    """``"val"`` for a deterministic `val_fraction` of stable ids (for a given seed), ``"train"`` otherwise."""
    return VAL if _unit(stable, seed, "split") < val_fraction else TRAIN


def shard_order(stable: str, *, seed: int = 0) -> float:
    """A deterministic pseudo-random sort key, so each shard mixes sources and taxa."""
    return _unit(stable, seed, "order")
