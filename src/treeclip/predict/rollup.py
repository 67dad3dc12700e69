"""Roll-up: the deepest rank whose best aggregated probability reaches a threshold, else "unknown".

What it guarantees: a name at rank R is reported only when the model puts at least `threshold` of the
probability mass (over the bank, or the checklist when one is given) on that single rank-R group; because
the mass of a group is the sum over its descendants, the scores can only grow going up the tree, so the
answer is the most specific one that is that sure. An image unlike everything in the bank spreads its mass
over many taxa (the softmax over a large bank is diffuse), so it rolls up to a high rank or to "unknown".
It is no out-of-distribution detector: an odd image that the model happens to map close to one bank text is
still scored confidently (tests/test_predict_rollup.py shows both regimes on a tiny model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

UNKNOWN = "unknown"


@dataclass(frozen=True)
class RollupAnswer:
    """One image's answer: rank index (-1 for unknown), group id at that rank (-1) and its score."""

    rank: int
    group: int
    score: float


def rollup(levels: Sequence[torch.Tensor], named: Sequence[np.ndarray], threshold: float) -> list[RollupAnswer]:
    """Answers for a batch from group probabilities at every rank (kingdom first, ``[B, n_groups]`` each)
    and each rank's mask of named groups; `threshold` in (0, 1]."""
    if not 0 < threshold <= 1:
        raise ValueError(f"roll-up threshold must be in (0, 1], got {threshold}")
    best, arg = [], []
    for probs, mask in zip(levels, named, strict=True):
        masked = probs.masked_fill(~torch.from_numpy(mask).to(probs.device), -1.0)
        value, index = masked.max(dim=1)
        best.append(value)
        arg.append(index)
    best_t, arg_t = torch.stack(best).cpu(), torch.stack(arg).cpu()  # [ranks, B]: the only host copy
    depth = torch.arange(len(levels)).unsqueeze(1).expand_as(best_t)
    deepest = torch.where(best_t >= threshold, depth, torch.full_like(depth, -1)).max(dim=0).values
    answers = []
    for image, rank in enumerate(deepest.tolist()):
        if rank < 0:
            answers.append(RollupAnswer(-1, -1, float(max(best_t[0, image].item(), 0.0))))
        else:
            answers.append(RollupAnswer(rank, int(arg_t[rank, image]), float(best_t[rank, image])))
    return answers
