import json

from bgp.exabgp.events import Notification
from bgp.status import PeerStatus, render_status, render_table, status_report
from confgen.intent import MESH, PeerIntent

PEER = PeerIntent(
    name="Mesh_10_0_0_12",
    address="10.0.0.12",
    family="ipv4",
    peer_as=64512,
    local_as=64512,
    local_address="10.0.0.11",
    kind=MESH,
    passive=True,
)


def test_transitions():
    s = PeerStatus.configured(PEER, 100.0)
    assert (s.state, s.info) == ("start", "Passive")
    s = s.connected(101.0)
    assert s.info == "OpenSent"
    s = s.up(102.0)
    assert (s.state, s.info, s.since) == ("up", "Established", 102.0)
    s = s.with_error(Notification("10.0.0.12", "receive", 6, 2, "Administrative Shutdown"), 103.0)
    s = s.down("", 103.0)
    assert (s.state, s.info) == ("start", "Passive Received: Administrative Shutdown")
    s = s.up(104.0)
    assert s.info == "Established"


def test_table_matches_calicoctl_shape():
    report = status_report("node1", [PeerStatus.configured(PEER, 0).up(0)], [])
    text = render_status(json.loads(json.dumps(report)), now=0)
    lines = text.splitlines()
    assert lines[2] == "IPv4 BGP status"
    assert lines[4] == "| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |"
    assert "| 10.0.0.12    | node-to-node mesh | up    |" in lines[6]
    assert "No IPv6 peers found." in text


def test_cells_wrap_at_30_chars():
    table = render_table(["a", "info"], [["x", "Active Socket: Connection refused by the far end"]])
    assert "| x | Active Socket: Connection |" in table.splitlines()
    assert "|   | refused by the far end    |" in table.splitlines()


def test_routes_table():
    from bgp.routes_view import render_routes

    report = {"node": "node1", "routes": [
        {"prefix": "192.168.1.0/26", "origin": "local", "best": None, "multipath": [],
         "kernel": {"installed": True, "why": ""}},
        {"prefix": "192.168.2.0/26", "origin": "bgp", "multipath": ["10.0.0.12", "10.0.0.13"],
         "best": {"nexthop": "10.0.0.12", "learned_from": "10.0.0.12", "as_path": [65001], "stale": True},
         "kernel": {"installed": False, "why": "EINVAL"}},
    ]}  # fmt: skip
    text = render_routes(report)
    assert "| 192.168.1.0/26 | local" in text
    assert "10.0.0.12, 10.0.0.13" in text and "10.0.0.12 (stale)" in text and "not installed: EINVAL" in text
    assert render_routes({"node": "n", "routes": []}) == "No routes on n.\n"


def test_propagation_is_in_the_json_and_one_line_of_the_text():
    propagation = {
        "export": {"p50_ms": 0.65, "p99_ms": 1.2, "count": 3},
        "import": {"p50_ms": None, "p99_ms": None, "count": 0},
    }
    report = json.loads(json.dumps(status_report("node1", [], ["w"], propagation)))
    assert report["propagation"] == propagation
    lines = render_status(report, now=0).splitlines()
    assert lines[-3:] == [
        "Propagation over the last minute: export p50 0.65 ms, p99 1.2 ms (3 routes); import: no routes",
        "",
        "WARNING: w",
    ]
    assert "propagation" not in status_report("node1", [], [])  # a report without it renders as before
