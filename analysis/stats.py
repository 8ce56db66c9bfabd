"""Summary statistics over seeds: the percentile bootstrap.

Given finite values v_1..v_n (one per seed) and a statistic T (default the mean), draw B resamples
v*_b of size n with replacement (a seeded ``numpy.random.Generator``) and report

    (T(v),  q_{α/2}(T(v*_1..B)),  q_{1-α/2}(T(v*_1..B))),    α = 1 - level,

the percentile bootstrap interval (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993,
ch. 13). For the mean of a large normal sample it approaches mean ± z_{1-α/2} s/√n. With one value
the interval is that value; with none, all three are NaN. None and NaN/inf values are dropped first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

__all__ = ["bootstrap_ci", "finite_values"]


def finite_values(values: Iterable[float | None]) -> np.ndarray:
    """The finite entries of ``values`` (None, NaN and ±inf dropped) as a float64 array."""
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)


def bootstrap_ci(values: Iterable[float | None], level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                 stat: Callable = np.mean) -> tuple[float, float, float]:
    """(estimate, lower, upper): ``stat`` of the finite ``values`` and its ``level`` percentile-bootstrap
    interval from ``n_boot`` resamples drawn with ``numpy.random.default_rng(seed)``.

    Deterministic for a given seed. ``stat`` is called as ``stat(array, axis=1)`` on all resamples at
    once when it accepts ``axis`` (numpy reductions), else once per resample.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    v = finite_values(values)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    estimate = float(stat(v))
    if v.size == 1:
        return (estimate, estimate, estimate)
    rng = np.random.default_rng(seed)
    # the same draws as n_boot successive rng.choice(v, n, replace=True) calls
    samples = v[rng.integers(0, v.size, size=(int(n_boot), v.size))]
    try:
        boots = np.asarray(stat(samples, axis=1), dtype=np.float64)
    except TypeError:
        boots = np.array([stat(s) for s in samples], dtype=np.float64)
    tail = round((1.0 - level) / 2.0, 12)
    lo, hi = np.quantile(boots, [tail, 1.0 - tail])
    return (estimate, float(lo), float(hi))
