"""JPEG decoding on the model's device (`treeclip predict --decode device`): batches in input order.

Threads read each file's bytes and check its header with PIL (no pixel is decoded there): a plain JPEG (RGB
or grayscale, no EXIF rotation, within the size limits) is queued for the device; anything else is decoded
on the CPU by the usual path (`treeclip.data.images.decode_image` + the float transform), in the same
threads, and reported. The queued JPEGs of a batch are decoded together by ``torchvision.io.decode_jpeg``
on the device (nvJPEG on CUDA, libjpeg-turbo on a CPU device), then resized, cropped and normalised there by
the model's own transform steps (`treeclip.model.preprocess.Preprocess.from_decoded`). A JPEG the device
decoder refuses is decoded on the CPU instead (so the CPU path, the project's one decoder, names any error).

Device memory: a batch's JPEGs are decoded in sub-batches whose full-size pixels (width x height x 3 bytes,
from each header) stay within `max_decoded_bytes`, each transformed and released before the next is decoded
(a photo larger than that is decoded alone); each batched resize takes float copies of at most a quarter of
that many values, i.e. as many bytes again. So the decoder holds about 2.5x `max_decoded_bytes` at its peak
(2.5 GiB by default) whatever the batch size, where a whole batch of 256 12 MP photos would be ~9 GB of uint8.

Why some images go to the CPU (`FALLBACK_REASONS`): torchvision applies EXIF orientation only on the CPU
decoder, nvJPEG has no CMYK/YCCK output, the size limits must be checked before a device buffer is sized
from a header, and other formats have no device decoder. The device path decodes at full resolution (no DCT
draft scaling), so its pixels differ slightly from the CPU path's for JPEGs large enough for draft mode
(agreement measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from treeclip.data.images import ImageError, read_header
from treeclip.model.preprocess import Preprocess
from treeclip.predict.runner import Batch, ImageItem, load_pixels

JPEG_MAGIC = b"\xff\xd8\xff"
DEVICE_MODES = ("RGB", "L")  # JPEG colour modes the device decoder turns into RGB
ON_DEVICE = "on the device"
NOT_A_FILE, NOT_JPEG, BAD_HEADER = "in-memory image", "not a JPEG", "unreadable header or over the size limits"
COLOUR, ROTATED, REFUSED = "CMYK/YCCK JPEG", "EXIF-rotated JPEG", "refused by the device decoder"
FALLBACK_REASONS = (NOT_A_FILE, NOT_JPEG, BAD_HEADER, COLOUR, ROTATED, REFUSED)
DECODED_BYTES = 1 << 30  # default cap on full-size uint8 pixels decoded at once: 29 photos of 4000x3000
FLOAT_BYTES = 4
log = logging.getLogger(__name__)

# (ON_DEVICE, file bytes, RGB bytes once decoded) or (fallback reason, CPU pixels or error, 0)
Read = tuple[str, torch.Tensor | str, int]


def device_batches(items: Sequence[ImageItem], names: Sequence[str], *, preprocess: Preprocess, batch_size: int,
                   workers: int, device: torch.device, draft_size: int | None, prefetch: int = 2,
                   report: Counter | None = None, max_decoded_bytes: int = DECODED_BYTES) -> Iterator[Batch]:
    """Batches in input order with float pixels on `device` (see the module docstring); `report` counts the
    images decoded `ON_DEVICE` and those decoded on the CPU per fallback reason (logged at the end too);
    `max_decoded_bytes` caps the full-size pixels decoded at once (see the module docstring).

    `workers` threads read files; one more thread decodes and transforms each batch on the device, up to
    `prefetch` batches ahead, so the device decoder's host-side work overlaps with the caller's model calls."""
    if max_decoded_bytes < 1:
        raise ValueError(f"max_decoded_bytes must be positive, got {max_decoded_bytes}")
    counts: Counter = Counter() if report is None else report
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as assembler:
        pending: deque[Future[Batch]] = deque()
        for start in range(0, len(items), batch_size):
            reads = [pool.submit(_read, item, preprocess, draft_size) for item in items[start : start + batch_size]]
            pending.append(assembler.submit(_assemble, start, reads, items, names, preprocess, device, draft_size,
                                            counts, max_decoded_bytes))
            if len(pending) > prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    _log_counts(counts, device)


def _read(item: ImageItem, preprocess: Preprocess, draft_size: int | None) -> Read:
    """A plain JPEG's bytes and decoded size for the device, else the CPU path's pixels (or error) and why
    it was taken."""
    if isinstance(item, Image.Image):
        return NOT_A_FILE, load_pixels(item, preprocess, draft_size), 0
    try:
        with open(item, "rb") as file:
            if file.read(len(JPEG_MAGIC)) != JPEG_MAGIC:  # other formats are not read twice
                return NOT_JPEG, load_pixels(item, preprocess, draft_size), 0
            data = bytearray(JPEG_MAGIC + file.read())
    except OSError:
        return BAD_HEADER, load_pixels(item, preprocess, draft_size), 0  # the CPU path names the error
    reason, decoded_bytes = _check_header(data)
    if reason is not None:
        return reason, load_pixels(item, preprocess, draft_size), 0
    return ON_DEVICE, torch.frombuffer(data, dtype=torch.uint8), decoded_bytes


def _check_header(data: bytearray) -> tuple[str | None, int]:
    """(None, RGB bytes once decoded) for a JPEG the device can decode as the CPU path would, else (why not,
    0); from the header only (`treeclip.data.images.read_header`, the decoder's own checks)."""
    try:
        header = read_header(data)
    except ImageError:  # the CPU path reports it
        return BAD_HEADER, 0
    if header.format != "JPEG":
        return NOT_JPEG, 0
    if header.mode not in DEVICE_MODES:
        return COLOUR, 0
    if header.orientation != 1:
        return ROTATED, 0
    width, height = header.size
    return None, 3 * width * height


def _assemble(start: int, futures: list[Future], items: Sequence[ImageItem], names: Sequence[str],
              preprocess: Preprocess, device: torch.device, draft_size: int | None, counts: Counter,
              max_decoded_bytes: int) -> Batch:
    """One batch: its JPEGs decoded on the device in sub-batches within `max_decoded_bytes`, the rest as the
    CPU path gave them, in order."""
    reads = [future.result() for future in futures]
    batch_names = names[start : start + len(reads)]
    results: list[torch.Tensor | str] = [result for _, result, _ in reads]
    jpegs = [offset for offset, (how, _, _) in enumerate(reads) if how == ON_DEVICE]
    for chunk in _within_budget(jpegs, [reads[offset][2] for offset in jpegs], max_decoded_bytes):
        transformed = _decode_and_transform([reads[offset][1] for offset in chunk], preprocess, device,
                                            max_values=max_decoded_bytes // FLOAT_BYTES)
        for offset, pixels in zip(chunk, transformed, strict=True):
            if pixels is None:
                reads[offset] = (REFUSED, "", 0)
                pixels = load_pixels(items[start + offset], preprocess, draft_size)
            results[offset] = pixels
    counts.update(how for how, _, _ in reads)
    good = [offset for offset, result in enumerate(results) if not isinstance(result, str)]
    pixels = torch.stack([results[offset].to(device, non_blocking=True) for offset in good]) if good else None
    errors = [(batch_names[offset], result) for offset, result in enumerate(results) if isinstance(result, str)]
    return Batch([batch_names[offset] for offset in good], pixels, errors)


def _within_budget(offsets: list[int], sizes: list[int], budget: int) -> list[list[int]]:
    """`offsets` cut, in order, into runs whose `sizes` add up to at most `budget` (an oversized one alone)."""
    chunks: list[list[int]] = [[]]
    total = 0
    for offset, size in zip(offsets, sizes, strict=True):
        if chunks[-1] and total + size > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(offset)
        total += size
    return [chunk for chunk in chunks if chunk]


def _decode_and_transform(data: list[torch.Tensor], preprocess: Preprocess, device: torch.device, *,
                          max_values: int) -> list[torch.Tensor | None]:
    """The model's input for each JPEG (None where the device decoder refused it); the full-size decoded
    images are released when this returns, before the caller decodes its next sub-batch."""
    decoded = _decode_on_device(data, device)
    transformed: list[torch.Tensor | None] = [None] * len(data)
    done = [(index, image) for index, image in enumerate(decoded) if image is not None]
    for group in _same_size_groups(done, max_values):
        pixels = preprocess.from_decoded(torch.stack([image for _, image in group]))
        for (index, _), one in zip(group, pixels, strict=True):
            transformed[index] = one
    return transformed


def _same_size_groups(images: list[tuple[int, torch.Tensor]],
                      max_values: int) -> list[list[tuple[int, torch.Tensor]]]:
    """(index, image) pairs grouped by image size (photos from one camera share it), so each group is
    transformed by one batched resize; a group holds at most `max_values` values (one image if larger)."""
    groups: dict[tuple[int, ...], list[list[tuple[int, torch.Tensor]]]] = {}
    for index, image in images:
        chunks = groups.setdefault(tuple(image.shape), [[]])
        if chunks[-1] and (len(chunks[-1]) + 1) * image.numel() > max_values:
            chunks.append([])
        chunks[-1].append((index, image))
    return [chunk for chunks in groups.values() for chunk in chunks]


def _decode_on_device(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """``[3, H, W]`` uint8 RGB tensors on `device` (None for each JPEG the decoder refuses): one batched call,
    and one call per image when the batch fails (torchvision returns no partial results)."""
    if not data:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 deprecates its codecs (for TorchCodec)
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 - any refusal (torchvision raises RuntimeError, builds without nvJPEG others)
            return [_decode_one(one, device) for one in data]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except Exception as error:  # noqa: BLE001 - the CPU path decodes it instead, and names any real error
        log.debug("device JPEG decoder refused an image: %s", error)
        return None


def _log_counts(counts: Counter, device: torch.device) -> None:
    """One line: images decoded on the device, and those decoded on the CPU by reason (a warning if any)."""
    on_cpu = sum(count for how, count in counts.items() if how != ON_DEVICE)
    if not counts:
        return
    reasons = ", ".join(f"{counts[reason]} {reason}" for reason in FALLBACK_REASONS if counts[reason])
    message = f"decoded {counts[ON_DEVICE]} JPEGs on {device}; {on_cpu} images on the CPU"
    if on_cpu:
        log.warning("%s (%s)", message, reasons)
    else:
        log.info(message)
