"""etcd v3 client: the daemon's only aetcd user. str keys, bytes values, our own error types.

Stage: the real datastore's connection. ``EtcdSyncer`` (confgen/datastore/etcd.py) lists and watches through
it; the labs and the resource CLI (``calico-bgp apply/get/delete``) read and write resources with it.

Owns: one etcd connection (to the first endpoint that answers), atomic multi-prefix reads, the count-only
read the syncer's liveness probe makes, conditional writes, and watches as plain
(kind, key, value, mod_revision) events.

Complicating factors:
- https:// endpoints, client certificates and username/password come from ``EtcdSecurity``
  (etcd_security.py); the channel and the wording of failures from etcd_channel.py. A connect failure names
  each endpoint and its cause on one line and carries the label of the error metric (``tls``, ``auth``,
  ``tls_config``). The TLS files are read at every connect, so renewed certificates are picked up.
- etcd's auth token lapses after a quiet spell: a call it refuses is repeated once with a fresh token, so
  the syncer's probe rhythm does not decide whether we stay in.
- Every range of a read is in one read-only transaction, so all are at one revision, and its header gives
  that revision even when no key matched: the revision a watch starts from.
- A watch that cannot be created (etcd half up) must not hang: the client timeout also bounds watch
  creation, and the cancel of a watch on a dead stream.
- gRPC keepalive is on (``_GRPC_OPTIONS``), but it is no liveness guard on its own: the syncer's probe is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.utils

from confgen.datastore.base import CompactedError, DatastoreError
from confgen.datastore.etcd_channel import ChannelClient, describe_failure
from confgen.datastore.etcd_security import Endpoint, EtcdSecurity, EtcdSecurityError

# Calico clusters with many nodes list megabytes of Node JSON; gRPC's default cap is 4 MiB.
# Keepalive: an HTTP/2 PING every 10 s while a call (the watch) is open, so gRPC itself can drop a transport
# whose peer is gone. etcd answers pings more often than every 5 s (--grpc-keepalive-min-time), or pings
# without an open stream, with GOAWAY; 10 s with open calls only stays clear of both. The detection bound
# does not rest on this: the syncer's liveness probe gives it (confgen/datastore/etcd.py).
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


def _token_refused(exc: BaseException) -> bool:
    text = str(exc) + (f" {exc.__cause__}" if exc.__cause__ is not None else "")
    return isinstance(exc, aetcd.exceptions.UnauthenticatedError) or "invalid auth token" in text


def _translate(exc: BaseException) -> DatastoreError:
    if isinstance(exc, aetcd.exceptions.RevisionCompactedError):
        return CompactedError(str(exc))
    return DatastoreError(f"{exc.__class__.__name__}: {exc}")


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
