"""A bad row, file or image: reported with where it happened and why, never fatal on its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Problem:
    """A bad source row or file: reported, never fatal."""

    origin: str  # "file:line" or "file"
    reason: str
