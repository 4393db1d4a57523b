"""In-memory datastore: an etcd-shaped key/value map that delivers snapshots synchronously.

Stage: stands in for ``EtcdSyncer`` in unit tests, golden tests and labs that do not need a real etcd.

Owns: a dict of etcd keys to raw bytes and a revision counter. It stores keys exactly as Calico lays them
out in etcd (``confgen.datastore.keys``) and decodes them with the same ``build_snapshot`` the real
syncer uses, so a test that goes through this fake also covers key parsing and JSON decoding.

Complicating factors:
- Delivery is synchronous: ``put`` calls the subscriber before returning. That makes tests
  deterministic (no hidden tasks) and lets a test emit a burst of snapshots to check debouncing.
- It is a fake of the datastore, not of etcd: no watch history, no compaction, no disconnects. Those are
  the etcd syncer's business and are tested against a real etcd (tests/etcd).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from confgen.datastore import keys
from confgen.datastore.base import OnSnapshot, Snapshot, build_snapshot, decode_all


class MemoryDatastore:
    def __init__(self, node: str) -> None:
        self.node = node
        self.revision = 1
        self._kv: dict[str, bytes] = {}
        self._subscribers: list[OnSnapshot] = []
        self.in_sync = True

    # -- writes (each one bumps the revision and notifies, like one etcd transaction) --

    def put(self, key: str, value: str | bytes) -> None:
        self._kv[key] = value.encode() if isinstance(value, str) else value
        self._changed()

    def delete(self, key: str) -> bool:
        existed = self._kv.pop(key, None) is not None
        if existed:
            self._changed()
        return existed

    def put_resource(self, resource: dict[str, Any]) -> str:
        """Store a v3 resource (``kind``, ``metadata.name``, ``spec``) under its Calico key; returns it."""
        key = keys.resource_key(resource["kind"], resource["metadata"]["name"])
        self.put(key, json.dumps(resource, sort_keys=True))
        return key

    def delete_resource(self, kind: str, name: str) -> bool:
        return self.delete(keys.resource_key(kind, name))

    def put_affinity(self, node: str, cidr: str, state: str | None = "confirmed") -> str:
        """Store a block affinity; ``state=None`` stores the legacy empty value."""
        key = keys.affinity_key(node, cidr)
        self.put(key, b"" if state is None else json.dumps({"state": state, "deleted": False}))
        return key

    def delete_affinity(self, node: str, cidr: str) -> bool:
        return self.delete(keys.affinity_key(node, cidr))

    # -- reads --

    def snapshot(self) -> Snapshot:
        return build_snapshot(self.revision, decode_all(self._kv.items()), self.node)

    async def run(self, on_snapshot: OnSnapshot) -> None:
        """Deliver the current snapshot, then one per write, until cancelled."""
        self._subscribers.append(on_snapshot)
        try:
            on_snapshot(self.snapshot())
            await asyncio.Event().wait()  # forever: writes are pushed from put()/delete()
        finally:
            self._subscribers.remove(on_snapshot)

    def _changed(self) -> None:
        self.revision += 1
        if self._subscribers:
            snapshot = self.snapshot()
            for subscriber in list(self._subscribers):
                subscriber(snapshot)
