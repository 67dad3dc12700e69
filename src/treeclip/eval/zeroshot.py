"""Zero-shot classification: class embeddings averaged over prompt templates, scored by cosine similarity.

As open_clip's ``zero_shot_classifier``: every template filled with the class string is encoded and
L2-normalised, the template embeddings of a class are averaged and the mean is L2-normalised again.
Class strings come from `Benchmark.class_strings` (i.e. `treeclip.taxonomy.class_string`), never built here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from treeclip.eval.features import Progress, encode_texts
from treeclip.eval.metrics import per_class_accuracy, topk_accuracy, topk_indices


def class_embeddings(model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                     class_names: Sequence[str], templates: Sequence[str], *, batch_size: int = 256,
                     device: str | torch.device = "cpu", progress: Progress | None = None) -> np.ndarray:
    """``[n_classes, dim]`` unit vectors: the re-normalised mean of each class's template embeddings."""
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError("templates must be a non-empty list of strings with exactly one '{}' each")
    texts = [template.format(name) for name in class_names for template in templates]
    features = encode_texts(model, tokenizer, texts, batch_size=batch_size, device=device, progress=progress)
    mean = features.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class ZeroShotResult:
    """Top-1/top-5 accuracy, per-class accuracy (NaN for classes without images) and top-1 predictions."""

    top1: float
    top5: float
    per_class: np.ndarray
    predictions: np.ndarray


def zero_shot_eval(image_features: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> ZeroShotResult:
    """Score L2-normalised image features against class embeddings and measure accuracy."""
    labels = np.asarray(labels)
    scores = np.asarray(image_features) @ np.asarray(classes).T
    accuracies = topk_accuracy(scores, labels, ks=(1, 5))
    predictions = topk_indices(scores, 1)[:, 0]
    return ZeroShotResult(top1=accuracies[1], top5=accuracies[5],
                          per_class=per_class_accuracy(predictions, labels, len(classes)), predictions=predictions)
