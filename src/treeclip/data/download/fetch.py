"""Fetching one image over HTTP: httpx for the transfer, pyrate-limiter for per-host rates, tenacity for
retries with exponential backoff.

- Retried: HTTP 429 and 5xx, timeouts, connection failures and truncated bodies (fewer bytes than the
  Content-Length). A ``Retry-After`` header (seconds or an HTTP date) sets the wait, capped at `max_wait`.
- Not retried: other 4xx, a body over `max_bytes`, too many redirects, and bytes that are not an image
  (checked by their signature through Pillow's format detection, whatever the Content-Type says: an HTML
  error page served with 200 is an error). Nothing fetched is decoded, executed or unpickled here.
- Every host gets its own limiter (`rate` requests per second, 0 for none); workers share it.
"""

from __future__ import annotations

import email.utils
import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
from PIL import Image
from pyrate_limiter import Duration, Limiter, Rate
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)

IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Fetched:
    """The outcome of one URL: the image bytes (ok) or why not."""

    ok: bool
    reason: str = ""
    http_status: int = 0
    data: bytes = b""
    content_type: str = ""
    extension: str = ""
    attempts: int = 1


class Transient(Exception):
    """A failure worth retrying; `retry_after` is the server's requested wait in seconds, if it gave one."""

    def __init__(self, reason: str, http_status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.http_status, self.retry_after = reason, http_status, retry_after


class Refused(Exception):
    """A failure retrying cannot mend (404, not an image, too large)."""

    def __init__(self, reason: str, http_status: int = 0, content_type: str = "") -> None:
        super().__init__(reason)
        self.reason, self.http_status, self.content_type = reason, http_status, content_type


class Fetcher:
    """Fetches image URLs with per-host rate limits and retries; thread-safe (one per download run)."""

    def __init__(self, *, rate: float = 10.0, retries: int = 4, backoff: float = 1.0, max_wait: float = 60.0,
                 timeout: float = 30.0, max_bytes: int = 50 << 20, max_redirects: int = 5,
                 user_agent: str = "treeclip-download") -> None:
        self.rate, self.max_bytes, self.max_wait = rate, max_bytes, max_wait
        self._client = httpx.Client(follow_redirects=True, max_redirects=max_redirects, timeout=timeout,
                                    headers={"User-Agent": user_agent})
        self._limiters: dict[str, Limiter] = {}
        self._lock = threading.Lock()
        self._exponential = wait_exponential(multiplier=backoff, max=max_wait)
        self._retrying = Retrying(stop=stop_after_attempt(retries + 1), wait=self._wait, reraise=True,
                                  retry=retry_if_exception_type(Transient))

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str) -> Fetched:
        """The image at `url`, or the reason it could not be had (never raises for network trouble)."""
        attempts = 0
        try:
            for attempt in self._retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return self._once(url, attempts)
        except Transient as exc:
            return Fetched(False, f"{exc.reason} (after {attempts} attempts)", exc.http_status, attempts=attempts)
        except Refused as exc:
            return Fetched(False, exc.reason, exc.http_status, content_type=exc.content_type, attempts=attempts)
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _wait(self, state: RetryCallState) -> float:
        """The server's Retry-After when it gave one (capped), else exponential backoff."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        return float(self._exponential(state))

    def _limiter(self, host: str) -> Limiter | None:
        if self.rate <= 0:
            return None
        with self._lock:
            if host not in self._limiters:
                per_minute = max(1, round(self.rate * 60))
                self._limiters[host] = Limiter(Rate(per_minute, Duration.MINUTE) if self.rate < 1
                                               else Rate(max(1, round(self.rate)), Duration.SECOND))
            return self._limiters[host]

    def _once(self, url: str, attempt: int) -> Fetched:
        host = urlparse(url).netloc.lower()
        limiter = self._limiter(host)
        if limiter is not None:
            limiter.try_acquire(host)
        try:
            with self._client.stream("GET", url) as response:
                status, content_type = response.status_code, response.headers.get("content-type", "")
                _check_status(response)
                data = self._body(response)
        except httpx.TooManyRedirects:
            raise Refused("too many redirects") from None
        except httpx.UnsupportedProtocol as exc:  # e.g. a redirect to file:// or ftp://
            raise Refused(f"unsupported URL scheme: {' '.join(str(exc).split())}") from None
        except httpx.RemoteProtocolError as exc:  # h11's report of a body shorter than its Content-Length
            raise Transient(f"truncated or malformed response: {' '.join(str(exc).split())}") from None
        except httpx.TimeoutException as exc:
            raise Transient(f"timed out ({type(exc).__name__})") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise Transient(f"connection failed: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        extension = image_extension(data, content_type, status)
        return Fetched(True, "", status, data, content_type, extension, attempt)

    def _body(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise Refused(f"too large: {declared} bytes > limit {self.max_bytes}", response.status_code)
        buffer = bytearray()
        for chunk in response.iter_bytes():
            buffer += chunk
            if len(buffer) > self.max_bytes:
                raise Refused(f"too large: over the limit of {self.max_bytes} bytes", response.status_code)
        if declared.isdigit() and len(buffer) < int(declared) and "content-encoding" not in response.headers:
            raise Transient(f"truncated: {len(buffer)} of {declared} bytes", response.status_code)
        return bytes(buffer)


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if status in RETRIED_STATUS or status >= 500:
        raise Transient(f"HTTP {status}", status, _retry_after(response.headers.get("retry-after", "")))
    if status != 200:
        raise Refused(f"HTTP {status}", status, response.headers.get("content-type", ""))


def _retry_after(value: str) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def image_extension(data: bytes, content_type: str, status: int) -> str:
    """The file extension of image bytes; Refused when they are not an image of a known format."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # identifies the format from the signature; decodes nothing
            image_format: Any = image.format
    except Exception:  # noqa: BLE001 - Pillow raises many types on non-image bytes
        image_format = None
    if image_format not in IMAGE_FORMATS:
        head = data[:40].decode("ascii", errors="replace").replace("\n", " ")
        raise Refused(f"not an image (content-type {content_type or 'none'}, {len(data)} bytes, starts {head!r})",
                      status, content_type)
    return IMAGE_FORMATS[image_format]
