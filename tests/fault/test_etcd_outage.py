"""Faults of the datastore: etcd killed for a minute, etcd silent (SIGSTOP) for a minute, and a daemon
restarted while etcd is down longer than the adopted-route sweep hold.

One 3-node mesh for the module. Throughout each fault ``ip monitor route`` runs in every node (deletions of
protocol-bird routes are counted as they happen, not sampled) and node2-pod1 pings node1-pod1.

- Killed: a block affinity written just before the kill, and writes queued while etcd is gone, applied
  when it is back: every node must end with exactly the blocks etcd holds, nothing may be deleted on the way.
- Silent: a stopped etcd keeps its TCP connections open and answers nothing; detection is the time until
  every node's status says the datastore is unreachable. After SIGCONT the warning must clear and a new
  write must arrive.
- Restart during an outage: node1's daemon is restarted while etcd is down for longer than the sweep hold;
  it must not delete a single adopted route, before or after etcd returns.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from fault import inject, mesh, probe
from labs import topology

pytestmark = [pytest.mark.fault, pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

UNREACHABLE = "datastore unreachable"
DETECT_BOUND = 30.0
CONVERGE = 30.0
EXTRA = {"node1": "192.168.101.0/26", "node2": "192.168.102.0/26", "node3": "192.168.103.0/26"}


@pytest.fixture
def lab(mesh_lab):
    """The mesh with every session Established and only the base blocks, before and after each test."""
    _, waited = probe.wait_for(lambda: probe.all_established(mesh_lab, mesh.PEERS), 60.0)
    assert waited < 60.0, f"not Established: {mesh.sessions_report(mesh_lab)}"
    yield mesh_lab
    etcd = inject.LabEtcd(mesh_lab)
    etcd.ensure_running()
    inject.delete(mesh_lab, [topology.affinity(node, cidr)[0] for node, cidr in EXTRA.items()])
    probe.wait_for(lambda: not mesh.route_mismatch(mesh_lab, mesh.base_blocks()), CONVERGE)


@contextlib.contextmanager
def watching(lab: str):
    """Route watches on every node; yields {node: RouteWatch}."""
    with contextlib.ExitStack() as stack:
        yield {node: stack.enter_context(probe.RouteWatch(inject.node_netns(lab, node)))
               for node in mesh.NODES}


def _deleted(watches) -> dict[str, list[str]]:
    return {node: w.deleted() for node, w in watches.items() if w.deleted()}


def _unreachable_everywhere(lab: str) -> bool:
    return all(any(UNREACHABLE in w for w in probe.warnings(lab, node)) for node in mesh.NODES)


def _reachable_everywhere(lab: str) -> bool:
    return all(not any(UNREACHABLE in w for w in probe.warnings(lab, node)) for node in mesh.NODES)


def _affinity(node: str) -> tuple[str, str]:
    return topology.affinity(node, EXTRA[node])


def test_etcd_killed_for_a_minute_with_writes_before_and_after(lab, campaign, fault_row):
    outage = campaign.count("etcd_outage_s", 60)
    row = fault_row(
        fault="etcd-sigkill",
        injected=f"SIGKILL etcd for {outage} s; one write just before, two queued and applied after",
        times=1,
        must_hold=(f"status warns within {DETECT_BOUND:.0f} s; 0 proto-bird routes deleted; <= 1 ping lost; "
                   f"all writes in every RIB and kernel within {CONVERGE:.0f} s of etcd's return"),
    )
    etcd = inject.LabEtcd(lab)
    with watching(lab) as watches, probe.Pinger(lab, "node2-pod1", "192.168.1.2") as ping:
        inject.put(lab, [_affinity("node1")])
        etcd.kill()
        started = time.monotonic()
        queued = [_affinity("node2"), _affinity("node3")]
        _, detect = probe.wait_for(lambda: _unreachable_everywhere(lab), min(DETECT_BOUND, outage))
        detected = _unreachable_everywhere(lab)
        row.measure(detection_s=round(detect, 1) if detected else -1)
        time.sleep(max(outage - (time.monotonic() - started), 0))
        row.measure(etcd_restart_s=round(etcd.start(), 1))
        inject.put(lab, queued)
        want = mesh.base_blocks()
        for node in EXTRA:
            want[node].add(EXTRA[node])
        _, converge = probe.wait_for(lambda: not mesh.route_mismatch(lab, want), CONVERGE)
        off = mesh.route_mismatch(lab, want)
        cleared, _ = probe.wait_for(lambda: _reachable_everywhere(lab), CONVERGE)
    deleted = _deleted(watches)
    row.measure(converge_s=round(converge, 1) if not off else -1, routes_off=mesh.count(off),
                routes_deleted=sum(map(len, deleted.values())), pings=ping.summary(),
                warning_cleared=bool(cleared))
    assert detected, f"not every node warned '{UNREACHABLE}' within {DETECT_BOUND:.0f} s of the kill"
    assert not deleted, f"proto-bird routes deleted during the outage: {deleted}"
    assert not off, f"not converged {CONVERGE:.0f} s after etcd returned: {off}"
    assert cleared, "the datastore warning did not clear after etcd returned"
    assert 0 <= ping.lost <= 1, f"{ping.summary()} pings lost"


def test_etcd_silent_for_a_minute_is_detected(lab, campaign, fault_row):
    outage = campaign.count("etcd_outage_s", 60)
    row = fault_row(
        fault="etcd-sigstop",
        injected=f"SIGSTOP etcd for {outage} s (connections stay open, nothing answers), then SIGCONT",
        times=1,
        must_hold=(f"every node's status says '{UNREACHABLE}' within {DETECT_BOUND:.0f} s; cleared and a "
                   f"new write in every RIB and kernel within {CONVERGE:.0f} s after; 0 proto-bird routes "
                   "deleted"),
    )
    etcd = inject.LabEtcd(lab)
    with watching(lab) as watches, probe.Pinger(lab, "node2-pod1", "192.168.1.2") as ping:
        with etcd.paused():
            started = time.monotonic()
            _, detect = probe.wait_for(lambda: _unreachable_everywhere(lab), outage)
            detected = _unreachable_everywhere(lab)
            row.measure(detection_s=round(detect, 1) if detected else f"not within {outage} s")
            time.sleep(max(outage - (time.monotonic() - started), 0))
        resumed = time.monotonic()
        cleared, _ = probe.wait_for(lambda: _reachable_everywhere(lab), CONVERGE)
        row.measure(clear_s=round(time.monotonic() - resumed, 1) if cleared else -1)
        inject.put(lab, [_affinity("node2")])
        want = mesh.base_blocks()
        want["node2"].add(EXTRA["node2"])
        _, converge = probe.wait_for(lambda: not mesh.route_mismatch(lab, want), CONVERGE)
        off = mesh.route_mismatch(lab, want)
    deleted = _deleted(watches)
    row.measure(write_after_s=round(converge, 1) if not off else -1, routes_off=mesh.count(off),
                routes_deleted=sum(map(len, deleted.values())), pings=ping.summary())
    assert detected and detect <= DETECT_BOUND, (
        f"silent etcd not reported by every node within {DETECT_BOUND:.0f} s (measured {row.measured})")
    assert cleared, f"'{UNREACHABLE}' still shown {CONVERGE:.0f} s after SIGCONT"
    assert not off, f"the write after SIGCONT did not arrive within {CONVERGE:.0f} s: {off}"
    assert not deleted, f"proto-bird routes deleted: {deleted}"


def test_daemon_restarted_during_a_long_etcd_outage_deletes_nothing(lab, campaign, fault_row):
    outage = campaign.count("etcd_restart_outage_s", 150)
    row = fault_row(
        fault="etcd-outage-daemon-restart",
        injected=f"SIGKILL etcd for {outage} s (longer than the 120 s sweep hold); node1's daemon restarted "
                 "(SIGTERM, start) 2 s into it",
        times=1,
        must_hold="0 proto-bird routes deleted on node1 (netlink watch) until sessions are back and settled; "
                  "every RIB and kernel equal to the lab's blocks afterwards",
    )
    etcd = inject.LabEtcd(lab)
    before = probe.kernel(lab, "node1")
    with watching(lab) as watches:
        etcd.kill()
        started = time.monotonic()
        time.sleep(2.0)
        inject.restart_daemon(lab, "node1")
        time.sleep(max(outage - (time.monotonic() - started), 0))
        row.measure(node1_routes_deleted_during_outage=len(watches["node1"].deleted()))
        etcd.start()
        back, took = probe.wait_for(lambda: probe.all_established(lab, mesh.PEERS), 60.0)
        row.measure(sessions_back_s=round(took, 1) if back else -1)
        time.sleep(5.0)  # End-of-RIB and the sweep that follows it
        _, settle = probe.wait_for(lambda: not mesh.route_mismatch(lab, mesh.base_blocks()), CONVERGE)
        off = mesh.route_mismatch(lab, mesh.base_blocks())
    deleted = watches["node1"].deleted()
    row.measure(node1_routes_deleted=len(deleted), routes_off=mesh.count(off),
                kernel_before=len(before))
    assert not deleted, f"node1 deleted {len(deleted)} proto-bird routes: {deleted[:5]}"
    assert back, f"sessions not back 60 s after etcd returned: {mesh.sessions_report(lab)}"
    assert not off, f"RIB/kernel differ from the lab's blocks: {off}"
