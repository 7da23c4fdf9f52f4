"""Summaries of repeated measurements (min / median / max) and straight-line fits."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def summary(values: Sequence[float]) -> dict[str, Any]:
    """{"min", "median", "max", "n", "values"} of repeated measurements (any unit)."""
    if not values:
        raise ValueError("summary() needs at least one value")
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
        "values": list(values),
    }


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Summary of numerator/denominator taken pairwise, one pair per repeat (same conditions)."""
    if len(numerators) != len(denominators):
        raise ValueError("ratios() needs one denominator per numerator")
    return summary([n / d for n, d in zip(numerators, denominators, strict=True) if d > 0])


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares y = intercept + slope * x, with r2; needs two distinct x values."""
    import numpy as np

    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if len(set(xs)) < 2:
        raise ValueError("fit_line() needs at least two distinct x values")
    slope, intercept = np.polyfit(x, y, 1)
    predicted = intercept + slope * x
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds on the monotonic clock, result) of one call."""
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result
