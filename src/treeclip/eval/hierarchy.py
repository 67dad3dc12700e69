"""Hierarchy metrics (BioCLIP reports none): is a species prediction right at each higher rank, how far off
are the mistakes in the tree, and does embedding distance follow taxonomic distance?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from treeclip.taxonomy import RANK_NAMES, Rank, Taxon, TaxonTree


def rank_hits(predicted: Sequence[Taxon], true: Sequence[Taxon]) -> dict[str, np.ndarray]:
    """{rank: per-sample 1.0 / 0.0 for "predicted lineage matches the true one down to that rank"}, NaN where
    the true taxon is unknown at that rank; ranks no sample reaches are left out."""
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predictions for {len(true)} true taxa")
    result: dict[str, np.ndarray] = {}
    for rank in Rank:
        depth = rank + 1
        hits = np.array([float(p.lineage[:depth] == t.lineage[:depth]) if t.lineage[rank] else np.nan
                         for p, t in zip(predicted, true)])
        if hits.size and not np.isnan(hits).all():
            result[RANK_NAMES[rank]] = hits
    return result


def rank_accuracy(predicted: Sequence[Taxon], true: Sequence[Taxon]) -> dict[str, float]:
    """{rank: fraction of samples whose predicted lineage matches the true one down to that rank}.

    Only samples whose true taxon is known at a rank count for it; ranks no sample reaches are left out.
    """
    return {rank: float(np.nanmean(hits)) for rank, hits in rank_hits(predicted, true).items()}


def mistake_distances(predicted: Sequence[Taxon], true: Sequence[Taxon], tree: TaxonTree) -> np.ndarray:
    """Per sample: the taxonomic distance (`TaxonTree.distance`) of a wrong prediction, NaN for a right one."""
    return np.array([tree.distance(p, t) if p != t else np.nan for p, t in zip(predicted, true)], dtype=float)


def mistake_severity(predicted: Sequence[Taxon], true: Sequence[Taxon], tree: TaxonTree) -> float:
    """Mean taxonomic distance (`TaxonTree.distance`) of the wrong predictions; NaN when none is wrong."""
    distances = mistake_distances(predicted, true, tree)
    return float(np.nanmean(distances)) if not np.isnan(distances).all() else float("nan")


def sample_pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    """`n_pairs` random index pairs (i, j) with i != j, from a seeded generator; shape [n_pairs, 2]."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to form pairs, got {n}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, size=n_pairs)
    second = (first + rng.integers(1, n, size=n_pairs)) % n
    return np.stack([first, second], axis=1)


def pair_distances(features: np.ndarray, taxa: Sequence[Taxon], tree: TaxonTree, *, n_pairs: int = 5000,
                   seed: int = 0) -> np.ndarray:
    """``[n_pairs, 2]``: cosine distance of the L2-normalised features and taxonomic distance of seeded random
    image pairs (`sample_pairs`; the same pairs for every model of the same images)."""
    features = np.asarray(features, dtype=np.float64)
    pairs = sample_pairs(len(features), n_pairs, seed)
    cosine = 1.0 - np.einsum("ij,ij->i", features[pairs[:, 0]], features[pairs[:, 1]])
    taxonomic = np.array([tree.distance(taxa[i], taxa[j]) for i, j in pairs], dtype=float)
    return np.stack([cosine, taxonomic], axis=1)


def spearman(distances: np.ndarray) -> float:
    """Spearman correlation of the two columns of `pair_distances` output; NaN when either is constant."""
    from scipy.stats import spearmanr  # noqa: PLC0415 - heavy; imported when used

    if np.ptp(distances[:, 1]) == 0 or np.ptp(distances[:, 0]) == 0:
        return float("nan")
    return float(spearmanr(distances[:, 0], distances[:, 1]).statistic)


def distance_correlation(features: np.ndarray, taxa: Sequence[Taxon], tree: TaxonTree, *,
                         n_pairs: int = 5000, seed: int = 0) -> float:
    """Spearman correlation between cosine distance of L2-normalised features and taxonomic distance over
    seeded random image pairs (1 = the embedding orders pairs exactly as the tree does)."""
    return spearman(pair_distances(features, taxa, tree, n_pairs=n_pairs, seed=seed))
