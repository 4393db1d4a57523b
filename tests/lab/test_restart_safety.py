"""Restart safety end to end (BIRD's ``persist`` plus graceful restart): a crash of any of our processes on
node1 under steady pod-to-pod traffic loses at most one ping, and a restarted daemon adopts the routes it
finds and sweeps the stale ones only once every peer's End-of-RIB has arrived.

One 3-node mesh lab (shared L2, no encapsulation) for the module. Traffic: node2-pod1 pings node1-pod1 every
50 ms, so both directions depend on kernel routes: node2's route to node1's block, which only stays while
node1's session is down because node2 treats that as a graceful restart, and node1's route back to node2's
block, which only stays because a dying node1 leaves its routes in the kernel. Every test leaves the lab as
it found it (all daemons running, every session Established).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from bgp.exabgp.launch import ADJUSTMENTS_MARK, parse_adjustments
from bgp.exabgp.tuning import TUNING_ENV
from labs import lab as labs_lab
from labs import netns, ops, process, report, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
BLOCKS = {"node1": "192.168.1.0/26", "node2": "192.168.2.0/26", "node3": "192.168.3.0/26"}
TARGET = "192.168.1.2"  # node1-pod1
INTERVAL = 0.05
PINGS = 160  # 8 s: one second before the kill, the outage, the recovery, and margin
RECOVERY = 20.0


@pytest.fixture(scope="module")
def mesh():
    name = f"r{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up("mesh", 3, name=name, echo=lines.append)
        assert ok, "\n".join(lines)
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


@pytest.fixture
def lab(mesh):
    """The lab with every daemon running and every session Established, before and after each test."""
    _wait_established(mesh)
    yield mesh
    _wait_established(mesh)


def _ns(lab: str, member: str) -> str:
    return state.netns_name(lab, member)


def _bird(lab: str, node: str) -> dict[str, dict]:
    return {r["dst"]: r for r in netns.routes(_ns(lab, node), "proto", "bird")}


def _wait_established(lab: str, nodes=tuple(NODES), timeout: float = RECOVERY) -> float:
    """Wait until every listed node has all its mesh peers Established; returns the seconds it took."""
    started = time.monotonic()
    st = ops.load(lab)
    pending = set(nodes)
    reasons: dict[str, str] = {}
    while pending:
        for node in sorted(pending):
            expected = [ip for other, ip in NODES.items() if other != node]
            try:
                out = ops.status(st, st.node(node), "-o", "json", timeout=5).stdout
            except subprocess.TimeoutExpired:
                out = ""
            ok, reasons[node] = report.sessions_ready(out, expected)
            if ok:
                pending.discard(node)
        if pending and time.monotonic() - started > timeout:
            raise AssertionError(f"sessions not Established within {timeout} s: {reasons}")
        if pending:
            time.sleep(0.2)
    return time.monotonic() - started


class RouteSampler(threading.Thread):
    """Samples the proto-bird routes of some nodes every 50 ms and records every sample that lacks one."""

    def __init__(self, lab: str, wanted: dict[str, set[str]]) -> None:
        super().__init__(daemon=True)
        self.lab, self.wanted = lab, wanted
        self.samples = 0
        self.gaps: list[tuple[str, set[str]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for node, dsts in self.wanted.items():
                missing = dsts - set(_bird(self.lab, node))
                if missing:
                    self.gaps.append((node, missing))
            self.samples += 1
            time.sleep(0.05)


def _ping_through(lab: str, action) -> tuple[int, int, RouteSampler, float]:
    """Steady ping from node2-pod1 to node1-pod1 while ``action`` runs; (sent, lost, sampler, recovery s)."""
    pod = ops.load(lab).pod("node2-pod1")
    argv = ["ping", "-q", "-n", "-i", str(INTERVAL), "-c", str(PINGS), "-W", "1", TARGET]
    sampler = RouteSampler(lab, {"node2": {BLOCKS["node1"]}, "node1": {BLOCKS["node2"], BLOCKS["node3"]}})
    ping = subprocess.Popen(netns.exec_argv(pod.netns, argv), stdout=subprocess.PIPE, text=True)
    try:
        sampler.start()
        time.sleep(1.0)
        action()
        recovery = _wait_established(lab)
        out, _ = ping.communicate(timeout=PINGS * INTERVAL + 15)
    finally:
        sampler.done.set()
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    sampler.join()
    found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert found, out
    sent, received = int(found[1]), int(found[2])
    return sent, sent - received, sampler, recovery


def _node_process(lab: str, node: str, marker: str) -> int:
    ns = _ns(lab, node)
    found = [pid for pid in netns.pids(ns) if marker in process.cmdline(pid)]
    assert len(found) == 1, {pid: process.cmdline(pid) for pid in netns.pids(ns)}
    return found[0]


def _wait_new_process(lab: str, node: str, marker: str, old: int, timeout: float = RECOVERY) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid for pid in netns.pids(_ns(lab, node)) if marker in process.cmdline(pid)]
        if pids and old not in pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"no new {marker!r} on {node} within {timeout} s")


def _assert_held(sent: int, lost: int, sampler: RouteSampler, what: str) -> None:
    print(f"{what}: {sent} pings, {lost} lost, {sampler.samples} route samples")
    assert sent == PINGS
    assert not sampler.gaps, f"{what}: kernel routes went missing: {sampler.gaps[:5]}"
    assert lost <= 1, f"{what}: {lost} of {sent} pings lost"


def test_crash_of_the_daemon_loses_at_most_one_ping(lab):
    old = ops.load(lab).node("node1").pid

    def crash_and_restart():
        labs_lab.crash_node(lab, "node1")
        labs_lab.start_node(lab, "node1")

    sent, lost, sampler, recovery = _ping_through(lab, crash_and_restart)
    assert ops.load(lab).node("node1").pid not in (0, old)
    _assert_held(sent, lost, sampler, f"daemon killed, sessions back after {recovery:.1f} s")


def test_crash_of_exabgp_loses_at_most_one_ping(lab):
    old = _node_process(lab, "node1", "bgp.exabgp.launch server")
    sent, lost, sampler, recovery = _ping_through(lab, lambda: os.kill(old, signal.SIGKILL))
    _wait_new_process(lab, "node1", "bgp.exabgp.launch server", old)  # the supervisor started another
    _assert_held(sent, lost, sampler, f"ExaBGP killed, sessions back after {recovery:.1f} s")


API_RELAY = "/api.sock"  # ExaBGP's API process, socat or the Python bridge: both name the daemon's socket
EXABGP = "bgp.exabgp.launch server"


def _relays(lab: str, node: str) -> list[int]:
    return [pid for pid in netns.pids(_ns(lab, node)) if API_RELAY in process.cmdline(pid)]


def test_crash_of_the_api_process_loses_at_most_one_ping(lab):
    """The API connection ends under ExaBGP. With a relay, it is killed; with ExaBGP's direct connection
    (``bgp.exabgp.tuning_channel``, where it applies) there is no process to kill, and the same event is
    ExaBGP closing its API connection and opening a new one, which SIGUSR2 asks of it."""
    relays = _relays(lab, "node1")
    if relays:
        old = _node_process(lab, "node1", API_RELAY)
        sent, lost, sampler, recovery = _ping_through(lab, lambda: os.kill(old, signal.SIGKILL))
        _wait_new_process(lab, "node1", API_RELAY, old)  # ExaBGP respawned its API process
        _assert_held(sent, lost, sampler, f"API process killed, sessions back after {recovery:.1f} s")
        return
    old = _node_process(lab, "node1", EXABGP)
    sent, lost, sampler, recovery = _ping_through(lab, lambda: os.kill(old, signal.SIGUSR2))
    _wait_new_process(lab, "node1", EXABGP, old)  # the daemon restarted ExaBGP: lines were lost both ways
    _assert_held(sent, lost, sampler, f"API connection ended, sessions back after {recovery:.1f} s")


def test_with_the_direct_connection_exabgp_has_no_api_process_and_routes_flow(lab):
    # That the adjustment fits the pinned ExaBGP is tests/unit/bgp/test_exabgp_tuning_channel.py's to pin.
    if os.environ.get(TUNING_ENV, ""):
        pytest.skip(f"{TUNING_ENV} is set: ExaBGP may run its relay")
    for node in NODES:
        assert "api_direct" in _adjustments(lab, node), node
        exabgp = _node_process(lab, node, EXABGP)
        assert psutil.Process(exabgp).children() == [], node
        assert _relays(lab, node) == [], node
    for node in NODES:  # every node has the other two's blocks from BGP, and traffic passes
        assert {BLOCKS[other] for other in NODES if other != node} <= set(_bird(lab, node)), node
    pod = ops.load(lab).pod("node2-pod1")
    ping = netns.run_in(
        pod.netns, ["ping", "-q", "-n", "-c", "3", "-i", "0.2", "-W", "1", TARGET], timeout=10
    )
    assert ping.returncode == 0, ping.stdout


def _adjustments(lab: str, node: str) -> list[str]:
    """The ExaBGP adjustments that applied in node's ExaBGP, from its launcher's last report in exabgp.log."""
    log = (Path(ops.load(lab).node(node).run_dir) / "exabgp.log").read_bytes()
    reports = [
        parse_adjustments(line + b"\n") for line in log.splitlines() if line.startswith(ADJUSTMENTS_MARK)
    ]
    assert reports, node
    return reports[-1] or []


NFT_BLOCK = """table inet cbgp_restart_test {
    chain input {
        type filter hook input priority 0;
        ip saddr 10.0.0.11 tcp dport 179 drop
        ip saddr 10.0.0.11 tcp sport 179 drop
    }
}
"""


def test_adopted_routes_are_swept_only_after_every_end_of_rib(lab):
    """A route left by the previous run that nobody announces any more stays until every peer has sent
    End-of-RIB; node3 is kept from reaching node1 for a while, so only node2's End-of-RIB arrives first."""
    node1, node3 = _ns(lab, "node1"), _ns(lab, "node3")
    stale = "10.123.0.0/24"
    before = _bird(lab, "node1")
    labs_lab.stop_node(lab, "node1")  # SIGTERM: routes stay (persist)
    assert _bird(lab, "node1") == before
    netns.ip(node1, "route", "add", stale, "via", NODES["node3"], "proto", "bird")
    subprocess.run(netns.exec_argv(node3, ["nft", "-f", "-"]), input=NFT_BLOCK, text=True, check=True)
    try:
        labs_lab.start_node(lab, "node1")
        st = ops.load(lab)

        def node2_up() -> bool:
            out = ops.status(st, st.node("node1"), "-o", "json", timeout=5).stdout
            try:
                peers = {p["address"]: p["info"] for p in json.loads(out)["peers"]}
            except (ValueError, KeyError):
                return False
            return peers.get(NODES["node2"], "").startswith("Established")

        deadline = time.monotonic() + RECOVERY
        while not node2_up():
            assert time.monotonic() < deadline, "node1 never reached node2"
            time.sleep(0.1)
        time.sleep(2.0)  # node2's End-of-RIB is in; node3's cannot be
        held = _bird(lab, "node1")
        assert stale in held, "swept before node3's End-of-RIB"
        assert BLOCKS["node3"] in held, "node3's block (adopted, not re-learned yet) was removed"
    finally:
        subprocess.run(
            netns.exec_argv(node3, ["nft", "delete", "table", "inet", "cbgp_restart_test"]), check=True
        )
    _wait_established(lab)
    deadline = time.monotonic() + RECOVERY
    while stale in _bird(lab, "node1"):
        assert time.monotonic() < deadline, "the stale route was never swept"
        time.sleep(0.1)
    assert set(_bird(lab, "node1")) == set(before)
