"""Propagation timing on a live 2-node mesh: a workload route added on node1 is timed on both sides.

node1 reads Felix's route from its kernel and announces it (export: kernel read -> API command written);
node2 learns it and installs it (import: ExaBGP's line read -> kernel ack). Both show up in
`calico-bgp status -o json` as one more route timed over the last minute, with a plausible median.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bgp.status import query
from labs import lab as labs_lab
from labs import netns, ops, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

BORROWED = "192.168.2.10"  # inside node2's block, on a pod of node1: node1 announces the /32
DEADLINE = 10.0


def _propagation(lab: state.LabState, node: str) -> dict:
    return query(Path(ops.node_state(lab, node).run_dir) / "ctl.sock", "status")["propagation"]


def _wait(check, what: str) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < DEADLINE, f"not within {DEADLINE} s: {what}"
        time.sleep(0.1)


def test_status_times_a_workload_route_on_both_nodes(lab_name):
    lines: list[str] = []
    assert labs_lab.up("mesh", 2, name=lab_name, echo=lines.append), "\n".join(lines)
    lab = ops.load(lab_name)
    exported = _propagation(lab, "node1")["export"]["count"]
    imported = _propagation(lab, "node2")["import"]["count"]
    node2 = state.netns_name(lab_name, "node2")

    labs_lab.add_pod(lab_name, "node1", "node1-borrowed", BORROWED)
    _wait(lambda: BORROWED in {r["dst"] for r in netns.routes(node2, "proto", "bird")}, "route in node2")
    _wait(lambda: _propagation(lab, "node1")["export"]["count"] > exported, "node1 export timed")
    _wait(lambda: _propagation(lab, "node2")["import"]["count"] > imported, "node2 import timed")

    # The CLI's JSON carries the same figures.
    for node, side in (("node1", "export"), ("node2", "import")):
        report = json.loads(ops.status(lab, ops.node_state(lab, node), "-o", "json").stdout)
        figures = report["propagation"][side]
        print(f"{node} {side}: {figures}")
        assert figures["count"] >= 1
        assert 0 < figures["p50_ms"] < 10_000
        assert figures["p50_ms"] <= figures["p99_ms"] < 10_000
