"""Calico's kernel programming rules in whole labs: IPIP Always, and CrossSubnet across two subnets with
dual stack (the dual-stack mesh, `lab up mesh --ipv6`, is tested in test_kernel_ownership.py: its lab).

This kernel has no ipip link type, so ``tunl0`` is a stand-in veth (``labs.tunnel``): IPIP is proven by the
shape of the routes, and pod traffic through the tunnel is reported as not provable by ``lab up``. Where the
kernel does have ipip (containerlab on an ordinary host), the same labs get a real tunl0 and the tests below
also require that traffic to pass.
"""

from __future__ import annotations

import json
import secrets

import pytest

from labs import lab as labs_lab
from labs import netns, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]


def _lab(topology: str, *, ipv6: bool = False):
    name = f"k{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up(topology, name=name, ipv6=ipv6, echo=lines.append)
        yield name, ok, "\n".join(lines)
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _bird(lab: str, node: str, family: str = "-4") -> dict[str, dict]:
    ns = state.netns_name(lab, node)
    out = netns.ip(ns, family, "-j", "route", "show", "proto", "bird").stdout
    return {r["dst"]: r for r in json.loads(out or "[]")}


def _shape(route: dict) -> tuple[str, str, bool]:
    return route.get("gateway", ""), route.get("dev", ""), "onlink" in route.get("flags", [])


@pytest.fixture(scope="module")
def ipip():
    yield from _lab("ipip")


@pytest.fixture(scope="module")
def crosssubnet():
    yield from _lab("crosssubnet", ipv6=True)


IPIP_NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}


@pytest.mark.parametrize("node", sorted(IPIP_NODES))
def test_ipip_always_every_remote_block_via_tunl0_onlink(ipip, node):
    name, _, _ = ipip
    routes = _bird(name, node)
    for i, (other, address) in enumerate(sorted(IPIP_NODES.items()), start=1):
        block = f"192.168.{i}.0/26"
        if other == node:
            assert routes[block]["type"] == "blackhole"
        else:
            assert _shape(routes[block]) == (address, "tunl0", True), routes[block]


def test_ipip_lab_reports_what_it_can_prove(ipip):
    name, ok, output = ipip
    assert ok, output  # same-node pairs reached, nothing failed
    tunnels = {n["name"]: n["tunnel"] for n in labs_lab.show(name)["nodes"]}
    assert set(tunnels.values()) <= {"ipip", "stand-in"} and len(set(tunnels.values())) == 1
    if tunnels["node1"] == "stand-in":
        want = "reachability: 6/6 pod pairs reached, 24 not provable here (through a stand-in tunl0)"
        assert want in output
    else:  # a kernel with ipip: everything must pass through the real tunnels
        assert "reachability: 30/30 pod pairs reached" in output


CS_NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.1.13", "node4": "10.0.1.14"}
CS_NODES6 = {"node1": "fd00::11", "node2": "fd00::12", "node3": "fd00:0:0:1::13", "node4": "fd00:0:0:1::14"}
CS_ROUTER6 = {"node1": "fd00::1", "node2": "fd00::1", "node3": "fd00:0:0:1::1", "node4": "fd00:0:0:1::1"}


def _subnet(node: str) -> str:
    return CS_NODES[node].rsplit(".", 1)[0]


@pytest.mark.parametrize("node", sorted(CS_NODES))
def test_crosssubnet_plain_within_the_subnet_and_tunl0_across(crosssubnet, node):
    name, _, _ = crosssubnet
    routes = _bird(name, node)
    for i, (other, address) in enumerate(sorted(CS_NODES.items()), start=1):
        if other == node:
            continue
        want = (address, "eth0", False) if _subnet(other) == _subnet(node) else (address, "tunl0", True)
        assert _shape(routes[f"192.168.{i}.0/26"]) == want


@pytest.mark.parametrize("node", sorted(CS_NODES))
def test_crosssubnet_ipv6_next_hops_off_subnet_resolve_through_the_router(crosssubnet, node):
    """IPv6 has no IPIP: a remote node's next hop in the other /64 is not on a connected subnet, so the
    route goes via the gateway the kernel uses to reach it (BIRD's ``gateway recursive``)."""
    name, _, _ = crosssubnet
    routes = _bird(name, node, "-6")
    for i, other in enumerate(sorted(CS_NODES), start=1):
        block = f"fd00:10:0:{i}::/122"
        if other == node:
            assert routes[block]["type"] == "blackhole"
            continue
        same = _subnet(other) == _subnet(node)
        assert routes[block]["gateway"] == (CS_NODES6[other] if same else CS_ROUTER6[node]), routes[block]
        assert routes[block]["dev"] == "eth0"


def test_crosssubnet_dual_stack_pings_over_ipv6_across_subnets(crosssubnet):
    name, ok, output = crosssubnet
    assert ok, output
    pods = {p["name"]: p for p in labs_lab.show(name)["pods"]}
    assert labs_lab.ping(name, "node1-pod1", pods["node4-pod2"]["ipv6"])
    assert labs_lab.ping(name, "node3-pod2", pods["node2-pod1"]["ipv6"])
    # IPv4 inside one subnet needs no tunnel; across subnets it is proven by route shape only (above)
    assert labs_lab.ping(name, "node1-pod1", pods["node2-pod2"]["ipv4"])
