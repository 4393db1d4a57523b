"""BFD in the `tor` lab (``lab up tor --bfd``): every node-ToR session runs BFD against FRR's bfdd, and a
ToR that silently drops a node's traffic costs the node the ToR's routes within BFD's detection time, not
the hold time.

The blackhole is nftables in the ToR's namespace dropping every packet to and from node1: no RST, no ICMP,
so neither BGP side learns anything until a timer fires. Measured from the moment the rules are in:
- node1's kernel loses the routes it had through the ToR (proto 12, via 10.0.1.1): BFD on our side;
- FRR's bfdd declares node1 down and FRR drops node1's pod block: BFD on FRR's side (the reverse direction);
then, with BFD off on both sides, the same blackhole against the hold timer alone (FRR's datacenter profile
negotiates 9 s), after which graceful restart keeps the routes for the restart time: with BFD they go at once
(BFD Down under a session still Established is a dead path, whatever the peer's C bit; docs/bfd.md). The
figures are printed (``pytest -s``) and asserted only against each other and the configured timers: BFD's
300 ms x 3 against a 9 s hold time leaves an order of magnitude between them.

One lab for the module; the blackhole is removed, and the lab taken down, in every outcome.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgp.status import query
from labs import catalog, netns, ops, routers, state
from labs import lab as labs_lab
from labs.bfd import with_bfd

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

TOPO = with_bfd(catalog.TOPOLOGIES["tor"](nodes=2))
NODE = TOPO.nodes[0]  # node1, rack1
NODE_IP = NODE.ipv4.split("/")[0]
TOR = next(r for r in TOPO.routers if r.name == "tor1")
TOR_IP = TOR.ports[0].ipv4.split("/")[0]
PEER = next(p for p in TOPO.peers if p.spec["peerIP"] == TOR_IP)
DETECTION = 3 * 0.3  # both sides' defaults: 300 ms x 3
HOLD_TIME = 9.0  # FRR's datacenter profile; the lower hold time of the two is the session's
BOUND = 60.0  # seconds any one step may take on this 2-core machine before the test gives up


@pytest.fixture(scope="module")
def lab():
    reason = routers.frr_available()
    if reason:
        pytest.skip(reason)
    name = f"b{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up(TOPO, name=name, echo=lines.append)
        assert ok, "\n".join(lines)
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until predicate holds; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _node_status(lab: str) -> dict:
    node = ops.node_state(ops.load(lab), NODE.name)
    return query(Path(node.run_dir) / "ctl.sock", "status", timeout=10)


def _tor_peer(lab: str) -> dict:
    return next(p for p in _node_status(lab)["peers"] if p["address"] == TOR_IP)


def _routes_via_tor(lab: str) -> set[str]:
    ns = state.netns_name(lab, NODE.name)
    out = netns.run_in(ns, ["ip", "-j", "route", "show", "proto", "12"], timeout=10).stdout
    return {r["dst"] for r in json.loads(out or "[]") if r.get("gateway") == TOR_IP}


def _pathspace(lab: str) -> str:
    return ops.load(lab).router(TOR.name).pathspace


@contextlib.contextmanager
def _blackhole(lab: str) -> Iterator[None]:
    """In the ToR's namespace, drop everything to and from node1 (BGP, BFD, ARP aside)."""
    ns, table = state.netns_name(lab, TOR.name), f"cbgp_bfd_{secrets.token_hex(3)}"
    script = (
        f"table ip {table} {{\n"
        f"  chain in {{ type filter hook input priority 0; ip saddr {NODE_IP} drop; }}\n"
        f"  chain out {{ type filter hook output priority 0; ip daddr {NODE_IP} drop; }}\n"
        "}\n"
    )
    subprocess.run(netns.exec_argv(ns, ["nft", "-f", "-"]), input=script, text=True, check=True, timeout=10)
    try:
        yield
    finally:
        subprocess.run(netns.exec_argv(ns, ["nft", "delete", "table", "ip", table]), check=True, timeout=10)


def _timed(checks: dict[str, Callable[[], bool]], timeout: float) -> dict[str, float]:
    """Start the clock, then poll every check in its own thread; seconds until each held."""
    results: dict[str, float] = {}
    start = time.monotonic()

    def watch(name: str, check: Callable[[], bool]) -> None:
        while time.monotonic() - start < timeout:
            if check():
                results[name] = time.monotonic() - start
                return
            time.sleep(0.02)

    threads = [threading.Thread(target=watch, args=item, daemon=True) for item in checks.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    missing = sorted(checks.keys() - results.keys())
    assert not missing, f"not within {timeout:g}s: {missing} (got {results})"
    return results


def _established_with_routes(lab: str) -> bool:
    peer = _tor_peer(lab)
    return peer["state"] == "up" and bool(_routes_via_tor(lab))


def _our_block_at_tor(lab: str) -> bool:
    return NODE.block in routers.bgp_routes(_pathspace(lab))


def test_bfd_is_up_on_every_node_tor_session(lab):
    _wait(lambda: _established_with_routes(lab), BOUND, "node1's ToR session and its routes")
    for router in TOPO.routers:
        pathspace = ops.load(lab).router(router.name).pathspace
        wanted = {n.address for n in router.neighbors if n.bfd}
        _wait(
            lambda ps=pathspace, want=wanted: (
                {a for a, p in routers.bfd_peers(ps).items() if p["status"] == "up"} == want
            ),
            BOUND,
            f"{router.name}'s BFD sessions up",
        )
    for node in TOPO.nodes:
        st = ops.node_state(ops.load(lab), node.name)
        peers = query(Path(st.run_dir) / "ctl.sock", "status", timeout=10)["peers"]
        assert [p["bfd"]["state"] for p in peers] == ["Up"], (node.name, peers)


def test_a_silent_tor_is_detected_by_bfd_on_both_sides_then_the_session_comes_back(lab):
    _wait(lambda: _established_with_routes(lab) and _our_block_at_tor(lab), BOUND, "a settled session")
    before = _routes_via_tor(lab)
    pathspace = _pathspace(lab)
    with _blackhole(lab):
        took = _timed(
            {
                "our kernel lost the ToR's routes": lambda: not _routes_via_tor(lab),
                "FRR's BFD down": lambda: routers.bfd_peers(pathspace)[NODE_IP]["status"] != "up",
                "FRR dropped our block": lambda: not _our_block_at_tor(lab),
            },
            BOUND,
        )
        print(
            f"\nBFD {DETECTION:g} s detection, blackhole at t=0: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in took.items())
        )
        assert _tor_peer(lab)["bfd"]["local_diagnostic"] == "Control Detection Time Expired"
        # Well inside the hold time: it was BFD, not the hold timer, on both sides.
        assert max(took.values()) < HOLD_TIME / 2, took
    back = _wait(lambda: _routes_via_tor(lab) == before, BOUND, "the ToR's routes back after the blackhole")
    assert _tor_peer(lab)["bfd"]["state"] == "Up"
    print(f"routes back {back:.2f} s after the blackhole was lifted")


def test_without_bfd_the_hold_timer_alone_takes_seconds(lab):
    """The comparison figure: BFD off on both ends of node1's session, the same blackhole."""
    spec = {k: v for k, v in PEER.spec.items() if k != "failureDetectionMode"}
    resource = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "BGPPeer",
        "metadata": {"name": PEER.name},
        "spec": spec,
    }
    cmd = [
        ops.venv_tool("calico-bgp"),
        "apply",
        "-f",
        "-",
        "--etcd-endpoints",
        ",".join(ops.load(lab).etcd_endpoints),
    ]
    subprocess.run(cmd, input=json.dumps(resource), text=True, check=True, capture_output=True, timeout=30)
    asn = TOR.asn
    routers.vtysh(_pathspace(lab), "configure terminal", f"router bgp {asn}", f"no neighbor {NODE_IP} bfd")
    _wait(
        lambda: "bfd" not in _tor_peer(lab) and _established_with_routes(lab),
        BOUND,
        "the session without BFD",
    )
    _wait(lambda: _our_block_at_tor(lab), BOUND, "our block at the ToR")
    before = _routes_via_tor(lab)
    with _blackhole(lab):
        took = _timed({"the hold timer expired": lambda: _tor_peer(lab)["state"] != "up"}, BOUND)
        # Graceful restart was agreed, so the session's end leaves the routes in place, stale, for the
        # restart time: without BFD a silent ToR keeps attracting traffic for hold time + restart time.
        assert _routes_via_tor(lab) == before
    print(
        f"\nhold time {HOLD_TIME:g} s, no BFD, blackhole at t=0: the hold timer expired after "
        f"{took['the hold timer expired']:.2f} s; the ToR's routes stay (graceful restart)"
    )
    # The hold timer runs from the last keepalive (every hold/3): expiry comes 2/3 to all of the hold time in.
    assert took["the hold timer expired"] > HOLD_TIME * 2 / 3 - 0.5, took
