"""One model on one benchmark: cached features → zero-shot per text type, few-shot (SimpleShot and a linear
probe) per k, and hierarchy metrics, as one JSON-ready dict that `treeclip.eval.report` turns into tables."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from treeclip.eval.benchmarks import Benchmark
from treeclip.eval.features import (
    FeatureCache,
    Progress,
    encode_images,
    files_fingerprint,
    preprocess_fingerprint,
    texts_fingerprint,
)
from treeclip.eval.fewshot import DEFAULT_SEEDS, few_shot_accuracy
from treeclip.eval.hierarchy import distance_correlation, mistake_severity, rank_accuracy
from treeclip.eval.zeroshot import class_embeddings, zero_shot_eval
from treeclip.taxonomy import TaxonTree, get_templates

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int], Progress]


@dataclass
class EvalModel:
    """A loaded model ready for evaluation; `label` names it in reports (e.g. its training text type)."""

    label: str
    fingerprint: str  # `features.model_fingerprint(model_id, model)`: keys the feature cache
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]


@dataclass
class EvalSettings:
    """How to evaluate: shots (0 = zero-shot), test text types, template set, hardware and seeds."""

    shots: Sequence[int] = (0, 1, 5)
    text_types: Sequence[str] = ("taxon_com",)
    templates: str = "openai"
    batch_size: int = 64
    device: str = "cpu"
    num_workers: int = 0
    seeds: Sequence[int] = DEFAULT_SEEDS
    linear_probe: bool = True
    hierarchy_pairs: int = 5000
    seed: int = 0


def _tick(progress: ProgressFactory | None, desc: str, total: int) -> Progress | None:
    return progress(desc, total) if progress is not None else None


def image_features(model: EvalModel, benchmark: Benchmark, *, cache: FeatureCache, settings: EvalSettings,
                   progress: ProgressFactory | None = None) -> np.ndarray:
    """The benchmark's L2-normalised image features (cached by model, images and preprocessing)."""
    parts = {"kind": "image", "model": model.fingerprint, "data": files_fingerprint(benchmark.paths),
             "preprocess": preprocess_fingerprint(model.preprocess)}
    return cache.get_or_compute(parts, lambda: encode_images(
        model.model, model.preprocess, benchmark.paths, batch_size=settings.batch_size, device=settings.device,
        num_workers=settings.num_workers, progress=_tick(progress, f"images {benchmark.name}", len(benchmark.paths))))


def text_classifier(model: EvalModel, class_names: Sequence[str], *, cache: FeatureCache, settings: EvalSettings,
                    progress: ProgressFactory | None = None) -> np.ndarray:
    """``[n_classes, dim]`` template-averaged class embeddings (cached by model, class texts and templates)."""
    templates = get_templates(settings.templates)
    parts = {"kind": "text", "model": model.fingerprint, "texts": texts_fingerprint(class_names),
             "templates": texts_fingerprint(templates)}
    total = len(class_names) * len(templates)
    return cache.get_or_compute(parts, lambda: class_embeddings(
        model.model, model.tokenizer, class_names, templates, batch_size=max(settings.batch_size, 256),
        device=settings.device, progress=_tick(progress, "class texts", total)))


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _zero_shot(model: EvalModel, benchmark: Benchmark, features: np.ndarray, labels: np.ndarray, *,
               cache: FeatureCache, settings: EvalSettings, progress: ProgressFactory | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for text_type in settings.text_types:
        classes = text_classifier(model, benchmark.class_strings(text_type), cache=cache, settings=settings,
                                  progress=progress)
        result = zero_shot_eval(features, labels, classes, logit_scale=_logit_scale(model.model))
        results[text_type] = {
            "top1": result.top1, "top5": result.top5, "predictions": result.predictions.tolist(),
            "per_class": {name: _nan_to_none(acc) for name, acc in zip(benchmark.class_names, result.per_class)},
            "ece": result.ece, "accuracy_coverage": {str(c): a for c, a in (result.coverage or {}).items()},
        }
    return results


def _logit_scale(model: torch.nn.Module) -> float | None:
    """The model's softmax scale ``logit_scale.exp()`` (None for a model without one)."""
    scale = getattr(model, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else None


def _hierarchy(benchmark: Benchmark, features: np.ndarray, predictions: Sequence[int] | None,
               settings: EvalSettings) -> dict[str, Any]:
    true = benchmark.taxa()
    tree = TaxonTree(benchmark.classes)
    result: dict[str, Any] = {"distance_spearman": _nan_to_none(distance_correlation(
        features, true, tree, n_pairs=settings.hierarchy_pairs, seed=settings.seed))}
    if predictions is not None:
        predicted = [benchmark.classes[p] for p in predictions]
        result["rank_accuracy"] = rank_accuracy(predicted, true)
        result["mistake_severity"] = _nan_to_none(mistake_severity(predicted, true, tree))
    return result


def evaluate(model: EvalModel, benchmark: Benchmark, *, cache: FeatureCache, settings: EvalSettings,
             progress: ProgressFactory | None = None, features: np.ndarray | None = None) -> dict[str, Any]:
    """Every requested metric of `model` on `benchmark`, as a JSON-ready dict (`features`: the benchmark's
    image features when the caller already has them from `image_features`)."""
    if features is None:
        features = image_features(model, benchmark, cache=cache, settings=settings, progress=progress)
    labels = np.asarray(benchmark.labels)
    result: dict[str, Any] = {"model": model.label, "task": benchmark.name, "n_images": len(labels),
                              "n_classes": len(benchmark.classes), "templates": settings.templates}
    if 0 in settings.shots:
        result["zero_shot"] = _zero_shot(model, benchmark, features, labels, cache=cache, settings=settings,
                                         progress=progress)
    methods = ["simpleshot"] + (["linear_probe"] if settings.linear_probe else [])
    for method in methods:
        result[method] = {str(k): few_shot_accuracy(features, labels, k=k, method=method, seeds=settings.seeds)
                          .to_dict() for k in settings.shots if k > 0}
    if benchmark.taxonomic and len(labels) > 1:
        zero = result.get("zero_shot", {}).get(settings.text_types[0]) if settings.text_types else None
        result["hierarchy"] = _hierarchy(benchmark, features, zero["predictions"] if zero else None, settings)
    return result
