"""Long-lived graceful restart (RFC 9494), receive side: the stale lifecycle with an injected clock, the
ranking and export of LLGR-stale paths, the peer's capability as ExaBGP passes it on, and the whole path
through the speaker to the kernel and `calico-bgp routes` (docs/graceful-restart.md)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from speaker_rig import Clock

from bgp import llgr
from bgp.exabgp import events as ev
from bgp.exabgp.events import PathAttributes
from bgp.graceful import GracefulRestarts
from bgp.policy import Candidate, NodePolicy
from bgp.rib import AdjRibIn, Path, select
from bgp.routes_view import render_routes
from bgp.speaker import Speaker
from confgen.intent import GLOBAL, MESH, NodeIntent, PeerIntent, PoolIntent
from routes.testing import FakeRouteTable

ME, PEER, OTHER = "10.0.0.11", "10.0.0.254", "10.0.0.12"
A, B, C, D = "192.168.2.0/26", "192.168.3.0/26", "fd00:2::/122", "192.168.4.0/26"
NO_LLGR = (llgr.NO_LLGR,)

# ------------------------------------------------------------------ bgp.llgr and the capability


@pytest.mark.parametrize(
    ("ours", "family", "offered", "expected"),
    [
        (3600, "ipv4", None, 3600),  # no capability in the OPEN: ours
        (3600, "ipv4", (("ipv4 unicast", 60),), 60),  # the peer's is shorter
        (60, "ipv4", (("ipv4 unicast", 3600),), 60),  # ours is shorter
        (3600, "ipv6", (("ipv4 unicast", 60),), 0),  # offered, not for this family
        (3600, "ipv6", (("ipv4 unicast", 60), ("ipv6 unicast", 90)), 90),
        (3600, "ipv4", (), 0),  # offered for no family we know
        (3600, "ipv4", (("ipv4 unicast", 0),), 0),
        (0, "ipv4", None, 0),  # not in long-lived mode
    ],
)
def test_stale_time(ours, family, offered, expected):
    assert llgr.stale_time(ours, family, offered) == expected


def _llgr_tuple(afi, safi, flags, seconds):
    return f"{afi:04X}{safi:02X}{flags:02X}{seconds:06X}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_llgr_tuple(1, 1, 0x80, 7200), (("ipv4 unicast", 7200),)),
        (
            _llgr_tuple(1, 1, 0, 7200) + _llgr_tuple(2, 1, 0x80, 60),
            (("ipv4 unicast", 7200), ("ipv6 unicast", 60)),
        ),
        (_llgr_tuple(1, 1, 0, 0xFFFFFF), (("ipv4 unicast", 0xFFFFFF),)),
        (_llgr_tuple(1, 128, 0, 60), ()),  # a family we never carry (VPNv4)
        ("", ()),  # the capability with no family
        ("00010180001C", None),  # 6 bytes: malformed, as if not offered
        ("zz", None),
    ],
)
def test_the_peers_llgr_capability_from_exabgps_open(raw, expected):
    # The shape ExaBGP 5.0 gives a capability it does not know (code 71 among them).
    capabilities = {
        "64": {"name": "graceful restart", "time": 120, "address-family-flags": {}, "restart-flags": []},
        "71": {"name": "unknown", "iana": "unassigned", "value": 71, "raw": raw},
    }
    line = _open_line(PEER, capabilities)
    (event,) = ev.parse_line(line)
    assert isinstance(event, ev.Open) and event.restart_time == 120 and event.llgr == expected


def test_an_open_without_the_capability():
    (event,) = ev.parse_line(_open_line(PEER, {"64": {"name": "graceful restart", "time": 120}}))
    assert isinstance(event, ev.Open) and event.llgr is None


# ------------------------------------------------------------------ bgp.graceful: the lifecycle


def _state(rib: AdjRibIn) -> dict[str, str]:
    """prefix -> fresh | stale | llgr for the peer's paths."""
    states = {}
    for prefix in rib.peer_prefixes(PEER):
        (path,) = [p for p in rib.paths(prefix) if p.peer == PEER]
        if llgr.is_llgr_stale(path.attributes.communities):
            assert rib.is_stale(PEER, prefix)  # LLGR-stale is a kind of stale: End-of-RIB sweeps it too
            states[prefix] = "llgr"
        else:
            states[prefix] = "stale" if rib.is_stale(PEER, prefix) else "fresh"
    return states


def _learn(rib: AdjRibIn, prefix: str, communities=()) -> None:
    rib.add(Path(prefix=prefix, peer=PEER, nexthop=PEER, attributes=PathAttributes(communities=communities)))


LIFECYCLE = {
    # steps: ("learn", prefix[, communities]) | ("down", restart time, stale time) | ("up", restart time)
    #        | ("eor", ipv6) | ("at", now); then prefix -> state, and whether a restart is still running
    "GR stale, then LLGR-stale, then swept": (
        [("learn", A), ("down", 30, 100), ("at", 29)], {A: "stale"}, True,
    ),
    "GR time over: LLGR-stale": ([("learn", A), ("down", 30, 100), ("at", 30)], {A: "llgr"}, True),
    "still LLGR-stale just before the stale time ends": (
        [("learn", A), ("down", 30, 100), ("at", 30), ("at", 129.9)], {A: "llgr"}, True,
    ),
    "swept when the stale time ends": ([("learn", A), ("down", 30, 100), ("at", 30), ("at", 130)], {}, False),
    "no graceful restart: LLGR-stale at once": ([("learn", A), ("down", 0, 100)], {A: "llgr"}, True),
    "NO_LLGR kept through GR": (
        [("learn", A, NO_LLGR), ("learn", B), ("down", 30, 100)], {A: "stale", B: "stale"}, True,
    ),
    "NO_LLGR dropped when it would become LLGR-stale": (
        [("learn", A, NO_LLGR), ("learn", B), ("down", 30, 100), ("at", 30)], {B: "llgr"}, True,
    ),
    "only NO_LLGR paths: nothing left, no restart": ([("learn", A, NO_LLGR), ("down", 0, 100)], {}, False),
    "End-of-RIB sweeps what the returning peer did not re-announce": (
        [("learn", A), ("learn", B), ("down", 30, 100), ("at", 40), ("up", 30), ("learn", A), ("eor", False)],
        {A: "fresh"}, False,
    ),
    "End-of-RIB is per family": (
        [("learn", A), ("learn", C), ("down", 0, 100), ("up", 30), ("eor", False)], {C: "llgr"}, True,
    ),
    "a fresh path replaces the LLGR-stale one": (
        [("learn", A), ("learn", B), ("down", 0, 100), ("up", 30), ("learn", A)],
        {A: "fresh", B: "llgr"}, True,
    ),
    "back without End-of-RIB: swept after its new restart time, no second long-lived phase": (
        [("learn", A), ("down", 0, 100), ("at", 10), ("up", 30), ("at", 39)], {A: "llgr"}, True,
    ),
    "back without End-of-RIB, restart time over": (
        [("learn", A), ("down", 0, 100), ("at", 10), ("up", 30), ("at", 40)], {}, False,
    ),
    "back without graceful restart: swept at once": ([("learn", A), ("down", 0, 100), ("up", 0)], {}, False),
    "a failed reconnect keeps the long-lived deadline": (
        [("learn", A), ("down", 30, 100), ("at", 30), ("at", 50), ("down", 30, 100), ("at", 130)], {}, False,
    ),
    "down again before End-of-RIB: graceful restart first, again": (
        [("learn", A), ("down", 0, 100), ("at", 10), ("up", 30), ("at", 20), ("down", 30, 100), ("at", 49)],
        {A: "llgr"}, True,  # still stamped from the first phase, stale again for the new restart
    ),
    "a late tick does not lengthen the long-lived phase": (
        [("learn", A), ("down", 30, 100), ("at", 60), ("at", 130)], {}, False,
    ),
    "no long-lived time: plain graceful restart": ([("learn", A), ("down", 30, 0), ("at", 30)], {}, False),
    "neither: dropped at once": ([("learn", A), ("down", 0, 0)], {}, False),
}  # fmt: skip


@pytest.mark.parametrize(("steps", "expected", "restarting"), LIFECYCLE.values(), ids=LIFECYCLE.keys())
def test_lifecycle(steps, expected, restarting):
    rib = AdjRibIn()
    restarts = GracefulRestarts(rib)
    now = 0.0
    for step in steps:
        if step[0] == "learn":
            _learn(rib, *step[1:])
        elif step[0] == "down":
            restarts.session_down(PEER, step[1], now, step[2])
        elif step[0] == "up":
            restarts.session_up(PEER, step[1], now)
        elif step[0] == "eor":
            restarts.end_of_rib(PEER, ipv6=step[1])
        else:
            now = step[1]
            restarts.expire(now)
    assert _state(rib) == expected
    assert (restarts.restart(PEER) is not None) == restarting


def test_the_changed_prefixes_are_returned_for_selection():
    rib = AdjRibIn()
    restarts = GracefulRestarts(rib)
    _learn(rib, A, NO_LLGR)
    _learn(rib, B)
    assert restarts.session_down(PEER, 30, 0.0, 100) == set()  # GR stale: nothing to select again
    assert restarts.expire(30.0) == {A, B}  # A removed, B's attributes changed
    assert restarts.expire(130.0) == {B}


STEP = st.one_of(
    st.tuples(st.just("learn"), st.sampled_from([A, B, C]), st.booleans()),
    st.tuples(st.just("withdraw"), st.sampled_from([A, B, C])),
    st.tuples(st.just("down"), st.sampled_from([0, 5]), st.sampled_from([0, 20])),
    st.tuples(st.just("up"), st.sampled_from([0, 5])),
    st.tuples(st.just("eor"), st.booleans()),
    st.tuples(st.just("wait"), st.integers(1, 30)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, max_size=30))
def test_any_flap_sequence(steps):
    """Whatever the peer does: an LLGR-stale path is always stale and never carries NO_LLGR; a path the
    peer sent since its latest session came up is never stale; stale paths exist only during a restart; and
    every stale path is gone once the peer stays away (or stays silent) for its restart and stale times."""
    rib = AdjRibIn()
    restarts = GracefulRestarts(rib)
    now, up, sent_since_up = 0.0, False, set()
    for step in steps:
        kind = step[0]
        if kind == "learn" and up:
            _learn(rib, step[1], NO_LLGR if step[2] else ())
            sent_since_up.add(step[1])
        elif kind == "withdraw" and up:
            rib.remove(PEER, step[1])
        elif kind == "down" and up:
            up, sent_since_up = False, set()
            restarts.session_down(PEER, step[1], now, step[2])
        elif kind == "up" and not up:
            up, sent_since_up = True, set()
            restarts.session_up(PEER, step[1], now)
        elif kind == "eor" and up:
            restarts.end_of_rib(PEER, ipv6=step[1])
        elif kind == "wait":
            now += step[1]
            restarts.expire(now)
        for prefix, state in _state(rib).items():
            (path,) = [p for p in rib.paths(prefix) if p.peer == PEER]
            if state == "llgr":
                assert llgr.NO_LLGR not in path.attributes.communities
            if prefix in sent_since_up:
                assert state == "fresh"
        if rib.stale_count(PEER):
            assert restarts.restart(PEER) is not None
    now += 26  # the longest restart time and stale time: 5 + 20, and one more
    restarts.expire(now)
    restarts.expire(now + 26)
    assert rib.stale_count(PEER) == 0 and restarts.restart(PEER) is None


# ------------------------------------------------------------------ ranking and export


def _path(peer, communities=(), **attributes):
    return Path(
        prefix=A, peer=peer, nexthop=peer, attributes=PathAttributes(communities=communities, **attributes)
    )


ATTRIBUTES = st.fixed_dictionaries(
    {
        "local_pref": st.one_of(st.none(), st.integers(0, 2**32 - 1)),
        "as_path": st.lists(st.integers(1, 65535), max_size=4).map(tuple),
        "origin": st.sampled_from(["igp", "egp", "incomplete"]),
        "med": st.one_of(st.none(), st.integers(0, 100)),
    }
)


@settings(max_examples=200, deadline=None)
@given(stale=ATTRIBUTES, fresh=ATTRIBUTES, ebgp=st.booleans())
def test_an_llgr_stale_path_loses_to_any_other(stale, fresh, ebgp):
    old = Path(prefix=A, peer="10.0.0.1", nexthop="10.0.0.1", ebgp=ebgp, attributes=PathAttributes(
        communities=(llgr.LLGR_STALE,), **stale
    ))  # fmt: skip
    new = Path(prefix=A, peer="10.0.0.2", nexthop="10.0.0.2", attributes=PathAttributes(**fresh))
    best, multipath = select([old, new])
    assert best == new and old not in multipath
    best, multipath = select([old])
    assert best == old and multipath == (old,)  # the only path still forwards


def _node(**kw):
    return NodeIntent(
        node="node1", router_id=ME, local_as=64512, ipv4_address=ME, ipv4_network="10.0.0.0/24",
        pools=(PoolIntent("192.168.0.0/16"),), local_blocks=("192.168.1.0/26",), **kw,
    )  # fmt: skip


def _peer(address, peer_as=64512, kind=MESH, rr_client=False, llgr_stale_time=0):
    return PeerIntent(
        name=f"p{address}", address=address, family="ipv4", peer_as=peer_as, local_as=64512, local_address=ME,
        kind=kind, rr_client=rr_client, llgr_stale_time=llgr_stale_time,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("to", "source"),
    [
        (_peer("10.0.0.14", rr_client=True), _peer(PEER, llgr_stale_time=3600)),  # reflected to a client
        (_peer("10.0.0.1", peer_as=65001, kind=GLOBAL), _peer(PEER, llgr_stale_time=3600)),  # to eBGP
        (_peer("10.0.0.13", rr_client=True), _peer(PEER)),  # whoever sent it with the community
    ],
    ids=["rr-client", "ebgp", "received-with-the-community"],
)
def test_llgr_stale_paths_go_to_no_peer(to, source):
    policy = NodePolicy(_node(rr_cluster_id="1.1.1.1"))
    fresh = _path(PEER)
    assert policy.export(to, Candidate(A, fresh), source) is not None  # the same path, fresh, does go
    stale = _path(PEER, communities=(llgr.LLGR_STALE,))
    assert policy.export(to, Candidate(A, stale), source) is None


# ------------------------------------------------------------------ the speaker: RIB, kernel and routes view


def _envelope(peer, kind, body):
    neighbor = {"address": {"local": ME, "peer": peer}, **body}
    return json.dumps({"exabgp": "5.0.0", "type": kind, "neighbor": neighbor})


def _open_line(peer, capabilities):
    body = {"asn": 65001, "hold_time": 90, "router_id": peer, "capabilities": capabilities}
    return _envelope(peer, "open", {"direction": "receive", "open": body})


def _announce(peer, prefixes, communities=()):
    attribute = {"origin": "igp", "community": [list(c) for c in communities]}
    update = {"attribute": attribute, "announce": {"ipv4 unicast": {peer: [{"nlri": p} for p in prefixes]}}}
    return _envelope(peer, "update", {"message": {"update": update}})


class Rig:
    """A node with an eBGP ToR in long-lived mode (stale time 6 s) and a mesh peer."""

    def __init__(self, stale_time=6):
        self.clock = Clock(0.0)
        self.table = FakeRouteTable()
        self.sent: list[str] = []

        async def send(lines):
            self.sent.extend(lines)

        self.speaker = Speaker(send=send, route_table=self.table, clock=self.clock, wallclock=lambda: 1000.0)
        tor = _peer(PEER, peer_as=65001, kind=GLOBAL, llgr_stale_time=stale_time)
        self.speaker.set_intent(_node(peers=(tor, _peer(OTHER))))
        self.speaker.set_workload_routes(())

    def feed(self, *lines):
        for line in lines:
            self.speaker.handle_line(line)

    def session(self, peer, restart_time=2, llgr_raw=None):
        capabilities = {"64": {"name": "graceful restart", "time": restart_time}}
        if llgr_raw is not None:
            capabilities["71"] = {"name": "unknown", "iana": "unassigned", "value": 71, "raw": llgr_raw}
        self.feed(_open_line(peer, capabilities), _envelope(peer, "state", {"state": "up"}))

    def down(self, peer):
        self.feed(_envelope(peer, "state", {"state": "down", "reason": "peer reset"}))

    async def at(self, now):
        self.clock.now = now
        self.speaker.tick()
        await self.speaker.flush()

    def route(self, prefix=A):
        return next((r for r in self.speaker.routes_report() if r["prefix"] == prefix), None)

    def kernel(self):
        return set(self.table.by_dst()) - {"192.168.1.0/26"}


async def test_through_the_speaker_the_kernel_keeps_the_route_until_the_stale_time_ends():
    rig = Rig()
    rig.session(PEER)
    rig.feed(_announce(PEER, [A, B]), _announce(PEER, [D], NO_LLGR))
    await rig.at(0)
    assert rig.kernel() == {A, B, D}
    rig.down(PEER)
    await rig.at(1.9)
    assert rig.route()["best"]["stale"] and not rig.route()["best"]["llgr_stale"]
    await rig.at(2)  # the peer's restart time is over: long-lived stale, NO_LLGR gone
    route = rig.route()
    assert route["best"]["llgr_stale"] and "65535:6" in route["best"]["communities"]
    assert route["kernel"]["installed"] and rig.kernel() == {A, B}
    assert "(LLGR-stale)" in render_routes({"routes": [route]})
    await rig.at(7.9)
    assert rig.kernel() == {A, B}
    await rig.at(8)  # 2 s restart + 6 s stale time
    assert rig.kernel() == set() and rig.route() is None


async def test_the_peers_shorter_stale_time_applies():
    rig = Rig()
    rig.session(PEER, llgr_raw=_llgr_tuple(1, 1, 0x80, 3))
    rig.feed(_announce(PEER, [A]))
    rig.down(PEER)
    await rig.at(4.9)
    assert rig.kernel() == {A}
    await rig.at(5)
    assert rig.kernel() == set()


async def test_a_fresh_path_from_another_peer_wins_and_the_stale_one_is_withdrawn_from_peers():
    rig = Rig()
    rig.session(PEER)
    rig.session(OTHER)
    rig.feed(_announce(PEER, [A]))
    await rig.at(0)
    assert rig.route()["best"]["learned_from"] == PEER
    rig.down(PEER)
    await rig.at(2)
    # The mesh peer had the ToR's route (eBGP-learned, inside a pool); LLGR-stale, it is withdrawn.
    assert rig.route()["announced_to"] == []
    assert any("withdraw" in line and A in line for line in rig.sent)
    rig.feed(_announce(OTHER, [A]))
    await rig.at(3)
    route = rig.route()
    assert route["best"]["learned_from"] == OTHER and not route["best"]["llgr_stale"]
    assert [n.gateway for n in rig.table.by_dst()[A].nexthops] == [OTHER]
