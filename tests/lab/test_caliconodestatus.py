"""CalicoNodeStatus on a live 2-node mesh: the resource is applied with the CLI as an operator would, node1's
daemon fills its status (agent, the mesh peer Established, node2's block learned over the mesh), and
``calico-bgp get caliconodestatus`` shows it. The status writes must not disturb BGP: the session keeps its
``since``, and node1's configuration is not even rendered again. A delete stops the writer for good.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from bgp.status import query
from labs import lab as labs_lab
from labs import netns, ops

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

REQUEST = """
apiVersion: projectcalico.org/v3
kind: CalicoNodeStatus
metadata: {name: node1-status}
spec: {node: node1, classes: [Agent, BGP, Routes], updatePeriodSeconds: 1}
"""
DEADLINE = 10.0  # seconds from the apply until the status shows the Established peer


def _metrics(node, prefix):
    """{labels: value} of one metric family from the node's metrics port (inside its namespace)."""
    fetch = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9094/metrics').read().decode())"
    text = netns.run_in(node.netns, ["python3", "-c", fetch], timeout=15).stdout
    return {
        line.split("{")[1].split("}")[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix + "{")
    }


def _cli(endpoints, *args, stdin=None):
    argv = [ops.venv_tool("calico-bgp"), *args, "--etcd-endpoints", ",".join(endpoints)]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)


def test_node_status_is_reported_without_touching_bgp(lab_name):
    lines: list[str] = []
    assert labs_lab.up("mesh", 2, name=lab_name, echo=lines.append), "\n".join(lines)
    st = ops.load(lab_name)
    node1, node2 = st.node("node1"), st.node("node2")
    node2_ip = node2.ipv4.split("/")[0]
    ctl = Path(node1.run_dir) / "ctl.sock"
    before = {p["address"]: p["since_ts"] for p in query(ctl, "status")["peers"]}
    config = Path(node1.run_dir) / "exabgp.conf"
    config_stat = os.stat(config)
    renders = _metrics(node1, "calico_bgp_config_renders_total")

    applied = _cli(st.etcd_endpoints, "apply", "-f", "-", stdin=REQUEST)
    assert applied.returncode == 0, applied.stderr
    started, status = time.monotonic(), {}
    while time.monotonic() - started < DEADLINE:
        shown = _cli(st.etcd_endpoints, "get", "caliconodestatus", "node1-status", "-o", "yaml")
        assert shown.returncode == 0, shown.stderr
        status = yaml.safe_load(shown.stdout).get("status") or {}
        peers = status.get("bgp", {}).get("peersV4", [])
        if any(p.get("peerIP") == node2_ip and p.get("state") == "Established" for p in peers):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"node1's status never showed {node2_ip} Established: {status}")

    assert status["agent"]["birdV4"]["state"] == "Ready"
    assert status["agent"]["birdV4"]["routerID"] == node1.ipv4.split("/")[0]
    assert status["bgp"]["numberEstablishedV4"] == 1
    (peer,) = status["bgp"]["peersV4"]
    assert (peer["peerIP"], peer["type"], peer["state"]) == (node2_ip, "NodeMesh", "Established")
    assert set(peer) == {"peerIP", "type", "state", "since"}
    learned = [r for r in status["routes"].get("routesV4", []) if r["learnedFrom"].get("peerIP") == node2_ip]
    assert learned and all(r["learnedFrom"]["sourceType"] == "NodeMesh" for r in learned)
    assert all(r["type"] == "FIB" and r["gateway"] == node2_ip for r in learned)

    time.sleep(3)  # three more periods of status writes
    after = {p["address"]: p["since_ts"] for p in query(ctl, "status")["peers"]}
    assert after == before, "a session was reset while the status was written"
    assert os.stat(config).st_mtime_ns == config_stat.st_mtime_ns, "exabgp.conf was rewritten"
    # Neither the request nor the status written back reached confgen: not even an unchanged render.
    assert _metrics(node1, "calico_bgp_config_renders_total") == renders
    assert _metrics(node1, "calico_bgp_node_status_writes_total")['result="written"'] >= 1

    deleted = _cli(st.etcd_endpoints, "delete", "caliconodestatus", "node1-status")
    assert deleted.returncode == 0, deleted.stderr
    time.sleep(2.5)  # over two periods: a writer that kept running must not bring the object back
    gone = _cli(st.etcd_endpoints, "get", "caliconodestatus", "node1-status")
    assert gone.returncode != 0 and "does not exist" in gone.stderr
