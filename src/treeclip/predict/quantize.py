"""Compact inference: a quantised torch image tower, and pruned or compactly stored label banks.

- `with_precision`: torch's dynamic quantisation of the image tower's Linear layers (int8 weights with
  per-tensor scales, activations quantised per batch; attention's fused input projection stays float). It
  needs no export; the ONNX Runtime route (`treeclip.model.onnx`, int8 by ONNX Runtime's quantiser) is
  measured beside it by ``benchmarks/runtimes.py`` (figures in ``benchmarks/RESULTS.md``).
- `prune_columns`: the taxa a smaller bank keeps (`treeclip bank prune`).
- `bank_agreement`: how often a compact bank gives the float32 bank's answers (`treeclip bank info`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from treeclip.errors import UsageError
from treeclip.model.bank import LabelBank
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon

from .filters import filter_columns
from .prior import taxon_key
from .ranks import RankIndex

PRECISIONS = ("fp32", "int8")


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a CLIP model whose image tower runs its Linear layers in int8 (CPU only)."""
    from torch.ao.quantization import quantize_dynamic  # noqa: PLC0415 - only int8 runs need it

    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao eager quantisation still works
        warnings.filterwarnings("ignore", message=".*quantize_per_", category=UserWarning)
        quantized.visual = quantize_dynamic(quantized.visual, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized


def with_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """`model` as is for fp32, its int8 copy for int8; ValueError for anything else."""
    if precision == "fp32":
        return model
    if precision == "int8":
        return quantize_int8(model)
    raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


# ---------------------------------------------------------------- compact banks: pruning and agreement


def prune_columns(bank: LabelBank, *, min_rank: Rank | None = None, within: Sequence[str] | None = None,
                  checklist: Sequence[Taxon] | None = None, recorded: set[tuple[int, str]] | None = None) -> np.ndarray:
    """Sorted bank columns kept by every given rule: named down to at least `min_rank`, inside a clade of
    `within`, on the `checklist`, or with a record in a prior (`recorded`: its ``(rank, casefolded name)``
    keys; a column matches by its species, else by its deepest named rank). UsageError when none is left."""
    keep = filter_columns(bank.lineages, checklist=checklist, within=within)
    keep = np.arange(len(bank)) if keep is None else keep
    if min_rank is not None:
        keep = keep[[bool(bank.lineages[column][min_rank]) for column in keep]]
    if recorded is not None:
        keep = keep[[_recorded(bank.lineages[column], recorded) for column in keep]]
    if len(keep) == 0:
        raise UsageError("the pruning rules keep no taxon of the bank; loosen them")
    return keep


def _recorded(lineage: Sequence[str], recorded: set[tuple[int, str]]) -> bool:
    deepest = max((rank for rank in Rank if lineage[rank]), default=None)
    return deepest is not None and (int(deepest), taxon_key(lineage, deepest)) in recorded


def synthetic_queries(bank: LabelBank, n: int, *, cosine: float = 0.4, seed: int = 0) -> torch.Tensor:
    """``[n, dim]`` unit vectors, each at about `cosine` to a random column of `bank` (stand-ins for image
    features: a trained CLIP's image–text cosines are ~0.3-0.5)."""
    rng = np.random.default_rng(seed)
    columns = rng.choice(len(bank), size=min(n, len(bank)), replace=False)
    targets = bank.subset(np.sort(columns)).matrix().T.float()
    noise = F.normalize(torch.from_numpy(rng.standard_normal(targets.shape).astype(np.float32)), dim=1)
    mix = math.sqrt(1 / cosine**2 - 1)
    return F.normalize(targets + mix * noise, dim=1)


@torch.inference_mode()
def bank_agreement(reference: LabelBank, other: LabelBank, queries: torch.Tensor, *, logit_scale: float = 100.0,
                   ranks: Sequence[Rank] = (Rank.SPECIES, Rank.GENUS), batch_size: int = 256) -> dict[str, float]:
    """How often `other` (the same taxa, e.g. stored compact) gives `reference`'s top-1 answer for L2-normalised
    query features, at each rank (probabilities summed over lineages above species), and the mean cosine
    between the two banks' similarity vectors."""
    if reference.lineages != other.lineages:
        raise UsageError("the banks hold different taxa (or in another order): agreement needs the same columns")
    index = RankIndex(reference.lineages)
    same = {rank: 0 for rank in ranks}
    cosines = []
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size].float()
        a, b = batch @ reference.matrix(), batch @ other.matrix()
        cosines.append(F.cosine_similarity(a, b, dim=1))
        species = torch.softmax(a * logit_scale, dim=1), torch.softmax(b * logit_scale, dim=1)
        for rank in ranks:
            pa, pb = species if rank == Rank.SPECIES else (index.aggregate(p, rank) for p in species)
            same[rank] += int((pa.argmax(dim=1) == pb.argmax(dim=1)).sum())
    result = {f"top1_{RANK_NAMES[rank]}": same[rank] / len(queries) for rank in ranks}
    result["score_cosine"] = float(torch.cat(cosines).mean())
    return result
