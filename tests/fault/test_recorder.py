"""The campaign's bookkeeping without a lab: rows merged by fault, files rendered, figures kept."""

from __future__ import annotations

import json

import pytest

from fault import recorder
from fault.probe import route_dst


def _row(fault: str, outcome: str = "passed", commit: str = "abc", **measured) -> recorder.FaultRow:
    builder = recorder.RowBuilder(fault, "SIGSTOP ExaBGP", 2, "detected within 30 s")
    builder.measure(**measured)
    return builder.row(outcome, "", test=f"t::{fault}", commit=commit, date="2025-01-01T00:00:00Z",
                       duration_s=12.34)


@pytest.mark.parametrize(
    ("earlier", "now", "fresh", "expected"),
    [
        (["a", "b"], ["b"], False, ["a", "b"]),  # b replaced in place
        (["a", "b"], ["c"], False, ["a", "b", "c"]),  # new faults after the earlier ones
        (["a", "b"], ["c", "a"], True, ["c", "a"]),  # fresh: only this run's rows
        ([], ["a"], False, ["a"]),
    ],
)
def test_merge_keeps_order_and_replaces_by_fault(earlier, now, fresh, expected):
    merged = recorder.merge([_row(f, commit="old") for f in earlier], [_row(f, commit="new") for f in now],
                            fresh)
    assert [r.fault for r in merged] == expected
    assert {r.fault for r in merged if r.commit == "new"} == set(now)


def test_write_round_trips_and_renders_one_line_per_row(tmp_path):
    recorder.write(tmp_path, [_row("a", detection_s=12.3456, pings_lost=0)], {"flaps": 20})
    merged = recorder.write(tmp_path, [_row("b", "failed", rss_growth_pct=7.5)], {"flaps": 20})
    assert [r.fault for r in merged] == ["a", "b"]
    assert recorder.load(tmp_path / "results.json") == merged
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["measured"] == {
        "detection_s": 12.346, "pings_lost": 0}
    table = [line for line in (tmp_path / "RESULTS.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 3  # header + 2 rows
    assert "detection_s 12.346, pings_lost 0" in table[1] and "| pass |" in table[1]
    assert "FAIL" in table[2] and "rss_growth_pct 7.5" in table[2]


def test_cells_cannot_break_the_table():
    row = recorder.RowBuilder("a|b", "x\ny", 1, "z").row("failed", "\n  boom | here\nmore", test="t",
                                                         commit="c", date="d", duration_s=0)
    line = recorder.render_markdown([row], {}).splitlines()[-1]
    assert line.count(" | ") == 6 and "\n" not in line and "boom \\| here" in line


def test_worst_keeps_the_maximum():
    builder = recorder.RowBuilder("a", "", 3, "")
    for value in (2, 5.5, 1):
        builder.worst("pings_lost_max", value)
    assert builder.measured == {"pings_lost_max": 5.5}


@pytest.mark.parametrize(
    ("line", "dst"),
    [
        ("192.168.2.0/26 via 10.0.0.12 dev eth0 proto bird metric 1024", "192.168.2.0/26"),
        ("Deleted 192.168.2.0/26 via 10.0.0.12 dev eth0 proto bird metric 1024", "192.168.2.0/26"),
        ("blackhole 192.168.1.0/26 proto bird", "192.168.1.0/26"),
        ("Deleted blackhole 192.168.1.0/26 proto bird", "192.168.1.0/26"),
        ("", ""),
    ],
)
def test_route_dst(line, dst):
    assert route_dst(line) == dst
