"""One hostile datastore value on a live dual-stack lab costs that value and nothing else.

The worst case of hostile input: a BGPConfiguration ``default`` whose ``spec.serviceClusterIPs`` holds an
IPv6 "CIDR" with a scope id that carries line breaks, ``fd00:96::%x\\nshutdown\\n/112``. Python's
``ipaddress`` accepts scope ids, so unless the address is refused where it is read it reaches the
speaker's API commands as three lines, and ExaBGP executes the middle one on every node with an IPv6 peer.
The value is written straight into the lab's etcd (as anyone with write access to that one key could), not
through ``calico-bgp apply``, which would refuse it.

A 3-node dual-stack mesh (``lab up mesh --ipv6``: IPv4 and IPv6 sessions, IPv4 and IPv6 pods) holds
still for 60 s after the write, sampled every second: every node's daemon and ExaBGP keep their PIDs,
every session stays Established with the same ``since``, pod-to-pod pings of both families cross the
nodes without loss, and every node's status names the refused entry. A valid BGPPeer written afterwards
reaches every node's rendered exabgp.conf within 10 s: the bad resource does not freeze configuration.

Complicating factors:
- Sessions are read from each daemon's control socket (as ``labs.ops.wait_sessions`` does): a CLI start
  per node and second would load the 2-core machine enough to disturb what is measured.
- Once something breaks, sampling goes on a few seconds to show how far it spreads, then stops: a broken
  build fails in about 10 s after the write instead of 60.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bgp.status import DaemonNotRunning, query
from confgen.datastore import keys
from labs import etcd, netns, ops, process, topology
from labs import lab as labs_lab
from labs.state import LabState, NodeState, PodState

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

HOSTILE_CIDR = "fd00:96::%x\nshutdown\n/112"
HOLD = 60.0  # seconds the lab must hold still after the hostile write
SAMPLE_EVERY = 1.0
AFTER_FIRST_FAULT = 5.0  # seconds sampled on after the first fault, to see which nodes it reaches
PING_INTERVAL = 0.2
MAX_LOST = 2  # pings a stream may lose (the one in flight when it is stopped, and one more)
CONFIG_DEADLINE = 10.0  # a valid BGPPeer written after the hostile value reaches every exabgp.conf
EXABGP = "bgp.exabgp.launch server"  # ExaBGP's command line, under the daemon's supervisor
# A global peering to an address nobody holds: harmless (its session stays Active), rendered on every node.
NEW_PEER = topology.LabPeer("after-hostile", {"peerIP": "10.0.0.99", "asNumber": 64513})


@dataclass(frozen=True)
class NodeView:
    """What one sample sees of a node."""

    daemon_alive: bool
    exabgp: tuple[int, ...]  # PIDs of its ExaBGP (one while healthy)
    sessions: dict[str, tuple[str, float]]  # peer address -> (info, since_ts)
    warnings: tuple[str, ...]
    error: str = ""  # why the status could not be read; "" if it was


def _view(node: NodeState) -> NodeView:
    exabgp = tuple(sorted(pid for pid in netns.pids(node.netns) if EXABGP in process.cmdline(pid)))
    alive = process.alive(node.pid)
    try:
        report = query(Path(node.run_dir) / "ctl.sock", "status", timeout=5.0)
    except (DaemonNotRunning, OSError, ValueError) as exc:
        return NodeView(alive, exabgp, {}, (), f"{type(exc).__name__}: {exc}")
    sessions = {p["address"]: (p["info"], p["since_ts"]) for p in report.get("peers", [])}
    return NodeView(alive, exabgp, sessions, tuple(report.get("warnings", ())))


def _faults(node: str, before: NodeView, now: NodeView) -> list[str]:
    """Everything that changed on node since the baseline and should not have."""
    found = []
    if not now.daemon_alive:
        found.append(f"{node}: the daemon exited")
    if now.exabgp != before.exabgp:
        found.append(f"{node}: ExaBGP pid {before.exabgp[0]} is now {list(now.exabgp) or 'gone'}")
    if now.error:
        found.append(f"{node}: status unreadable ({now.error})")
        return found
    for address, (_, since) in sorted(before.sessions.items()):
        if address not in now.sessions:
            found.append(f"{node}: session to {address} vanished from status")
            continue
        info, since_now = now.sessions[address]
        if not info.startswith("Established"):
            found.append(f"{node}: session to {address} dropped ({info})")
        elif since_now != since:
            found.append(
                f"{node}: session to {address} was reset (Established since {_clock(since)}, now since "
                f"{_clock(since_now)})"
            )
    return found


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def _names_the_refused_entry(warning: str) -> bool:
    return "BGPConfiguration default" in warning and "serviceClusterIPs" in warning


class PingStream:
    """A steady ping from one pod to one address, counted when stopped."""

    def __init__(self, src: PodState, dst: PodState, address: str) -> None:
        self.label = f"{src.name} -> {dst.name} {address}"
        argv = ["ping", "-n", "-q", "-i", str(PING_INTERVAL), "-W", "1", address]
        self.proc = subprocess.Popen(
            netns.exec_argv(src.netns, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def stop(self) -> tuple[int, int, str]:
        """(sent, lost, output); ping prints its totals on SIGINT (`ip netns exec` execs it: same PID)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=10)
        finally:
            self.kill()
        found = re.search(r"(\d+) packets transmitted, (\d+) received", out or "")
        if not found:
            return 0, 0, out or ""
        return int(found[1]), int(found[1]) - int(found[2]), out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _ping_streams(st: LabState) -> list[PingStream]:
    """Each node's first pod pings the next node's first pod, over IPv4 and over IPv6."""
    first = {}
    for pod in st.pods:
        first.setdefault(pod.node, pod)
    nodes = [n.name for n in st.nodes]
    pairs = [(first[node], first[nodes[(i + 1) % len(nodes)]]) for i, node in enumerate(nodes)]
    assert all(dst.ipv6 for _, dst in pairs), f"the lab's pods are not dual-stack: {st.pods}"
    return [PingStream(src, dst, address) for src, dst in pairs for address in (dst.ipv4, dst.ipv6)]


def _hostile_configuration(endpoints: list[str]) -> tuple[str, str]:
    """The lab's BGPConfiguration default as it is in etcd, with only spec.serviceClusterIPs replaced."""
    key = keys.resource_key("BGPConfiguration", "default")
    stored = etcd.get_prefix(endpoints, key)
    assert key in stored, f"the lab wrote no {key}: {sorted(stored)}"
    resource = json.loads(stored[key])
    resource["spec"]["serviceClusterIPs"] = [{"cidr": HOSTILE_CIDR}]
    return key, json.dumps(resource)


def _hold(st: LabState, baseline: dict[str, NodeView]) -> tuple[dict[str, float], dict[str, NodeView], float]:
    """Sample every node for HOLD seconds (less once something broke); (fault -> first seen s, last views,
    seconds sampled)."""
    faults: dict[str, float] = {}
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        views = {n.name: _view(n) for n in st.nodes}
        for name, view in views.items():
            for fault in _faults(name, baseline[name], view):
                faults.setdefault(fault, elapsed)
        first = min(faults.values(), default=None)
        if elapsed >= HOLD or (first is not None and elapsed >= first + AFTER_FIRST_FAULT):
            return faults, views, elapsed
        time.sleep(max(0.0, started + elapsed + SAMPLE_EVERY - time.monotonic()))


def _status_text_problems(st: LabState) -> list[str]:
    """What `calico-bgp status` (the table a user reads) fails to say on each node."""
    problems = []
    for node in st.nodes:
        try:
            result = ops.status(st, node, timeout=15)
        except subprocess.TimeoutExpired:
            problems.append(f"{node.name}: `calico-bgp status` timed out")
            continue
        lines = result.stdout.splitlines()
        if not any(line.startswith("WARNING:") and _names_the_refused_entry(line) for line in lines):
            problems.append(
                f"{node.name}: `calico-bgp status` has no WARNING naming BGPConfiguration default and "
                f"serviceClusterIPs:\n{result.stdout}{result.stderr}"
            )
    return problems


def _wait_rendered(st: LabState, address: str) -> tuple[dict[str, float], list[str]]:
    """Poll every node's live exabgp.conf for a neighbour block; (seconds it took per node, problems)."""
    block = f"neighbor {address} {{"
    seen: dict[str, float] = {}
    started = time.monotonic()
    while len(seen) < len(st.nodes) and time.monotonic() - started < CONFIG_DEADLINE:
        for node in st.nodes:
            conf = Path(node.run_dir) / "exabgp.conf"
            if node.name not in seen and conf.exists() and block in conf.read_text():
                seen[node.name] = time.monotonic() - started
        time.sleep(0.2)
    missing = [n for n in st.nodes if n.name not in seen]
    return seen, [
        f"{n.name}: no `{block}` in {Path(n.run_dir) / 'exabgp.conf'} {CONFIG_DEADLINE:.0f} s after the write"
        for n in missing
    ]


def test_a_scope_id_in_service_cluster_ips_costs_that_entry_and_nothing_else(lab_name):
    lines: list[str] = []
    ok = labs_lab.up("mesh", 3, name=lab_name, ipv6=True, echo=lines.append)
    assert ok, "\n".join(lines)
    st = ops.load(lab_name)
    baseline = {n.name: _view(n) for n in st.nodes}
    for name, view in baseline.items():
        families = {":" in address for address in view.sessions}
        assert view.daemon_alive and len(view.exabgp) == 1, f"{name}: daemon or ExaBGP not running: {view}"
        assert families == {False, True}, f"{name}: needs IPv4 and IPv6 sessions: {view.sessions}"
        assert all(info.startswith("Established") for info, _ in view.sessions.values()), view.sessions
        assert not any(_names_the_refused_entry(w) for w in view.warnings), view.warnings

    key, value = _hostile_configuration(st.etcd_endpoints)
    streams = _ping_streams(st)
    try:
        time.sleep(1.0)  # the pings run before the write, so a loss at the write shows
        etcd.put_all(st.etcd_endpoints, [(key, value)])
        faults, last, held = _hold(st, baseline)
        pings = {s.label: s.stop() for s in streams}
    finally:
        for stream in streams:
            stream.kill()

    problems = [f"+{seen:4.1f} s  {fault}" for fault, seen in sorted(faults.items(), key=lambda f: f[1])]
    expected_pings = int(held / PING_INTERVAL * 0.8)
    for label, (sent, lost, out) in pings.items():
        print(f"ping {label}: {sent} sent, {lost} lost")
        if sent < expected_pings:
            problems.append(
                f"ping {label}: {sent} sent in {held:.0f} s (expected >= {expected_pings}):\n{out}"
            )
        elif lost > MAX_LOST:
            problems.append(f"ping {label}: {lost} of {sent} lost")
    for name, view in last.items():
        named = [w for w in view.warnings if _names_the_refused_entry(w)]
        print(f"{name} warns: {named}")
        if not named:
            problems.append(
                f"{name}: no status warning names BGPConfiguration default / serviceClusterIPs "
                f"after {held:.0f} s (warnings: {list(view.warnings)})"
            )
        problems += [f"{name}: the warning carries a raw line break: {w!r}" for w in named if "\n" in w]
    if not faults:
        problems += _status_text_problems(st)

    # The bad resource must not freeze configuration: a valid peering written now is rendered everywhere.
    etcd.put_all(st.etcd_endpoints, [topology.bgppeer_resource(NEW_PEER)])
    took, missing = _wait_rendered(st, str(NEW_PEER.spec["peerIP"]))
    print(
        f"held {held:.0f} s; new BGPPeer rendered after "
        + ", ".join(f"{n} {s:.1f} s" for n, s in took.items())
    )
    problems += missing

    if problems:
        logs = {n.name: process.tail(n.log, 15) for n in st.nodes if any(f"{n.name}:" in p for p in problems)}
        detail = "\n".join(f"--- end of {name}'s log ---\n{tail}" for name, tail in logs.items())
        raise AssertionError(
            f"after writing serviceClusterIPs [{HOSTILE_CIDR!r}] ({held:.0f} s sampled):\n"
            + "\n".join(problems[:40])
            + (f"\n... and {len(problems) - 40} more" if len(problems) > 40 else "")
            + ("\n" + detail if detail else "")
        )
