"""Retry pacing (calico_bgp.backoff): the delay sequence, its cap, the jitter band, and the failure count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calico_bgp.backoff import Backoff, Retries


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Backoff(first=0.25, cap=5.0), [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]),  # the etcd reconnects
        (Backoff(first=1.0, cap=30.0), [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),  # ExaBGP restarts
        (Backoff(first=1.0, cap=1.0), [1.0, 1.0, 1.0]),  # a fixed wait
        (Backoff(first=0.1, cap=1.0, factor=3.0), [0.1, 0.1 * 3, 0.1 * 9, 1.0]),
    ],
)
def test_delays_grow_by_the_factor_up_to_the_cap(policy, expected):
    assert [policy.base(n) for n in range(1, len(expected) + 1)] == pytest.approx(expected)
    retries = Retries(policy)
    assert [retries.next_delay() for _ in expected] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, 0.8), (0.25, 0.9), (0.5, 1.0), (0.75, 1.1), (1.0, 1.2)],
)
def test_jitter_spreads_the_delay_over_its_band(draw, expected):
    policy = Backoff(first=1.0, cap=8.0, jitter=0.2)
    assert policy.delay(1, draw) == pytest.approx(expected)
    assert policy.delay(4, draw) == pytest.approx(8.0 * expected)  # the cap is jittered too


@given(
    first=st.floats(0.001, 100.0),
    growth=st.floats(1.0, 1000.0),
    factor=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 0.99),
    draws=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=80),
)
def test_every_delay_stays_in_its_band_and_never_shrinks_before_jitter(first, growth, factor, jitter, draws):
    policy = Backoff(first=first, cap=first * growth, factor=factor, jitter=jitter)
    draw = iter(draws)
    retries = Retries(policy, random=lambda: next(draw))
    previous = 0.0
    for n in range(1, len(draws) + 1):
        base = policy.base(n)
        assert previous <= base <= policy.cap
        assert base * (1 - jitter) <= retries.next_delay() <= base * (1 + jitter)
        previous = base


def test_a_loop_failing_for_days_is_still_at_the_cap():
    assert Backoff(first=0.25, cap=5.0).base(10**6) == 5.0


def test_reset_starts_again_from_the_first_delay():
    retries = Retries(Backoff(first=0.25, cap=5.0))
    for _ in range(5):
        retries.next_delay()
    assert retries.failures == 5
    retries.reset()
    assert retries.next_delay() == 0.25


def test_without_jitter_the_random_source_is_not_drawn():
    def never() -> float:
        raise AssertionError("drawn")

    assert Retries(Backoff(first=1.0, cap=2.0), random=never).next_delay() == 1.0


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"first": 0.0, "cap": 1.0}, "first delay 0.0 must be positive"),
        ({"first": 2.0, "cap": 1.0}, "cap 1.0 is below its first delay 2.0"),
        ({"first": 1.0, "cap": 2.0, "factor": 0.5}, "factor 0.5 must be at least 1"),
        ({"first": 1.0, "cap": 2.0, "jitter": 1.0}, "jitter 1.0 must be in"),
        ({"first": float("nan"), "cap": 2.0}, "first delay nan must be positive"),
    ],
)
def test_a_policy_that_cannot_work_is_refused_naming_the_field(kwargs, problem):
    with pytest.raises(ValueError, match=problem.replace("[", r"\[")):
        Backoff(**kwargs)


def test_failure_counts_start_at_one():
    with pytest.raises(ValueError, match="count from 1"):
        Backoff(first=1.0, cap=2.0).base(0)
