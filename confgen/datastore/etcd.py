"""etcd v3: a small client (the only aetcd user) and the syncer that keeps confgen's view current.

Stage: the real datastore. ``EtcdSyncer.run`` lists Calico's keys, delivers a ``Snapshot``, then applies
watch events and delivers a new snapshot per batch; ``EtcdClient`` is also what the labs and the resource
CLI (``calico-bgp apply/get/delete``) use to read and write resources.

Owns: the etcd connection(s), the syncer's decoded key/value cache, its liveness probe and the
``calico_bgp_datastore_*`` metrics (``_up``, ``_in_sync``, ``_reconnects``, ``_errors{reason}``, ...).

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
- A watch that cannot be created (etcd half up) must not hang: the client timeout also bounds watch
  creation.
- A silent etcd (SIGSTOPped, hung, or behind a path that drops packets without a RST) never makes a
  watch fail by itself. The guard is a liveness probe: a count-only linearizable read every 5 s that must
  answer within 5 s, on the same connection as the watches; the first miss ends the sync. Detection
  bound: 10 s after the last answer. gRPC keepalive is on as well, but is no guard on its own here: with
  the probe off, a SIGSTOPped etcd went unnoticed for 40 s (the watch stream never failed). aetcd drops
  watch progress notifications before they reach us, so those cannot serve either.
  Every sign of life (a list, a watch batch, a probe answer) feeds ``heartbeat`` for the daemon's
  health report.
- https:// endpoints, client certificates and username/password come from ``EtcdSecurity``
  (etcd_security.py); the channel and the wording of failures from etcd_channel.py. A connect failure
  names each endpoint and its cause on one line and labels the error metric (``tls``, ``auth``,
  ``tls_config``); it is retried like any other. etcd's auth token lapses after a quiet spell: a call it
  refuses is repeated once with a fresh token, so the probe's rhythm does not decide whether we stay in.
- Ending a sync cancels its watch tasks, and aetcd's watch cleanup sometimes never lets a cancelled task
  finish (seen against a real etcd: roughly one run in three of the TLS recovery test). Waiting for them
  is bounded (``stop_timeout``); one that overstays is left behind, logged, and the resync goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.utils
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
from confgen.datastore.etcd_channel import ChannelClient, describe_failure
from confgen.datastore.etcd_security import Endpoint, EtcdSecurity, EtcdSecurityError
from confgen.datastore.etcd_security import parse_endpoint as parse_security_endpoint

log = logging.getLogger(__name__)

# Calico clusters with many nodes list megabytes of Node JSON; gRPC's default cap is 4 MiB.
# Keepalive: an HTTP/2 PING every 10 s while a call (the watch) is open, so gRPC itself can drop a transport
# whose peer is gone. etcd answers pings more often than every 5 s (--grpc-keepalive-min-time), or pings
# without an open stream, with GOAWAY; 10 s with open calls only stays clear of both. The detection bound
# does not rest on this (see the module docstring): the liveness probe gives it.
_GRPC_OPTIONS = {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
}
# The liveness probe reads the count of this one key: nothing is transferred, yet the read is linearizable,
# so an answer proves the member is serving and still part of a quorum.
_PROBE_KEY = b"/calico/"

T = TypeVar("T")

WatchEvent = tuple[str, str, bytes, int]  # (kind 'put'|'delete', key, value, mod_revision)

# A silent etcd is noticed within PROBE_INTERVAL + PROBE_TIMEOUT (10 s) of its last answer, for the price
# of one count-only read per node every 5 s.
PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 5.0
# Watch tasks left behind by a stop that timed out, kept referenced until they end (see EtcdSyncer._stop).
_MAX_ABANDONED = 64


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """("127.0.0.1", 2379) from "http://127.0.0.1:2379" or "https://127.0.0.1:2379"."""
    parsed = parse_security_endpoint(endpoint)
    return parsed.host, parsed.port


class DatastoreUnresponsive(DatastoreError):
    """etcd accepted the connection but did not answer the liveness probe in time."""


def _token_refused(exc: BaseException) -> bool:
    text = str(exc) + (f" {exc.__cause__}" if exc.__cause__ is not None else "")
    return isinstance(exc, aetcd.exceptions.UnauthenticatedError) or "invalid auth token" in text


def _translate(exc: BaseException) -> DatastoreError:
    if isinstance(exc, aetcd.exceptions.RevisionCompactedError):
        return CompactedError(str(exc))
    return DatastoreError(f"{exc.__class__.__name__}: {exc}")


_REASONS: dict[type, str] = {CompactedError: "compacted", DatastoreUnresponsive: "unresponsive"}


class EtcdConnectError(DatastoreError):
    """No endpoint could be used; ``reason`` labels the datastore error metric ("tls", "auth", ...)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EtcdClient:
    """Thin async etcd v3 client: str keys, bytes values, our own error types.

    ``security`` adds TLS (https:// endpoints) and username/password; an ``EtcdSecurityError`` (a
    ``ValueError``) from the constructor means a setting that can never work (see ``EtcdSecurity.check``).
    """

    def __init__(
        self, endpoints: list[str], timeout: float = 5.0, security: EtcdSecurity | None = None
    ) -> None:
        self.security = security if security is not None else EtcdSecurity()  # None: plain, no auth
        self.endpoints: list[Endpoint] = self.security.check(endpoints)
        self.timeout = timeout
        self._client: ChannelClient | None = None
        self.endpoint: str = ""  # the one connected to

    async def connect(self) -> None:
        """Connect to the first endpoint that answers (a status call proves it, gRPC connects lazily).

        The TLS files are read here, at every connect, so renewed certificates are picked up."""
        failures: list[tuple[str, str]] = []
        for endpoint in self.endpoints:
            client: ChannelClient | None = None
            try:
                tls = self.security.load_tls() if endpoint.tls else None
                client = ChannelClient(
                    endpoint, tls=tls, credentials=self.security.credentials, timeout=self.timeout,
                    options=_GRPC_OPTIONS,
                )  # fmt: skip
                await client.connect()
                await client.status()
            except (TimeoutError, aetcd.exceptions.ClientError, OSError, EtcdSecurityError) as exc:
                failures.append(describe_failure(endpoint, self.security, exc))
                if client is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.close(), self.timeout)
                continue
            self._client, self.endpoint = client, f"{endpoint.host}:{endpoint.port}"
            return
        # The first specific cause labels the metric; plain unreachability stays "error".
        reason = next((r for r, _ in failures if r != "error"), "error")
        raise EtcdConnectError("no etcd endpoint answered: " + "; ".join(m for _, m in failures), reason)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self.timeout)  # a hung server must not hang us

    @property
    def _c(self) -> ChannelClient:
        if self._client is None:
            raise DatastoreError("not connected")
        return self._client

    async def get_prefix(self, prefix: str) -> tuple[int, dict[str, bytes]]:
        return await self.get_prefixes([prefix])

    async def get_prefixes(self, prefixes: Iterable[str]) -> tuple[int, dict[str, bytes]]:
        """Every key under any of ``prefixes``, read atomically in one transaction.

        Returns (revision, {key: value}).
        """
        revision, values = await self._ranges([(p, True) for p in prefixes])
        return revision, {key: value for key, (value, _) in values.items()}

    async def get_with_revisions(
        self, prefixes: Iterable[str] = (), keys: Iterable[str] = ()
    ) -> tuple[int, dict[str, tuple[bytes, int]]]:
        """Keys under ``prefixes`` plus the exact ``keys``, with each key's ``mod_revision``, in one
        transaction (the resource CLI: ``resourceVersion`` and optimistic updates)."""
        return await self._ranges([(p, True) for p in prefixes] + [(k, False) for k in keys])

    async def _ranges(self, ranges: list[tuple[str, bool]]) -> tuple[int, dict[str, tuple[bytes, int]]]:
        ops = []
        for start, is_prefix in ranges:
            raw = start.encode()
            if is_prefix:
                request = aetcd.rpc.RangeRequest(key=raw, range_end=aetcd.utils.prefix_range_end(raw))
            else:
                request = aetcd.rpc.RangeRequest(key=raw)
            ops.append(aetcd.rpc.RequestOp(request_range=request))
        # A transaction with no compare always succeeds: all ranges are read at one revision. Built on the
        # KV stub rather than aetcd's ``transaction()``, which drops the response header: a read that finds
        # no key would then have no revision to start the watch from.
        request = aetcd.rpc.TxnRequest(compare=[], success=ops, failure=[])
        response = await self._call(
            lambda c: c.kvstub.Txn(request, timeout=self.timeout, metadata=c.metadata)
        )
        values: dict[str, tuple[bytes, int]] = {}
        for op in response.responses:
            for kv in op.response_range.kvs:
                values[kv.key.decode(errors="replace")] = (kv.value, kv.mod_revision)
        return response.header.revision, values

    async def probe(self) -> int:
        """A cheap linearizable read with the client's deadline; returns the store's current revision.

        Raises ``DatastoreError`` when etcd does not answer in time (hung, partitioned, behind a
        blackhole) or refuses."""
        request = aetcd.rpc.RangeRequest(key=_PROBE_KEY, count_only=True)
        response = await self._call(
            lambda c: c.kvstub.Range(request, timeout=self.timeout, metadata=c.metadata)
        )
        return response.header.revision

    async def put_if_unchanged(self, items: dict[str, bytes], revisions: dict[str, int]) -> bool:
        """Write every key of ``items`` in one transaction, but only if each still has the
        ``mod_revision`` in ``revisions`` (0 = must not exist). False when another writer got there first."""

        def transaction(c: ChannelClient) -> Awaitable[tuple[bool, list[Any]]]:
            ops = c.transactions
            compare = [ops.mod(key.encode()) == revisions.get(key, 0) for key in items]
            puts = [ops.put(key.encode(), value) for key, value in items.items()]
            return c.transaction(compare=compare, success=puts, failure=[])

        succeeded, _ = await self._call(transaction)
        return bool(succeeded)

    async def put(self, key: str, value: str | bytes) -> int:
        """Write one key; returns the new revision."""
        data = value.encode() if isinstance(value, str) else value
        result = await self._call(lambda c: c.put(key.encode(), data))
        return result.header.revision

    async def delete(self, key: str) -> bool:
        return await self._call(lambda c: c.delete(key.encode())) is not None

    async def compact(self, revision: int) -> None:
        """Discard history before ``revision`` (operators and tests; Calico's own compactor does this)."""
        await self._call(lambda c: c.compact(revision, physical=True))

    async def _call(self, call: Callable[[ChannelClient], Awaitable[T]]) -> T:
        """``call`` on the connected client; once more with a fresh token if etcd refused ours (simple
        tokens lapse after a quiet spell). Failures come out as ``DatastoreError``s."""
        client = self._c
        try:
            return await call(client)
        except Exception as exc:
            if not (client.authenticated and _token_refused(exc)):
                raise self._translate(exc) from exc
        try:
            await client.reauthenticate()
            return await call(client)
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> DatastoreError:
        """Our error for a failed call: compaction as such, auth and TLS refusals with their cause."""
        translated = _translate(exc)
        if isinstance(translated, CompactedError) or not self.endpoint:
            return translated
        connected = next((e for e in self.endpoints if f"{e.host}:{e.port}" == self.endpoint), None)
        if connected is None:
            return translated
        reason, message = describe_failure(connected, self.security, exc)
        return translated if reason == "error" else EtcdConnectError(message, reason)

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under ``prefix`` from ``start_revision`` on, until the caller stops or an error.

        Raises ``CompactedError`` if that revision is already compacted, ``DatastoreError`` otherwise.
        """
        raw = prefix.encode()
        try:
            watch = await self._c.watch(
                raw, range_end=aetcd.utils.prefix_range_end(raw), start_revision=start_revision
            )
        except aetcd.exceptions.ClientError as exc:
            raise self._translate(exc) from exc
        try:
            async for event in watch:
                kind = "put" if event.kind == "PUT" else "delete"
                yield kind, event.kv.key.decode(errors="replace"), event.kv.value, event.kv.mod_revision
        except aetcd.exceptions.ClientError as exc:
            raise self._translate(exc) from exc
        finally:
            # Cancelling queues a request on the watch stream; on a dead stream that queue may never
            # drain, so the cancel gets the client's deadline too.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), self.timeout)


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
