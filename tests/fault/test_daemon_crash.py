"""Fault: the node daemon SIGKILLed under pod traffic, again and again.

node2-pod1 pings node1-pod1 every 50 ms while node1's daemon is killed (its ExaBGP and bridge die with it)
and started again. Both directions depend on kernel routes: node2's route to node1's block survives only as
graceful-restart state, node1's route back only because a dying daemon leaves its routes in the kernel.
Claim: at most one ping lost per kill, and the sessions come back every time.
"""

from __future__ import annotations

import time

import pytest

from fault import inject, probe
from fault.mesh import PEERS, sessions_report

pytestmark = [pytest.mark.fault, pytest.mark.fault_quick, pytest.mark.lab, pytest.mark.netns,
              pytest.mark.etcd]

TARGET = "192.168.1.2"  # node1-pod1
RECOVERY = 30.0


def test_daemon_sigkilled_under_traffic_loses_at_most_one_ping(mesh_lab, campaign, fault_row):
    kills = campaign.count("crashes", 2)
    row = fault_row(
        fault="daemon-sigkill-under-traffic",
        injected="SIGKILL node1's daemon (ExaBGP and bridge follow), start it again; mesh, ping every 50 ms",
        times=kills,
        must_hold="per kill: <= 1 ping lost, sessions Established again within 30 s",
    )
    _, waited = probe.wait_for(lambda: probe.all_established(mesh_lab, PEERS), RECOVERY)
    assert waited < RECOVERY, f"not Established before the first kill: {sessions_report(mesh_lab)}"
    losses, recoveries = [], []
    for _ in range(kills):
        with probe.Pinger(mesh_lab, "node2-pod1", TARGET) as ping:
            time.sleep(1.0)
            inject.crash_and_restart_daemon(mesh_lab, "node1")
            back, took = probe.wait_for(lambda: probe.all_established(mesh_lab, PEERS), RECOVERY)
            time.sleep(1.0)
        losses.append(ping.lost)
        recoveries.append(round(took, 1) if back else None)
        row.measure(pings_lost_per_kill=" ".join(map(str, losses)), pings_lost_max=max(losses),
                    recovery_max_s=max((r for r in recoveries if r is not None), default=-1),
                    not_recovered=recoveries.count(None))
        assert back, (f"kill {len(losses)}: sessions not Established within {RECOVERY:.0f} s: "
                      f"{sessions_report(mesh_lab)}")
    assert max(losses) <= 1, f"pings lost per kill: {losses}"
