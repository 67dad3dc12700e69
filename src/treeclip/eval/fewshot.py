"""Few-shot evaluation on frozen image features: SimpleShot nearest centroid (BioCLIP's protocol) and a
logistic-regression linear probe on the same support/query splits.

Protocol (BioCLIP ``few_shot.py``): for each run seed, every class's images are shuffled with a
``random.Random(seed)`` generator (classes in ascending label order), the first `k` form the support set and
all remaining images the query set. Support and query features are centred on the support-set mean and
L2-normalised; each class centroid is the mean of its normalised support features; a query takes the class of
the nearest centroid (Euclidean). Classes with fewer than `k` images cannot form a centroid and are left out
of that evaluation (logged).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from treeclip.eval.metrics import accuracy, mean_std
from treeclip.model.linear_probe import fit_linear_probe

log = logging.getLogger(__name__)

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass
class FewShotResult:
    """Accuracy of one few-shot method at one `k` over several seeded runs."""

    method: str
    k: int
    runs: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return mean_std(self.runs)[0]

    @property
    def std(self) -> float:
        return mean_std(self.runs)[1]

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "k": self.k, "mean": self.mean, "std": self.std, "runs": self.runs}


def sample_support(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(support indices, query indices): `k` shuffled images per class for support, the rest for query."""
    labels = np.asarray(labels)
    rng = random.Random(seed)
    support: list[int] = []
    query: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label).tolist()
        if len(members) < k:
            log.warning("class %s has %d images, fewer than k=%d: left out of %d-shot", label, len(members), k, k)
            continue
        rng.shuffle(members)
        support += members[:k]
        query += members[k:]
    return np.asarray(support, dtype=int), np.asarray(query, dtype=int)


def centre_normalise(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Subtract `mean`, then scale each row to unit L2 norm (SimpleShot's CL2N)."""
    centred = features - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def simpleshot_predict(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Nearest-centroid labels of the `query` features given labelled `support` features."""
    mean = support.mean(axis=0)
    support_n, query_n = centre_normalise(support, mean), centre_normalise(query, mean)
    classes = np.unique(support_labels)
    centroids = np.stack([support_n[support_labels == c].mean(axis=0) for c in classes])
    # squared Euclidean distance up to the per-query constant |q|^2: |c|^2 - 2 q.c (no [Q, C, D] temporary)
    distances = (centroids**2).sum(axis=1)[None, :] - 2.0 * query_n @ centroids.T
    return classes[np.argmin(distances, axis=1)]


def linear_probe_predict(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray,
                         *, c: float = 1.0, max_iter: int = 1000) -> np.ndarray:
    """Labels from a multinomial logistic regression fitted on the support features
    (`treeclip.model.linear_probe`)."""
    classes, indices = np.unique(support_labels, return_inverse=True)
    if len(classes) < 2:
        return np.full(len(query), classes[0])
    weight, bias = fit_linear_probe(support, indices, len(classes), c=c, max_iter=max_iter)
    return classes[np.argmax(query @ weight.T + bias, axis=1)]


Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
METHODS: dict[str, Predictor] = {"simpleshot": simpleshot_predict, "linear_probe": linear_probe_predict}


def few_shot_accuracy(features: np.ndarray, labels: np.ndarray, *, k: int, method: str = "simpleshot",
                      seeds: Sequence[int] = DEFAULT_SEEDS) -> FewShotResult:
    """Accuracy of `method` ("simpleshot" or "linear_probe") with `k` support images per class, per seed."""
    if method not in METHODS:
        raise ValueError(f"unknown few-shot method {method!r}; expected one of {', '.join(METHODS)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    result = FewShotResult(method=method, k=k)
    for seed in seeds:
        support, query = sample_support(labels, k, seed)
        if not len(support) or not len(query):
            log.warning("%d-shot run %d has no support or no query images; skipped", k, seed)
            continue
        predicted = METHODS[method](features[support], labels[support], features[query])
        result.runs.append(accuracy(predicted, labels[query]))
    return result
