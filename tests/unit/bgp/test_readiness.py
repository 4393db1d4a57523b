"""Readiness and liveness rules as tables (bgp.readiness), the probe-wait ExaBGP is judged on, the /readyz
/livez/metrics endpoints over a real loopback socket, `calico-bgp health --ready/--live`, the log level from
logSeverityScreen, the node run flags' environment names and the build-info metric."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, Gauge

from bgp.build_info import BuildInfo, adjustments_label
from bgp.cli import cli
from bgp.exabgp.liveness import Liveness, LivenessSettings
from bgp.exabgp.tuning import PATCHES, TUNING_ENV
from bgp.http_endpoints import EndpointServer, LoopCall
from bgp.loglevel import OFF, LogLevel
from bgp.node_cli import node_run
from bgp.readiness import (
    ComponentState,
    LiveFacts,
    PeerState,
    ReadyFacts,
    Verdict,
    liveness,
    readiness,
)

UP = PeerState("10.0.0.12", "ipv4", True)
DOWN = PeerState("10.0.0.13", "ipv4", False)
DOWN2 = PeerState("10.0.0.14", "ipv4", False)
UP6 = PeerState("fd00::12", "ipv6", True)
DOWN6 = PeerState("fd00::13", "ipv6", False)


def _ready(uptime=100.0, synced=True, rendered=True, exabgp=True, peers=(), eor_pending=False) -> ReadyFacts:
    return ReadyFacts(uptime, synced, rendered, exabgp, tuple(peers), eor_pending)


@pytest.mark.parametrize(
    ("facts", "ok", "reason"),
    [
        (_ready(synced=False, rendered=False, exabgp=False), False, "the datastore has not been read yet"),
        (_ready(rendered=False, exabgp=False), False, "no BGP configuration rendered yet"),
        (_ready(exabgp=False, peers=[UP]), False, "ExaBGP is not running the configuration"),
        (_ready(uptime=1.0), True, "no BGP peers configured"),
        (_ready(uptime=1.0, peers=[UP, DOWN]), False, "BGP not established with 10.0.0.13 (every peer"),
        (_ready(uptime=29.9, peers=[UP, DOWN, DOWN2]), False, "BGP not established with 10.0.0.13,10.0.0.14"),
        (_ready(uptime=1.0, peers=[UP], eor_pending=True), False, "graceful restart in progress"),
        (_ready(uptime=1.0, peers=[UP]), True, "1 of 1 BGP peers established"),
        # after the threshold one established peer per family is enough, and End-of-RIB no longer matters
        (_ready(uptime=30.0, peers=[UP, DOWN], eor_pending=True), True, "1 of 2 BGP peers established"),
        (_ready(uptime=30.0, peers=[DOWN, DOWN2]), False, "no IPv4 BGP peer established: BGP not establ"),
        (_ready(peers=[UP, DOWN6]), False, "no IPv6 BGP peer established: BGP not established with fd00::13"),
        (_ready(peers=[UP, UP6, DOWN6, DOWN]), True, "2 of 4 BGP peers established"),
    ],
)
def test_readiness(facts, ok, reason):
    verdict = readiness(facts)
    assert verdict.ok is ok
    assert verdict.reason.startswith(reason), verdict.reason


def _live(components=(), wanted=True, connected=True, down_for=0.0, waiting=0.0) -> LiveFacts:
    return LiveFacts(tuple(ComponentState(*c) for c in components), wanted, connected, down_for, waiting)


LOOP_UP = ("event-loop", "up")


@pytest.mark.parametrize(
    ("facts", "ok", "reason"),
    [
        (_live([LOOP_UP, ("kernel-watcher", "starting")]), True, "event loop and components answering"),
        (_live([("event-loop", "stale", "silent 6s")]), False, "component event-loop is stale: silent 6s"),
        (_live([LOOP_UP, ("kernel-watcher", "down", "x")]), False, "component kernel-watcher is down: x"),
        # etcd's silence is not ours: no restart for it
        (_live([LOOP_UP, ("datastore", "down", "not in sync")]), True, "event loop"),
        (_live([LOOP_UP, ("datastore", "stale")]), True, "event loop"),
        # ExaBGP's own component (API connection) is judged by the finer rule below
        (_live([LOOP_UP, ("exabgp", "down", "no API")], connected=False, down_for=1), True, "event loop"),
        (_live([LOOP_UP], connected=False, down_for=59.9), True, "event loop"),
        (_live([LOOP_UP], connected=False, down_for=60.0), False, "ExaBGP has had no API connection for 60s"),
        (_live([LOOP_UP], wanted=False, connected=False, down_for=600), True, "event loop"),  # no config yet
        (_live([LOOP_UP], waiting=4.9), True, "event loop"),
        (_live([LOOP_UP], waiting=5.0), False, "ExaBGP has not answered its API probe for 5.0s"),
    ],
)
def test_liveness(facts, ok, reason):
    verdict = liveness(facts)
    assert verdict.ok is ok
    assert verdict.reason.startswith(reason), verdict.reason


@pytest.mark.parametrize(
    ("events", "at", "waiting"),
    [
        ([], 50.0, 0.0),  # not connected
        ([(0, "connect")], 50.0, 0.0),  # nothing owed
        ([(0, "connect"), (5, "probe")], 9.0, 4.0),
        ([(0, "connect"), (5, "probe"), (7, "progress")], 9.0, 2.0),  # busy, not stuck
        ([(0, "connect"), (5, "probe"), (6, "answer")], 30.0, 0.0),
        ([(0, "connect"), (5, "probe"), (6, "answer"), (10, "probe")], 30.0, 20.0),
    ],
)
def test_probe_waiting_is_what_the_hang_verdict_is_judged_on(events, at, waiting):
    settings = LivenessSettings()
    live = Liveness(settings)
    actions = {"connect": live.connected_at, "probe": live.sent, "answer": live.answered}
    actions["progress"] = live.progressed
    for when, what in events:
        actions[what](when)
    assert live.waiting(at) == waiting
    assert (live.verdict(at) is not None) == (waiting >= settings.deadline)


def test_verdict_lines():
    assert Verdict(True, "x").line("ready") == "ready: x"
    assert Verdict(False, "y").line("live") == "not live: y"


# ---------------------------------------------------------------------- HTTP endpoints


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoints_serve_metrics_and_probe_verdicts():
    registry = CollectorRegistry()
    Gauge("calico_bgp_test_gauge", "a test gauge", registry=registry).set(7)
    verdicts = {"ready": Verdict(False, "BGP not established with 10.0.0.13"), "live": Verdict(True, "fine")}
    probes = {"/readyz": ("ready", lambda: verdicts["ready"]), "/livez": ("live", lambda: verdicts["live"])}
    server = EndpointServer("127.0.0.1", 0, registry, probes)
    server.start()
    try:
        assert _get(server.port, "/readyz") == (503, "not ready: BGP not established with 10.0.0.13\n")
        assert _get(server.port, "/livez") == (200, "live: fine\n")
        verdicts["ready"] = Verdict(True, "1 of 1 BGP peers established")
        assert _get(server.port, "/readyz?verbose=1") == (200, "ready: 1 of 1 BGP peers established\n")
        status, body = _get(server.port, "/metrics")
        assert status == 200 and "calico_bgp_test_gauge 7.0" in body
        assert _get(server.port, "/nothing")[0] == 404
    finally:
        server.close()


def test_a_check_that_raises_is_a_failed_verdict_not_a_dead_server():
    def broken() -> Verdict:
        raise RuntimeError("boom")

    server = EndpointServer("127.0.0.1", 0, CollectorRegistry(), {"/livez": ("live", broken)})
    server.start()
    try:
        assert _get(server.port, "/livez") == (503, "not live: the check failed: boom\n")
    finally:
        server.close()


def test_endpoints_listen_on_ipv6_when_given_an_ipv6_address():
    server = EndpointServer("::1", 0, CollectorRegistry(), {})
    server.start()
    try:
        with socket.create_connection(("::1", server.port), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.0 200")
    finally:
        server.close()


def test_loop_call_runs_on_the_loop_and_a_loop_that_does_not_run_is_the_verdict():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        on_loop = LoopCall(loop, deadline=5.0)
        ran_in = on_loop(lambda: Verdict(True, threading.current_thread().name))
        assert ran_in == Verdict(True, thread.name)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    # The same loop, now not running: the call is queued and never answered within the deadline.
    late = LoopCall(loop, deadline=0.05)(lambda: Verdict(True, "never"))
    assert late == Verdict(False, "the daemon's event loop did not answer within 0.05s")
    loop.close()
    assert not LoopCall(loop)(lambda: Verdict(True, "closed")).ok


# ---------------------------------------------------------------------- the CLI


class AnsweringSocket:
    """A control socket answering each request line from ``replies`` (a request missing there: no answer)."""

    def __init__(self, path, replies: dict[str, dict]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.replies = replies
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(100).decode().strip()
                self.requests.append(request)
                if request in self.replies:
                    conn.sendall(json.dumps(self.replies[request]).encode() + b"\n")
                else:
                    conn.recv(100)  # held until the client gives up

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    ("flags", "replies", "code", "lines"),
    [
        (["--ready"], {"ready": {"ok": True, "reason": "no BGP peers configured"}}, 0,
         ["ready: no BGP peers configured"]),
        (["--ready"], {"ready": {"ok": False, "reason": "BGP not established with 10.0.0.13"}}, 1,
         ["not ready: BGP not established with 10.0.0.13"]),
        (["--live"], {"live": {"ok": True, "reason": "event loop"}}, 0, ["live: event loop"]),
        (["--live"], {}, 1, ["not live: calico-bgp is not answering: timed out"]),  # a blocked loop
        (["--ready", "--live"], {"ready": {"ok": True, "reason": "a"}, "live": {"ok": False, "reason": "b"}},
         1, ["ready: a", "not live: b"]),
    ],
)  # fmt: skip
def test_health_ready_and_live(tmp_path, flags, replies, code, lines):
    server = AnsweringSocket(tmp_path / "ctl.sock", replies)
    try:
        result = CliRunner().invoke(cli, ["health", *flags, "--run-dir", str(tmp_path), "--timeout", "0.3"])
    finally:
        server.close()
    assert result.exit_code == code, result.output
    assert result.output.splitlines() == lines


def test_health_ready_without_a_daemon_is_not_ready_exit_1(tmp_path):
    result = CliRunner().invoke(cli, ["health", "--ready", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("not ready: calico-bgp is not answering: calico-bgp is not running")


@pytest.mark.parametrize(
    ("env", "address", "level"),
    [
        ({}, "0.0.0.0", None),
        ({"CALICO_BGP_METRICS_ADDRESS": "127.0.0.1", "CALICO_BGP_LOG_LEVEL": "debug"}, "127.0.0.1", "debug"),
        ({"CALICO_BGP_METRICS_ADDRESS": "::1", "CALICO_BGP_LOG_LEVEL": "WARNING"}, "::1", "warning"),
    ],
)
def test_node_run_reads_its_environment(monkeypatch, env, address, level):
    for name in ("CALICO_BGP_METRICS_ADDRESS", "CALICO_BGP_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    params = node_run.make_context("run", ["--node", "n1"]).params
    assert (params["metrics_address"], params["run_log_level"]) == (address, level)


def test_node_run_help_says_the_datastore_wins():
    result = CliRunner().invoke(cli, ["node", "run", "--help"])
    assert "logSeverityScreen" in result.output and "CALICO_BGP_METRICS_ADDRESS" in result.output


# ---------------------------------------------------------------------- log level


@pytest.fixture
def restore_levels():
    names = ["", "bgp", "confgen", "routes"]
    saved = {name: logging.getLogger(name or None).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name or None).setLevel(level)


@pytest.mark.parametrize(
    ("severities", "level"),
    [
        ([], logging.INFO),  # nothing from the datastore: the flag
        (["Debug"], logging.DEBUG),
        (["Trace"], logging.DEBUG),
        (["Warning"], logging.WARNING),
        (["Fatal"], logging.CRITICAL),
        (["None"], OFF),
        (["Error", None], logging.INFO),  # the field removed: back to the flag
        (["Debug", "Error"], logging.ERROR),
    ],
)
def test_log_severity_changes_the_level_live(restore_levels, severities, level):
    control = LogLevel(logging.INFO)
    for severity in severities:
        control.apply(severity)
    assert control.level == level
    for name in (None, "bgp", "confgen", "routes"):
        assert logging.getLogger(name).level == level
    assert logging.getLogger("bgp.speaker").getEffectiveLevel() == level


def test_a_change_of_level_is_logged_with_its_source(restore_levels, caplog):
    control = LogLevel(logging.DEBUG)
    with caplog.at_level(logging.DEBUG, logger="bgp.loglevel"):
        control.apply("Warning")
        control.apply("Warning")  # no change, no line
    assert [r.getMessage() for r in caplog.records] == ["log level warning (from BGPConfiguration "
                                                        "logSeverityScreen Warning)"]  # fmt: skip


# ---------------------------------------------------------------------- build info


@pytest.mark.parametrize(
    ("applied", "environ", "label"),
    [
        (["poll", "async", "nlri_sort"], {}, "async,nlri_sort,poll"),
        ([], {}, ""),
        (None, {}, "unknown"),
        (["poll"], {TUNING_ENV: "off"}, "off"),
    ],
)
def test_adjustments_label(applied, environ, label):
    assert adjustments_label(applied, environ) == label


def _build_info(registry: CollectorRegistry) -> list[dict]:
    return [s.labels for m in registry.collect() if m.name == "calico_bgp_build_info" for s in m.samples]


def test_build_info_is_relabelled_by_the_exabgp_childs_report():
    registry = CollectorRegistry()
    info = BuildInfo(registry, environ={})
    [before] = _build_info(registry)
    assert before["exabgp_adjustments"] == "unknown" and before["exabgp_version"].startswith("5.0.")
    reported = [name for name, *_ in PATCHES][::-1]  # any order: the label is sorted
    info.report(reported)  # what bgp.exabgp.launch reports (tests/unit/bgp/test_build_info.py, end to end)
    [after] = _build_info(registry)  # relabelled: the "unknown" series is gone
    assert after["exabgp_adjustments"] == ",".join(sorted(reported))
    assert {k: v for k, v in after.items() if k != "exabgp_adjustments"} == {
        k: v for k, v in before.items() if k != "exabgp_adjustments"
    }
