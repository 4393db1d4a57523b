"""WorkloadRouteWatcher against FakeNetlink: initial dump, deltas, coalescing, link loss, overflow."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from routes.model import ADD, BLACKHOLE, RTPROT_BOOT, Nexthop, Route, RouteEvent
from routes.monitor import WorkloadRouteWatcher
from routes.testing import FakeNetlink


class Gate:
    """Injectable sleep: the debounce ends only when the test opens the gate."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await self.opened.wait()
        self.opened.clear()


def workload(ip: str, dev: str = "cali1", proto: int = RTPROT_BOOT, priority: int = 0) -> Route:
    return Route(ip, nexthops=(Nexthop("", dev),), proto=proto, priority=priority)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def kernel() -> FakeNetlink:
    return FakeNetlink(links=("lo", "eth0", "cali1", "cali2", "caliX"))


@pytest.fixture
async def running(kernel):
    calls: list[dict[str, str | None]] = []
    seen: list[object] = []
    gate = Gate()
    watcher = WorkloadRouteWatcher(kernel, calls.append, sleep=gate.sleep, observers=[seen.append])
    task = asyncio.create_task(watcher.run())
    await settle()
    try:
        yield watcher, calls, gate, seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def report(gate: Gate) -> None:
    """Let the pending burst's debounce end and its report run."""
    await settle()
    gate.opened.set()
    await settle()


async def test_initial_dump_selects_workload_host_routes():
    kernel = FakeNetlink(links=("lo", "eth0", "cali1", "cali2"))
    for route in [
        workload("10.244.1.5/32"),
        workload("fd00:244::5/128", dev="cali2", proto=80, priority=1024),  # any protocol on cali*
        workload("10.244.1.0/26"),  # not a host route
        Route("10.244.1.6/32", nexthops=(Nexthop("", "eth0"),), proto=RTPROT_BOOT),  # not a cali device
        Route("10.244.1.7/32", BLACKHOLE, proto=80),
        Route("10.244.1.8/32", nexthops=(Nexthop("", "cali1"),), table=100),  # not the main table
    ]:
        kernel.add_foreign(route)
    calls: list[dict[str, str | None]] = []
    watcher = WorkloadRouteWatcher(kernel, calls.append, sleep=lambda _: asyncio.sleep(0))
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.ready.wait(), 1)
    task.cancel()
    assert calls == [{"10.244.1.5/32": "cali1", "fd00:244::5/128": "cali2"}]  # the first call: all present
    assert watcher.devices == {"10.244.1.5/32": "cali1", "fd00:244::5/128": "cali2"}
    assert watcher.prefixes == frozenset({"10.244.1.5/32", "fd00:244::5/128"})


async def test_empty_kernel_still_reports_once(running):
    watcher, calls, gate, _ = running
    assert not watcher.ready.is_set()
    await report(gate)
    assert calls == [{}] and watcher.ready.is_set()


async def test_burst_is_coalesced_into_one_call(running, kernel):
    watcher, calls, gate, seen = running
    await report(gate)
    for i in range(1, 50):
        kernel.add_foreign(workload(f"10.244.1.{i}/32"))
    await settle()
    assert len(calls) == 1  # still debouncing
    gate.opened.set()
    await settle()
    assert calls[1] == {f"10.244.1.{i}/32": "cali1" for i in range(1, 50)}
    assert len(calls) == 2 and gate.waits == [0.05, 0.05]
    assert len(seen) == 49 and all(isinstance(e, RouteEvent) and e.action == ADD for e in seen)


async def test_without_debounce_a_burst_is_reported_on_the_next_turn_without_a_task(kernel):
    calls: list[dict[str, str | None]] = []

    async def no_sleep(seconds: float) -> None:
        raise AssertionError("no debounce: nothing to sleep")

    watcher = WorkloadRouteWatcher(kernel, calls.append, debounce=0.0, sleep=no_sleep)
    task = asyncio.create_task(watcher.run())
    await settle()
    loop = asyncio.get_running_loop()
    made: list[object] = []

    def counting(loop, coro, **kwargs):
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        for i in (1, 2):  # what one read of the socket carries: one burst
            kernel.add_foreign(workload(f"10.244.1.{i}/32"))
        kernel.remove(workload("10.244.1.2/32"))
        await settle()
        assert calls == [{}, {"10.244.1.1/32": "cali1"}] and made == []
        kernel.remove(workload("10.244.1.1/32"))
        await settle()
        assert calls[2:] == [{"10.244.1.1/32": None}] and made == []
    finally:
        loop.set_task_factory(None)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_only_the_prefixes_touched_by_a_burst_are_reported(running, kernel):
    watcher, calls, gate, _ = running
    kernel.add_foreign(workload("10.244.1.5/32"))
    kernel.add_foreign(workload("10.244.1.6/32"))
    await report(gate)
    kernel.remove(workload("10.244.1.5/32"))
    kernel.add_foreign(workload("10.244.1.7/32", dev="cali2"))
    await report(gate)
    assert calls == [
        {"10.244.1.5/32": "cali1", "10.244.1.6/32": "cali1"},
        {"10.244.1.5/32": None, "10.244.1.7/32": "cali2"},
    ]


async def test_flap_within_the_first_burst_is_not_reported(running, kernel):
    watcher, calls, gate, _ = running
    kernel.add_foreign(workload("10.244.1.5/32"))
    kernel.remove(workload("10.244.1.5/32"))
    await report(gate)
    assert calls == [{}]  # added and removed within one burst: nothing to say beyond the first call


async def test_no_call_when_nothing_changed_after_the_first(running, kernel):
    watcher, calls, gate, _ = running
    kernel.add_foreign(workload("10.244.1.5/32"))
    await report(gate)
    assert len(calls) == 1
    kernel.add_foreign(workload("10.244.1.6/32"))
    kernel.remove(workload("10.244.1.6/32"))  # a flap
    kernel.add_foreign(workload("10.244.1.5/32", priority=100))  # a second route, same device
    kernel.remove(workload("10.244.1.5/32"))  # the first one goes: the device stays cali1
    await report(gate)
    assert len(calls) == 1 and watcher.devices == {"10.244.1.5/32": "cali1"}


async def test_deleted_device_reports_its_ipv4_prefixes_gone_without_route_events(running, kernel):
    watcher, calls, gate, _ = running
    kernel.add_foreign(workload("10.244.1.5/32", dev="cali1"))
    kernel.add_foreign(workload("10.244.1.8/32", dev="cali1"))
    kernel.add_foreign(workload("10.244.1.6/32", dev="cali2"))
    await report(gate)
    kernel.delete_link("cali1")  # the CNI deleted the veth: no RTM_DELROUTE for IPv4
    await report(gate)
    assert calls[-1] == {"10.244.1.5/32": None, "10.244.1.8/32": None}
    assert watcher.prefixes == frozenset({"10.244.1.6/32"})


async def test_pod_recreated_on_a_new_device_reports_the_new_device(running, kernel):
    watcher, calls, gate, _ = running
    kernel.add_foreign(workload("10.244.1.5/32", dev="cali1"))
    await report(gate)
    kernel.delete_link("cali1")
    kernel.add_foreign(workload("10.244.1.5/32", dev="cali2"))  # same IP, same burst
    await report(gate)
    assert calls[-1] == {"10.244.1.5/32": "cali2"}


async def test_lowest_metric_device_wins(running, kernel):
    watcher, calls, gate, _ = running
    kernel.add_foreign(workload("10.244.1.5/32", dev="cali1", priority=200))
    kernel.add_foreign(workload("10.244.1.5/32", dev="cali2", priority=100))
    await report(gate)
    assert calls == [{"10.244.1.5/32": "cali2"}]
    assert watcher.devices == {"10.244.1.5/32": "cali2"} and watcher.device("10.244.1.5/32") == "cali2"
    kernel.remove(workload("10.244.1.5/32", dev="cali2", priority=100))
    await report(gate)
    assert calls[-1] == {"10.244.1.5/32": "cali1"}
    kernel.add_foreign(workload("10.244.1.5/32", dev="cali2", priority=300))  # behind cali1: no change
    await report(gate)
    assert len(calls) == 2
    kernel.remove(workload("10.244.1.5/32", dev="cali1", priority=200))
    kernel.remove(workload("10.244.1.5/32", dev="cali2", priority=300))
    await report(gate)
    assert calls[-1] == {"10.244.1.5/32": None} and watcher.device("10.244.1.5/32") is None


async def test_route_overwritten_by_a_non_workload_route_is_dropped(running, kernel):
    watcher, calls, gate, _ = running
    kernel.add_foreign(workload("10.244.1.5/32"))
    await report(gate)
    kernel.add_foreign(Route("10.244.1.5/32", nexthops=(Nexthop("192.0.2.7", "eth0"),), proto=80))
    await report(gate)
    assert watcher.prefixes == frozenset()
    assert calls == [{"10.244.1.5/32": "cali1"}, {"10.244.1.5/32": None}]


async def test_overflow_re_dump_reports_what_changed_unseen(running, kernel):
    watcher, calls, gate, _ = running
    kernel.add_foreign(workload("10.244.1.5/32"))
    kernel.add_foreign(workload("10.244.1.6/32"))
    await report(gate)
    dumps = kernel.dumps
    # Changes whose notifications were lost: written straight into the model.
    kernel.routes[(254, "10.244.1.9/32", 0)] = workload("10.244.1.9/32")
    del kernel.routes[(254, "10.244.1.5/32", 0)]
    kernel.overflow()
    await settle()
    assert kernel.dumps == dumps + 1
    await report(gate)
    assert calls[-1] == {"10.244.1.5/32": None, "10.244.1.9/32": "cali1"}  # .6 did not change: not said
    assert watcher.prefixes == frozenset({"10.244.1.6/32", "10.244.1.9/32"})


async def test_a_failed_report_is_repeated_with_the_next_burst(kernel):
    calls: list[dict[str, str | None]] = []

    def consumer(changes):
        calls.append(dict(changes))
        if len(calls) == 2:
            raise RuntimeError("consumer bug")

    gate = Gate()
    watcher = WorkloadRouteWatcher(kernel, consumer, sleep=gate.sleep)
    task = asyncio.create_task(watcher.run())
    try:
        await report(gate)
        kernel.add_foreign(workload("10.244.1.5/32"))
        await report(gate)
        kernel.add_foreign(workload("10.244.1.6/32"))
        await report(gate)
        assert calls == [{}, {"10.244.1.5/32": "cali1"}, {"10.244.1.5/32": "cali1", "10.244.1.6/32": "cali1"}]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_own_protocol_is_excluded_from_the_watch(running, kernel):
    watcher, calls, gate, seen = running
    kernel.add_foreign(Route("10.245.0.0/26", nexthops=(Nexthop("192.0.2.7", "eth0"),)))  # proto 12
    kernel.add_foreign(workload("10.244.1.5/32"))
    await settle()
    assert [e.route.proto for e in seen] == [RTPROT_BOOT]


async def test_every_full_dump_reaches_the_dump_observers(kernel):
    connected = Route("192.0.2.0/24", nexthops=(Nexthop("", "eth0"),), proto=2)
    kernel.add_foreign(connected)
    dumps: list[list[Route]] = []
    watcher = WorkloadRouteWatcher(kernel, lambda _: None, sleep=lambda _: asyncio.sleep(0),
                                   dump_observers=[dumps.append])
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(watcher.ready.wait(), 1)
        assert dumps == [[connected]]  # every protocol: the resolver needs connected and static routes
        behind = Route("198.51.100.0/24", nexthops=(Nexthop("192.0.2.1", "eth0"),), proto=4)
        kernel.routes[(254, behind.dst, 0)] = behind  # its notification is lost
        kernel.overflow()
        await settle()
        assert dumps[-1] == [connected, behind]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def quiet() -> None:
    """Long enough for a watch to be replaced (task hand-offs take more rounds than one event)."""
    for _ in range(30):
        await asyncio.sleep(0)


class Timer:
    """Injectable sleep for the liveness timers: each sleep waits until the test fires it."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((seconds, future))
        await future

    async def fire(self, seconds: float) -> None:
        """Let the oldest pending sleep of ``seconds`` end."""
        await quiet()
        index = next(i for i, (delay, _) in enumerate(self.pending) if delay == seconds)
        self.pending.pop(index)[1].set_result(None)
        await quiet()


@pytest.fixture
async def verified(kernel):
    calls: list[dict[str, str | None]] = []
    beats: list[int] = []
    timer = Timer()
    registry = CollectorRegistry()
    watcher = WorkloadRouteWatcher(
        kernel, calls.append, sleep=lambda _: asyncio.sleep(0), verify_interval=30.0, recheck=1.0,
        retry=2.0, verify_sleep=timer.sleep, heartbeat=lambda: beats.append(1), registry=registry,
    )  # fmt: skip
    task = asyncio.create_task(watcher.run())
    await quiet()
    try:
        yield watcher, calls, timer, beats, registry
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()  # the watcher only ever ends by cancellation


def restarts(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("calico_bgp_kernel_watch_restarts_total", {"reason": reason}) or 0


async def test_a_silently_stalled_watch_is_caught_by_verification_and_replaced(verified, kernel):
    watcher, calls, timer, beats, registry = verified
    kernel.add_foreign(workload("10.244.1.5/32"))
    await quiet()
    assert beats == [1] and calls[-1] == {"10.244.1.5/32": "cali1"}
    await timer.fire(30.0)  # nothing missed: the dump agrees, a heartbeat
    assert beats == [1, 1] and restarts(registry, "stalled") == 0

    kernel.deafen()  # the socket stays open and says nothing any more
    kernel.add_foreign(workload("10.244.1.6/32", dev="cali2"))
    del kernel.routes[(254, "10.244.1.5/32", 0)]
    await quiet()
    assert watcher.prefixes == {"10.244.1.5/32"}  # unaware
    await timer.fire(30.0)  # the dump differs...
    assert restarts(registry, "stalled") == 0 and len(beats) == 2
    await timer.fire(1.0)  # ... and still differs a second later, with the kernel unchanged: stalled
    assert restarts(registry, "stalled") == 1 and watcher.restarts == 1
    assert watcher.prefixes == {"10.244.1.6/32"}  # re-read on a fresh subscription
    assert calls[-1] == {"10.244.1.5/32": None, "10.244.1.6/32": "cali2"}
    assert len(beats) == 3
    kernel.add_foreign(workload("10.244.1.7/32"))  # and the new subscription hears
    await quiet()
    assert calls[-1] == {"10.244.1.7/32": "cali1"}


class ChangesDuringADump(FakeNetlink):
    """The next dump sees a route whose notification is only queued, not yet read by the watcher."""

    change_during_dump: Route | None = None

    async def dump_routes(self, proto=None, table=254, *, exclude_proto=None):
        if self.change_during_dump is not None:
            route, self.change_during_dump = self.change_during_dump, None
            self.add_foreign(route)
        return await super().dump_routes(proto, table, exclude_proto=exclude_proto)


async def test_a_change_in_flight_during_a_dump_is_not_a_stall():
    kernel = ChangesDuringADump(links=("lo", "eth0", "cali1"))
    calls: list[dict[str, str | None]] = []
    timer = Timer()
    watcher = WorkloadRouteWatcher(kernel, calls.append, sleep=lambda _: asyncio.sleep(0),
                                   verify_sleep=timer.sleep, recheck=1.0)  # fmt: skip
    task = asyncio.create_task(watcher.run())
    try:
        await quiet()
        kernel.change_during_dump = workload("10.244.1.5/32")
        verify = asyncio.create_task(watcher.verify())
        await timer.fire(1.0)  # the first dump saw it before we did; by the second we have it too
        assert await verify is False and watcher.restarts == 0
        assert calls[-1] == {"10.244.1.5/32": "cali1"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("fault", ["error", "ended"])
async def test_a_failed_or_ended_watch_is_subscribed_again_after_the_retry(verified, kernel, fault):
    watcher, calls, timer, beats, registry = verified
    kernel.add_foreign(workload("10.244.1.5/32"))
    await quiet()
    if fault == "error":
        kernel.break_watches(OSError(9, "Bad file descriptor"))
    else:
        kernel._watches[0].close()
    await quiet()
    assert restarts(registry, fault) == 1
    kernel.add_foreign(workload("10.244.1.6/32"))  # while unsubscribed: only the re-read can see it
    await timer.fire(2.0)
    assert watcher.prefixes == {"10.244.1.5/32", "10.244.1.6/32"}
    assert calls[-1] == {"10.244.1.6/32": "cali1"}
    kernel.add_foreign(workload("10.244.1.7/32"))
    await quiet()
    assert calls[-1] == {"10.244.1.7/32": "cali1"}


class RecordingDumps(FakeNetlink):
    """Remembers what each dump asked the kernel for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[int | None] = []

    async def dump_routes(self, proto=None, table=254, *, exclude_proto=None):
        self.asked.append(exclude_proto)
        return await super().dump_routes(proto, table, exclude_proto=exclude_proto)


async def test_verification_dumps_skip_our_own_protocol():
    """The periodic verify never decodes our BGP routes (100k of them would cost 0.6 s of CPU each time)."""
    kernel = RecordingDumps(links=("lo", "eth0", "cali1"))
    kernel.add_foreign(Route("10.65.0.0/24", nexthops=(Nexthop("10.0.0.9", "eth0"),), proto=12))
    watcher = WorkloadRouteWatcher(kernel, lambda _: None, sleep=lambda _: asyncio.sleep(0), exclude_proto=12)
    assert not await watcher.verify()
    assert kernel.asked == [12]


@pytest.mark.parametrize(
    ("dst", "host"),
    [
        ("10.244.1.5/32", True),
        ("10.244.1.4/31", False),
        ("0.0.0.0/0", False),
        ("fd00:244::5/128", True),
        ("fd00::/32", False),  # an IPv6 prefix 32 bits long is no host route
        ("fd00:244::/127", False),
    ],
)
def test_only_host_routes_are_workload_routes(dst, host):
    watcher = WorkloadRouteWatcher(FakeNetlink(), lambda changes: None)
    assert watcher._is_workload(workload(dst)) is host
