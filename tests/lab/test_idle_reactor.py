"""ExaBGP's ``idle`` adjustment on a live lab: with the reactor sleeping between its peers' timers, sessions
with the shortest hold time (3 s, a keepalive every second) stay up through a quiet spell many hold times
long, and a reload is still served.

Three nodes with the mesh turned off and one BGPPeer per node pair at ``keepaliveTime: 1s``, so a keepalive
late by more than two seconds on any of the six session ends resets that session (its ``since`` changes).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from labs import lab as labs_lab
from labs import netns, ops, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
PAIRS = [("node1", "node2"), ("node1", "node3"), ("node2", "node3")]
QUIET = 20.0  # seconds of idling: more than six hold times of 3 s


def _apply(endpoints: str, documents: list[dict]) -> None:
    text = "\n---\n".join(json.dumps(d) for d in documents)
    cmd = [ops.venv_tool("calico-bgp"), "apply", "-f", "-", "--etcd-endpoints", endpoints]
    result = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def _peer(a: str, b: str) -> dict:
    return {
        "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": f"{a}-{b}"},
        "spec": {"node": a, "peerIP": NODES[b], "asNumber": 64512, "keepaliveTime": "1s"},
    }  # fmt: skip


def _sessions(lab: str) -> dict[tuple[str, str], dict]:
    loaded = ops.load(lab)
    out = {}
    for node in NODES:
        report = json.loads(ops.status(loaded, loaded.node(node), "-o", "json").stdout)
        for peer in report["peers"]:
            out[(node, peer["address"])] = peer
    return out


def _reloads(node) -> int:
    return (Path(node.run_dir) / "exabgp.log").read_text(errors="replace").count("performing reload")


def _wait(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {check.__doc__}"
        time.sleep(0.2)


def test_short_hold_times_survive_an_idle_reactor_and_reloads_are_served():
    name = f"i{secrets.token_hex(4)}"
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

        def all_up():
            """six node-specific sessions, Established"""
            sessions = _sessions(name)
            return len(sessions) == 6 and all(
                p["type"] == "node specific" and p["info"] == "Established" for p in sessions.values()
            )

        _wait(all_up)
        for node in ops.load(name).nodes:
            log = (Path(node.run_dir) / "exabgp.log").read_text(errors="replace")
            assert '"idle"' in log.split("ExaBGP adjustments applied:", 1)[1].splitlines()[0], node.name
        before = _sessions(name)
        time.sleep(QUIET)
        after = _sessions(name)
        for key, peer in before.items():
            assert after[key]["info"] == "Established", f"{key}: {after[key]}"
            assert after[key]["since"] == peer["since"], f"{key} was reset while idle: {peer} -> {after[key]}"

        # A change that reloads ExaBGP (a global peer, a new neighbour on every node; nobody answers there) is
        # served by every ExaBGP, however long its reactor was sleeping (the signal wakes it), and leaves the
        # other sessions alone.
        reloads = {node.name: _reloads(node) for node in ops.load(name).nodes}
        _apply(
            endpoints,
            [
                {
                    "apiVersion": "projectcalico.org/v3",
                    "kind": "BGPPeer",
                    "metadata": {"name": "idle-reload"},
                    "spec": {"peerIP": "10.0.0.99", "asNumber": 64512},
                }
            ],
        )

        def reloaded_everywhere():
            """every node's ExaBGP logged one more reload"""
            return all(_reloads(node) > reloads[node.name] for node in ops.load(name).nodes)

        _wait(reloaded_everywhere, timeout=30)
        final = _sessions(name)
        assert all(final[key]["since"] == peer["since"] for key, peer in before.items())
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))
