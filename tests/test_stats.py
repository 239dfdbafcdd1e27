"""eval/stats.py: the one percentile every evaluation and the bench report."""

from eval.stats import latency_summary, percentile, rate


def test_percentiles_interpolate_between_ranks_and_none_is_zero() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 50) == 25.0 and percentile(values, 100) == 40.0 and percentile([], 95) == 0.0
    assert latency_summary(values, (50, 95)) == {"p50_ms": 25.0, "p95_ms": 38.5}
    assert rate(3, 4) == 0.75 and rate(0, 0) is None
