"""The safe decoder: every odd-but-valid image kind decodes to RGB, every broken kind raises ImageError."""

from __future__ import annotations

import hashlib
import io
import pathlib
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from test_predict_fixtures import odd_photos

from treeclip.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    check_header,
    decode_image,
    encode_jpeg,
    read_header,
    resize,
    rgb_image,
    sha256_bytes,
    sha256_file,
)
from treeclip.data.shards import WorkItem, encode_item
from treeclip.predict.decode_device import BAD_HEADER, ROTATED, _check_header
from treeclip.predict.runner import load_pixels
from treeclip.taxonomy import Taxon


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width×height, followed by almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 4))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def halves(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


def close(pixel: tuple[int, ...], expected: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


# --- odd but valid --------------------------------------------------------------------------------


def test_rgb_jpeg_from_bytes_path_and_pathlike(tmp_path: pathlib.Path) -> None:
    data = encode(halves(), "JPEG", quality=95)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    for source in (data, str(path), path):
        image = decode_image(source)
        assert image.mode == "RGB" and image.size == (40, 20)
        assert close(image.getpixel((5, 10)), (255, 0, 0)) and close(image.getpixel((35, 10)), (0, 0, 255))


def test_exif_orientation_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be turned 90° clockwise for display
    image = decode_image(encode(halves(), "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (20, 40)
    assert close(image.getpixel((10, 5)), (255, 0, 0))  # the red left half is now on top
    assert close(image.getpixel((10, 35)), (0, 0, 255))


def test_cmyk_jpeg() -> None:
    image = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert image.mode == "RGB" and close(image.getpixel((8, 8)), (255, 0, 0))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composited_on_white(fmt: str) -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.paste(1, (0, 0, 4, 8))
    image = decode_image(encode(palette, fmt, transparency=0))
    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == (0, 255, 0)
    assert image.getpixel((6, 2)) == (255, 255, 255)  # transparent black → white


def test_palette_without_transparency() -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30])
    assert decode_image(encode(palette, "PNG")).getpixel((3, 3)) == (10, 20, 30)


@pytest.mark.parametrize("mode,value", [("L", 77), ("1", 1)])
def test_grayscale_and_bilevel(mode: str, value: int) -> None:
    image = decode_image(encode(Image.new(mode, (8, 8), value), "PNG"))
    expected = 77 if mode == "L" else 255
    assert image.mode == "RGB" and image.getpixel((1, 1)) == (expected,) * 3


@pytest.mark.parametrize(
    "mode,colour,expected",
    [
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent → white
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),  # opaque stays
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),  # half black over white → mid grey
        ("LA", (0, 0), (255, 255, 255)),
        ("LA", (40, 255), (40, 40, 40)),
    ],
)
def test_alpha_composited_on_white(mode: str, colour: tuple[int, ...], expected: tuple[int, int, int]) -> None:
    image = decode_image(encode(Image.new(mode, (8, 8), colour), "PNG"))
    assert image.mode == "RGB" and close(image.getpixel((4, 4)), expected, tol=1)


@pytest.mark.parametrize("kind", ["rgba", "i16", "palette", "la", "rotated"])
def test_pil_image_converts_to_the_pixels_of_its_file(kind: str, tmp_path: pathlib.Path) -> None:
    """`rgb_image` of the PIL image opened from a file equals `decode_image` of the file, where a bare
    ``convert("RGB")`` does not (transparent areas keep the colour under them, 16-bit clips to 255, the EXIF
    orientation is ignored); the caller's image is left as it was."""
    path = odd_photos(tmp_path)[kind]
    opened = Image.open(path)
    mode, size = opened.mode, opened.size
    from_file = np.asarray(decode_image(path))
    assert np.array_equal(np.asarray(rgb_image(opened)), from_file)
    assert (opened.mode, opened.size) == (mode, size)
    bare = np.asarray(opened.convert("RGB"))
    assert bare.shape != from_file.shape or np.abs(bare.astype(int) - from_file).mean() > 20


def test_sixteen_bit_png_scaled_to_eight_bits() -> None:
    deep = Image.new("I;16", (3, 1))
    for x, value in enumerate((65535, 32896, 0)):
        deep.putpixel((x, 0), value)
    data = encode(deep, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode_image(data)
    assert [image.getpixel((x, 0)) for x in range(3)] == [(255,) * 3, (128,) * 3, (0,) * 3]


@pytest.mark.parametrize(
    "mode,value,expected", [("I", 1000 * 257, 255), ("I", 200, 200), ("F", 0.5, 127), ("F", 64.0, 64)]
)
def test_thirty_two_bit_tiff(mode: str, value: float, expected: int) -> None:
    data = encode(Image.new(mode, (4, 4), min(value, 65535) if mode == "I" else value), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    assert decode_image(data).getpixel((1, 1)) == (expected,) * 3


def test_lab_tiff_to_srgb() -> None:
    image = decode_image(encode(Image.new("LAB", (4, 4), (128, 128, 128)), "TIFF"))
    red, green, blue = image.getpixel((1, 1))
    assert abs(red - green) <= 2 and abs(green - blue) <= 2 and 100 < red < 140  # neutral mid grey


# --- broken -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt: str) -> None:
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    data = encode(noisy, fmt)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_empty_bytes_and_empty_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        decode_image(tmp_path / "empty.jpg")


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        decode_image(tmp_path / "nope.jpg")


def test_non_image(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.jpg").write_text("species,count\nPica pica,3\n")
    with pytest.raises(ImageError, match="not an image"):
        decode_image(tmp_path / "notes.jpg")


def test_corrupt_body_after_valid_header() -> None:
    data = bytearray(encode(Image.effect_noise((64, 64), 80).convert("RGB"), "PNG"))
    data[60:200] = bytes(140)  # zero the compressed stream (and its CRC) inside IDAT
    with pytest.raises(ImageError):
        decode_image(bytes(data))


def test_over_limit_checked_from_header_before_decoding() -> None:
    # no pixel data at all: a decode attempt would fail as "truncated", the size check must come first
    with pytest.raises(ImageError, match="too large: 100x100"):
        decode_image(png_header_only(100, 100), max_pixels=5_000)


def test_decompression_bomb_header() -> None:
    with pytest.raises(ImageError, match="decompression bomb|too large"):
        decode_image(png_header_only(40_000, 40_000))
    assert DEFAULT_MAX_PIXELS < 40_000 * 40_000


def test_pil_bomb_warning_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    data = encode(Image.new("RGB", (40, 40)), "PNG")  # 1,600 pixels: PIL only warns
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(data)


# --- draft, resize, encode, hashes -----------------------------------------------------------------


def test_jpeg_draft_decodes_smaller_but_not_below_request() -> None:
    data = encode(halves((800, 600)), "JPEG", quality=90)
    assert decode_image(data).size == (800, 600)
    assert decode_image(data, draft_size=100).size == (200, 150)  # 1/4 scale: shorter side 150 ≥ 100
    assert decode_image(data, draft_size=350).size == (800, 600)  # < 2× bigger: full decode
    assert decode_image(encode(halves((800, 600)), "PNG"), draft_size=100).size == (800, 600)  # not JPEG


def test_resize_modes() -> None:
    image = halves((300, 100))
    assert resize(image, 64).size == (64, 64)
    assert resize(image, 64, mode="shorter").size == (192, 64)
    assert resize(halves((100, 301)), 50, mode="shorter").size == (50, 150)
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize(image, 64, mode="crop")  # type: ignore[arg-type]


def test_encode_jpeg_round_trip() -> None:
    data = encode_jpeg(Image.new("RGBA", (16, 16), (0, 128, 0, 255)), quality=95)
    assert data[:2] == b"\xff\xd8"
    image = decode_image(data)
    assert image.size == (16, 16) and close(image.getpixel((8, 8)), (0, 128, 0), tol=4)


def test_sha256(tmp_path: pathlib.Path) -> None:
    data = b"tree of life" * 10_000
    (tmp_path / "blob").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == expected == sha256_file(tmp_path / "blob")


# --- one header check everywhere: build's shard writer, predict (files, PIL), device decoder, eval ---------

# name: (stored width, stored height, EXIF orientation, size as displayed or None when refused)
HEADER_CASES = {
    "photo": (60, 40, 1, (60, 40)),
    "wide_50": (500, 10, 1, (500, 10)),  # exactly 50:1 is kept
    "wide_51": (510, 10, 1, None),  # over 50:1: too elongated
    "rotated_6": (60, 20, 6, (20, 60)),
    "rotated_8": (60, 20, 8, (20, 60)),
    "rotated_wide": (10, 510, 8, None),
    "oversized": (9500, 9500, 1, None),  # 90.25 MP, over the 89.48 MP bomb limit; only the header says so
}
REFUSAL = "too large|too elongated|decompression bomb"


def header_case_jpeg(width: int, height: int, orientation: int) -> bytes:
    """A JPEG whose header claims width×height (pixels encoded only up to 600 per side) and EXIF orientation."""
    exif = Image.Exif()
    if orientation != 1:
        exif[ExifTags.Base.Orientation] = orientation
    data = bytearray(encode(halves((min(width, 600), min(height, 600))), "JPEG", quality=90, exif=exif))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: marker, length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def header_case_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    paths = {}
    for name, (width, height, orientation, _) in HEADER_CASES.items():
        paths[name] = folder / f"{name}.jpg"
        paths[name].write_bytes(header_case_jpeg(width, height, orientation))
    return paths


def header_case_pil(path: pathlib.Path) -> Image.Image:
    """The PIL image a caller would hand over: decoded in memory, or (too large to decode) opened lazily."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    if image.width * image.height <= DEFAULT_MAX_PIXELS:
        image.load()
    return image


def tiny_preprocess(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32))


def shard_writer_size(path: pathlib.Path) -> tuple[int, int] | str:
    item = WorkItem(key="k", source="folder", source_id=path.name, path=str(path), taxon=Taxon(),
                    sha256=sha256_file(path))
    try:
        _, width, height = encode_item(item, image_size=16, resize_mode="shorter", quality=90)
    except ImageError as error:
        return str(error)
    return width, height


@pytest.mark.parametrize("name", list(HEADER_CASES))
def test_header_refused_or_accepted_alike_everywhere(name: str, tmp_path: pathlib.Path) -> None:
    """The shard writer, predict (file and PIL), the device decoder's header check and `read_header` agree;
    the catalog size is the displayed one (orientations 6/8 swap width and height)."""
    width, height, orientation, shown = HEADER_CASES[name]
    path = header_case_files(tmp_path)[name]
    results = {"file": load_pixels(path, tiny_preprocess, None),
               "pil": load_pixels(header_case_pil(path), tiny_preprocess, None)}
    device_reason, device_bytes = _check_header(bytearray(path.read_bytes()))
    if shown is None:
        assert all(isinstance(result, str) and re.search(REFUSAL, result) for result in results.values()), results
        assert re.search(REFUSAL, str(shard_writer_size(path)))
        assert device_reason == BAD_HEADER
        with pytest.raises(ImageError, match=REFUSAL):
            read_header(path)
        return
    assert all(isinstance(result, torch.Tensor) for result in results.values()), results
    assert shard_writer_size(path) == shown == read_header(path.read_bytes()).size
    assert read_header(path).orientation == orientation
    assert (device_reason, device_bytes) == ((None, 3 * width * height) if orientation == 1 else (ROTATED, 0))


def test_pil_bomb_limit_applies_to_every_path(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lowered ``Image.MAX_IMAGE_PIXELS`` refuses a 60x40 photo in PIL form and at the device header check
    too, not only when a file is decoded (before, both accepted it)."""
    path = header_case_files(tmp_path)["photo"]
    pil = header_case_pil(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for item in (path, pil):
        assert re.search("too large|decompression bomb", str(load_pixels(item, tiny_preprocess, None)))
    assert _check_header(bytearray(path.read_bytes()))[0] == BAD_HEADER
    assert re.search("decompression bomb", str(shard_writer_size(path)))


@pytest.mark.parametrize("orientation", [6, 8])
def test_header_size_of_a_rotated_jpeg_is_swapped(orientation: int) -> None:
    data = encode(halves((48, 16)), "JPEG", exif=exif_with(orientation))
    header = read_header(data)
    assert header.size == (16, 48) and header.orientation == orientation and header.format == "JPEG"
    assert decode_image(data).size == header.size
    assert check_header(Image.open(io.BytesIO(data))).size == (16, 48)


def test_unknown_orientation_reads_as_upright() -> None:
    """Orientation 9 is no rotation for the CPU decoder, so the device decoder takes it (before: 'rotated')."""
    unknown = encode(halves((48, 16)), "JPEG", exif=exif_with(9))
    assert read_header(unknown).orientation == 1 and read_header(unknown).size == (48, 16)
    assert _check_header(bytearray(unknown)) == (None, 3 * 48 * 16)


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif
