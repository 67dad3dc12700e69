"""Hierarchy metrics (BioCLIP reports none): is a species prediction right at each higher rank, how far off
are the mistakes in the tree, and does embedding distance follow taxonomic distance?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from treeclip.taxonomy import RANK_NAMES, Rank, Taxon, TaxonTree


def rank_accuracy(predicted: Sequence[Taxon], true: Sequence[Taxon]) -> dict[str, float]:
    """{rank: fraction of samples whose predicted lineage matches the true one down to that rank}.

    Only samples whose true taxon is known at a rank count for it; ranks no sample reaches are left out.
    """
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predictions for {len(true)} true taxa")
    result: dict[str, float] = {}
    for rank in Rank:
        depth = rank + 1
        pairs = [(p, t) for p, t in zip(predicted, true) if t.lineage[rank]]
        if pairs:
            hits = [p.lineage[:depth] == t.lineage[:depth] for p, t in pairs]
            result[RANK_NAMES[rank]] = float(np.mean(hits))
    return result


def mistake_severity(predicted: Sequence[Taxon], true: Sequence[Taxon], tree: TaxonTree) -> float:
    """Mean taxonomic distance (`TaxonTree.distance`) of the wrong predictions; NaN when none is wrong."""
    distances = [tree.distance(p, t) for p, t in zip(predicted, true) if p != t]
    return float(np.mean(distances)) if distances else float("nan")


def sample_pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    """`n_pairs` random index pairs (i, j) with i != j, from a seeded generator; shape [n_pairs, 2]."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to form pairs, got {n}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, size=n_pairs)
    second = (first + rng.integers(1, n, size=n_pairs)) % n
    return np.stack([first, second], axis=1)


def distance_correlation(features: np.ndarray, taxa: Sequence[Taxon], tree: TaxonTree, *,
                         n_pairs: int = 5000, seed: int = 0) -> float:
    """Spearman correlation between cosine distance of L2-normalised features and taxonomic distance over
    seeded random image pairs (1 = the embedding orders pairs exactly as the tree does)."""
    from scipy.stats import spearmanr  # noqa: PLC0415 - heavy; imported when used

    features = np.asarray(features, dtype=np.float64)
    pairs = sample_pairs(len(features), n_pairs, seed)
    cosine = 1.0 - np.einsum("ij,ij->i", features[pairs[:, 0]], features[pairs[:, 1]])
    taxonomic = np.array([tree.distance(taxa[i], taxa[j]) for i, j in pairs], dtype=float)
    if np.ptp(taxonomic) == 0 or np.ptp(cosine) == 0:
        return float("nan")
    return float(spearmanr(cosine, taxonomic).statistic)
