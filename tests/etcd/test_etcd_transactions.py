"""EtcdClient.put_if_unchanged against a real etcd: a write goes in only while every key still has the
revision it was read at (0: does not exist yet), all keys or none."""

from __future__ import annotations

import asyncio

import pytest

from confgen.datastore.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd

PREFIX = "/calico/test/txn/"


def test_put_if_unchanged_writes_only_what_nobody_changed_since_it_was_read(etcd_server):
    async def main():
        client = EtcdClient([etcd_server.endpoint])
        await client.connect()
        try:
            a, b = PREFIX + "a", PREFIX + "b"
            assert await client.put_if_unchanged({a: b"1"}, {})  # 0: create
            assert not await client.put_if_unchanged({a: b"clobber"}, {a: 0})  # exists now
            _, held = await client.get_with_revisions(keys=[a])
            revision = held[a][1]
            assert await client.put_if_unchanged({a: b"2", b: b"new"}, {a: revision, b: 0})
            # A stale revision for one key refuses the whole write: neither key changes.
            assert not await client.put_if_unchanged({a: b"3", b: b"newer"}, {a: revision, b: 0})
            _, values = await client.get_prefixes([PREFIX])
            assert values == {a: b"2", b: b"new"}
        finally:
            await client.close()

    asyncio.run(main())
