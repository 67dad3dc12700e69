"""Per-image evidence of the demo's metrics and bootstrap confidence intervals over it.

A `Measure` holds one model's metric as per-unit values (units are images, or image pairs for the distance
correlation), one array per training seed; its `statistic` turns a sample of units into the metric (the mean
for accuracies, Spearman's ρ for pairs). The units of two models' measures are the same images in the same
order, so differences are paired.

Intervals come from a two-level (hierarchical) percentile bootstrap: each replicate draws the seeds with
replacement, then each drawn seed's units with replacement, and averages the statistic over the drawn seeds.
With one seed it is the ordinary bootstrap over images. (`scipy.stats.bootstrap` resamples one level only.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from treeclip.eval.hierarchy import spearman

Statistic = Callable[[np.ndarray], float]
RESAMPLES = 1000
CONFIDENCE = 0.95


def nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values (NaN units: e.g. a right prediction has no mistake distance)."""
    values = np.asarray(values, dtype=float)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


@dataclass(frozen=True)
class Measure:
    """One model's metric: per-unit values for each seed, and how units become the metric."""

    values: tuple[np.ndarray, ...]
    statistic: Statistic = nanmean

    @classmethod
    def of(cls, values: Sequence[np.ndarray], statistic: Statistic = nanmean) -> Measure:
        return cls(tuple(np.asarray(v, dtype=float) for v in values), statistic)

    def point(self) -> float:
        """The metric on all units, averaged over seeds."""
        return float(np.mean([self.statistic(v) for v in self.values]))


def pairs_measure(values: Sequence[np.ndarray]) -> Measure:
    """Spearman's ρ over `treeclip.eval.hierarchy.pair_distances` rows (units = image pairs)."""
    return Measure.of(values, spearman)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval."""

    point: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


class Resampled:
    """Several models' measures of one metric, bootstrapped together (the same seeds and units in every
    replicate), so that each model's interval and every paired difference come from one resampling pass."""

    def __init__(self, measures: dict[str, Measure], *, seed: int = 0, resamples: int = RESAMPLES) -> None:
        units = {name: tuple(v.shape[0] for v in m.values) for name, m in measures.items()}
        if len(set(units.values())) != 1:
            raise ValueError(f"measures are not paired: units per seed differ ({units})")
        self.names = list(measures)
        self.points = {name: m.point() for name, m in measures.items()}
        replicates = _replicates(list(measures.values()), seed=seed, resamples=resamples)
        self.replicates = {name: replicates[:, i] for i, name in enumerate(self.names)}

    def value(self, name: str) -> Interval:
        """Interval of one model's metric."""
        return _interval(self.points[name], self.replicates[name])

    def difference(self, first: str, second: str | float, *, scale: float = 1.0) -> Interval:
        """Interval of ``first − scale × second`` (`second` another model of this metric, or a constant)."""
        if isinstance(second, str):
            return _interval(self.points[first] - scale * self.points[second],
                             self.replicates[first] - scale * self.replicates[second])
        return _interval(self.points[first] - scale * second, self.replicates[first] - scale * second)

    def best(self, among: Sequence[str], *, lower_is_better: bool = False) -> str:
        """The model of `among` with the best point estimate."""
        sign = -1.0 if lower_is_better else 1.0
        return max(among, key=lambda name: sign * _or_inf(self.points[name]))


def _or_inf(value: float) -> float:
    return float("-inf") if np.isnan(value) else value


def _interval(point: float, replicates: np.ndarray) -> Interval:
    kept = replicates[~np.isnan(replicates)]
    if not kept.size:
        return Interval(point, float("nan"), float("nan"))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(kept, [tail, 100 - tail])
    return Interval(point, float(low), float(high))


def _replicates(measures: Sequence[Measure], *, seed: int, resamples: int) -> np.ndarray:
    """``[resamples, len(measures)]``: the statistic of each measure on the same resampled seeds and units."""
    rng = np.random.default_rng(seed)
    n_seeds = len(measures[0].values)
    out = np.empty((resamples, len(measures)))
    for r in range(resamples):
        drawn = rng.integers(n_seeds, size=n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        totals = np.zeros(len(measures))
        for s in drawn:
            n_units = measures[0].values[s].shape[0]
            units = rng.integers(n_units, size=n_units)
            totals += [m.statistic(m.values[s][units]) for m in measures]
        out[r] = totals / len(drawn)
    return out
