"""Run metrics: one JSON object per line in ``RUN/metrics.jsonl``, mirrored to TensorBoard when installed.

A resumed run first drops the records of steps after the checkpoint it resumes from (it logs those steps
again), so every step appears once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from treeclip.atomic import atomic_write

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends metric records; each line is flushed and synced so a killed run keeps what it logged.
    `resume_step`: the step the run starts from; records of later steps are removed first."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, resume_step: int = 0) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_after(self.path, resume_step)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._board = _tensorboard_writer(Path(run_dir) / "tensorboard") if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        if self._board is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self._board.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self._handle.close()
        if self._board is not None:
            self._board.close()


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional dependency
    except ImportError:
        log.info("tensorboard is not installed; metrics go to %s only", METRICS_FILE)
        return None
    return SummaryWriter(log_dir=str(folder))


def _drop_after(path: Path, step: int) -> None:
    """Rewrite `path` without the records of steps after `step` and without a torn last line."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    kept = []
    for line in lines[:-1]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: dropping a line that is not JSON: %.80s", path, line)
            continue
        if int(record.get("step", 0)) <= step:
            kept.append(line)
    if len(kept) != len(lines) - 1 or lines[-1]:
        log.info("%s: dropped %d records after step %d (they are logged again)", path, len(lines) - 1 - len(kept),
                 step)
        atomic_write(path, "".join(line + "\n" for line in kept))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (a torn last line from a killed run is skipped)."""
    records = []
    path = Path(run_dir) / METRICS_FILE
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
