"""labs.dot: a lab's sessions as one DOT edge each, coloured by state, checked on tables; where Graphviz
is installed, the text is parsed back by `dot -Tjson` (Graphviz's own parser) and compared."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labs import dot

INFO = {
    "name": "lab1",
    "nodes": [
        {"name": "node1", "ipv4": "10.0.0.11/24", "ipv6": "fd00::11/64", "asn": 64512, "labels": {}},
        {"name": "node2", "ipv4": "10.0.0.12/24", "ipv6": "", "asn": 64512, "labels": {}},
        {
            "name": "rr1",
            "ipv4": "10.0.0.21/24",
            "ipv6": "",
            "asn": 64512,
            "labels": {"route-reflector": "true"},
        },
    ],
    "routers": [{"name": "tor1", "netns": "x", "kind": "frr", "asn": 65101}],
}
ROUTERS = {"tor1": ["10.0.0.1", "10.1.0.1"]}


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        # both ends agree
        ({"node1": {"10.0.0.12": "Established"}, "node2": {"10.0.0.11": "Established"}},
         [("node1", "node2", "Established", ("node1", "node2"))]),
        # the ends disagree: the worse state wins, whichever end says it
        ({"node1": {"10.0.0.12": "Established"}, "node2": {"10.0.0.11": "Active"}},
         [("node1", "node2", "Active", ("node1", "node2"))]),
        ({"node1": {"10.0.0.12": "Idle"}, "node2": {"10.0.0.11": "Established"}},
         [("node1", "node2", "Idle", ("node1", "node2"))]),
        # one end not asked: what the other says
        ({"node1": {"10.0.0.12": "Connect"}}, [("node1", "node2", "Connect", ("node1",))]),
        # IPv6 sessions map to the same node; an IPv4 and an IPv6 session to it are one pair of ends
        ({"node2": {"fd00::11": "Established"}}, [("node1", "node2", "Established", ("node2",))]),
        # a router by any of its addresses, FRR's view included
        ({"node1": {"10.1.0.1": "Established"}, "tor1": {"10.0.0.11": "Established"}},
         [("node1", "tor1", "Established", ("node1", "tor1"))]),
        # an address of no member
        ({"node1": {"192.0.2.9": "Active"}}, [("192.0.2.9", "node1", "Active", ("node1",))]),
        ({}, []),
    ],
)  # fmt: skip
def test_sessions_are_merged_per_pair_of_ends(reports, expected):
    found = [(s.a, s.b, s.state, s.seen_by) for s in dot.sessions(INFO, reports, ROUTERS)]
    assert found == expected


@pytest.mark.parametrize(
    ("a", "b", "worse"),
    [("Established", "Active", "Active"), ("OpenSent", "Idle", "Idle"), ("Established", "Established",
     "Established"), ("Established", "something new", "something new"), ("Connect", "Active", "Connect")],
)  # fmt: skip
def test_the_worse_state_is_the_one_further_from_established(a, b, worse):
    assert dot._worse(a, b) == worse == dot._worse(b, a)


@given(st.text())
def test_quoting_survives_any_text(text):
    quoted = dot.quote(text)
    assert quoted.startswith('"') and quoted.endswith('"')
    inner = quoted[1:-1]
    # every quote inside is escaped, and no raw newline breaks the line
    assert "\n" not in inner
    assert all(inner[i - 1] == "\\" for i, c in enumerate(inner) if c == '"')


def _graphviz(text: str) -> tuple[dict[str, dict], list[tuple[str, str, dict]]]:
    out = subprocess.run(
        ["dot", "-Tjson"], input=text, capture_output=True, text=True, check=True, timeout=30
    )
    graph = json.loads(out.stdout)
    vertices = {o["name"]: o for o in graph.get("objects", [])}
    names = {o["_gvid"]: o["name"] for o in graph.get("objects", [])}
    edges = [(names[e["tail"]], names[e["head"]], e) for e in graph.get("edges", [])]
    return vertices, edges


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz (make interop-deps)")
def test_graphviz_reads_back_every_member_and_one_coloured_edge_per_session():
    reports = {
        "node1": {"10.0.0.12": "Established", "10.0.0.21": "Established", "10.0.0.1": "Active"},
        "node2": {"10.0.0.11": "Established", "10.0.0.21": "OpenSent"},
        "tor1": {"10.0.0.11": "Connect"},
    }
    vertices, edges = _graphviz(dot.render(INFO, reports, ROUTERS))
    assert {name: v["kind"] for name, v in vertices.items()} == {
        "node1": "node", "node2": "node", "rr1": "reflector", "tor1": "router"
    }  # fmt: skip
    assert vertices["rr1"]["reporting"] == "no" and vertices["node1"]["reporting"] == "yes"
    assert vertices["tor1"]["asn"] == "65101"
    found = {(a, b): (e["state"], e["color"]) for a, b, e in edges}
    assert found == {
        ("node1", "node2"): ("Established", "darkgreen"),
        ("node1", "rr1"): ("Established", "darkgreen"),
        ("node1", "tor1"): ("Connect", "red"),
        ("node2", "rr1"): ("OpenSent", "red"),
    }


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz (make interop-deps)")
def test_hostile_names_stay_one_vertex_each():
    info = {"name": 'a"b', "nodes": [{"name": 'n"1\\', "ipv4": "10.0.0.1/24", "asn": 1, "labels": {}}]}
    vertices, edges = _graphviz(dot.render(info, {'n"1\\': {"10.0.0.2": "Idle"}}, {}))
    # DOT keeps a backslash as written (only \" is an escape), so the name reads back with it doubled
    assert set(vertices) == {'n"1\\\\', "10.0.0.2"}
    assert [(a, b, e["state"]) for a, b, e in edges] == [("10.0.0.2", 'n"1\\\\', "Idle")]
