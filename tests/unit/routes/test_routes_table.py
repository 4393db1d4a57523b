"""RouteTable against FakeNetlink: reconciliation, ownership, adoption, retries and metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from routes.model import BLACKHOLE, LINK_DOWN, LINK_UP, RTPROT_BOOT, LinkEvent, Nexthop, Route
from routes.ownership import same_route
from routes.table import RouteTable
from routes.testing import FakeNetlink, FakeRouteTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def block(n: int, gw: str = "192.0.2.7") -> Route:
    return Route(f"10.244.{n}.0/26", nexthops=(Nexthop(gw),))


@pytest.fixture
def kernel() -> FakeNetlink:
    return FakeNetlink(links=("lo", "eth0", "tunl0", "cali1", "vxlan.calico"))


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(kernel, registry, clock) -> RouteTable:
    return RouteTable(kernel, registry=registry, clock=clock, hold_deletes=False)


def metric(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


def ours(kernel: FakeNetlink) -> dict[str, Route]:
    return {r.dst: r for r in kernel.routes.values() if r.proto == 12}


async def test_installs_then_is_idempotent(table, kernel, registry):
    table.set_desired([block(1), block(2), Route("10.244.9.0/26", BLACKHOLE)])
    result = await table.apply()
    assert result.replaced == 3 and not result.errors
    assert set(ours(kernel)) == {"10.244.1.0/26", "10.244.2.0/26", "10.244.9.0/26"}
    assert [op for op, _ in kernel.calls] == ["create"] * 3  # new to us: exclusive creates
    assert metric(registry, "calico_bgp_kernel_routes_installed") == 3
    kernel.calls.clear()
    assert (await table.apply()).replaced == 0
    table.set_desired([block(1), block(2), Route("10.244.9.0/26", BLACKHOLE)])
    await table.apply()
    assert kernel.calls == []


async def test_next_hop_change_is_a_replace_without_delete(table, kernel):
    table.set_desired([block(1)])
    await table.apply()
    kernel.calls.clear()
    table.set_desired([Route("10.244.1.0/26", nexthops=(Nexthop("192.0.2.9", "tunl0", True),))])
    await table.apply()
    assert [op for op, _ in kernel.calls] == ["replace"]
    assert ours(kernel)["10.244.1.0/26"].nexthops == (Nexthop("192.0.2.9", "tunl0", True),)


async def test_incremental_update_and_removal(table, kernel):
    table.set_desired([block(1), block(2)])
    await table.apply()
    table.update({block(3).dst: block(3), block(1).dst: block(1, "192.0.2.8")}, removes={block(2).dst})
    result = await table.apply()
    assert (result.replaced, result.deleted) == (2, 1)
    assert {d: r.nexthops[0].gateway for d, r in ours(kernel).items()} == {
        "10.244.1.0/26": "192.0.2.8", "10.244.3.0/26": "192.0.2.7"
    }


async def test_gateway_only_next_hop_read_back_with_a_device_is_not_churned(table, kernel, registry):
    table.set_desired([block(1), Route("fd00:244::/64", nexthops=(Nexthop("fd00::7"),))])
    await table.apply()
    assert ours(kernel)["10.244.1.0/26"].nexthops == (Nexthop("192.0.2.7", "eth0"),)
    assert ours(kernel)["fd00:244::/64"].priority == 1024  # the kernel's IPv6 default metric
    kernel.calls.clear()
    result = await table.resync()
    assert kernel.calls == [] and result.repaired == 0
    assert metric(registry, "calico_bgp_kernel_route_repairs_total") == 0


FOREIGN = [
    ("Felix workload /32 (proto boot)", Route("10.244.5.7/32", nexthops=(Nexthop("", "cali1"),), proto=3)),
    ("Felix proto 80 blackhole, other metric", Route("10.244.6.0/26", BLACKHOLE, proto=80, priority=1024)),
    ("connected subnet", Route("192.0.2.0/24", nexthops=(Nexthop("", "eth0"),), proto=2)),
    ("proto 12 route on a Felix device", Route("10.244.8.0/26", nexthops=(Nexthop("", "vxlan.calico"),))),
]


@pytest.mark.parametrize("foreign", [f for _, f in FOREIGN], ids=[n for n, _ in FOREIGN])
async def test_foreign_destination_is_skipped_reported_and_left_alone(table, kernel, registry, foreign):
    kernel.add_foreign(foreign)
    before = dict(kernel.routes)
    table.set_desired([Route(foreign.dst, nexthops=(Nexthop("192.0.2.7"),)), block(1)])
    result = await table.apply()
    assert result.conflicts == (foreign.dst,)
    assert foreign.dst in table.conflicts and "metric" in table.conflicts[foreign.dst]
    assert metric(registry, "calico_bgp_kernel_route_conflicts") == 1
    assert {k: v for k, v in kernel.routes.items() if k in before} == before
    assert [r for r in kernel.routes.values() if r.dst == foreign.dst] == [foreign]
    assert set(ours(kernel)) - {foreign.dst} == {"10.244.1.0/26"}
    table.set_desired([])
    await table.apply()
    await table.resync()
    assert kernel.routes == before  # everything we programmed is gone, the foreign route is untouched


async def test_foreign_route_appearing_after_read_back_wins_with_eexist(table, kernel):
    await table.apply()  # first read-back happens here, empty
    felix = Route("10.244.5.7/32", nexthops=(Nexthop("", "cali1"),), proto=RTPROT_BOOT)
    kernel.add_foreign(felix)  # not observed: the table does not know about it
    table.set_desired([Route("10.244.5.7/32", nexthops=(Nexthop("192.0.2.7"),))])
    result = await table.apply()
    assert not result.errors and result.replaced == 0
    assert kernel.routes[(254, "10.244.5.7/32", 0)] == felix
    assert "10.244.5.7/32" in table.conflicts


async def test_observed_foreign_route_makes_us_yield_and_its_removal_lets_us_back(table, kernel):
    desired = Route("10.244.5.7/32", nexthops=(Nexthop("192.0.2.7"),))
    table.set_desired([desired])
    await table.apply()
    felix = Route("10.244.5.7/32", nexthops=(Nexthop("", "cali1"),), proto=RTPROT_BOOT, priority=1024)
    watch = kernel.watch(exclude_proto=12)
    kernel.add_foreign(felix)
    assert table.observe(await anext(watch)) is True
    await table.apply()
    assert list(kernel.routes.values()) == [felix]  # ours withdrawn: a metric-0 route would shadow Felix's
    assert watch.queue.empty()  # our own deletion is filtered like our additions (someone else's passes)
    kernel.remove(felix)
    assert table.observe(await anext(watch)) is True
    await table.apply()
    assert ours(kernel) == {desired.dst: Route(desired.dst, nexthops=(Nexthop("192.0.2.7", "eth0"),))}


async def test_deletes_never_hit_a_foreign_route_that_overwrote_ours(table, kernel):
    table.set_desired([block(1)])
    await table.apply()
    other = Route("10.244.1.0/26", nexthops=(Nexthop("192.0.2.50", "eth0"),), proto=80)
    kernel.add_foreign(other)  # same kernel key: the kernel replaced ours; we did not observe it
    table.set_desired([])
    result = await table.apply()
    assert not result.errors  # ESRCH: our protocol is no longer there, which is what we wanted
    assert list(kernel.routes.values()) == [other]
    assert table.installed == 0


async def test_refused_routes(table, kernel, caplog):
    table.set_desired([
        Route("10.1.0.0/26", nexthops=(Nexthop("192.0.2.7"),), table=100),
        Route("10.2.0.0/26", nexthops=(Nexthop("192.0.2.7"),), table=1000),
        Route("10.3.0.0/26", nexthops=(Nexthop("", "cali1"),)),
        Route("10.4.0.0/26", nexthops=(Nexthop("192.0.2.7", "wg-v6.cali"),)),
        block(1),
    ])
    await table.apply()
    assert set(table.refused) == {"10.1.0.0/26", "10.2.0.0/26", "10.3.0.0/26", "10.4.0.0/26"}
    assert "Felix's RouteTableRanges" in table.refused["10.1.0.0/26"]
    assert set(ours(kernel)) == {"10.244.1.0/26"}
    assert sum("refusing kernel route" in r.message for r in caplog.records) == 4
    caplog.clear()
    table.update([Route("10.3.0.0/26", nexthops=(Nexthop("", "cali1"),))])
    assert not caplog.records  # the same refusal is logged once


@pytest.mark.parametrize("number", [0, 1, 100, 250, 252, 255])
def test_refuses_to_manage_reserved_or_felix_tables(kernel, number):
    with pytest.raises(ValueError):
        RouteTable(kernel, table=number)


async def test_adopted_routes_wait_for_hold_release(kernel, registry):
    previous_run = [Route(f"10.244.{n}.0/26", nexthops=(Nexthop("192.0.2.7", "eth0"),)) for n in range(3)]
    for route in previous_run:
        kernel.add_foreign(route)  # written by our previous incarnation: proto 12
    kernel.calls.clear()
    table = RouteTable(kernel, registry=registry)  # deletes held by default: restart safety
    table.set_desired([block(0)])
    result = await table.apply()
    assert kernel.calls == []  # adopted as-is, nothing rewritten
    assert result.held == 2 and len(ours(kernel)) == 3
    table.update([block(1)])
    await table.apply()
    assert kernel.calls == []  # re-learned before release: already right
    table.hold_deletes(False)
    result = await table.apply()
    assert result.deleted == 1 and set(ours(kernel)) == {"10.244.0.0/26", "10.244.1.0/26"}


async def test_the_hold_covers_only_adopted_routes_this_run_has_not_wanted(kernel, registry):
    """A route learned (or re-learned) in this run and then withdrawn goes at once, hold or not: a peer
    without graceful restart that drops must not leave its routes for the whole start-up hold."""
    for n in (1, 2, 3):
        kernel.add_foreign(block(n))  # left by our previous incarnation
    table = RouteTable(kernel, registry=registry)  # holding deletes: restart safety
    table.set_desired([block(1), block(4)])  # 1 re-learned, 4 new this run; 2 and 3 not (yet)
    await table.apply()
    table.set_desired([block(2, "192.0.2.9")])  # 1 and 4 withdrawn, 2 re-learned with a new next hop
    result = await table.apply()
    assert (result.replaced, result.deleted, result.held) == (1, 2, 1)
    assert set(ours(kernel)) == {"10.244.2.0/26", "10.244.3.0/26"}  # 3: adopted, never wanted: held
    table.hold_deletes(False)
    assert (await table.apply()).deleted == 1
    assert set(ours(kernel)) == {"10.244.2.0/26"}


async def test_errors_are_counted_and_retried_with_backoff(table, kernel, registry, clock):
    kernel.failures["10.244.1.0/26"] = "ENETUNREACH: Network is unreachable"
    table.set_desired([block(1), block(2)])
    result = await table.apply()
    assert [r.dst for r, _ in result.errors] == ["10.244.1.0/26"]
    assert metric(registry, "calico_bgp_kernel_route_errors_total") == 1
    assert table.next_retry() == clock.now + 1.0
    kernel.calls.clear()
    await table.apply()
    assert kernel.calls == []  # back-off not elapsed
    clock.now += 1.0
    await table.apply()
    assert metric(registry, "calico_bgp_kernel_route_errors_total") == 2
    assert table.next_retry() == clock.now + 2.0  # doubled
    del kernel.failures["10.244.1.0/26"]
    clock.now += 2.0
    await table.apply()
    assert set(ours(kernel)) == {"10.244.1.0/26", "10.244.2.0/26"} and table.next_retry() is None


async def test_resync_repairs_drift(table, kernel, registry):
    table.set_desired([block(1), block(2), block(3)])
    await table.apply()
    kernel.remove(block(1))  # deleted behind our back
    kernel.add_foreign(Route("10.244.2.0/26", nexthops=(Nexthop("192.0.2.66", "eth0"),)))  # edited, proto 12
    kernel.add_foreign(Route("10.244.4.0/26", nexthops=(Nexthop("192.0.2.66", "eth0"),)))  # stray proto 12
    result = await table.resync()
    assert result.repaired == 3
    assert metric(registry, "calico_bgp_kernel_route_repairs_total") == 3
    assert {d: r.nexthops[0].gateway for d, r in ours(kernel).items()} == {
        "10.244.1.0/26": "192.0.2.7", "10.244.2.0/26": "192.0.2.7", "10.244.3.0/26": "192.0.2.7"
    }


async def test_metric_change_installs_the_new_key_then_removes_the_old(table, kernel):
    table.set_desired([block(1)])
    await table.apply()
    kernel.calls.clear()
    table.set_desired([Route("10.244.1.0/26", nexthops=(Nexthop("192.0.2.7"),), priority=1024)])
    await table.apply()
    assert [(op, r.priority) for op, r in kernel.calls] == [("create", 1024), ("delete", 0)]
    assert [r.priority for r in ours(kernel).values()] == [1024]


async def test_downed_device_forces_a_read_back_and_reinstall(table, kernel, clock):
    tunnel = Route("10.244.1.0/26", nexthops=(Nexthop("198.51.100.7", "tunl0", True),))
    table.set_desired([tunnel, block(2)])
    await table.apply()
    watch = kernel.watch(exclude_proto=12)
    kernel.set_link("tunl0", up=False)  # IPv4 drops the route silently
    event = await anext(watch)
    assert event == LinkEvent(LINK_DOWN, kernel.links["tunl0"], "tunl0")
    assert table.observe(event) is True
    result = await table.apply()
    assert [text.split(":")[0] for _, text in result.errors] == ["ENETDOWN"]
    kernel.set_link("tunl0", up=True)
    event = await anext(watch)
    assert event.action == LINK_UP and table.observe(event) is True  # no need to wait for the back-off
    await table.apply()
    assert set(ours(kernel)) == {"10.244.1.0/26", "10.244.2.0/26"}


async def test_felix_device_events_are_ignored(table):
    assert table.observe(LinkEvent(LINK_DOWN, 9, "cali1")) is False


@pytest.mark.parametrize(
    ("want", "have", "same"),
    [
        (Nexthop("192.0.2.7"), Nexthop("192.0.2.7", "eth0"), True),
        (Nexthop("192.0.2.7", "eth0"), Nexthop("192.0.2.7", "eth1"), False),
        (Nexthop("192.0.2.7", "tunl0", True), Nexthop("192.0.2.7", "tunl0"), False),
        (Nexthop("192.0.2.7"), Nexthop("192.0.2.8", "eth0"), False),
    ],
    ids=["unset device matches any", "device differs", "onlink differs", "gateway differs"],
)
def test_same_route(want, have, same):
    assert same_route(Route("10.0.0.0/8", nexthops=(want,)), Route("10.0.0.0/8", nexthops=(have,))) is same


async def test_link_down_reads_back_once_per_transition(table, kernel):
    await table.apply()
    dumps = kernel.dumps
    down = LinkEvent(LINK_DOWN, 5, "eth1")
    assert table.observe(down) is True
    await table.apply()
    assert kernel.dumps == dumps + 1
    assert table.observe(down) is False  # still down: an attribute change, nothing was flushed
    await table.apply()
    assert kernel.dumps == dumps + 1
    assert table.observe(LinkEvent(LINK_UP, 5, "eth1")) is False  # nothing waits for it
    assert table.observe(LinkEvent(LINK_UP, 5, "eth1")) is False


async def test_our_route_deleted_by_someone_else_is_reinstalled_and_counted(table, kernel, registry):
    table.set_desired([block(1), block(2)])
    await table.apply()
    watch = kernel.watch(exclude_proto=12)  # our own additions are filtered; deletions are not
    kernel.remove(block(1))
    assert table.observe(await anext(watch)) is True
    result = await table.apply()
    assert result.replaced == 1 and set(ours(kernel)) == {"10.244.1.0/26", "10.244.2.0/26"}
    assert metric(registry, "calico_bgp_kernel_route_repairs_total") == 1
    assert watch.queue.empty()  # the reinstall itself is not echoed back


async def test_invalidate_makes_the_next_apply_read_the_table_back(table, kernel):
    table.set_desired([block(1)])
    await table.apply()
    dumps = kernel.dumps
    kernel.routes.pop(next(iter(kernel.routes)))  # lost: no notification reached us
    await table.apply()
    assert kernel.dumps == dumps and ours(kernel) == {}  # nothing dirty, nothing re-read
    table.invalidate()  # the watcher re-dumped after an overflow
    result = await table.apply()
    assert kernel.dumps == dumps + 1 and result.replaced == 1 and set(ours(kernel)) == {"10.244.1.0/26"}


async def test_kernel_refusals_are_reported_until_the_route_goes_in(table, kernel, clock):
    route = block(1)
    kernel.failures[route.dst] = "EINVAL: Egress device not specified"
    table.set_desired([route])
    await table.apply()
    assert table.failures == {route.dst: "EINVAL: Egress device not specified"}
    del kernel.failures[route.dst]
    clock.now += 60
    await table.apply()
    assert table.failures == {} and route.dst in ours(kernel)


@pytest.mark.parametrize("seed", range(8))
async def test_installed_count_follows_every_path_that_changes_the_programmed_view(kernel, clock, seed):
    """``installed`` is a running count (the hot path must not sum 100k entries on every apply); a random
    walk through desire, metric moves, refusals, foreign deletions and read-backs keeps it true."""
    import random

    rng = random.Random(seed)
    table = RouteTable(kernel, clock=clock, hold_deletes=False)
    watch = kernel.watch(exclude_proto=12)

    def want(n: int, metric: int = 0) -> Route:
        return Route(f"10.244.{n}.0/26", nexthops=(Nexthop("192.0.2.7"),), priority=metric)

    for _ in range(60):
        step = rng.choice(("desire", "metric", "refuse", "someone_deletes", "resync"))
        kernel.failures.clear()
        if step == "desire":
            table.set_desired([want(n) for n in rng.sample(range(12), rng.randint(0, 12))])
        elif step == "metric":
            table.set_desired([want(n, rng.choice((0, 5))) for n in rng.sample(range(12), 6)])
        elif step == "refuse":
            kernel.failures[f"10.244.{rng.randrange(12)}.0/26"] = "EINVAL: refused by the test"
            table.set_desired([want(n) for n in rng.sample(range(12), 8)])
        elif step == "someone_deletes" and ours(kernel):
            kernel.remove(ours(kernel)[rng.choice(sorted(ours(kernel)))])
        elif step == "resync":
            await table.resync()
        while not watch.queue.empty():
            event = watch.queue.get_nowait()
            if event is not None:
                table.observe(event)
        clock.now += rng.choice((0.0, 60.0))  # sometimes past the retry back-off
        await table.apply()
        truth = sum(1 for r in kernel.routes.values() if r.proto == 12)
        assert table.installed == sum(len(v) for v in table._view.programmed.values()) == truth


def test_the_speakers_fake_table_keeps_the_same_desired_set_as_the_real_one(table):
    """Contract: FakeRouteTable (the speaker tests' seam) agrees with RouteTable over the calls the speaker
    makes, so a speaker test's expectations about desired routes hold for the real table."""
    fake = FakeRouteTable()
    a = Route(dst="10.65.1.0/26", nexthops=(Nexthop(gateway="10.0.0.12"),))
    b = Route(dst="10.65.2.0/26", nexthops=(Nexthop(gateway="10.0.0.13"),))
    b2 = Route(dst="10.65.2.0/26", nexthops=(Nexthop(gateway="10.0.0.14"),))
    own = Route(dst="10.65.3.0/26", type=BLACKHOLE)
    calls = [
        ("set_desired", ([a, b],)),
        ("update", ({b2.dst: b2}, ())),
        ("update", ([own], [a.dst])),
        ("update", ((), ["10.99.0.0/16"])),  # removing what is not there
        ("set_desired", ([a, own],)),
    ]
    for name, args in calls:
        getattr(table, name)(*args)
        getattr(fake, name)(*args)
        assert dict(table.desired) == fake.desired, name
