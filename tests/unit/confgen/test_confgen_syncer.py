"""EtcdSyncer logic against a scripted in-process etcd double: batching, outages, backoff, resync.

The same behaviours are proven against a real etcd in tests/etcd; this double makes the failure paths
(and the exact backoff sequence) deterministic and fast."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from prometheus_client import CollectorRegistry

from confgen.datastore import keys
from confgen.datastore.base import CompactedError, DatastoreError
from confgen.datastore.etcd import EtcdSyncer


class FakeServer:
    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}
        self.revision = 1
        self.refuse = 0  # number of connects to refuse
        self.silent = False  # probes get no answer (a SIGSTOPped etcd behind an open TCP connection)
        self.probes = 0
        self.watches: list[tuple[str, int, asyncio.Queue]] = []
        self.clients: list[FakeClient] = []

    def put(self, key: str, value: object) -> None:
        self.revision += 1
        raw = json.dumps(value).encode()
        self.kv[key] = raw
        self._notify(("put", key, raw, self.revision))

    def delete(self, key: str) -> None:
        self.revision += 1
        del self.kv[key]
        self._notify(("delete", key, b"", self.revision))

    def _notify(self, event) -> None:
        for prefix, _, queue in self.watches:
            if event[1].startswith(prefix):
                queue.put_nowait(event)

    def break_watches(self, exc: BaseException) -> None:
        for _, _, queue in self.watches:
            queue.put_nowait(exc)

    def client(self) -> FakeClient:
        client = FakeClient(self)
        self.clients.append(client)
        return client


class FakeClient:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.closed = False
        self.mine: list = []

    async def connect(self) -> None:
        if self.server.refuse:
            self.server.refuse -= 1
            raise DatastoreError("connection refused")

    async def get_prefixes(self, prefixes):
        values = {k: v for k, v in self.server.kv.items() if k.startswith(tuple(prefixes))}
        return self.server.revision, values

    async def probe(self):
        self.server.probes += 1
        if self.server.silent:
            await asyncio.Event().wait()  # never answers; only the syncer's deadline ends this
        return self.server.revision

    async def watch_prefix(self, prefix, start_revision):
        entry = (prefix, start_revision, asyncio.Queue())
        self.server.watches.append(entry)
        self.mine.append(entry)
        while True:
            item = await entry[2].get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        self.closed = True
        for entry in self.mine:
            if entry in self.server.watches:
                self.server.watches.remove(entry)


def node_key(name):
    return keys.resource_key("Node", name)


def node_value(ip):
    return {"kind": "Node", "spec": {"bgp": {"ipv4Address": ip}}}


def mid_band() -> float:
    """The jitter draw that leaves each backoff delay as it is, so a test can pin the sequence."""
    return 0.5


@pytest.fixture
async def running(fake_time):
    server = FakeServer()
    server.put(node_key("node1"), node_value("10.0.0.11/24"))
    server.put(keys.affinity_key("node1", "10.65.1.0/26"), {"state": "confirmed"})
    server.put(keys.affinity_key("node2", "10.65.2.0/26"), {"state": "confirmed"})  # not ours
    server.put(keys.RESOURCE_PREFIX + "networkpolicies/default.x", {})  # not watched at all
    registry = CollectorRegistry()
    # No probe here: these tests pin the exact backoff sequence of sleeps (the probe's have their own tests).
    syncer = EtcdSyncer(
        server.client, "node1", clock=fake_time.clock, sleep=fake_time.sleep, registry=registry,
        probe_interval=None, random_source=mid_band,
    )  # fmt: skip
    snapshots = []
    task = asyncio.create_task(syncer.run(snapshots.append))
    await fake_time.settle()
    try:
        yield server, syncer, snapshots, registry
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_initial_snapshot_then_one_snapshot_per_batch(running):
    server, syncer, snapshots, registry = running
    assert syncer.in_sync and len(snapshots) == 1
    first = snapshots[0]
    assert first.revision == 5
    assert set(first.resources["Node"]) == {"node1"}
    assert set(first.affinities) == {"10.65.1.0/26"}
    # Every prefix is watched from the listing revision + 1: no gap, no replay.
    assert sorted(start for _, start, _ in server.watches) == [6] * len(syncer.prefixes)

    server.put(node_key("node2"), node_value("10.0.0.12/24"))
    server.put(node_key("node3"), node_value("10.0.0.13/24"))
    server.put(keys.affinity_key("node1", "10.65.9.0/26"), {"state": "pending"})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(snapshots) == 2  # three events that arrived together: one snapshot
    assert set(snapshots[1].resources["Node"]) == {"node1", "node2", "node3"}
    assert snapshots[1].affinities["10.65.9.0/26"] == {"state": "pending"}
    assert snapshots[1].revision == 8
    assert set(first.resources["Node"]) == {"node1"}  # delivered snapshots never change afterwards

    server.delete(keys.affinity_key("node1", "10.65.1.0/26"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert set(snapshots[-1].affinities) == {"10.65.9.0/26"}
    assert registry.get_sample_value("calico_bgp_datastore_watch_events_total") == 4
    assert registry.get_sample_value("calico_bgp_datastore_in_sync") == 1


async def test_outage_keeps_the_last_snapshot_backs_off_and_relists(running, fake_time):
    server, syncer, snapshots, registry = running
    server.refuse = 3
    server.break_watches(DatastoreError("connection reset"))
    await fake_time.settle()
    assert not syncer.in_sync and len(snapshots) == 1  # nothing delivered, certainly not an empty view
    assert registry.get_sample_value("calico_bgp_datastore_in_sync") == 0

    # While we are away: a node goes, a pool comes. Only a relist can notice the delete.
    server.delete(node_key("node1"))
    server.put(keys.resource_key("IPPool", "pool"), {"spec": {"cidr": "10.65.0.0/16"}})

    await fake_time.advance(0.25 + 0.5 + 1.0)  # three refused connects
    assert len(snapshots) == 1 and not syncer.in_sync
    await fake_time.advance(2.0)
    assert syncer.in_sync and len(snapshots) == 2
    assert fake_time.sleeps == [0.25, 0.5, 1.0, 2.0]
    assert snapshots[1].resources["Node"] == {}
    assert set(snapshots[1].resources["IPPool"]) == {"pool"}
    assert registry.get_sample_value("calico_bgp_datastore_resyncs_total") == 2
    assert registry.get_sample_value("calico_bgp_datastore_errors_total", {"reason": "error"}) == 4
    assert all(c.closed for c in server.clients[:-1])  # every failed attempt released its client


async def test_backoff_is_capped_and_resets_after_a_healthy_period(running, fake_time):
    server, syncer, snapshots, _ = running
    server.refuse = 7
    server.break_watches(DatastoreError("gone"))
    await fake_time.advance(60)
    assert fake_time.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert syncer.in_sync
    await fake_time.advance(30)  # healthy for a while
    server.break_watches(DatastoreError("gone again"))
    await fake_time.advance(1)
    assert fake_time.sleeps[-1] == 0.25


@pytest.mark.parametrize(("draw", "first_wait"), [(0.0, 0.2), (0.5, 0.25), (0.999, 0.2999)])
async def test_reconnects_are_jittered_so_nodes_do_not_retry_in_lockstep(fake_time, draw, first_wait):
    server = FakeServer()
    server.put(node_key("node1"), node_value("10.0.0.11/24"))
    syncer = EtcdSyncer(
        server.client, "node1", clock=fake_time.clock, sleep=fake_time.sleep, registry=CollectorRegistry(),
        probe_interval=None, random_source=lambda: draw,
    )  # fmt: skip
    task = asyncio.create_task(syncer.run(lambda snapshot: None))
    try:
        await fake_time.settle()
        server.refuse = 2
        server.break_watches(DatastoreError("gone"))
        await fake_time.advance(5)
        assert fake_time.sleeps[:3] == pytest.approx([first_wait, first_wait * 2, first_wait * 4])
        assert syncer.in_sync
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_compaction_forces_a_full_resync(running, fake_time):
    server, syncer, snapshots, registry = running
    server.break_watches(CompactedError("revision was already compacted below 9"))
    await fake_time.advance(0.25)
    assert syncer.in_sync and len(snapshots) == 2
    assert registry.get_sample_value("calico_bgp_datastore_errors_total", {"reason": "compacted"}) == 1
    assert registry.get_sample_value("calico_bgp_datastore_resyncs_total") == 2


async def test_unexpected_client_errors_are_survived(running, fake_time):
    server, syncer, snapshots, registry = running
    server.break_watches(ValueError("a bug somewhere in the client"))
    await fake_time.advance(0.25)
    assert syncer.in_sync and len(snapshots) == 2
    assert registry.get_sample_value("calico_bgp_datastore_errors_total", {"reason": "unexpected"}) == 1


async def test_undecodable_values_are_reported_not_fatal(running):
    server, syncer, snapshots, _ = running
    server.revision += 1
    server.kv[node_key("broken")] = b"{not json"
    server._notify(("put", node_key("broken"), b"{not json", server.revision))
    for _ in range(3):
        await asyncio.sleep(0)
    assert "broken" not in snapshots[-1].resources["Node"]
    assert snapshots[-1].errors == (f"{node_key('broken')}: value is not valid JSON (JSONDecodeError)",)


@pytest.fixture
async def probed(fake_time):
    server = FakeServer()
    server.put(node_key("node1"), node_value("10.0.0.11/24"))
    registry = CollectorRegistry()
    beats = []
    syncer = EtcdSyncer(
        server.client, "node1", clock=fake_time.clock, sleep=fake_time.sleep, registry=registry,
        probe_interval=5.0, probe_timeout=5.0, heartbeat=lambda: beats.append(fake_time.now),
        random_source=mid_band,
    )  # fmt: skip
    snapshots = []
    task = asyncio.create_task(syncer.run(snapshots.append))
    await fake_time.settle()
    try:
        yield server, syncer, snapshots, registry, beats
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_live_etcd_is_probed_and_each_answer_is_a_heartbeat(probed, fake_time):
    server, syncer, snapshots, registry, beats = probed
    await fake_time.advance(20)
    assert server.probes == 4 and syncer.in_sync and len(snapshots) == 1
    assert beats == [0, 5, 10, 15, 20] and syncer.last_alive == 20  # the list, then every probe answer
    assert registry.get_sample_value("calico_bgp_datastore_up") == 1
    server.put(node_key("node2"), node_value("10.0.0.12/24"))
    await fake_time.settle()
    assert beats[-1] == 20 and len(beats) == 6  # a watch batch is a sign of life too


@pytest.mark.parametrize("silent_after", [0.0, 3.0, 4.999])
async def test_a_silent_etcd_is_noticed_within_the_bound_and_relisted(probed, fake_time, silent_after):
    server, syncer, snapshots, registry, beats = probed
    await fake_time.advance(silent_after)
    server.silent = True  # SIGSTOP: the connection stays open, nothing answers, the watch just stays quiet
    await fake_time.advance(5.0 - silent_after)  # the probe goes out at 5 s...
    assert syncer.in_sync
    await fake_time.advance(4.9)  # ... and is still unanswered just before its deadline
    assert syncer.in_sync
    await fake_time.advance(0.1)  # 10 s after the last answer (the list at 0 s): noticed
    assert not syncer.in_sync and len(snapshots) == 1  # the last good view is kept, not emptied
    assert registry.get_sample_value("calico_bgp_datastore_up") == 0
    assert registry.get_sample_value("calico_bgp_datastore_errors_total", {"reason": "unresponsive"}) == 1
    assert server.clients[0].closed and server.watches == []  # the stuck connection was let go

    server.silent = False  # SIGCONT
    server.put(node_key("node2"), node_value("10.0.0.12/24"))  # written while we were away
    await fake_time.advance(0.25)  # the first backoff, then a relist on a fresh client
    assert syncer.in_sync and len(snapshots) == 2
    assert set(snapshots[-1].resources["Node"]) == {"node1", "node2"}
    assert registry.get_sample_value("calico_bgp_datastore_up") == 1
    assert registry.get_sample_value("calico_bgp_datastore_reconnects_total") == 1
    assert syncer.last_alive == fake_time.now


async def test_a_probe_error_ends_the_sync_like_any_datastore_error(probed, fake_time):
    server, syncer, snapshots, registry, _ = probed

    async def refused():
        raise DatastoreError("etcdserver: too many requests")

    server.clients[0].probe = refused
    await fake_time.advance(5.0)
    assert registry.get_sample_value("calico_bgp_datastore_errors_total", {"reason": "error"}) == 1
    await fake_time.advance(0.25)
    assert syncer.in_sync and len(snapshots) == 2


class StubbornClient(FakeClient):
    """A watch that will not end when cancelled until ``release`` is set, the way aetcd's watch cleanup
    can wait on a lock its dying stream holds."""

    release: asyncio.Event

    async def watch_prefix(self, prefix, start_revision):
        try:
            async for item in super().watch_prefix(prefix, start_revision):
                yield item
        except asyncio.CancelledError:
            while not self.release.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await self.release.wait()
            raise


async def test_a_watch_that_ignores_cancellation_does_not_stop_the_resync(fake_time):
    server = FakeServer()
    server.put(node_key("node1"), node_value("10.0.0.11/24"))
    release = asyncio.Event()

    def client():
        stubborn = StubbornClient(server)
        stubborn.release = release
        server.clients.append(stubborn)
        return stubborn

    syncer = EtcdSyncer(client, "node1", clock=fake_time.clock, sleep=fake_time.sleep, probe_interval=None,
                        stop_timeout=0.01, registry=CollectorRegistry(), random_source=mid_band)  # fmt: skip
    snapshots = []
    task = asyncio.create_task(syncer.run(snapshots.append))
    try:
        await fake_time.settle()
        assert len(snapshots) == 1
        server.watches[0][2].put_nowait(DatastoreError("stream reset"))  # one fails, the rest are stopped
        for _ in range(200):  # the stop bound is real time (10 ms); this allows up to 2 s
            await fake_time.advance(0.25)
            if len(server.clients) >= 2 and syncer.in_sync:
                break
            await asyncio.sleep(0.01)
        assert len(server.clients) == 2 and syncer.in_sync and len(snapshots) == 2
        assert len(syncer._abandoned) == len(syncer.prefixes) - 1
    finally:
        release.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.sleep(0)
    assert not syncer._abandoned
