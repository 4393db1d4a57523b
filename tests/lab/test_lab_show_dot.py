"""`calico-bgp lab show -o dot` on the `tor` lab (two FRR ToRs, four nodes): Graphviz parses the DOT back
(`dot -Tjson`), and it has every node and router of `lab show -o json`, with one edge per BGP session
whose state is what the nodes' daemons and FRR report; `dot -Tsvg` renders it. With node4's daemon
stopped, its sessions turn red and its vertex says it was not asked.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time

import pytest

from labs import catalog, netns, ops, routers, state
from labs import lab as labs_lab

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

TOPO = catalog.TOPOLOGIES["tor"]()


@pytest.fixture(scope="module")
def tor():
    reason = routers.frr_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("dot") is None:
        pytest.skip("needs Graphviz (make interop-deps)")
    name = f"d{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        assert labs_lab.up("tor", name=name, echo=lines.append), "\n".join(lines)
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def _cli(*args: str) -> str:
    proc = subprocess.run(
        [ops.venv_tool("calico-bgp"), "lab", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _parsed(lab: str) -> tuple[dict[str, dict], dict[tuple[str, str], dict]]:
    text = _cli("show", lab, "-o", "dot")
    graph = json.loads(subprocess.run(["dot", "-Tjson"], input=text, capture_output=True, text=True,
                                      check=True, timeout=30).stdout)  # fmt: skip
    vertices = {o["name"]: o for o in graph["objects"]}
    names = {o["_gvid"]: o["name"] for o in graph["objects"]}
    edges = {tuple(sorted((names[e["tail"]], names[e["head"]]))): e for e in graph["edges"]}
    return vertices, edges


def _reported(lab: str) -> dict[tuple[str, str], set[str]]:
    """(end, end) -> the BGP states its ends report, asked here independently of labs.sessions_view."""
    st = ops.load(lab)
    owner = {n.ipv4.split("/")[0]: n.name for n in st.nodes}
    for router in TOPO.routers:
        owner.update({port.ipv4.split("/")[0]: router.name for port in router.ports})
    found: dict[tuple[str, str], set[str]] = {}
    for node in st.nodes:
        out = ops.status(st, node, "-o", "json").stdout
        for peer in json.loads(out)["peers"]:
            key = tuple(sorted((node.name, owner[peer["address"]])))
            found.setdefault(key, set()).add(peer["info"].split()[0])
    for router in st.routers:
        for address, bgp_state in routers.bgp_sessions(router.pathspace).items():
            found.setdefault(tuple(sorted((router.name, owner[address]))), set()).add(bgp_state)
    return found


def test_every_member_of_show_json_is_a_vertex(tor):
    info = json.loads(_cli("show", tor, "-o", "json"))
    vertices, _ = _parsed(tor)
    assert {n["name"]: ("node", str(n["asn"])) for n in info["nodes"]} | {
        r["name"]: ("router", str(r["asn"])) for r in info["routers"]
    } == {name: (v["kind"], v["asn"]) for name, v in vertices.items()}


def test_one_green_edge_per_established_session(tor):
    _, edges = _parsed(tor)
    reported = _reported(tor)
    assert set(edges) == set(reported)
    assert {key: e["state"] for key, e in edges.items()} == {key: "Established" for key in reported}
    assert all(states == {"Established"} for states in reported.values()), reported
    assert {e["color"] for e in edges.values()} == {"darkgreen"}
    # node-ToR sessions of both racks, and the ToRs with each other
    assert ("tor1", "tor2") in edges and sum(1 for key in edges if "tor1" in key) == 3


def test_it_renders_as_svg(tor):
    text = _cli("show", tor, "-o", "dot")
    svg = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=30, check=True)
    assert svg.stdout.lstrip().startswith("<?xml") and "<svg" in svg.stdout


def test_a_stopped_daemon_shows_red_sessions_and_an_unasked_vertex(tor):
    labs_lab.stop_node(tor, "node4")
    try:
        deadline = time.monotonic() + 30.0
        while True:
            vertices, edges = _parsed(tor)
            down = {key: e for key, e in edges.items() if "node4" in key}
            if down and all(e["state"] != "Established" for e in down.values()):
                break
            assert time.monotonic() < deadline, {key: e["state"] for key, e in down.items()}
            time.sleep(1.0)
        assert vertices["node4"]["reporting"] == "no"
        assert {e["color"] for e in down.values()} == {"red"}
        assert all(e["seen_by"] != "node4" for e in down.values())
        assert all(e["color"] == "darkgreen" for key, e in edges.items() if "node4" not in key)
    finally:
        labs_lab.start_node(tor, "node4")
