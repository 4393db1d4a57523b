"""etcd v3: the syncer that keeps confgen's view of the datastore current.

Stage: the real datastore. ``EtcdSyncer.run`` lists Calico's keys, delivers a ``Snapshot``, then applies
watch events and delivers a new snapshot per batch. It reads through ``EtcdClient`` (etcd_client.py), a
fresh one per attempt.

Owns: the syncer's decoded key/value cache, its liveness probe and the ``calico_bgp_datastore_*`` metrics
(``_up``, ``_in_sync``, ``_reconnects``, ``_errors{reason}``, ...).

Complicating factors:
- One consistent starting point: all watched prefixes are read in a single read-only transaction, so
  the first snapshot is one revision, and every watch starts at that revision + 1 (no gap, no overlap).
- aetcd yields watch events one by one; the batch boundary is recovered by draining whatever is already
  queued before delivering (one etcd watch response lands in the queue at once). The confgen loop
  debounces on top of that.
- Failures keep the last good snapshot: on a disconnect, a compaction, a timeout or any client error the
  syncer logs, marks itself out of sync, backs off (0.25 s doubling to 5 s, each wait +-20 % at random
  so that the nodes of a cluster do not all reconnect in the same instant after an etcd outage) and does a
  *full relist* on a fresh client. Never delivering an empty snapshot matters: an empty view would mean
  "no peers, no pools" and tear down every session of a healthy node during a datastore blip.
- A fresh client per attempt sidesteps gRPC's own channel reconnect backoff (up to minutes), and the
  backoff only resets after a connection stayed healthy for a while, so a datastore that accepts the
  list but fails every watch is not hammered every 0.25 s.
- A silent etcd (SIGSTOPped, hung, or behind a path that drops packets without a RST) never makes a
  watch fail by itself. The guard is a liveness probe: a count-only linearizable read every 5 s that must
  answer within 5 s, on the same connection as the watches; the first miss ends the sync. Detection
  bound: 10 s after the last answer. gRPC keepalive is on as well, but is no guard on its own here: with
  the probe off, a SIGSTOPped etcd went unnoticed for 40 s (the watch stream never failed). aetcd drops
  watch progress notifications before they reach us, so those cannot serve either.
  Every sign of life (a list, a watch batch, a probe answer) feeds ``heartbeat`` for the daemon's
  health report.
- A connect failure carries the label of the error metric (``tls``, ``auth``, ``tls_config``: see
  etcd_client.py) and is retried like any other.
- Ending a sync cancels its watch tasks, and aetcd's watch cleanup sometimes never lets a cancelled task
  finish (seen against a real etcd: roughly one run in three of the TLS recovery test). Waiting for them
  is bounded (``stop_timeout``); one that overstays is left behind, logged, and the resync goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from calico_bgp.backoff import Backoff, Retries
from confgen.datastore.base import (
    CompactedError,
    DatastoreError,
    OnSnapshot,
    build_snapshot,
    decode_value,
    watched_prefixes,
)
from confgen.datastore.etcd_client import WatchEvent

log = logging.getLogger(__name__)

# A silent etcd is noticed within PROBE_INTERVAL + PROBE_TIMEOUT (10 s) of its last answer, for the price
# of one count-only read per node every 5 s.
PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 5.0
# Watch tasks left behind by a stop that timed out, kept referenced until they end (see EtcdSyncer._stop).
_MAX_ABANDONED = 64


class DatastoreUnresponsive(DatastoreError):
    """etcd accepted the connection but did not answer the liveness probe in time."""


_REASONS: dict[type, str] = {CompactedError: "compacted", DatastoreUnresponsive: "unresponsive"}


class EtcdSyncer:
    """Keeps a snapshot of one node's Calico keys current; see the module docstring for the rules."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        node: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff_initial: float = 0.25,
        backoff_max: float = 5.0,
        backoff_jitter: float = 0.2,
        random_source: Callable[[], float] = random.random,
        healthy_after: float = 10.0,
        stop_timeout: float = 2.0,
        probe_interval: float | None = PROBE_INTERVAL,
        probe_timeout: float = PROBE_TIMEOUT,
        heartbeat: Callable[[], object] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._client_factory = client_factory  # () -> an unconnected EtcdClient (or a test double)
        self.node = node
        self._clock = clock
        self._sleep = sleep
        self._retries = Retries(
            Backoff(first=backoff_initial, cap=backoff_max, jitter=backoff_jitter), random=random_source
        )
        self._healthy_after = healthy_after
        self._stop_timeout = stop_timeout  # real seconds a cancelled watch task may take to end
        self._abandoned: set[asyncio.Task[None]] = set()  # tasks that did not end in time, until they do
        self._probe_interval = probe_interval  # None: no probe (the keepalive alone guards the watch)
        self._probe_timeout = probe_timeout
        self._heartbeat = heartbeat  # called on every sign of life: a list, a watch batch, a probe answer
        self.prefixes = watched_prefixes(node)
        self.in_sync = False
        self.revision = 0
        self.last_alive: float | None = None  # clock() of the last sign of life
        self._synced_before = False
        self._cache: dict[str, Any] = {}
        self.last_error: str | None = None  # why the last attempt failed, until a sync succeeds

        registry = registry if registry is not None else CollectorRegistry()
        self._m_in_sync = Gauge(
            "calico_bgp_datastore_in_sync",
            "1 while the datastore view is complete and being watched.",
            registry=registry,
        )
        self._m_resyncs = Counter(
            "calico_bgp_datastore_resyncs", "Full relists of the watched prefixes.", registry=registry
        )
        self._m_errors = Counter(
            "calico_bgp_datastore_errors",
            "Datastore failures that forced a reconnect.",
            ["reason"],
            registry=registry,
        )
        self._m_events = Counter(
            "calico_bgp_datastore_watch_events", "Watch events applied to the local view.", registry=registry
        )
        self._m_up = Gauge(
            "calico_bgp_datastore_up",
            "1 while etcd answers: connected, and the last liveness probe answered in time.",
            registry=registry,
        )
        self._m_reconnects = Counter(
            "calico_bgp_datastore_reconnects",
            "Times the view was listed again on a fresh connection after the previous one was lost.",
            registry=registry,
        )

    @property
    def client_factory(self) -> Callable[[], Any]:
        """What builds this syncer's connections: another etcd user of the daemon (the node-status
        writer) takes the same one, and so the same endpoints and TLS settings."""
        return self._client_factory

    async def run(self, on_snapshot: OnSnapshot) -> None:
        self._retries.reset()
        while True:
            started = self._clock()
            client = self._client_factory()
            try:
                await self._sync(client, on_snapshot)
            except (TimeoutError, DatastoreError, OSError) as exc:
                reason = getattr(exc, "reason", None) or _REASONS.get(type(exc), "error")
                self.last_error = str(exc)
                failure: BaseException = exc
                lost = f"etcd sync lost ({exc})"
            except Exception as exc:  # a bug or an unexpected client failure: same recovery, louder
                reason = "unexpected"
                self.last_error = "unexpected failure (see the log)"
                failure, lost = exc, "etcd sync failed unexpectedly"
            finally:
                self._set_in_sync(False)
                self._m_up.set(0)
                await client.close()  # bounded inside the client: a hung server cannot hold us here
            self._m_errors.labels(reason).inc()
            if self._clock() - started >= self._healthy_after:
                self._retries.reset()
            delay = self._retries.next_delay()
            # What we did not foresee is an error with its traceback; a foreseen failure is a warning.
            unexpected = reason == "unexpected"
            level, trace = (logging.ERROR, failure) if unexpected else (logging.WARNING, None)
            log.log(level, "%s; last snapshot kept, resync in %.2fs", lost, delay, exc_info=trace)
            await self._sleep(delay)

    async def _sync(self, client: Any, on_snapshot: OnSnapshot) -> None:
        await client.connect()
        self._m_up.set(1)
        revision, values = await client.get_prefixes(self.prefixes)
        self._cache = {key: decode_value(key, raw) for key, raw in values.items()}
        self.revision = revision
        self._m_resyncs.inc()
        if self._synced_before:
            self._m_reconnects.inc()
        self._synced_before = True
        self._set_in_sync(True)
        self.last_error = None
        self._alive()
        on_snapshot(build_snapshot(self.revision, self._cache, self.node))

        # Unbounded by design: one etcd watch response lands at once and is drained into one batch right
        # after; bounding it would stall the pumps and, through them, aetcd's shared watch stream.
        queue: asyncio.Queue[WatchEvent | BaseException] = asyncio.Queue()
        pumps = [
            asyncio.create_task(self._pump(client, prefix, revision + 1, queue), name=f"etcd-watch {prefix}")
            for prefix in self.prefixes
        ]
        if self._probe_interval is not None:
            pumps.append(asyncio.create_task(self._probe(client, queue), name="etcd-probe"))
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                for item in batch:
                    if isinstance(item, BaseException):
                        raise item
                    self._apply(item)
                self._alive()
                on_snapshot(build_snapshot(self.revision, self._cache, self.node))
        finally:
            for pump in pumps:
                pump.cancel()
            await self._stop(pumps)

    async def _stop(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for the cancelled pumps, at most ``stop_timeout`` (real time).

        aetcd's watch cleanup can hold a cancelled task indefinitely (it waits on its watcher's lock,
        which the task handling a dying watch stream may never release); an unbounded wait here once
        kept a syncer from ever reconnecting. A task still running after the bound is left to finish
        on its own (the client is closed next, which ends what it can) and we go on with a fresh
        connection."""
        if not tasks:
            return
        done, stuck = await asyncio.wait(tasks, timeout=self._stop_timeout)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: the pumps report their failures through the queue
        if stuck:
            log.warning(
                "%d etcd watch task(s) did not stop within %gs of being cancelled; left behind",
                len(stuck), self._stop_timeout,
            )  # fmt: skip
            for task in stuck:
                if len(self._abandoned) < _MAX_ABANDONED:  # referenced so they are not collected mid-run
                    self._abandoned.add(task)
                    task.add_done_callback(self._abandoned.discard)

    async def _probe(self, client: Any, queue: asyncio.Queue[Any]) -> None:
        """Every ``probe_interval``, a read that must answer within ``probe_timeout``.

        A watch on a connection that silently drops packets (no RST), or on a hung etcd, just stays
        quiet; this is what notices. The first failure ends the sync: relisting on a fresh connection is
        the only way back to a view known to be current. Bound: a silent etcd is noticed at most
        ``probe_interval + probe_timeout`` after its last answer.
        """
        assert self._probe_interval is not None
        try:
            while True:
                await self._sleep(self._probe_interval)
                await self._deadline(client.probe(), self._probe_timeout, "the liveness probe")
                self._alive()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)

    async def _deadline(self, awaitable: Awaitable[Any], seconds: float, what: str) -> Any:
        """``awaitable``'s result, or ``DatastoreUnresponsive`` after ``seconds`` of the injected clock.

        Timed with the injected sleep rather than ``asyncio.wait_for`` so the unit tests can run a hung
        etcd in virtual time; the gRPC deadline inside the client is the real-time backstop."""
        work = asyncio.ensure_future(awaitable)
        timer = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        raise DatastoreUnresponsive(f"etcd did not answer {what} within {seconds:g}s")

    def _alive(self) -> None:
        self.last_alive = self._clock()
        if self._heartbeat is not None:
            self._heartbeat()

    @staticmethod
    async def _pump(client: Any, prefix: str, start: int, queue: asyncio.Queue[Any]) -> None:
        try:
            async for event in client.watch_prefix(prefix, start):
                queue.put_nowait(event)
            queue.put_nowait(DatastoreError(f"watch on {prefix} ended"))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)

    def _apply(self, event: WatchEvent) -> None:
        kind, key, value, mod_revision = event
        if kind == "put":
            self._cache[key] = decode_value(key, value)
        else:
            self._cache.pop(key, None)
        self.revision = max(self.revision, mod_revision)
        self._m_events.inc()

    def _set_in_sync(self, value: bool) -> None:
        self.in_sync = value
        self._m_in_sync.set(1 if value else 0)
