"""Health registry and event-loop watchdog, in virtual time: states from beats, silence and checks; lag
measured from how late the injected sleep returns; a blocked loop noticed from outside; the exit codes
of `calico-bgp health`."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from speaker_rig import Clock

from bgp.cli import cli
from bgp.watchdog import Health, LoopWatchdog


@pytest.fixture
def clock() -> Clock:
    return Clock(100.0)


@pytest.mark.parametrize(
    ("beat_at", "now", "problem", "state"),
    [
        (None, 100.0, None, "starting"),  # registered at 100, no beat yet, within its allowance
        (None, 131.0, None, "stale"),  # never a sign of life in 31 s
        (120.0, 140.0, None, "up"),
        (120.0, 150.0, None, "up"),  # exactly the allowance
        (120.0, 150.5, None, "stale"),
        (120.0, 121.0, "not in sync", "down"),  # a known problem wins over a fresh beat
    ],
)
def test_component_state(clock, beat_at, now, problem, state):
    health = Health(clock=clock)
    beat = health.register("datastore", max_silence=30.0, check=lambda: problem)
    if beat_at is not None:
        clock.now = beat_at
        beat()
    clock.now = now
    item = health.component("datastore")
    assert item.state == state
    assert item.silence == (None if beat_at is None else now - beat_at)
    if state == "down":
        assert item.detail == "not in sync"
    if state == "stale":
        assert "no sign of life" in item.detail


def test_report_and_metrics(clock):
    registry = CollectorRegistry()
    health = Health(clock=clock, registry=registry)
    health.register("kernel-watcher", max_silence=90.0)()
    health.register("quiet")  # no max_silence: silence alone is never a problem
    report = health.report()
    assert report == {
        "healthy": True,
        "components": {
            "kernel-watcher": {"state": "up", "silence_seconds": 0.0, "detail": ""},
            # No sign of life yet, but none is expected: only a check could say it is down.
            "quiet": {"state": "up", "silence_seconds": None, "detail": ""},
        },
    }
    health.beat("quiet")
    clock.now += 1000
    assert health.report()["components"]["quiet"]["state"] == "up"
    assert health.report()["components"]["kernel-watcher"]["state"] == "stale"
    assert health.report()["healthy"] is False
    health.refresh_metrics()
    up = lambda name: registry.get_sample_value("calico_bgp_component_up", {"component": name})  # noqa: E731
    assert up("quiet") == 1 and up("kernel-watcher") == 0
    assert registry.get_sample_value("calico_bgp_component_silence_seconds", {"component": "quiet"}) == 1000


class LateSleep:
    """Injected sleep: advances the clock by the delay plus the next scripted lag, then yields once."""

    def __init__(self, clock: Clock, lags: list[float]) -> None:
        self.clock = clock
        self.lags = list(lags)
        self.done = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        if not self.lags:
            self.done.set()
            await asyncio.Event().wait()
        self.clock.now += delay + self.lags.pop(0)
        await asyncio.sleep(0)


async def test_loop_lag_is_measured_exported_and_logged_with_a_rate_limit(clock, caplog):
    registry = CollectorRegistry()
    health = Health(clock=clock, registry=registry)
    lags = [0.0, 0.01, 0.3, 2.0, 0.0]
    sleep = LateSleep(clock, lags)
    dog = LoopWatchdog(health, interval=0.5, warn_after=0.25, clock=clock, sleep=sleep, registry=registry)
    with caplog.at_level(logging.WARNING, logger="bgp.watchdog"):
        task = asyncio.create_task(dog.run())
        await asyncio.wait_for(sleep.done.wait(), 1)
        task.cancel()
    assert dog.lag == 0.0 and dog.max_lag == pytest.approx(2.0)
    assert registry.get_sample_value("calico_bgp_event_loop_lag_seconds_count") == len(lags)
    assert registry.get_sample_value("calico_bgp_event_loop_lag_seconds_sum") == pytest.approx(sum(lags))
    assert registry.get_sample_value("calico_bgp_event_loop_lag_seconds_bucket", {"le": "0.25"}) == 3
    assert registry.get_sample_value("calico_bgp_event_loop_lag_max_seconds") == pytest.approx(2.0)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "lagged 0.300s" in warnings[0]  # the 2 s lag came within 10 s: counted
    assert health.component("event-loop").state == "up"


def test_the_lag_window_is_bounded_and_forgets_old_lags(clock):
    dog = LoopWatchdog(Health(clock=clock), interval=0.5, window=60.0, clock=clock)
    dog.observe(3.0)
    for _ in range(119):
        dog.observe(0.001)
    assert dog.max_lag == 3.0
    dog.observe(0.001)  # 120 ticks (one minute) later the 3 s lag has left the window
    assert dog.max_lag == 0.001 and len(dog._recent) == 120


def test_a_blocked_loop_is_noticed_from_outside_once_per_stall(clock, caplog):
    health = Health(clock=clock)
    dog = LoopWatchdog(health, blocked_after=5.0, clock=clock)
    assert dog.check_blocked() is None  # not started
    dog.observe(0.0)
    clock.now += 4.9
    assert dog.check_blocked() is None
    clock.now += 0.2
    with caplog.at_level(logging.ERROR, logger="bgp.watchdog"):
        assert dog.check_blocked() == pytest.approx(5.1)
        assert dog.check_blocked() == pytest.approx(5.1)
    assert [r.getMessage().split(";")[0] for r in caplog.records] == ["event loop blocked for 5.1s"]
    assert health.component("event-loop").state == "stale"
    dog.observe(5.1)  # the loop runs again: its lag tells how long it was held
    assert dog.check_blocked() is None and health.component("event-loop").state == "up"


class OneShotServer:
    """A control socket that answers one request with ``reply`` (None: accepts and never answers)."""

    def __init__(self, path, reply) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.reply = reply
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            self.requests.append(conn.recv(100))
            if self.reply is not None:
                conn.sendall(json.dumps(self.reply).encode() + b"\n")
            else:
                conn.recv(100)  # held until the client gives up

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize(
    ("reply", "code"),
    [({"healthy": True, "components": {}}, 0), ({"healthy": False, "components": {}}, 1), (None, 2)],
)
def test_health_command_exit_codes(tmp_path, reply, code):
    server = OneShotServer(tmp_path / "ctl.sock", reply)
    try:
        result = CliRunner().invoke(cli, ["health", "--run-dir", str(tmp_path), "--timeout", "0.2"])
    finally:
        server.close()
    assert server.requests == [b"health\n"]
    assert result.exit_code == code, result.output
    if reply is not None:
        assert json.loads(result.output) == reply
    else:
        assert "not answering" in result.output


def test_health_command_without_a_daemon(tmp_path):
    result = CliRunner().invoke(cli, ["health", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not running" in result.output
