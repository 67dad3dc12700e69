"""Metrics, few-shot and hierarchy metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from treeclip.eval.fewshot import few_shot_accuracy, linear_probe_predict, sample_support, simpleshot_predict
from treeclip.eval.hierarchy import distance_correlation, mistake_severity, rank_accuracy, sample_pairs
from treeclip.eval.metrics import accuracy, mean_std, per_class_accuracy, topk_accuracy, topk_indices
from treeclip.model.linear_probe import fit_linear_probe
from treeclip.taxonomy import Taxon, TaxonTree

SCORES = np.array([[0.1, 0.5, 0.4], [0.3, 0.2, 0.5], [0.9, 0.05, 0.05]])
LABELS = np.array([2, 0, 0])


def test_topk_accuracy_by_hand() -> None:
    # top-1 predictions 1, 2, 0 → only the last is right; the label is in every row's top 2
    assert topk_accuracy(SCORES, LABELS, ks=(1, 2)) == {1: pytest.approx(1 / 3), 2: 1.0}
    assert topk_accuracy(SCORES, LABELS, ks=(5,)) == {5: 1.0}  # k beyond the class count is clipped


def test_ties_break_to_the_lower_class() -> None:
    assert topk_indices(np.array([[0.5, 0.5, 0.1]]), 2).tolist() == [[0, 1]]


def test_accuracy_and_per_class() -> None:
    predictions = topk_indices(SCORES, 1)[:, 0]
    assert accuracy(predictions, LABELS) == pytest.approx(1 / 3)
    per_class = per_class_accuracy(predictions, LABELS, 3)
    assert per_class[0] == 0.5 and math.isnan(per_class[1]) and per_class[2] == 0.0
    with pytest.raises(ValueError):
        accuracy(np.array([1, 2]), np.array([1]))


def test_mean_std_is_population_std() -> None:
    assert mean_std([0.75, 0.75, 0.75, 0.75, 0.5]) == pytest.approx((0.7, 0.1))


def test_simpleshot_centres_on_support_mean() -> None:
    # support mean (2.5, 2.5); centred + normalised centroids ±(0.707, -0.707). Query (0, 0.5) centres to
    # (-2.5, -2) → (-0.781, -0.625): q.c1 = 0.110 > q.c0 = -0.110 → class 1;
    # query (3, 1) centres to (0.5, -1.5) → centroid 0; (1, 0.9) centres to (-1.5, -1.6) → (-0.684, -0.730):
    # |q - c0|² = 1.935 < |q - c1|² = 2.065 → class 0.
    support = np.array([[3.0, 2.0], [2.0, 3.0]])
    predicted = simpleshot_predict(support, np.array([0, 1]), np.array([[0, 0.5], [3, 1], [1, 0.9]]))
    assert predicted.tolist() == [1, 0, 0]


FEATURES = np.array([[1, 0], [1, 0.1], [-1, 0.2], [-1, -0.05], [-1, -0.1], [-0.9, -0.2]])
FEW_LABELS = np.array([0, 0, 0, 1, 1, 1])


def test_support_sampling_is_seeded_and_disjoint() -> None:
    support, query = sample_support(FEW_LABELS, 1, 0)
    assert support.tolist() == [0, 5] and sorted(query.tolist()) == [1, 2, 3, 4]
    assert sample_support(FEW_LABELS, 1, 4)[0].tolist() == [2, 5]
    assert sample_support(FEW_LABELS, 1, 3)[0].tolist() == sample_support(FEW_LABELS, 1, 3)[0].tolist()


def test_one_shot_with_fixed_seeds_by_hand() -> None:
    # Image 2 of class 0 looks like class 1. Seeds 0-3 pick a typical class-0 support image: the outlier is
    # the only error → 3/4. Seed 4 picks the outlier (-1, 0.2) with (-0.9, -0.2): mean (-0.95, 0), centroids
    # ±(-0.243, 0.970); both typical class-0 images land nearer class 1 → 2/4. Mean 0.7, std 0.1.
    result = few_shot_accuracy(FEATURES, FEW_LABELS, k=1)
    assert result.runs == pytest.approx([0.75, 0.75, 0.75, 0.75, 0.5])
    assert (result.mean, result.std) == pytest.approx((0.7, 0.1))


def test_classes_with_too_few_images_are_left_out() -> None:
    labels = np.array([0, 0, 0, 1])
    support, query = sample_support(labels, 2, 0)
    assert set(labels[support]) == {0} and set(labels[query]) == {0}


def test_linear_probe_separates_clusters() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 8)
    features = np.eye(3)[labels] * 3 + rng.normal(scale=0.1, size=(24, 3))
    result = few_shot_accuracy(features, labels, k=5, method="linear_probe")
    assert result.runs == [1.0] * 5
    with pytest.raises(ValueError):
        few_shot_accuracy(features, labels, k=1, method="nope")


def _taxon(family: str, genus: str, epithet: str) -> Taxon:
    return Taxon(("Animalia", "Chordata", "Aves", "Passeriformes", family, genus, epithet))


A1, A2 = _taxon("Fa", "Ga", "one"), _taxon("Fa", "Ga", "two")
B1, C1 = _taxon("Fa", "Gb", "one"), _taxon("Fc", "Gc", "one")


def test_rank_accuracy_by_hand() -> None:
    # true A1 three times: predicted A1 (all right), A2 (right to genus), C1 (right to order)
    ranks = rank_accuracy([A1, A2, C1], [A1, A1, A1])
    assert ranks["order"] == 1.0 and ranks["family"] == pytest.approx(2 / 3)
    assert ranks["genus"] == pytest.approx(2 / 3) and ranks["species"] == pytest.approx(1 / 3)


def test_mistake_severity_by_hand() -> None:
    tree = TaxonTree([A1, A2, B1, C1])
    # wrong: A2 vs A1 (same genus → 1), B1 vs A1 (same family → 2), C1 vs A1 (same order → 3)
    assert mistake_severity([A1, A2, B1, C1], [A1, A1, A1, A1], tree) == pytest.approx(2.0)
    assert math.isnan(mistake_severity([A1], [A1], tree))


def test_distance_correlation_follows_the_tree() -> None:
    taxa = [A1, A2, B1, C1] * 3
    prefixes = sorted({t.lineage[:d] for t in taxa for d in (5, 6, 7)})
    basis = np.eye(len(prefixes))
    features = np.array([sum(basis[prefixes.index(t.lineage[:d])] for d in (5, 6, 7)) for t in taxa])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    tree = TaxonTree(taxa)
    assert distance_correlation(features, taxa, tree, n_pairs=300, seed=1) == pytest.approx(1.0)
    shuffled = np.random.default_rng(0).normal(size=features.shape)
    assert abs(distance_correlation(shuffled, taxa, tree, n_pairs=300, seed=1)) < 0.3


def test_pairs_are_seeded_and_never_self() -> None:
    pairs = sample_pairs(5, 200, seed=3)
    assert (pairs[:, 0] != pairs[:, 1]).all() and pairs.max() < 5
    assert (sample_pairs(5, 200, seed=3) == pairs).all()


def test_expected_calibration_error_matches_a_hand_computed_case() -> None:
    from treeclip.eval.metrics import expected_calibration_error

    # bin 0.9: 3 of 4 right (|0.75 - 0.9| = 0.15, weight 4/6); bin 0.6: 1 of 2 right (|0.5 - 0.6|, weight 2/6)
    confidence = np.array([0.9, 0.9, 0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 0])
    assert expected_calibration_error(confidence, correct, n_bins=10) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.1)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == pytest.approx(0.0)


def test_accuracy_coverage_answers_the_most_confident_first() -> None:
    from treeclip.eval.metrics import accuracy_coverage

    confidence = np.array([0.2, 0.9, 0.8, 0.1, 0.7])
    correct = np.array([0, 1, 1, 0, 0])
    curve = accuracy_coverage(confidence, correct, coverages=(0.2, 0.4, 0.6, 1.0))
    assert curve == {0.2: 1.0, 0.4: 1.0, 0.6: pytest.approx(2 / 3), 1.0: pytest.approx(0.4)}


def test_zero_shot_reports_calibration_with_a_logit_scale() -> None:
    from treeclip.eval.zeroshot import zero_shot_eval

    classes = np.eye(3)
    features = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0.8, 0]])
    labels = np.array([0, 1, 0])
    plain = zero_shot_eval(features, labels, classes)
    assert plain.ece is None and plain.coverage is None
    sharp = zero_shot_eval(features, labels, classes, logit_scale=100.0)
    assert sharp.coverage[1.0] == pytest.approx(2 / 3)  # the ambiguous image is wrong and least confident
    assert sharp.coverage[0.6] == 1.0 and 0 < sharp.ece < 0.5


@pytest.mark.parametrize("n_classes", [2, 5])
def test_linear_probe_predicts_as_scikit_learn(n_classes: int) -> None:
    """The shared fit (`model.linear_probe`, also behind `treeclip probe`) gives few-shot the labels scikit-learn's
    own predict gives, with non-contiguous labels (a label/index mix-up or a lost binary row would differ)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    rng = np.random.default_rng(n_classes)
    labels = np.repeat(np.arange(n_classes) * 3 + 7, 6)
    features = rng.normal(size=(n_classes, 8))[(labels - 7) // 3] + rng.normal(scale=1.5, size=(len(labels), 8))
    support, query = sample_support(labels, 3, 0)
    expected = LogisticRegression(C=1.0, max_iter=1000).fit(features[support], labels[support]).predict(features[query])
    predicted = linear_probe_predict(features[support], labels[support], features[query])
    assert predicted.tolist() == expected.tolist() and 0.2 < np.mean(expected == labels[query]) < 1.0
    with pytest.raises(ValueError, match="each of its 3"):
        fit_linear_probe(features[:12], np.array([0] * 6 + [2] * 6), 3, c=1.0, max_iter=100)
