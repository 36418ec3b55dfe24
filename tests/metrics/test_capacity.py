"""The highest rate of a sweep that meets a latency bound."""

import pytest

from core.metrics import highest_rate_within


def test_interpolates_between_the_last_rate_that_meets_the_bound_and_the_first_that_does_not():
    assert highest_rate_within([1, 2, 3], [2, 4, 10], 7) == pytest.approx((2.5, True))


def test_unsorted_sweeps_are_taken_in_rate_order():
    assert highest_rate_within([3, 1, 2], [10, 2, 4], 7) == pytest.approx((2.5, True))


def test_every_rate_meets_it_or_none_does():
    assert highest_rate_within([1, 2], [1, 2], 5) == (2.0, False)  # a lower bound: not saturated
    assert highest_rate_within([1, 2], [6, 9], 5) == (0.0, True)


def test_mismatched_or_empty_sweeps_are_rejected():
    with pytest.raises(ValueError, match="as many latencies"):
        highest_rate_within([1, 2], [1], 5)
    with pytest.raises(ValueError):
        highest_rate_within([], [], 5)
