"""Distributions, not means: percentiles with bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000  # enough for stable 95 % interval ends at the sample sizes a bench produces
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Percentile:
    """A percentile of a sample, with a percentile-bootstrap confidence interval."""

    q: float  # percentile, 0-100
    value: float  # the sample's percentile (linear interpolation)
    low: float  # lower end of the CONFIDENCE interval
    high: float  # upper end
    n: int  # sample size


def percentile_ci(values: Sequence[float], q: float, seed: int = 0) -> Percentile:
    """Percentile ``q`` of ``values`` and its bootstrap interval (deterministic for a given seed)."""
    sample = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if sample.size == 0:
        nan = float("nan")
        return Percentile(q, nan, nan, nan, 0)
    rng = np.random.default_rng(seed)
    resampled = rng.choice(sample, size=(BOOTSTRAP_RESAMPLES, sample.size), replace=True)
    estimates = np.percentile(resampled, q, axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return Percentile(q, float(np.percentile(sample, q)), float(low), float(high), int(sample.size))


def format_percentile(p: Percentile, scale: float = 1.0, digits: int = 1) -> str:
    """'123.4 [118.0, 130.2]' with values multiplied by ``scale`` (e.g. 1000 for ms)."""
    if p.n == 0:
        return "-"
    return f"{p.value * scale:.{digits}f} [{p.low * scale:.{digits}f}, {p.high * scale:.{digits}f}]"
