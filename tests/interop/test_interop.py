"""Interop matrix: our node (a real ``calico-bgp node run`` fed by etcd) against BIRD 1.6, BIRD 2, FRR and
GoBGP, each started by its harness in the lab's "external" router namespace.

One lab for the whole module (``lab up external --ipv6``: node1 and node2 beside the router namespace "peer",
mesh off, dual-stack), one daemon per scenario. A scenario is the daemon's config plus the
BGPPeer resources that point our nodes at it:

- ibgp / ebgp: IPv4 and IPv6 sessions from both nodes (global BGPPeers, one per family);
- md5: eBGP over IPv4 with a TCP-MD5 password (BGPPeer ``password.secretKeyRef``, read from the lab's
  secrets directory through ``CALICO_BGP_SECRETS_DIR``);
- rr: iBGP over IPv4 with both nodes as route-reflector clients of the daemon (Calico with external
  reflectors): node1's block must reach node2 through the daemon with node1 as next hop.

Every assertion reads the daemon's own view (``received_routes``, ``neighbor_state``) or our node's kernel
and ``calico-bgp status``. Scenarios share the lab; pytest groups the tests of one scenario together
(module-scoped parametrized fixture), so each daemon is started once per scenario.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess

import pytest

from interop.daemons import DAEMONS
from interop.daemons.base import ESTABLISHED, ORIGINATED, Daemon, Peer, wait_until
from labs import etcd, netns, ops, state, topology
from labs import ipv6 as dual_stack
from labs import lab as labs_lab
from labs.topologies import build_external

pytestmark = [pytest.mark.interop, pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

TOPO = dual_stack.with_ipv6(build_external(2))  # what `lab up external --ipv6` builds
OUR_AS = TOPO.global_asn
PEER_EBGP_AS = 65000
_PORT = TOPO.routers[0].ports[0]
PEER = {
    "ipv4": str(ipaddress.ip_interface(_PORT.ipv4).ip),
    "ipv6": str(ipaddress.ip_interface(_PORT.ipv6).ip),
}
NODES = {n.name: {"ipv4": n.address, "ipv6": n.address6} for n in TOPO.nodes}
BLOCKS = {n.name: {"ipv4": n.block, "ipv6": n.block6} for n in TOPO.nodes}
PODS = {p.node: p for p in TOPO.pods}
SECRET = ("bgp-secrets", "interop", "Interop-MD5-s3cret")  # name, key, value
SESSION_TIMEOUT = 30.0
ROUTE_TIMEOUT = 15.0

SCENARIOS = {
    "ibgp": {"asn": OUR_AS, "families": ("ipv4", "ipv6")},
    "ebgp": {"asn": PEER_EBGP_AS, "families": ("ipv4", "ipv6")},
    "md5": {"asn": PEER_EBGP_AS, "families": ("ipv4",), "password": True},
    "rr": {"asn": OUR_AS, "families": ("ipv4",), "rr_client": True},
}
CASES = [(kind, scenario) for kind in DAEMONS for scenario in SCENARIOS]


def _ids(case: tuple[str, str]) -> str:
    return "-".join(case)


# ---------------------------------------------------------------------------------------------- the lab


@pytest.fixture(scope="module")
def lab():
    name = f"i{secrets.token_hex(4)}"
    try:
        labs_lab.up(build_external(2), name=name, ipv6=True, timeout=5)  # no peers yet: nothing to wait for
        ops.set_secret(name, *SECRET)
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _set_peers(lab: str, scenario: dict) -> None:
    """Our side of a scenario: one global BGPPeer per family (deleted for families it does not use)."""
    lab_state = ops.load(lab)
    puts, deletes = [], []
    for family in ("ipv4", "ipv6"):
        peer = topology.LabPeer(f"interop-{family}", {"peerIP": PEER[family], "asNumber": scenario["asn"]})
        if scenario.get("password"):
            peer.spec["password"] = {"secretKeyRef": {"name": SECRET[0], "key": SECRET[1]}}
        key, value = topology.bgppeer_resource(peer)
        (puts if family in scenario["families"] else deletes).append((key, value))
    lab_state.etcd_keys += [k for k, _ in puts if k not in lab_state.etcd_keys]
    lab_state.save()
    etcd.put_all(lab_state.etcd_endpoints, puts)
    etcd.delete_all(lab_state.etcd_endpoints, [k for k, _ in deletes])


# ---------------------------------------------------------------------------------------------- a scenario


@pytest.fixture(scope="module")
def peering(request, lab, tmp_path_factory):
    """(lab, daemon, scenario name, scenario) with the daemon started and both ends configured."""
    kind, name = request.param
    cls = DAEMONS[kind]
    reason = cls.missing()
    if reason:
        pytest.skip(reason)
    scenario = SCENARIOS[name]
    workdir = tmp_path_factory.mktemp(f"{kind}-{name}")
    workdir.chmod(0o755)  # FRR drops to its own user and must reach its config and log
    daemon = cls(
        netns=state.netns_name(lab, "peer"),
        workdir=workdir,
        asn=scenario["asn"],
        router_id=PEER["ipv4"],
        local_addresses=dict(PEER),
        networks=[ORIGINATED[f] for f in scenario["families"]],
    )
    for node in NODES:
        for family in scenario["families"]:
            daemon.peers.append(
                Peer(
                    NODES[node][family],
                    OUR_AS,
                    password=SECRET[2] if scenario.get("password") else "",
                    rr_client=bool(scenario.get("rr_client")),
                )
            )
    try:
        # Our nodes start afresh with the scenario's BGPPeers: a scenario tests peering, not how a running
        # node applies a changed BGPPeer (ExaBGP 5.0.15 drops a SIGUSR1 that arrives while routes are
        # queued for a neighbour that is down; the daemon's own tests cover reloads).
        for node in NODES:
            labs_lab.stop_node(lab, node)
        _set_peers(lab, scenario)
        daemon.start()
        for node in NODES:
            labs_lab.start_node(lab, node)
        yield lab, daemon, name, scenario
    finally:
        daemon.stop()


def _our_sessions(lab: str, node: str) -> dict[str, str]:
    lab_state = ops.load(lab)
    try:
        out = ops.status(lab_state, lab_state.node(node), "-o", "json").stdout
        return {p["address"]: p.get("info", "") for p in json.loads(out)["peers"]}
    except (ValueError, KeyError, subprocess.TimeoutExpired):
        return {}


def _kernel_routes(lab: str, node: str, family: str) -> dict[str, dict]:
    flag = "-6" if family == "ipv6" else "-4"
    out = netns.ip(state.netns_name(lab, node), flag, "-j", "route", "show", "proto", "bird").stdout
    return {_normal(r["dst"]): r for r in json.loads(out or "[]")}


def _normal(prefix: str) -> str:
    return str(ipaddress.ip_network(prefix, strict=False)) if "/" in prefix else prefix


def _wait_established(lab: str, daemon: Daemon, scenario: dict) -> None:
    for node, addresses in NODES.items():
        for family in scenario["families"]:
            address = addresses[family]
            wait_until(
                lambda a=address: daemon.neighbor_state(a),
                ESTABLISHED,
                SESSION_TIMEOUT,
                what=lambda n=node, a=address: (
                    f"{daemon.kind}'s session with {n} ({a}), its own view; its logs:\n{daemon.log_tail()}"
                ),
            )
            wait_until(
                lambda n=node, f=family: _our_sessions(lab, n).get(PEER[f], ""),
                lambda info: info.startswith(ESTABLISHED),
                SESSION_TIMEOUT,
                what=f"{node}'s session with {daemon.kind} ({PEER[family]}), our view",
            )


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("peering", CASES, ids=_ids, indirect=True)
def test_sessions_establish_on_both_sides(peering):
    lab, daemon, _, scenario = peering
    _wait_established(lab, daemon, scenario)


@pytest.mark.parametrize("peering", CASES, ids=_ids, indirect=True)
def test_our_blocks_reach_the_daemon_and_nothing_else(peering):
    """Each node announces exactly its block (no host subnet, no route learned from the daemon), next hop
    itself, with our AS prepended on eBGP and an empty AS path on iBGP."""
    lab, daemon, _, scenario = peering
    _wait_established(lab, daemon, scenario)
    ebgp = scenario["asn"] != OUR_AS
    for node, addresses in NODES.items():
        for family in scenario["families"]:
            block = BLOCKS[node][family]
            routes = wait_until(
                lambda a=addresses[family], f=family: daemon.received_routes(a, f),
                lambda got, b=block: b in got,
                ROUTE_TIMEOUT,
                what=f"{node}'s {family} block in {daemon.kind}'s table",
            )
            assert set(routes) == {block}, f"{node} leaked more than its block to {daemon.kind}: {routes}"
            path = routes[block]
            assert path.nexthop == addresses[family], path
            assert path.as_path == ((OUR_AS,) if ebgp else ()), path


@pytest.mark.parametrize("peering", CASES, ids=_ids, indirect=True)
def test_daemon_route_lands_in_our_kernels_with_proto_bird(peering):
    lab, daemon, _, scenario = peering
    _wait_established(lab, daemon, scenario)
    for node in NODES:
        for family in scenario["families"]:
            prefix = ORIGINATED[family]
            routes = wait_until(
                lambda n=node, f=family: _kernel_routes(lab, n, f),
                lambda got, p=prefix: p in got,
                ROUTE_TIMEOUT,
                what=f"{daemon.kind}'s {prefix} in {node}'s kernel (proto bird)",
            )
            assert routes[prefix].get("gateway") == PEER[family], routes[prefix]


RR_CASES = [(kind, "rr") for kind in DAEMONS]


@pytest.mark.parametrize("peering", RR_CASES, ids=_ids, indirect=True)
def test_reflector_passes_each_clients_block_to_the_other_with_the_original_next_hop(peering):
    lab, daemon, _, scenario = peering
    _wait_established(lab, daemon, scenario)
    for node, other in (("node1", "node2"), ("node2", "node1")):
        block = BLOCKS[other]["ipv4"]
        routes = wait_until(
            lambda n=node: _kernel_routes(lab, n, "ipv4"),
            lambda got, b=block: b in got,
            ROUTE_TIMEOUT,
            what=f"{other}'s block reflected by {daemon.kind} into {node}'s kernel",
        )
        assert routes[block].get("gateway") == NODES[other]["ipv4"], routes[block]
    assert labs_lab.ping(lab, PODS["node1"].name, PODS["node2"].ipv4)
    assert labs_lab.ping(lab, PODS["node2"].name, PODS["node1"].ipv4)


GR_CASES = [(kind, "ibgp") for kind in DAEMONS]


@pytest.mark.parametrize("peering", GR_CASES, ids=_ids, indirect=True)
def test_daemon_keeps_our_routes_while_our_node_restarts(peering):
    """Graceful restart, helper side on the daemon: our node stops (SIGTERM, as a restart does); the
    daemon keeps node1's block while the session is down, and after node1 comes back the block is still
    there and no longer stale."""
    lab, daemon, _, scenario = peering
    _wait_established(lab, daemon, scenario)
    address, block = NODES["node1"]["ipv4"], BLOCKS["node1"]["ipv4"]
    wait_until(lambda: block in daemon.received_routes(address, "ipv4"), True, ROUTE_TIMEOUT)
    labs_lab.stop_node(lab, "node1")
    try:
        wait_until(lambda: daemon.neighbor_state(address) != ESTABLISHED, True, SESSION_TIMEOUT)
        kept = daemon.received_routes(address, "ipv4")
        assert block in kept, f"{daemon.kind} dropped node1's block when node1 stopped: {kept}"
        assert daemon.graceful_restart_active(address), f"{daemon.kind} is not in graceful restart"
    finally:
        labs_lab.start_node(lab, "node1")
    _wait_established(lab, daemon, scenario)
    routes = wait_until(
        lambda: daemon.received_routes(address, "ipv4"),
        lambda got: block in got and not got[block].stale,
        ROUTE_TIMEOUT,
        what=f"node1's block in {daemon.kind}'s table, fresh after the restart",
    )
    assert routes[block].nexthop == address
