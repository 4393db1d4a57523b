"""The CalicoNodeStatus ``status`` builder: Calico's field names and words, the requested classes only, and
the bounds on the lists. The golden file is written by hand from Calico's API (v3.22+), not generated."""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bgp import nodestatus
from bgp.nodestatus import AgentState, StatusInputs, build_status
from bgp.status import PeerStatus
from confgen.intent import GLOBAL, MESH, NODE_SPECIFIC, NodeIntent, PeerIntent

GOLDEN = Path(__file__).parent / "data" / "caliconodestatus_status.json"


def ts(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


NOW = ts("2026-12-02 13:22:03")


def peer(address, kind, bgp_state, since, family="ipv4"):
    intent = PeerIntent(
        name=f"p{address}", address=address, family=family, peer_as=64512, local_as=64512,
        local_address="10.0.0.11", kind=kind,
    )  # fmt: skip
    return replace(PeerStatus.configured(intent, ts(since)), bgp_state=bgp_state)


INTENT = NodeIntent(
    node="node1",
    router_id="10.0.0.11",
    local_as=64512,
    ipv4_address="10.0.0.11",
    ipv6_address="fd00::11",
    peers=(
        PeerIntent("Mesh_10_0_0_12", "10.0.0.12", "ipv4", 64512, 64512, "10.0.0.11", MESH),
        PeerIntent("Mesh_10_0_0_13", "10.0.0.13", "ipv4", 64512, 64512, "10.0.0.11", MESH),
        PeerIntent("Global_10_0_0_254", "10.0.0.254", "ipv4", 65000, 64512, "10.0.0.11", GLOBAL),
        PeerIntent("Node_fd00__254", "fd00::254", "ipv6", 65000, 64512, "fd00::11", NODE_SPECIFIC),
    ),
    local_blocks=("10.65.1.0/26",),
    service_cluster_ips=("10.96.0.0/12",),
)

PEERS = (
    peer("10.0.0.12", MESH, "Established", "2026-12-02 09:23:22"),
    peer("10.0.0.13", MESH, "Passive", "2026-12-01 23:59:59"),
    peer("10.0.0.254", GLOBAL, "Established", "2026-12-02 09:23:21"),
    peer("fd00::254", NODE_SPECIFIC, "OpenSent", "2026-12-02 13:00:00", family="ipv6"),
)


def bgp_row(prefix, nexthop, learned_from, installed):
    best = {"nexthop": nexthop, "learned_from": learned_from, "as_path": [], "stale": False}
    return {"prefix": prefix, "origin": "bgp", "best": best, "kernel": {"installed": installed}}


def local_row(prefix):
    return {"prefix": prefix, "origin": "local", "best": None, "kernel": {"installed": False}}


ROUTES = (
    local_row("10.65.1.0/26"),
    bgp_row("10.65.2.0/26", "10.0.0.12", "10.0.0.12", True),
    local_row("10.65.9.7/32"),
    local_row("10.96.0.0/12"),
    bgp_row("192.168.0.0/16", "10.0.0.254", "10.0.0.254", False),
)

INPUTS = StatusInputs(
    agent=AgentState(
        True, "calico-bgp 1.2.3+exabgp5.0.15", ts("2026-12-02 09:23:19"), ts("2026-12-02 10:00:00")
    ),
    intent=INTENT,
    peers=PEERS,
    routes=ROUTES,
    interfaces={"10.65.2.0/26": "tunl0"},
)


def test_all_classes_match_the_golden_file():
    built = build_status(("Agent", "BGP", "Routes"), INPUTS, NOW)
    assert built.status == json.loads(GOLDEN.read_text())
    assert built.omitted == 0


@pytest.mark.parametrize(
    ("classes", "keys"),
    [
        ((), {"lastUpdated"}),
        (("Agent",), {"lastUpdated", "agent"}),
        (("BGP",), {"lastUpdated", "bgp"}),
        (("Routes", "Agent"), {"lastUpdated", "routes", "agent"}),
    ],
)
def test_only_requested_classes_are_filled(classes, keys):
    assert set(build_status(classes, INPUTS, NOW).status) == keys


@pytest.mark.parametrize(
    ("agent", "intent", "expected"),
    [
        (AgentState(True, "v"), INTENT, {"state": "Ready", "version": "v", "routerID": "10.0.0.11"}),
        (AgentState(False, "v"), INTENT, {"state": "NotReady", "version": "v", "routerID": "10.0.0.11"}),
        (AgentState(True, "v"), None, {"state": "NotReady", "version": "v"}),  # nothing rendered yet
        (
            AgentState(True, "v", boot_time=ts("2026-12-02 09:00:00")),
            INTENT,
            {
                "state": "Ready", "version": "v", "routerID": "10.0.0.11",
                "lastBootTime": "2026-12-02 09:00:00", "lastReconfigurationTime": "2026-12-02 09:00:00",
            },
        ),  # fmt: skip
    ],
)
def test_agent(agent, intent, expected):
    status = build_status(("Agent",), replace(INPUTS, agent=agent, intent=intent), NOW).status
    assert status["agent"]["birdV4"] == expected


def test_agent_reports_bird_v6_only_with_an_ipv6_address():
    v4_only = replace(INTENT, ipv6_address="")
    status = build_status(("Agent",), replace(INPUTS, intent=v4_only), NOW).status
    assert set(status["agent"]) == {"birdV4"}


def test_empty_peer_lists_are_left_out_and_counts_stay():
    status = build_status(("BGP",), replace(INPUTS, peers=()), NOW).status
    assert status["bgp"] == {
        "numberEstablishedV4": 0, "numberNotEstablishedV4": 0,
        "numberEstablishedV6": 0, "numberNotEstablishedV6": 0,
    }  # fmt: skip


def test_lists_are_bounded_and_counts_complete(monkeypatch):
    monkeypatch.setattr(nodestatus, "MAX_LIST", 2)
    many_peers = tuple(peer(f"10.0.1.{i}", MESH, "Established", "2026-12-02 09:00:00") for i in range(5))
    many_routes = tuple(bgp_row(f"10.66.{i}.0/26", "10.0.1.1", "10.0.1.1", True) for i in range(4))
    built = build_status(("BGP", "Routes"), replace(INPUTS, peers=many_peers, routes=many_routes), NOW)
    assert built.status["bgp"]["numberEstablishedV4"] == 5
    assert len(built.status["bgp"]["peersV4"]) == 2
    assert len(built.status["routes"]["routesV4"]) == 2
    assert built.omitted == 3 + 2


def test_worst_case_fits_one_stored_value():
    """MAX_LIST peers and IPv6 routes of the longest shapes in both families stay under the value bound."""
    from confgen.datastore.base import MAX_VALUE_BYTES

    n = nodestatus.MAX_LIST
    old = "2026-11-02 09:00:00"
    v6 = [peer(f"fd00:1234:5678:9abc:def0:1234:5678:{i:x}", NODE_SPECIFIC, "OpenConfirm", old, family="ipv6")
          for i in range(n)]  # fmt: skip
    v4 = [peer(f"10.{i // 256}.{i % 256}.254", NODE_SPECIFIC, "OpenConfirm", old) for i in range(n)]
    routes = [bgp_row(f"fd00:1234:5678:{i:x}::/122", "fd00:1234:5678:9abc:def0:1234:5678:9abc",
                      "fd00:1234:5678:9abc:def0:1234:5678:9abc", True) for i in range(n)]  # fmt: skip
    routes += [bgp_row(f"100.{i // 256}.{i % 256}.192/26", "100.100.100.100", "100.100.100.100", True)
               for i in range(n)]  # fmt: skip
    interfaces = {r["prefix"]: "enp129s0f1np1" for r in routes}
    inputs = replace(INPUTS, peers=tuple(v4 + v6), routes=tuple(routes), interfaces=interfaces)
    status = build_status(("Agent", "BGP", "Routes"), inputs, NOW).status
    envelope = {"kind": "CalicoNodeStatus", "metadata": {"name": "x" * 253, "annotations": {"a": "b" * 4096}}}
    size = len(json.dumps({**envelope, "status": status}, separators=(",", ":")))
    assert size < MAX_VALUE_BYTES
