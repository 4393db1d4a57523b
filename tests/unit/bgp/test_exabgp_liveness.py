"""ExaBGP liveness and rebuilding after a restart: the probe verdict on a fake clock (tables and a property),
and the speaker's rule that nothing is replayed into a new ExaBGP and everything is rebuilt from its own
tables, through a real ApiChannel with a socket client standing in for the bridge."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from test_speaker import eor, intent, nlri_of, open_msg, state, update

from bgp.exabgp.channel import ApiChannel, _chunks
from bgp.exabgp.liveness import MAX_OUTSTANDING, Liveness, LivenessSettings, is_answer
from bgp.metrics import SpeakerMetrics
from bgp.speaker import Speaker
from routes.testing import FakeRouteTable

S = LivenessSettings(interval=5.0, deadline=10.0, check_every=1.0, confirm=0.5)


# ---------------------------------------------------------------------- the verdict, pure


@pytest.mark.parametrize(
    ("events", "at", "hung"),
    [
        # (time, what) ... then the verdict asked at `at`
        ([(0, "connect"), (0, "probe")], 9.9, False),  # owed, but the deadline is not over
        ([(0, "connect"), (0, "probe")], 10.0, True),  # owed for the whole deadline, nothing moved
        ([(0, "connect"), (0, "probe"), (1, "answer")], 100.0, False),  # nothing owed: nothing to judge
        ([(0, "connect"), (0, "probe"), (8, "progress")], 17.9, False),  # busy: took our bytes at 8
        ([(0, "connect"), (0, "probe"), (8, "progress")], 18.0, True),
        ([(0, "connect"), (0, "probe"), (1, "answer"), (5, "probe")], 15.0, True),
        ([(0, "connect"), (0, "probe"), (3, "disconnect")], 50.0, False),  # gone is not hung: EOF says so
        ([(0, "connect"), (0, "probe"), (3, "connect")], 12.0, False),  # a new connection owes nothing
    ],
)
def test_verdict(events, at, hung):
    live = Liveness(S)
    for when, what in events:
        {
            "connect": lambda t: live.connected_at(t),
            "probe": lambda t: live.sent(t),
            "answer": lambda t: live.answered(t),
            "progress": lambda t: live.progressed(t),
            "disconnect": lambda t: live.disconnected(),
        }[what](when)
    assert (live.verdict(at) is not None) == hung


def test_probes_are_due_by_interval_and_bounded():
    live = Liveness(S)
    assert not live.due(0.0)  # not connected: nobody to ask
    live.connected_at(100.0)
    assert live.due(100.0)  # the first one at once
    sent = 0
    for now in range(100, 200):
        if live.due(float(now)):
            live.sent(float(now))
            sent += 1
    assert sent == MAX_OUTSTANDING and live.owed == MAX_OUTSTANDING  # a hung ExaBGP gets no more
    live.answered(200.0)
    assert live.due(200.0) and live.last_rtt == 100.0  # answers are matched oldest first


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("exabgp 5.0.15\n", True),
        ("exabgp 5.0.15", True),
        ('{"exabgp": "5.0.0", "type": "state"}\n', False),
        ("done\n", False),
        ("exabgp-ish\n", False),
    ],
)
def test_probe_answers_are_recognised(line, answer):
    assert is_answer(line) == answer


@settings(max_examples=300, deadline=None)
@given(
    latency=st.floats(0.0, S.deadline * 0.9),  # a working ExaBGP answers within the deadline
    hang_at=st.floats(0.0, 200.0),
    connect_at=st.floats(0.0, 10.0),
)
def test_a_hang_is_judged_within_the_stated_bound_and_a_slow_answer_never(latency, hang_at, connect_at):
    """The caller's loop (as ApiChannel.check): every check_every, probe if due, then ask the verdict.
    ExaBGP answers each probe `latency` after it was sent, until it hangs."""
    live = Liveness(S)
    live.connected_at(connect_at)
    pending: list[float] = []
    now = connect_at
    while now < 400.0:
        now += S.check_every
        for sent in [p for p in pending if p + latency <= now and p + latency < hang_at]:
            pending.remove(sent)
            live.answered(sent + latency)
        if live.due(now):
            live.sent(now)
            pending.append(now)
        if live.verdict(now) is not None:
            assert now >= hang_at  # never while it works
            assert now - max(hang_at, connect_at) <= S.bound - S.confirm
            return
    raise AssertionError("the hang was never judged")


def test_the_stated_bound_is_well_inside_the_hold_time():
    assert LivenessSettings().bound <= 20.0 < 90.0 / 3


@pytest.mark.parametrize("size", [1, 7, 20, 1000])
def test_chunks_end_on_line_boundaries_and_lose_nothing(size):
    data = b"".join(f"neighbor 10.0.0.{i} announce eor ipv4 unicast\n".encode() for i in range(50))
    pieces = _chunks(data, size)
    assert b"".join(pieces) == data and all(p.endswith(b"\n") for p in pieces)


# ---------------------------------------------------------------------- the channel, over a real socket

FAST = LivenessSettings(interval=0.05, deadline=0.3, check_every=0.05, confirm=0.05)


class FakeBridge:
    """A unix-socket client in place of bridge.py: records what arrives, answers probes when told to."""

    def __init__(self, path, answer=True, read=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.answer = answer
        self.read = read
        self.received = b""

    def pump(self):
        if not self.read:
            return
        try:
            while data := self.sock.recv(1 << 20):
                self.received += data
        except BlockingIOError:
            pass
        if self.answer:
            probes = self.received.count(b"version\n") - getattr(self, "_answered", 0)
            if probes > 0:
                self.sock.sendall(b"exabgp 5.0.15\n" * probes)
                self._answered = getattr(self, "_answered", 0) + probes

    def say(self, line: str):
        self.sock.sendall(line.encode() + b"\n")

    def lines(self):
        return [x for x in self.received.decode().splitlines() if x != "version"]

    def close(self):
        self.sock.close()


async def _until(predicate, bridges=(), timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        for bridge in bridges:
            bridge.pump()
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_silent_exabgp_is_judged_hung_and_a_slow_one_is_not(tmp_path):
    hung: list[str] = []
    lost: list[int] = []
    registry = CollectorRegistry()
    channel = ApiChannel(
        tmp_path / "api.sock",
        on_line=lambda line: None,
        on_disconnect=lambda: lost.append(1),
        on_hung=hung.append,
        liveness=FAST,
        registry=registry,
    )
    await channel.start()
    watcher = asyncio.create_task(channel.run())
    try:
        bridge = FakeBridge(tmp_path / "api.sock")
        await _until(lambda: channel.connected.is_set())
        # Answering: probes go out, come back, and nothing is judged for many deadlines.
        for _ in range(100):
            bridge.pump()
            await asyncio.sleep(0.01)
        assert hung == [] and channel.liveness.last_rtt is not None
        assert registry.get_sample_value("calico_bgp_exabgp_up") == 1
        # Silent from now on (SIGSTOP): judged hung, the connection ended, the daemon told.
        bridge.answer = False
        await _until(lambda: hung and lost, [bridge], timeout=3.0)
        assert "not responding" in hung[0] and registry.get_sample_value("calico_bgp_exabgp_up") == 0
        bridge.close()
    finally:
        watcher.cancel()
        await channel.close()


async def test_a_write_that_stops_draining_ends_within_the_deadline(tmp_path):
    hung: list[str] = []
    channel = ApiChannel(tmp_path / "api.sock", on_line=lambda line: None, on_hung=hung.append, liveness=FAST)
    await channel.start()
    bridge = FakeBridge(tmp_path / "api.sock", read=False)  # takes nothing: the socket fills
    await _until(lambda: channel.connected.is_set())
    lines = [f"neighbor 10.0.0.12 announce attributes next-hop 10.0.0.11 nlri 192.168.{i // 256}.{i % 256}/32"
             for i in range(100_000)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(channel.send(lines), 5)  # without the deadline this never returns
    assert loop.time() - started < FAST.deadline + 3 * FAST.check_every + 1
    assert hung and "not reading" in hung[0]
    assert channel.dropped > 0 and not channel.connected.is_set()
    bridge.close()
    await channel.close()


async def test_a_write_the_socket_takes_whole_makes_no_task_and_a_backlog_still_drains(tmp_path):
    channel = ApiChannel(tmp_path / "api.sock", on_line=lambda line: None, liveness=FAST)
    await channel.start()
    bridge = FakeBridge(tmp_path / "api.sock")
    await _until(lambda: channel.connected.is_set())
    loop = asyncio.get_running_loop()
    made: list[object] = []

    def counting(loop, coro, **kwargs):
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        one = "neighbor 10.0.0.12 announce attributes next-hop 10.0.0.11 nlri 10.1.0.1/32"
        assert await channel.send([one])
        assert made == []  # a route's command: written, taken, no drain task (wait_for made one each)
        # More than the socket takes at once, read slowly: the drains wait, within the deadline, and finish.
        lines = [f"withdraw attributes next-hop 10.0.0.11 nlri 10.{i // 65536}.{i // 256 % 256}.{i % 256}/32"
                 for i in range(60_000)]
        sending = asyncio.ensure_future(channel.send(lines))
        await _until(sending.done, [bridge])
        assert sending.result() and channel.dropped == 0
        await _until(lambda: len(bridge.lines()) == 1 + len(lines), [bridge])
    finally:
        loop.set_task_factory(None)
        bridge.close()
        await channel.close()


# ---------------------------------------------------------------------- rebuilt, never replayed


@pytest.fixture
async def wired(tmp_path):
    """A speaker and an ApiChannel wired as bgp.daemon wires them (disconnect -> exabgp_down, connect ->
    exabgp_up, start -> exabgp_restarted)."""
    registry = CollectorRegistry()
    table = FakeRouteTable()
    holder: dict = {}
    channel = ApiChannel(
        tmp_path / "api.sock",
        on_line=lambda line: holder["speaker"].handle_line(line),
        on_connect=lambda pid: holder["speaker"].exabgp_up(),
        on_disconnect=lambda: holder["speaker"].exabgp_down("ExaBGP restarting: its API connection was lost"),
        liveness=FAST,
    )
    speaker = Speaker(
        send=channel.send, route_table=table, metrics=SpeakerMetrics(registry), clock=lambda: 1000.0
    )
    holder["speaker"] = speaker
    speaker.set_intent(intent())
    await channel.start()
    yield speaker, channel, table, registry, tmp_path / "api.sock"
    await channel.close()


async def test_nothing_sent_while_exabgp_is_away_reaches_the_next_one(wired):
    speaker, channel, _, _, path = wired
    speaker.exabgp_restarted()
    first = FakeBridge(path)
    await _until(lambda: channel.connected.is_set())
    speaker.set_workload_routes(set())
    speaker.handle_line(state("10.0.0.12", "up"))
    await speaker.flush()
    await _until(lambda: any(" eor " in line for line in first.lines()), [first])
    first.close()  # ExaBGP died
    await _until(lambda: not channel.connected.is_set())
    speaker.set_workload_routes({"192.168.2.9/32"})  # a borrowed IP appears while ExaBGP is away...
    await speaker.flush()
    speaker.exabgp_restarted()  # ...the new ExaBGP starts...
    speaker.set_workload_routes(set())  # ...and the IP is gone before its bridge connects
    await speaker.flush()
    second = FakeBridge(path)
    await _until(lambda: channel.connected.is_set())
    speaker.handle_line(state("10.0.0.12", "up"))
    await speaker.flush()
    await _until(lambda: any(" eor " in line for line in second.lines()), [second])
    assert not any("192.168.2.9/32" in line for line in second.lines())  # never announced
    assert nlri_of(second.lines(), "announce") == ["192.168.1.0/26"]
    assert second.lines()[-1] == "neighbor 10.0.0.12 announce eor ipv4 unicast"
    assert channel.dropped == 0  # nothing was even attempted: no session counted as up meanwhile
    second.close()


async def test_a_lost_api_connection_is_the_truth_in_status_and_metrics_then_everything_is_rebuilt(wired):
    speaker, channel, table, registry, path = wired
    bridge = FakeBridge(path)
    await _until(lambda: channel.connected.is_set())
    speaker.set_workload_routes(set())
    for line in (
        open_msg("10.0.0.12"),
        state("10.0.0.12", "up"),
        update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26", "192.168.22.0/26"]),
    ):
        bridge.say(line)
    await _until(lambda: speaker.received_count("10.0.0.12") == 2, [bridge])
    await speaker.flush()
    labels = {"peer": "10.0.0.12", "family": "ipv4", "type": "node-to-node mesh"}
    assert registry.get_sample_value("calico_bgp_session_up", labels) == 1
    bridge.close()  # the bridge died: its events in flight (a withdraw, a session change) are lost
    await _until(lambda: not channel.connected.is_set())
    await speaker.flush()
    peer = next(s for s in speaker.peer_statuses() if s.address == "10.0.0.12")
    assert not peer.established and peer.bgp_state == "Idle" and "API connection was lost" in peer.info
    assert registry.get_sample_value("calico_bgp_session_up", labels) == 0
    # Its paths are kept as in a graceful restart: still forwarding, stale until re-announced.
    assert {"192.168.2.0/26", "192.168.22.0/26"} <= set(table.by_dst())
    assert speaker.stale_count("10.0.0.12") == 2
    speaker.exabgp_restarted()
    bridge = FakeBridge(path)
    await _until(lambda: channel.connected.is_set())
    assert next(s for s in speaker.peer_statuses() if s.address == "10.0.0.12").bgp_state == "Passive"
    for line in (
        open_msg("10.0.0.12"),
        state("10.0.0.12", "up"),
        update("10.0.0.12", "10.0.0.12", announce=["192.168.2.0/26"]),
        eor("10.0.0.12"),
    ):
        bridge.say(line)
    await _until(lambda: speaker.stale_count("10.0.0.12") == 0, [bridge])
    await speaker.flush()
    await _until(lambda: any(" eor " in line for line in bridge.lines()), [bridge])
    # Our whole Adj-RIB-Out, then End-of-RIB; what the peer did not re-announce is gone.
    assert nlri_of(bridge.lines(), "announce") == ["192.168.1.0/26"]
    assert bridge.lines()[-1] == "neighbor 10.0.0.12 announce eor ipv4 unicast"
    assert "192.168.22.0/26" not in table.by_dst() and "192.168.2.0/26" in table.by_dst()
    bridge.close()


def test_status_says_why_while_exabgp_is_down_and_keeps_the_first_reason():
    async def send(lines):
        raise AssertionError(f"nothing may be sent while ExaBGP is down: {lines}")

    speaker = Speaker(send=send, route_table=FakeRouteTable(), wallclock=lambda: 1000.0)
    speaker.set_intent(intent())
    for peer in ("10.0.0.12", "10.0.0.13"):
        speaker.handle_line(state(peer, "up"))
    speaker.exabgp_down("ExaBGP not responding: restarting it")
    speaker.exabgp_down("ExaBGP restarting: its API connection was lost")  # the same outage, seen again
    infos = {s.address: (s.established, s.info) for s in speaker.peer_statuses()}
    assert infos == {
        "10.0.0.12": (False, "Idle ExaBGP not responding: restarting it"),
        "10.0.0.13": (False, "Idle ExaBGP not responding: restarting it"),
    }
    asyncio.run(speaker.flush())
    speaker.exabgp_up()
    assert {s.bgp_state for s in speaker.peer_statuses()} == {"Passive"}  # both wait for the peer
    json.dumps([s.as_json() for s in speaker.peer_statuses()])  # still renders
