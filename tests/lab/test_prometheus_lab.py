"""A real Prometheus on a lab (``lab up --prometheus``, ``labs.prometheus``): Debian's Prometheus scrapes
every node of a 3-node mesh through the metrics forwarder and evaluates monitoring/prometheus-rules.yml.

What must hold: its HTTP API (the URL ``lab show`` gives) has ``calico_bgp_session_up`` = 1 for every mesh
session of every node; with node1's ExaBGP killed (each new one too, until Prometheus has seen it), the
series of node1's sessions drop to 0 and CalicoBGPSessionDown goes pending for them; once the killing stops
every session is back to 1; ``down`` stops Prometheus and the forwarder. Times are printed.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request

import pytest
import yaml

from labs import catalog, netns, process, state
from labs import lab as labs_lab
from labs import prometheus as lab_prometheus

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

TOPO = catalog.TOPOLOGIES["mesh"](nodes=3)
EXABGP = "bgp.exabgp.launch server"
DEADLINE = 60.0


@pytest.fixture(scope="module")
def lab():
    reason = lab_prometheus.available()
    if reason:
        pytest.skip(reason)
    name = f"p{secrets.token_hex(4)}"
    lines: list[str] = []
    recorded = None
    try:
        ok = labs_lab.up(TOPO, name=name, prometheus=True, echo=lines.append)
        recorded = state.LabState.load(name)
        assert ok, "\n".join(lines)
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))
        if recorded is not None:
            assert not process.alive(recorded.prometheus_pid), "prometheus outlived lab down"
            assert not process.alive(recorded.metrics_proxy_pid), "the metrics forwarder outlived lab down"


def _url(lab: str) -> str:
    return labs_lab.show(lab)["prometheus"]


def _sessions(lab: str) -> dict[tuple[str, str], float]:
    rows = lab_prometheus.query(_url(lab), "calico_bgp_session_up")
    return {(r["metric"]["instance"], r["metric"]["peer"]): float(r["value"][1]) for r in rows}


def _expected() -> set[tuple[str, str]]:
    return {(n.name, peer) for n in TOPO.nodes for peer in TOPO.expected_peers(n.name) if peer != n.address}


def _wait(what: str, check, timeout: float = DEADLINE, during=lambda: None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        during()
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def test_show_gives_a_loopback_url_and_every_node_is_a_healthy_target(lab):
    url = _url(lab)
    assert url.startswith("http://127.0.0.1:")

    def healthy():
        rows = lab_prometheus.query(url, 'up{job="calico-bgp"}')
        return {r["metric"]["instance"]: r["value"][1] for r in rows} == {n.name: "1" for n in TOPO.nodes}

    _wait("every node scraped", healthy)


def test_the_product_rules_are_loaded(lab):
    with urllib.request.urlopen(f"{_url(lab)}/api/v1/rules", timeout=5) as reply:
        groups = json.loads(reply.read())["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    document = yaml.safe_load(lab_prometheus.RULES.read_text())
    assert loaded == {r["alert"] for g in document["groups"] for r in g["rules"] if "alert" in r}


def test_every_mesh_session_is_up_then_node1s_go_down_pending_and_come_back(lab):
    expected = _expected()
    assert len(expected) == 6
    _wait(
        "every mesh session at 1",
        lambda: set(_sessions(lab)) == expected and set(_sessions(lab).values()) == {1.0},
    )

    ns = state.netns_name(lab, "node1")
    node1 = TOPO.node("node1").address
    killed: list[int] = []

    def kill_exabgp():  # only processes of the lab's node1 namespace (its daemon's ExaBGP)
        for pid in netns.pids(ns):
            if EXABGP in process.cmdline(pid):
                process.kill(pid)
                killed.append(pid)

    def node1_down():
        down = {key for key, value in _sessions(lab).items() if value == 0.0}
        return down if {("node1", p) for p in TOPO.expected_peers("node1") if p != node1} <= down else None

    def pending():
        rows = lab_prometheus.query(
            _url(lab), 'ALERTS{alertname="CalicoBGPSessionDown",alertstate="pending"}'
        )
        return {
            (r["metric"]["instance"], r["metric"]["peer"]) for r in rows if r["metric"]["instance"] == "node1"
        }

    started = time.monotonic()
    down = _wait("node1's sessions at 0 in Prometheus", node1_down, during=kill_exabgp)
    seen_down = time.monotonic() - started
    alerts = _wait("CalicoBGPSessionDown pending for node1", pending, during=kill_exabgp)
    seen_pending = time.monotonic() - started
    assert killed
    assert alerts <= down
    started = time.monotonic()
    _wait(
        "every session back at 1",
        lambda: set(_sessions(lab).values()) == {1.0} and set(_sessions(lab)) == expected,
    )
    back = time.monotonic() - started
    print(
        f"\nExaBGP kills: {len(killed)}; node1's sessions at 0 in Prometheus after {seen_down:.1f} s, "
        f"alert pending after {seen_pending:.1f} s; all sessions back at 1 after {back:.1f} s"
    )
