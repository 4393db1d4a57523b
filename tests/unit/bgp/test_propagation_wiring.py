"""Propagation timing wired as the daemon wires it, over fakes and a fake clock.

Export: a workload route appears in FakeNetlink, the watcher reads it (its watch stamps the read), the
daemon's ``_workloads_changed`` hands the burst and its read time to the speaker, the speaker's flush writes
the API command: one sample, the time between the read and the end of the write. Import: ExaBGP's line
reaches the daemon's ``_on_line``, the flush programs a RouteTable over FakeNetlink: one sample per route,
the time between reading the line and the kernel's acknowledgement.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from speaker_rig import Clock
from speaker_rig import announce_line as announce
from speaker_rig import event_line as line
from speaker_rig import mesh_intent as intent
from speaker_rig import up_line as up

from bgp.daemon import NodeConfig, NodeDaemon
from bgp.latency import Propagation, bucket_of
from bgp.metrics import PropagationCollector
from bgp.speaker import Speaker
from routes.model import RTPROT_BOOT, Nexthop, Route
from routes.monitor import WorkloadRouteWatcher
from routes.table import RouteTable
from routes.testing import FakeNetlink

BORROWED = "192.168.5.7/32"  # in the pool, outside our block: announced
IN_BLOCK = "192.168.1.9/32"  # inside our block: the block is announced, not the /32
SEND_TAKES = 0.004
KERNEL_TAKES = 0.0025


class SlowKernel(FakeNetlink):
    """FakeNetlink whose apply takes ``KERNEL_TAKES`` of the fake clock before the kernel's answers."""

    async def apply(self, replaces, deletes, creates=()):
        self.clock.now += KERNEL_TAKES  # type: ignore[attr-defined]
        return await super().apply(replaces, deletes, creates)


def workload(dst: str) -> Route:
    return Route(dst, nexthops=(Nexthop("", "cali1"),), proto=RTPROT_BOOT)


class Rig:
    """The daemon's callbacks over a speaker, a watcher and a route table built on fakes and one clock."""

    def __init__(self, tmp_path, *, send_result: object = True) -> None:
        self.clock = Clock()
        self.kernel = SlowKernel(links=("lo", "eth0", "cali1"), clock=self.clock)
        self.table = RouteTable(self.kernel, clock=self.clock, hold_deletes=False)
        self.sent: list[str] = []
        self._send_result = send_result
        clock = self.clock
        self.speaker = Speaker(send=self._send, route_table=self.table, clock=clock, wallclock=clock)
        self.daemon = NodeDaemon(
            NodeConfig(node="node1", etcd_endpoints=("http://127.0.0.1:9",), run_dir=tmp_path / "run",
                       metrics_port=0)
        )  # fmt: skip
        self.daemon.speaker = self.speaker
        changed, at_once = self.daemon._workloads_changed, lambda _: asyncio.sleep(0)
        self.watcher = WorkloadRouteWatcher(self.kernel, changed, debounce=0.0, sleep=at_once)
        self.daemon.watcher = self.watcher
        self.propagation: Propagation = self.speaker.propagation

    async def _send(self, lines: list[str]) -> object:
        self.clock.now += SEND_TAKES
        self.sent.extend(lines)
        return self._send_result

    async def start(self, initial: tuple[Route, ...] = ()) -> asyncio.Task:
        for route in initial:
            self.kernel.add_foreign(route)
        self.speaker.set_intent(intent())
        task = asyncio.create_task(self.watcher.run())
        await asyncio.wait_for(self.watcher.ready.wait(), 5)
        self.daemon._on_line(up())
        await self.speaker.flush()  # the first, full flush: the session gets our table
        assert self.propagation.export.buckets.count == 0  # nothing read from a notification yet
        return task

    async def settle(self) -> None:
        """Let the watcher read and report what the kernel notified, then flush."""
        for _ in range(20):
            await asyncio.sleep(0)
        await self.speaker.flush()


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_workload_route_is_timed_from_the_kernel_read_to_the_api_write(rig):
    task = await rig.start()
    try:
        rig.clock.now += 10.0
        rig.kernel.add_foreign(workload(BORROWED))
        await rig.settle()
        assert any(BORROWED in command for command in rig.sent)
        export = rig.propagation.export
        assert export.buckets.count == 1
        assert export.buckets.sum == pytest.approx(SEND_TAKES)
        assert export.buckets.counts[bucket_of(SEND_TAKES)] == 1
        assert rig.propagation.report()["export"] == {"p50_ms": 4.0, "p99_ms": 4.0, "count": 1}
        # Its removal is a change of its own, timed the same way.
        rig.kernel.remove(workload(BORROWED))
        await rig.settle()
        assert export.buckets.count == 2
    finally:
        await stop(task)


async def test_routes_from_the_initial_dump_and_routes_not_announced_are_not_timed(rig):
    task = await rig.start(initial=(workload("192.168.6.1/32"),))  # announced, but read by a dump
    try:
        rig.kernel.add_foreign(workload(IN_BLOCK))  # a notification, but nothing to send
        await rig.settle()
        assert rig.propagation.export.buckets.count == 0
        assert rig.propagation.export.pending.take() == []  # and nothing left waiting
    finally:
        await stop(task)


async def test_dropped_commands_are_not_timed(tmp_path):
    rig = Rig(tmp_path, send_result=False)  # the channel had no working connection
    task = await rig.start()
    try:
        rig.kernel.add_foreign(workload(BORROWED))
        await rig.settle()
        assert any(BORROWED in command for command in rig.sent)
        assert rig.propagation.export.buckets.count == 0
    finally:
        await stop(task)


async def test_a_learned_route_is_timed_from_the_line_read_to_the_kernel_ack(rig):
    task = await rig.start()
    try:
        learned = ["192.168.2.0/26", "192.168.3.0/26"]
        rig.kernel.failures["192.168.3.0/26"] = "ENETUNREACH: Network is unreachable"  # refused: not timed
        rig.daemon._on_line(announce(learned))
        rig.clock.now += 0.001  # the flush runs a little later
        await rig.speaker.flush()
        assert {r.dst for r in rig.kernel.routes.values()} >= {"192.168.2.0/26"}
        imported = rig.propagation.imported
        assert imported.buckets.count == 1
        assert imported.buckets.sum == pytest.approx(0.001 + KERNEL_TAKES)
        assert rig.propagation.report()["import"]["count"] == 1
    finally:
        await stop(task)


async def test_a_line_without_route_changes_times_nothing(rig):
    task = await rig.start()
    try:
        rig.daemon._on_line(announce(["192.168.2.0/26"]))
        await rig.speaker.flush()
        rig.daemon._on_line(announce(["192.168.2.0/26"]))  # the same path again: no kernel write
        await rig.speaker.flush()
        assert rig.propagation.imported.buckets.count == 1
    finally:
        await stop(task)


async def test_the_histograms_are_served_from_the_bucket_counts():
    clock = Clock()
    propagation = Propagation(clock)
    registry = CollectorRegistry()
    PropagationCollector(propagation, registry)
    propagation.imported.read(clock.now, ["a", "b", "c"])
    clock.now += 0.003
    propagation.imported.delivered(propagation.imported.take(), {"a", "b", "c"})
    text = generate_latest(registry).decode()
    assert 'calico_bgp_propagation_import_seconds_bucket{le="0.0025"} 0.0' in text
    assert 'calico_bgp_propagation_import_seconds_bucket{le="0.005"} 3.0' in text
    assert 'calico_bgp_propagation_import_seconds_bucket{le="+Inf"} 3.0' in text
    assert "calico_bgp_propagation_import_seconds_count 3.0" in text
    assert 'calico_bgp_propagation_export_seconds_bucket{le="+Inf"} 0.0' in text
    sum_line = next(x for x in text.splitlines() if x.startswith("calico_bgp_propagation_import_seconds_sum"))
    assert float(sum_line.split()[1]) == pytest.approx(0.009)


def test_the_daemon_serves_both_histograms(tmp_path):
    daemon = NodeDaemon(NodeConfig(node="node1", etcd_endpoints=("http://127.0.0.1:9",),
                                   run_dir=tmp_path / "run", metrics_port=0))  # fmt: skip
    text = generate_latest(daemon.registry).decode()
    for direction in ("export", "import"):
        assert f"# TYPE calico_bgp_propagation_{direction}_seconds histogram" in text
    assert daemon.reports.status()["propagation"]["export"]["count"] == 0


async def test_a_route_read_while_no_session_is_up_is_not_timed_when_it_comes_up(rig):
    task = await rig.start()
    try:
        rig.daemon._on_line(line("state", {"state": "down", "reason": "peer reset"}))
        await rig.speaker.flush()
        rig.kernel.add_foreign(workload(BORROWED))
        await rig.settle()
        assert not any(BORROWED in command for command in rig.sent)
        rig.daemon._on_line(up())
        await rig.speaker.flush()  # the resend carries it: that measures the session, not propagation
        assert any(BORROWED in command for command in rig.sent)
        assert rig.propagation.export.buckets.count == 0
    finally:
        await stop(task)
