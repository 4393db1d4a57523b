"""Snapshot building shared by every datastore, and the in-memory datastore's delivery contract."""

from __future__ import annotations

import asyncio
import contextlib

from confgen.datastore import keys
from confgen.datastore.base import build_snapshot, decode_all, decode_value, watched_prefixes
from confgen.datastore.memory import MemoryDatastore


def test_decode_value():
    assert decode_value("k", b"") == {}
    assert decode_value("k", b"  \n") == {}
    assert decode_value("k", b'{"a": 1}') == {"a": 1}
    assert decode_value("k", b"[1]").problem == "value is a JSON array, not an object"
    assert decode_value("k", b"{").problem == "value is not valid JSON (JSONDecodeError)"
    assert decode_value("k", b"\xff\xfe").problem.startswith("value is not valid JSON")


def test_build_snapshot_groups_keys_and_ignores_the_rest():
    raw = {
        keys.resource_key("Node", "n1"): b'{"spec": {}}',
        keys.resource_key("IPPool", "p"): b'{"spec": {"cidr": "10.65.0.0/16"}}',
        keys.resource_key("BGPPeer", "bad"): b"not json",
        keys.affinity_key("n1", "10.65.1.0/26"): b"",
        keys.affinity_key("n2", "10.65.2.0/26"): b"{}",  # another node's block
        keys.RESOURCE_PREFIX + "workloadendpoints/ns/x": b"{}",
        "/calico/ipam/v2/host/n1/ipv4/block/garbage": b"{}",
    }
    snapshot = build_snapshot(42, decode_all(raw.items()), "n1")
    assert snapshot.revision == 42
    assert snapshot.resources["Node"] == {"n1": {"spec": {}}}
    assert snapshot.resource("IPPool", "p") == {"spec": {"cidr": "10.65.0.0/16"}}
    assert snapshot.resources["BGPPeer"] == {} and snapshot.resource("BGPPeer", "bad") is None
    assert snapshot.affinities == {"10.65.1.0/26": {}}
    # A key under this node's own affinities that is not a block is reported, not dropped silently.
    assert snapshot.errors == (
        "/calico/ipam/v2/host/n1/ipv4/block/garbage: not a block affinity key (a canonical CIDR is expected)",
        f"{keys.resource_key('BGPPeer', 'bad')}: value is not valid JSON (JSONDecodeError)",
    )


def test_watched_prefixes_cover_each_kind_and_both_affinity_families():
    prefixes = watched_prefixes("n1")
    assert keys.RESOURCE_PREFIX not in prefixes  # never the whole resource tree (policies, endpoints...)
    assert set(prefixes) == {keys.resource_prefix(k) for k in keys.PLURALS} | {
        "/calico/ipam/v2/host/n1/ipv4/block/",
        "/calico/ipam/v2/host/n1/ipv6/block/",
    }


async def test_memory_datastore_delivers_initial_and_every_change():
    store = MemoryDatastore("n1")
    store.put_resource({"kind": "Node", "metadata": {"name": "n1"}, "spec": {}})
    seen = []
    task = asyncio.create_task(store.run(seen.append))
    await asyncio.sleep(0)
    try:
        assert len(seen) == 1 and set(seen[0].resources["Node"]) == {"n1"}
        store.put_affinity("n1", "10.65.1.0/26")
        store.put_affinity("n1", "10.65.2.0/26", state=None)
        assert [set(s.affinities) for s in seen[1:]] == [{"10.65.1.0/26"}, {"10.65.1.0/26", "10.65.2.0/26"}]
        assert seen[-1].affinities["10.65.2.0/26"] == {}
        assert store.delete_affinity("n1", "10.65.1.0/26") is True
        assert store.delete_affinity("n1", "10.65.1.0/26") is False  # no change, no delivery
        assert store.delete_resource("Node", "n1") is True
        assert len(seen) == 5 and seen[-1].resources["Node"] == {}
        assert [s.revision for s in seen] == sorted({s.revision for s in seen})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    store.put_affinity("n1", "10.65.3.0/26")  # unsubscribed: nobody is called
    assert len(seen) == 5
