"""Liveness of the daemon's components and of its own event loop: what `calico-bgp health` answers.

Stage: supervision, across the pipeline. Components report signs of life here; the control socket's
``health`` request and the metrics read them.

Owns: ``Health`` (a registry of components: the time of each one's last sign of life, how long it may be
silent, and a check that says what is wrong with it right now), ``LoopWatchdog`` (a periodic task that
measures how late the event loop wakes it, plus a thread that notices a loop blocked for good) and their
metrics: ``calico_bgp_event_loop_lag_seconds`` (histogram), ``calico_bgp_event_loop_lag_max_seconds``
(the worst lag of the last minute), ``calico_bgp_component_up{component}`` and
``calico_bgp_component_silence_seconds{component}``.

Complicating factors:
- Quiet is not dead. A component that has nothing to say (no route changed, no etcd write) still proves
  it is alive in its own way: the datastore by a probe every few seconds, the kernel watcher by a periodic
  comparison with a dump. Each registers how long it may stay silent given that rhythm; a component silent
  for longer is reported ``stale``. A check callable reports what it knows to be wrong at once (the
  datastore out of sync) without waiting for the silence to grow.
- The ``health`` answer is served by the event loop itself, so a blocked loop cannot answer at all: for
  an external supervisor, a ``health`` request that times out is the sign of a hung daemon. Inside, lag
  can only be measured once the loop runs again, so a thread watches the loop's last tick and logs, with
  the loop thread's stack, when it has not ticked for ``blocked_after`` seconds.
- All time comes from an injected clock; the periodic task sleeps through an injected sleep, so the unit
  tests drive lag and silence without sleeping. Memory is bounded: one entry per component, and the lag
  window is a fixed-length deque.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, Histogram

log = logging.getLogger(__name__)

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    state: str  # "up" | "down" (its check says what is wrong) | "stale" (silent too long) | "starting"
    last_alive: float | None  # clock() of the last sign of life
    silence: float | None  # seconds since then
    detail: str = ""

    def as_json(self) -> dict:
        return {
            "state": self.state,
            "silence_seconds": None if self.silence is None else round(self.silence, 3),
            "detail": self.detail,
        }


@dataclass
class _Component:
    max_silence: float | None
    check: Callable[[], str | None] | None
    registered: float
    last_alive: float | None = None


class Health:
    """Components and their last sign of life. ``beat`` is cheap (a clock read and a store)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, registry: CollectorRegistry | None = None
    ) -> None:
        self._clock = clock
        self._components: dict[str, _Component] = {}
        registry = registry if registry is not None else CollectorRegistry()
        self._m_up = Gauge(
            "calico_bgp_component_up",
            "1 while the component is alive (a recent sign of life and nothing known wrong).",
            ["component"],
            registry=registry,
        )
        self._m_silence = Gauge(
            "calico_bgp_component_silence_seconds",
            "Seconds since the component's last sign of life.",
            ["component"],
            registry=registry,
        )

    def register(
        self, name: str, *, max_silence: float | None = None, check: Callable[[], str | None] | None = None
    ) -> Callable[[], None]:
        """Add a component; returns its heartbeat. ``max_silence``: None = silence alone is no problem
        (only ``check`` can say it is down). Before its first beat a component with a ``max_silence`` is
        ``starting`` for up to that long, then ``stale``."""
        self._components[name] = _Component(max_silence, check, self._clock())
        return lambda: self.beat(name)

    def beat(self, name: str) -> None:
        self._components[name].last_alive = self._clock()

    def component(self, name: str) -> ComponentHealth:
        entry, now = self._components[name], self._clock()
        problem = entry.check() if entry.check is not None else None
        silence = None if entry.last_alive is None else now - entry.last_alive
        quiet_for = now - (entry.last_alive if entry.last_alive is not None else entry.registered)
        too_quiet = entry.max_silence is not None and quiet_for > entry.max_silence
        if problem:
            state, detail = "down", problem
        elif too_quiet:
            state, detail = "stale", f"no sign of life for {quiet_for:.1f}s (at most {entry.max_silence:g}s)"
        elif entry.last_alive is None and entry.max_silence is not None:
            state, detail = "starting", ""  # a beat is expected, its allowance is not used up yet
        else:
            state, detail = "up", ""
        return ComponentHealth(name, state, entry.last_alive, silence, detail)

    def components(self) -> list[ComponentHealth]:
        return [self.component(name) for name in sorted(self._components)]

    def refresh_metrics(self) -> None:
        for item in self.components():
            self._m_up.labels(item.name).set(1 if item.state == "up" else 0)
            if item.silence is not None:
                self._m_silence.labels(item.name).set(item.silence)

    def report(self) -> dict:
        """The ``health`` answer: healthy while no component is down or stale (one still ``starting`` is
        within its allowance)."""
        items = self.components()
        return {
            "healthy": all(item.state in ("up", "starting") for item in items),
            "components": {item.name: item.as_json() for item in items},
        }


class LoopWatchdog:
    """Measures the event loop's lag: a task asks to wake every ``interval`` and records how late it was."""

    def __init__(
        self,
        health: Health,
        *,
        interval: float = 0.5,
        warn_after: float = 0.25,
        blocked_after: float = 5.0,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._health = health
        self._interval = interval
        self._warn_after = warn_after
        self._blocked_after = blocked_after
        self._clock = clock
        self._sleep = sleep
        self._heartbeat = health.register("event-loop", max_silence=blocked_after)
        self._recent: collections.deque[float] = collections.deque(maxlen=max(1, int(window / interval)))
        self._last_warning: float | None = None
        self._suppressed = 0
        self._loop_thread: int | None = None
        self._blocked_logged = False
        self.last_tick: float | None = None
        registry = registry if registry is not None else CollectorRegistry()
        self._m_lag = Histogram(
            "calico_bgp_event_loop_lag_seconds",
            "How late the event loop ran a timer that was due (its lag).",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._m_max = Gauge(
            "calico_bgp_event_loop_lag_max_seconds",
            "The worst event loop lag of the last minute.",
            registry=registry,
        )

    @property
    def lag(self) -> float:
        return self._recent[-1] if self._recent else 0.0

    @property
    def max_lag(self) -> float:
        return max(self._recent, default=0.0)

    async def run(self) -> None:
        self._loop_thread = threading.get_ident()
        self.last_tick = self._clock()
        while True:
            due = self._clock() + self._interval
            await self._sleep(self._interval)
            self.observe(max(0.0, self._clock() - due))

    def observe(self, lag: float) -> None:
        """One tick, ``lag`` seconds late."""
        now = self._clock()
        self.last_tick = now
        self._blocked_logged = False
        self._recent.append(lag)
        self._m_lag.observe(lag)
        self._m_max.set(self.max_lag)
        self._heartbeat()
        self._health.refresh_metrics()
        if lag < self._warn_after:
            return
        # At most one line per 10 s: a loop that lags on every tick must not flood the log as well.
        if self._last_warning is not None and now - self._last_warning < 10.0:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        log.warning("event loop lagged %.3fs (threshold %.3fs)%s", lag, self._warn_after, more)
        self._last_warning, self._suppressed = now, 0

    def check_blocked(self) -> float | None:
        """From outside the loop: seconds since the last tick when that exceeds ``blocked_after``, else None.
        Logs once per stall, with the loop thread's stack."""
        if self.last_tick is None:
            return None
        stalled = self._clock() - self.last_tick
        if stalled < self._blocked_after:
            return None
        if not self._blocked_logged:
            self._blocked_logged = True
            frame = sys._current_frames().get(self._loop_thread) if self._loop_thread is not None else None
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
            log.error("event loop blocked for %.1fs; it is running:\n%s", stalled, stack.rstrip())
        return stalled

    def start_thread(self, period: float = 1.0) -> threading.Event:
        """Run ``check_blocked`` every ``period`` s in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(period):
                self.check_blocked()

        threading.Thread(target=watch, name="loop-watchdog", daemon=True).start()
        return stop
