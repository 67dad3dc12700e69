"""Training checkpoints: written atomically by rank 0, the last N kept, the newest loadable one resumed.

A checkpoint (``RUN/checkpoints/step-00000100.pt``) is a dict with ``model`` (the open_clip state dict),
``heads`` (classifier heads of the ce objectives, or None), ``optimizer``, ``scaler``, ``step`` (optimizer
steps done; the learning-rate schedule is a function of it), ``epoch``, ``rng`` (every process's RNG states:
Python's ``random``, NumPy's global generator, torch CPU and CUDA, all stored as tensors so that a checkpoint
loads with ``torch.load(weights_only=True)`` and loading never unpickles code), ``data_passes`` (every process's data pass) and ``config`` (the resolved config, its ``model``
section completed with ``model_cfg`` and ``preprocess_cfg``, so `treeclip.model.create_model` loads a
checkpoint as a model id).
It is written to a temporary name, flushed to disk, and renamed, so a killed run never leaves a partial
file under a checkpoint's name.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from treeclip.atomic import atomic_path, is_temp_file
from treeclip.errors import UsageError

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.pt$")


def capture_rng(device: torch.device) -> dict[str, torch.Tensor | None]:
    """This process's RNG states as tensors (see the module docstring)."""
    version, mt_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": torch.tensor([version, *mt_state], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    """Set this process's RNGs from `capture_rng`'s tensors (older checkpoints hold torch states only)."""
    if state.get("python") is not None:
        version, *mt_state = (int(v) for v in state["python"].tolist())
        gauss = float(state["python_gauss"][0])
        random.setstate((version, tuple(mt_state), None if gauss != gauss else gauss))
    if state.get("numpy") is not None:
        pos, has_gauss, cached = state["numpy_extra"].tolist()
        np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_temp_files(run_dir: Path) -> None:
    """Delete temporary files a killed writer left behind."""
    for path in (Path(run_dir) / CHECKPOINT_DIR).glob(".*"):
        if is_temp_file(path):
            path.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path, state: dict[str, Any], *, keep_last: int) -> Path:
    """Write `state` atomically as ``step-N.pt`` and delete all but the newest `keep_last` checkpoints."""
    path = checkpoint_path(run_dir, int(state["step"]))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU (tensors and plain Python values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_latest(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads (older ones are tried if the newest is unreadable), or None."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except Exception as error:  # noqa: BLE001 - any unreadable file: fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, error)
    return None


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run folder; UsageError when there is none."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    if path.is_dir():
        found = list_checkpoints(path)
        if found:
            return found[-1]
        raise UsageError(f"{path}: run folder has no checkpoints in {CHECKPOINT_DIR}/")
    raise UsageError(f"{path}: no such run folder or checkpoint file")
