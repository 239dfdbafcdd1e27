"""One way to summarise measurements, for every evaluation and the bench: percentiles
(linear interpolation between the closest ranks, numpy's default) and rates."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``; 0.0 for none (their count says so)."""
    array = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(array, q)) if array.size else 0.0


def latency_summary(values_ms: Iterable[float], qs: Iterable[int] = (50, 95, 99), digits: int = 2) -> dict[str, float]:
    """``{"p50_ms": ..., "p95_ms": ..., ...}`` of latencies in milliseconds."""
    values = list(values_ms)
    return {f"p{q}_ms": round(percentile(values, q), digits) for q in qs}


def rate(count: int, total: int) -> float | None:
    """``count / total``, or None when there is nothing to divide by."""
    return count / total if total else None
