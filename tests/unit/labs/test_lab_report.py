"""Session readiness and the reachability grid (pure)."""

from __future__ import annotations

import json

import pytest

from labs import report


def _status(*peers):
    rows = [{"address": a, "family": "ipv4", "type": "node-to-node mesh", "info": i} for a, i in peers]
    return json.dumps({"node": "node1", "peers": rows})


A, B, C = "10.0.0.12", "10.0.0.13", "10.0.0.99"
UP = "Established"


@pytest.mark.parametrize(
    ("output", "expected", "ready", "reason"),
    [
        (_status((A, UP), (B, UP)), [A, B], True, "2 Established"),
        (_status(), [A], False, f"missing: {A}"),
        (_status((A, UP)), [A, B], False, f"missing: {B}"),
        (_status((A, "Active Socket: Connection refused")), [A], False, f"{A} (Active Socket"),
        (_status((A, UP), (C, "Connect")), [A], False, f"{C} (Connect)"),
        (_status(), [], True, "0 Established"),
        ("", [A], False, "no status yet"),
        ("Error: daemon not running", [A], False, "no status yet"),
        ('{"node": "node1"}', [A], False, "no status yet"),
    ],
    ids=["all-up", "none-yet", "one-missing", "one-active", "unexpected-peer-down", "no-peers-expected",
         "empty", "not-json", "no-peers-key"],
)  # fmt: skip
def test_sessions_ready(output, expected, ready, reason):
    got_ready, got_reason = report.sessions_ready(output, expected)
    assert got_ready is ready
    assert reason in got_reason


def test_render_matrix_marks_each_pair():
    pods = [("a-pod1", "192.168.1.2"), ("b-pod1", "192.168.2.2")]
    reachable = {("a-pod1", "192.168.2.2"): True, ("b-pod1", "192.168.1.2"): False}
    lines = report.render_matrix(pods, reachable).splitlines()
    assert lines[0].split() == ["from", "\\", "to", "a-pod1", "b-pod1"]
    assert lines[1].split() == ["a-pod1", "·", "✓"]
    assert lines[2].split() == ["b-pod1", "✗", "·"]
    # Columns line up under their headers.
    assert lines[1].index("✓") >= lines[0].index("b-pod1")
    assert lines[2].index("✗") < lines[0].index("b-pod1")


def test_render_matrix_missing_result_is_a_failure():
    lines = report.render_matrix([("a", "1.1.1.1"), ("b", "2.2.2.2")], {}).splitlines()
    assert lines[1].split() == ["a", "·", "✗"]
