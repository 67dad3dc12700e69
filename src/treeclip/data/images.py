"""The project's one image decoder, plus resizing, JPEG encoding and hashing.

`decode_image` turns whatever a source holds (JPEG, PNG, TIFF, GIF, WebP ... in any pixel mode) into an
8-bit RGB `PIL.Image.Image` with the EXIF orientation applied, or raises `ImageError` with a short reason:

- modes: CMYK → RGB (Pillow's conversion, Adobe-inverted JPEGs handled; embedded ICC profiles are not
  applied); LAB → sRGB through littleCMS; palette (with or without transparency), grayscale, LA/RGBA and
  other alpha modes → composited on white; 16-bit (``I;16*``) → 8-bit by ``v / 257``; 32-bit ``I``/``F`` → 8-bit: values
  that already fit in 0..255 are kept, larger ones are read as 16-bit (``/ 257``), floats in 0..1 as
  fractions (``* 255``);
- refused: empty, missing or non-image files, truncated data, images with more than `max_pixels`
  pixels and images whose long side is more than `max_aspect` times the short side (both checked from
  the header, before any pixel is decoded: a 4000×1 strip is tiny but any shorter-side resize of it to
  model size is not). PIL's own decompression-bomb limit (global ``Image.MAX_IMAGE_PIXELS``) applies
  too, so the effective limit is the smaller of the two.

`check_header` is the one implementation of these refusals and of the header's displayed size (EXIF
orientations 5-8 swap width and height): the decoder, the shard writer's catalog sizes, predict's device
decoder and in-memory PIL images given to predict/embed/eval all use it, so a given image is refused or
accepted the same way everywhere.

With ``draft_size=N`` a JPEG at least twice as large as N on both sides is decoded directly at 1/2, 1/4 or
1/8 scale (libjpeg's DCT scaling), never below N on either side: the cheap way to make BioCLIP-sized
shards from multi-megapixel photos.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from PIL import ExifTags, Image, ImageOps

if TYPE_CHECKING:
    from PIL import ImageCms

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's default bomb limit: 0.25 GiB of 24-bit pixels
DEFAULT_MAX_ASPECT = 50  # long side / short side; panoramas are ~10, so only degenerate strips are refused
WHITE = (255, 255, 255, 255)
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the stored image by 90 degrees
ResizeMode = Literal["squash", "shorter"]
RESIZE_MODES: tuple[str, ...] = ("squash", "shorter")


class ImageError(ValueError):
    """An image that cannot be used; the message is a short human reason."""


@dataclass(frozen=True)
class Header:
    """What an image's header says: `size` as displayed (EXIF orientation applied), the stored `orientation`
    (1-8; 1 when absent, malformed or out of range), PIL's `format` (None for an in-memory image) and `mode`."""

    size: tuple[int, int]
    orientation: int
    format: str | None
    mode: str


def decode_image(
    source: bytes | str | os.PathLike[str] | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> Image.Image:
    """Decode image bytes or a file into an oriented 8-bit RGB image; `ImageError` if unusable. An in-memory PIL
    image is checked and converted the same way (`check_header`, `rgb_image`; `draft_size` does not apply), so
    it gives the pixels of the file it was decoded from; the image itself is not changed."""
    if isinstance(source, Image.Image):
        check_header(source, max_pixels=max_pixels, max_aspect=max_aspect)
        return rgb_image(source)
    with _opened(source) as image:
        _refuse(image.size, max_pixels=max_pixels, max_aspect=max_aspect)  # orientation: after load (PNG EXIF)
        if draft_size and image.format == "JPEG":
            image.draft(None, (draft_size, draft_size))
        image.load()
        return rgb_image(image)


@contextlib.contextmanager
def _opened(source: bytes | str | os.PathLike[str]) -> Iterator[Image.Image]:
    """`source` opened lazily by PIL; any failure in the block (PIL's bomb warning included) → `ImageError`."""
    with _open_source(source) as fp, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(fp) as image:
                yield image
        except ImageError:
            raise
        except Image.UnidentifiedImageError:
            raise ImageError("not an image (unknown format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"decompression bomb: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - plugins raise many types on broken data
            raise ImageError(_broken_reason(exc)) from None


def _open_source(source: bytes | str | os.PathLike[str]) -> io.BytesIO | io.BufferedReader:
    """A binary file object over `source`; `ImageError` for empty or unreadable input."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("empty file")
        return io.BytesIO(bytes(source))
    try:
        if os.path.getsize(source) == 0:
            raise ImageError("empty file")
        return open(source, "rb")
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None


def read_header(source: bytes | str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_aspect: float = DEFAULT_MAX_ASPECT) -> Header:
    """`check_header` of an image's bytes or file, reading the header only; `ImageError` (with the reason
    `decode_image` would give) for an unreadable or refused header."""
    with _opened(source) as image:
        return check_header(image, max_pixels=max_pixels, max_aspect=max_aspect)


def check_header(image: Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_aspect: float = DEFAULT_MAX_ASPECT) -> Header:
    """The `Header` of an opened (not yet decoded) or in-memory image, or `ImageError` saying why it is refused:
    a size that is not positive, more pixels than `max_pixels` or PIL's ``Image.MAX_IMAGE_PIXELS`` (the
    smaller), or a long side over `max_aspect` times the short side. Reading a PNG's EXIF decodes it (its
    eXIf chunk may follow the pixels), so the size is refused first."""
    _refuse(image.size, max_pixels=max_pixels, max_aspect=max_aspect)
    orientation = exif_orientation(image)
    width, height = image.size
    size = (height, width) if orientation in SWAPPING_ORIENTATIONS else (width, height)
    return Header(size=size, orientation=orientation, format=image.format, mode=image.mode)


def _refuse(size: tuple[int, int], *, max_pixels: int, max_aspect: float) -> None:
    """`check_geometry` within the smaller of `max_pixels` and PIL's global bomb limit."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    check_geometry(size, max_pixels=min(max_pixels, pil_limit) if pil_limit else max_pixels, max_aspect=max_aspect)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (2-8 rotate or flip), 1 when absent, out of range or in a malformed EXIF block."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not lose the image
        log.debug("ignoring malformed EXIF orientation: %s", exc)
        return 1
    return orientation if orientation in range(2, 9) else 1


def check_geometry(size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_aspect: float = DEFAULT_MAX_ASPECT) -> None:
    """`ImageError` unless a width×height is positive, within `max_pixels` and within `max_aspect`."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"too large: {width}x{height} = {width * height} pixels > limit {max_pixels}")
    if max(width, height) > max_aspect * min(width, height):
        raise ImageError(f"too elongated: {width}x{height} (aspect ratio above {max_aspect:g}:1 cannot be resized "
                         "to model size in bounded memory)")


def _broken_reason(exc: Exception) -> str:
    text = str(exc)
    if "truncated" in text.lower() or isinstance(exc, (EOFError, SyntaxError)):
        return f"truncated or corrupt image data ({text or type(exc).__name__})"
    return f"cannot decode: {text or type(exc).__name__}"


def rgb_image(image: Image.Image) -> Image.Image:
    """An image as `decode_image` returns it: EXIF orientation applied, any mode → 8-bit RGB (see the module
    docstring). Callers given an in-memory PIL image (predict, embed, eval) use this, so a PIL image gives the
    same pixels as the file it was decoded from; the image itself is not changed."""
    return _to_rgb(_orient(image))


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the image as stored."""
    if exif_orientation(image) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not lose the image
        log.debug("ignoring malformed EXIF orientation: %s", exc)
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB; transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode == "LAB":
        return _lab_to_srgb(image)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def _lab_to_srgb(image: Image.Image) -> Image.Image:
    from PIL import ImageCms  # littleCMS is optional in Pillow builds; only LAB images need it

    return ImageCms.applyTransform(image, _lab_transform())


@functools.cache
def _lab_transform() -> ImageCms.ImageCmsTransform:
    from PIL import ImageCms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel image → mode L, scaled as the module docstring says."""
    if image.mode.startswith("I;16"):
        image, scale = image.convert("I"), 1 / 257
    else:
        high = image.getextrema()[1]
        if image.mode == "F" and high <= 1.0:
            scale = 255.0
        else:
            scale = 1.0 if high <= 255 else 1 / 257
    return image.point(lambda value: value * scale).convert("L")


def resize(image: Image.Image, size: int, mode: ResizeMode = "squash") -> Image.Image:
    """Resize to ``size``: "squash" stretches to size×size (what BioCLIP's shards hold), "shorter" keeps
    the aspect ratio with the shorter side = size.

    Bicubic, as BioCLIP's own shard writer used: Pillow widens the kernel when downscaling, so it is
    antialiased, and it is close to LANCZOS in quality at a lower cost.
    """
    if size < 1:
        raise ValueError(f"resize size must be >= 1, got {size}")
    width, height = image.size
    check_geometry(image.size, max_pixels=width * height)  # the aspect bound keeps "shorter" output bounded
    if mode == "squash":
        target = (size, size)
    elif mode == "shorter":
        scale = size / min(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
    else:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.BICUBIC)


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """Baseline JPEG bytes of an image (converted to RGB if needed); no metadata is copied."""
    buffer = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
