"""Distributions, not means: the suite's one statistics module.

Percentiles with bootstrap confidence intervals (bench summary, compare), named statistics and paired
one-sided tests (gates), and the two-sample test of history's step detection. The bootstrap is written once
(``bootstrap_rows``) and every interval and test has a minimum n below which it says so instead of printing a
number that only looks like a statement (an interval of one value is that value).
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.errors import StatsError

BOOTSTRAP_RESAMPLES = 2000  # enough for stable 95 % interval ends at the sample sizes a bench produces
BOOTSTRAP_SEED = 0  # seeded: the same records always give the same interval and verdict
CONFIDENCE = 0.95
# The one-sided Wilcoxon signed-rank test needs 5 pairs to reach p < 0.05 at all (all 5 one way: p = 1/32;
# 4 pairs: 1/16). The same floor applies to the paired bootstrap, whose resamples of fewer pairs repeat too
# often.
MIN_PAIRS = 5
# Two-sided Mann-Whitney U between two samples: 4 per side is the fewest that can reach p < 0.05
# (4 vs 4 all one way: p = 2/70).
MIN_PER_SIDE = 4
NO_INTERVAL = "n too small: no interval"
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")


@functools.cache
def min_interval_n(q: float) -> int:
    """The fewest values for a CONFIDENCE interval of percentile ``q`` (0-100).

    A percentile-bootstrap interval never reaches beyond the sample's smallest and largest value, and the
    range [min, max] of n values covers the true q-quantile with probability 1 - p^n - (1 - p)^n (p = q/100,
    continuous data). Below the n where that reaches CONFIDENCE, no bootstrap interval can be a 95 % interval:
    6 values for the median, 59 for p95, 299 for p99.
    """
    p = min(max(q / 100, 1e-9), 1 - 1e-9)
    n = 1
    while 1 - p**n - (1 - p) ** n < CONFIDENCE:
        n += 1
    return n


def bootstrap_rows(n: int, seed: int = BOOTSTRAP_SEED) -> npt.NDArray[np.int64]:
    """The bootstrap: BOOTSTRAP_RESAMPLES rows of ``n`` indices drawn with replacement (seeded). Index paired
    arrays with the same rows to resample pairs."""
    return np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))


@dataclass(frozen=True)
class Percentile:
    """A percentile of a sample, with a percentile-bootstrap confidence interval where n allows one."""

    q: float  # percentile, 0-100
    value: float  # the sample's percentile (linear interpolation); NaN when the sample is empty
    low: float  # lower end of the CONFIDENCE interval; NaN below min_interval_n(q) values
    high: float  # upper end; NaN likewise
    n: int  # sample size

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))


def percentile_ci(values: Sequence[float], q: float, seed: int = BOOTSTRAP_SEED) -> Percentile:
    """Percentile ``q`` of the finite ``values`` and its bootstrap interval (none below min_interval_n)."""
    sample = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    nan = float("nan")
    if sample.size == 0:
        return Percentile(q, nan, nan, nan, 0)
    value = float(np.percentile(sample, q))
    if sample.size < min_interval_n(q):
        return Percentile(q, value, nan, nan, int(sample.size))
    estimates = np.percentile(sample[bootstrap_rows(sample.size, seed)], q, axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return Percentile(q, value, float(low), float(high), int(sample.size))


def format_percentile(p: Percentile, scale: float = 1.0, digits: int = 1) -> str:
    """'123.4 [118.0, 130.2]' with values multiplied by ``scale`` (e.g. 1000 for ms); '123.4 (n too small:
    no interval, n=3)' below the minimum n; '-' for no values."""
    if p.n == 0:
        return "-"
    if not p.has_interval:
        return f"{p.value * scale:.{digits}f} ({NO_INTERVAL}, n={p.n})"
    return f"{p.value * scale:.{digits}f} [{p.low * scale:.{digits}f}, {p.high * scale:.{digits}f}]"


# --- named statistics and paired tests (gates) ------------------------------------------------------------


def check_statistic(statistic: str) -> None:
    """Refuse a statistic name this module cannot compute."""
    match = _PERCENTILE.fullmatch(statistic)
    if statistic in ("median", "mean", "min", "max") or (match and 0 < float(match.group(1)) < 100):
        return
    raise StatsError(f"unknown statistic {statistic!r}; use median, mean, min, max or pNN (e.g. p95)")


def statistic_value(values: npt.NDArray[np.float64], statistic: str, axis: int | None = None) -> Any:
    """The named statistic of a non-empty sample (or of each row, with axis=1)."""
    check_statistic(statistic)
    if statistic == "median":
        return np.median(values, axis=axis)
    if statistic == "mean":
        return np.mean(values, axis=axis)
    if statistic == "min":
        return np.min(values, axis=axis)
    if statistic == "max":
        return np.max(values, axis=axis)
    return np.percentile(values, float(statistic[1:]), axis=axis)


class PairedTest(str, enum.Enum):
    """The paired one-sided test behind 'current is worse than baseline' for a statistic."""

    WILCOXON = "wilcoxon"  # signed-rank test of the paired differences: for median and mean
    BOOTSTRAP = "bootstrap"  # paired bootstrap of the statistic's difference: for percentiles, min, max

    @classmethod
    def for_statistic(cls, statistic: str) -> PairedTest:
        return cls.WILCOXON if statistic in ("median", "mean") else cls.BOOTSTRAP


def paired_p_value(
    current: npt.NDArray[np.float64],
    baseline: npt.NDArray[np.float64],
    statistic: str,
    lower_is_better: bool = True,
) -> float:
    """One-sided p of 'current is worse than baseline' on paired values, by the statistic's PairedTest.

    A test of the bulk (Wilcoxon) for median and mean; a paired bootstrap of the statistic's difference for
    percentiles, min and max, whose p is the share of resamples in which the current run is not worse
    (counting the observed sample). Fewer than MIN_PAIRS pairs is an error: no p-value can mean anything.
    """
    if current.shape != baseline.shape or current.ndim != 1:
        raise StatsError(
            f"paired values need two 1-d arrays of one length, got {current.shape}, {baseline.shape}"
        )
    if current.size < MIN_PAIRS:
        raise StatsError(f"{current.size} pairs: a paired test needs at least {MIN_PAIRS}")
    worse = current - baseline if lower_is_better else baseline - current
    if PairedTest.for_statistic(statistic) is PairedTest.WILCOXON:
        from scipy.stats import wilcoxon

        if not np.any(worse):
            return 1.0  # identical pairs: no evidence of any change
        return float(wilcoxon(worse, alternative="greater").pvalue)
    rows = bootstrap_rows(current.size)
    difference = statistic_value(current[rows], statistic, axis=1) - statistic_value(
        baseline[rows], statistic, axis=1
    )
    if not lower_is_better:
        difference = -difference
    return float((np.count_nonzero(difference <= 0) + 1) / (BOOTSTRAP_RESAMPLES + 1))


def two_sample_p_value(after: npt.ArrayLike, before: npt.ArrayLike) -> float | None:
    """Two-sided Mann-Whitney U p of two independent samples (history's windows of runs); None when either
    has fewer than MIN_PER_SIDE finite values."""
    from scipy.stats import mannwhitneyu

    a, b = (np.asarray(values, dtype=np.float64) for values in (after, before))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if min(a.size, b.size) < MIN_PER_SIDE:
        return None
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
