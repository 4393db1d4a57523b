"""bench.plots: which rows are drawn and how (tables of made-up results), and the PNGs it writes, on a
made-up run and on the committed bench/results/latest.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import plots

RESULTS = Path(plots.__file__).resolve().parent / "results"


def _side(*samples: float) -> dict:
    return {"samples": list(samples), "median": sorted(samples)[len(samples) // 2], "n": len(samples)}


def _row(section: str, unit: str, metric: str, bird=(1.0,), ours=(2.0,)) -> dict:
    return {"section": section, "unit": unit, "metric": metric, "headline": None,
            "bird": _side(*bird) if bird else None, "ours": _side(*ours) if ours else None}  # fmt: skip


RUN = {
    "machine": {"date": "2026-01-01", "cores": 2, "cpu": "test", "git_commit": "abc"},
    "rows": [
        _row("a", "s", "bulk add 1k /32s: A's ip -batch start → all in B's kernel", (0.04, 0.05), (0.1, 0.2)),
        _row(
            "a", "s", "bulk add 100k /32s: A's ip -batch start → all in B's kernel", (6.0, 7.0), (10.0, 12.0)
        ),
        _row("b", "ms", "single route A→B, empty table: p50 (min–max)", (0.5, 0.6, 2.0), (4.0, 5.0)),
        _row("c", "routes/s", "install rate, ours only", None, (100.0,)),  # no BIRD figure: not drawn
        _row("d", "% core", "idle CPU, node A, no routes (per window)", (0.0, 0.0), (0.8, 0.7)),
        _row("d", "MiB", "RSS, node A, holding 10k routes", (4.8,), (99.5,)),
    ],
}


def test_rows_with_both_daemons_are_grouped_per_section_and_unit():
    found = [(p.section, p.unit, [b.label for b in p.bars]) for p in plots.panels(RUN)]
    assert found == [
        ("a", "s", ["add 1k", "add 100k"]),
        ("b", "ms", ["empty table\np50"]),
        ("d", "% core", ["A, idle"]),
        ("d", "MiB", ["A 10k"]),
    ]


@pytest.mark.parametrize(
    ("bird", "ours", "log"),
    [
        ((1.0,), (19.0,), False),  # under LOG_ABOVE
        ((1.0,), (20.0,), True),
        ((0.0, 1.0), (100.0,), False),  # a zero cannot go on a log axis
        ((0.04, 0.05), (12.0,), True),
    ],
)
def test_panels_spanning_orders_of_magnitude_get_a_log_axis(bird, ours, log):
    (panel,) = plots.panels({"rows": [_row("a", "s", "x", bird, ours)]})
    assert panel.log_scale is log


@pytest.mark.parametrize(
    ("unit", "slug", "better"),
    [("s", "a-s", "lower"), ("routes/s", "a-routes-s", "higher"), ("% core", "a-core", "lower")],
)
def test_titles_and_file_names(unit, slug, better):
    (panel,) = plots.panels({"rows": [_row("a", unit, "x")]})
    assert panel.slug == slug
    assert panel.title.endswith(f"{better} is better")


@pytest.mark.parametrize(("values", "median"), [([3.0], 3.0), ([3.0, 1.0], 2.0), ([5.0, 1.0, 3.0], 3.0)])
def test_median(values, median):
    assert plots._median(values) == median


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_draws_the_overview_and_one_chart_per_panel(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "latest.json").write_text(json.dumps(RUN))
    written = plots.write(tmp_path)
    assert [p.name for p in written] == [
        "bench-overview.png", "bench-a-s.png", "bench-b-ms.png", "bench-d-core.png", "bench-d-mib.png"
    ]  # fmt: skip
    assert all(_is_png(p) for p in written)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in written)


def test_a_run_without_comparable_rows_draws_nothing(tmp_path):
    (tmp_path / "latest.json").write_text(json.dumps({"rows": [RUN["rows"][3]]}))
    assert plots.write(tmp_path) == []


def test_the_committed_results_can_be_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copy(RESULTS / "latest.json", tmp_path / "latest.json")
    assert plots.main(["--results", str(tmp_path)]) == 0
    assert _is_png(tmp_path / "bench-overview.png")
    assert {p.section for p in plots.panels(json.loads((RESULTS / "latest.json").read_text()))} >= {"a", "b"}
