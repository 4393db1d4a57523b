"""Issue 3 on a live lab: editing one BGPPeer resets that session alone; a burst of writes is one render.

Three nodes with the mesh turned off and one BGPPeer per node pair (reverse peering gives each pair its
two ends). Changing the keepalive time of one BGPPeer changes that neighbour's block on its two nodes and
nothing else: every other session keeps its uptime.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest
from explicit_peers import NODES, apply, peer, sessions, up_with_explicit_peers, wait

from labs import lab as labs_lab
from labs import netns, ops, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]


@pytest.fixture(scope="module")
def peered():
    name = f"h{secrets.token_hex(4)}"
    try:
        endpoints = up_with_explicit_peers(name)
        yield name, endpoints
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def test_editing_one_bgppeer_resets_only_its_session(peered):
    name, endpoints = peered
    before = sessions(name)
    time.sleep(1.5)  # `since` has one-second resolution: a reset session must show a later one
    apply(endpoints, [peer("node1", "node3", keepalive="10s")])
    edited = {("node1", NODES["node3"]), ("node3", NODES["node1"])}

    def edited_session_came_back():
        """node1<->node3 re-established with a new `since` on both ends"""
        now = sessions(name)
        return all(now[k]["info"] == "Established" and now[k]["since"] != before[k]["since"] for k in edited)

    wait(edited_session_came_back)
    after = sessions(name)
    for key, entry in before.items():
        if key not in edited:
            assert after[key]["since"] == entry["since"], f"{key} was reset: {entry} -> {after[key]}"
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
    apply(endpoints, docs)
    time.sleep(3)
    after = renders()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert 1 <= sum(delta.values()) <= 2, delta  # one render (plus at most one already in flight)


def test_an_invalid_resource_is_a_warning_and_changes_nothing(peered):
    from confgen.datastore import keys
    from labs import etcd

    name, endpoints = peered
    before = sessions(name)
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

        wait(warned, timeout=15)
        assert {k: p["since"] for k, p in sessions(name).items()} == {
            k: p["since"] for k, p in before.items()
        }
    finally:
        etcd.delete(endpoints.split(","), key)
