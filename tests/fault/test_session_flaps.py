"""Fault: one BGP session flapped over and over, with and without graceful restart.

The peer is BIRD 2 in the ``external`` lab's router namespace (10.0.0.2), eBGP to node1, announcing ten
prefixes, with its error wait and connect delay at their 1 s minimum so that a thousand flaps fit in the
campaign (GoBGP idles a fixed 5 s after every session loss, which would make each flap cost 7 s). A flap:
inside the peer's namespace the BGP port to node1 is blackholed (nftables) and the TCP
connection aborted (``ss -K``, so both ends see it at once); while the link is down the peer withdraws its
oldest prefix and adds a new one; then the link comes back. Every fifth flap goes down again as soon as
the session is Established, before End-of-RIB can have been processed (the case that used to leak stale
routes). With graceful restart (the peer offers it) node1 keeps the peer's routes while it is down; without,
it drops them at once.

After every flap node1's RIB and kernel must hold exactly what the peer announces now: nothing leaked,
nothing missing. After all flaps: RSS of node1's processes (daemon, ExaBGP, bridge) within 5 % of what it
was after the first few flaps, and once the BGPPeer is deleted no route and no metric series of the peer
is left.
"""

from __future__ import annotations

import time

import pytest
from interop.daemons.base import Peer
from interop.daemons.bird import Bird2

from fault import inject, probe
from fault.conftest import running_lab
from labs import lab as labs_lab
from labs import topologies, topology

pytestmark = [pytest.mark.fault, pytest.mark.interop, pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

TOPO = topologies.build_external(1)
NODE = "node1"
NODE_IP = TOPO.node(NODE).address
PEER_IP = "10.0.0.2"
PEER_AS = 65000
ANNOUNCED = 10
CONVERGE = 30.0
RECOVERY = 60.0
RSS_GROWTH_PCT = 5.0


def _prefix(n: int) -> str:
    return f"10.{200 + n // 256}.{n % 256}.0/24"


class FlappingBird(Bird2):
    """BIRD 2 with every retry timer at its 1 s minimum (error wait doubles up to its maximum otherwise)."""

    timers = "connect retry time 1; error wait time 1, 1; error forget time 1; connect delay time 1;"


@pytest.fixture(scope="module")
def lab():
    if reason := FlappingBird.missing():
        pytest.skip(reason)
    with running_lab(TOPO, timeout=5) as name:  # no peers yet: nothing to wait for
        yield name


@pytest.fixture
def peering(lab, request, tmp_path):
    """BIRD in the router namespace (graceful restart offered or not), node1 configured to peer with it."""
    gr = request.param
    workdir = tmp_path / "bird"
    peer = FlappingBird(netns=inject.node_netns(lab, topologies.EXTERNAL_ROUTER), workdir=workdir,
                        asn=PEER_AS, router_id=PEER_IP, local_addresses={"ipv4": PEER_IP},
                        peers=[Peer(NODE_IP, TOPO.global_asn, graceful_restart=gr)],
                        networks=[_prefix(n) for n in range(ANNOUNCED)])
    key, value = topology.bgppeer_resource(
        topology.LabPeer("flap-peer", {"peerIP": PEER_IP, "asNumber": PEER_AS}))
    try:
        # node1 starts afresh with the BGPPeer (how a running node applies a new one is not this fault).
        labs_lab.stop_node(lab, NODE)
        inject.put(lab, [(key, value)])
        peer.start()
        labs_lab.start_node(lab, NODE)
        yield lab, peer, key
    finally:
        peer.stop()
        inject.delete(lab, [key])


def _up(lab: str) -> bool:
    return PEER_IP in probe.established(lab, NODE)


def _view(lab: str) -> tuple[set[str], set[str] | None]:
    return probe.kernel(lab, NODE, via=PEER_IP), probe.learned(lab, NODE, PEER_IP)


@pytest.mark.parametrize("peering", [pytest.param(True, id="graceful-restart"),
                                     pytest.param(False, id="no-graceful-restart")], indirect=True)
def test_session_flaps_leak_nothing(peering, campaign, fault_row, request):
    lab, peer, key = peering
    gr = "no-graceful" not in request.node.callspec.id
    flaps = campaign.count("flaps", 20)
    mode = "graceful restart" if gr else "no graceful restart"
    row = fault_row(
        fault=f"session-flaps-{'gr' if gr else 'no-gr'}",
        injected=f"{flaps} flaps of node1's session to BIRD 2 ({mode}): nft blackhole + ss -K in the peer's "
                 "namespace, the peer's announcements changed while down, every 5th flap down again at once",
        times=flaps,
        must_hold=f"after each flap node1's RIB and kernel = the peer's routes within {CONVERGE:.0f} s; "
                  f"while down routes {'kept' if gr else 'dropped'}; RSS growth <= {RSS_GROWTH_PCT:.0f} %; "
                  "no route or metric series of the peer after it is deleted",
    )
    ns = inject.node_netns(lab, topologies.EXTERNAL_ROUTER)
    current = [_prefix(n) for n in range(ANNOUNCED)]
    _, waited = probe.wait_for(lambda: _up(lab) and _view(lab) == (set(current), set(current)), RECOVERY)
    assert waited < RECOVERY, f"session or routes not there before the flaps: {_view(lab)}"
    warmup = min(5, max(flaps // 10, 1))
    rss_before = None
    leaked = missing = wrong_while_down = 0
    worst_converge = worst_back = 0.0
    flaps_started = time.monotonic()
    for n in range(1, flaps + 1):
        if n == warmup + 1:
            rss_before = probe.rss_mib(inject.node_pids(lab, NODE).values())
        with inject.blackhole(ns, NODE_IP):
            inject.reset_sessions(ns, NODE_IP)
            went_down, _ = probe.wait_for(lambda: not _up(lab), 10.0, interval=0.1)
            assert went_down, f"flap {n}: node1 still shows the session Established 10 s after the reset"
            new = _prefix(ANNOUNCED + n - 1)
            before = set(current)
            current = current[1:] + [new]
            peer.networks = list(current)
            peer.configure()  # only the static protocol changes: BIRD leaves the BGP session to the flap
            if gr:  # the stale routes stay in the kernel while the peer restarts
                ok = probe.kernel(lab, NODE, via=PEER_IP) == before
            else:
                ok, _ = probe.wait_for(lambda: not probe.kernel(lab, NODE, via=PEER_IP), 10.0, interval=0.1)
            wrong_while_down += 0 if ok else 1
        back, back_s = probe.wait_for(lambda: _up(lab), RECOVERY, interval=0.1)
        assert back, f"flap {n}: session not Established within {RECOVERY:.0f} s after the link came back"
        worst_back = max(worst_back, back_s)
        if n % 5 == 0:  # down again before End-of-RIB, then up
            with inject.blackhole(ns, NODE_IP):
                inject.reset_sessions(ns, NODE_IP)
                probe.wait_for(lambda: not _up(lab), 10.0, interval=0.1)
            back, _ = probe.wait_for(lambda: _up(lab), RECOVERY, interval=0.1)
            assert back, f"flap {n} (double): session not Established within {RECOVERY:.0f} s"
        started = time.monotonic()
        want = set(current)
        converged, _ = probe.wait_for(lambda want=want: _view(lab) == (want, want), CONVERGE, interval=0.1)
        worst_converge = max(worst_converge, time.monotonic() - started)
        kernel, learned = _view(lab)
        learned = learned or set()
        leaked += len((kernel | learned) - want)
        missing += len(want - kernel) + len(want - learned)
        row.measure(flaps_done=n, flap_mean_s=round((time.monotonic() - flaps_started) / n, 1),
                    reestablish_max_s=round(worst_back, 1), converge_max_s=round(worst_converge, 1),
                    routes_leaked=leaked,
                    routes_missing=missing, wrong_while_down=wrong_while_down)
        if not converged:  # recorded above; a stuck flap would only repeat itself
            break
    rss_after = probe.rss_mib(inject.node_pids(lab, NODE).values())
    if rss_before:
        row.measure(rss_before_mib=round(rss_before, 1), rss_after_mib=round(rss_after, 1),
                    rss_growth_pct=round(100 * (rss_after - rss_before) / rss_before, 1))
    inject.delete(lab, [key])
    gone, _ = probe.wait_for(lambda: not any(p["address"] == PEER_IP for p in
                                             (probe.status(lab, NODE) or {"peers": [{"address": PEER_IP}]})
                                             ["peers"]), 30.0)
    probe.wait_for(lambda: not _view(lab)[0], 30.0)
    series = [line for line in probe.metric_series(lab, NODE) if f'"{PEER_IP}"' in line]
    row.measure(routes_after_delete=len(_view(lab)[0]), metric_series_after_delete=len(series))
    assert leaked == 0 and missing == 0, f"after the flaps: {leaked} routes leaked, {missing} missing"
    assert wrong_while_down == 0, (f"{wrong_while_down} flaps: routes {'not kept' if gr else 'not dropped'} "
                                   "while the session was down")
    assert not rss_before or rss_after <= rss_before * (1 + RSS_GROWTH_PCT / 100), (
        f"RSS grew from {rss_before:.1f} to {rss_after:.1f} MiB")
    assert gone, "the deleted BGPPeer is still in node1's status"
    assert not _view(lab)[0], f"routes of the deleted peer left in the kernel: {sorted(_view(lab)[0])}"
    assert not series, f"metric series of the deleted peer left: {series[:5]}"
