"""Long-lived graceful restart (RFC 9494), receive side, against a real peer: BIRD 2 with graceful restart
(2 s) and long-lived graceful restart (stale time 6 s) announces a route to node1, whose BGPPeer asks for
``restartMode: LongLivedGracefulRestart`` with a longer stale time (20 s); then BIRD dies (SIGKILL: no
NOTIFICATION, as in a crash).

What must happen on node1 (docs/graceful-restart.md): for BIRD's restart time the route stays as a
graceful-restart stale path; then it stays LLGR-stale (``calico-bgp routes`` says so, it carries 65535:6)
and still in the kernel with protocol bird; it leaves the kernel when the stale time ends. The stale time is
BIRD's 6 s, not our 20 s: ExaBGP passes BIRD's LLGR capability on (as an unknown capability) and the
shorter time wins, so this also shows that the capability is read.

One lab (``lab up external --nodes 1``: node1 at 10.0.0.11/24, the router namespace "peer" at 10.0.0.2).
The measured times are printed (``-s``) for the README; the bounds asserted leave 3 s for polling and the
daemon's 1 s timer tick.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time

import pytest

from interop.daemons.base import ESTABLISHED, Peer, wait_until
from interop.daemons.bird import Bird2
from interop.external_lab import NODE, PEER_ADDRESS, PEER_AS, TOPO, node_view, node_with_peer
from labs import netns, state

pytestmark = [pytest.mark.interop, pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

ROUTE = "203.0.113.0/24"
BIRD_RESTART, BIRD_STALE, OUR_STALE = 2, 6, 20
SLACK = 3.0
SESSION_TIMEOUT = 30.0


class Bird2Llgr(Bird2):
    """BIRD 2 offering graceful restart and long-lived graceful restart with short times."""

    def _session_options(self, peer: Peer) -> list[str]:
        return [
            *super()._session_options(peer),
            f"graceful restart time {BIRD_RESTART};",
            "long lived graceful restart on;",
            f"long lived stale time {BIRD_STALE};",
        ]


@pytest.fixture(scope="module")
def lab():
    if Bird2.missing():
        pytest.skip(Bird2.missing())
    spec = {
        "peerIP": PEER_ADDRESS,
        "asNumber": PEER_AS,
        "restartMode": "LongLivedGracefulRestart",
        "maxRestartTime": f"{OUR_STALE}s",
    }
    with node_with_peer("l", "llgr-bird", spec) as name:
        yield name


def kernel_routes(lab: str) -> dict[str, dict]:
    """node1's proto-bird IPv4 routes by CIDR (``ip`` prints a host route without its /32)."""
    out = netns.ip(state.netns_name(lab, NODE.name), "-4", "-j", "route", "show", "proto", "bird").stdout
    return {str(ipaddress.ip_network(r["dst"], strict=False)): r for r in json.loads(out or "[]")}


def our_route(lab: str) -> dict:
    return next((r for r in node_view(lab, "routes")["routes"] if r["prefix"] == ROUTE), {})


def test_a_dead_peers_route_stays_llgr_stale_in_the_kernel_for_the_stale_time(lab, tmp_path):
    tmp_path.chmod(0o755)
    daemon = Bird2Llgr(
        netns=state.netns_name(lab, "peer"),
        workdir=tmp_path,
        asn=PEER_AS,
        router_id=PEER_ADDRESS,
        local_addresses={"ipv4": PEER_ADDRESS},
        peers=[Peer(NODE.address, TOPO.global_asn)],
        networks=[ROUTE],
    )
    daemon.start()
    try:
        wait_until(
            lambda: daemon.neighbor_state(NODE.address),
            ESTABLISHED,
            SESSION_TIMEOUT,
            what=lambda: f"BIRD's session with node1; its log:\n{daemon.log_tail()}",
        )
        wait_until(
            lambda: kernel_routes(lab), lambda got: ROUTE in got, 15, what="BIRD's route in node1's kernel"
        )
        killed = time.monotonic()
        daemon._signal(signal.SIGKILL)

        # Graceful restart first: stale, not yet LLGR-stale.
        row = wait_until(
            lambda: our_route(lab),
            lambda r: r.get("best", {}).get("stale"),
            5,
            what="the route stale in `calico-bgp routes` after BIRD died",
        )
        assert not row["best"]["llgr_stale"] or time.monotonic() - killed >= BIRD_RESTART, row

        # Then long-lived stale, still in the kernel with protocol bird.
        row = wait_until(
            lambda: our_route(lab),
            lambda r: r.get("best", {}).get("llgr_stale"),
            BIRD_RESTART + SLACK,
            what="the route LLGR-stale in `calico-bgp routes`",
        )
        llgr_at = time.monotonic() - killed
        assert "65535:6" in row["best"]["communities"], row
        assert row["kernel"]["installed"], row
        assert ROUTE in kernel_routes(lab)
        # Still there well into the stale time.
        time.sleep(max(0.0, BIRD_RESTART + BIRD_STALE / 2 - (time.monotonic() - killed)))
        assert ROUTE in kernel_routes(lab), "the LLGR-stale route left the kernel before its stale time ended"

        wait_until(
            lambda: kernel_routes(lab),
            lambda got: ROUTE not in got,
            BIRD_RESTART + BIRD_STALE + SLACK - (time.monotonic() - killed),
            what=f"the route gone from node1's kernel after {BIRD_RESTART}+{BIRD_STALE} s "
            f"(BIRD's stale time, not our {OUR_STALE} s)",
        )
        gone_at = time.monotonic() - killed
        print(
            f"\nLLGR interop: LLGR-stale after {llgr_at:.1f} s, out of the kernel after {gone_at:.1f} s "
            f"(restart {BIRD_RESTART} s + stale {BIRD_STALE} s)"
        )
        assert gone_at >= BIRD_RESTART + BIRD_STALE - 0.5, gone_at
        assert our_route(lab) == {}
    finally:
        daemon.stop()
