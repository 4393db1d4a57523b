"""EtcdClient and EtcdSyncer against a real etcd: initial list, watch updates, deletes, compaction,
an etcd that dies and comes back on the same port and data dir, and one that goes silent (SIGSTOP)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest
from prometheus_client import CollectorRegistry

from confgen.datastore import keys
from confgen.datastore.base import CompactedError, DatastoreError
from confgen.datastore.etcd import PROBE_INTERVAL, PROBE_TIMEOUT, EtcdSyncer
from confgen.datastore.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd


def node(name, ip):
    return {"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name},
            "spec": {"bgp": {"ipv4Address": ip}}}  # fmt: skip


async def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def seed(endpoint):
    client = EtcdClient([endpoint])
    await client.connect()
    for name, ip in (("node1", "10.0.0.11/24"), ("node2", "10.0.0.12/24")):
        await client.put(keys.resource_key("Node", name), json.dumps(node(name, ip)))
    await client.put(keys.resource_key("IPPool", "pool"), json.dumps({"spec": {"cidr": "10.65.0.0/16"}}))
    await client.put(keys.affinity_key("node1", "10.65.1.0/26"), '{"state":"confirmed","deleted":false}')
    await client.put(keys.affinity_key("node1", "fd00:10:65::/122"), "")  # legacy empty value
    await client.put(keys.affinity_key("node2", "10.65.2.0/26"), '{"state":"confirmed"}')
    return client


class Running:
    def __init__(self, endpoint, **kwargs):
        self.registry = CollectorRegistry()
        self.syncer = EtcdSyncer(lambda: EtcdClient([endpoint], timeout=2.0), "node1", registry=self.registry,
                                 **kwargs)  # fmt: skip
        self.snapshots = []
        self.task = None

    async def __aenter__(self):
        self.task = asyncio.create_task(self.syncer.run(self.snapshots.append))
        await wait_until(lambda: self.snapshots, what="the first snapshot")
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def metric(self, name, labels=None):
        return self.registry.get_sample_value(name, labels or {}) or 0

    @property
    def last(self):
        return self.snapshots[-1]


async def test_initial_snapshot_watch_updates_and_deletes(etcd_server):
    client = await seed(etcd_server.endpoint)
    try:
        async with Running(etcd_server.endpoint) as run:
            first = run.snapshots[0]
            assert run.syncer.in_sync
            assert set(first.resources["Node"]) == {"node1", "node2"}
            assert first.resources["Node"]["node2"]["spec"]["bgp"]["ipv4Address"] == "10.0.0.12/24"
            assert set(first.resources["IPPool"]) == {"pool"}
            assert first.affinities == {"10.65.1.0/26": {"state": "confirmed", "deleted": False},
                                        "fd00:10:65::/122": {}}  # fmt: skip

            revision = await client.put(
                keys.resource_key("Node", "node3"), json.dumps(node("node3", "10.0.0.13"))
            )
            await wait_until(lambda: "node3" in run.last.resources["Node"], what="node3")
            assert run.last.revision == revision

            assert await client.delete(keys.affinity_key("node1", "10.65.1.0/26")) is True
            await wait_until(lambda: "10.65.1.0/26" not in run.last.affinities, what="the affinity delete")
            assert set(run.last.affinities) == {"fd00:10:65::/122"}
            assert await client.delete(keys.affinity_key("node1", "10.65.1.0/26")) is False

            count = len(run.snapshots)
            await client.put(keys.affinity_key("node2", "10.65.9.0/26"), "{}")  # another node's: no change
            await client.put(keys.RESOURCE_PREFIX + "networkpolicies/default.x", "{}")  # not watched
            await asyncio.sleep(0.3)
            assert all(set(s.affinities) == {"fd00:10:65::/122"} for s in run.snapshots[count:])
            assert run.metric("calico_bgp_datastore_resyncs_total") == 1
            assert run.metric("calico_bgp_datastore_in_sync") == 1
    finally:
        await client.close()


async def test_etcd_killed_keeps_the_last_snapshot_and_reconnects(etcd_server):
    await (await seed(etcd_server.endpoint)).close()
    async with Running(etcd_server.endpoint, backoff_max=1.0) as run:
        before = run.last
        etcd_server.kill()
        await wait_until(lambda: not run.syncer.in_sync, what="the syncer to notice")
        count = len(run.snapshots)
        await asyncio.sleep(1.5)  # several failed reconnects
        assert len(run.snapshots) == count and run.last is before  # nothing delivered, nothing emptied
        assert run.metric("calico_bgp_datastore_errors_total", {"reason": "error"}) >= 2

        etcd_server.start()  # same port, same data dir
        await wait_until(lambda: run.syncer.in_sync, what="the reconnect")
        assert run.last.resources == before.resources and run.last.affinities == before.affinities
        client = EtcdClient([etcd_server.endpoint])
        await client.connect()
        try:
            await client.put(keys.resource_key("Node", "node4"), json.dumps(node("node4", "10.0.0.14")))
            await wait_until(lambda: "node4" in run.last.resources["Node"], what="a post-outage update")
        finally:
            await client.close()
        assert run.metric("calico_bgp_datastore_resyncs_total") == 2


async def test_a_silent_etcd_is_noticed_within_the_bound_then_resynced(etcd_server):
    await (await seed(etcd_server.endpoint)).close()
    async with Running(etcd_server.endpoint, backoff_max=1.0) as run:  # the daemon's probe defaults
        before = run.last
        assert run.metric("calico_bgp_datastore_up") == 1
        etcd_server.pause()
        try:
            paused = time.monotonic()
            # The bound: PROBE_INTERVAL + PROBE_TIMEOUT after the last answer, which came before the pause.
            await wait_until(lambda: not run.syncer.in_sync, timeout=PROBE_INTERVAL + PROBE_TIMEOUT + 1.0,
                             what="the syncer to notice a silent etcd")  # fmt: skip
            detected = time.monotonic() - paused
            assert run.metric("calico_bgp_datastore_up") == 0
            assert run.last is before  # the last good view stands
        finally:
            etcd_server.resume()
        print(f"silent etcd detected after {detected:.2f}s")
        await wait_until(lambda: run.syncer.in_sync, timeout=20, what="the resync after SIGCONT")
        client = EtcdClient([etcd_server.endpoint])
        await client.connect()
        try:
            await client.put(keys.resource_key("Node", "node4"), json.dumps(node("node4", "10.0.0.14")))
            await wait_until(lambda: "node4" in run.last.resources["Node"], what="a write after SIGCONT")
        finally:
            await client.close()
        assert run.metric("calico_bgp_datastore_reconnects_total") >= 1
        assert run.metric("calico_bgp_datastore_up") == 1


async def test_compaction_while_disconnected_is_a_full_resync(etcd_server):
    await (await seed(etcd_server.endpoint)).close()
    gate = asyncio.Event()

    async def gated_sleep(delay):  # the syncer stays "disconnected" until the test opens the gate
        await gate.wait()
        await asyncio.sleep(delay)  # then time runs as usual (the liveness probe's timers included)

    async with Running(etcd_server.endpoint, sleep=gated_sleep) as run:
        watched_from = run.last.revision
        delivered = len(run.snapshots)
        etcd_server.kill()
        await wait_until(lambda: not run.syncer.in_sync, what="the disconnect")
        etcd_server.start()

        client = EtcdClient([etcd_server.endpoint])
        await client.connect()
        try:
            await client.delete(keys.resource_key("Node", "node2"))
            await client.delete(keys.affinity_key("node1", "10.65.1.0/26"))
            for i in range(20):
                revision = await client.put(
                    keys.resource_key("Node", "node5"), json.dumps(node("node5", f"10.0.1.{i}"))
                )
            await client.compact(revision)
            # The history the syncer would need to catch up is gone for good:
            with pytest.raises(CompactedError):
                async for _ in client.watch_prefix(keys.resource_prefix("Node"), watched_from + 1):
                    pass
        finally:
            await client.close()

        assert len(run.snapshots) == delivered  # still disconnected: the old view stands
        gate.set()
        await wait_until(lambda: run.syncer.in_sync, what="the resync")
        await wait_until(lambda: "node5" in run.last.resources["Node"], what="the relisted view")
        assert set(run.last.resources["Node"]) == {"node1", "node5"}  # the delete was not missed
        assert run.last.resources["Node"]["node5"]["spec"]["bgp"]["ipv4Address"] == "10.0.1.19"
        assert set(run.last.affinities) == {"fd00:10:65::/122"}
        assert run.last.revision == revision
        assert run.metric("calico_bgp_datastore_resyncs_total") == 2


async def test_client_tries_endpoints_in_order(etcd_server):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = EtcdClient([dead, etcd_server.endpoint], timeout=2.0)
    await client.connect()
    try:
        assert client.endpoint == f"127.0.0.1:{etcd_server.client_port}"
        await client.put("/calico/resources/v3/projectcalico.org/nodes/x", b"{}")
        revision, values = await client.get_prefix(keys.resource_prefix("Node"))
        assert values == {"/calico/resources/v3/projectcalico.org/nodes/x": b"{}"} and revision > 1
    finally:
        await client.close()
    with pytest.raises(DatastoreError, match="no etcd endpoint answered"):
        await EtcdClient([dead], timeout=1.0).connect()
