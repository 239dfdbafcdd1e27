"""The cache's operating points: the best plain threshold at each wrong-hit bound."""

import numpy as np
import pytest

from eval.cache_bounds import BOUNDS, at_bounds, threshold_curve


def _rates(scores: np.ndarray, good: np.ndarray, t: float) -> tuple[float, float]:
    hit = scores >= t
    return float((hit & good).sum()) / good.sum(), float((hit & ~good).sum()) / (~good).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_plain_threshold_is_the_brute_force_best(seed: int) -> None:
    rng = np.random.default_rng(seed)
    good = rng.random(3000) < 0.3
    # Right hits score higher on average, with ties (rounded) as real cosines have.
    scores = np.round(np.where(good, rng.normal(0.8, 0.1, 3000), rng.normal(0.6, 0.1, 3000)), 3)
    curve = threshold_curve(scores, good, int(good.sum()), int((~good).sum()), "x", "y")
    for row in curve:  # every row is what that cut really gives
        y, x = _rates(scores, good, row["threshold"])
        assert row["y"] == pytest.approx(y) and row["x"] == pytest.approx(x)
    best = at_bounds(curve, "x", "y")
    for bound in BOUNDS:
        brute = max((y for t in np.unique(scores) for y, x in [_rates(scores, good, t)] if x <= bound), default=None)
        got = best[f"{bound:g}"]
        assert (got is None and brute is None) or got["y"] == pytest.approx(brute)
        assert got is None or got["x"] <= bound


def test_no_cut_within_the_bound_is_none() -> None:
    good = np.array([False, True, False])
    curve = threshold_curve(np.array([0.9, 0.8, 0.7]), good, 1, 2, "x", "y")
    assert at_bounds(curve, "x", "y", (0.01,)) == {"0.01": None}
