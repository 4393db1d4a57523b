"""Graceful restart, receive side, under repeated flaps: the speaker against a reference model.

The stale set must always be what the peer has not re-announced since its latest session came up, and every
stale path must eventually go (End-of-RIB, the timer, or a session without graceful restart).
"""

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from speaker_rig import Clock, mesh_intent

from bgp.exabgp.events import PathAttributes
from bgp.graceful import GracefulRestarts
from bgp.rib import AdjRibIn, Path
from bgp.speaker import Speaker
from routes.testing import FakeRouteTable

ME = "10.0.0.11"
PEER = "10.0.0.12"
OTHER = "10.0.0.13"
V4 = ("192.168.2.0/26", "192.168.3.0/26", "192.168.4.0/26")
V6 = ("fd00:2::/122", "fd00:3::/122")


def intent(peers=(PEER, OTHER), restart_time=120):
    return mesh_intent(peers, restart_time=restart_time)


def _envelope(peer, kind, body):
    neighbor = {"address": {"local": ME, "peer": peer}, **body}
    return json.dumps({"exabgp": "5.0.0", "type": kind, "neighbor": neighbor})


def open_msg(peer, restart_time):
    caps = {"64": {"name": "graceful restart", "time": restart_time}} if restart_time is not None else {}
    body = {"asn": 64512, "hold_time": 90, "router_id": peer, "capabilities": caps}
    return _envelope(peer, "open", {"direction": "receive", "open": body})


def state(peer, st):
    return _envelope(peer, "state", {"state": st})


def announce(peer, prefixes, nexthop=None):
    v4 = [p for p in prefixes if ":" not in p]
    v6 = [p for p in prefixes if ":" in p]
    families = {}
    if v4:
        families["ipv4 unicast"] = {nexthop or peer: [{"nlri": p} for p in v4]}
    if v6:
        families["ipv6 unicast"] = {"fd00::12": [{"nlri": p} for p in v6]}
    update = {"attribute": {"origin": "igp", "local-preference": 100}, "announce": families}
    return _envelope(peer, "update", {"message": {"update": update}})


def withdraw(peer, prefixes):
    families = {}
    for prefix in prefixes:
        families.setdefault("ipv6 unicast" if ":" in prefix else "ipv4 unicast", []).append({"nlri": prefix})
    return _envelope(peer, "update", {"message": {"update": {"withdraw": families}}})


def eor(peer, afi="ipv4"):
    return _envelope(peer, "update", {"message": {"eor": {"afi": afi, "safi": "unicast"}}})


class Rig:
    def __init__(self, restart_time=120):
        self.clock = Clock(0.0)
        self.table = FakeRouteTable()

        async def send(lines):
            pass

        self.speaker = Speaker(send=send, route_table=self.table, clock=self.clock, wallclock=lambda: 1000.0)
        self.speaker.set_intent(intent(restart_time=restart_time))
        self.speaker.set_workload_routes(())

    def feed(self, *lines):
        for line in lines:
            self.speaker.handle_line(line)

    async def at(self, now):
        self.clock.now = now
        self.speaker.tick()
        await self.speaker.flush()

    def rib(self, peer=PEER):
        """prefix -> stale, for every path from ``peer`` that is the best of its prefix."""
        return {
            r["prefix"]: r["best"]["stale"]
            for r in self.speaker.routes_report()
            if r["origin"] == "bgp" and r["best"]["learned_from"] == peer
        }

    def kernel(self):
        return set(self.table.by_dst()) - {"192.168.1.0/26"}

    def session(self, restart_time=30):
        """A new session: the peer's OPEN, then Established."""
        self.feed(open_msg(PEER, restart_time), state(PEER, "connected"), state(PEER, "up"))


@pytest.fixture
def rig():
    return Rig()


# ------------------------------------------------------------------ regressions, one per named case


async def test_down_up_down_before_end_of_rib_marks_the_relearned_paths_stale(rig):
    rig.session()
    rig.feed(announce(PEER, V4[:2]))
    await rig.at(0)
    rig.feed(state(PEER, "down"))
    await rig.at(10)
    assert rig.rib() == {V4[0]: True, V4[1]: True}
    rig.session()  # back at 10 s: re-announces one path and a new one, then drops before End-of-RIB
    rig.feed(announce(PEER, (V4[0], V4[2])))
    await rig.at(15)
    assert rig.rib() == {V4[0]: False, V4[1]: True, V4[2]: False}
    rig.feed(state(PEER, "down"))
    await rig.at(16)
    assert rig.rib() == {p: True for p in V4}  # everything awaits re-announcement again
    assert rig.kernel() == set(V4)  # and keeps forwarding meanwhile
    await rig.at(10_000)  # the peer never comes back
    assert rig.rib() == {} and rig.kernel() == set()
    assert rig.speaker.stale_count(PEER) == 0 and rig.speaker.received_count(PEER) == 0


async def test_a_second_restart_gets_its_own_restart_time(rig):
    rig.session(restart_time=30)
    rig.feed(announce(PEER, V4[:1]))
    rig.feed(state(PEER, "down"))
    await rig.at(5)
    rig.session(restart_time=30)
    await rig.at(25)
    rig.feed(state(PEER, "down"))  # while it waits for End-of-RIB
    await rig.at(40)  # past the first restart's deadline, inside the second's
    assert rig.rib() == {V4[0]: True}
    await rig.at(55)
    assert rig.rib() == {} and rig.kernel() == set()


async def test_end_of_rib_never_sent_the_timer_sweeps_what_was_not_reannounced(rig):
    rig.session(restart_time=30)
    rig.feed(announce(PEER, V4[:2]))
    rig.feed(state(PEER, "down"))
    await rig.at(20)
    rig.session(restart_time=30)  # back at 20 s
    rig.feed(announce(PEER, V4[:1]))
    await rig.at(49)
    assert rig.rib() == {V4[0]: False, V4[1]: True}  # the peer has its restart time again to finish
    await rig.at(50)
    assert rig.rib() == {V4[0]: False} and rig.kernel() == {V4[0]}


async def test_failed_reconnects_keep_the_restart_timer(rig):
    rig.session(restart_time=30)
    rig.feed(announce(PEER, V4[:1]))
    rig.feed(state(PEER, "down"))
    await rig.at(0)
    rig.feed(open_msg(PEER, 30), state(PEER, "connected"), state(PEER, "down"))  # never Established
    await rig.at(20)
    rig.feed(state(PEER, "connected"), state(PEER, "down"))
    await rig.at(30)
    assert rig.rib() == {} and rig.kernel() == set()


async def test_end_of_rib_sweeps_only_its_family(rig):
    rig.session()
    rig.feed(announce(PEER, (V4[0], V4[1], V6[0])))
    rig.feed(state(PEER, "down"))
    await rig.at(0)
    rig.session()
    rig.feed(announce(PEER, (V4[0],)), eor(PEER, "ipv4"))
    await rig.at(5)
    assert rig.rib() == {V4[0]: False, V6[0]: True}
    rig.feed(eor(PEER, "ipv6"))
    await rig.at(6)
    assert rig.rib() == {V4[0]: False}
    assert rig.speaker.stale_count(PEER) == 0


async def test_graceful_restart_not_offered_on_the_new_session_drops_the_stale_paths(rig):
    rig.session(restart_time=30)
    rig.feed(announce(PEER, V4[:2]))
    rig.feed(state(PEER, "down"))
    await rig.at(0)
    rig.session(restart_time=None)
    rig.feed(announce(PEER, V4[:1]))
    await rig.at(1)
    assert rig.rib() == {V4[0]: False} and rig.kernel() == {V4[0]}
    rig.feed(state(PEER, "down"))  # and this session ends without graceful restart: nothing is kept
    await rig.at(2)
    assert rig.rib() == {} and rig.kernel() == set()


async def test_a_peer_removed_during_its_restart_leaves_nothing_behind(rig):
    rig.session()
    rig.feed(announce(PEER, V4[:2]))
    rig.feed(state(PEER, "down"))
    await rig.at(0)
    rig.speaker.set_intent(intent(peers=(OTHER,)))
    await rig.at(1)
    assert rig.rib() == {} and rig.kernel() == set()
    rig.speaker.set_intent(intent())  # configured again: a fresh peer, no restart pending
    rig.session()
    rig.feed(announce(PEER, V4[:1]))
    await rig.at(2)
    rig.feed(state(PEER, "down"))
    await rig.at(3)
    assert rig.rib() == {V4[0]: True}
    await rig.at(33)
    assert rig.rib() == {}


async def test_without_graceful_restart_on_our_side_paths_go_at_once():
    rig = Rig(restart_time=0)
    rig.session(restart_time=30)
    rig.feed(announce(PEER, V4[:1]))
    rig.feed(state(PEER, "down"))
    await rig.at(0)
    assert rig.rib() == {} and rig.kernel() == set()


# ------------------------------------------------------------------ bgp.graceful on its own

GR_CASES = {
    # steps: ("learn", prefix) | ("down", restart time) | ("up", restart time) | ("eor", ipv6) | ("at", now)
    "a down without graceful restart drops everything": ([("learn", V4[0]), ("down", 0)], {}, 0),
    "a down with it keeps everything stale": ([("learn", V4[0]), ("down", 30)], {V4[0]: True}, 1),
    "re-learned after the return is fresh": (
        [("learn", V4[0]), ("learn", V4[1]), ("down", 30), ("up", 30), ("learn", V4[0])],
        {V4[0]: False, V4[1]: True}, 1,
    ),
    "down again before End-of-RIB: all stale again": (
        [("learn", V4[0]), ("down", 30), ("up", 30), ("learn", V4[0]), ("down", 30)], {V4[0]: True}, 1,
    ),
    "a failed reconnect keeps the first deadline": (
        [("learn", V4[0]), ("down", 30), ("at", 20), ("down", 30), ("at", 30)], {}, 0,
    ),
    "back without graceful restart: stale swept at once": (
        [("learn", V4[0]), ("learn", V4[1]), ("down", 30), ("up", 0), ("learn", V4[0])], {V4[0]: False}, 0,
    ),
    "End-of-RIB for one family": (
        [("learn", V4[0]), ("learn", V6[0]), ("down", 30), ("up", 30), ("eor", False)], {V6[0]: True}, 1,
    ),
    "no End-of-RIB: the deadline counts again from the return": (
        [("learn", V4[0]), ("down", 30), ("at", 20), ("up", 30), ("at", 49)], {V4[0]: True}, 1,
    ),
}


@pytest.mark.parametrize("steps, held, restarting", GR_CASES.values(), ids=GR_CASES.keys())
def test_graceful_restarts(steps, held, restarting):
    rib = AdjRibIn()
    restarts = GracefulRestarts(rib)
    now = 0.0
    for step in steps:
        if step[0] == "learn":
            rib.add(Path(prefix=step[1], peer=PEER, nexthop=PEER, attributes=PathAttributes()))
        elif step[0] == "down":
            restarts.session_down(PEER, step[1], now)
        elif step[0] == "up":
            restarts.session_up(PEER, step[1], now)
        elif step[0] == "eor":
            restarts.end_of_rib(PEER, ipv6=step[1])
        else:
            now = step[1]
            restarts.expire(now)
    assert {p: rib.is_stale(PEER, p) for p in rib.peer_prefixes(PEER)} == held
    assert len(restarts) == restarting


# ------------------------------------------------------------------ the speaker against a reference model


class Model:
    """RFC 4724 §4.2, receive side, written from the rules rather than from the speaker's bookkeeping: a path
    is stale while a restart is in progress and it was last announced before the session that started the
    restart ended (``mark``, an event number)."""

    def __init__(self, ours):
        self.ours = ours  # the restart time we offer; 0: graceful restart is not negotiated at all
        self.paths = {}  # prefix -> number of the event that last announced it
        self.established = False
        self.offer = None  # restart time in the peer's latest OPEN, None when it offered none
        self.restarting = False
        self.mark = 0
        self.deadline = 0.0
        self.now = 0.0

    def negotiated(self):
        return self.offer if self.ours and self.offer else 0

    def stale(self):
        return {p for p, seen in self.paths.items() if self.restarting and seen < self.mark}

    def _sweep(self, family=None):
        for prefix in self.stale():
            if family is None or (":" in prefix) == (family == "ipv6"):
                del self.paths[prefix]
        if not self.stale():
            self.restarting = False

    def step(self, number, event):
        kind = event[0]
        if kind == "open":
            self.offer = event[1] or None
        elif kind == "up":
            self.established = True
            if self.restarting:
                if self.negotiated():
                    self.deadline = self.now + self.negotiated()
                else:
                    self._sweep()
        elif kind == "down":
            if not self.established:
                return  # a failed attempt: a restart in progress keeps its deadline
            self.established = False
            if self.negotiated() and self.paths:
                self.restarting, self.mark, self.deadline = True, number, self.now + self.negotiated()
            else:
                self.paths.clear()
                self.restarting = False
        elif kind == "announce":
            self.paths.update((p, number) for p in event[1])
        elif kind == "withdraw":
            for prefix in event[1]:
                self.paths.pop(prefix, None)
        elif kind == "eor":
            if self.restarting:
                self._sweep(event[1])
        elif kind == "advance":
            self.now += event[1]
            if self.restarting and self.now >= self.deadline:
                self._sweep()

    def allows(self, event):
        """What ExaBGP can deliver: OPENs before a session is up, UPDATEs and End-of-RIB only while it is."""
        if event[0] in ("open", "up"):
            return not self.established
        if event[0] in ("announce", "withdraw", "eor"):
            return self.established
        return True


PREFIXES = (*V4, *V6)
IN_SESSION = st.one_of(
    st.tuples(st.just("announce"), st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("withdraw"), st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=2, unique=True)),
    st.tuples(st.just("eor"), st.sampled_from(["ipv4", "ipv6"])),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 4.0, 10.0, 29.0, 31.0])),
)
OFFERS = st.sampled_from([None, 0, 5, 30])
GAPS = st.sampled_from([0.0, 1.0, 4.0, 10.0, 29.0, 31.0, 100.0])


@st.composite
def sessions(draw):
    """One attempt to bring the session up, as ExaBGP reports it: failed attempts (an OPEN, then down),
    the OPEN of the session, Established, what the peer sends, then (perhaps) the session's end."""
    events = []
    for _ in range(draw(st.integers(0, 2))):
        events += [("open", draw(OFFERS)), ("down",), ("advance", draw(GAPS))]
    events += [("open", draw(OFFERS)), ("up",), *draw(st.lists(IN_SESSION, max_size=6))]
    if draw(st.booleans()):
        events += [("down",), ("advance", draw(GAPS))]
    return events


EVENTS = st.lists(sessions(), max_size=6).map(lambda runs: [event for run in runs for event in run])


def line_for(event):
    kind = event[0]
    if kind == "open":
        return [open_msg(PEER, event[1])]
    if kind == "up":
        return [state(PEER, "connected"), state(PEER, "up")]
    if kind == "down":
        return [state(PEER, "down")]
    if kind == "announce":
        return [announce(PEER, event[1])]
    if kind == "withdraw":
        return [withdraw(PEER, event[1])]
    if kind == "eor":
        return [eor(PEER, event[1])]
    return []


async def replay(ours, events):
    rig, model = Rig(restart_time=ours), Model(ours)
    for number, event in enumerate(events, start=1):
        if not model.allows(event):
            continue
        model.step(number, event)
        rig.feed(*line_for(event))
        await rig.at(model.now)
        assert rig.rib() == {p: p in model.stale() for p in model.paths}, (number, event)
        assert rig.speaker.stale_count(PEER) == len(model.stale())
        assert rig.kernel() == set(model.paths)
    # Nothing is kept for ever: once the peer is gone for longer than any restart time, nothing is left.
    model.step(len(events) + 1, ("down",))
    rig.feed(state(PEER, "down"))
    await rig.at(model.now + 1000.0)
    assert rig.rib() == {} and rig.kernel() == set() and rig.speaker.stale_count(PEER) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ours=st.sampled_from([0, 120]), events=EVENTS)
def test_the_stale_set_is_what_the_peer_has_not_reannounced(ours, events):
    asyncio.run(replay(ours, events))
