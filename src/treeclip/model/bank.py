"""Label banks: the text embeddings of every taxon of a taxonomy, in the released TreeOfLife format.

A bank is a folder holding

- ``txt_emb_species.npy``: float32 or float16, shape ``[dim, n_taxa]``, columns L2-normalised (or int8 with
  ``txt_emb_species_scale.npy``, treeclip's compact storage: `treeclip.model.bank_storage`);
- ``txt_emb_species.json``: a list of ``[[kingdom, phylum, class, order, family, genus, epithet], common]``;
- ``bank.json`` (optional): ``{"model", "model_revision", "text_type", "templates", "dtype", "n_taxa", "dim"}``;
  ``model`` is resolvable from any directory (an absolute path, or a hub id with the snapshot's revision).

The released banks (``embeddings/txt_emb_species.{npy,json}`` of the ``imageomics/TreeOfLife-10M`` and
``imageomics/TreeOfLife-200M`` dataset repos) load as they are. Loading memory-maps the matrix.

`build_bank` encodes taxa in chunks of whole batches; each finished chunk is saved under ``OUT/.chunks/``
so an interrupted build resumes where it stopped (the chunk folder records what is being built and is
refused if it does not match). The final files appear only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer

from treeclip.errors import UsageError
from treeclip.formats.banks import BANK_JSON, BANK_META, BANK_NPY, names_json, read_meta, read_names
from treeclip.taxonomy import Taxon, TextType, get_templates, render_name

from .bank_storage import BankMatrix, quantize_columns, storage_dtype, stored_bytes
from .hub import model_provenance, replace_atomically, resolvable_model_id

log = logging.getLogger(__name__)

BANK_SCALE = "txt_emb_species_scale.npy"
CHUNK_DIR = ".chunks"
Progress = Callable[[int], Any]


@dataclass
class LabelBank:
    """Text embeddings ``[dim, n_taxa]`` (possibly memory-mapped) with each column's lineage and common name.

    Lineages are kept as stored (7 strings, "" for a missing rank), without validation, so released banks
    with irregular rows still load.
    """

    embeddings: np.ndarray
    lineages: list[tuple[str, ...]]
    commons: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    scales: np.ndarray | None = None  # per-column float32 scales of an int8 matrix (`bank_storage`)

    def __post_init__(self) -> None:
        if (self.embeddings.dtype == np.int8) != (self.scales is not None):
            raise ValueError("an int8 bank matrix needs per-column scales, and only an int8 one has them")
        if self.embeddings.ndim != 2 or self.embeddings.shape[1] != len(self.lineages):
            raise ValueError(f"bank embeddings of shape {self.embeddings.shape} do not match "
                             f"{len(self.lineages)} taxa (expected [dim, n_taxa])")
        if len(self.commons) != len(self.lineages):
            raise ValueError("bank lineages and common names differ in length")

    def __len__(self) -> int:
        return len(self.lineages)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix (and scales) as stored: the memory it occupies once read."""
        return stored_bytes(self.embeddings, self.scales)

    def matrix(self, device: str | torch.device = "cpu") -> torch.Tensor | BankMatrix:
        """What L2-normalised image features are multiplied by (``features @ bank.matrix()`` → float32
        ``[B, n_taxa]`` cosines): the float32 matrix itself, or a `BankMatrix` over float16/int8 storage."""
        if self.embeddings.dtype != np.float32:
            return BankMatrix(self.embeddings, self.scales, device=device)
        with warnings.catch_warnings():  # a read-only memory map is only ever read here
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.embeddings).to(device)

    def taxon(self, index: int) -> Taxon:
        """Column `index` as a Taxon (raises ValueError for an irregular lineage)."""
        return Taxon(self.lineages[index], self.commons[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelBank:
        """A bank of the given columns (copied into memory), in the given order."""
        picked = np.asarray(indices, dtype=np.int64)
        scales = np.asarray(self.scales)[picked] if self.scales is not None else None
        return LabelBank(np.ascontiguousarray(self.embeddings[:, picked]),
                         [self.lineages[i] for i in picked], [self.commons[i] for i in picked], dict(self.meta),
                         scales)


def is_bank_dir(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding both bank files."""
    return (Path(path) / BANK_NPY).is_file() and (Path(path) / BANK_JSON).is_file()


def load_bank(path: str | os.PathLike[str], *, mmap: bool = True) -> LabelBank:
    """Read a bank folder (or the ``.npy``/``.json`` path of one); UsageError when it is not a bank."""
    folder = Path(path)
    if folder.suffix in (".npy", ".json") and folder.is_file():
        folder = folder.parent
    if not is_bank_dir(folder):
        raise UsageError(f"{path} is not a label bank: expected a folder with {BANK_NPY} and {BANK_JSON} "
                         "(build one with `treeclip bank build`)")
    try:
        embeddings = np.load(folder / BANK_NPY, mmap_mode="r" if mmap else None)
        scale_path = folder / BANK_SCALE
        scales = np.load(scale_path, mmap_mode="r" if mmap else None) if embeddings.dtype == np.int8 else None
        lineages, commons = read_names(folder / BANK_JSON)
        return LabelBank(embeddings, lineages, commons, read_meta(folder), scales)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot read label bank {folder}: {exc}") from exc


def save_bank(bank: LabelBank, out: str | os.PathLike[str], *, dtype: str = "float32") -> Path:
    """Write a bank folder atomically file by file (matrix, its int8 scales, names, bank.json); `dtype` is
    float32, float16 or int8 (fp32/fp16 also accepted; see `treeclip.model.bank_storage`)."""
    folder, dtype = Path(out), storage_dtype(dtype)
    matrix, scales = _stored(bank, dtype)
    if scales is not None:
        replace_atomically(folder / BANK_SCALE, lambda tmp: _save_npy(tmp, scales))
    replace_atomically(folder / BANK_NPY, lambda tmp: _save_npy(tmp, matrix))
    if scales is None:
        (folder / BANK_SCALE).unlink(missing_ok=True)
    _write_text(folder / BANK_JSON, names_json(bank.lineages, bank.commons))
    meta = {**bank.meta, "dtype": str(matrix.dtype), "n_taxa": len(bank), "dim": bank.dim}
    _write_text(folder / BANK_META, json.dumps(meta, indent=2) + "\n")
    return folder


def _stored(bank: LabelBank, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The bank's matrix (and scales) in a storage dtype, dequantising an int8 bank first when needed."""
    if bank.scales is not None and dtype == "int8":
        return np.asarray(bank.embeddings), np.asarray(bank.scales)
    floats = bank.embeddings if bank.scales is None else bank.embeddings * np.asarray(bank.scales)[None, :]
    if dtype == "int8":
        return quantize_columns(floats)
    return np.asarray(floats, dtype=np.dtype(dtype)), None


def _save_npy(path: Path, matrix: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, matrix)


def _write_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------- encoding text


@torch.inference_mode()
def encode_class_texts(model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                       names: Sequence[str], templates: Sequence[str], *, batch_size: int = 256,
                       device: str | torch.device = "cpu",
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``[len(names), dim]`` unit vectors: each name's template embeddings L2-normalised, averaged and
    normalised again (open_clip's zero-shot classifier). Batches hold whole names; ``progress(n_texts)``
    is called after each batch. The one text-embedding routine of treeclip (banks, eval, custom labels).
    Each name and each template is tokenised once (`TemplateTokens`)."""
    if not templates or any(template.count("{}") != 1 for template in templates):
        raise ValueError("templates must be a non-empty list of strings with exactly one '{}' each")
    per_batch = max(1, batch_size // len(templates))
    template_tokens = TemplateTokens(tokenizer, templates)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(names), per_batch):
            group = names[start : start + per_batch]
            tokens = template_tokens(group).to(device)
            features = F.normalize(model.encode_text(tokens).float(), dim=-1)
            mean = features.reshape(len(group), len(templates), -1).mean(dim=1)
            chunks.append(F.normalize(mean, dim=-1).cpu().numpy())
            if progress is not None:
                progress(len(tokens))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


class TemplateTokens:
    """Token ids of ``template.format(name)`` for every name × template (name-major), as the tokenizer gives them.

    With open_clip's BPE tokenizer (`open_clip.tokenizer.SimpleTokenizer`, no reduction) each template's two
    sides are tokenised once and each name once, and the ids are spliced: BPE never merges across whitespace or
    between a letter/digit and punctuation, so the splice equals tokenising the whole text whenever the name
    meets the template at such a boundary (checked per template and per name; the other texts, and every text
    of any other tokenizer, are tokenised whole). With 80 templates this tokenises 80× less text.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], templates: Sequence[str]) -> None:
        self.tokenizer, self.templates = tokenizer, list(templates)
        self.splices = isinstance(tokenizer, SimpleTokenizer) and tokenizer.reduction_fn is None
        self.sides = [self._sides(template) for template in self.templates] if self.splices else []

    def _sides(self, template: str) -> tuple[list[int], list[int], bool] | None:
        """(ids before the name, ids after it, whether the name must end in a letter or digit), or None when
        the template's text touches the name without a boundary (e.g. ``"{}s"``)."""
        before, after = template.split("{}")
        if (before and not before[-1].isspace()) or (after and after[0].isalnum()):
            return None
        return self.tokenizer.encode(before), self.tokenizer.encode(after), bool(after) and not after[0].isspace()

    def __call__(self, names: Sequence[str]) -> torch.Tensor:
        if not self.splices:
            return self.tokenizer([template.format(name) for name in names for template in self.templates])
        rows = []
        for name in names:
            ids = self.tokenizer.encode(name)
            for template, sides in zip(self.templates, self.sides, strict=True):
                if sides is not None and (name[-1:].isalnum() or not sides[2]):
                    rows.append(sides[0] + ids + sides[1])
                else:
                    rows.append(self.tokenizer.encode(template.format(name)))
        return self._padded(rows)

    def _padded(self, rows: list[list[int]]) -> torch.Tensor:
        """``[sot] + ids + [eot]`` per row, cut to the context length with the last id eot (as the tokenizer)."""
        tok = self.tokenizer
        out = np.zeros((len(rows), tok.context_length), dtype=np.int64)
        for i, ids in enumerate(rows):
            end = min(len(ids) + 1, tok.context_length - 1)
            out[i, 0], out[i, end] = tok.sot_token_id, tok.eot_token_id
            out[i, 1:end] = ids[: end - 1]
        return torch.from_numpy(out)


def taxon_texts(taxa: Sequence[Taxon], text_type: TextType | str) -> list[str]:
    """The class name of each taxon in the given text type (`treeclip.taxonomy.render_name`)."""
    kind = TextType(text_type)
    return [render_name(taxon, kind) for taxon in taxa]


# ---------------------------------------------------------------- building, resumable


@dataclass(frozen=True)
class BankSpec:
    """What a bank is built from; its digest names a resumable build."""

    model_id: str
    text_type: str
    templates: str
    n_taxa: int
    names_digest: str
    chunk_size: int

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model_id, "text_type": self.text_type, "templates": self.templates,
                "n_taxa": self.n_taxa, "names_digest": self.names_digest, "chunk_size": self.chunk_size}


def build_bank(*, model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
               taxa: Sequence[Taxon], out: str | os.PathLike[str], model_id: str,
               text_type: TextType | str = TextType.TAXON_COM, templates: str = "openai",
               batch_size: int = 256, fp16: bool = False, resume: bool = False,
               device: str | torch.device = "cpu", chunk_size: int | None = None,
               progress: Progress | None = None) -> LabelBank:
    """Encode every taxon and write a bank folder at `out` (see the module docstring); returns it loaded.

    Without `resume`, leftover chunks of an earlier build are discarded.
    """
    if not taxa:
        raise UsageError("no taxa to encode: the taxonomy file holds no usable rows")
    folder = Path(out)
    texts = taxon_texts(taxa, text_type)
    template_list = get_templates(templates)
    chunk = chunk_size or max(batch_size, 64 * max(1, batch_size // len(template_list)))
    spec = BankSpec(resolvable_model_id(model_id), TextType(text_type).value, templates, len(taxa), _digest(texts),
                    chunk)
    chunks = _chunk_folder(folder, spec, resume=resume)
    model.eval()
    for index, start in enumerate(range(0, len(texts), chunk)):
        path = chunks / f"chunk-{index:06d}.npy"
        count = min(chunk, len(texts) - start)
        if not path.is_file():
            vectors = encode_class_texts(model, tokenizer, texts[start : start + count], template_list,
                                         batch_size=batch_size, device=device)
            replace_atomically(path, lambda tmp, v=vectors: _save_npy(tmp, v))
        if progress is not None:
            progress(count)
    _assemble(folder, chunks, spec, taxa, dtype="float16" if fp16 else "float32")
    shutil.rmtree(chunks, ignore_errors=True)
    return load_bank(folder)


@dataclass(frozen=True)
class BuildCost:
    """What encoding a bank costs, measured before it starts: texts through the text tower and their rate at
    the fastest batch size tried."""

    n_taxa: int
    n_templates: int
    batch_size: int
    texts_per_second: float

    @property
    def n_texts(self) -> int:
        return self.n_taxa * self.n_templates

    @property
    def seconds(self) -> float:
        return self.n_texts / self.texts_per_second

    def describe(self) -> str:
        minutes = self.seconds / 60
        when = f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
        return (f"{self.n_taxa:,} taxa × {self.n_templates} templates = {self.n_texts:,} texts; the text tower "
                f"runs {self.texts_per_second:,.0f} texts/s at batch {self.batch_size} here: about {when}")


@torch.inference_mode()
def measure_build_cost(*, model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                       texts: Sequence[str], templates: Sequence[str], batch_sizes: Sequence[int] = (64, 128, 256, 512),
                       device: str | torch.device = "cpu") -> BuildCost:
    """Time the text tower once per batch size (after a warm-up) on the first texts × templates and keep the
    fastest per text; a single batch size only measures the rate."""
    model.eval()
    largest = max(batch_sizes)
    tokens = TemplateTokens(tokenizer, templates)(texts[: -(-largest // len(templates))]).to(device)
    model.encode_text(tokens[: min(batch_sizes)])
    rates = {}
    for size in sorted(set(batch_sizes)):
        batch = tokens[:size] if len(tokens) >= size else tokens.repeat(-(-size // len(tokens)), 1)[:size]
        start = time.perf_counter()
        model.encode_text(batch)
        rates[size] = size / max(time.perf_counter() - start, 1e-9)
    best = max(rates, key=rates.get)
    return BuildCost(len(texts), len(templates), best, rates[best])


def _digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _chunk_folder(folder: Path, spec: BankSpec, *, resume: bool) -> Path:
    """The chunk folder for this build: kept when resuming the same build, else emptied."""
    chunks = folder / CHUNK_DIR
    spec_path = chunks / "build.json"
    if chunks.is_dir():
        same = spec_path.is_file() and json.loads(spec_path.read_text(encoding="utf-8")) == spec.to_json()
        if resume and not same:
            raise UsageError(f"{chunks} belongs to a different bank build (model, text type, templates or "
                             "taxa differ); rerun without --resume to start over")
        if not resume:
            shutil.rmtree(chunks)
        elif same:
            log.info("resuming bank build from %s", chunks)
    chunks.mkdir(parents=True, exist_ok=True)
    _write_text(spec_path, json.dumps(spec.to_json(), indent=2) + "\n")
    return chunks


def _assemble(folder: Path, chunks: Path, spec: BankSpec, taxa: Sequence[Taxon], *, dtype: str) -> None:
    """Concatenate the chunks column-wise into the final ``[dim, n]`` matrix and write the names."""
    parts = sorted(chunks.glob("chunk-*.npy"))
    first = np.load(parts[0], mmap_mode="r")

    def write(tmp: Path) -> None:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(first.shape[1], spec.n_taxa))
        start = 0
        for part in parts:
            vectors = np.load(part)
            matrix[:, start : start + len(vectors)] = vectors.T
            start += len(vectors)
        if start != spec.n_taxa:
            raise RuntimeError(f"bank chunks hold {start} taxa, expected {spec.n_taxa}")
        matrix.flush()
        del matrix

    replace_atomically(folder / BANK_NPY, write)
    _write_text(folder / BANK_JSON, names_json([t.lineage for t in taxa], [t.common for t in taxa]))
    meta = {**model_provenance(spec.model_id), "text_type": spec.text_type, "templates": spec.templates,
            "dtype": dtype, "n_taxa": spec.n_taxa, "dim": int(first.shape[1])}
    _write_text(folder / BANK_META, json.dumps(meta, indent=2) + "\n")


# ---------------------------------------------------------------- released banks

DEFAULT_MODEL = "hf-hub:imageomics/bioclip-2"
RELEASED_BANKS = {
    "hf-hub:imageomics/bioclip": "imageomics/TreeOfLife-10M",
    "hf-hub:imageomics/bioclip-2": "imageomics/TreeOfLife-200M",
}
RELEASED_BANK_FOLDER = "embeddings"


def released_bank_dir(model_id: str, *, cache_dir: str | None = None) -> Path:
    """The local folder of a released model's TreeOfLife bank, downloaded from its Hugging Face dataset repo
    on first use (needs ``huggingface_hub``); UsageError when the model has no released bank or the files
    cannot be fetched."""
    repo = RELEASED_BANKS.get(model_id)
    if repo is None:
        raise UsageError(f"model {model_id} has no released label bank; pass --bank BANK "
                         "(build one with `treeclip bank build`)")
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise UsageError(f"downloading the {repo} bank needs huggingface_hub (pip install huggingface_hub), "
                         "or pass --bank BANK") from exc
    paths = []
    for name in (BANK_NPY, BANK_JSON):
        try:
            paths.append(hf_hub_download(repo_id=repo, repo_type="dataset", cache_dir=cache_dir,
                                         filename=f"{RELEASED_BANK_FOLDER}/{name}"))
        except Exception as exc:  # noqa: BLE001 - network, auth and cache errors all mean "not available"
            raise UsageError(f"cannot download the {repo} label bank ({type(exc).__name__})") from exc
    return Path(paths[0]).parent
