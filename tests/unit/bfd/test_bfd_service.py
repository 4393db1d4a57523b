"""The BFD engine (bgp.bfd.service) over an in-memory link: configure/diff, AdminDown on removal, Poll on
interval changes, demultiplexing, caps, transport errors in status, callbacks. The UDP transport itself is
exercised against real kernels in tests/netns/test_bfd_interop.py; ``parse_ancillary`` is checked here."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from dataclasses import replace

import pytest

from bgp.bfd.api import BfdPeerConfig, BfdStatus
from bgp.bfd.packet import ControlPacket, decode, encode
from bgp.bfd.service import RETIRE_PACKETS, BfdEngine
from bgp.bfd.transport import parse_ancillary

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"


class Net:
    """Engines by address; ``send`` queues, ``flush`` delivers (no re-entry into an engine mid-tick)."""

    def __init__(self) -> None:
        self.delivers: dict[str, object] = {}
        self.queue: list[tuple[str, str, bytes]] = []  # (to, from, datagram)
        self.cut: set[str] = set()  # addresses whose packets are lost
        self.sent: list[tuple[str, str, ControlPacket]] = []
        self.errors: dict[tuple[str, str], str] = {}

    def transport(self, address: str):
        net = self

        class Fake:
            def __init__(self, deliver) -> None:
                net.delivers[address] = deliver
                self.closed = False

            def sync(self, configs):
                return float("inf")

            def send(self, key, data):
                peer, local = key
                net.sent.append((local, peer, decode(data)))
                if local not in net.cut:
                    net.queue.append((peer, local, data))
                return True

            def error(self, config):
                return net.errors.get(config.key, "")

            def close(self):
                self.closed = True

        return Fake

    def flush(self) -> None:
        for _ in range(1000):
            if not self.queue:
                return
            to, source, data = self.queue.pop(0)
            if to in self.delivers:
                self.delivers[to](data, source, to)
        raise AssertionError("the link never went quiet")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lab():
    net, clock = Net(), Clock()
    changes: list[tuple[str, BfdStatus]] = []

    def engine(address: str, seed: int) -> BfdEngine:
        return BfdEngine(
            lambda status: changes.append((address, status)),
            clock=clock,
            rng=random.Random(seed),
            transport=net.transport(address),
        )

    a, b = engine(A, 1), engine(B, 2)

    def run(until: float) -> None:
        run_engines([a, b], net, clock, until)

    return net, clock, changes, a, b, run


def run_engines(engines: list[BfdEngine], net: Net, clock: Clock, until: float) -> None:
    """Step the engines' timers and the link to ``until``. The next due time is taken only once the link is
    quiet: a delivery can move a session's timer earlier (the real engine is poked then), and jumping to a
    time computed before it would let one engine's detection timer run ahead of the other's packet."""
    while clock.now < until:
        due = min(e.tick(clock.now) for e in engines)
        while net.queue:
            net.flush()
            due = min(e.tick(clock.now) for e in engines)
        clock.now = min(max(due, clock.now + 1e-6), until)


def config(peer: str, local: str, **fields) -> dict:
    c = BfdPeerConfig(peer, local, **fields)
    return {c.key: c}


def state(engine: BfdEngine, peer: str) -> str:
    return next(s.state for s in engine.status() if s.peer == peer)


def test_two_engines_come_up_and_report_every_change(lab):
    net, clock, changes, a, b, run = lab
    a.configure(config(B, A))
    b.configure(config(A, B, min_tx_us=200_000, min_rx_us=200_000))
    assert changes == []  # configure itself never calls back
    run(5.0)
    assert (state(a, B), state(b, A)) == ("Up", "Up")
    seen = [s.state for who, s in changes if who == A]
    assert seen in (["Init", "Up"], ["Up"])  # Down -> Up directly when the peer's Init arrives first
    ours = a.status()[0]
    assert ours.tx_interval_us == 300_000 and ours.detection_time_us == 3 * 300_000
    assert ours.remote_discriminator == b.status()[0].local_discriminator


def test_removal_sends_admin_down_and_the_peer_goes_down_diag_3(lab):
    net, clock, changes, a, b, run = lab
    a.configure(config(B, A))
    b.configure(config(A, B))
    run(5.0)
    changes.clear()
    a.configure({})
    assert a.status() == []
    run(10.0)
    theirs = b.status()[0]
    assert (theirs.state, theirs.local_diagnostic) == ("Down", "Neighbor Signaled Session Down")
    assert theirs.remote_diagnostic == "Administratively Down"
    assert [who for who, _ in changes] == [B]  # none for the session we removed
    admin_downs = [p for local, _, p in net.sent if local == A and p.state == 0]
    assert len(admin_downs) == RETIRE_PACKETS and all(p.diagnostic == 7 for p in admin_downs)


def test_interval_change_polls_and_stays_up(lab):
    net, clock, changes, a, b, run = lab
    a.configure(config(B, A))
    b.configure(config(A, B))
    run(5.0)
    changes.clear()
    net.sent.clear()
    a.configure(config(B, A, min_tx_us=100_000, min_rx_us=100_000))
    run(8.0)
    assert changes == []
    assert any(p.poll for local, _, p in net.sent if local == A)
    assert any(p.final for local, _, p in net.sent if local == B)
    assert a.status()[0].tx_interval_us == 300_000  # their RX still bounds our TX
    assert b.status()[0].tx_interval_us == 300_000
    assert b.status()[0].detection_time_us == 3 * 300_000
    b.configure(config(A, B, min_tx_us=100_000, min_rx_us=100_000))
    run(11.0)
    assert a.status()[0].tx_interval_us == 100_000 and state(a, B) == "Up"


def test_blackhole_ends_in_down_diag_1(lab):
    net, clock, changes, a, b, run = lab
    a.configure(config(B, A))
    b.configure(config(A, B))
    run(5.0)
    net.cut.add(B)
    start = clock.now
    run(start + 2.0)
    down = [(s.since, s.local_diagnostic) for who, s in changes if who == A and s.state == "Down"]
    assert down and down[0][1] == "Control Detection Time Expired"
    assert down[0][0] - start <= 0.9
    assert a.status()[0].downs == 1


def _packet(**fields) -> bytes:
    values = dict(
        state=1,
        diagnostic=0,
        detect_mult=3,
        my_discriminator=9,
        your_discriminator=0,
        desired_min_tx_us=1_000_000,
        required_min_rx_us=1_000_000,
    )
    values.update(fields)
    return encode(ControlPacket(**values))


def test_demultiplexing(lab):
    net, clock, changes, a, b, run = lab
    a.configure({**config(B, A), **config(C, A)})
    mine = {s.peer: s.local_discriminator for s in a.status()}
    deliver = net.delivers[A]
    deliver(_packet(), "10.9.9.9", A)  # Your Discriminator 0 from nobody we know
    deliver(_packet(your_discriminator=12345 if 12345 not in mine.values() else 1), B, A)
    deliver(_packet(state=3, your_discriminator=mine[C]), B, A)  # C's discriminator, from B
    deliver(b"\x40" + bytes(23), B, A)  # version 2
    assert dict(a.dropped) == {
        "no session for the source and destination": 1,
        "unknown Your Discriminator": 1,
        "Your Discriminator from another source": 1,
        "version 2: only version 1 is spoken": 1,
    }
    assert (state(a, B), state(a, C)) == ("Down", "Down")
    deliver(_packet(), C, A)  # C says Down with Your Discriminator 0: matched by addresses
    assert state(a, C) == "Init"


def test_sessions_over_the_cap_are_reported_down_with_the_reason(lab):
    net, clock, changes, a, b, run = lab
    capped = BfdEngine(clock=clock, max_sessions=1, transport=net.transport("10.0.0.9"))
    capped.configure({**config(B, A), **config(C, A)})
    found = {s.peer: s for s in capped.status()}
    assert found[B].error == "" and found[C].state == "Down"
    assert found[C].error == "over the cap of 1 BFD sessions"


def test_transport_errors_show_in_status(lab):
    net, clock, changes, a, b, run = lab
    a.configure(config(B, A))
    net.errors[(B, A)] = "send socket from 10.0.0.1: Cannot assign requested address (retrying)"
    assert a.status()[0].error.startswith("send socket from 10.0.0.1")


def test_a_failing_callback_does_not_stop_the_engine(lab):
    net, clock, changes, a, b, run = lab

    def boom(status):
        raise RuntimeError("consumer bug")

    a.on_change = boom
    a.configure(config(B, A))
    b.configure(config(A, B))
    run(5.0)
    assert state(a, B) == "Up"


def test_configure_refuses_a_key_that_does_not_match():
    with pytest.raises(ValueError, match="keyed"):
        BfdEngine(transport=Net().transport(A)).configure({(B, C): BfdPeerConfig(B, A)})


async def test_run_serves_until_cancelled():
    net = Net()
    fast = dict(min_tx_us=10_000, min_rx_us=10_000)
    engines = [BfdEngine(transport=net.transport(addr)) for addr in (A, B)]
    engines[0].configure(config(B, A, **fast))
    engines[1].configure(config(A, B, **fast))

    async def pump():
        while True:
            net.flush()
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(e.run()) for e in engines] + [asyncio.create_task(pump())]
    try:
        async with asyncio.timeout(10):
            while {state(engines[0], B), state(engines[1], A)} != {"Up"}:
                await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------- ancillary data


@pytest.mark.parametrize(
    "family, ancdata, expected",
    [
        (
            socket.AF_INET,
            [
                (socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", 255)),
                (socket.IPPROTO_IP, 8, struct.pack("=i", 3) + bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 7])),
            ],
            (255, "10.0.0.7"),
        ),
        (socket.AF_INET, [(socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", 254))], (254, "")),
        (
            socket.AF_INET6,
            [
                (
                    socket.IPPROTO_IPV6,
                    socket.IPV6_PKTINFO,
                    socket.inet_pton(socket.AF_INET6, "fd00::7") + b"\0" * 4,
                ),
                (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("=i", 255)),
            ],
            (255, "fd00::7"),
        ),
        (socket.AF_INET6, [], (None, "")),
        (socket.AF_INET6, [(socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, b"\1")], (None, "")),  # truncated
    ],
)
def test_parse_ancillary(family, ancdata, expected):
    assert parse_ancillary(family, ancdata) == expected


def test_replace_keeps_key():
    assert replace(BfdPeerConfig(B, A), min_tx_us=1).key == (B, A)
