"""The node-status reporter: writes the ``status`` of each CalicoNodeStatus resource that names this node.

Stage: observability, the daemon's only etcd writer. ``confgen.nodestatus.StatusSplitter`` hands it the
valid requests for this node after every snapshot (``update``); it keeps one writer task per request,
which writes at once and then every ``updatePeriodSeconds`` (``0``: once per spec change), as calico-node's
reporter does. The status itself comes from ``bgp.nodestatus.build_status``.

Owns: the writer tasks, its own etcd connection (built by the same factory as the syncer's, so it has the
same endpoints and TLS settings), the write-failure streaks and the ``calico_bgp_node_status_*`` metrics.

Complicating factors:
- A user may change the spec while we write: each write is a read-modify-write that replaces only
  ``status`` in the object just read and commits only if the key's ``mod_revision`` is still the one read
  (an etcd transaction). A lost race is retried once with a fresh read; after that the next period tries
  again. A key that is gone is never recreated, and an object whose spec no longer matches the writer's is
  left alone (the syncer is about to deliver the new spec, which restarts the writer).
- Our own writes come back through the syncer; only a changed spec restarts a writer (the splitter passes
  specs, not objects), so writing cannot feed itself.
- Like calico-node, a status equal to the stored one apart from ``lastUpdated`` is not written again:
  ``lastUpdated`` is the time of the last change, and an idle cluster costs etcd nothing.
- Bounded: at most ``max_requests`` (16) requests per node get a writer, in name order, with a warning
  for the rest; the status lists are bounded by the builder, and a value over ``MAX_VALUE_BYTES`` is
  refused before it is sent. A write failure is logged once per streak (and once when it recovers) and
  counted; it never stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from bgp.nodestatus import BuiltStatus, StatusInputs, build_status
from confgen.datastore import keys
from confgen.datastore.base import MAX_VALUE_BYTES, DatastoreError
from confgen.nodestatus import KIND, NodeStatusSpec, parse_node_status

log = logging.getLogger(__name__)

MAX_REQUESTS = 16
WRITTEN, UNCHANGED, CONFLICT, FAILED, SKIPPED = "written", "unchanged", "conflict", "failed", "skipped"


class StatusWriteError(Exception):
    """A status that cannot be written (the message says why); counted as a failed write."""


def _content(status: Any) -> Any:
    if isinstance(status, dict):
        return {k: v for k, v in status.items() if k != "lastUpdated"}
    return status


class NodeStatusReporter:
    def __init__(
        self,
        client_factory: Callable[[], Any],
        node: str,
        source: Callable[[frozenset[str]], StatusInputs],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_requests: int = MAX_REQUESTS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._client_factory = client_factory  # () -> an unconnected EtcdClient
        self.node = node
        self._source = source  # the classes wanted -> the daemon's current state
        self._clock = clock
        self._sleep = sleep
        self._max_requests = max_requests
        self._specs: dict[str, NodeStatusSpec] = {}
        self._writers: dict[str, tuple[NodeStatusSpec, asyncio.Task[None]]] = {}
        self._running = False
        self._client: Any = None
        self._connect_lock = asyncio.Lock()
        self._failing: set[str] = set()  # requests whose last write failed (one log line per streak)
        self._ignored_logged: tuple[str, ...] = ()

        registry = registry if registry is not None else CollectorRegistry()
        self._writes = Counter(
            "calico_bgp_node_status_writes",
            "CalicoNodeStatus status writes by outcome (unchanged = equal to the stored status, not sent; "
            "conflict = the object changed twice under the write; skipped = deleted or its spec changed).",
            ["result"],
            registry=registry,
        )
        for result in (WRITTEN, UNCHANGED, CONFLICT, FAILED, SKIPPED):
            self._writes.labels(result)
        self._requests = Gauge(
            "calico_bgp_node_status_requests",
            "CalicoNodeStatus resources naming this node: served, or ignored beyond the per-node cap.",
            ["state"],
            registry=registry,
        )

    # ------------------------------------------------------------------ requests

    def update(self, specs: dict[str, NodeStatusSpec]) -> None:
        """The current valid requests naming this node (from the splitter, after every spec change)."""
        self._specs = {name: spec for name, spec in specs.items() if spec.node == self.node}
        if self._running:
            self._reconcile()

    def _reconcile(self) -> None:
        names = sorted(self._specs)
        served, ignored = names[: self._max_requests], tuple(names[self._max_requests :])
        self._requests.labels("active").set(len(served))
        self._requests.labels("ignored").set(len(ignored))
        if ignored and ignored != self._ignored_logged:
            log.warning(
                "%d CalicoNodeStatus resources name node %s; only the first %d by name are reported, "
                "ignored: %s",
                len(names), self.node, self._max_requests, ", ".join(ignored),
            )  # fmt: skip
        self._ignored_logged = ignored
        for name in list(self._writers):
            spec, task = self._writers[name]
            if name not in served or self._specs[name] != spec:
                task.cancel()
                del self._writers[name]
                self._failing.discard(name)
        for name in served:
            if name not in self._writers:
                spec = self._specs[name]
                task = asyncio.create_task(self._write_loop(spec), name=f"node-status {name}")
                self._writers[name] = (spec, task)

    @property
    def writers(self) -> tuple[str, ...]:
        """Names of the requests with a live writer task."""
        return tuple(sorted(name for name, (_, task) in self._writers.items() if not task.done()))

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the requests until cancelled."""
        self._running = True
        self._reconcile()
        try:
            await asyncio.Event().wait()
        finally:
            self._running = False
            writers = [task for _, task in self._writers.values()]
            self._writers.clear()
            for task in writers:
                task.cancel()
            await asyncio.gather(*writers, return_exceptions=True)
            await self._drop_client(self._client)

    async def _write_loop(self, spec: NodeStatusSpec) -> None:
        while True:
            await self.write_once(spec)
            if spec.update_period == 0:
                return  # Calico: 0 disables the refresh; a spec change starts a new writer
            await self._sleep(spec.update_period)

    async def write_once(self, spec: NodeStatusSpec) -> str:
        """One report for ``spec``: returns the outcome, never raises (except cancellation)."""
        try:
            result = await self._write(spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._writes.labels(FAILED).inc()
            if spec.name not in self._failing:
                self._failing.add(spec.name)
                if isinstance(exc, (DatastoreError, StatusWriteError, OSError, TimeoutError)):
                    log.warning("CalicoNodeStatus %s: status not written: %s", spec.name, exc)
                else:
                    log.exception("CalicoNodeStatus %s: building or writing the status failed", spec.name)
            return FAILED
        self._writes.labels(result).inc()
        if spec.name in self._failing:
            self._failing.discard(spec.name)
            log.info("CalicoNodeStatus %s: status writes work again", spec.name)
        return result

    async def _write(self, spec: NodeStatusSpec) -> str:
        key = keys.resource_key(KIND, spec.name)
        for _ in range(2):  # the first try, and one retry after a lost race
            client = await self._connected()
            try:
                _, found = await client.get_with_revisions(keys=[key])
                if key not in found:
                    return SKIPPED  # deleted: never recreate it; the syncer stops this writer
                raw, mod_revision = found[key]
                document = self._decode(spec, raw)
                if document is None:
                    return SKIPPED
                built = self._build(spec)
                if _content(document.get("status")) == _content(built.status):
                    return UNCHANGED
                document["status"] = built.status
                value = json.dumps(document, separators=(",", ":")).encode()
                if len(value) > MAX_VALUE_BYTES:
                    size = f"{len(value)} bytes (at most {MAX_VALUE_BYTES})"
                    raise StatusWriteError(f"the object with its status would be {size}")
                if await client.put_if_unchanged({key: value}, {key: mod_revision}):
                    return WRITTEN
            except Exception:
                await self._drop_client(client)  # whatever went wrong, the next write starts afresh
                raise
        return CONFLICT

    def _decode(self, spec: NodeStatusSpec, raw: bytes) -> dict[str, Any] | None:
        try:
            document = json.loads(raw)
        except ValueError:
            raise StatusWriteError("the stored object is not valid JSON") from None
        if not isinstance(document, dict):
            raise StatusWriteError("the stored object is not a JSON object")
        try:
            current = parse_node_status(spec.name, document)
        except ValueError:
            return None  # turned invalid: the splitter keeps the last valid spec; nothing to write into
        return document if current == spec else None

    def _build(self, spec: NodeStatusSpec) -> BuiltStatus:
        built = build_status(spec.classes, self._source(frozenset(spec.classes)), self._clock())
        if built.omitted and spec.name not in self._failing:
            log.debug("CalicoNodeStatus %s: %d peers/routes left out of the status", spec.name, built.omitted)
        return built

    async def _connected(self) -> Any:
        async with self._connect_lock:
            if self._client is None:
                client = self._client_factory()
                try:
                    await client.connect()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await client.close()
                    raise
                self._client = client
            return self._client

    async def _drop_client(self, client: Any) -> None:
        if client is not None and client is self._client:
            self._client = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
