"""JPEG decoding on the model's device (`treeclip predict --decode device`): batches in input order.

Threads read each file's bytes and check its header with PIL (no pixel is decoded there): a plain JPEG (RGB
or grayscale, no EXIF rotation, within the size limits) is queued for the device; anything else is decoded
on the CPU by the usual path (`treeclip.data.images.decode_image` + the float transform), in the same
threads, and reported. The queued JPEGs of a batch are decoded together by ``torchvision.io.decode_jpeg``
on the device (nvJPEG on CUDA, libjpeg-turbo on a CPU device), then resized, cropped and normalised there by
the model's own transform steps (`treeclip.model.preprocess.Preprocess.from_decoded`). A JPEG the device
decoder refuses is decoded on the CPU instead (so the CPU path, the project's one decoder, names any error).

Why some images go to the CPU (`FALLBACK_REASONS`): torchvision applies EXIF orientation only on the CPU
decoder, nvJPEG has no CMYK/YCCK output, the size limits must be checked before a device buffer is sized
from a header, and other formats have no device decoder. The device path decodes at full resolution (no DCT
draft scaling), so its pixels differ slightly from the CPU path's for JPEGs large enough for draft mode
(agreement measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from PIL import ExifTags, Image
from torchvision.io import ImageReadMode, decode_jpeg

from treeclip.data.images import check_geometry
from treeclip.model.preprocess import Preprocess
from treeclip.predict.runner import Batch, ImageItem, load_pixels

JPEG_MAGIC = b"\xff\xd8\xff"
DEVICE_MODES = ("RGB", "L")  # JPEG colour modes the device decoder turns into RGB
ON_DEVICE = "on the device"
NOT_A_FILE, NOT_JPEG, BAD_HEADER = "in-memory image", "not a JPEG", "unreadable header or over the size limits"
COLOUR, ROTATED, REFUSED = "CMYK/YCCK JPEG", "EXIF-rotated JPEG", "refused by the device decoder"
FALLBACK_REASONS = (NOT_A_FILE, NOT_JPEG, BAD_HEADER, COLOUR, ROTATED, REFUSED)
GROUP_VALUES = 1 << 28  # float values transformed in one batched call (1 GiB): 7 photos of 4000x3000
log = logging.getLogger(__name__)

Read = tuple[str, torch.Tensor | str]  # (ON_DEVICE, file bytes) or (fallback reason, CPU pixels or error)


def device_batches(items: Sequence[ImageItem], names: Sequence[str], *, preprocess: Preprocess, batch_size: int,
                   workers: int, device: torch.device, draft_size: int | None, prefetch: int = 2,
                   report: Counter | None = None) -> Iterator[Batch]:
    """Batches in input order with float pixels on `device` (see the module docstring); `report` counts the
    images decoded `ON_DEVICE` and those decoded on the CPU per fallback reason (logged at the end too).

    `workers` threads read files; one more thread decodes and transforms each batch on the device, up to
    `prefetch` batches ahead, so the device decoder's host-side work overlaps with the caller's model calls."""
    counts: Counter = Counter() if report is None else report
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as assembler:
        pending: deque[Future[Batch]] = deque()
        for start in range(0, len(items), batch_size):
            reads = [pool.submit(_read, item, preprocess, draft_size) for item in items[start : start + batch_size]]
            pending.append(assembler.submit(_assemble, start, reads, items, names, preprocess, device, draft_size,
                                            counts))
            if len(pending) > prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    _log_counts(counts, device)


def _read(item: ImageItem, preprocess: Preprocess, draft_size: int | None) -> Read:
    """A plain JPEG's bytes for the device, else the CPU path's pixels (or error) and why it was taken."""
    if isinstance(item, Image.Image):
        return NOT_A_FILE, load_pixels(item, preprocess, draft_size)
    try:
        with open(item, "rb") as file:
            if file.read(len(JPEG_MAGIC)) != JPEG_MAGIC:  # other formats are not read twice
                return NOT_JPEG, load_pixels(item, preprocess, draft_size)
            data = bytearray(JPEG_MAGIC + file.read())
    except OSError:
        return BAD_HEADER, load_pixels(item, preprocess, draft_size)  # the CPU path names the error
    reason = _fallback_reason(data)
    if reason is not None:
        return reason, load_pixels(item, preprocess, draft_size)
    return ON_DEVICE, torch.frombuffer(data, dtype=torch.uint8)


def _fallback_reason(data: bytearray) -> str | None:
    """None for a JPEG the device can decode as the CPU path would, else why not (header only)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_geometry(image.size)
            if image.format != "JPEG":
                return NOT_JPEG
            if image.mode not in DEVICE_MODES:
                return COLOUR
            if image.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None):
                return ROTATED
    except Exception:  # noqa: BLE001 - ImageError, PIL's bomb errors, broken headers: the CPU path reports them
        return BAD_HEADER
    return None


def _assemble(start: int, futures: list[Future], items: Sequence[ImageItem], names: Sequence[str],
              preprocess: Preprocess, device: torch.device, draft_size: int | None, counts: Counter) -> Batch:
    """One batch: its JPEGs decoded together on the device, the rest as the CPU path gave them, in order."""
    reads = [future.result() for future in futures]
    batch_names = names[start : start + len(reads)]
    jpegs = [offset for offset, (how, _) in enumerate(reads) if how == ON_DEVICE]
    decoded = _decode_on_device([reads[offset][1] for offset in jpegs], device)
    results: list[torch.Tensor | str] = [result for _, result in reads]
    for offset, image in zip(jpegs, decoded, strict=True):
        if image is None:
            reads[offset] = (REFUSED, "")
            results[offset] = load_pixels(items[start + offset], preprocess, draft_size)
    done = [(offset, image) for offset, image in zip(jpegs, decoded, strict=True) if image is not None]
    for group in _same_size_groups(done):
        pixels = preprocess.from_decoded(torch.stack([image for _, image in group]))
        for (offset, _), one in zip(group, pixels, strict=True):
            results[offset] = one
    counts.update(how for how, _ in reads)
    good = [offset for offset, result in enumerate(results) if not isinstance(result, str)]
    pixels = torch.stack([results[offset].to(device, non_blocking=True) for offset in good]) if good else None
    errors = [(batch_names[offset], result) for offset, result in enumerate(results) if isinstance(result, str)]
    return Batch([batch_names[offset] for offset in good], pixels, errors)


def _same_size_groups(images: list[tuple[int, torch.Tensor]]) -> list[list[tuple[int, torch.Tensor]]]:
    """(offset, image) pairs grouped by image size (photos from one camera share it), so each group is
    transformed by one batched resize; a group holds at most `GROUP_VALUES` float values (1 GiB)."""
    groups: dict[tuple[int, ...], list[list[tuple[int, torch.Tensor]]]] = {}
    for offset, image in images:
        chunks = groups.setdefault(tuple(image.shape), [[]])
        if chunks[-1] and (len(chunks[-1]) + 1) * image.numel() > GROUP_VALUES:
            chunks.append([])
        chunks[-1].append((offset, image))
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
