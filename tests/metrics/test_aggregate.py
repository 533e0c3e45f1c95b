"""Spearman's correlation with its interval, as the image report prints the reward against the judge."""

import numpy as np

from rrf_ray.metrics.aggregate import spearman_correlation


def test_spearman_interval_covers_the_correlation_and_separates_signal_from_none():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    falling = spearman_correlation(x, -x + 0.5 * rng.normal(size=200))
    unrelated = spearman_correlation(x, rng.normal(size=200))
    assert falling.n == 200 and falling.low <= falling.value <= falling.high
    assert falling.high < -0.6  # a reward that scores concept-like images low
    assert unrelated.low < 0 < unrelated.high


def test_spearman_is_undefined_for_too_few_pairs_or_a_constant_side():
    assert np.isnan(spearman_correlation([1.0, 2.0], [2.0, 1.0]).value)
    constant = spearman_correlation([1.0, 2.0, 3.0, 4.0], [0.5] * 4)
    assert np.isnan(constant.value) and constant.n == 4
