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
