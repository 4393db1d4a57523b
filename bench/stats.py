"""Figures from samples: medians, spreads, percentiles, ratios, and the targets of docs/performance.md. Pure.

Stage: between the workloads (which produce raw samples) and ``bench.report`` (which prints and saves).

Owns: the ``Row`` model (one metric, both speakers' raw samples, an optional target) and how a row is
summarised and judged.

Complicating factors:
- A run can fail part-way (a timeout, a daemon that died): a row then has fewer or no samples, and
  every function here accepts that and says "n/a" instead of inventing a figure.
- Ratios are always ours / BIRD's for "lower is better" metrics (time, memory, CPU), so > 1 means we are
  slower or heavier; install rate is "higher is better" and its target is a share of ``ip -batch``.
- Percentiles are ``statistics.quantiles(..., method="inclusive")``: linear interpolation between closest
  ranks (numpy's default), stated so that p95 of 50 samples is reproducible by hand. Whole percentiles
  only, which is all a report quotes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int


def summarize(samples: Sequence[float]) -> Summary | None:
    values = [float(v) for v in samples if v is not None and math.isfinite(v)]
    if not values:
        return None
    return Summary(statistics.median(values), min(values), max(values), len(values))


def percentile(samples: Sequence[float], q: int) -> float | None:
    """The q-th percentile (a whole number 0..100), linear interpolation between closest ranks."""
    if q != int(q) or not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not a whole number in 0..100")
    values = [float(v) for v in samples if v is not None and math.isfinite(v)]
    if not values:
        return None
    # quantiles() cuts between samples: the ends and a lone sample are answered here.
    if q == 0:
        return min(values)
    if q == 100:
        return max(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@dataclass(frozen=True)
class Target:
    """What docs/performance.md#targets asks of one metric: a ceiling on ours/BIRD (``max_ratio``), an
    absolute ceiling on our median (``max_value``), or a floor on our share of a reference (``min_share``,
    with the reference's samples in the row's ``reference``)."""

    text: str
    max_ratio: float | None = None
    max_value: float | None = None
    min_share: float | None = None


@dataclass
class Row:
    section: str  # "a".."e", as in docs/performance.md#targets
    metric: str
    unit: str
    ours: list[float] = field(default_factory=list)
    bird: list[float] | None = None  # None: BIRD not measured for this metric
    reference: list[float] | None = None  # e.g. ip -batch's rate, for a min_share target
    target: Target | None = None
    note: str = ""
    failures: int = 0  # runs that produced no sample (timed out, did not converge): a target is then missed
    key: str = ""  # the headline metric this row counts towards (bench.targets), "" for none

    def ratio(self) -> float | None:
        ours, bird = summarize(self.ours), summarize(self.bird or [])
        if ours is None or bird is None or bird.median == 0:
            return None
        return ours.median / bird.median

    def share(self) -> float | None:
        ours, ref = summarize(self.ours), summarize(self.reference or [])
        if ours is None or ref is None or ref.median == 0:
            return None
        return ours.median / ref.median

    def met(self) -> bool | None:
        """Whether the target holds for the medians; None when there is no target or no figure."""
        t = self.target
        if t is None:
            return None
        if self.failures:
            return False
        ours = summarize(self.ours)
        if t.max_ratio is not None:
            ratio = self.ratio()
            return None if ratio is None else ratio <= t.max_ratio
        if t.max_value is not None:
            return None if ours is None else ours.median <= t.max_value
        if t.min_share is not None:
            share = self.share()
            return None if share is None else share >= t.min_share
        return None


def fmt_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_summary(samples: Sequence[float] | None) -> str:
    s = summarize(samples or [])
    if s is None:
        return "n/a" if samples is not None else "—"
    if s.n == 1 or s.low == s.high:
        return fmt_value(s.median) + (f" (n={s.n})" if s.n > 1 else "")
    return f"{fmt_value(s.median)} ({fmt_value(s.low)}–{fmt_value(s.high)})"
