"""Progress on stderr: a tqdm bar on a terminal; when stderr is piped or redirected, a plain line now and then
(``treeclip CMD: 1,200/5,000 taxa (24%)``) and one at the end, so logs hold no carriage-return redraws."""

from __future__ import annotations

import sys
import time
from typing import Any

PLAIN_INTERVAL_S = 30.0


class PlainProgress:
    """tqdm's `update`/`close` and context-manager surface, writing a line at most every `interval_s` seconds
    and a last one on close."""

    def __init__(self, *, total: int | None, initial: int, unit: str, label: str, interval_s: float) -> None:
        self.total, self.n, self.unit, self.label, self.interval_s = total, initial, unit, label, interval_s
        self._last, self._written = time.monotonic(), -1

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval_s:
            self._write()

    def close(self) -> None:
        if self._written != self.n:  # the last figure once, however often close is called
            self._write()

    def _write(self) -> None:
        self._last, self._written = time.monotonic(), self.n
        done = f"{self.n:,}/{self.total:,} {self.unit}" if self.total else f"{self.n:,} {self.unit}"
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        sys.stderr.write(f"{self.label}: {done}{share}\n")
        sys.stderr.flush()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def progress(*, total: int | None, unit: str, label: str, initial: int = 0, desc: str | None = None,
             interval_s: float = PLAIN_INTERVAL_S) -> Any:
    """A tqdm bar on stderr (titled `desc`) when it is a terminal, else a `PlainProgress` labelled `label`
    (e.g. ``treeclip bank build``)."""
    if not sys.stderr.isatty():
        return PlainProgress(total=total, initial=initial, unit=unit, label=label, interval_s=interval_s)
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True,
                leave=False)
