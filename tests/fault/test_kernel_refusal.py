"""Fault: a kernel that refuses some of our routes: a foreign route on the destination, a next hop that
disappears. Only those destinations may be retried; the daemon's CPU must stay flat.

The ``external`` lab with GoBGP at 10.0.0.2 announcing many prefixes to node1 over iBGP (so the next hops
it sets are passed on unchanged), some of them with a next hop that node1 reaches only through a static
route (resolved recursively). Measured: the daemon's CPU
time (``/proc/<pid>/stat``) over a quiet window, then over an equal window with the fault in place, and
every route message on the other destinations during the fault (``ip monitor route``: there must be none).
After the fault is removed the affected destinations must be back within a bound.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from interop.daemons.base import Peer
from interop.daemons.gobgp import GoBgp

from fault import inject, probe
from fault.conftest import running_lab
from labs import lab as labs_lab
from labs import netns, topologies, topology

pytestmark = [pytest.mark.fault, pytest.mark.interop, pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

TOPO = topologies.build_external(1)
NODE = "node1"
NODE_IP = TOPO.node(NODE).address
PEER_IP = "10.0.0.2"
FAR_NEXTHOP = "10.77.0.1"  # not on node1's subnet: reached through GATEWAY_ROUTE
GATEWAY_ROUTE = ("10.77.0.0/24", "via", PEER_IP, "proto", "static")
AFFECTED = 5
CPU_SLACK_PCT = 1.0  # of one core, on top of the quiet window's rate
BACK = 30.0


def _prefix(n: int) -> str:
    return f"10.{100 + n // 256}.{n % 256}.0/24"


def _far(n: int) -> str:
    return f"10.90.{n}.0/24"


@pytest.fixture(scope="module")
def lab(campaign, tmp_path_factory):
    """node1 peering with GoBGP, which announces ``refusal_routes`` prefixes plus AFFECTED far ones."""
    if reason := GoBgp.missing():
        pytest.skip(reason)
    routes = campaign.count("refusal_routes", 200)
    with running_lab(TOPO, timeout=5) as name:
        node_ns = inject.node_netns(name, NODE)
        netns.replace_route(node_ns, *GATEWAY_ROUTE)
        gobgp = GoBgp(netns=inject.node_netns(name, topologies.EXTERNAL_ROUTER),
                      workdir=tmp_path_factory.mktemp("gobgp"), asn=TOPO.global_asn, router_id=PEER_IP,
                      local_addresses={"ipv4": PEER_IP}, peers=[Peer(NODE_IP, TOPO.global_asn)])
        peer = topology.bgppeer_resource(
            topology.LabPeer("refusal-peer", {"peerIP": PEER_IP, "asNumber": TOPO.global_asn}))
        labs_lab.stop_node(name, NODE)
        inject.put(name, [peer])
        try:
            gobgp.start()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda n: _gobgp(name, "global", "rib", "add", "-a", "ipv4", _prefix(n)),
                              range(routes)))
                list(pool.map(lambda n: _gobgp(name, "global", "rib", "add", "-a", "ipv4", _far(n),
                                               "nexthop", FAR_NEXTHOP), range(AFFECTED)))
            labs_lab.start_node(name, NODE)
            want = {_prefix(n) for n in range(routes)} | {_far(n) for n in range(AFFECTED)}
            got, _ = probe.wait_for(lambda: want <= probe.kernel(name, NODE), 90.0, interval=1.0)
            missing = want - probe.kernel(name, NODE)
            assert got, f"{len(missing)} of {len(want)} routes not installed: {sorted(missing)[:5]}"
            yield name, routes
        finally:
            gobgp.stop()


def _gobgp(lab: str, *args: str) -> None:
    proc = netns.run_in(inject.node_netns(lab, topologies.EXTERNAL_ROUTER), ["gobgp", *args], timeout=20)
    assert proc.returncode == 0, f"gobgp {' '.join(args)}: {proc.stderr.strip()}"


def _cpu_pct(pid: int, window: float) -> float:
    start = probe.cpu_seconds(pid)
    time.sleep(window)
    return 100 * (probe.cpu_seconds(pid) - start) / window


def _measure(lab: str, row, affected: list[str], window: float, fault, undo) -> None:
    pid = inject.daemon_pid(lab, NODE)
    assert set(affected) <= _ours(lab), "the affected routes are not ours before the fault"
    quiet = _cpu_pct(pid, window)
    with probe.RouteWatch(inject.node_netns(lab, NODE)) as watch:
        fault()
        try:
            time.sleep(2.0)  # the daemon's first reaction is not part of the steady state
            watch.lines.clear()
            faulted = _cpu_pct(pid, window)
            effective = not set(affected) & _ours(lab)  # none of them is ours while the fault lasts
        finally:
            undo()
        others = watch.touching(affected)
    back, took = probe.wait_for(lambda: set(affected) <= _ours(lab), BACK)
    row.measure(cpu_quiet_pct=round(quiet, 2), cpu_fault_pct=round(faulted, 2), window_s=window,
                other_destinations_touched=len(others), back_s=round(took, 1) if back else -1)
    assert effective, f"the fault did not take: our routes still on {sorted(set(affected) & _ours(lab))}"
    assert faulted <= quiet + CPU_SLACK_PCT, (
        f"CPU {faulted:.2f} % of a core with the fault vs {quiet:.2f} % quiet (window {window} s)")
    assert not others, f"route messages on unaffected destinations during the fault: {others[:5]}"
    assert back, f"affected routes not back {BACK:.0f} s after the fault was removed"


def _ours(lab: str) -> set[str]:
    return probe.kernel(lab, NODE)


def test_foreign_routes_on_destinations_retry_alone(lab, campaign, fault_row):
    name, routes = lab
    window = campaign.count("refusal_window_s", 20)
    affected = [_prefix(n) for n in range(AFFECTED)]
    row = fault_row(
        fault="kernel-refuses-foreign-route",
        injected=f"foreign routes (proto static, our metric) replace {AFFECTED} of node1's {routes} learned "
                 f"routes for {window} s",
        times=1,
        must_hold=f"daemon CPU <= quiet + {CPU_SLACK_PCT} % of a core; no route message on other "
                  f"destinations; ours back within {BACK:.0f} s of the foreign routes' removal",
    )
    ns = inject.node_netns(name, NODE)

    def fault():  # same key as ours (destination and metric), so it takes our route's place
        for dst in affected:
            metric = str(netns.routes(ns, dst, "proto", "bird")[0].get("metric", 0))
            netns.replace_route(ns, dst, "via", PEER_IP, "proto", "static", "metric", metric)

    def undo():
        for dst in affected:
            netns.delete_route(ns, dst, "proto", "static")

    _measure(name, row, affected, window, fault, undo)


def test_disappearing_next_hop_retries_alone(lab, campaign, fault_row):
    name, routes = lab
    window = campaign.count("refusal_window_s", 20)
    affected = [_far(n) for n in range(AFFECTED)]
    row = fault_row(
        fault="kernel-next-hop-disappears",
        injected=f"the static route to next hop {FAR_NEXTHOP} ({AFFECTED} learned routes use it) deleted for "
                 f"{window} s, next to {routes} other routes",
        times=1,
        must_hold=f"daemon CPU <= quiet + {CPU_SLACK_PCT} % of a core; no route message on other "
                  f"destinations; the {AFFECTED} routes back within {BACK:.0f} s of the route's return",
    )
    ns = inject.node_netns(name, NODE)
    _measure(name, row, affected, window, lambda: netns.delete_route(ns, *GATEWAY_ROUTE),
             lambda: netns.replace_route(ns, *GATEWAY_ROUTE))
