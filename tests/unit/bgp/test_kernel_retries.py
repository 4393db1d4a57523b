"""The speaker over a real RouteTable and FakeNetlink: a route the kernel refuses, or a destination a foreign
route holds, costs only its own retries, never a recomputation of the other routes; and a peer that
leaves the intent leaves none of the speaker's per-peer maps behind."""

from __future__ import annotations

import json

from bgp.speaker import Speaker
from confgen.intent import NodeIntent, PeerIntent, PoolIntent
from routes.model import RTPROT_BOOT, Nexthop, Route
from routes.table import RETRY_MAX, RouteTable
from routes.testing import FakeNetlink

ME = "10.0.0.11"
PEER = "10.0.0.12"
REFUSED = "ENETUNREACH: Network is unreachable"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingTable(RouteTable):
    """A RouteTable that counts how often the speaker hands it desired routes (each is a recomputation)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recomputed = 0

    def set_desired(self, routes) -> None:
        self.recomputed += 1
        super().set_desired(routes)

    def update(self, upserts=(), removes=()) -> None:
        self.recomputed += 1
        super().update(upserts, removes)


def intent(peers=(PEER,)) -> NodeIntent:
    return NodeIntent(
        node="node1",
        router_id=ME,
        local_as=64512,
        ipv4_address=ME,
        ipv4_network="10.0.0.0/24",
        peers=tuple(
            PeerIntent(name=f"Mesh_{p.replace('.', '_')}", address=p, family="ipv4", peer_as=64512,
                       local_as=64512, local_address=ME, passive=p > ME)
            for p in peers
        ),
        pools=(PoolIntent("192.168.0.0/16", ipip_mode="Never"),),
        local_blocks=("192.168.1.0/26",),
    )


def line(peer: str, kind: str, body: dict) -> str:
    return json.dumps({"type": kind, "neighbor": {"address": {"local": ME, "peer": peer}, **body}})


def up(peer: str) -> str:
    return line(peer, "state", {"asn": {"local": 64512, "peer": 64512}, "state": "up"})


def announce(peer: str, prefixes: list[str]) -> str:
    update = {
        "attribute": {"origin": "igp", "local-preference": 100},
        "announce": {"ipv4 unicast": {peer: [{"nlri": p} for p in prefixes]}},
    }
    return line(peer, "update", {"message": {"update": update}})


def learned(n: int) -> list[str]:
    return [f"192.168.{100 + i // 64}.{(i % 64) * 4}/30" for i in range(n)]


async def test_a_refused_route_and_a_foreign_held_one_cost_only_their_own_writes():
    clock, kernel = Clock(), FakeNetlink()
    table = CountingTable(kernel, clock=clock, hold_deletes=False)
    speaker = Speaker(send=_discard, route_table=table, clock=clock, wallclock=clock)
    prefixes = learned(300)
    refused, held = prefixes[7], prefixes[8]
    kernel.failures[refused] = REFUSED
    kernel.add_foreign(Route(held, nexthops=(Nexthop("", "eth0"),), proto=RTPROT_BOOT))  # e.g. an admin's
    speaker.set_intent(intent())
    speaker.set_workload_routes(())
    speaker.handle_line(up(PEER))
    speaker.handle_line(announce(PEER, prefixes))
    await speaker.flush()
    assert table.failures == {refused: REFUSED} and set(table.conflicts) == {held}
    recomputed = table.recomputed
    kernel.calls.clear()
    for _ in range(3600):  # an hour of the daemon's loops: the speaker's, and the resync loop's retry
        clock.now += 1.0
        speaker.tick()
        await speaker.flush()
        await table.retry_due()
    assert table.recomputed == recomputed  # not one recomputation of the 300 routes
    writes = [route.dst for _, route in kernel.calls]
    assert set(writes) == {refused}  # the foreign-held destination waits for its holder, untouched
    assert len(writes) <= 5 + 3600 / RETRY_MAX  # 1, 2, 4, 8, 16 s, then every RETRY_MAX
    del kernel.failures[refused]
    clock.now += RETRY_MAX
    await table.retry_due()
    assert table.failures == {} and table.next_retry() is None
    assert {r.dst for r in kernel.routes.values() if r.proto == 12} == (set(prefixes) - {held}) | {
        "192.168.1.0/26"
    }


async def test_a_peer_that_leaves_the_intent_leaves_no_per_peer_entry_behind():
    clock = Clock()
    speaker = Speaker(send=_discard, route_table=RouteTable(FakeNetlink(), clock=clock), clock=clock,
                      wallclock=clock)
    other = "10.0.0.13"
    speaker.set_intent(intent(peers=(PEER, other)))
    for peer in (PEER, other):  # up, but no End-of-RIB yet: the workloads were never reported
        speaker.handle_line(up(peer))
        speaker.handle_line(announce(peer, learned(3)))
    await speaker.flush()
    speaker.set_intent(intent(peers=(PEER,)))
    await speaker.flush()
    sessions, out = speaker._sessions, speaker._out
    per_peer = {
        "status": sessions._status, "synced": sessions._synced, "sent": out._sent,
        "offers": sessions._offers, "eor_due": out._eor_due, "resend": out._resend,
        "teardowns": sessions._teardowns, "malformed": speaker.malformed_withdraws,
        "prefix_limit_trips": speaker.limits.prefix_limit_trips, "peers": sessions.peers,
    }
    assert {name: other for name, held in per_peer.items() if other in held} == {}
    assert speaker.received_count(other) == 0


async def _discard(lines) -> None:
    return None
