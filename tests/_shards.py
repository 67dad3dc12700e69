"""Tiny training shards for the train tests: a few species whose images differ in colour and stripes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from treeclip.data.shards import sample_members
from treeclip.formats.shards import MANIFEST, manifest_text, shard_entry
from treeclip.formats.shards import manifest as make_manifest
from treeclip.taxonomy import Taxon

GENERA = (("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula"),
          ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus"),
          ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa"))
EPITHETS = ("alba", "nigra", "rubra")
# Overrides of the tiny preset for tests: on the default shards (96 training samples) batch 16 gives 6 steps
# per epoch; deterministic data (one shard, no shuffle, no augmentation, one text type).
TINY = ["model.name=treeclip-test", "train.batch_size=16", "train.epochs=2", "data.shuffle_buffer=0",
        "data.text_type=sci", "data.augment=false", "log.every_steps=1", "eval.every_steps=6",
        "checkpoint.every_steps=6", "log.tensorboard=false"]


def species(n: int) -> list[Taxon]:
    """`n` (<= 9) species over three genera in two kingdoms, with common names."""
    taxa = [Taxon(lineage=(*genus, epithet), common=f"{epithet.title()} {genus[-1].lower()}")
            for genus in GENERA for epithet in EPITHETS]
    return taxa[:n]


def image(index: int, rng: np.random.Generator, size: int = 32) -> bytes:
    """A JPEG whose colour and stripe period identify species `index`, with noise."""
    base = np.array([(index * 97) % 256, (index * 53 + 80) % 256, (index * 151 + 40) % 256], dtype=np.float32)
    pixels = np.tile(base, (size, size, 1))
    stripes = (np.arange(size) // (2 + index % 4)) % 2 == 0
    pixels[:, stripes] *= 0.4
    pixels += rng.normal(0, 12, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(root: Path, *, n_species: int = 6, per_species: dict[str, int] | None = None,
                 shards: dict[str, int] | None = None, seed: int = 0, manifest: bool = True,
                 image_size: int = 32) -> Path:
    """``root/{train,val}/shard-NNNNNN.tar`` (+ manifest.json); samples interleave the species; JPEGs are
    `image_size` pixels square."""
    per_species = per_species or {"train": 16, "val": 4}
    shards = shards or {"train": 1, "val": 1}
    rng = np.random.default_rng(seed)
    taxa = species(n_species)
    entries = []
    for split, count in per_species.items():
        samples = [(f"{split}{i:05d}", i % n_species) for i in range(count * n_species)]
        for shard, chunk in enumerate(np.array_split(np.arange(len(samples)), shards[split])):
            name = f"{split}/shard-{shard:06d}.tar"
            _write_tar(root / name, [(samples[i][0], taxa[samples[i][1]], image(samples[i][1], rng, image_size))
                                      for i in chunk])
            entries.append(shard_entry(name, split, len(chunk)))
    if manifest:
        (root / MANIFEST).write_text(manifest_text(make_manifest(entries)), encoding="utf-8")
    return root


def _write_tar(path: Path, samples: list[tuple[str, Taxon, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, taxon, jpeg in samples:
            for name, data in sample_members(key, taxon, jpeg):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
