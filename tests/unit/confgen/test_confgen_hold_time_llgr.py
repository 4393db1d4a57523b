"""The hold-time and restart-mode extensions (docs/calico-model.md#extensions): parsing, refusals, and what
each setting becomes in a node's sessions."""

from __future__ import annotations

import pytest

from confgen.bgpconfig import parse_bgp_configuration
from confgen.bgppeer import parse_bgp_peer
from confgen.calc import intent_for
from confgen.datastore.base import Snapshot
from confgen.resources import prepare
from confgen.validate import ValidationError


def peer(**spec):
    return {
        "kind": "BGPPeer",
        "metadata": {"name": "tor"},
        "spec": {"peerIP": "10.0.0.254", "asNumber": 1, **spec},
    }


GR = "GracefulRestart"
PARSED = {
    "nothing set": ({}, (None, None, "GracefulRestart", None)),
    "hold time alone": ({"holdTime": "9s"}, (9, None, "GracefulRestart", None)),
    "hold time 0: no hold timer": ({"holdTime": "0s"}, (0, None, "GracefulRestart", None)),
    "keepalive exactly a third": ({"holdTime": "30s", "keepaliveTime": "10s"}, (30, 10, GR, None)),
    "keepalive under a third": ({"holdTime": "30s", "keepaliveTime": "3s"}, (30, 3, GR, None)),
    "the largest hold time": ({"holdTime": "65535s"}, (65535, None, "GracefulRestart", None)),
    "long-lived, stale time unset": (
        {"restartMode": "LongLivedGracefulRestart"}, (None, None, "LongLivedGracefulRestart", None),
    ),
    "long-lived: maxRestartTime past 4095s": (
        {"restartMode": "LongLivedGracefulRestart", "maxRestartTime": "24h"},
        (None, None, "LongLivedGracefulRestart", 86400),
    ),
    "graceful restart named": (
        {"restartMode": "GracefulRestart", "maxRestartTime": "300s"}, (None, None, "GracefulRestart", 300),
    ),
}  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), PARSED.values(), ids=PARSED.keys())
def test_parsing(spec, expected):
    parsed = parse_bgp_peer("tor", peer(**spec))
    assert (parsed.hold_time, parsed.keepalive_time, parsed.restart_mode, parsed.max_restart_time) == expected


REFUSED = {
    "hold time 1s": ({"holdTime": "1s"}, "spec.holdTime must be 0 (no hold timer) or at least 3s"),
    "hold time 2s": ({"holdTime": "2s"}, "spec.holdTime must be 0 (no hold timer) or at least 3s"),
    "hold time past 16 bits": ({"holdTime": "65536s"}, "spec.holdTime '65536s' is longer than 65535s"),
    "hold time a number": ({"holdTime": 90}, "spec.holdTime 90 is not a duration (like '90s' or '2m')"),
    "keepalive over a third": (
        {"holdTime": "30s", "keepaliveTime": "11s"},
        "spec.keepaliveTime 11s is more than a third of spec.holdTime 30s (a peer needs three chances)",
    ),
    "keepalive with no hold timer": (
        {"holdTime": "0s", "keepaliveTime": "10s"},
        "spec.keepaliveTime must be empty when spec.holdTime is 0 (no keepalives are sent)",
    ),
    "unknown restart mode": (
        {"restartMode": "LLGR"},
        "spec.restartMode 'LLGR' is not one of GracefulRestart, LongLivedGracefulRestart",
    ),
    "graceful restart past 12 bits": (
        {"restartMode": "GracefulRestart", "maxRestartTime": "2h"},
        "spec.maxRestartTime '2h' is longer than 4095s",
    ),
    "stale time past 24 bits": (
        {"restartMode": "LongLivedGracefulRestart", "maxRestartTime": "16777216s"},
        "spec.maxRestartTime '16777216s' is longer than 16777215s",
    ),
    "stale time 0": (
        {"restartMode": "LongLivedGracefulRestart", "maxRestartTime": "0s"},
        "spec.maxRestartTime must be at least 1s when spec.restartMode is long-lived",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("spec", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refusals_name_the_fields(spec, message):
    with pytest.raises(ValidationError) as info:
        parse_bgp_peer("tor", peer(**spec))
    assert str(info.value) == f"BGPPeer tor: {message}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30s", 30), ("0s", 0), ("3s", 3), (None, None)],
    ids=["30s", "off", "least", "unset"],
)
def test_mesh_hold_time(value, expected):
    spec = {} if value is None else {"nodeMeshHoldTime": value}
    parsed = parse_bgp_configuration("default", {"spec": spec})
    assert parsed.node_mesh_hold_time == expected


@pytest.mark.parametrize("value", ["1s", "2s", "65536s"])
def test_mesh_hold_time_refused(value):
    with pytest.raises(ValidationError, match="spec.nodeMeshHoldTime"):
        parse_bgp_configuration("default", {"spec": {"nodeMeshHoldTime": value}})


def _intent(peer_spec, default=None):
    nodes = {
        "w1": {"metadata": {"name": "w1"}, "spec": {"bgp": {"ipv4Address": "10.0.0.11/24"}}},
        "w2": {"metadata": {"name": "w2"}, "spec": {"bgp": {"ipv4Address": "10.0.0.12/24"}}},
    }
    snapshot = Snapshot(
        revision=1,
        resources={
            "Node": nodes,
            "BGPPeer": {"tor": {"spec": {"peerIP": "10.0.0.254", "asNumber": 65001, **peer_spec}}},
            "BGPConfiguration": {"default": {"spec": default or {}}},
        },
    )
    intent = intent_for(snapshot, "w1")
    assert intent.warnings == ()
    return {p.name: p for p in intent.peers}


SESSIONS = {
    # BGPPeer spec -> (hold time, GR time we advertise, long-lived stale time) of its session
    "defaults": ({}, (90, 120, 0)),
    "3 x keepalive": ({"keepaliveTime": "10s"}, (30, 120, 0)),
    "holdTime wins over 3 x keepalive": ({"keepaliveTime": "2s", "holdTime": "20s"}, (20, 120, 0)),
    "no hold timer": ({"holdTime": "0s"}, (0, 120, 0)),
    "graceful restart time": ({"maxRestartTime": "300s"}, (90, 300, 0)),
    "long-lived, default stale time": ({"restartMode": "LongLivedGracefulRestart"}, (90, 120, 3600)),
    "long-lived: maxRestartTime is the stale time": (
        {"restartMode": "LongLivedGracefulRestart", "maxRestartTime": "6s"}, (90, 120, 6),
    ),
}  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), SESSIONS.values(), ids=SESSIONS.keys())
def test_what_a_bgppeer_session_gets(spec, expected):
    session = _intent(spec, default={"nodeToNodeMeshEnabled": False})["Global_10_0_0_254"]
    assert (session.hold_time, session.restart_time, session.llgr_stale_time) == expected


@pytest.mark.parametrize(("default", "expected"), [({}, 90), ({"nodeMeshHoldTime": "15s"}, 15)])
def test_the_mesh_takes_node_mesh_hold_time_and_bgppeers_do_not(default, expected):
    sessions = _intent({}, default=default)
    assert sessions["Mesh_10_0_0_12"].hold_time == expected
    assert sessions["Mesh_10_0_0_12"].llgr_stale_time == 0
    assert sessions["Global_10_0_0_254"].hold_time == 90


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        (
            "BGPPeer",
            {"peerIP": "10.0.0.254", "asNumber": 1, "holdTime": "9s", "restartMode": "GracefulRestart"},
        ),
        ("BGPConfiguration", {"nodeMeshHoldTime": "30s"}),
    ],
)
def test_apply_takes_the_extensions_without_a_warning(kind, spec):
    name = "default" if kind == "BGPConfiguration" else "tor"
    document = {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name}, "spec": spec}
    assert prepare(document, None).warnings == ()
