"""Sessions (``bgp.sessions``) on their own: per-peer state, graceful restart, the receive-side guards, and
what they tell the Adj-RIB-Out, driven by parsed ExaBGP events with injected clocks."""

from __future__ import annotations

import pytest

from bgp.adj_rib_out import AdjRibOut
from bgp.exabgp import events as ev
from bgp.exabgp.commands import Advertisement
from bgp.import_guard import ImportScreen
from bgp.limits import LimitSettings, PeerLimits, teardown_command
from bgp.rib import AdjRibIn
from bgp.sessions import Sessions
from confgen.intent import PeerIntent

ME = "10.0.0.11"
PEER = "10.0.0.12"
OTHER = "10.0.0.13"
UP, DOWN = ev.PeerState(PEER, ev.STATE_UP), ev.PeerState(PEER, ev.STATE_DOWN, reason="hold timer expired")
PREFIXES = ("192.168.100.0/30", "192.168.100.4/30", "192.168.100.8/30")


def peer(address: str, restart_time: int = 120) -> PeerIntent:
    return PeerIntent(
        name=f"Mesh_{address.replace('.', '_')}", address=address, family="ipv4", peer_as=64512,
        local_as=64512, local_address=ME, passive=address > ME, restart_time=restart_time,
    )


def offer(restart_time: int | None = 120) -> ev.Open:
    return ev.Open(PEER, "receive", router_id=PEER, asn=64512, hold_time=90, restart_time=restart_time)


def learned(*prefixes: str, as_path: tuple[int, ...] = ()) -> ev.RoutesLearned:
    return ev.RoutesLearned(PEER, "ipv4 unicast", PEER, prefixes, ev.PathAttributes(as_path=as_path))


class Rig:
    def __init__(self, max_prefixes: int = 0, max_as_path_length: int = 0) -> None:
        self.now = 1000.0
        self.rib = AdjRibIn()
        self.refusals: list[str] = []
        self.out = AdjRibOut(refused=self.refusals.append)
        self.limits = PeerLimits(LimitSettings(max_prefixes, max_as_path_length), clock=self.clock)
        self.sessions = Sessions(
            rib=self.rib, out=self.out, screen=ImportScreen(clock=self.clock), limits=self.limits,
            clock=self.clock, wallclock=self.clock,
        )
        self.sessions.configure({PEER: peer(PEER), OTHER: peer(OTHER)})

    def clock(self) -> float:
        return self.now

    def feed(self, *events: ev.Event) -> set[str]:
        changed: set[str] = set()
        for event in events:
            result = self.sessions.handle(event)
            assert result is not None
            changed |= result
        return changed

    def status(self, address: str = PEER):
        return next(s for s in self.sessions.statuses() if s.address == address)

    def owed(self) -> list[str]:
        """What the Adj-RIB-Out would send now for an empty batch: resends and End-of-RIB markers."""
        adv = Advertisement(nexthop=ME)
        sessions = self.sessions
        everything = {"10.9.0.0/24"}
        return self.out.lines(
            (), sessions.peers, sessions.established, lambda p, prefix: adv, lambda: everything,
            eor_allowed=True,
        )


def test_events_for_a_peer_we_do_not_configure_are_ignored():
    rig = Rig()
    assert rig.sessions.handle(ev.PeerState("10.0.0.99", ev.STATE_UP)) is None
    assert rig.sessions.handle(ev.EndOfRib("", "ipv4 unicast")) is None  # ExaBGP's own notices
    assert rig.feed(learned(*PREFIXES)) == set(PREFIXES)


def test_a_session_coming_up_owes_the_whole_table_then_end_of_rib_once():
    rig = Rig()
    assert rig.owed() == []  # nobody is established
    rig.feed(ev.PeerState(PEER, ev.STATE_CONNECTED))
    assert rig.status().bgp_state != "Established" and rig.owed() == []
    rig.feed(UP)
    assert rig.sessions.established(PEER) and not rig.sessions.established(OTHER)
    owed = rig.owed()
    assert owed[0].startswith(f"neighbor {PEER} announce") and "10.9.0.0/24" in owed[0]
    assert owed[-1] == f"neighbor {PEER} announce eor ipv4 unicast"
    assert rig.owed() == []  # paid


@pytest.mark.parametrize(
    "restart_ours, restart_theirs, stale_after_down, kept",
    [
        pytest.param(120, 120, 3, True, id="negotiated: kept stale"),
        pytest.param(120, None, 0, False, id="peer did not offer it: gone at once"),
        pytest.param(0, 120, 0, False, id="we did not offer it: gone at once"),
    ],
)
def test_a_session_ending_keeps_its_paths_only_with_graceful_restart(
    restart_ours, restart_theirs, stale_after_down, kept
):
    rig = Rig()
    rig.sessions.configure({PEER: peer(PEER, restart_time=restart_ours)})
    rig.feed(offer(restart_theirs), UP, learned(*PREFIXES))
    changed = rig.feed(DOWN)
    assert rig.rib.stale_count(PEER) == stale_after_down
    assert rig.rib.count(PEER) == (3 if kept else 0)
    assert changed == (set() if kept else set(PREFIXES))
    assert "hold timer expired" in rig.status().last_error


def test_end_of_rib_sweeps_what_the_returning_peer_did_not_announce_again():
    rig = Rig()
    rig.feed(offer(), UP, learned(*PREFIXES), DOWN)
    rig.feed(offer(), UP, learned(PREFIXES[0]))
    assert rig.feed(ev.EndOfRib(PEER, "ipv4 unicast")) == set(PREFIXES[1:])
    assert rig.rib.count(PEER) == 1 and rig.rib.stale_count(PEER) == 0
    assert not rig.sessions.all_synced()  # OTHER has not sent its End-of-RIB
    rig.feed(ev.EndOfRib(OTHER, "ipv4 unicast"))
    assert rig.sessions.all_synced()


def test_the_restart_timer_sweeps_a_peer_that_never_returns():
    rig = Rig()
    rig.feed(offer(), UP, learned(*PREFIXES), DOWN)
    assert rig.sessions.expire(rig.now + 119) == set()
    assert rig.sessions.expire(rig.now + 121) == set(PREFIXES)


def test_crossing_the_prefix_limit_tears_down_once_and_drops_the_paths():
    rig = Rig(max_prefixes=2)
    rig.feed(offer(), UP)
    changed = rig.feed(learned(*PREFIXES))
    assert changed == set(PREFIXES) and rig.rib.count(PEER) == 0 and rig.rib.stale_count(PEER) == 0
    assert not rig.sessions.established(PEER)
    assert "Prefix limit: 2 exceeded (3 prefixes)" in rig.status().last_error
    assert rig.sessions.take_teardowns() == [teardown_command(PEER)]
    assert rig.sessions.take_teardowns() == []
    rig.feed(UP)  # back before its hold ends: torn down again, its routes do not count
    assert rig.feed(learned(PREFIXES[0])) == set() and rig.rib.count(PEER) == 0
    assert len(rig.sessions.take_teardowns()) == 1


def test_an_over_long_as_path_is_a_withdraw():
    rig = Rig(max_as_path_length=3)
    rig.feed(UP, learned(*PREFIXES))
    assert rig.feed(learned(PREFIXES[0], as_path=(1, 2, 3, 4))) == {PREFIXES[0]}
    assert rig.rib.count(PEER) == 2


def test_malformed_withdraws_are_counted_per_peer():
    rig = Rig()
    rig.feed(UP, learned(*PREFIXES))
    changed = rig.feed(ev.RoutesWithdrawn(PEER, "ipv4 unicast", PREFIXES[:2], malformed="no next hop"))
    assert changed == set(PREFIXES[:2]) and rig.sessions.malformed_withdraws == {PEER: 2}


def test_exabgp_down_puts_every_session_down_with_the_first_reason_until_it_answers():
    rig = Rig()
    rig.feed(offer(), UP, learned(*PREFIXES))
    rig.owed()
    assert rig.sessions.exabgp_down("ExaBGP not responding") == set()  # kept stale: graceful restart
    rig.sessions.exabgp_down("its API connection was lost")
    assert {s.bgp_state for s in rig.sessions.statuses()} == {"Idle"}
    assert {s.last_error for s in rig.sessions.statuses()} == {"ExaBGP not responding"}
    assert rig.rib.stale_count(PEER) == 3 and rig.out.sent == {}
    rig.sessions.exabgp_up()
    assert {s.bgp_state for s in rig.sessions.statuses()} == {"Passive"}  # both addresses above ours
    assert rig.owed() == []  # no End-of-RIB for a session that is not back


def test_a_peer_that_leaves_the_configuration_leaves_nothing_behind():
    rig = Rig(max_prefixes=2)
    rig.feed(offer(), UP, learned(*PREFIXES[:2]))
    rig.feed(ev.RoutesWithdrawn(PEER, "ipv4 unicast", PREFIXES[:1], malformed="bad"))
    rig.owed()
    rig.sessions.configure({OTHER: peer(OTHER)})
    assert [s.address for s in rig.sessions.statuses()] == [OTHER]
    assert rig.rib.count(PEER) == 0 and rig.sessions.malformed_withdraws == {}
    assert rig.out.announced_count(PEER) == 0 and PEER not in rig.out.sent
    assert rig.sessions.handle(UP) is None


@pytest.mark.parametrize(
    "configured, expected",
    [
        (["10.0.0.13", "10.0.0.9", "10.0.0.100"], ["10.0.0.9", "10.0.0.13", "10.0.0.100"]),  # not text
        (["fd00::2", "10.0.0.20", "fd00::10", "10.0.0.3"], ["10.0.0.3", "10.0.0.20", "fd00::2", "fd00::10"]),
    ],
)
def test_statuses_come_in_display_order_through_reconfiguration_and_state_changes(configured, expected):
    def intent(address: str) -> PeerIntent:
        family = "ipv6" if ":" in address else "ipv4"
        return PeerIntent(
            name=f"p{address}", address=address, family=family, peer_as=64512, local_as=64512,
            local_address=ME, passive=False,
        )

    rig = Rig()
    rig.sessions.configure({a: intent(a) for a in configured[:1]})
    rig.sessions.configure({a: intent(a) for a in configured})  # later peers slot into their place
    rig.feed(ev.PeerState(configured[0], ev.STATE_UP))  # a replaced status keeps its place
    assert [s.address for s in rig.sessions.statuses()] == expected
    assert rig.status(configured[0]).established
