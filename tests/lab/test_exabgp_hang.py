"""A hung ExaBGP in a real 3-node mesh: node1's ExaBGP is SIGSTOPped (it keeps its sockets, answers nothing).

What must hold: node1's daemon judges it hung within the stated bound (``bgp.exabgp.liveness``), and from
then on ``calico-bgp status`` stops saying Established; ExaBGP is killed and a new one started; the sessions
come back; pod traffic between node2 and node1 loses at most one ping throughout (the peers keep node1's
routes through the restart, node1 keeps its kernel routes); and afterwards what node2 and node3 hold from
node1, read from their own daemons, is exactly what node1 means to announce. The measured detection and
restart times are printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from test_restart_safety import (  # the same lab and helpers, its own instance for this module
    BLOCKS,
    NODES,
    RECOVERY,
    TARGET,
    _node_process,
    _ns,
    _wait_established,
    _wait_new_process,
    lab,  # noqa: F401 (fixture)
    mesh,  # noqa: F401 (fixture)
)

from bgp.exabgp.liveness import LivenessSettings
from labs import netns, ops

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

BOUND = LivenessSettings().bound


def _peers(name: str, node: str) -> dict[str, str]:
    st = ops.load(name)
    try:
        out = ops.status(st, st.node(node), "-o", "json", timeout=5).stdout
        return {p["address"]: p["info"] for p in json.loads(out)["peers"]}
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        return {}


def _routes(name: str, node: str) -> list[dict]:
    target = ops.load(name).node(node)
    argv = ["calico-bgp", "routes", "-o", "json"]
    out = netns.run_in(target.netns, argv, env=ops.node_env(target), timeout=10)
    return json.loads(out.stdout)["routes"]


def test_a_stopped_exabgp_is_detected_restarted_and_the_peers_end_up_with_our_routes(lab):  # noqa: F811
    old = _node_process(lab, "node1", "bgp.exabgp.launch server")
    pod = ops.load(lab).pod("node2-pod1")
    pings = int((BOUND + RECOVERY + 10) / 0.05)
    argv = ["ping", "-q", "-n", "-i", "0.05", "-c", str(pings), "-W", "1", TARGET]
    ping = subprocess.Popen(netns.exec_argv(pod.netns, argv), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        os.kill(old, signal.SIGSTOP)
        stopped = time.monotonic()
        while any(info.startswith("Established") for info in _peers(lab, "node1").values()):
            assert time.monotonic() - stopped < BOUND + 3, f"still Established {BOUND + 3:.0f}s after SIGSTOP"
            time.sleep(0.2)
        detected = time.monotonic() - stopped
        infos = _peers(lab, "node1")
        assert all("ExaBGP" in info for info in infos.values()), infos
        _wait_new_process(lab, "node1", "bgp.exabgp.launch server", old)
        restarted = time.monotonic() - stopped
        assert not os.path.exists(f"/proc/{old}"), "the stopped ExaBGP was left behind"
        back = _wait_established(lab) + restarted
        out, _ = ping.communicate(timeout=pings * 0.05 + 30)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
        if os.path.exists(f"/proc/{old}"):
            os.kill(old, signal.SIGKILL)
    print(f"ExaBGP SIGSTOP: detected (status not Established) after {detected:.1f}s (bound {BOUND:.1f}s), "
          f"new ExaBGP after {restarted:.1f}s, sessions Established after {back:.1f}s")
    found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert found, out
    lost = int(found[1]) - int(found[2])
    print(f"pings: {found[1]} sent, {lost} lost")
    assert detected <= BOUND + 1
    assert lost <= 1
    # What node1 means to announce, as its peers hold it (read from their daemons, not node1's view).
    ours = {r["prefix"] for r in _routes(lab, "node1") if r["origin"] == "local"}
    assert BLOCKS["node1"] in ours
    deadline = time.monotonic() + RECOVERY
    while True:
        theirs = {
            peer: {
                r["prefix"]
                for r in _routes(lab, peer)
                if r["origin"] == "bgp"
                and r["best"]["learned_from"] == NODES["node1"]
                and not r["best"]["stale"]
            }
            for peer in ("node2", "node3")
        }
        if all(held == ours for held in theirs.values()):
            break
        assert time.monotonic() < deadline, f"peers hold {theirs}, node1 announces {ours}"
        time.sleep(0.5)
    assert _ns(lab, "node1")
