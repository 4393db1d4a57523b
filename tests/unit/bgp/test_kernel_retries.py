"""The speaker over a real RouteTable and FakeNetlink: a route the kernel refuses, or a destination a foreign
route holds, costs only its own retries, never a recomputation of the other routes; and a peer that
leaves the intent leaves none of the speaker's per-peer maps behind."""

from __future__ import annotations

from speaker_rig import PEER, Clock, CountingTable, announce_line, up_line
from speaker_rig import mesh_intent as intent

from bgp.speaker import Speaker
from routes.model import RTPROT_BOOT, Nexthop, Route
from routes.table import RETRY_MAX, RouteTable
from routes.testing import FakeNetlink

REFUSED = "ENETUNREACH: Network is unreachable"


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
    speaker.handle_line(up_line(PEER))
    speaker.handle_line(announce_line(prefixes))
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
    speaker = Speaker(
        send=_discard, route_table=RouteTable(FakeNetlink(), clock=clock), clock=clock, wallclock=clock
    )
    other = "10.0.0.13"
    speaker.set_intent(intent(peers=(PEER, other)))
    for peer in (PEER, other):  # up, but no End-of-RIB yet: the workloads were never reported
        speaker.handle_line(up_line(peer))
        speaker.handle_line(announce_line(learned(3), peer))
    await speaker.flush()
    speaker.set_intent(intent(peers=(PEER,)))
    await speaker.flush()
    sessions, out = speaker._sessions, speaker._out
    per_peer = {
        "status": sessions._status,
        "synced": sessions._synced,
        "sent": out._sent,
        "offers": sessions._offers,
        "eor_due": out._eor_due,
        "resend": out._resend,
        "teardowns": sessions._teardowns,
        "malformed": speaker.malformed_withdraws,
        "prefix_limit_trips": speaker.limits.prefix_limit_trips,
        "peers": sessions.peers,
    }
    assert {name: other for name, held in per_peer.items() if other in held} == {}
    assert speaker.received_count(other) == 0


async def _discard(lines) -> None:
    return None
