"""Shared builders for the prediction and bank tests (imported by them; holds no tests itself).

A tiny seeded open_clip model exported in the hub layout, a random 7-rank taxonomy with partial lineages,
and a bank encoded from it with the short ``sci`` names (the tiny model's context is 16 tokens); image
files in the modes the decoder converts specially.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from treeclip.model import create_model, export_model, load_model
from treeclip.model.bank import LabelBank, build_bank
from treeclip.taxonomy import Taxon

ARCH = "treeclip-test"
LOGIT_SCALE = 100.0  # what a trained CLIP reaches (BioCLIP's value); a fresh model starts at 1/0.07


def export_tiny_model(out: Path, seed: int = 0) -> Path:
    """A seeded tiny model in the hub layout (global RNG state restored afterwards)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(ARCH)[0]
    with torch.no_grad():
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    return export_model(model, out_dir=out, model_name=ARCH)


def _letters(number: int, width: int = 3) -> str:
    """A number written in letters (taxon names hold no digits)."""
    text = ""
    for _ in range(width):
        number, digit = divmod(number, 26)
        text = "abcdefghijklmnopqrstuvwxyz"[digit] + text
    return text


def random_taxa(n_species: int, seed: int = 0) -> list[Taxon]:
    """Species in a random tree (2 kingdoms, branching 3 below), plus a few genus-only taxa."""
    rng = np.random.default_rng(seed)
    prefixes = ("Regnum", "Phylum", "Classis", "Ordo", "Familia", "Genus")
    taxa = []
    for i in range(n_species):
        path = [int(rng.integers(0, 2))] + [int(rng.integers(0, 3)) for _ in range(5)]
        lineage = [f"{prefix}{''.join('abc'[d] for d in path[: level + 1])}"
                   for level, prefix in enumerate(prefixes)]
        taxa.append(Taxon((*lineage, f"sp{_letters(i)}"), f"common {_letters(i)}"))
    taxa += [Taxon(t.lineage[:6]) for t in taxa[:3]]
    return list(dict.fromkeys(taxa))


def tiny_bank(model_dir: Path, taxa: list[Taxon], out: Path) -> LabelBank:
    model, _, _, tokenizer = load_model(model_dir)
    return build_bank(model=model, tokenizer=tokenizer, taxa=taxa, out=out, model_id=str(model_dir),
                      text_type="sci", templates="photo", batch_size=64)


def write_taxonomy_csv(taxa: list[Taxon], path: Path) -> Path:
    lines = ["kingdom,phylum,class,order,family,genus,species,common_name"]
    lines += [",".join([*t.lineage, t.common]) for t in taxa]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def odd_photos(folder: Path, size: tuple[int, int] = (48, 40), seed: int = 0) -> dict[str, Path]:
    """Files whose decoding is more than ``convert("RGB")``: RGBA with transparent and half-transparent areas
    over coloured pixels, 16-bit grayscale ("I;16") spanning 0..65535, a palette with a transparent entry
    (black underneath), LA with transparent areas, and a JPEG stored sideways with an EXIF orientation tag."""
    rng = np.random.default_rng(seed)
    width, height = size
    colour = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = np.zeros((height, width), dtype=np.uint8)
    alpha[:, width // 3 :] = np.linspace(0, 255, width - width // 3).astype(np.uint8)  # clear, then a ramp
    folder.mkdir(parents=True, exist_ok=True)
    palette = Image.frombytes("P", size, rng.integers(0, 6, (height, width), dtype=np.uint8).tobytes())
    palette.putpalette([0, 0, 0, *rng.integers(0, 256, 15).tolist()])
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored pixels must be turned 90° clockwise for display
    photos = {
        "rgba": (Image.fromarray(np.dstack([colour, alpha])), {}),
        "i16": (Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)), {}),
        "palette": (palette, {"transparency": 0}),
        "la": (Image.fromarray(np.dstack([colour[..., 0], alpha])), {}),
    }
    paths = {}
    for name, (image, options) in photos.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name], **options)
    paths["rotated"] = folder / "rotated.jpg"
    Image.fromarray(colour).save(paths["rotated"], exif=exif.tobytes(), quality=95)
    return paths
