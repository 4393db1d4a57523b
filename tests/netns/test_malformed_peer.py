"""Malformed BGP from a peer, against a real node: ``calico-bgp node run`` with its ExaBGP 5.0.15, fed by
etcd, in a network namespace (a one-node ``external`` lab).

Two scripted peers (``malformed_peer.Session``: raw TCP, hand-packed messages) sit in the lab's router
namespace, each an eBGP BGPPeer of node1:

- the good peer (10.0.0.2) announces 203.0.113.0/24 once for the whole module; its session and that route
  must survive everything, and a route it announces after each case must still be installed (and removed
  again when withdrawn): the node still programs other peers' routes;
- the bad peer (10.0.0.3) connects afresh for every case, has 198.51.100.0/24 installed from a well-formed
  UPDATE, then sends one malformed message aimed at it.

Each case names what ExaBGP 5.0.15's UPDATE parser makes of its bytes (checked without a lab by
``test_exabgp_parses_each_update_as_stated``, against the installed package) and what node1 must do:

- reset: ExaBGP raises ``Notify`` (its UPDATE parser, or its connection reader for a broken header), sends
  that NOTIFICATION and drops the session. The peer offered no graceful restart, so everything it announced
  leaves the kernel at once.
- withdraw: RFC 7606 treat-as-withdraw; the session stays up and the UPDATE's prefixes are withdrawn. A
  well-formed UPDATE (192.0.2.0/24) follows on the same session: once it is installed the malformed one has
  been processed, so the target's absence is not an accident of timing. Where ExaBGP passes such a route on
  as valid (no mandatory-attribute check, any ORIGIN value, unknown well-known attributes kept), the daemon
  is the last place that can keep it out of the kernel, so the case still demands withdraw.
- first-kept: RFC 7606 3(g), a repeated attribute after its first occurrence is discarded.
- closed: the peer closes in the middle of a message; ExaBGP only sees the connection end.

After every case: the daemon and its ExaBGP run under the same PIDs, the good peer's session never ended and
its route never left the kernel (``ip monitor route`` for the whole module), and from the bad peer the
kernel holds exactly what the case allows. After a reset the bad peer reconnects and a well-formed route is
installed again. Cases that show a defect are xfail(strict=True), limited to the exception that defect
raises, so any other failure in them still fails.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from exabgp.bgp.message.direction import Direction
from exabgp.bgp.message.notification import Notify
from exabgp.bgp.message.open.capability.negotiated import Negotiated
from exabgp.bgp.message.update import Update
from exabgp.bgp.message.update.attribute import Attribute
from exabgp.logger.option import option
from exabgp.protocol.family import AFI, SAFI
from malformed_peer import (
    HEADER_LEN,
    KEEPALIVE,
    MARKER,
    NEXT_HOP,
    TRANSITIVE,
    UPDATE,
    Session,
    as_path,
    attribute,
    message,
    mp_unreach_ipv4,
    next_hop,
    nlri,
    origin,
    update,
)

from bgp.status import DaemonNotRunning, query
from labs import etcd, netns, ops, process, state, topology
from labs import lab as labs_lab
from labs.topologies import EXTERNAL_ROUTER, build_external

TOPO = build_external(1)
NODE = TOPO.nodes[0]
NODE_ADDRESS = NODE.address  # 10.0.0.11
GOOD, GOOD_AS = str(ipaddress.ip_interface(TOPO.routers[0].ports[0].ipv4).ip), 65001  # 10.0.0.2
BAD, BAD_AS = "10.0.0.3", 65002  # a second address on the router namespace's port
BAD_PACKED = ipaddress.IPv4Address(BAD).packed
GOOD_ROUTE = "203.0.113.0/24"
PROBE = "198.18.0.0/24"  # announced and withdrawn by the good peer after every case
TARGET = "198.51.100.0/24"  # announced well-formed by the bad peer, then hit by the malformed message
SENTINEL = "192.0.2.0/24"  # announced after the malformed message on the same session
FIRST_HOP, SECOND_HOP = "10.0.0.4", "10.0.0.99"  # the two NEXT_HOPs of the duplicate-attribute case
EXABGP_MARKER = "bgp.exabgp.launch server"
TIMEOUT = 10.0


class ReactionDiffers(AssertionError):
    """node1 handled the malformed message otherwise than the case demands."""


class NodeWedged(AssertionError):
    """node1 stopped programming the good peer's new routes."""


# ---------------------------------------------------------------------------------------------- the cases


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    wire: Callable[[], bytes]  # what the bad peer sends
    exabgp: str  # ExaBGP's parser on it: "treat-as-withdraw" | "notify C/S" | "accepted" | "reader"
    reaction: str  # what node1 must do: "reset" | "withdraw" | "first-kept" | "closed"
    why: str  # the rule
    notification: tuple[int, int] | None = None  # for "reset": what ExaBGP sends


def _attributes(
    *, origin_attr: bytes | None = None, path: bytes | None = None, hop: bytes | None = None
) -> bytes:
    return (
        (origin() if origin_attr is None else origin_attr)
        + (as_path(BAD_AS) if path is None else path)
        + (next_hop(BAD) if hop is None else hop)
    )


def _target_update(attributes: bytes) -> bytes:
    return update(attributes=attributes, nlri_field=nlri(TARGET))


def _truncated() -> bytes:
    whole = _target_update(_attributes())
    return whole[: len(whole) - 10]  # the header still claims the whole length


CASES = [
    Case(
        "attribute-length-overruns-the-attributes",
        lambda: _target_update(_attributes(hop=next_hop(BAD, length=200))),
        "treat-as-withdraw",
        "withdraw",
        "RFC 7606 4: an attribute length past the end of the path attributes",
    ),
    Case(
        "next-hop-length-5",
        lambda: _target_update(_attributes(hop=attribute(NEXT_HOP, BAD_PACKED + b"\0"))),
        "treat-as-withdraw",
        "withdraw",
        "RFC 7606 7.3: NEXT_HOP length other than 4",
    ),
    Case(
        "nlri-prefix-length-33",
        lambda: update(attributes=_attributes(), nlri_field=bytes([33, 198, 51, 100, 0, 1])),
        "notify 3/10",
        "reset",
        "RFC 7606 5.3: an IPv4 prefix length over 32",
        (3, 10),
    ),
    Case(
        "nlri-overruns-the-message",
        lambda: update(attributes=_attributes(), nlri_field=bytes([24, 198])),
        "notify 3/10",
        "reset",
        "RFC 7606 5.3: a prefix longer than what is left of the message",
        (3, 10),
    ),
    Case(
        "unknown-well-known-attribute",
        lambda: _target_update(_attributes() + attribute(0xF0, b"\x01\x02", flags=TRANSITIVE)),
        "accepted",
        "withdraw",
        "RFC 4271 6.3: an unrecognised well-known attribute is an error (3/2)",
    ),
    Case(
        "missing-next-hop",
        lambda: _target_update(origin() + as_path(BAD_AS)),
        "accepted",
        "withdraw",
        "RFC 7606 3(d): a missing well-known mandatory attribute",
    ),
    Case(
        "duplicate-next-hop",
        lambda: _target_update(_attributes(hop=next_hop(FIRST_HOP) + next_hop(SECOND_HOP))),
        "accepted",
        "first-kept",
        "RFC 7606 3(g): only the first of a repeated attribute counts",
    ),
    Case(
        "duplicate-mp-unreach",
        lambda: update(attributes=mp_unreach_ipv4(SENTINEL) + mp_unreach_ipv4(SENTINEL)),
        "notify 3/1",
        "reset",
        "RFC 7606 3(g): a repeated MP_UNREACH_NLRI resets the session",
        (3, 1),
    ),
    Case(
        "bad-origin-value",
        lambda: _target_update(_attributes(origin_attr=origin(7))),
        "accepted",
        "withdraw",
        "RFC 7606 7.1: an undefined ORIGIN value",
    ),
    Case(
        "as-path-segment-length-overruns",
        lambda: _target_update(_attributes(path=as_path(BAD_AS, count=5))),
        "treat-as-withdraw",
        "withdraw",
        "RFC 7606 7.2: an AS_PATH segment longer than the attribute",
    ),
    Case(
        "truncated-message-then-close",
        _truncated,
        "reader",
        "closed",
        "the connection ends before the length the header announced",
    ),
    Case(
        "bad-marker",
        lambda: message(KEEPALIVE, marker=b"\x00" * 16),
        "reader",
        "reset",
        "RFC 4271 6.1: a marker that is not all ones, Connection Not Synchronized (1/1)",
        (1, 1),
    ),
]

# Defects these cases show, as found against this tree: (the exception they raise, what happens instead).
FINDINGS: dict[str, tuple[type[AssertionError], str]] = {}


def _params() -> list:
    params = []
    for case in CASES:
        finding = FINDINGS.get(case.name)
        marks = [pytest.mark.xfail(strict=True, raises=finding[0], reason=finding[1])] if finding else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


# ---------------------------------------------------------------------------------------------- ExaBGP alone


def _exabgp_verdict(wire: bytes) -> str:
    """What ExaBGP's UPDATE parser makes of one message; "reader" for what its connection reader refuses
    before any parsing (a bad marker, a message shorter than its header says)."""
    if wire[:16] != MARKER or int.from_bytes(wire[16:18], "big") != len(wire):
        return "reader"
    assert wire[18] == UPDATE
    negotiated = Negotiated({"capability": {"aigp": False}})  # what node1's sessions negotiate
    negotiated.asn4, negotiated.families = True, [(AFI.ipv4, SAFI.unicast)]
    try:
        parsed = Update.unpack_message(wire[HEADER_LEN:], Direction.IN, negotiated)
    except Notify as exc:
        return f"notify {exc.code}/{exc.subcode}"
    withdrawn = Attribute.CODE.INTERNAL_TREAT_AS_WITHDRAW in parsed.attributes
    return "treat-as-withdraw" if withdrawn else "accepted"


@pytest.mark.exabgp
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_exabgp_parses_each_update_as_stated(case, monkeypatch):
    def quiet(*_args, **_kwargs) -> None:
        pass

    # ExaBGP's logger needs its environment loaded; here its calls only need to go somewhere.
    monkeypatch.setattr(option, "logger", SimpleNamespace(**dict.fromkeys(
        ("debug", "info", "warning", "error", "critical", "fatal"), quiet
    )))
    assert _exabgp_verdict(case.wire()) == case.exabgp


# ---------------------------------------------------------------------------------------------- the node


@dataclasses.dataclass
class Node:
    lab: str
    netns: str  # node1's namespace
    peer_netns: str  # where both scripted peers live
    run_dir: Path
    daemon_pid: int
    exabgp_pid: int
    good: Session
    monitor: Path  # `ip monitor route` of node1, for the whole module


def _bgp_routes(ns: str) -> dict[str, str]:
    """node1's routes of protocol bird: prefix -> gateway(s), or the route type (a blackhole)."""
    out = {}
    for route in netns.routes(ns, "proto", "bird"):
        gateways = [h.get("gateway") for h in route.get("nexthops", [route])]
        out[str(route["dst"])] = ",".join(str(g) for g in gateways if g) or str(route.get("type", "?"))
    return out


def _from_bad_peer(ns: str) -> dict[str, str]:
    return {p: via for p, via in _bgp_routes(ns).items() if p not in (GOOD_ROUTE, PROBE, NODE.block)}


def _settle(fn: Callable[[], object], done: Callable[[object], bool], timeout: float = TIMEOUT) -> object:
    """Poll fn() until done(value) or timeout; the last value either way (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _exabgp_pid(ns: str) -> int:
    found = [pid for pid in netns.pids(ns) if EXABGP_MARKER in process.cmdline(pid)]
    assert len(found) == 1, {pid: process.cmdline(pid) for pid in netns.pids(ns)}
    return found[0]


def _peer_info(node: Node, address: str) -> str:
    try:
        peers = query(node.run_dir / "ctl.sock", "status")["peers"]
    except (DaemonNotRunning, OSError, ValueError, KeyError):
        return ""
    return next((str(p.get("info", "")) for p in peers if p.get("address") == address), "")


def _set_peers(lab: str) -> None:
    lab_state = ops.load(lab)
    items = [
        topology.bgppeer_resource(topology.LabPeer(name, {"peerIP": address, "asNumber": asn}))
        for name, address, asn in (("good-peer", GOOD, GOOD_AS), ("bad-peer", BAD, BAD_AS))
    ]
    lab_state.etcd_keys += [k for k, _ in items if k not in lab_state.etcd_keys]
    lab_state.save()
    etcd.put_all(lab_state.etcd_endpoints, items)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    name = f"m{secrets.token_hex(4)}"
    monitor = None
    good = None
    try:
        labs_lab.up(TOPO, name=name, timeout=5)  # no peers yet: nothing to wait for
        ns, peer_ns = state.netns_name(name, NODE.name), state.netns_name(name, EXTERNAL_ROUTER)
        netns.add_address(peer_ns, "eth0", f"{BAD}/24")
        # The node starts afresh with both BGPPeers (this tests peering, not how a BGPPeer change applies).
        labs_lab.stop_node(name, NODE.name)
        _set_peers(name)
        labs_lab.start_node(name, NODE.name)
        log = tmp_path_factory.mktemp("malformed") / "ip-monitor-route.log"
        with open(log, "w") as out:
            monitor = subprocess.Popen(
                ["ip", "-n", ns, "monitor", "route"], stdout=out, stderr=subprocess.STDOUT
            )
        good = Session.connect(peer_ns, GOOD, NODE_ADDRESS, GOOD_AS, timeout=60)
        good.announce([GOOD_ROUTE])
        good.end_of_rib()
        routes = _settle(lambda: _bgp_routes(ns), lambda r: r.get(GOOD_ROUTE) == GOOD)
        assert routes.get(GOOD_ROUTE) == GOOD, f"the good peer's route never reached the kernel: {routes}"
        # A starting node holds every kernel delete back until each peer has sent End-of-RIB once (restart
        # safety): a first bad-peer session does that, and its route must then leave with it.
        warmup = Session.connect(peer_ns, BAD, NODE_ADDRESS, BAD_AS)
        try:
            warmup.announce([TARGET])
            warmup.end_of_rib()
            routes = _settle(lambda: _from_bad_peer(ns), lambda r: r == {TARGET: BAD})
            assert routes == {TARGET: BAD}, routes
        finally:
            warmup.close()
        routes = _settle(lambda: _from_bad_peer(ns), lambda r: not r)
        assert not routes, f"a closed peer's route stayed in the kernel after both End-of-RIBs: {routes}"
        lab_state = ops.load(name)
        yield Node(
            lab=name,
            netns=ns,
            peer_netns=peer_ns,
            run_dir=Path(lab_state.node(NODE.name).run_dir),
            daemon_pid=lab_state.node(NODE.name).pid,
            exabgp_pid=_exabgp_pid(ns),
            good=good,
            monitor=log,
        )
    finally:
        if good is not None:
            good.close()
        if monitor is not None:
            monitor.kill()
            monitor.wait(timeout=10)
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


@pytest.fixture
def bad_peer(node):
    """Opens the bad peer's sessions for one case; closes them all after it and waits until the kernel
    holds nothing of the bad peer's, so every case starts from the same state."""
    sessions: list[Session] = []

    def connect() -> Session:
        session = Session.connect(node.peer_netns, BAD, NODE_ADDRESS, BAD_AS)
        sessions.append(session)
        return session

    yield connect
    for session in sessions:
        session.close()
    left = _settle(lambda: _from_bad_peer(node.netns), lambda r: not r)
    assert not left, f"the bad peer's routes outlived its session: {left}"


# ---------------------------------------------------------------------------------------------- the test


def _assert_node_unharmed(node: Node, what: str) -> None:
    lab_state = ops.load(node.lab)
    log = lab_state.node(NODE.name).log
    assert lab_state.node(NODE.name).pid == node.daemon_pid and process.alive(node.daemon_pid), (
        f"{what}: the calico-bgp daemon died or was replaced; end of its log:\n{process.tail(log, 40)}"
    )
    assert process.alive(node.exabgp_pid) and _exabgp_pid(node.netns) == node.exabgp_pid, (
        f"{what}: ExaBGP restarted (was pid {node.exabgp_pid}); the daemon's log:\n{process.tail(log, 40)}"
    )
    assert not node.good.ended.is_set(), f"{what}: the good peer's session ended: {node.good.end_reason}"
    assert _peer_info(node, GOOD).startswith("Established"), _peer_info(node, GOOD)
    assert _bgp_routes(node.netns).get(GOOD_ROUTE) == GOOD, f"{what}: the good peer's route is gone"
    lines = node.monitor.read_text().splitlines()
    deleted = [line for line in lines if line.startswith(f"Deleted {GOOD_ROUTE}")]
    assert not deleted, f"{what}: the good peer's route left the kernel at some point: {deleted}"
    # The node still programs the good peer's changes, both ways.
    node.good.announce([PROBE])
    routes = _settle(lambda: _bgp_routes(node.netns), lambda r: r.get(PROBE) == GOOD)
    if routes.get(PROBE) != GOOD:
        raise NodeWedged(f"{what}: the good peer's new {PROBE} was not installed: {routes}")
    node.good.withdraw([PROBE])
    routes = _settle(lambda: _bgp_routes(node.netns), lambda r: PROBE not in r)
    if PROBE in routes:
        raise NodeWedged(f"{what}: the good peer's withdrawn {PROBE} stayed installed: {routes}")


@pytest.mark.netns
@pytest.mark.etcd
@pytest.mark.exabgp
@pytest.mark.lab
@pytest.mark.parametrize("case", _params())
def test_malformed_message_costs_only_that_peer(node, bad_peer, case):
    session = bad_peer()
    session.announce([TARGET])
    session.end_of_rib()
    before = _settle(lambda: _from_bad_peer(node.netns), lambda r: r == {TARGET: BAD})
    assert before == {TARGET: BAD}, f"the bad peer's well-formed route was not installed first: {before}"

    session.send(case.wire())
    observed: dict[str, object] = {}
    if case.reaction == "reset":
        session.wait_ended(TIMEOUT)
        observed["notification"] = session.notification
        observed["routes"] = _settle(lambda: _from_bad_peer(node.netns), lambda r: not r)
    elif case.reaction == "closed":
        session.close(notify=False)
        observed["routes"] = _settle(lambda: _from_bad_peer(node.netns), lambda r: not r)
    else:
        # A well-formed UPDATE behind the malformed one: once it is installed, the malformed one was seen.
        if not session.ended.is_set():
            session.announce([SENTINEL])
        wanted = {SENTINEL: BAD} if case.reaction == "withdraw" else {TARGET: FIRST_HOP, SENTINEL: BAD}
        observed["routes"] = _settle(lambda: _from_bad_peer(node.netns), lambda r: r == wanted)
        observed["session"] = session.end_reason or "up"

    _assert_node_unharmed(node, case.name)

    if case.reaction in ("reset", "closed"):
        # Not wedged: the same peer comes back and a well-formed announcement is installed again.
        again = bad_peer()
        again.announce([TARGET])
        again.end_of_rib()
        routes = _settle(lambda: _from_bad_peer(node.netns), lambda r: r == {TARGET: BAD})
        assert routes == {TARGET: BAD}, f"{case.name}: after the reset the bad peer's new route: {routes}"

    expected: dict[str, object] = {
        "reset": {"notification": case.notification, "routes": {}},
        "closed": {"routes": {}},
        "withdraw": {"routes": {SENTINEL: BAD}, "session": "up"},
        "first-kept": {"routes": {TARGET: FIRST_HOP, SENTINEL: BAD}, "session": "up"},
    }[case.reaction]
    if observed != expected:
        raise ReactionDiffers(f"{case.name} ({case.why}): node1 did {observed}, expected {expected}")
