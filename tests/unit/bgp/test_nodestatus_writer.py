"""The node-status reporter against a fake etcd: read-modify-write under a mod_revision compare, no
recreation of a deleted object, failures counted and logged once per streak, one writer per request,
the per-node cap, and the period from the spec (virtual time)."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry
from speaker_rig import Clock

from bgp.nodestatus import AgentState, StatusInputs
from bgp.nodestatus_writer import CONFLICT, FAILED, SKIPPED, UNCHANGED, WRITTEN, NodeStatusReporter
from confgen.datastore import keys
from confgen.datastore.base import DatastoreError
from confgen.intent import NodeIntent
from confgen.nodestatus import NodeStatusSpec, parse_node_status


class FakeEtcd:
    def __init__(self) -> None:
        self.revision = 1
        self.data: dict[str, tuple[bytes, int]] = {}
        self.before_put = []  # callables run (and removed) before the next transaction commits
        self.fail = 0  # how many of the next reads raise
        self.connects = 0
        self.puts = 0

    def put_raw(self, key, document):
        self.revision += 1
        self.data[key] = (json.dumps(document).encode(), self.revision)

    def stored(self, name):
        return json.loads(self.data[key_of(name)][0])

    def client(self):
        return FakeClient(self)


class FakeClient:
    def __init__(self, etcd: FakeEtcd) -> None:
        self.etcd = etcd

    async def connect(self):
        self.etcd.connects += 1

    async def close(self):
        pass

    async def get_with_revisions(self, prefixes=(), keys=()):
        if self.etcd.fail:
            self.etcd.fail -= 1
            raise DatastoreError("connection refused")
        return self.etcd.revision, {k: v for k, v in self.etcd.data.items() if k in keys}

    async def put_if_unchanged(self, items, revisions):
        if self.etcd.before_put:
            self.etcd.before_put.pop(0)()
        if any(self.etcd.data.get(k, (b"", 0))[1] != revisions.get(k, 0) for k in items):
            return False
        self.etcd.revision += 1
        self.etcd.puts += 1
        for k, v in items.items():
            self.etcd.data[k] = (v, self.etcd.revision)
        return True


def key_of(name):
    return keys.resource_key("CalicoNodeStatus", name)


def document(name="s1", node="node1", period=10, classes=("Agent",), **extra):
    spec = {"node": node, "classes": list(classes), "updatePeriodSeconds": period}
    meta = {"name": name, "uid": "u-1"}
    envelope = {"kind": "CalicoNodeStatus", "apiVersion": "projectcalico.org/v3", "metadata": meta}
    return {**envelope, "spec": spec, **extra}


def spec_of(doc):
    return parse_node_status(doc["metadata"]["name"], doc)


def reporter(etcd, *, ready=True, clock=None, sleep=None, max_requests=16):
    state = {"ready": ready}

    def source(classes):
        return StatusInputs(AgentState(state["ready"], "v1"), intent=NodeIntent("node1", "10.0.0.11", 64512))

    kwargs = {"sleep": sleep} if sleep else {}
    r = NodeStatusReporter(
        etcd.client, "node1", source, clock=clock or Clock(1_800_000_000.0), max_requests=max_requests,
        registry=CollectorRegistry(), **kwargs,
    )  # fmt: skip
    r.state = state
    return r


def writes(r, result):
    return r._writes.labels(result)._value.get()


def test_writes_status_into_the_object_and_skips_an_unchanged_one():
    etcd, clock = FakeEtcd(), Clock(1_800_000_000.0)
    doc = document()
    etcd.put_raw(key_of("s1"), doc)
    r = reporter(etcd, ready=False, clock=clock)

    assert asyncio.run(r.write_once(spec_of(doc))) == WRITTEN
    stored = etcd.stored("s1")
    assert stored["metadata"] == doc["metadata"] and stored["spec"] == doc["spec"]
    assert stored["status"]["lastUpdated"] == "2027-01-15T08:00:00Z"
    assert stored["status"]["agent"]["birdV4"]["state"] == "NotReady"

    clock.now += 60
    assert asyncio.run(r.write_once(spec_of(doc))) == UNCHANGED  # only lastUpdated would differ
    assert etcd.puts == 1
    r.state["ready"] = True
    assert asyncio.run(r.write_once(spec_of(doc))) == WRITTEN
    assert etcd.stored("s1")["status"]["agent"]["birdV4"]["state"] == "Ready"
    assert etcd.stored("s1")["status"]["lastUpdated"] == "2027-01-15T08:01:00Z"


def test_a_race_is_retried_once_on_a_fresh_read():
    etcd = FakeEtcd()
    doc = document()
    etcd.put_raw(key_of("s1"), doc)
    labelled = {**doc, "metadata": {**doc["metadata"], "labels": {"team": "net"}}}
    etcd.before_put.append(lambda: etcd.put_raw(key_of("s1"), labelled))  # a user's edit lands in between
    r = reporter(etcd)
    assert asyncio.run(r.write_once(spec_of(doc))) == WRITTEN
    assert etcd.stored("s1")["metadata"]["labels"] == {"team": "net"}  # the user's edit survives
    assert "status" in etcd.stored("s1")

    etcd.before_put += [lambda: etcd.put_raw(key_of("s1"), labelled)] * 2
    r.state["ready"] = False
    assert asyncio.run(r.write_once(spec_of(doc))) == CONFLICT  # lost twice: left to the next period
    assert writes(r, CONFLICT) == 1


def test_a_spec_changed_under_the_writer_is_not_written_with_the_old_spec():
    etcd = FakeEtcd()
    doc = document()
    etcd.put_raw(key_of("s1"), doc)
    etcd.before_put.append(lambda: etcd.put_raw(key_of("s1"), document(classes=("BGP",))))
    r = reporter(etcd)
    assert asyncio.run(r.write_once(spec_of(doc))) == SKIPPED
    assert "status" not in etcd.stored("s1")


def test_a_deleted_object_is_never_recreated():
    etcd = FakeEtcd()
    r = reporter(etcd)
    assert asyncio.run(r.write_once(spec_of(document()))) == SKIPPED
    assert etcd.data == {}


def test_failures_are_counted_and_logged_once_per_streak(caplog):
    caplog.set_level("INFO")
    etcd = FakeEtcd()
    doc = document()
    etcd.put_raw(key_of("s1"), doc)
    r = reporter(etcd)
    etcd.fail = 3

    async def three_failures_then_success():
        return [await r.write_once(spec_of(doc)) for _ in range(4)]

    assert asyncio.run(three_failures_then_success()) == [FAILED, FAILED, FAILED, WRITTEN]
    assert writes(r, FAILED) == 3
    failures = [rec for rec in caplog.records if "status not written" in rec.getMessage()]
    assert len(failures) == 1 and "connection refused" in failures[0].getMessage()
    assert "work again" in caplog.text
    assert etcd.connects == 4  # a failed connection is dropped and a fresh one made


def test_writers_follow_the_requests_and_the_period():
    etcd = FakeEtcd()
    for name in ("s1", "s2"):
        etcd.put_raw(key_of(name), document(name=name, period=5))
    sleeps: list[float] = []
    wake = asyncio.Event

    async def main():
        gate = wake()

        async def sleep(seconds):
            sleeps.append(seconds)
            await gate.wait()

        r = reporter(etcd, sleep=sleep)
        specs = {name: spec_of(document(name=name, period=5)) for name in ("s1", "s2")}
        r.update(specs)
        runner = asyncio.create_task(r.run())
        await settle()
        assert r.writers == ("s1", "s2")
        assert sleeps == [5, 5]
        assert all("status" in etcd.stored(n) for n in ("s1", "s2"))

        r.update({"s1": specs["s1"]})  # s2 deleted
        await settle()
        assert r.writers == ("s1",)

        r.update({"s1": spec_of(document(period=0))})  # 0: one write, no refresh
        await settle()
        assert r.writers == () and sleeps == [5, 5]
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(main())


def test_requests_beyond_the_cap_are_ignored_with_a_warning(caplog):
    etcd = FakeEtcd()

    async def forever(_):
        await asyncio.Event().wait()

    async def main():
        r = reporter(etcd, sleep=forever, max_requests=2)
        specs = {f"s{i}": NodeStatusSpec(f"s{i}", "node1", ("Agent",), 10) for i in range(4)}
        specs["other"] = NodeStatusSpec("other", "node2", ("Agent",), 10)
        r.update(specs)
        runner = asyncio.create_task(r.run())
        await settle()
        assert r.writers == ("s0", "s1")
        assert r._requests.labels("ignored")._value.get() == 2
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(main())
    assert "only the first 2 by name are reported, ignored: s2, s3" in caplog.text


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)
