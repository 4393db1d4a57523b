"""Propagation latency: how long a route change takes to cross the daemon, in both directions.

Stage: observability across the pipeline, pure (no I/O; the clock is injected). Two directions are timed:
- export: a workload route, from the moment the kernel watch read its notification (``routes.monitor``
  stamps each report with the read time of its first notification) to the moment the API commands
  carrying it were written to ExaBGP (``bgp.speaker.Speaker.flush``, after ``send`` returned);
- import: a learned route, from the moment the daemon read ExaBGP's event line (``Speaker.handle_line``)
  to the moment the kernel acknowledged the netlink request that installs or removes it
  (``routes.table.ApplyResult.acked``, after ``apply`` returned).
``bgp.metrics.PropagationCollector`` serves both as Prometheus histograms
(``calico_bgp_propagation_{export,import}_seconds``); ``Propagation.report`` gives p50/p99 over the last
minute for ``calico-bgp status``.

Owns: per direction, the changes read but not yet delivered (``Pending``), the cumulative bucket counts
the histogram is served from (``Buckets``) and a sliding one-minute window of bucket counts
(``LatencyWindow``).

Cost, measured and chosen (a bulk of 100k routes must not pay per route): one ``Histogram.observe`` per
route costs about 0.12 s of CPU per 100k routes here, a tenth of the whole 10k-route budget, so nothing is
stamped or observed per route. Changes are stamped per batch (one clock reading per kernel read, one per
ExaBGP line) and observed per batch: each distinct read time is one observation weighted by the number of
its routes that were delivered, added in bulk to our own bucket counts (O(buckets), not O(routes)). A
batch's routes all get the batch's time, measured to the end of the write or the apply that carried them:
for a large batch this is an upper bound for its first routes. Counting which routes of a batch were
carried is one set intersection per batch.

Complicating factors:
- Bounded memory: at most ``MAX_BATCHES`` distinct read times wait per direction (further ones join the
  newest batch, keeping its older time, so latency is never under-reported), and each batch only holds
  prefixes that changed, which the speaker holds anyway; the window is 60 one-second slots of bucket counts.
- Routes that were read but never carried (no session up, a policy that refuses them, a kernel that
  refuses them) are dropped from the count at the flush that handled them, not timed later: a route sent
  when a session comes up measures the session, not propagation.
- Quantiles come from bucket counts, interpolated within the bucket (as Prometheus' histogram_quantile)
  and clamped to the smallest and largest value seen in the window, so a single sample reads exactly.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Set
from dataclasses import dataclass

# Upper bounds (seconds) of the histogram's buckets: 0.1 ms to 10 s; one more bucket holds what is slower.
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
WINDOW_SECONDS = 60
MAX_BATCHES = 64  # distinct read times waiting per direction


def bucket_of(seconds: float) -> int:
    """The index of the bucket holding ``seconds`` (``le`` semantics); ``len(BUCKETS)`` is the overflow."""
    return bisect_left(BUCKETS, seconds)


def bucket_bounds(index: int, largest: float) -> tuple[float, float]:
    """The (exclusive lower, inclusive upper) bound of bucket ``index``; the overflow bucket ends at
    ``largest``, the largest value it holds."""
    lower = BUCKETS[index - 1] if index > 0 else 0.0
    upper = BUCKETS[index] if index < len(BUCKETS) else max(largest, BUCKETS[-1])
    return lower, upper


def quantile(counts: list[int], q: float, smallest: float, largest: float) -> float | None:
    """The ``q``-quantile (nearest rank) of samples given as bucket counts, interpolated within its bucket
    and clamped to [``smallest``, ``largest``]; None without samples."""
    total = sum(counts)
    if total == 0:
        return None
    rank = min(total, max(1, math.ceil(q * total - 1e-9)))
    before = 0
    for index, count in enumerate(counts):
        if count and before + count >= rank:
            lower, upper = bucket_bounds(index, largest)
            estimate = lower + (upper - lower) * (rank - before) / count
            return min(max(estimate, smallest), largest)
        before += count
    raise AssertionError("unreachable: rank is at most the total")


@dataclass(frozen=True)
class Summary:
    count: int
    p50: float | None  # seconds
    p99: float | None

    def as_json(self) -> dict:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {"p50_ms": ms(self.p50), "p99_ms": ms(self.p99), "count": self.count}


class Buckets:
    """Cumulative bucket counts, sum and count since the start: what a Prometheus histogram exposes."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def add(self, seconds: float, weight: int = 1) -> None:
        self.counts[bucket_of(seconds)] += weight
        self.sum += seconds * weight
        self.count += weight


class LatencyWindow:
    """Samples of the last ``seconds`` seconds as bucket counts per one-second slot: bounded memory
    (``seconds`` x the buckets) whatever the rate."""

    def __init__(self, clock: Callable[[], float], seconds: int = WINDOW_SECONDS) -> None:
        self._clock = clock
        self._size = seconds
        self._second = [-1] * seconds  # the second each slot holds; -1: never used
        self._counts = [[0] * (len(BUCKETS) + 1) for _ in range(seconds)]
        self._low = [math.inf] * seconds
        self._high = [0.0] * seconds

    def observe(self, seconds: float, weight: int = 1) -> None:
        if weight <= 0:
            return
        seconds = max(0.0, seconds)
        second = math.floor(self._clock())
        slot = second % self._size
        if self._second[slot] != second:
            self._second[slot] = second
            self._counts[slot] = [0] * (len(BUCKETS) + 1)
            self._low[slot], self._high[slot] = math.inf, 0.0
        self._counts[slot][bucket_of(seconds)] += weight
        self._low[slot] = min(self._low[slot], seconds)
        self._high[slot] = max(self._high[slot], seconds)

    def summary(self) -> Summary:
        now = math.floor(self._clock())
        counts = [0] * (len(BUCKETS) + 1)
        low, high = math.inf, 0.0
        for slot in range(self._size):
            if now - self._size < self._second[slot] <= now:
                counts = [a + b for a, b in zip(counts, self._counts[slot], strict=True)]
                low, high = min(low, self._low[slot]), max(high, self._high[slot])
        return Summary(sum(counts), quantile(counts, 0.5, low, high), quantile(counts, 0.99, low, high))


class Batch:
    """Prefixes whose changes were read at one moment (the oldest read, if several joined)."""

    __slots__ = ("prefixes", "read_at")

    def __init__(self, read_at: float, prefixes: set[str]) -> None:
        self.read_at = read_at
        self.prefixes = prefixes


class Pending:
    """Changes read and not yet delivered, one batch per distinct read time, at most ``limit`` batches."""

    def __init__(self, limit: int = MAX_BATCHES) -> None:
        self._limit = limit
        self._batches: list[Batch] = []

    def add(self, read_at: float, prefixes: Iterable[str]) -> None:
        batches = self._batches
        if batches and (batches[-1].read_at == read_at or len(batches) >= self._limit):
            batches[-1].prefixes.update(prefixes)  # its read time is the older one: never under-reports
        else:
            batches.append(Batch(read_at, set(prefixes)))

    def take(self) -> list[Batch]:
        batches, self._batches = self._batches, []
        return batches

    def __len__(self) -> int:
        return len(self._batches)


def tracked(batches: list[Batch]) -> Collection[str]:
    """Every prefix of ``batches``: what the carrier is asked to report on."""
    if len(batches) == 1:
        return batches[0].prefixes
    return set().union(*(b.prefixes for b in batches))


class Direction:
    """One direction's pending batches, cumulative buckets and window."""

    def __init__(self, clock: Callable[[], float], limit: int = MAX_BATCHES) -> None:
        self._clock = clock
        self.pending = Pending(limit)
        self.buckets = Buckets()
        self.window = LatencyWindow(clock)

    def read(self, read_at: float, prefixes: Collection[str]) -> None:
        if prefixes:
            self.pending.add(read_at, prefixes)

    def take(self) -> list[Batch]:
        return self.pending.take()

    def delivered(self, batches: list[Batch], carried: Set[str]) -> int:
        """``carried`` (of the prefixes of ``batches``) went out now: one observation per batch, weighted by
        its routes carried. Returns the routes observed."""
        if not batches or not carried:
            return 0
        now = self._clock()
        observed = 0
        for batch in batches:
            weight = len(batch.prefixes.intersection(carried))  # walks the smaller of two sets
            if weight:
                seconds = max(0.0, now - batch.read_at)
                self.buckets.add(seconds, weight)
                self.window.observe(seconds, weight)
                observed += weight
        return observed


class Propagation:
    """Both directions; the speaker feeds them, status and the metrics collector read them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int = MAX_BATCHES) -> None:
        self.clock = clock
        self.export = Direction(clock, limit)
        self.imported = Direction(clock, limit)

    def report(self) -> dict:
        """For ``calico-bgp status -o json``: p50/p99 (ms) and the routes timed over the last minute."""
        return {"export": self.export.window.summary().as_json(),
                "import": self.imported.window.summary().as_json()}  # fmt: skip


def describe(report: dict) -> str:
    """One line of the text status, from ``Propagation.report``'s JSON."""
    parts = []
    for key in ("export", "import"):
        side = report.get(key) or {}
        if side.get("count"):
            p50, p99, count = side["p50_ms"], side["p99_ms"], side["count"]
            parts.append(f"{key} p50 {p50:g} ms, p99 {p99:g} ms ({count} routes)")
        else:
            parts.append(f"{key}: no routes")
    return "Propagation over the last minute: " + "; ".join(parts)
