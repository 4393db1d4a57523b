"""Retry pacing: how long to wait after the n-th failure in a row, with optional jitter. Pure.

Stage: none; the base layer every stage's retry loop uses (the etcd syncer's reconnects, the config loop's
render and reload retries, the ExaBGP supervisor's restarts, the kernel route table's per-destination
retries). It imports nothing from the project.

Owns: ``Backoff``, the policy (first delay, multiplier, cap, jitter) as a value, and ``Retries``, the count
of consecutive failures one loop keeps, with the random source it draws jitter from.

Design and complicating factors:
- The delay after failure n (1, 2, ...) is ``first * factor**(n - 1)`` capped at ``cap``, computed without
  raising a float to a large power, so a loop that has failed for days neither overflows nor drifts.
- Jitter spreads the delay uniformly over ``[1 - jitter, 1 + jitter]`` of that value (``jitter=0.2``:
  +-20 %). It matters where many nodes retry against one server at once: after an etcd outage every node's
  first reconnect would otherwise land in the same instant, and every one after it too. A loop whose retries
  reach only this node (the kernel, its own ExaBGP) keeps ``jitter=0``: nothing to spread, and its waits
  stay exact. With jitter the capped delay may exceed ``cap`` by the jitter fraction; the cap bounds the
  base value, so the mean wait at the cap is still ``cap``.
- The random source is injected (a callable returning a float in ``[0, 1)``, ``random.random`` by default)
  so tests fix the draw instead of the outcome.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays that start at ``first`` seconds and grow by ``factor`` per failure up to ``cap``."""

    first: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0  # fraction of the delay: each wait is drawn from [1 - jitter, 1 + jitter] times it

    def __post_init__(self) -> None:
        if not self.first > 0:
            raise ValueError(f"backoff first delay {self.first!r} must be positive")
        if not self.cap >= self.first:
            raise ValueError(f"backoff cap {self.cap!r} is below its first delay {self.first!r}")
        if not self.factor >= 1:
            raise ValueError(f"backoff factor {self.factor!r} must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter {self.jitter!r} must be in [0, 1)")

    def base(self, failures: int) -> float:
        """The delay after ``failures`` failures in a row (1 or more), before jitter."""
        if failures < 1:
            raise ValueError(f"backoff after {failures} failures: count from 1")
        delay = self.first
        for _ in range(failures - 1):
            if delay >= self.cap:
                break
            delay *= self.factor
        return min(delay, self.cap)

    def delay(self, failures: int, draw: float) -> float:
        """``base(failures)`` spread by the jitter; ``draw`` in [0, 1) picks the point (0.5: no change)."""
        if not 0 <= draw <= 1:
            raise ValueError(f"backoff draw {draw!r} outside [0, 1]")
        return self.base(failures) * (1 + self.jitter * (2 * draw - 1))


class Retries:
    """The consecutive failures of one retry loop: ``next_delay()`` after each, ``reset()`` after success."""

    def __init__(self, policy: Backoff, *, random: Callable[[], float] = _random.random) -> None:
        self.policy = policy
        self._random = random
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        self.failures += 1
        if self.policy.jitter == 0:
            return self.policy.base(self.failures)
        return self.policy.delay(self.failures, self._random())

    def reset(self) -> None:
        self.failures = 0
