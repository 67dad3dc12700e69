"""The demo's metrics per image, for every model and training seed: the input of the findings' intervals.

`seed_evidence` turns one seed's evaluation results (each model × task dict of `treeclip.eval.runner.evaluate`,
which keeps every image's zero-shot prediction) and the unseen task's image features into per-unit arrays;
`measures` stacks the seeds into `treeclip.demo.stats.Measure` objects, keyed by metric and model.

Metric keys: ``zero_shot/TASK/TEXT_TYPE`` (1/0 per image), ``grid`` (per image of the unseen and seen tasks:
the fraction of test text types it is right with), ``open/RANK`` (1/0: the open variant's predicted lineage is
right down to RANK), ``open/severity`` (taxonomic distance of a wrong open prediction, NaN when right),
``few_shot/K`` (SimpleShot: the fraction of the seeded runs in which the image, as a query, is right; NaN when
it is never a query) and ``unseen/distance_pairs`` (cosine and taxonomic distance of seeded image pairs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from treeclip.demo.stats import Measure, nanmean, pairs_measure
from treeclip.eval.benchmarks import Benchmark
from treeclip.eval.fewshot import DEFAULT_SEEDS, sample_support, simpleshot_predict
from treeclip.eval.hierarchy import mistake_distances, pair_distances, rank_hits
from treeclip.taxonomy import TaxonTree

PAIRS = "unseen/distance_pairs"
OPEN_RANKS = ("species", "genus")
Evidence = dict[str, dict[str, np.ndarray]]  # metric -> model -> per-unit values (one seed)


def few_shot_hits(features: np.ndarray, labels: np.ndarray, k: int,
                  seeds: Sequence[int] = DEFAULT_SEEDS) -> np.ndarray:
    """Per image: the fraction of SimpleShot runs (same support draws as `eval.fewshot.few_shot_accuracy`) in
    which it is a query and predicted right; NaN for an image that is never a query."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    right, asked = np.zeros(len(labels)), np.zeros(len(labels))
    for seed in seeds:
        support, query = sample_support(labels, k, seed)
        if not len(support) or not len(query):
            continue
        predicted = simpleshot_predict(features[support], labels[support], features[query])
        right[query] += predicted == labels[query]
        asked[query] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(asked > 0, right / np.maximum(asked, 1), np.nan)


def _zero_shot(result: dict[str, Any], benchmark: Benchmark, text_type: str) -> np.ndarray:
    predictions = np.asarray(result["zero_shot"][text_type]["predictions"])
    return (predictions == np.asarray(benchmark.labels)).astype(float)


def seed_evidence(results: Sequence[dict[str, Any]], tasks: Mapping[str, Benchmark],
                  unseen_features: Mapping[str, np.ndarray], *, test_types: Sequence[str], shots: Sequence[int],
                  hierarchy_pairs: int, seed: int) -> Evidence:
    """Every metric of every model of one training seed, per unit."""
    evidence: Evidence = {}
    unseen, open_task = tasks["unseen"], tasks["open"]
    open_tree, unseen_tree = TaxonTree(open_task.classes), TaxonTree(unseen.classes)
    for result in results:
        model, task = result["model"], result["task"]
        benchmark = tasks[task]
        for text_type in result["zero_shot"]:
            evidence.setdefault(f"zero_shot/{task}/{text_type}", {})[model] = _zero_shot(result, benchmark,
                                                                                         text_type)
        if task == "open":
            predicted = [open_task.classes[p] for p in result["zero_shot"][test_types[0]]["predictions"]]
            hits = rank_hits(predicted, open_task.taxa())
            for rank in OPEN_RANKS:
                evidence.setdefault(f"open/{rank}", {})[model] = hits[rank]
            evidence.setdefault("open/severity", {})[model] = mistake_distances(predicted, open_task.taxa(),
                                                                               open_tree)
    for model, features in unseen_features.items():
        labels = np.asarray(unseen.labels)
        for k in (k for k in shots if k > 0):
            evidence.setdefault(f"few_shot/{k}", {})[model] = few_shot_hits(features, labels, k)
        evidence.setdefault(PAIRS, {})[model] = pair_distances(features, unseen.taxa(), unseen_tree,
                                                               n_pairs=hierarchy_pairs, seed=seed)
    evidence["grid"] = {model: np.concatenate([
        np.mean([evidence[f"zero_shot/{task}/{t}"][model] for t in test_types], axis=0)
        for task in ("unseen", "seen")]) for model in evidence[f"zero_shot/unseen/{test_types[0]}"]}
    return evidence


def measures(per_seed: Sequence[Evidence]) -> dict[str, dict[str, Measure]]:
    """{metric: {model: Measure over the seeds}} from each seed's `seed_evidence`."""
    result: dict[str, dict[str, Measure]] = {}
    for metric, models in per_seed[0].items():
        statistic = pairs_measure if metric == PAIRS else (lambda values: Measure.of(values, nanmean))
        result[metric] = {model: statistic([seed[metric][model] for seed in per_seed]) for model in models}
    return result
