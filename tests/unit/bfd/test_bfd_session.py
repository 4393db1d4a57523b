"""The BFD session state machine (bgp.bfd.session): transitions, timers, Poll/Final, and two sessions on a
simulated link. Time is a number passed in; nothing sleeps."""

from __future__ import annotations

import heapq
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.bfd.api import BfdPeerConfig
from bgp.bfd.packet import ControlPacket, decode, encode
from bgp.bfd.session import ADMIN_DOWN, DOWN, INIT, SLOW_TX_US, UP, Session

CONFIG = BfdPeerConfig("10.0.0.2", "10.0.0.1", min_tx_us=300_000, min_rx_us=300_000, multiplier=3)
NAMES = {ADMIN_DOWN: "AdminDown", DOWN: "Down", INIT: "Init", UP: "Up"}


def peer_packet(state: int, **fields) -> ControlPacket:
    values = dict(
        state=state,
        diagnostic=0,
        detect_mult=3,
        my_discriminator=77,
        your_discriminator=0 if state in (DOWN, ADMIN_DOWN) else 1,
        desired_min_tx_us=200_000,
        required_min_rx_us=200_000,
    )
    values.update(fields)
    return ControlPacket(**values)


def session_in(state: int, config: BfdPeerConfig = CONFIG) -> Session:
    """A session brought to state through real packets."""
    session = Session(config, 1, 0.0, random.Random(0))
    if state == ADMIN_DOWN:
        session.admin_down(0.0)
    if state in (INIT, UP):
        session.receive(peer_packet(DOWN), 0.0)
    if state == UP:
        session.receive(peer_packet(UP), 0.0)
    assert session.state == state
    return session


# ------------------------------------------------------------------------------------------------ transitions

# (our state, the peer's state) -> (our new state, our diagnostic): RFC 5880 sections 6.2 and 6.8.6.
TRANSITIONS = [
    (DOWN, ADMIN_DOWN, DOWN, 0),
    (DOWN, DOWN, INIT, 0),
    (DOWN, INIT, UP, 0),
    (DOWN, UP, DOWN, 0),  # an Up peer that does not know us yet: wait for it to reset
    (INIT, ADMIN_DOWN, DOWN, 3),
    (INIT, DOWN, INIT, 0),
    (INIT, INIT, UP, 0),
    (INIT, UP, UP, 0),
    (UP, ADMIN_DOWN, DOWN, 3),
    (UP, DOWN, DOWN, 3),
    (UP, INIT, UP, 0),
    (UP, UP, UP, 0),
    (ADMIN_DOWN, DOWN, ADMIN_DOWN, 7),  # AdminDown ignores the peer entirely
    (ADMIN_DOWN, INIT, ADMIN_DOWN, 7),
    (ADMIN_DOWN, UP, ADMIN_DOWN, 7),
]


@pytest.mark.parametrize(
    "ours, theirs, after, diag",
    TRANSITIONS,
    ids=[f"{NAMES[o]}+{NAMES[t]}" for o, t, _, _ in TRANSITIONS],
)
def test_transition(ours, theirs, after, diag):
    session = session_in(ours)
    out = session.receive(peer_packet(theirs), 1.0)
    assert (session.state, session.local_diag) == (after, diag)
    assert out.changed == (after != ours)
    assert session.remote_discriminator == 77
    if out.changed:
        assert session.since == 1.0
        assert session.advance(1.0).packets[-1].state == after  # the news goes out at once


def test_downs_count_only_transitions_out_of_up():
    session = session_in(UP)
    session.receive(peer_packet(DOWN), 1.0)
    session.receive(peer_packet(DOWN), 2.0)  # Down -> Init
    session.receive(peer_packet(UP), 3.0)  # Init -> Up
    session.admin_down(4.0)
    assert session.downs == 2


# ----------------------------------------------------------------------------------------------------- timers

# (our min TX, our min RX, our mult, their TX, their RX, their mult) -> (tx interval, detection time)
NEGOTIATION = [
    (300_000, 300_000, 3, 200_000, 200_000, 3, 300_000, 900_000),
    (100_000, 100_000, 3, 200_000, 500_000, 5, 500_000, 1_000_000),
    (50_000, 400_000, 2, 10_000, 10_000, 4, 50_000, 1_600_000),
    (1_000_000, 20_000, 3, 30_000, 20_000, 1, 1_000_000, 30_000),
]


@pytest.mark.parametrize("tx, rx, mult, their_tx, their_rx, their_mult, interval, detection", NEGOTIATION)
def test_negotiated_intervals(tx, rx, mult, their_tx, their_rx, their_mult, interval, detection):
    config = replace(CONFIG, min_tx_us=tx, min_rx_us=rx, multiplier=mult)
    session = session_in(UP, config)
    fields = dict(desired_min_tx_us=their_tx, required_min_rx_us=their_rx, detect_mult=their_mult)
    session.receive(peer_packet(UP, final=True, **fields), 1.0)  # the Final ends the Poll to fast rates
    assert not session.polling
    assert session.tx_interval_us == interval
    assert session.detection_time_us == detection
    assert session.status().detection_time_us == detection


def test_slow_rate_until_up():
    session = Session(replace(CONFIG, min_tx_us=50_000), 1, 0.0, random.Random(1))
    sent = []
    now = 0.0
    while now < 10.0:
        sent += [(now, p) for p in session.advance(now).packets]
        now = session.next_due()
    assert all(p.desired_min_tx_us == SLOW_TX_US for _, p in sent)
    gaps = [b - a for (a, _), (b, _) in zip(sent, sent[1:], strict=False)]
    assert min(gaps) >= 0.75 and max(gaps) <= 1.0


@given(st.integers(0, 2**32), st.sampled_from([1, 2, 3, 5]))
def test_jitter(seed, multiplier):
    session = session_in(UP, replace(CONFIG, multiplier=multiplier))
    session.receive(peer_packet(UP, final=True), 0.0)
    session._rng = random.Random(seed)
    interval = session.tx_interval_us / 1e6
    now = session.next_due()
    session.advance(now)
    gap = session.next_due() - now
    top = 0.9 if multiplier == 1 else 1.0
    assert 0.75 * interval <= gap <= top * interval


def test_detection_timeout_goes_down_with_diag_1():
    session = session_in(UP)
    session.receive(peer_packet(UP, final=True), 1.0)
    deadline = 1.0 + session.detection_time_us / 1e6
    assert session.next_due() <= deadline
    assert not session.advance(deadline - 0.001).changed
    out = session.advance(deadline)
    assert out.changed and session.state == DOWN and session.local_diag == 1
    assert session.remote_discriminator == 0  # forgotten, so the peer's next packet is matched afresh
    assert session.desired_min_tx_us == SLOW_TX_US
    assert session.downs == 1


def test_no_periodic_packets_when_the_peer_wants_none():
    session = session_in(UP)
    session.receive(peer_packet(UP, final=True, required_min_rx_us=0), 1.0)
    assert session.advance(1.0).packets == []
    assert session.advance(5.0).packets == []


# ------------------------------------------------------------------------------------------------- Poll/Final


def test_reaching_up_polls_to_the_configured_rate():
    session = session_in(UP)
    assert session.polling and session.desired_min_tx_us == 300_000
    packets = session.advance(0.0).packets
    assert packets and all(p.poll for p in packets)
    session.receive(peer_packet(UP, final=True), 0.1)
    assert not session.polling
    assert not any(p.poll for p in session.advance(1.0).packets)


@pytest.mark.parametrize(
    "new_tx, during, after",
    [
        (1_000_000, 300_000, 1_000_000),  # slower: keep the old pace until the Final (6.8.3)
        (100_000, 200_000, 200_000),  # faster: at once (their RX 200 ms bounds it)
    ],
)
def test_tx_change_waits_for_the_final(new_tx, during, after):
    session = session_in(UP)
    session.receive(peer_packet(UP, final=True), 0.0)
    session.reconfigure(replace(CONFIG, min_tx_us=new_tx), 0.5)
    assert session.polling and session.desired_min_tx_us == new_tx
    assert session.next_due() == 0.5  # the Poll goes out at once
    assert session.advance(0.5).packets[0].poll
    assert session.tx_interval_us == during
    session.receive(peer_packet(UP, final=True), 0.51)
    assert session.tx_interval_us == after
    assert session.state == UP


def test_rx_reduction_keeps_the_old_detection_time_until_the_final():
    session = session_in(UP, replace(CONFIG, min_rx_us=600_000))
    session.receive(peer_packet(UP, final=True), 0.0)
    assert session.detection_time_us == 1_800_000
    session.reconfigure(replace(CONFIG, min_rx_us=300_000), 1.0)
    assert session.required_min_rx_us == 300_000
    assert session.detection_time_us == 1_800_000
    session.receive(peer_packet(UP, final=True), 1.1)
    assert session.detection_time_us == 900_000


def test_a_poll_is_answered_with_a_final_at_once():
    session = session_in(UP)
    session.receive(peer_packet(UP, final=True), 0.0)
    session.advance(0.0)
    session.receive(peer_packet(UP, poll=True), 0.05)
    assert session.next_due() == 0.05
    finals = [p for p in session.advance(0.05).packets if p.final]
    assert len(finals) == 1 and not finals[0].poll


def test_intervals_change_without_poll_while_down():
    session = session_in(DOWN)
    session.reconfigure(replace(CONFIG, min_rx_us=50_000), 1.0)
    assert not session.polling and session.required_min_rx_us == 50_000


# --------------------------------------------------------------------------------------------- simulated link


class Link:
    """Two sessions joined by a link with a delay; ``drop(a_to_b, b_to_a)`` cuts either direction."""

    def __init__(self, a: Session, b: Session, delay: float) -> None:
        self.ends = (a, b)
        self.delay = delay
        self.cut = [False, False]
        self.queue: list[tuple[float, int, int, bytes]] = []  # (arrival, seq, to, wire)
        self.seq = 0
        self.now = 0.0
        self.changes: list[tuple[float, int, int, int]] = []  # (time, end, state, diag)

    def _emit(self, end: int, out) -> None:
        if out.changed:
            s = self.ends[end]
            self.changes.append((self.now, end, s.state, s.local_diag))
        for packet in out.packets:
            if not self.cut[end]:
                self.seq += 1
                heapq.heappush(self.queue, (self.now + self.delay, self.seq, 1 - end, encode(packet)))

    def run_until(self, until: float) -> None:
        while True:
            due = min(s.next_due() for s in self.ends)
            arrival = self.queue[0][0] if self.queue else float("inf")
            self.now = min(due, arrival)
            if self.now > until:
                self.now = until
                return
            if arrival <= due:
                _, _, to, wire = heapq.heappop(self.queue)
                session = self.ends[to]
                self._emit(to, session.receive(decode(wire), self.now))
                self._emit(to, session.advance(self.now))
            else:
                for end, session in enumerate(self.ends):
                    if session.next_due() <= self.now:
                        self._emit(end, session.advance(self.now))


def configs():
    return st.builds(
        lambda tx, rx, mult: replace(CONFIG, min_tx_us=tx * 1000, min_rx_us=rx * 1000, multiplier=mult),
        st.integers(10, 2000),
        st.integers(10, 2000),
        st.integers(1, 10),
    )


def pair(seed: int, config_a: BfdPeerConfig, config_b: BfdPeerConfig, start_b: float) -> tuple:
    rng = random.Random(seed)
    a = Session(config_a, rng.randint(1, 2**32 - 1), 0.0, rng)
    b = Session(
        replace(config_b, peer=CONFIG.local, local=CONFIG.peer), rng.randint(1, 2**32 - 1), start_b, rng
    )
    return a, b


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), configs(), configs(), st.floats(0, 0.005), st.floats(0, 3))
def test_two_sessions_always_come_up(seed, config_a, config_b, delay, start_b):
    a, b = pair(seed, config_a, config_b, start_b)
    link = Link(a, b, delay)
    link.run_until(10.0)
    assert (a.state, b.state) == (UP, UP)
    link.run_until(20.0)  # and stay up once the Poll to the configured rates is done
    assert (a.state, b.state) == (UP, UP)
    assert not a.polling and not b.polling
    assert a.tx_interval_us == max(a.config.min_tx_us, b.config.min_rx_us)
    assert a.detection_time_us == b.config.multiplier * max(a.config.min_rx_us, b.config.min_tx_us)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), configs(), configs(), st.floats(0, 0.005), st.booleans())
def test_silence_longer_than_detection_time_ends_in_down_diag_1(seed, config_a, config_b, delay, both):
    a, b = pair(seed, config_a, config_b, 0.0)
    link = Link(a, b, delay)
    link.run_until(20.0)
    assert (a.state, b.state) == (UP, UP)
    detection = a.detection_time_us / 1e6
    link.cut = [both, True]  # b -> a always; a -> b as well when both
    link.run_until(20.0 + detection + delay)
    downs = [c for c in link.changes if c[0] > 20.0 and c[1] == 0]
    assert downs and downs[0][2:] == (DOWN, 1)
    assert downs[0][0] <= 20.0 + detection + delay
    assert a.downs == 1


def test_a_faster_peer_rx_reschedules_the_next_packet_and_a_slower_one_does_not():
    session = session_in(UP, replace(CONFIG, min_tx_us=100_000))
    session.receive(peer_packet(UP, final=True, required_min_rx_us=1_000_000), 0.0)
    session.advance(0.0)
    slow_due = session._next_tx
    assert slow_due >= 0.75
    session.receive(peer_packet(UP, required_min_rx_us=2_000_000), 0.05)
    assert session._next_tx == slow_due
    session.receive(peer_packet(UP, required_min_rx_us=100_000), 0.1)
    assert 0.175 <= session._next_tx <= 0.2
