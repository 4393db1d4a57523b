"""The pure parts of propagation timing (``bgp.latency``): buckets, the one-minute window and its quantiles,
the bounded pending batches, and the per-batch weighting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from speaker_rig import Clock

from bgp.latency import (
    BUCKETS,
    Direction,
    LatencyWindow,
    Pending,
    Propagation,
    bucket_bounds,
    bucket_of,
    describe,
    quantile,
)


@pytest.mark.parametrize(
    ("seconds", "index"),
    [
        (0.0, 0),
        (0.0001, 0),  # a bound belongs to the bucket it ends (Prometheus' "le")
        (0.00010001, 1),
        (0.001, 3),
        (0.0011, 4),
        (10.0, len(BUCKETS) - 1),
        (10.5, len(BUCKETS)),  # overflow
    ],
)
def test_bucket_of(seconds, index):
    assert bucket_of(seconds) == index
    lower, upper = bucket_bounds(index, largest=seconds)
    assert lower < seconds <= upper or (index == 0 and seconds == 0.0)


@pytest.mark.parametrize(
    ("samples", "p50", "p99"),
    [
        ([0.0012], 0.0012, 0.0012),  # one sample reads exactly: clamped to the smallest and largest seen
        ([0.002] * 99 + [3.0], 0.002, 0.002),  # 99 of 100 are fast: p99 is the 99th
        ([0.002] * 98 + [3.0, 3.0], 0.002, 3.0),
        ([0.0003, 0.0004, 0.0045], 0.0004, 0.0045),
        ([20.0, 30.0], 20.0, 30.0),  # over the last bound: the overflow bucket ends at the largest
    ],
)
def test_window_quantiles_of_known_samples(samples, p50, p99):
    clock = Clock(5000.0)
    window = LatencyWindow(clock)
    for sample in samples:
        window.observe(sample)
    summary = window.summary()
    assert summary.count == len(samples)
    assert summary.p50 == pytest.approx(p50, rel=0.3)
    assert summary.p99 == pytest.approx(p99, rel=0.3)
    assert summary.as_json()["count"] == len(samples)


def test_interpolation_within_a_bucket():
    # Ten samples spread over (1 ms, 2.5 ms]: the median is interpolated halfway through the bucket.
    window = LatencyWindow(Clock(5000.0))
    for n in range(10):
        window.observe(0.001 + 0.00015 * (n + 1))
    assert window.summary().p50 == pytest.approx(0.001 + 0.0015 * 0.5)


@pytest.mark.parametrize(("age", "counted"), [(0.0, 3), (30.0, 3), (59.0, 3), (60.0, 0), (600.0, 0)])
def test_window_forgets_samples_older_than_a_minute(age, counted):
    clock = Clock(5000.0)
    window = LatencyWindow(clock)
    window.observe(0.01, 3)
    clock.now += age
    assert window.summary().count == counted


def test_window_slots_are_reused_not_grown():
    clock = Clock(5000.0)
    window = LatencyWindow(clock)
    for second in range(1000):  # many minutes of samples: only the last minute's stay
        clock.now = 5000.0 + second
        window.observe(0.001 if second < 940 else 1.0)
    summary = window.summary()
    assert summary.count == 60
    assert summary.p50 == 1.0
    assert len(window._counts) == 60


def test_empty_window():
    summary = LatencyWindow(Clock(5000.0)).summary()
    assert (summary.count, summary.p50, summary.p99) == (0, None, None)
    assert summary.as_json() == {"p50_ms": None, "p99_ms": None, "count": 0}


def test_zero_or_negative_weight_and_negative_time():
    window = LatencyWindow(Clock(5000.0))
    window.observe(0.5, 0)
    assert window.summary().count == 0
    window.observe(-1.0)  # a clock step backwards is no negative latency
    assert window.summary().p50 == 0.0


samples_strategy = st.lists(
    st.tuples(st.floats(min_value=0.00005, max_value=20.0), st.integers(min_value=1, max_value=50)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(samples=samples_strategy, q=st.sampled_from([0.5, 0.9, 0.99]))
def test_quantile_lies_in_the_bucket_of_the_true_quantile(samples, q):
    """The estimate is within the bounds of the bucket holding the true (nearest-rank) quantile, and within
    the smallest and largest sample."""
    window = LatencyWindow(Clock(5000.0))
    values: list[float] = []
    for value, weight in samples:
        window.observe(value, weight)
        values.extend([value] * weight)
    values.sort()
    true = values[max(1, math.ceil(q * len(values) - 1e-9)) - 1]
    counts = [0] * (len(BUCKETS) + 1)
    for value in values:
        counts[bucket_of(value)] += 1
    estimate = quantile(counts, q, values[0], values[-1])
    assert estimate is not None
    lower, upper = bucket_bounds(bucket_of(true), values[-1])
    assert lower <= estimate <= upper
    assert values[0] <= estimate <= values[-1]
    summary = window.summary()
    assert summary.count == len(values)
    assert summary.p50 == quantile(counts, 0.5, values[0], values[-1])
    assert summary.p99 == quantile(counts, 0.99, values[0], values[-1])
    assert summary.p50 is not None and summary.p99 is not None
    assert summary.p50 <= summary.p99


@pytest.mark.parametrize(
    ("reads", "limit", "expected"),
    [
        ([(1.0, {"a"})], 4, [(1.0, {"a"})]),
        ([(1.0, {"a"}), (1.0, {"b"})], 4, [(1.0, {"a", "b"})]),  # one line's events share a read time
        ([(1.0, {"a"}), (2.0, {"b"})], 4, [(1.0, {"a"}), (2.0, {"b"})]),
        # Over the limit, later reads join the newest batch and keep its older time.
        ([(1.0, {"a"}), (2.0, {"b"}), (3.0, {"c"})], 2, [(1.0, {"a"}), (2.0, {"b", "c"})]),
    ],
)
def test_pending_batches_are_bounded(reads, limit, expected):
    pending = Pending(limit)
    for read_at, prefixes in reads:
        pending.add(read_at, prefixes)
    assert len(pending) <= limit
    assert [(b.read_at, b.prefixes) for b in pending.take()] == expected
    assert len(pending) == 0


def test_delivery_observes_per_batch_weighted_by_the_routes_carried():
    clock = Clock(100.0)
    direction = Direction(clock)
    direction.read(100.0, ["a", "b", "c"])
    direction.read(100.5, ["d"])
    direction.read(100.7, [])  # nothing changed: no batch
    batches = direction.take()
    assert len(batches) == 2
    clock.now = 101.0
    # "c" was not carried (say, no peer takes it); "x" was carried but never read with a time.
    assert direction.delivered(batches, {"a", "b", "d", "x"}) == 3
    assert direction.buckets.count == 3
    assert direction.buckets.sum == pytest.approx(2 * 1.0 + 0.5)
    assert direction.buckets.counts[bucket_of(1.0)] == 2
    assert direction.buckets.counts[bucket_of(0.5)] == 1
    assert direction.window.summary().count == 3


def test_report_and_text_line():
    clock = Clock(100.0)
    propagation = Propagation(clock)
    propagation.export.read(99.998, ["p"])
    propagation.export.delivered(propagation.export.take(), {"p"})
    report = propagation.report()
    assert report["export"] == {"p50_ms": 2.0, "p99_ms": 2.0, "count": 1}
    assert report["import"] == {"p50_ms": None, "p99_ms": None, "count": 0}
    line = describe(report)
    assert "export p50 2 ms, p99 2 ms (1 routes)" in line
    assert "import: no routes" in line
