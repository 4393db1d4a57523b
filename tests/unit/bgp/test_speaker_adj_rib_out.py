"""The Adj-RIB-Out (``bgp.adj_rib_out``) on its own: the commands it builds against a model of what ExaBGP
holds per peer, for established peers only, with resends and End-of-RIB where due."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.adj_rib_out import AdjRibOut
from bgp.exabgp.commands import Advertisement
from confgen.intent import PeerIntent

ME = "10.0.0.11"
PEERS = ("10.0.0.12", "10.0.0.13")
PREFIXES = tuple(f"10.{i}.0.0/24" for i in range(6))
PLAIN = Advertisement(nexthop=ME)
PREFERRED = Advertisement(nexthop=ME, local_pref=200)


def peer(address: str, family: str = "ipv4") -> PeerIntent:
    return PeerIntent(name=f"p{address}", address=address, family=family, peer_as=64512, local_as=64512,
                      local_address=ME)


class Rig:
    """An Adj-RIB-Out, what we want announced (the same to every peer), and a model of what ExaBGP holds."""

    def __init__(self, peers=PEERS) -> None:
        self.refused: list[str] = []
        self.out = AdjRibOut(refused=self.refused.append)
        self.peers = {a: peer(a) for a in peers}
        self.up: set[str] = set()
        self.wanted: dict[str, Advertisement] = {}
        self.held: dict[str, dict[str, str]] = {a: {} for a in peers}  # peer -> prefix -> attributes text
        self.eors: list[str] = []

    def flush(self, changed, eor_allowed: bool = True) -> list[str]:
        lines = self.out.lines(
            changed, self.peers, self.up.__contains__, lambda p, prefix: self.wanted.get(prefix),
            lambda: set(self.wanted), eor_allowed,
        )
        for line in lines:
            words = line.split(" ")
            address, verb = words[1], words[2]
            if words[3] == "eor":
                self.eors.append(address)
                continue
            attributes, nlri = line.split(" attributes ")[1].split(" nlri ")
            for prefix in nlri.split():
                if verb == "announce":
                    self.held[address][prefix] = attributes
                else:
                    self.held[address].pop(prefix, None)
        return lines

    def expected(self) -> dict[str, str]:
        """What an established peer should hold: the wanted prefixes, with their attributes."""
        return {p: text_of(adv) for p, adv in self.wanted.items()}


def text_of(adv: Advertisement) -> str:
    probe = AdjRibOut(refused=lambda message: None)
    probe.session_up("10.0.0.99")
    line = probe.lines((), {"10.0.0.99": peer("10.0.0.99")}, lambda a: True, lambda p, x: adv,
                       lambda: {"10.99.0.0/24"}, False)[0]
    return line.split(" attributes ")[1].split(" nlri ")[0]


def test_nothing_goes_to_a_peer_that_is_down_and_it_gets_everything_once_up():
    rig = Rig()
    rig.wanted = {PREFIXES[0]: PLAIN, PREFIXES[1]: PLAIN}
    assert rig.flush(PREFIXES[:2]) == []
    rig.up.add(PEERS[0])
    rig.out.session_up(PEERS[0])
    rig.flush(())
    assert rig.held[PEERS[0]] == rig.expected() and rig.held[PEERS[1]] == {}
    assert rig.eors == [PEERS[0]]
    assert rig.out.announced_count(PEERS[0]) == 2 and rig.out.prefixes() == set(PREFIXES[:2])


def test_end_of_rib_waits_until_it_is_allowed_and_goes_once():
    rig = Rig(peers=PEERS[:1])
    rig.up.add(PEERS[0])
    rig.out.session_up(PEERS[0])
    rig.flush((), eor_allowed=False)
    assert rig.eors == []
    rig.flush((), eor_allowed=True)
    rig.flush((), eor_allowed=True)
    assert rig.eors == [PEERS[0]]


def test_a_session_down_before_its_end_of_rib_owes_none():
    rig = Rig(peers=PEERS[:1])
    rig.out.session_up(PEERS[0])
    rig.out.session_down(PEERS[0])
    rig.up.add(PEERS[0])
    rig.flush((), eor_allowed=True)
    assert rig.eors == []


def test_a_resend_withdraws_what_exabgp_may_hold_from_before():
    rig = Rig(peers=PEERS[:1])
    rig.up.add(PEERS[0])
    rig.wanted = {PREFIXES[0]: PLAIN, PREFIXES[1]: PLAIN}
    rig.out.session_up(PEERS[0])
    rig.flush(())
    del rig.wanted[PREFIXES[1]]
    rig.out.session_up(PEERS[0])  # a new session: everything again, and the withdraw of what went
    lines = rig.flush(())
    assert any(" withdraw " in line and PREFIXES[1] in line for line in lines)
    assert any(" announce " in line and PREFIXES[0] in line for line in lines)  # not compared: re-sent
    assert rig.held[PEERS[0]] == rig.expected()


@pytest.mark.parametrize(
    "forget, sent_after, owes_eor",
    [
        pytest.param("exabgp_lost", 0, True, id="ExaBGP lost: nothing held, End-of-RIB still owed"),
        pytest.param("forget", 0, False, id="peer removed: nothing at all"),
        pytest.param("session_down", 1, False, id="session down: what ExaBGP holds stays counted"),
    ],
)
def test_what_each_loss_forgets(forget, sent_after, owes_eor):
    rig = Rig(peers=PEERS[:1])
    rig.up.add(PEERS[0])
    rig.wanted = {PREFIXES[0]: PLAIN}
    rig.out.session_up(PEERS[0])
    rig.flush((), eor_allowed=False)
    getattr(rig.out, forget)(*(() if forget == "exabgp_lost" else (PEERS[0],)))
    assert rig.out.announced_count(PEERS[0]) == sent_after
    rig.flush((), eor_allowed=True)
    assert rig.eors == ([PEERS[0]] if owes_eor else [])


def test_compared_counts_the_export_decisions_taken():
    rig = Rig()
    rig.up.update(PEERS)
    rig.wanted = {p: PLAIN for p in PREFIXES}
    before = rig.out.compared
    rig.flush(PREFIXES[:3])
    assert rig.out.compared - before == 3 * len(PEERS)
    before = rig.out.compared
    rig.up.clear()
    rig.flush(PREFIXES)
    assert rig.out.compared == before  # nobody established: no decision taken


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("want"), st.sampled_from(PREFIXES), st.sampled_from([PLAIN, PREFERRED, None])),
        st.tuples(st.just("up"), st.sampled_from(PEERS), st.none()),
        st.tuples(st.just("down"), st.sampled_from(PEERS), st.none()),
        st.tuples(st.just("flush"), st.none(), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(steps=STEPS)
def test_after_each_flush_every_established_peer_holds_exactly_what_we_want(steps):
    rig = Rig()
    changed: set[str] = set()
    for kind, subject, adv in steps:
        if kind == "want":
            if adv is None:
                rig.wanted.pop(subject, None)
            else:
                rig.wanted[subject] = adv
            changed.add(subject)
        elif kind == "up" and subject not in rig.up:
            rig.up.add(subject)
            rig.out.session_up(subject)
        elif kind == "down" and subject in rig.up:
            # ExaBGP forgets a session's routes when it ends; our record of them is left for the resend.
            rig.up.discard(subject)
            rig.held[subject] = {}
            rig.out.session_down(subject)
        elif kind == "flush":
            rig.flush(changed)
            changed = set()
            for address in rig.up:
                assert rig.held[address] == rig.expected()
                assert dict(rig.out.sent[address]) == rig.wanted
    assert rig.refused == []
