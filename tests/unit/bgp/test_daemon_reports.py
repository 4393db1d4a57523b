"""bgp.daemon_reports: what the daemon reports about itself, gathered from (fake) components. The rules are
bgp.readiness's and bgp.nodestatus's (tested in their own files); here, that the right facts reach them: the
time ExaBGP has gone without its API connection, the strict start, the datastore's problem, the warnings
of `calico-bgp status`, and what a CalicoNodeStatus is written from."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from speaker_rig import Clock

from bgp.bfd.gate import BfdGate
from bgp.daemon_reports import DaemonReports, datastore_problem
from bgp.latency import Propagation
from bgp.readiness import EXABGP_START_ALLOWANCE, READY_THRESHOLD
from bgp.status import PeerStatus
from bgp.watchdog import Health
from confgen.intent import NodeIntent


def _peer(address: str, established: bool) -> PeerStatus:
    return PeerStatus(
        address, "ipv4", "node-to-node mesh", "Mesh_" + address, False, True,
        "up" if established else "start", "Established" if established else "Active", 0.0,
    )  # fmt: skip


class FakeSpeaker:
    def __init__(self, peers=(), eor_done=True, routes=()):
        self.peers, self.eor_done, self.routes = list(peers), eor_done, list(routes)
        self.propagation = Propagation()
        self.bfd = BfdGate()  # no BFD session configured

    def peer_statuses(self):
        return self.peers

    def initial_sync_done(self):
        return self.eor_done

    def routes_report(self):
        return self.routes


def build(clock=None, wall=None, *, in_sync=True, revision=7, config="rendered", connected=True, **speaker):
    channel = SimpleNamespace(connected=asyncio.Event(), liveness=SimpleNamespace(waiting=lambda now: 0.0))
    if connected:
        channel.connected.set()
    nexthop = SimpleNamespace(ifname="cali1234")
    return DaemonReports(
        "node1",
        syncer=SimpleNamespace(in_sync=in_sync, revision=revision, last_error=None),
        confgen=SimpleNamespace(config=config),
        channel=channel,
        speaker=FakeSpeaker(**speaker),
        table=SimpleNamespace(desired={"10.65.0.1/32": SimpleNamespace(nexthops=[nexthop])}),
        health=Health(clock=clock or Clock(0.0)),
        watchdog=SimpleNamespace(lag=0.01, max_lag=0.25),
        clock=clock or Clock(0.0),
        wall=wall or Clock(1_700_000_000.0),
    )


@pytest.mark.parametrize(
    ("in_sync", "last_error", "problem"),
    [
        (True, "old news", None),
        (False, None, "not in sync with etcd (the last good view is kept)"),
        (
            False,
            "TLS handshake failed",
            "not in sync with etcd (the last good view is kept): TLS handshake failed",
        ),
    ],
)
def test_datastore_problem(in_sync, last_error, problem):
    assert datastore_problem(SimpleNamespace(in_sync=in_sync, last_error=last_error)) == problem


# (event at time t) ... -> seconds without an API connection at t=100
@pytest.mark.parametrize(
    ("events", "disconnected_for"),
    [
        ([], 0.0),  # ExaBGP never started: nothing owed
        ([("started", 0.0)], 100.0),  # started at the daemon's clock zero, never connected
        ([("started", 10.0), ("connected", 12.0)], 0.0),
        ([("started", 10.0), ("connected", 12.0), ("lost", 40.0)], 60.0),
        ([("started", 0.0), ("lost", 30.0)], 100.0),  # lost before it ever connected: counted from the start
        ([("lost", 20.0), ("started", 21.0)], 80.0),  # the restart after a loss does not reset the count
        ([("lost", 20.0), ("lost", 50.0)], 80.0),
    ],
)
def test_time_without_the_api_connection(events, disconnected_for):
    clock = Clock(0.0)
    reports = build(clock)
    for event, at in events:
        clock.now = at
        {"started": reports.exabgp_started, "connected": reports.api_connected, "lost": reports.api_lost}[
            event
        ]()
    clock.now = 100.0
    assert reports.exabgp_disconnected_for() == disconnected_for


def test_liveness_fails_once_exabgp_has_been_disconnected_too_long():
    clock = Clock(0.0)
    reports = build(clock, connected=False)
    reports.exabgp_started()
    clock.now = EXABGP_START_ALLOWANCE - 1
    assert reports.live().ok
    clock.now = EXABGP_START_ALLOWANCE
    assert not reports.live().ok and "no API connection" in reports.live().reason
    assert build(clock, connected=False, config=None).live().ok  # nothing rendered: ExaBGP is not wanted


@pytest.mark.parametrize(
    ("settings", "ok", "reason"),
    [
        ({"revision": 0, "config": None, "connected": False}, False, "the datastore has not been read yet"),
        ({"config": None, "connected": False}, False, "no BGP configuration rendered yet"),
        (
            {"connected": False, "peers": [_peer("10.0.0.12", True)]},
            False,
            "ExaBGP is not running the config",
        ),
        ({"peers": [_peer("10.0.0.12", True)], "eor_done": False}, False, "graceful restart in progress"),
        ({"peers": [_peer("10.0.0.12", True), _peer("10.0.0.13", False)]}, False, "BGP not established with"),
        ({"peers": [_peer("10.0.0.12", True)]}, True, "1 of 1 BGP peers established"),
    ],
)
def test_readiness_is_judged_on_the_components_state(settings, ok, reason):
    verdict = build(Clock(1000.0), **settings).ready()  # built at 1000: the daemon is 0 s old
    assert (verdict.ok, verdict.reason[: len(reason)]) == (ok, reason)


def test_readiness_is_strict_for_the_daemons_first_seconds():
    clock = Clock(1000.0)
    reports = build(clock, peers=[_peer("10.0.0.12", True), _peer("10.0.0.13", False)])
    assert not reports.ready().ok
    clock.now += READY_THRESHOLD  # counted from the daemon's start, not from the clock's zero
    assert reports.ready().ok


@pytest.mark.parametrize(
    ("intent", "in_sync", "warnings"),
    [
        (None, True, ["no configuration rendered yet"]),
        ("intent", True, []),
        ("intent", False, ["datastore unreachable: running on the last good configuration"]),
        (
            None,
            False,
            [
                "no configuration rendered yet",
                "datastore unreachable: running on the last good configuration",
            ],
        ),
    ],
)
def test_status_warnings(intent, in_sync, warnings):
    reports = build(in_sync=in_sync, peers=[_peer("10.0.0.12", True)])
    if intent:
        reports.intent = NodeIntent(
            node="node1", router_id="10.0.0.11", local_as=64512, ipv4_address="10.0.0.11"
        )
    report = reports.status()
    assert report["warnings"] == warnings
    assert report["node"] == "node1" and [p["address"] for p in report["peers"]] == ["10.0.0.12"]


def test_health_names_the_node_and_the_event_loop_lag():
    reports = build()
    reports.health.register("kernel-watcher")
    report = reports.health_report()
    assert report["node"] == "node1" and report["event_loop"] == {
        "lag_seconds": 0.01,
        "max_lag_seconds": 0.25,
    }
    assert report["healthy"] and set(report["components"]) == {"kernel-watcher"}


@pytest.mark.parametrize(
    ("classes", "with_peers", "with_routes"),
    [(frozenset(), False, False), (frozenset({"BGP"}), True, False), (frozenset({"Routes"}), False, True)],
)
def test_node_status_inputs_carry_only_the_classes_asked_for(classes, with_peers, with_routes):
    wall = Clock(1_700_000_000.0)
    reports = build(wall=wall, peers=[_peer("10.0.0.12", True)], routes=[{"dst": "10.65.0.1/32"}])
    reports.exabgp_started()
    wall.now += 5.0
    reports.reloaded()
    inputs = reports.node_status_inputs(classes)
    assert (inputs.agent.boot_time, inputs.agent.reconfig_time) == (1_700_000_000.0, 1_700_000_005.0)
    assert inputs.agent.ready
    assert bool(inputs.peers) == with_peers and bool(inputs.routes) == with_routes
    assert inputs.interfaces == ({"10.65.0.1/32": "cali1234"} if with_routes else {})
