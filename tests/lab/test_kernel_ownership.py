"""Strict route ownership at daemon level: a node's kernel full of routes that are not ours, and a daemon
that starts up, runs, resyncs and shuts down beside them without changing a byte of them.

Ours are proto 12 routes in the main table not on a Felix device. Everything else — Felix's proto-boot /32s
and /128s on cali*, proto 80 routes (one of them on exactly the destination of a block we learn), routes in
tables 100 and 250 (some of them proto 12), routes on vxlan.calico, wireguard.cali and bpfin.cali (some
proto 12), a connected subnet, a DHCP-style default route — is compared before and after each step as
``ip -j route show table all`` prints it, for both families.

One dual-stack 3-node mesh lab for the module, brought up as a user would (``calico-bgp lab up mesh
--ipv6``), so our own routes of both families sit among the foreign ones; the first test checks the dual
stack itself. node1's daemon is then stopped (SIGTERM) before its kernel is filled, so the start-up
reconciliation meets the foreign routes, and it runs with a 1 s route refresh interval so the periodic
resync happens within the test.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

from labs import lab as labs_lab
from labs import netns, ops, report, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"}
BLOCKS = {"node1": "192.168.1.0/26", "node2": "192.168.2.0/26", "node3": "192.168.3.0/26"}
CALI, VXLAN, WIREGUARD, BPF = "cali0f0f0f0f0f0", "vxlan.calico", "wireguard.cali", "bpfin.cali"
FOREIGN = [
    # Felix: workload routes (proto boot), blackhole and IPIP/VXLAN routes (proto 80)
    ("route", "add", "192.168.1.40/32", "dev", CALI, "proto", "boot", "scope", "link"),
    ("-6", "route", "add", "fd00:10:0:1::40/128", "dev", CALI, "proto", "boot"),
    ("route", "add", "192.168.1.48/28", "dev", CALI, "proto", "12", "scope", "link"),  # ours by number
    ("route", "add", BLOCKS["node2"], "via", NODES["node2"], "dev", "eth0", "proto", "80"),  # a dst we learn
    ("route", "add", "10.99.0.0/24", "via", NODES["node2"], "proto", "80", "metric", "10"),
    ("-6", "route", "add", "fd00:99::/64", "via", "fe80::1", "dev", "eth0", "proto", "80"),
    ("route", "add", "192.168.7.0/26", "via", "10.0.7.1", "dev", VXLAN, "onlink"),
    ("route", "add", "192.168.8.0/26", "dev", VXLAN, "proto", "12", "scope", "link"),
    ("route", "add", "10.97.0.0/24", "dev", WIREGUARD, "proto", "12", "scope", "link"),
    ("route", "add", "10.96.5.0/24", "dev", BPF, "proto", "12", "scope", "link"),
    # other tables: Felix's 1-250 and policy-routing tables
    ("route", "add", BLOCKS["node3"], "via", NODES["node3"], "table", "100", "proto", "12"),
    ("route", "add", "default", "via", NODES["node2"], "table", "100"),
    ("route", "add", "10.98.0.0/16", "via", NODES["node2"], "table", "250", "proto", "12"),
    ("-6", "route", "add", "fd00:98::/64", "dev", "eth0", "table", "250", "proto", "12"),
    # the host's own: a connected subnet (address below), a default route
    ("route", "add", "default", "via", "10.0.0.1", "proto", "dhcp", "metric", "100"),
]


@pytest.fixture(scope="module")
def lab():
    name = f"o{secrets.token_hex(4)}"
    try:
        up = subprocess.run([ops.venv_tool("calico-bgp"), "lab", "up", "mesh", "--ipv6", "--name", name],
                            capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "reachability: 60/60 pod pairs reached" in up.stdout
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def test_dual_stack_mesh_sessions_routes_status_and_show(lab):
    """v6 mesh sessions over MP-BGP, v6 routes in the kernel, the v6 table in status, ipv6 in `lab show`."""
    tool = ops.venv_tool("calico-bgp")
    show = json.loads(subprocess.run([tool, "lab", "show", lab, "-o", "json"], capture_output=True,
                                     text=True, check=True).stdout)
    assert [n["ipv6"] for n in show["nodes"]] == ["fd00::11/64", "fd00::12/64", "fd00::13/64"]
    assert [p["ipv6"] for p in show["pods"]][:2] == ["fd00:10:0:1::2", "fd00:10:0:1::3"]
    st = ops.load(lab)
    status = json.loads(ops.status(st, st.node("node1"), "-o", "json").stdout)
    v6 = {p["address"]: p for p in status["peers"] if p["family"] == "ipv6"}
    assert set(v6) == {"fd00::12", "fd00::13"}
    assert all(p["info"].startswith("Established") for p in v6.values())
    table = ops.status(st, st.node("node1")).stdout
    assert "IPv6 BGP status" in table and "fd00::13" in table
    routes = {r["dst"]: r for r in json.loads(netns.ip(_ns(lab), "-6", "-j", "route", "show").stdout)}
    node2 = routes["fd00:10:0:2::/122"]
    assert (node2["gateway"], node2["protocol"]) == ("fd00::12", "bird")
    assert routes["fd00:10:0:3::/122"]["gateway"] == "fd00::13"
    assert routes["fd00:10:0:1::/122"]["type"] == "blackhole"
    assert labs_lab.ping(lab, "node3-pod1", "fd00:10:0:1::2")


def _ns(lab: str, member: str = "node1") -> str:
    return state.netns_name(lab, member)


def _all_routes(ns: str) -> list[dict]:
    out = []
    for family in ("-4", "-6"):
        text = netns.ip(ns, family, "-j", "route", "show", "table", "all").stdout
        out += json.loads(text or "[]")
    return out


def _ours(route: dict) -> bool:
    felix = ("cali", "bpf")
    dev = str(route.get("dev", ""))
    on_felix = dev.startswith(felix) or dev in (VXLAN, "vxlan-v6.calico") or dev.endswith(".cali")
    return route.get("protocol") == "bird" and "table" not in route and not on_felix


def _foreign(ns: str) -> list[str]:
    """Every route that is not ours, as ``ip -j`` prints it, one canonical JSON line each, sorted."""
    return sorted(json.dumps(r, sort_keys=True) for r in _all_routes(ns) if not _ours(r))


def _bird(ns: str) -> dict[str, dict]:
    """Our routes in node1's main table (proto bird, not on a Felix device)."""
    return {r["dst"]: r for r in netns.routes(ns) if _ours(r)}


def _wait(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def _established(lab: str, node: str) -> bool:
    st = ops.load(lab)
    try:
        out = ops.status(st, st.node(node), "-o", "json", timeout=5).stdout
    except subprocess.TimeoutExpired:
        return False
    return report.sessions_ready(out, [ip for n, ip in NODES.items() if n != node])[0]


def _repairs(lab: str) -> float:
    """calico_bgp_kernel_route_repairs_total from node1's metrics endpoint."""
    code = "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9094/metrics').read().decode())"
    out = netns.run_in(_ns(lab), ["python3", "-c", code], timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("calico_bgp_kernel_route_repairs_total "):
            return float(line.split()[1])
    raise AssertionError("no calico_bgp_kernel_route_repairs_total in node1's metrics")


def _fill(ns: str) -> None:
    for dev in (CALI, VXLAN, WIREGUARD, BPF):
        peer = f"p{secrets.token_hex(4)}"
        netns.ip(ns, "link", "add", dev, "type", "veth", "peer", "name", peer)
        for end in (dev, peer):
            # No IPv6 link-local address: its routes would appear some time after the snapshot.
            netns.ip(ns, "link", "set", end, "addrgenmode", "none")
            netns.link_up(ns, end)
    netns.ip(ns, "address", "add", "172.31.0.1/24", "dev", BPF)  # a connected subnet (proto kernel)
    for spec in FOREIGN:
        netns.ip(ns, *spec)


def test_foreign_routes_survive_start_operation_resync_and_shutdown(lab, monkeypatch):
    ns = _ns(lab)
    labs_lab.stop_node(lab, "node1")
    _fill(ns)
    before = _foreign(ns)
    assert len(before) > len(FOREIGN)  # plus the kernel's connected, local and link-local routes

    # Start-up reconciliation: adoption of our own routes, then the sweep after every End-of-RIB.
    monkeypatch.setenv("CALICO_BGP_ROUTE_REFRESH_INTERVAL", "1")
    labs_lab.start_node(lab, "node1")
    _wait(lambda: _established(lab, "node1"), "node1's sessions Established")
    _wait(lambda: BLOCKS["node3"] in _bird(ns), "node3's block programmed")
    time.sleep(2.0)  # the sweep runs within a second of the last End-of-RIB
    assert BLOCKS["node2"] not in _bird(ns), "programmed over Felix's proto-80 route on the same dst"
    assert _foreign(ns) == before

    # Normal operation: workloads come and go on node1 (exported) and node2 (a borrowed /32 learned here).
    labs_lab.add_pod(lab, "node2", "node2-borrowed", "192.168.1.20")
    labs_lab.add_pod(lab, "node1", "node1-extra", "192.168.3.30")
    _wait(lambda: "192.168.1.20" in _bird(ns), "node1 learned node2's borrowed /32")
    labs_lab.delete_pod(lab, "node2-borrowed")
    labs_lab.delete_pod(lab, "node1-extra")
    _wait(lambda: "192.168.1.20" not in _bird(ns), "node1 dropped the withdrawn /32")
    assert _foreign(ns) == before

    # Resync: someone changes one of our routes without a notification reaching us (same protocol); the
    # periodic read-back repairs it and counts it, and touches nothing else.
    repairs = _repairs(lab)
    netns.ip(ns, "route", "replace", BLOCKS["node3"], "via", NODES["node2"], "proto", "bird",
             "metric", str(_bird(ns)[BLOCKS["node3"]].get("metric", 0)))
    _wait(lambda: _bird(ns)[BLOCKS["node3"]].get("gateway") == NODES["node3"], "resync repaired the route")
    assert _repairs(lab) > repairs
    # ... and one deleted behind our back comes back at once, through the notification.
    netns.ip(ns, "route", "del", BLOCKS["node3"], "proto", "bird")
    _wait(lambda: BLOCKS["node3"] in _bird(ns), "deleted route reinstalled", timeout=2.0)
    assert _foreign(ns) == before

    # Shutdown: SIGTERM leaves both ours and theirs in place.
    ours = _bird(ns)
    labs_lab.stop_node(lab, "node1")
    assert _bird(ns) == ours
    assert _foreign(ns) == before
    monkeypatch.delenv("CALICO_BGP_ROUTE_REFRESH_INTERVAL")
    labs_lab.start_node(lab, "node1")
    _wait(lambda: _established(lab, "node1"), "node1's sessions Established again")
    assert _foreign(ns) == before
