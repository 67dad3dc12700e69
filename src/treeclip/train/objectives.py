"""Training objectives: the CLIP contrastive loss and BioCLIP's cross-entropy ablations.

* ``clip``: open_clip's `ClipLoss` with ``local_loss`` and ``gather_with_grad``: each process scores its own
  images and texts against the features gathered from every process, so the contrastive batch is the global
  batch, and the gradient (after DDP averages it) is the gradient of the global-batch loss.
* ``ce``: one linear head over species on the image embedding.
* ``hier_ce``: one head per rank (kingdom .. species), the seven cross-entropies summed.

Class indices per rank come from the training lineages (catalog or shard ``taxon.json``); a sample whose
lineage stops above a rank is ignored by that rank's head.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from open_clip import ClipLoss
from torch import nn

from treeclip.taxonomy import RANK_NAMES

IGNORE = -100
SPECIES = len(RANK_NAMES) - 1


class ClassIndex:
    """Per-rank class ids: the lineage prefix down to a rank is that rank's class."""

    def __init__(self, lineages: Iterable[Sequence[str]], ranks: Sequence[int]) -> None:
        self.ranks = tuple(ranks)
        prefixes: list[set[tuple[str, ...]]] = [set() for _ in self.ranks]
        for lineage in lineages:
            for slot, rank in enumerate(self.ranks):
                if len(lineage) > rank and lineage[rank]:
                    prefixes[slot].add(tuple(lineage[: rank + 1]))
        self.ids = [{prefix: i for i, prefix in enumerate(sorted(found))} for found in prefixes]

    @property
    def sizes(self) -> list[int]:
        return [len(ids) for ids in self.ids]

    def labels(self, lineages: Sequence[Sequence[str]], device: torch.device) -> list[torch.Tensor]:
        """One LongTensor of class ids per rank; unknown or missing ranks are `IGNORE`."""
        out = []
        for slot, rank in enumerate(self.ranks):
            ids = self.ids[slot]
            out.append(torch.tensor([ids.get(tuple(lin[: rank + 1]), IGNORE) for lin in lineages], device=device))
        return out


def ranks_for(objective: str) -> tuple[int, ...]:
    return (SPECIES,) if objective == "ce" else tuple(range(len(RANK_NAMES)))


class ClassifierHeads(nn.Module):
    """One linear classifier per rank over the image embedding."""

    def __init__(self, embed_dim: int, sizes: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(embed_dim, max(1, n)) for n in sizes)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [head(features) for head in self.heads]


def cross_entropy_sum(logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy of the labelled samples (0 for a head with none)."""
    total = logits[0].new_zeros(())
    for head_logits, head_labels in zip(logits, labels):
        valid = (head_labels != IGNORE).sum().clamp(min=1)
        total = total + F.cross_entropy(head_logits.float(), head_labels, ignore_index=IGNORE, reduction="sum") / valid
    return total


def clip_loss(rank: int, world_size: int) -> ClipLoss:
    """The contrastive loss over the global batch (features gathered with gradient, local rows scored)."""
    # open_clip gathers with torch.distributed.nn.all_gather, which warns on every call in recent torch
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
    return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)


def clip_features(model: nn.Module, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(normalised image features, normalised text features, logit scale) from an open_clip model."""
    out = model(image, text)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


class TrainModule(nn.Module):
    """What DDP wraps: the CLIP model, plus classifier heads for the ce objectives."""

    def __init__(self, clip: nn.Module, heads: ClassifierHeads | None = None) -> None:
        super().__init__()
        self.clip, self.heads = clip, heads

    def forward(self, image: torch.Tensor, text: torch.Tensor | None = None) -> tuple[torch.Tensor, ...] | list:
        if self.heads is None:
            return clip_features(self.clip, image, text)
        return self.heads(self.clip.encode_image(image))
