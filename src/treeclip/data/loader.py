"""The training loader: WebDataset shards → decoded, transformed, tokenised dict batches.

Reads our shards (``KEY.jpg``, the caption files ``KEY.sci.txt`` ... and ``KEY.taxon.json``) and the released
TreeOfLife-10M shards as they are (same caption files, no ``taxon.json``: the lineage is then parsed from
``KEY.taxonomic_name.txt``, or left empty).

Batches are dicts::

    {"image": FloatTensor[B, 3, H, W], "text": LongTensor[B, L], "text_type": list[str],
     "__key__": list[str], "lineage": list[tuple[str, ...]]}   # lineage: 7 ranks, "" where unknown

With ``normalize=False`` and a transform ending in ``ToTensor, Normalize`` (open_clip's) "image" is the
ByteTensor[B, 3, H, W] of RGB pixels before those two steps, for the consumer to finish where the model is
(`treeclip.pixels.normalize_uint8`; the training loop does): 4x fewer bytes through worker pipes,
pinned memory and the host-to-device copy, and no float work in the workers.

Image steps. Such a transform's geometry (``RandomResizedCrop``, ``Resize``, ``CenterCrop``) runs on the
decoded pixels as a uint8 tensor with torchvision's tensor kernels (`treeclip.pixels.tensor_steps`:
antialiased like PIL's; crops drawn by the step's own ``get_params``, so the same crops), about 4x cheaper
than PIL's resize on the CPU: within 2 levels of PIL's pixels, ~0.3 % of values differ (`tests/test_loader.py`,
`benchmarks/loader.py`). Any other step keeps the whole transform on the PIL image.

Text choice. Each sample carries every caption it has; the text type is drawn per sample
(``text_mix="sample"``) or once per batch (``"batch"``, what BioCLIP's code did) from `text_types` with
`text_weights`, by a generator seeded with (seed, epoch, rank, worker); only the chosen caption is tokenised.
A sample that lacks the drawn type gets one of the requested types it has (weights renormalised); a sample
with none of them is skipped and logged.

Reading. Shards are streamed by `treeclip.formats.shards.TarReader`; only the members a batch can use are read
(images, the requested caption types, ``taxon.json`` and the lineage's fallbacks); the others are passed over
unread. Samples are grouped as webdataset groups them (key = name up to the first dot of its basename,
suffix lower-cased, ``__meta__`` names skipped), so batches equal those of ``wds.tarfile_to_samples``.

Splitting work (finite pass, ``resampled=False``). Shards are shuffled with (seed, epoch) only, so every
rank and worker sees the same order, then split in two levels, ranks first, workers second. At each level a
consumer gets every n-th shard when there are at least as many shards as consumers; otherwise all consumers
of that level read the same shards and keep every n-th *sample* (filtered before decoding, so each sample is
decoded once). With both levels the sample filter composes to ``index % (world_size * workers) ==
rank + world_size * worker``. Either way one pass yields every sample exactly once across all ranks and
workers, and no consumer is left without input. Ranks may end with different numbers of batches (shards
hold different counts): a DDP trainer that needs equal step counts should use ``resampled=True`` with a
step budget from `num_samples`, as open_clip does.

Endless sampling (``resampled=True``): each rank and worker draws shards with replacement from its own
seeded generator; the loader never ends.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from treeclip.data.images import ImageError, decode_image
from treeclip.data.sources.wds import NAME_KEYS, sample_taxon
from treeclip.errors import UsageError
from treeclip.formats.shards import MANIFEST, TAXON_JSON, TarReader, read_manifest, shard_counts, split_member
from treeclip.pixels import normalize_, per_channel, split_steps, tensor_steps
from treeclip.taxonomy import TRAIN_TEXT_TYPES, Taxon, TextType

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TAXONOMIC_NAME = "taxonomic_name.txt"
EMPTY_LINEAGE: tuple[str, ...] = Taxon().lineage
TEXT_MIXES = ("sample", "batch")
LINEAGE_MEMBERS = (TAXON_JSON, "common_name.txt", *NAME_KEYS)
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped


def make_loader(
    urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    transform: Callable[[Any], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    batch_size: int,
    text_mix: str = "sample",
    text_types: Sequence[TextType | str] = TRAIN_TEXT_TYPES,
    text_weights: Sequence[float] | Mapping[str, float] | None = None,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    resampled: bool = False,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    partial: bool = True,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    normalize: bool = True,
) -> wds.WebLoader:
    """An iterable of dict batches over the shards named by `urls` (see the module docstring).

    `urls`: a shard folder, a glob, a brace pattern (``shard-{000000..000009}.tar``), a URL wds can open,
    or a list of any of these. `shuffle_buffer` <= 1 disables sample shuffling. `partial=False` drops each
    worker's last incomplete batch. Call again with the next `epoch` for a new order. `prefetch_factor`:
    batches each worker prepares ahead (with `num_workers` > 0). `normalize=False`: uint8 images where the
    transform allows (module docstring).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world_size {world_size}")
    if text_mix not in TEXT_MIXES:
        raise UsageError(f"text_mix must be one of {', '.join(TEXT_MIXES)}, got {text_mix!r}")
    shards = list_shards(urls)
    chooser = TextChooser(text_types, text_weights)
    seeds = _Seeds(seed=seed, epoch=epoch, rank=rank, world_size=world_size)
    images = ImageTransform(transform, normalize=normalize)
    pipeline = wds.DataPipeline(
        _resampled_source(shards, seeds) if resampled else _ShardSplit(shards, seeds),
        _TarSamples((*IMAGE_KEYS, *chooser.names, *LINEAGE_MEMBERS)),
        None if resampled else _SampleSplit(shards, seeds),
        _Shuffle(shuffle_buffer, seeds) if shuffle_buffer > 1 else None,
        _Prepare(images, chooser.names),
        wds.batched(batch_size, collation_fn=None, partial=partial),
        _Collate(chooser, tokenizer, text_mix, seeds, images.stack),
    )
    workers = {"prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=num_workers,
                         pin_memory=pin_memory, collate_fn=_as_is, **workers)


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """Batches are complete when they leave the pipeline (torch's default would turn tuples into lists)."""
    return batch


# ---------------------------------------------------------------- shard lists


def list_shards(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The shard list named by a folder, glob, brace pattern, URL or a list of these; UsageError if empty."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    shards: list[str] = []
    for item in items:
        for pattern in wds.shardlists.expand_urls(os.fspath(item)):
            shards.extend(_expand_one(pattern))
    if not shards:
        named = ", ".join(os.fspath(item) for item in items)
        raise UsageError(f"no .tar shards found at {named}; name a split folder such as SHARDS/train")
    return shards


def _expand_one(pattern: str) -> list[str]:
    if _is_remote(pattern):
        return [pattern]
    if os.path.isdir(pattern):
        return sorted(glob.glob(os.path.join(glob.escape(pattern), "*.tar")))
    if glob.has_magic(pattern):
        return sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
    if not os.path.isfile(pattern):
        raise UsageError(f"shard not found: {pattern}; check the --data path")
    return [pattern]


def _is_remote(url: str) -> bool:
    return url.startswith(("pipe:", "http://", "https://", "gs://", "s3://")) or url == "-"


def split_shards(n_shards: int, *, rank: int, world_size: int, worker: int, num_workers: int
                 ) -> tuple[list[int], int, int]:
    """(shard indices, sample stride, sample offset) of one consumer; the module docstring says how."""
    indices, stride, offset = list(range(n_shards)), 1, 0
    if len(indices) >= world_size:
        indices = indices[rank::world_size]
    else:
        stride, offset = world_size, rank
    if len(indices) >= num_workers:
        indices = indices[worker::num_workers]
    else:
        offset += stride * worker
        stride *= num_workers
    return indices, stride, offset


# ---------------------------------------------------------------- seeds and pipeline stages


class _Seeds:
    """Per-consumer seeds from (seed, epoch, rank, worker); the worker is known only inside iteration."""

    def __init__(self, *, seed: int, epoch: int, rank: int, world_size: int) -> None:
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size

    @staticmethod
    def worker() -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def shared(self) -> int:
        """A seed common to all ranks and workers (shard order)."""
        return int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])

    def consumer(self, purpose: int) -> np.random.Generator:
        """A generator private to this rank and worker; `purpose` separates independent streams."""
        return np.random.default_rng([self.seed, self.epoch, self.rank, self.worker()[0], purpose])

    def resample_seed(self) -> int:
        """The seed of this consumer's shard draws (``worker_seed`` of wds.ResampledShards)."""
        return int(self.consumer(0).integers(2**31))


class _ShardSplit(torch.utils.data.IterableDataset):
    """This consumer's shards, after a (seed, epoch) shuffle shared by all consumers."""

    def __init__(self, shards: list[str], seeds: _Seeds) -> None:
        super().__init__()
        self.shards, self.seeds = shards, seeds

    def __iter__(self) -> Iterator[dict[str, str]]:
        order = list(self.shards)
        random.Random(self.seeds.shared()).shuffle(order)
        worker, num_workers = self.seeds.worker()
        indices, _, _ = split_shards(len(order), rank=self.seeds.rank, world_size=self.seeds.world_size,
                                     worker=worker, num_workers=num_workers)
        for index in indices:
            yield {"url": order[index]}


class _SampleSplit:
    """Keeps every stride-th sample when shards are too few to split among consumers."""

    def __init__(self, shards: list[str], seeds: _Seeds) -> None:
        self.n_shards, self.seeds = len(shards), seeds

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        worker, num_workers = self.seeds.worker()
        _, stride, offset = split_shards(self.n_shards, rank=self.seeds.rank, world_size=self.seeds.world_size,
                                         worker=worker, num_workers=num_workers)
        for index, sample in enumerate(samples):
            if index % stride == offset:
                yield sample


def _resampled_source(shards: list[str], seeds: _Seeds) -> wds.ResampledShards:
    """Shards drawn with replacement, seeded per (seed, epoch, rank, worker)."""
    return wds.ResampledShards(shards, seed=seeds.seed, deterministic=True, worker_seed=seeds.resample_seed)


class _Shuffle:
    """wds.shuffle with a per-consumer seeded generator (created in the worker, never the global RNG)."""

    def __init__(self, bufsize: int, seeds: _Seeds) -> None:
        self.bufsize, self.seeds = bufsize, seeds

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        rng = random.Random(int(self.seeds.consumer(1).integers(2**63)))
        return wds.shuffle(self.bufsize, initial=min(100, self.bufsize), rng=rng)(samples)


def _log_and_continue(exn: Exception) -> bool:
    log.warning("skipping unreadable shard data: %s", exn)
    return True


class _TarSamples:
    """Opened shards → samples ``{"__key__", "__url__", suffix: bytes}`` holding only the `suffixes` asked for
    (every sample still comes out, so splitting by sample index is unchanged). A shard that breaks off is
    logged and its samples so far are kept; members that are not regular files are counted and logged."""

    def __init__(self, suffixes: Iterable[str]) -> None:
        self.suffixes = frozenset(suffix.lower() for suffix in suffixes)

    def __call__(self, sources: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
        for source in wds.tariterators.url_opener(sources, handler=_log_and_continue):
            yield from self._shard(source["url"], source["stream"])

    def _wanted(self, name: str) -> bool:
        return name.rpartition("/")[2].partition(".")[2].lower() in self.suffixes

    def _shard(self, url: str, stream: Any) -> Iterator[dict[str, Any]]:
        sample: dict[str, Any] | None = None
        seen: set[str] = set()
        try:
            reader = TarReader(stream)
            for name, data in reader.members(self._wanted):
                parts = None if _META.match(name) else split_member(name)
                if parts is None:
                    continue
                key, suffix = parts[0], parts[1].lower()
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        yield sample
                    sample, seen = {"__key__": key, "__url__": url}, set()
                if suffix in seen:
                    log.warning("skipping %s in %s: duplicate member", name, url)
                    continue
                seen.add(suffix)
                if data is not None:
                    sample[suffix] = data
            if reader.skipped:
                log.warning("%s: skipped %d members that are not regular files (tar types %s)", url,
                            sum(reader.skipped.values()), reader.skipped)
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            log.warning("skipping the rest of %s: %s", url, exc)
        finally:
            stream.close()
        if sample is not None:
            yield sample


# ---------------------------------------------------------------- samples


class _Prepare:
    """Decodes and transforms each image, keeps the requested captions and the lineage; skips bad samples."""

    def __init__(self, transform: Callable, text_names: Sequence[str]) -> None:
        self.transform, self.text_names = transform, text_names

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in samples:
            prepared = self._prepare(sample)
            if prepared is not None:
                yield prepared

    def _prepare(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        key = sample["__key__"]
        data = next((sample[ext] for ext in IMAGE_KEYS if ext in sample), None)
        if data is None:
            log.warning("skipping %s: no image member (%s)", key, ", ".join(IMAGE_KEYS))
            return None
        try:
            image = self.transform(decode_image(data))
        except ImageError as exc:
            log.warning("skipping %s: bad image: %s", key, exc)
            return None
        texts = {name: sample[name.lower()].decode("utf-8").strip()
                 for name in self.text_names if name.lower() in sample}
        return {"__key__": key, "image": image, "texts": texts, "lineage": sample_lineage(sample)}


class ImageTransform:
    """`transform` per image and `stack` per batch. A torchvision ``Compose`` that ends in ``ToTensor,
    Normalize`` (open_clip's; `treeclip.pixels.split_steps`) stops before those two for RGB images, giving uint8
    ``[3, H, W]`` pixels (its geometry run on a tensor where torchvision can: module docstring); `stack` then
    does ``ToTensor`` + ``Normalize`` in place in the batch tensor (`treeclip.pixels.normalize_`: the same float
    operations in the same order), or with `normalize` False leaves them to the consumer and returns the uint8
    batch (`benchmarks/loader.py`)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], *, normalize: bool = True) -> None:
        self.transform, self.normalize = transform, normalize
        steps = split_steps(transform)
        self.steps = steps if steps is not None and steps.uint8_exact else None
        self.kernels = tensor_steps(self.steps.pil) if self.steps is not None else None

    def __call__(self, image: Any) -> torch.Tensor:
        """The transformed image (float), or its RGB pixels (uint8 ``[3, H, W]``) that `stack` finishes."""
        if self.steps is None:
            return self.transform(image)
        return self.steps.to_uint8(image, self.kernels)

    def stack(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The batch [B, C, H, W]: float, or uint8 pixels when `normalize` is False and all are pixels."""
        if self.steps is None:
            return torch.stack(images)
        pixels_only = all(image.dtype == torch.uint8 for image in images)
        dtype = torch.uint8 if pixels_only and not self.normalize else torch.get_default_dtype()
        shape = tuple(images[0].shape)
        out = torch.empty((len(images), *shape), dtype=dtype)
        mean, std = (per_channel(values, out) for values in (self.steps.mean, self.steps.std))
        for slot, image in zip(out, images):
            if tuple(image.shape) != shape:
                raise RuntimeError(f"images of one batch differ in shape: {shape} and {tuple(image.shape)}")
            slot.copy_(image)  # pixels as they are, or ToTensor's uint8 -> float (a finished image: as it is)
            if image.dtype == torch.uint8 and dtype != torch.uint8:
                normalize_(slot.div_(255), mean, std)  # ToTensor's / 255, then Normalize
        return out


def sample_lineage(sample: Mapping[str, Any]) -> tuple[str, ...]:
    """Seven ranks of a sample (taxon.json, else the tagged or plain name texts), else all empty."""
    files = {name: value for name, value in sample.items() if isinstance(value, bytes)}
    taxon = sample_taxon(str(sample.get("__key__", "?")), files)
    if isinstance(taxon, Taxon):
        return taxon.lineage
    log.debug("no usable lineage: %s", taxon.reason)
    return EMPTY_LINEAGE


class TextChooser:
    """The requested text types with normalised weights; draws one for a sample or a batch."""

    def __init__(self, text_types: Sequence[TextType | str],
                 text_weights: Sequence[float] | Mapping[str, float] | None = None) -> None:
        self.types = tuple(_text_type(t) for t in text_types)
        if not self.types or len(set(self.types)) != len(self.types):
            raise UsageError(f"text_types must be non-empty and distinct, got {list(self.types)}")
        self.names = tuple(TextType(t).filename for t in self.types)
        self.weights = self._weights(text_weights)

    def _weights(self, text_weights: Sequence[float] | Mapping[str, float] | None) -> np.ndarray:
        if text_weights is None:
            raw = [1.0] * len(self.types)
        elif isinstance(text_weights, Mapping):
            named = {_text_type(k): float(w) for k, w in text_weights.items()}
            unknown = set(named) - set(self.types)
            if unknown:
                raise UsageError(f"text_weights names types not in text_types: {sorted(unknown)}")
            raw = [named.get(t, 0.0) for t in self.types]
        else:
            raw = [float(w) for w in text_weights]
        weights = np.asarray(raw, dtype=np.float64)
        if len(weights) != len(self.types) or (weights < 0).any() or not weights.sum() > 0:
            raise UsageError(f"text_weights must be {len(self.types)} non-negative numbers with a positive sum, "
                             f"got {text_weights!r}")
        return weights / weights.sum()

    def draw(self, rng: np.random.Generator, available: Iterable[str] | None = None) -> str | None:
        """A text type value, restricted to `available` filenames when given; None if none is available."""
        weights = self.weights
        if available is not None:
            have = set(available)
            weights = np.array([w if n in have else 0.0 for n, w in zip(self.names, weights)])
            if not weights.sum() > 0:
                return None
            weights = weights / weights.sum()
        return self.types[int(rng.choice(len(self.types), p=weights))]


def _text_type(value: TextType | str) -> str:
    try:
        return TextType(value).value
    except ValueError:
        valid = ", ".join(t.value for t in TextType)
        raise UsageError(f"unknown text type {value!r}; expected one of {valid}") from None


class _Collate:
    """Chooses each sample's text type, tokenises only the chosen captions and stacks a batch dict."""

    def __init__(self, chooser: TextChooser, tokenizer: Callable, text_mix: str, seeds: _Seeds,
                 stack: Callable[[list[Any]], torch.Tensor]) -> None:
        self.chooser, self.tokenizer, self.text_mix, self.seeds = chooser, tokenizer, text_mix, seeds
        self.stack = stack

    def __call__(self, batches: Iterable[list[dict]]) -> Iterator[dict[str, Any]]:
        rng = self.seeds.consumer(2)
        for samples in batches:
            batch = self._collate(samples, rng)
            if batch is not None:
                yield batch

    def _collate(self, samples: list[dict], rng: np.random.Generator) -> dict[str, Any] | None:
        fixed = self.chooser.draw(rng) if self.text_mix == "batch" else None
        kept, types = [], []
        for sample in samples:
            kind = fixed if fixed is not None and TextType(fixed).filename in sample["texts"] else None
            kind = kind or self.chooser.draw(rng, sample["texts"])
            if kind is None:
                log.warning("skipping %s: none of the text types %s", sample["__key__"], list(self.chooser.types))
                continue
            kept.append(sample)
            types.append(kind)
        if not kept:
            return None
        captions = [s["texts"][TextType(t).filename] for s, t in zip(kept, types)]
        return {
            "image": self.stack([s["image"] for s in kept]),
            "text": self.tokenizer(captions),
            "text_type": types,
            "__key__": [s["__key__"] for s in kept],
            "lineage": [s["lineage"] for s in kept],
        }


# ---------------------------------------------------------------- sizes


def num_samples(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> int | None:
    """Total samples in the named shards from the ``manifest.json`` of ``treeclip build`` (in the shard
    folder or its parent: ``"shards": [{"name": "train/shard-000000.tar", "samples": N}, ...]``);
    None when a shard has no manifest entry (e.g. the released TreeOfLife-10M shards)."""
    total = 0
    for shard in list_shards(urls):
        count = _manifest_count(Path(shard))
        if count is None:
            return None
        total += count
    return total


def _manifest_count(shard: Path) -> int | None:
    for root in (shard.parent, shard.parent.parent):
        counts = _manifest_counts(root)
        for name in (shard.relative_to(root).as_posix(), shard.name):
            if name in counts:
                return counts[name]
    return None


def _manifest_counts(root: Path) -> dict[str, int]:
    """{shard path relative to the manifest folder: sample count}; empty without a readable manifest."""
    try:
        return shard_counts(read_manifest(root))
    except (OSError, ValueError) as exc:
        log.debug("no usable %s in %s: %s", MANIFEST, root, exc)
        return {}
