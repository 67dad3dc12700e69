"""Classification metrics: the project's one implementation of accuracy, top-k accuracy and per-class accuracy.

Scores are ``[n_samples, n_classes]`` arrays (higher = more likely); labels are integer class indices.
Ties are broken towards the lower class index (a stable sort), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The `k` best class indices per row, best first (``k`` is clipped to the number of classes)."""
    scores = np.asarray(scores)
    k = max(1, min(int(k), scores.shape[1]))
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to their labels (NaN for no samples)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    return float(np.mean(predictions == labels)) if labels.size else float("nan")


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """{k: fraction of samples whose label is among the k best-scored classes}."""
    labels = np.asarray(labels)
    best = topk_indices(scores, max(ks))
    hits = best == labels[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) if labels.size else float("nan") for k in ks}


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Accuracy of each class over its own samples; NaN for a class without samples."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    totals = np.bincount(labels, minlength=n_classes).astype(float)
    correct = np.bincount(labels[predictions == labels], minlength=n_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, correct / totals, np.nan)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (as BioCLIP reports few-shot runs)."""
    array = np.asarray(list(values), dtype=float)
    return (float(array.mean()), float(array.std())) if array.size else (float("nan"), float("nan"))


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the sample-weighted mean |accuracy - mean confidence| over `n_bins` equal-width confidence bins
    (Guo et al., 2017); NaN for no samples."""
    confidences, correct = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    if confidences.shape != correct.shape:
        raise ValueError(f"confidences {confidences.shape} and correct {correct.shape} differ in shape")
    if not confidences.size:
        return float("nan")
    bins = np.minimum((confidences * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        total += members.sum() * abs(correct[members].mean() - confidences[members].mean())
    return float(total / confidences.size)


def accuracy_coverage(confidences: np.ndarray, correct: np.ndarray,
                      coverages: Iterable[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
                      ) -> dict[float, float]:
    """Selective accuracy: {coverage: accuracy on the most confident `coverage` fraction of the samples}
    (answering only when most sure; ties in confidence keep the input order)."""
    confidences, correct = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    order = np.argsort(-confidences, kind="stable")
    hits = np.cumsum(correct[order])
    curve = {}
    for coverage in coverages:
        answered = max(1, round(coverage * confidences.size))
        curve[float(coverage)] = float(hits[answered - 1] / answered) if confidences.size else float("nan")
    return curve
