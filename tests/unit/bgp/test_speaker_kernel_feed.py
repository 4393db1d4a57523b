"""The kernel feed (``bgp.kernel_feed``) and the speaker's kernel-only path.

Kernel-side events (a route of ours deleted by someone else, a device back, held deletes released, a next hop
resolving differently, a refused write due again) reach the route table without a best-path pass or an
Adj-RIB-Out diff: the speaker's ``last_flush`` says what a flush cost, and a counting RouteTable says how
often the desired routes were recomputed. The daemon's wiring (``NodeDaemon._kernel_event``) is held to the
same.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from speaker_rig import PEER, Clock, CountingTable
from speaker_rig import announce_line as announce
from speaker_rig import mesh_intent as intent
from speaker_rig import up_line as up

from bgp.daemon import NodeConfig, NodeDaemon
from bgp.exabgp.events import PathAttributes
from bgp.kernel_feed import APPLIED, IDLE, REBUILT, UPDATED, KernelFeed, kernel_pools, learned
from bgp.rib import Path, Selected, multipath_of, selected_entry
from bgp.speaker import Speaker
from confgen.intent import PoolIntent
from routes.model import ADD, DEL, RTPROT_BIRD, RTPROT_BOOT, Nexthop, Route, RouteEvent
from routes.recursive import NexthopResolver
from routes.testing import FakeNetlink, FakeRouteTable

GATEWAY = "10.0.0.1"
RTPROT_KERNEL_ROUTE = 2  # the kernel's own routes (a connected subnet)

LEARNED = [f"192.168.{100 + i // 64}.{(i % 64) * 4}/30" for i in range(50)]
CONNECTED = Route("10.0.0.0/24", nexthops=(Nexthop("", "eth0"),), proto=RTPROT_KERNEL_ROUTE)


class Rig:
    """A speaker over a counting RouteTable, FakeNetlink and a NexthopResolver, wired as the daemon wires
    them; ``kernel_event`` is the daemon's own event routing when ``daemon`` is given."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.kernel = FakeNetlink()
        self.kernel.add_foreign(CONNECTED)
        self.table = CountingTable(self.kernel, clock=self.clock, hold_deletes=False)
        self.resolver = NexthopResolver(proto=RTPROT_BIRD)
        self.resolver.load([CONNECTED])
        self.sent: list[str] = []
        self.speaker = Speaker(
            send=self._send,
            route_table=self.table,
            clock=self.clock,
            wallclock=self.clock,
            resolve=self.resolver.resolve,
        )

    async def _send(self, lines) -> None:
        self.sent.extend(lines)

    async def converge(self) -> None:
        self.speaker.set_intent(intent())
        self.speaker.set_workload_routes(())
        self.speaker.handle_line(up())
        self.speaker.handle_line(announce(LEARNED))
        await self.speaker.flush()
        assert self.speaker.last_flush.selected >= len(LEARNED)  # the counters count
        self.sent.clear()
        self.recomputed, self.applies = self.table.recomputed, self.table.applies

    def ours(self) -> dict[str, Route]:
        return {r.dst: r for r in self.kernel.routes.values() if r.proto == RTPROT_BIRD}

    def assert_kernel_only(self, kernel: str, recomputed: int) -> None:
        work = self.speaker.last_flush
        assert (work.selected, work.compared, work.commands) == (0, 0, 0)
        assert work.kernel == kernel
        assert self.table.recomputed - self.recomputed == recomputed
        assert self.table.applies == self.applies + 1
        assert self.sent == []


def deleted_by_someone_else(kernel: FakeNetlink, dst: str) -> RouteEvent:
    held = next(r for r in kernel.routes.values() if r.dst == dst and r.proto == RTPROT_BIRD)
    kernel.remove(held)
    return RouteEvent(DEL, held, held.nexthops[0].ifname if held.nexthops else "")


async def test_a_route_of_ours_deleted_by_someone_else_is_reinstalled_without_bgp_work():
    rig = Rig()
    await rig.converge()
    wanted = rig.ours()
    event = deleted_by_someone_else(rig.kernel, LEARNED[3])
    assert rig.table.observe(event) and not rig.resolver.observe(event)
    rig.speaker.kernel_changed()
    await rig.speaker.flush()
    rig.assert_kernel_only(APPLIED, recomputed=0)
    assert rig.ours() == wanted


async def test_a_next_hop_resolving_elsewhere_recomputes_the_kernel_routes_only():
    rig = Rig()
    await rig.converge()
    assert {r.nexthops[0].gateway for dst, r in rig.ours().items() if dst in LEARNED} == {PEER}
    # A host route to the peer through a gateway: the BGP routes now go via that gateway (gateway recursive).
    detour = Route(f"{PEER}/32", nexthops=(Nexthop(GATEWAY, "eth0"),), proto=RTPROT_BOOT)
    rig.kernel.add_foreign(detour)
    assert rig.resolver.observe(RouteEvent(ADD, detour, "eth0"))
    rig.speaker.nexthops_changed()
    await rig.speaker.flush()
    rig.assert_kernel_only(REBUILT, recomputed=1)
    assert {r.nexthops[0].gateway for dst, r in rig.ours().items() if dst in LEARNED} == {GATEWAY}


async def test_deletes_released_after_the_hold_are_carried_out_without_bgp_work():
    rig = Rig()
    rig.table.hold_deletes(True)
    # A route a previous run left that nobody announces any more: adopted, its delete held.
    left = Route("192.168.250.0/30", nexthops=(Nexthop(PEER, "eth0"),), proto=RTPROT_BIRD)
    rig.kernel.add_foreign(left)
    await rig.converge()
    assert left.dst in rig.ours()
    rig.table.hold_deletes(False)  # the daemon's resync loop, once the sweep gate opens
    rig.speaker.kernel_changed()
    await rig.speaker.flush()
    rig.assert_kernel_only(APPLIED, recomputed=0)
    assert left.dst not in rig.ours()


async def test_a_refused_route_due_again_costs_no_flush_work():
    rig = Rig()
    rig.kernel.failures[LEARNED[7]] = "ENETUNREACH: Network is unreachable"
    await rig.converge()
    del rig.kernel.failures[LEARNED[7]]
    rig.clock.now += 60.0
    await rig.table.retry_due()  # the daemon's resync loop; the speaker is not involved
    assert LEARNED[7] in rig.ours()
    rig.speaker.tick()
    await rig.speaker.flush()
    work = rig.speaker.last_flush
    assert (work.selected, work.compared, work.kernel) == (0, 0, IDLE)
    assert rig.table.recomputed == rig.recomputed


async def test_the_daemon_routes_kernel_events_to_the_kernel_only_path(tmp_path):
    rig = Rig()
    daemon = NodeDaemon(
        NodeConfig(
            node="node1", etcd_endpoints=("http://127.0.0.1:9",), run_dir=tmp_path / "run", metrics_port=0
        )
    )
    daemon.table, daemon.resolver, daemon.speaker = rig.table, rig.resolver, rig.speaker
    await rig.converge()
    daemon._kernel_event(deleted_by_someone_else(rig.kernel, LEARNED[0]))
    await rig.speaker.flush()
    rig.assert_kernel_only(APPLIED, recomputed=0)
    assert LEARNED[0] in rig.ours()
    rig.recomputed, rig.applies = rig.table.recomputed, rig.table.applies
    daemon._kernel_dump([CONNECTED])  # a re-dump: the resolver starts over, so every route is worked out
    await rig.speaker.flush()
    rig.assert_kernel_only(REBUILT, recomputed=1)


async def test_bgp_changes_and_kernel_repairs_in_one_flush_cost_only_the_changed_prefixes():
    rig = Rig()
    await rig.converge()
    event = deleted_by_someone_else(rig.kernel, LEARNED[1])
    rig.table.observe(event)
    rig.speaker.kernel_changed()
    rig.speaker.handle_line(announce(["10.50.0.0/24"]))
    await rig.speaker.flush()
    work = rig.speaker.last_flush
    assert (work.selected, work.compared, work.kernel) == (1, 1, UPDATED)
    assert {LEARNED[1], "10.50.0.0/24"} <= rig.ours().keys()


# ------------------------------------------------------------------ KernelFeed alone

BLOCK = "192.168.1.0/26"  # the intent's local block: a blackhole in every desired set


def selected(prefix: str, *nexthops: str) -> Selected:
    attributes = PathAttributes(local_pref=100)
    paths = tuple(Path(prefix=prefix, peer=h, nexthop=h, attributes=attributes) for h in nexthops)
    return selected_entry(paths[0], paths)


def with_pref(entry: Selected, pref: int | None) -> Selected:
    paths = tuple(replace(p, attributes=PathAttributes(local_pref=pref)) for p in multipath_of(entry))
    return selected_entry(paths[0], paths)


@pytest.mark.parametrize(
    "loc, expected",
    [
        pytest.param(
            {"10.9.0.0/24": selected("10.9.0.0/24", PEER)}, {"10.9.0.0/24": ((PEER,), 100)}, id="one-path"
        ),
        pytest.param(
            {"10.9.0.0/24": selected("10.9.0.0/24", "10.0.0.13", PEER, "10.0.0.13")},
            {"10.9.0.0/24": (("10.0.0.12", "10.0.0.13"), 100)},
            id="multipath-sorted-once",
        ),
        pytest.param(
            {"10.9.0.0/24": selected("10.9.0.0/24", PEER), "10.8.0.0/24": selected("10.8.0.0/24", PEER)},
            {"10.9.0.0/24": ((PEER,), 100), "10.8.0.0/24": ((PEER,), 100)},
            id="same-hop-twice",
        ),
        pytest.param(
            {
                "10.9.0.0/24": selected("10.9.0.0/24", PEER),
                "10.8.0.0/24": with_pref(selected("10.8.0.0/24", PEER), 200),
                "10.7.0.0/24": with_pref(selected("10.7.0.0/24", PEER), None),
                "10.6.0.0/24": selected("10.6.0.0/24", "10.0.0.13"),
            },
            {
                "10.9.0.0/24": ((PEER,), 100),
                "10.8.0.0/24": ((PEER,), 200),
                "10.7.0.0/24": ((PEER,), None),
                "10.6.0.0/24": (("10.0.0.13",), 100),
            },
            id="prefs-and-hops-kept-apart",
        ),
    ],
)
def test_learned_gives_each_prefix_its_hops_and_local_pref(loc, expected):
    asked = [*loc, "10.5.0.0/24"]  # a prefix no longer selected is left out
    got = learned(loc, asked)
    assert {p: (v.nexthops, v.local_pref) for p, v in got.items()} == expected


@pytest.mark.parametrize(
    "steps, asked, desired",
    [
        pytest.param([], IDLE, set(), id="nothing-owed"),
        pytest.param(["intent"], REBUILT, {BLOCK, "10.9.0.0/24"}, id="an-intent-rebuilds"),
        pytest.param(["intent", "flush", "repair"], APPLIED, {BLOCK, "10.9.0.0/24"}, id="repair"),
        pytest.param(["intent", "flush", "rebuild"], REBUILT, {BLOCK, "10.9.0.0/24"}, id="rebuild"),
        pytest.param(
            ["intent", "flush", "change"],
            UPDATED,
            {BLOCK, "10.9.0.0/24", "10.8.0.0/24"},
            id="changed-prefixes",
        ),
        pytest.param(
            ["intent", "flush", "change", "repair", "rebuild"],
            REBUILT,
            {BLOCK, "10.9.0.0/24", "10.8.0.0/24"},
            id="rebuild-covers-all",
        ),
        pytest.param(["repair", "rebuild"], IDLE, set(), id="no-intent-yet"),
    ],
)
async def test_the_feed_asks_the_table_for_what_is_owed(steps, asked, desired):
    table = FakeRouteTable()
    feed = KernelFeed(table)
    loc = {"10.9.0.0/24": selected("10.9.0.0/24", PEER)}
    changed: set[str] = set()
    for step in steps:
        if step == "intent":
            node = intent()
            feed.set_intent(node, kernel_pools(node), ())
        elif step == "flush":
            assert await feed.flush(loc, ()) != IDLE
        elif step == "repair":
            feed.repair()
        elif step == "rebuild":
            feed.rebuild()
        elif step == "change":
            loc["10.8.0.0/24"] = selected("10.8.0.0/24", PEER)
            changed.add("10.8.0.0/24")
    applies = table.applies
    assert await feed.flush(loc, changed) == asked
    assert table.applies == applies + (asked != IDLE)
    assert set(table.desired) == desired
    assert await feed.flush(loc, ()) == IDLE  # everything owed was paid


async def test_the_feed_rejects_the_service_ranges_and_keeps_pools_per_intent():
    table = FakeRouteTable()
    feed = KernelFeed(table)
    node = intent(pools=(PoolIntent("192.168.0.0/16", ipip_mode="Always"),))
    pools = kernel_pools(node)
    assert [(p.cidr, p.ipip_mode) for p in pools] == [("192.168.0.0/16", "Always")]
    feed.set_intent(node, pools, ("10.96.0.0/12",))
    loc = {p: selected(p, PEER) for p in ("192.168.7.0/26", "10.96.0.0/24")}
    await feed.flush(loc, ())
    assert set(table.desired) == {"192.168.1.0/26", "192.168.7.0/26"}  # the service range is kube-proxy's
    assert table.desired["192.168.7.0/26"].nexthops == (Nexthop(PEER, "tunl0", onlink=True),)
