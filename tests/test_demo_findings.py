"""The demo's findings logic on made-up numbers: every finding must PASS when the mixed model is clearly
better than its alternative, FAIL when clearly worse, and be "not shown" on a tie — with the alternative
being the strongest single-type model where the claim is about text types."""

from __future__ import annotations

import math

import numpy as np
import pytest

from treeclip.demo.evidence import PAIRS, few_shot_hits
from treeclip.demo.report import FAIL, NOT_SHOWN, PASS, Bootstraps, findings, verdict, winners
from treeclip.demo.stats import Interval, Measure, Resampled, nanmean, pairs_measure

MODELS = ("mixed", "com", "taxon", "untrained")
TYPES = ("taxon_com", "sci", "com", "taxon", "sci_com")
N, CHANCE = 400, 0.02
KEYS = ("unseen_vs_chance", "unseen_vs_single", "grid_vs_single", "open_genus_vs_single", "best_test_type",
        "few_shot_1", "few_shot_5", "hierarchy_rho", "mistake_severity")


def _hits(rate: float, seed: int = 0) -> np.ndarray:
    values = np.zeros(N)
    values[: round(rate * N)] = 1.0
    return np.random.default_rng(seed).permutation(values)


def _severity(mean: float) -> np.ndarray:
    values = np.full(N, np.nan)  # right predictions have no mistake distance
    values[: N // 2] = np.random.default_rng(1).normal(mean, 0.3, N // 2)
    return values


def _pairs(correlated: bool) -> np.ndarray:
    rng = np.random.default_rng(2)
    taxonomic = rng.integers(0, 7, N).astype(float)
    cosine = taxonomic / 7 + rng.normal(0, 0.3, N) if correlated else rng.random(N)
    return np.stack([cosine, taxonomic], axis=1)


def _evidence(changes: dict[str, dict[str, object]]) -> dict[str, dict[str, Measure]]:
    """Every model equal on every metric (two identical seeds), except `changes` {metric: {model: value}}:
    a rate for accuracies, a mean for severity, a bool (correlated or not) for the distance pairs."""
    base: dict[str, object] = {**{f"zero_shot/unseen/{t}": 0.3 for t in TYPES}, "grid": 0.3, "open/species": 0.1,
                               "open/genus": 0.3, "few_shot/1": 0.3, "few_shot/5": 0.3, "open/severity": 2.0,
                               PAIRS: False}
    evidence: dict[str, dict[str, Measure]] = {}
    for metric, default in base.items():
        evidence[metric] = {}
        for model in MODELS:
            wanted = changes.get(metric, {}).get(model, default)
            if metric == PAIRS:
                evidence[metric][model] = pairs_measure([_pairs(bool(wanted))] * 2)
            elif metric == "open/severity":
                evidence[metric][model] = Measure.of([_severity(float(wanted))] * 2)
            else:
                evidence[metric][model] = Measure.of([_hits(float(wanted))] * 2)
    return evidence


def _singles(metric: str, mixed: float, com: float, taxon: float) -> dict[str, dict[str, object]]:
    return {metric: {"mixed": mixed, "com": com, "taxon": taxon}}


# (finding, scenario) -> changes. "fail" scenarios of single-type claims make only `taxon` beat mixed while
# `com` stays below it: comparing against the common-names-only model instead of the strongest would PASS.
SCENARIOS: dict[tuple[str, str], dict[str, dict[str, object]]] = {
    ("unseen_vs_chance", "pass"): {"zero_shot/unseen/taxon_com": {"mixed": 0.5}},
    ("unseen_vs_chance", "fail"): {"zero_shot/unseen/taxon_com": {"mixed": 0.02}},
    ("unseen_vs_chance", "tie"): {"zero_shot/unseen/taxon_com": {"mixed": 5 * CHANCE}},
    ("unseen_vs_single", "pass"): _singles("zero_shot/unseen/taxon_com", 0.5, 0.1, 0.3),
    ("unseen_vs_single", "fail"): _singles("zero_shot/unseen/taxon_com", 0.3, 0.1, 0.5),
    ("unseen_vs_single", "tie"): _singles("zero_shot/unseen/taxon_com", 0.3, 0.1, 0.3),
    ("grid_vs_single", "pass"): _singles("grid", 0.5, 0.1, 0.3),
    ("grid_vs_single", "fail"): _singles("grid", 0.3, 0.1, 0.5),
    ("grid_vs_single", "tie"): _singles("grid", 0.3, 0.1, 0.3),
    ("open_genus_vs_single", "pass"): _singles("open/genus", 0.5, 0.1, 0.3),
    ("open_genus_vs_single", "fail"): _singles("open/genus", 0.3, 0.1, 0.5),
    ("open_genus_vs_single", "tie"): _singles("open/genus", 0.3, 0.1, 0.3),
    ("best_test_type", "pass"): {"zero_shot/unseen/taxon_com": {"mixed": 0.5}},
    ("best_test_type", "fail"): {"zero_shot/unseen/sci": {"mixed": 0.5}},
    ("best_test_type", "tie"): {},
    ("few_shot_1", "pass"): {"few_shot/1": {"mixed": 0.6, "untrained": 0.2}},
    ("few_shot_1", "fail"): {"few_shot/1": {"mixed": 0.2, "untrained": 0.6}},
    ("few_shot_1", "tie"): {},
    ("few_shot_5", "pass"): {"few_shot/5": {"mixed": 0.6, "untrained": 0.2}},
    ("few_shot_5", "fail"): {"few_shot/5": {"mixed": 0.2, "untrained": 0.6}},
    ("few_shot_5", "tie"): {},
    ("hierarchy_rho", "pass"): {PAIRS: {"mixed": True}},
    ("hierarchy_rho", "fail"): {PAIRS: {"untrained": True}},
    ("hierarchy_rho", "tie"): {PAIRS: {"mixed": True, "untrained": True}},
    ("mistake_severity", "pass"): {"open/severity": {"mixed": 1.0, "untrained": 3.0}},  # lower is better
    ("mistake_severity", "fail"): {"open/severity": {"mixed": 3.0, "untrained": 1.0}},
    ("mistake_severity", "tie"): {},
}
EXPECTED = {"pass": PASS, "fail": FAIL, "tie": NOT_SHOWN}


def _findings(changes: dict[str, dict[str, object]]) -> dict[str, object]:
    boot = Bootstraps(_evidence(changes), resamples=100)
    result = findings(boot, primary="taxon_com", test_types=TYPES, singles=("com", "taxon"), chance=CHANCE,
                      shots=(0, 1, 5))
    return {f.key: f for f in result}


def test_every_finding_has_a_pass_fail_and_tie_scenario() -> None:
    assert set(_findings({})) == set(KEYS)
    assert {key for key, _ in SCENARIOS} == set(KEYS)


@pytest.mark.parametrize(("key", "scenario"), sorted(SCENARIOS))
def test_finding_verdict(key: str, scenario: str) -> None:
    finding = _findings(SCENARIOS[(key, scenario)])[key]
    assert finding.verdict == EXPECTED[scenario], finding.measured
    assert finding.bioclip and finding.threshold and finding.test


def test_single_type_findings_name_the_strongest_single_type_model() -> None:
    found = _findings(SCENARIOS[("grid_vs_single", "fail")])
    assert "vs taxon" in found["grid_vs_single"].measured
    found = _findings({"few_shot/1": {"mixed": 0.4, "taxon": 0.5, "com": 0.3, "untrained": 0.1}})["few_shot_1"]
    assert found.verdict == PASS  # the claim is against the untrained model ...
    assert "`taxon`" in found.measured  # ... and the strongest single-type model is shown beside it


def test_thresholds_say_whose_they_are() -> None:
    found = _findings({})
    assert "treeclip's own" in found["unseen_vs_chance"].threshold
    assert "treeclip's own" in found["hierarchy_rho"].threshold
    assert found["grid_vs_single"].threshold.startswith("none")


@pytest.mark.parametrize(("interval", "expected"), [
    (Interval(0.05, 0.01, 0.09), PASS),
    (Interval(-0.05, -0.09, -0.01), FAIL),
    (Interval(0.02, -0.01, 0.05), NOT_SHOWN),  # a positive point estimate is not enough
    (Interval(-0.02, -0.05, 0.01), NOT_SHOWN),
    (Interval(0.0, 0.0, 0.0), NOT_SHOWN),
    (Interval(math.nan, math.nan, math.nan), NOT_SHOWN),
])
def test_verdict_table(interval: Interval, expected: str) -> None:
    assert verdict(interval) == expected


def test_winners_flag_a_contradiction() -> None:
    rows = {row["metric"]: row for row in winners(Bootstraps(_evidence(SCENARIOS[("grid_vs_single", "fail")]),
                                                             resamples=100), primary="taxon_com")}
    assert rows["grid"]["winner"] == "taxon" and rows["grid"]["contradicts_bioclip"]
    assert not rows["open/genus"]["contradicts_bioclip"]


def test_seed_disagreement_widens_the_interval() -> None:
    same = Resampled({"m": Measure.of([_hits(0.3), _hits(0.3, seed=5)])}, resamples=300).value("m")
    apart = Resampled({"m": Measure.of([_hits(0.1), _hits(0.5, seed=5)])}, resamples=300).value("m")
    assert apart.point == pytest.approx(same.point)
    assert apart.high - apart.low > 2 * (same.high - same.low)


def test_unpaired_measures_are_refused() -> None:
    with pytest.raises(ValueError, match="not paired"):
        Resampled({"a": Measure.of([np.ones(3)]), "b": Measure.of([np.ones(4)])})


def test_nanmean_skips_missing_units() -> None:
    assert nanmean(np.array([1.0, np.nan, 3.0])) == 2.0
    assert math.isnan(nanmean(np.array([np.nan])))


def test_few_shot_hits_per_image() -> None:
    labels = np.repeat(np.arange(4), 6)
    separable = np.eye(4)[labels] + 0.01 * np.random.default_rng(0).normal(size=(24, 4))
    hits = few_shot_hits(separable, labels, k=1)
    assert np.nanmean(hits) == 1.0 and not np.isnan(hits).all()
    shuffled = few_shot_hits(separable, np.random.default_rng(1).permutation(labels), k=1)
    assert np.nanmean(shuffled) < 0.6
    assert np.isnan(few_shot_hits(separable, labels, k=6)).all()  # every image is support: never a query
