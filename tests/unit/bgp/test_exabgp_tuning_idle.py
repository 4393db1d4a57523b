"""bgp.exabgp.tuning_idle: a quiet established peer is skipped between its timers, and still sends its
keepalives, meets its hold timer, its End-of-RIB and queued routes at the reactor pass upstream would.

Both loops run ExaBGP's own ``Peer._main`` generator, ``KA``, ``SendTimer`` and ``ReceiveTimer`` on a
simulated clock, over a stand-in for the connection; one gives the peer every pass (upstream), the other
asks ``tuning_idle`` first. The classes of this test process stay unpatched (subclasses carry the wrappers).
"""

from __future__ import annotations

import os
import select
import signal
from collections import deque
from types import SimpleNamespace

import pytest
from exabgp.bgp.fsm import FSM
from exabgp.bgp.message import _NOP, KeepAlive, Notify
from exabgp.bgp.message.open.capability import REFRESH
from exabgp.bgp.message.open.holdtime import HoldTime
from exabgp.bgp.neighbor import Neighbor
from exabgp.bgp.timer import ReceiveTimer
from exabgp.reactor.peer import ACTION, Peer
from speaker_rig import Clock

from bgp.exabgp import tuning_idle

TICK = 0.1  # the reactor's idle tick (bgp.exabgp.tuning.IDLE_TICK_SPEED)
TICK_MS = 100
FD, API_FD, WAKE_FD = 7, 8, 9


class Outgoing:
    """The Adj-RIB-Out as ``_main`` sees it: pending or not."""

    def __init__(self):
        self.queued = 0

    def pending(self):
        return self.queued > 0

    def replace_restart(self, previous, current):
        pass


class Wire:
    """The session's connection: what the peer sends is noted with the simulated time."""

    def __init__(self, clock: Clock, hold: int):
        self.clock = clock
        self.inbox: deque = deque()
        self.sent: list[tuple[str, float]] = []
        self.negotiated = SimpleNamespace(holdtime=HoldTime(hold), refresh=REFRESH.ABSENT, families=[])
        self.connection = SimpleNamespace(session=lambda: "test", name=lambda: "test")
        self.outgoing = Outgoing()

    def fd(self):
        return FD

    def read_message(self):
        while True:
            yield self.inbox.popleft() if self.inbox else _NOP

    def new_keepalive(self, comment=""):
        self.sent.append(("keepalive", self.clock.now))
        yield _NOP
        yield KeepAlive()

    def new_update(self, include_withdraw):
        while self.outgoing.queued:
            self.outgoing.queued -= 1
            self.sent.append(("update", self.clock.now))
            yield _NOP

    def new_eors(self, afi=None, safi=None):
        self.sent.append(("eor", self.clock.now))
        yield _NOP


class UpstreamPeer(Peer):
    pass


class IdlePeer(Peer):
    _main = tuning_idle.wrap_main(Peer._main)


def _established(cls, clock: Clock, hold: int):
    neighbor = Neighbor()
    neighbor.api = {"neighbor-changes": False, "fsm": False}
    reactor = SimpleNamespace(processes=SimpleNamespace(broken=lambda neighbor: False))
    peer = cls(neighbor, reactor)
    wire = Wire(clock, hold)
    neighbor.rib = SimpleNamespace(incoming=SimpleNamespace(clear=lambda: None), outgoing=wire.outgoing)
    peer.proto = wire
    peer.fsm = FSM(peer, FSM.ESTABLISHED)
    peer.recv_timer = ReceiveTimer(wire.connection.session, wire.negotiated.holdtime, 4, 0)
    peer.generator = peer._main()
    return peer, wire


class Poll:
    """The reactor's poll over simulated time: a wait ends at its timeout or at the next event of the
    remote side (a KEEPALIVE on the peer's socket) or of the API (routes queued, on the API's pipe)."""

    def __init__(self, wire: Wire, clock: Clock, events=()):
        self.wire, self.clock = wire, clock
        self.events = deque(sorted(events))  # (time, "keepalive" | "routes")
        self.waits: list[float] = []

    def register(self, fd, *mask):
        pass

    def unregister(self, fd):
        pass

    def poll(self, timeout=None):
        if self.wire.inbox:
            return [(FD, select.POLLIN)]
        end = self.clock.now + (timeout or 0) / 1000
        self.waits.append((timeout or 0) / 1000)
        if self.events and self.events[0][0] <= end:
            when, kind = self.events.popleft()
            self.clock.now = max(self.clock.now, when)
            if kind == "keepalive":
                self.wire.inbox.append(KeepAlive())
                return [(FD, select.POLLIN)]
            self.wire.outgoing.queued += 2
            return [(API_FD, select.POLLIN)]
        self.clock.now = end
        return []


class Wake:
    """The read end of the signal wake-up pair, for a reactor that never gets a signal."""

    def fileno(self):
        return WAKE_FD

    def recv(self, size):
        return b""


@pytest.fixture
def clock(monkeypatch):
    clock = Clock(1_000_000.25)
    # ExaBGP's timers read time.time() through their module's ``time``.
    monkeypatch.setattr("exabgp.bgp.timer.time", SimpleNamespace(time=clock))
    monkeypatch.setattr("exabgp.reactor.peer.time", SimpleNamespace(time=clock))
    monkeypatch.setattr(
        "exabgp.reactor.peer.log", SimpleNamespace(info=_ignore, debug=_ignore, error=_ignore)
    )
    monkeypatch.setattr("exabgp.bgp.timer.log", SimpleNamespace(debug=_ignore))
    return clock


def _ignore(*args, **kwargs):
    return None


def _simulate(idle: bool, clock: Clock, hold: int, seconds: float, events):
    """The reactor's passes for ``seconds``, each followed by its wait (the tick, or none when the peer asked
    to run again). Returns what the peer sent, its turns, when a Notify (the hold timer) came, the waits."""
    cls = IdlePeer if idle else UpstreamPeer
    peer, wire = _established(cls, clock, hold)
    start = clock.now
    poll = Poll(wire, clock, [(start + t, kind) for t, kind in events])
    run = tuning_idle.wrap_run(Peer.run, ACTION.LATER, FSM.ESTABLISHED, clock) if idle else Peer.run
    reactor = SimpleNamespace(
        _peers={"p": peer},
        _poller=poll,
        processes=peer.reactor.processes,
        listener=SimpleNamespace(_accepted={}, _sockets={}),
        asynchronous=SimpleNamespace(ready=lambda: True),
    )
    choose = tuning_idle.wrap_active_peers(
        lambda self: {"p"}, FSM.ESTABLISHED, clock, lambda: (Wake(), Wake())
    )
    turns = 0
    while clock.now < start + seconds:
        sleep = TICK_MS
        if not idle or "p" in choose(reactor):
            turns += 1
            try:
                action = run(peer)
            except Notify as notify:
                return wire.sent, turns, (notify.code, clock.now - start), poll.waits
            if action == ACTION.NOW:
                sleep = 0
        reactor._poller.poll(sleep)
    return wire.sent, turns, None, poll.waits


def _keepalives_from_peer(every: float | None, until: float = 1e9):
    """The remote side's KEEPALIVEs, every ``every`` seconds (None: none at all) until ``until``."""
    if every is None:
        return []
    return [(k * every, "keepalive") for k in range(1, int(min(until, 600) / every) + 1) if k * every < until]


def _no_later_and_within_a_tick(ours, upstream):
    # Upstream checks its timers on the tick; we wake at the deadline itself: at most a tick earlier.
    assert [kind for kind, _ in ours] == [kind for kind, _ in upstream]
    for (_, mine), (_, theirs) in zip(ours, upstream, strict=True):
        assert theirs - TICK - 0.002 <= mine <= theirs + 1e-9


@pytest.mark.parametrize(
    ("hold", "remote_every", "seconds"),
    [
        (3, 1.0, 20),  # the shortest hold time: a keepalive every second
        (9, 3.0, 40),
        (90, 30.0, 200),  # Calico's default
        (240, 80.0, 500),
        (0, None, 60),  # no hold timer, no keepalives: only the safety net wakes the peer
    ],
)
def test_keepalives_go_out_on_time(clock, hold, remote_every, seconds):
    start = clock.now
    upstream, upstream_turns, upstream_down, _ = _simulate(
        False, clock, hold, seconds, _keepalives_from_peer(remote_every)
    )
    clock.now = start
    ours, our_turns, our_down, waits = _simulate(
        True, clock, hold, seconds, _keepalives_from_peer(remote_every)
    )
    _no_later_and_within_a_tick(ours, upstream)
    assert upstream_down is None and our_down is None
    if hold:
        assert sum(kind == "keepalive" for kind, _ in ours) >= seconds // (hold // 3) - 1
    assert our_turns * 3 < upstream_turns  # most passes skip the quiet peer
    assert max(waits) <= tuning_idle.MAX_IDLE and (hold == 3 or max(waits) > 10 * TICK)  # long waits


@pytest.mark.parametrize(("hold", "silent_after"), [(3, 2.0), (9, 5.0), (90, 31.0)])
def test_hold_timer_expires_on_time(clock, hold, silent_after):
    events = _keepalives_from_peer(hold / 3, until=silent_after)
    start = clock.now
    _, _, upstream_down, _ = _simulate(False, clock, hold, silent_after + hold + 5, events)
    clock.now = start
    _, _, our_down, _ = _simulate(True, clock, hold, silent_after + hold + 5, events)
    assert upstream_down is not None and upstream_down[0] == 4  # Hold Timer Expired
    assert our_down[0] == 4 and upstream_down[1] - TICK - 0.002 <= our_down[1] <= upstream_down[1] + 1e-9


def test_queued_routes_go_out_at_the_next_pass(clock):
    events = [(3.72, "routes"), (3.75, "routes"), (12.31, "routes"), *_keepalives_from_peer(30.0)]
    start = clock.now
    upstream, _, _, _ = _simulate(False, clock, 90, 20, events)
    clock.now = start
    ours, _, _, _ = _simulate(True, clock, 90, 20, events)
    assert [kind for kind, _ in ours].count("update") == 6
    updates = [t for kind, t in ours if kind == "update"]
    assert updates == [t for kind, t in upstream if kind == "update"]
    assert [round(t - start, 2) for t in updates] == [3.72, 3.72, 3.75, 3.75, 12.31, 12.31]


def test_work_left_in_the_session_generator_keeps_the_peer_running(clock):
    peer, wire = _established(IdlePeer, clock, 90)
    wire.outgoing.queued = 1
    run = tuning_idle.wrap_run(Peer.run, ACTION.LATER, FSM.ESTABLISHED, clock)
    actions = []
    for _ in range(6):
        actions.append(run(peer))
        if getattr(peer, tuning_idle.IDLE_ATTR) is not None:
            break
    # The route and the End-of-RIB went out before the peer was let go idle.
    assert [kind for kind, _ in wire.sent] == ["update", "eor"]
    until, fd = getattr(peer, tuning_idle.IDLE_ATTR)
    assert fd == FD and until == clock.now + tuning_idle.MAX_IDLE  # keepalive due later than the safety net


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda peer, wire: None, False),
        (lambda peer, wire: setattr(peer, "_teardown", 3), True),
        # A reload's new definition: upstream adopts it after the next message, a socket event itself.
        (lambda peer, wire: setattr(peer, "_neighbor", peer.neighbor), False),
        (lambda peer, wire: setattr(wire.outgoing, "queued", 1), True),
        (lambda peer, wire: peer.neighbor.eor.append("eor"), True),
        (lambda peer, wire: peer.neighbor.refresh.append("refresh"), True),
        (lambda peer, wire: peer.neighbor.messages.append("operational"), True),
        (lambda peer, wire: setattr(peer.fsm, "state", FSM.IDLE), True),
        (lambda peer, wire: wire.inbox.append(KeepAlive()), True),  # its socket had an event
    ],
)
def test_queued_work_or_io_gives_an_idle_peer_its_turn(clock, change, expected):
    peer, wire = _established(IdlePeer, clock, 90)
    run = tuning_idle.wrap_run(Peer.run, ACTION.LATER, FSM.ESTABLISHED, clock)
    while run(peer) != ACTION.LATER or getattr(peer, tuning_idle.IDLE_ATTR) is None:
        pass
    poll = tuning_idle.ReadyPoll(Poll(wire, clock), clock, None)
    change(peer, wire)
    poll.poll(0)
    assert (
        tuning_idle.needs_turn(peer, poll.ready, clock.now + 1, FSM.ESTABLISHED, lambda n: False) is expected
    )


def test_a_lost_api_process_gives_every_peer_its_turn(clock):
    peer, _ = _established(IdlePeer, clock, 90)
    run = tuning_idle.wrap_run(Peer.run, ACTION.LATER, FSM.ESTABLISHED, clock)
    while run(peer) != ACTION.LATER or getattr(peer, tuning_idle.IDLE_ATTR) is None:
        pass
    assert not tuning_idle.needs_turn(peer, set(), clock.now, FSM.ESTABLISHED, lambda n: False)
    assert tuning_idle.needs_turn(peer, set(), clock.now, FSM.ESTABLISHED, lambda n: True)


def test_peers_not_established_are_never_skipped(clock):
    peer, _ = _established(IdlePeer, clock, 90)
    peer.fsm = FSM(peer, FSM.OPENCONFIRM)
    assert tuning_idle.idle_until(peer, ACTION.LATER, ACTION.LATER, FSM.ESTABLISHED, clock.now) is None


class RecordingPoll:
    """A poll that reports every fd registered at the time of the call as readable."""

    def __init__(self):
        self.registered: set[int] = set()
        self.calls: list[tuple[int, frozenset[int]]] = []

    def register(self, fd, *mask):
        self.registered.add(fd)

    def unregister(self, fd):
        self.registered.discard(fd)

    def poll(self, timeout=None):
        self.calls.append((timeout, frozenset(self.registered)))
        return [(fd, select.POLLIN) for fd in sorted(self.registered)]


@pytest.mark.parametrize(
    ("sleep_until", "timeout", "expected_wait", "extras_watched"),
    [
        (None, 100, 100, False),  # a peer needs its turns: the tick
        (2.5, 100, 2500, True),  # every peer idle until 2.5 s from now
        (2.5, 0, 0, False),  # work is waiting (the work-conserving wait asked for none)
        (0.05, 100, 100, False),  # a deadline inside the tick: the tick
        (60.0, 100, tuning_idle.MAX_SLEEP_MS, True),
    ],
)
def test_a_long_wait_also_watches_the_listeners_and_signals_and_hides_them(
    clock, sleep_until, timeout, expected_wait, extras_watched
):
    inner = RecordingPoll()
    poll = tuning_idle.ReadyPoll(inner, clock, (Wake(), Wake()))
    poll.register(FD)
    poll.deadline = lambda: None if sleep_until is None else (clock.now + sleep_until, (20, 21))
    events = poll.poll(timeout)
    wait, watched = inner.calls[-1]
    assert wait == expected_wait
    assert watched == ({FD, WAKE_FD, 20, 21} if extras_watched else {FD})
    assert events == [(FD, select.POLLIN)] and poll.ready == {FD}  # the extras' events stay ours
    assert inner.registered == {FD}  # the extras only for that wait


def test_signals_write_to_the_wakeup_pair():
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    pair = tuning_idle.signal_wakeup()
    try:
        assert pair is not None
        assert tuning_idle.signal_wakeup() is None  # the wake-up fd is taken: no second owner
        os.kill(os.getpid(), signal.SIGUSR2)
        assert pair[0].recv(16) == bytes([signal.SIGUSR2])
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR2, previous)
        if pair is not None:
            for sock in pair:
                sock.close()
