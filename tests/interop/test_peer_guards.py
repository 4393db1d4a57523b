"""The receive-side guards against a real peer: GoBGP in the lab's "external" router namespace announces
routes no node should install, then more prefixes than our node's limit.

One lab for the module (``lab up external --nodes 1``: node1 at 10.0.0.11/24 beside the router namespace
"peer" at 10.0.0.2) and one BGPPeer from node1 to GoBGP (eBGP, AS 65000). Each test starts its own GoBGP
with the routes it needs. Assertions read node1's kernel (``ip route show proto bird``) and its daemon's own
reports (``calico-bgp status`` / ``routes``), never what we think we sent.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import pytest

from interop.daemons.base import ESTABLISHED, Peer, wait_until
from interop.daemons.gobgp import GoBgp
from interop.external_lab import NODE, PEER_ADDRESS, PEER_AS, TOPO, node_view, node_with_peer
from labs import lab as labs_lab
from labs import netns, ops, state

pytestmark = [pytest.mark.interop, pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

LIMIT = 50
SESSION_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def lab():
    if GoBgp.missing():
        pytest.skip(GoBgp.missing())
    with node_with_peer("g", "guards-gobgp", {"peerIP": PEER_ADDRESS, "asNumber": PEER_AS}) as name:
        yield name


def gobgp(lab: str, workdir, networks: list[str]) -> GoBgp:
    workdir.chmod(0o755)
    return GoBgp(
        netns=state.netns_name(lab, "peer"),
        workdir=workdir,
        asn=PEER_AS,
        router_id=PEER_ADDRESS,
        local_addresses={"ipv4": PEER_ADDRESS},
        peers=[Peer(NODE.address, TOPO.global_asn)],
        networks=networks,
    )


def session_info(lab: str) -> str:
    try:
        peers = node_view(lab, "status")["peers"]
    except (ValueError, KeyError, OSError):
        return ""
    return next((p.get("info", "") for p in peers if p["address"] == PEER_ADDRESS), "")


def kernel_routes(lab: str) -> set[str]:
    """node1's proto-bird IPv4 routes as CIDRs (``ip`` prints a host route without its /32)."""
    out = netns.ip(state.netns_name(lab, NODE.name), "-4", "-j", "route", "show", "proto", "bird").stdout
    return {str(ipaddress.ip_network(r["dst"], strict=False)) for r in json.loads(out or "[]")}


def test_link_local_and_on_link_routes_are_not_installed_while_a_normal_one_is(lab, tmp_path):
    refused = {"169.254.10.0/24": "link-local", "10.0.0.128/25": "on-link", "10.0.0.12/32": "on-link"}
    daemon = gobgp(lab, tmp_path, ["203.0.113.0/24", *refused])
    daemon.start()
    try:
        wait_until(lambda: daemon.neighbor_state(NODE.address), ESTABLISHED, SESSION_TIMEOUT,
                   what=lambda: f"GoBGP's session with node1; its log:\n{daemon.log_tail()}")
        wait_until(lambda: kernel_routes(lab), lambda got: "203.0.113.0/24" in got, 15,
                   what="GoBGP's normal route in node1's kernel")
        report = wait_until(
            lambda: {r["prefix"]: r for r in node_view(lab, "routes")["routes"]},
            lambda rows: set(refused) <= set(rows),
            15,
            what="the refused routes in `calico-bgp routes`",
        )
        assert not set(refused) & kernel_routes(lab)
        for prefix, reason in refused.items():
            row = report[prefix]
            assert row["refused"] == reason, row
            assert row["kernel"]["installed"] is False and "import guard" in row["kernel"]["why"], row
            assert row["best"]["learned_from"] == PEER_ADDRESS
        assert "refused" not in report["203.0.113.0/24"]
    finally:
        daemon.stop()


def test_routes_inside_a_subnet_that_appears_on_an_interface_are_refused_until_it_goes(lab, tmp_path):
    """The connected subnets follow the kernel's addresses (not only the Node resource)."""
    ns = state.netns_name(lab, NODE.name)
    links = json.loads(netns.ip(ns, "-j", "addr", "show").stdout)
    device = next(
        link["ifname"] for link in links if any(a.get("local") == NODE.address for a in link["addr_info"])
    )
    daemon = gobgp(lab, tmp_path, ["172.31.0.9/32"])
    daemon.start()
    try:
        wait_until(lambda: kernel_routes(lab), lambda got: "172.31.0.9/32" in got, SESSION_TIMEOUT,
                   what=lambda: f"GoBGP's /32 in node1's kernel; GoBGP:\n{daemon.log_tail()}")
        netns.ip(ns, "addr", "add", "172.31.0.1/24", "dev", device)
        try:
            wait_until(lambda: kernel_routes(lab), lambda got: "172.31.0.9/32" not in got, 10,
                       what="the /32 leaving node1's kernel once 172.31.0.0/24 is on-link")
            row = {r["prefix"]: r for r in node_view(lab, "routes")["routes"]}["172.31.0.9/32"]
            assert row["refused"] == "on-link", row
        finally:
            netns.ip(ns, "addr", "del", "172.31.0.1/24", "dev", device)
        wait_until(lambda: kernel_routes(lab), lambda got: "172.31.0.9/32" in got, 10,
                   what="the /32 back in node1's kernel once the subnet is gone")
    finally:
        daemon.stop()


def test_a_peer_over_the_prefix_limit_is_torn_down_and_held(lab, tmp_path):
    networks = [f"198.18.{i}.0/24" for i in range(LIMIT + 10)]
    labs_lab.stop_node(lab, NODE.name)
    previous = os.environ.get("CALICO_BGP_MAX_PREFIXES")
    os.environ["CALICO_BGP_MAX_PREFIXES"] = str(LIMIT)  # the lab hands its environment to the daemon
    try:
        labs_lab.start_node(lab, NODE.name)
    finally:
        if previous is None:
            del os.environ["CALICO_BGP_MAX_PREFIXES"]
        else:
            os.environ["CALICO_BGP_MAX_PREFIXES"] = previous
    daemon = gobgp(lab, tmp_path, networks)
    daemon.start()
    try:
        info = wait_until(lambda: session_info(lab), lambda i: "Prefix limit" in i, SESSION_TIMEOUT,
                          what=lambda: f"node1's status naming the prefix limit; GoBGP:\n{daemon.log_tail()}")
        assert info.startswith("Idle Prefix limit: 50 exceeded"), info
        # Held: for 10 s the session never counts as up for us, the peer's routes never reach the kernel,
        # and the status keeps counting down (the first hold is 30 s).
        deadline = time.monotonic() + 10
        seen_info = set()
        while time.monotonic() < deadline:
            assert not set(networks) & kernel_routes(lab), "a route of the peer over its limit was installed"
            info = session_info(lab)
            assert "Prefix limit" in info and "retry in" in info, info
            seen_info.add(info)
            time.sleep(0.5)
        assert len(seen_info) > 1, "the retry countdown did not move"
        # Our sessions advertise graceful restart (Calico's default), and ExaBGP 5.0.15 then ends a session
        # it is told to tear down without a NOTIFICATION: the close is what the peer sees, the hold-down
        # (every reconnect torn down again) is what keeps it out.
        run_dir = Path(ops.load(lab).node(NODE.name).run_dir)
        exabgp_log = (run_dir / "exabgp.log").read_text()
        assert exabgp_log.count("closing the session without notification") >= 1, exabgp_log[-2000:]
        daemon_log = Path(ops.load(lab).node(NODE.name).log).read_text()
        crossings = [line for line in daemon_log.splitlines() if "over its limit of 50" in line]
        assert len(crossings) == 1, crossings
    finally:
        daemon.stop()
