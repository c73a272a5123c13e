"""The token estimate starts conservative and learns the provider's counts."""

from __future__ import annotations

import pytest

from actors.gateway import TokenEstimator, Usage

MESSAGES = [{"role": "user", "content": "x" * 300}]  # 100 rough prompt tokens + 4


def test_first_estimate_charges_the_whole_output_cap() -> None:
    assert TokenEstimator().estimate(MESSAGES, 500) == 104 + 500


def test_it_learns_down_with_a_margin_and_never_above_the_cap() -> None:
    estimator = TokenEstimator()
    for _ in range(200):
        estimator.learn(MESSAGES, 500, Usage(tokens_in=78, tokens_out=100))
    # Converges to the real 78 + 100, plus 25%.
    assert estimator.estimate(MESSAGES, 500) == pytest.approx((78 + 100) * 1.25, abs=2)
    for _ in range(200):
        estimator.learn(MESSAGES, 500, Usage(tokens_in=400, tokens_out=900))
    assert estimator.estimate(MESSAGES, 500) == 104 + 500  # capped at the conservative figure
