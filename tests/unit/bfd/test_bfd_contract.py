"""The ``BfdService`` contract, held against both implementations: FakeBfdService (what the BGP side's tests
run on) and BfdEngine (the real engine, its peer a second BfdEngine, over an in-memory link with a fake
clock: the engine's logic is all real, only the sockets are not; tests/netns/test_bfd_interop.py runs it
over real UDP against FRR and BIRD).

One scenario per clause of the contract, each written once against a ``Side``: the fake is driven by its
setters, the engine by what its peer does (configure the reverse session, go silent, retire). If the fake
and the engine ever disagree about what the daemon sees, one of these fails for one of the two.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from test_bfd_service import Clock, Net, run_engines

from bgp.bfd.api import DOWN, UP, BfdPeerConfig, BfdService, BfdStatus
from bgp.bfd.service import BfdEngine
from bgp.bfd.testing import FakeBfdService

US, PEER, PEER2 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
DETECTION_EXPIRED = "Control Detection Time Expired"
NEIGHBOR_DOWN = "Neighbor Signaled Session Down"


def wanted(*peers: str, **fields) -> dict[tuple[str, str], BfdPeerConfig]:
    configs = [BfdPeerConfig(peer, US, **fields) for peer in peers]
    return {c.key: c for c in configs}


class Side:
    """The service under contract, the changes it reported, and what its peer can be made to do."""

    service: BfdService
    changes: list[BfdStatus]
    clock: Clock

    def come_up(self, peer: str) -> None: ...
    def go_silent(self, peer: str) -> None: ...
    def retire(self, peer: str) -> None: ...  # the peer removes its session: AdminDown

    def status(self, peer: str) -> BfdStatus:
        return next(s for s in self.service.status() if s.peer == peer)


class FakeSide(Side):
    def __init__(self) -> None:
        self.clock, self.changes = Clock(), []
        self.fake = FakeBfdService(self.changes.append, clock=self.clock)
        self.service = self.fake

    def come_up(self, peer: str) -> None:
        self.clock.now += 1.0
        self.fake.set_up(peer)

    def go_silent(self, peer: str) -> None:
        self.clock.now += 1.0
        self.fake.set_down(peer, diagnostic=DETECTION_EXPIRED)

    def retire(self, peer: str) -> None:
        self.clock.now += 1.0
        self.fake.set_admin_down(peer)


class EngineSide(Side):
    def __init__(self) -> None:
        self.clock, self.changes, self.net = Clock(), [], Net()
        self.engine = BfdEngine(
            self.changes.append, clock=self.clock, rng=random.Random(1), transport=self.net.transport(US)
        )
        self.service = self.engine
        self.peers: dict[str, BfdEngine] = {}

    def _peer(self, peer: str) -> BfdEngine:
        if peer not in self.peers:
            self.peers[peer] = BfdEngine(
                None,
                clock=self.clock,
                rng=random.Random(len(self.peers) + 2),
                transport=self.net.transport(peer),
            )
        return self.peers[peer]

    def _run(self, seconds: float) -> None:
        run_engines([self.engine, *self.peers.values()], self.net, self.clock, self.clock.now + seconds)

    def come_up(self, peer: str) -> None:
        self.net.cut.discard(peer)
        engine = self._peer(peer)
        engine.configure({(US, peer): BfdPeerConfig(US, peer)})
        self._run(5.0)

    def go_silent(self, peer: str) -> None:
        self.net.cut.add(peer)
        self._run(3.0)

    def retire(self, peer: str) -> None:
        self._peer(peer).configure({})
        self._run(3.0)


SIDES: dict[str, Callable[[], Side]] = {"fake": FakeSide, "engine": EngineSide}


@pytest.fixture(params=sorted(SIDES))
def side(request) -> Side:
    return SIDES[request.param]()


def test_configured_sessions_start_down_in_order_without_a_callback(side):
    side.service.configure(wanted(PEER2, PEER))
    sessions = side.service.status()
    assert [(s.peer, s.local) for s in sessions] == [(PEER, US), (PEER2, US)]
    assert all(s.state == DOWN and s.remote_discriminator == 0 and s.downs == 0 for s in sessions)
    assert all(s.tx_interval_us >= 1_000_000 for s in sessions)  # the slow rate until Up
    assert len({s.local_discriminator for s in sessions}) == 2 and all(
        s.local_discriminator for s in sessions
    )
    assert side.changes == []


def test_up_is_reported_once_with_the_peer_and_the_agreed_timers(side):
    side.service.configure(wanted(PEER))
    side.come_up(PEER)
    assert [c.state for c in side.changes if c.peer == PEER][-1] == UP
    assert [c.state for c in side.changes].count(UP) == 1
    up = side.status(PEER)
    assert up.up and up.remote_discriminator != 0 and up.remote_multiplier == 3
    assert (up.tx_interval_us, up.detection_time_us) == (300_000, 900_000)
    # The callback carries the session as it was right after the change (timers may settle later).
    last = side.changes[-1]
    assert (last.state, last.local_discriminator, last.remote_discriminator) == (
        UP, up.local_discriminator, up.remote_discriminator
    )  # fmt: skip


def test_silence_is_a_down_with_detection_expired_and_counted(side):
    side.service.configure(wanted(PEER))
    side.come_up(PEER)
    up_since = side.status(PEER).since
    side.go_silent(PEER)
    down = side.status(PEER)
    assert (down.state, down.local_diagnostic, down.downs) == (DOWN, DETECTION_EXPIRED, 1)
    assert down.since > up_since  # the clock reading of the change
    assert (side.changes[-1].state, side.changes[-1].local_diagnostic) == (DOWN, DETECTION_EXPIRED)


def test_a_peer_that_retires_its_session_is_neighbor_signaled_down(side):
    side.service.configure(wanted(PEER))
    side.come_up(PEER)
    side.retire(PEER)
    down = side.status(PEER)
    assert (down.state, down.local_diagnostic, down.remote_diagnostic) == (
        DOWN, NEIGHBOR_DOWN, "Administratively Down"
    )  # fmt: skip


def test_reconfiguring_keeps_what_stays_and_drops_what_left_silently(side):
    side.service.configure(wanted(PEER, PEER2))
    side.come_up(PEER)
    before = side.status(PEER)
    count = len(side.changes)
    side.service.configure(wanted(PEER))
    assert [s.peer for s in side.service.status()] == [PEER]
    kept = side.status(PEER)
    assert (kept.state, kept.local_discriminator, kept.downs) == (UP, before.local_discriminator, 0)
    assert len(side.changes) == count  # neither the removal nor the unchanged session calls back
