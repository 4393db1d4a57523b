"""Issue 3 on a live lab: editing one BGPPeer resets that session alone; a burst of writes is one render.

Three nodes with the mesh turned off and one BGPPeer per node pair (reverse peering gives each pair its
two ends). Changing the keepalive time of one BGPPeer changes that neighbour's block on its two nodes and
nothing else: every other session keeps its uptime.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

from labs import lab as labs_lab
from labs import netns, ops, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
PAIRS = [("node1", "node2"), ("node1", "node3"), ("node2", "node3")]


def _apply(endpoints: str, documents: list[dict]) -> None:
    text = "\n---\n".join(json.dumps(d) for d in documents)
    cmd = [ops.venv_tool("calico-bgp"), "apply", "-f", "-", "--etcd-endpoints", endpoints]
    result = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def _peer(a: str, b: str, keepalive: str = "30s") -> dict:
    return {
        "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": f"{a}-{b}"},
        "spec": {"node": a, "peerIP": NODES[b], "asNumber": 64512, "keepaliveTime": keepalive},
    }  # fmt: skip


def _sessions(lab: str) -> dict[tuple[str, str], dict]:
    loaded = ops.load(lab)
    out = {}
    for node in NODES:
        report = json.loads(ops.status(loaded, loaded.node(node), "-o", "json").stdout)
        for peer in report["peers"]:
            out[(node, peer["address"])] = peer
    return out


def _wait(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {check.__doc__}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def peered():
    name = f"h{secrets.token_hex(4)}"
    try:
        assert labs_lab.up("mesh", 3, name=name, echo=lambda line: None)
        endpoints = ",".join(labs_lab.show(name)["etcd_endpoints"])
        config = {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 64512},
        }
        _apply(endpoints, [config, *(_peer(a, b) for a, b in PAIRS)])

        def all_explicit_and_up():
            """every node has two node-specific sessions, Established"""
            sessions = _sessions(name)
            return len(sessions) == 6 and all(
                p["type"] == "node specific" and p["info"] == "Established" for p in sessions.values()
            )

        _wait(all_explicit_and_up, timeout=60)
        yield name, endpoints
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def test_editing_one_bgppeer_resets_only_its_session(peered):
    name, endpoints = peered
    before = _sessions(name)
    time.sleep(1.5)  # `since` has one-second resolution: a reset session must show a later one
    _apply(endpoints, [_peer("node1", "node3", keepalive="10s")])
    edited = {("node1", NODES["node3"]), ("node3", NODES["node1"])}

    def edited_session_came_back():
        """node1<->node3 re-established with a new `since` on both ends"""
        now = _sessions(name)
        return all(now[k]["info"] == "Established" and now[k]["since"] != before[k]["since"] for k in edited)

    _wait(edited_session_came_back)
    after = _sessions(name)
    for key, peer in before.items():
        if key not in edited:
            assert after[key]["since"] == peer["since"], f"{key} was reset: {peer} -> {after[key]}"
            assert after[key]["info"] == "Established"


def test_a_burst_of_writes_is_one_render(peered):
    name, endpoints = peered

    def renders():
        metrics = netns.run_in(
            state.netns_name(name, "node2"),
            [
                "python3",
                "-c",
                "import urllib.request as u;"
                "print(u.urlopen('http://127.0.0.1:9094/metrics').read().decode())",
            ],
            timeout=15,
        ).stdout
        return {
            line.split("{")[1].split("}")[0]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("calico_bgp_config_renders_total{")
        }

    before = renders()
    # 100 writes in about a second that end where they started, plus one real change.
    docs = [
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": f"burst-{i % 5}"},
            "spec": {"cidr": f"10.{100 + i % 5}.0.0/16", "disableBGPExport": i % 2 == 0},
        }
        for i in range(100)
    ]
    _apply(endpoints, docs)
    time.sleep(3)
    after = renders()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert 1 <= sum(delta.values()) <= 2, delta  # one render (plus at most one already in flight)


def test_an_invalid_resource_is_a_warning_and_changes_nothing(peered):
    from confgen.datastore import keys
    from labs import etcd

    name, endpoints = peered
    before = _sessions(name)
    bad = {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "rack1-tor"},
           "spec": {"peerIP": "10.0.0.300", "asNumber": 65001}}  # fmt: skip
    key = keys.resource_key("BGPPeer", "rack1-tor")
    etcd.put_all(endpoints.split(","), [(key, json.dumps(bad))])
    try:
        lab = ops.load(name)

        def warned():
            """node1's status names the resource, the field and the problem"""
            text = ops.status(lab, lab.node("node1")).stdout
            return "BGPPeer rack1-tor: spec.peerIP '10.0.0.300'" in text

        _wait(warned, timeout=15)
        assert {k: p["since"] for k, p in _sessions(name).items()} == {
            k: p["since"] for k, p in before.items()
        }
    finally:
        etcd.delete(endpoints.split(","), key)
