"""Readiness and liveness in a real 2-node mesh, through both doors: `calico-bgp health --ready/--live` and
`GET /readyz` / `/livez` on the metrics port (bgp.readiness has the rules).

What must hold: node1, started while node2's daemon is down, is not ready (exit 1, and the line names the
peer it waits for; 503 over HTTP); once node2 runs, both are ready (exit 0, 200) within the session set-up
time. A SIGSTOPped ExaBGP on node1 turns `--live` to 1 (503) within ``LIVE_BOUND``, and the daemon's own
restart of ExaBGP (bgp.exabgp.liveness) turns it back to 0. The measured times are printed. A
``logSeverityScreen`` in ``node.node1`` changes node1's log level live, and only node1's. Each daemon logs at
start which ExaBGP adjustments applied (all of them, on the pinned ExaBGP), and ExaBGP, whose refusals the
adjustments make visible, refused none of the daemon's commands.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgp.exabgp.liveness import LivenessSettings
from bgp.readiness import PROBE_LIVE_DEADLINE
from labs import lab as labs_lab
from labs import netns, ops, process, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

NODE_IPS = {"node1": "10.0.0.11", "node2": "10.0.0.12"}
METRICS_PORT = 9094
SETTINGS = LivenessSettings()
# From SIGSTOP: the next probe goes out within interval + check_every, and is reported PROBE_LIVE_DEADLINE
# later; 2 s for the polling here.
LIVE_BOUND = SETTINGS.interval + SETTINGS.check_every + PROBE_LIVE_DEADLINE + 2.0
READY_TIMEOUT = 45.0  # the 30 s strict start plus session set-up


@pytest.fixture(scope="module")
def mesh():
    name = f"h{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up("mesh", 2, name=name, echo=lines.append)
        assert ok, "\n".join(lines)
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _health(lab: str, node: str, flag: str) -> tuple[int, str]:
    target = ops.load(lab).node(node)
    argv = ["calico-bgp", "health", flag, "--timeout", "3"]
    result = netns.run_in(target.netns, argv, env=ops.node_env(target), timeout=15)
    return result.returncode, result.stdout.strip()


_GET = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())
"""


def _http(lab: str, node: str, path: str) -> tuple[int, str]:
    target = ops.load(lab).node(node)
    url = f"http://{NODE_IPS[node]}:{METRICS_PORT}{path}"
    out = netns.run_in(target.netns, [sys.executable, "-c", _GET, url], timeout=15).stdout.strip()
    code, _, body = out.partition(" ")
    return int(code), body


def _wait(check, timeout: float, what: str, period: float = 0.3) -> float:
    started = time.monotonic()
    while True:
        last = check()
        if last[0]:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not within {timeout:.0f}s; last: {last[1]}")
        time.sleep(period)


def _exabgp_pid(lab: str, node: str) -> int | None:
    ns = state.netns_name(lab, node)
    found = [pid for pid in netns.pids(ns) if "bgp.exabgp.launch server" in process.cmdline(pid)]
    return found[0] if len(found) == 1 else None


def test_not_ready_until_the_mesh_is_up_then_ready(mesh):
    labs_lab.stop_node(mesh, "node2")
    labs_lab.restart_node(mesh, "node1")

    def waiting_for_node2():
        code, line = _health(mesh, "node1", "--ready")
        assert code == 1, f"node1 ready with its only peer down: {line}"
        return "BGP not established with 10.0.0.12" in line, line

    _wait(waiting_for_node2, READY_TIMEOUT, "node1 naming the peer it waits for")
    code, body = _http(mesh, "node1", "/readyz")
    assert code == 503 and body.startswith("not ready: ") and "10.0.0.12" in body, (code, body)
    code, line = _health(mesh, "node1", "--live")
    assert code == 0 and line.startswith("live: "), line  # a missing peer costs readiness, never liveness

    labs_lab.start_node(mesh, "node2")
    took = _wait(lambda: (_health(mesh, "node1", "--ready")[0] == 0, ""), READY_TIMEOUT, "node1 ready")
    _wait(lambda: (_health(mesh, "node2", "--ready")[0] == 0, ""), READY_TIMEOUT, "node2 ready")
    print(f"\nnode1 ready {took:.1f}s after node2's daemon was started")
    for node in NODE_IPS:
        code, line = _health(mesh, node, "--ready")
        assert (code, line) == (0, "ready: 1 of 1 BGP peers established"), (node, code, line)
        assert _http(mesh, node, "/readyz") == (200, line)
        code, line = _health(mesh, node, "--live")
        assert code == 0 and line.startswith("live: "), (node, code, line)
        assert _http(mesh, node, "/livez") == (200, line)
    code, body = _http(mesh, "node1", "/metrics")
    assert code == 200 and "calico_bgp_build_info{" in body


def test_a_stopped_exabgp_is_not_live_until_the_daemon_replaced_it(mesh):
    _wait(lambda: (_health(mesh, "node1", "--ready")[0] == 0, ""), READY_TIMEOUT, "node1 ready")
    assert _health(mesh, "node1", "--live")[0] == 0
    old = _exabgp_pid(mesh, "node1")
    assert old is not None
    os.kill(old, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        seen: list[str] = []

        def not_live():
            code, line = _health(mesh, "node1", "--live")
            seen.append(line)
            return code == 1, line

        took = _wait(not_live, LIVE_BOUND, "--live 1")
        # The HTTP probe at once: the window lasts until the daemon's own verdict, 5 s later at the least.
        http_code, body = _http(mesh, "node1", "/livez")
        print(f"\n--live 1 {took:.1f}s after SIGSTOP (bound {LIVE_BOUND:.1f}s): {seen[-1]!r}")
        assert seen[-1].startswith("not live: ExaBGP has not answered its API probe"), seen[-1]
        assert http_code == 503 and body.startswith("not live: ExaBGP has not answered"), (http_code, body)

        def live_with_a_new_exabgp():
            pid = _exabgp_pid(mesh, "node1")
            return _health(mesh, "node1", "--live")[0] == 0 and pid not in (None, old), ""

        back = _wait(live_with_a_new_exabgp, SETTINGS.bound + 10.0, "--live 0 with a new ExaBGP")
        print(f"--live 0 again {time.monotonic() - stopped:.1f}s after SIGSTOP ({back:.1f}s after --live 1)")
        assert not os.path.exists(f"/proc/{old}"), "the stopped ExaBGP was left behind"
    finally:
        if os.path.exists(f"/proc/{old}"):
            os.kill(old, signal.SIGCONT)
    _wait(lambda: (_health(mesh, "node1", "--ready")[0] == 0, ""), READY_TIMEOUT, "node1 ready again")


def _calico_bgp(lab: str, *args: str, stdin: str = "") -> None:
    endpoints = ",".join(labs_lab.show(lab)["etcd_endpoints"])
    argv = [ops.venv_tool("calico-bgp"), *args, "--etcd-endpoints", endpoints]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def _log_lines(lab: str, node: str) -> list[str]:
    return Path(ops.load(lab).node(node).log).read_text(errors="replace").splitlines()


def test_log_severity_screen_changes_the_node_level_live(mesh):
    config = {
        "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "metadata": {"name": "node.node1"},
        "spec": {"logSeverityScreen": "Debug"},
    }  # fmt: skip
    skip = {node: len(_log_lines(mesh, node)) for node in NODE_IPS}

    def logged(node: str, text: str):
        found = [line for line in _log_lines(mesh, node)[skip[node] :] if text in line]
        return bool(found), found

    try:
        _calico_bgp(mesh, "apply", "-f", "-", stdin=json.dumps(config))
        debug = "log level debug (from BGPConfiguration logSeverityScreen Debug)"
        _wait(lambda: logged("node1", debug), 15, "node1 at debug")
        _wait(lambda: logged("node1", " DEBUG "), 15, "a DEBUG line from node1")
    finally:
        _calico_bgp(mesh, "delete", "bgpconfiguration", "node.node1")
    # Back to the cluster's level (the lab's default BGPConfiguration says Info).
    info = "log level info (from BGPConfiguration logSeverityScreen Info)"
    _wait(lambda: logged("node1", info), 15, "node1 back at info")
    assert not logged("node2", "log level")[0] and not logged("node2", " DEBUG ")[0]


# What ExaBGP logs when it refuses an API command (bgp.exabgp.tuning makes these visible at ERROR).
REFUSALS = ("command could not parse", "no neighbor matching", "route not found", "invalid route")


def test_adjustments_are_logged_at_start_and_exabgp_refused_none_of_our_commands(mesh):
    from bgp.build_info import adjustments_summary
    from bgp.exabgp.tuning import PATCHES

    for node in NODE_IPS:
        # One line per daemon start (the lab may have started a node's daemon more than once).
        lines = [line for line in _log_lines(mesh, node) if "ExaBGP adjustments" in line]
        expected = adjustments_summary([name for name, *_ in PATCHES], {})
        assert lines, node
        assert all(line.endswith(f"INFO bgp.build_info: {expected}") for line in lines), (node, lines)
        exabgp_log = (Path(ops.load(mesh).node(node).run_dir) / "exabgp.log").read_text(errors="replace")
        refused = [line for line in exabgp_log.splitlines() if any(r in line for r in REFUSALS)]
        assert refused == [], (node, refused[:5])
