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

from treeclip.eval.features import Progress, eval_mode
from treeclip.eval.metrics import (accuracy_coverage, expected_calibration_error, per_class_accuracy, topk_accuracy,
                                   topk_indices)
from treeclip.model.bank import encode_class_texts


def class_embeddings(model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                     class_names: Sequence[str], templates: Sequence[str], *, batch_size: int = 256,
                     device: str | torch.device = "cpu", progress: Progress | None = None) -> np.ndarray:
    """``[n_classes, dim]`` unit vectors: the re-normalised mean of each class's template embeddings."""
    with eval_mode(model):
        return encode_class_texts(model, tokenizer, class_names, templates, batch_size=batch_size, device=device,
                                  progress=progress)


@dataclass
class ZeroShotResult:
    """Top-1/top-5 accuracy, per-class accuracy (NaN for classes without images), top-1 predictions and, given
    the model's logit scale, the ECE and accuracy-coverage curve of the top-1 softmax probabilities."""

    top1: float
    top5: float
    per_class: np.ndarray
    predictions: np.ndarray
    ece: float | None = None
    coverage: dict[float, float] | None = None


def zero_shot_eval(image_features: np.ndarray, labels: np.ndarray, classes: np.ndarray,
                   logit_scale: float | None = None) -> ZeroShotResult:
    """Score L2-normalised image features against class embeddings and measure accuracy; with the model's
    `logit_scale` also how well ``softmax(logit_scale * scores)`` is calibrated."""
    labels = np.asarray(labels)
    scores = np.asarray(image_features) @ np.asarray(classes).T
    accuracies = topk_accuracy(scores, labels, ks=(1, 5))
    predictions = topk_indices(scores, 1)[:, 0]
    result = ZeroShotResult(top1=accuracies[1], top5=accuracies[5],
                            per_class=per_class_accuracy(predictions, labels, len(classes)), predictions=predictions)
    if logit_scale is not None and len(labels):
        confidence = torch.softmax(torch.from_numpy(scores * logit_scale).double(), dim=1).max(dim=1).values.numpy()
        correct = predictions == labels
        result.ece = expected_calibration_error(confidence, correct)
        result.coverage = accuracy_coverage(confidence, correct)
    return result
