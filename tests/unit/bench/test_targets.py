"""The targets of docs/performance.md and the headline table: synthetic samples in, verdicts out."""

from __future__ import annotations

import pytest

from bench import mesh, report, targets
from bench.mesh import MachineWatch, MeshRun, phase_of
from bench.propagation import PairResults


def pair(**fields) -> PairResults:
    results = PairResults("x")
    for name, value in fields.items():
        setattr(results, name, value)
    return results


def line(rows, label):
    lines, _ = targets.headline(rows)
    found = [x for x in lines if x.label == label]
    assert len(found) == 1, [x.label for x in lines]
    return found[0]


@pytest.mark.parametrize(
    ("bird", "ours", "label", "met"),
    [
        ({"bulk_add": {1000: [0.04]}}, {"bulk_add": {1000: [0.059]}}, "bulk add 1k", True),  # 1.48x
        ({"bulk_add": {1000: [0.04]}}, {"bulk_add": {1000: [0.061]}}, "bulk add 1k", False),  # 1.53x
        ({"bulk_add": {10_000: [3.0]}}, {"bulk_add": {10_000: [0.5]}}, "bulk add 10k", True),
        ({"bulk_add": {10_000: [0.2]}}, {"bulk_add": {10_000: [0.51]}}, "bulk add 10k", False),
        ({"bulk_add": {100_000: [5.0]}}, {"bulk_add": {100_000: [5.0]}}, "bulk add 100k", True),
        ({"bulk_add": {100_000: [5.0]}}, {"bulk_add": {100_000: [5.1]}}, "bulk add 100k", False),
        (
            {"bulk_del": {100_000: [5.0]}},
            {"bulk_add": {100_000: []}, "bulk_del": {100_000: [4.9]}},
            "bulk delete 100k",
            True,
        ),
        (
            {"bulk_del": {100_000: [5.0]}},
            {"bulk_add": {100_000: []}, "bulk_del": {100_000: [7.0]}},
            "bulk delete 100k",
            False,
        ),
        # p50 is the median of the trials; the empty and the loaded table must both hold
        ({}, {"latency_ms": [1.0, 1.4, 9.0], "latency_loaded_ms": [1.5]}, "one route A→B p50", True),
        ({}, {"latency_ms": [1.0], "latency_loaded_ms": [1.6]}, "one route A→B p50", False),
        ({}, {"latency_ms": [1.0] * 19 + [2.9], "latency_loaded_ms": [1.0]}, "one route A→B p95", True),
        ({}, {"latency_ms": [1.0] * 18 + [9.0] * 2}, "one route A→B p95", False),
        # per node: the heavier node decides
        ({}, {"rss_idle": {"A": 49.0, "B": 50.0}}, "RSS per node, idle", True),
        ({}, {"rss_idle": {"A": 20.0, "B": 51.0}}, "RSS per node, idle", False),
        (
            {},
            {"bulk_add": {10_000: []}, "rss_held": {"A 10000": 60.0, "B 10000": 59.0}},
            "RSS per node, 10k routes",
            True,
        ),
        (
            {},
            {"bulk_add": {100_000: []}, "rss_held": {"A 100000": 151.0, "B 100000": 99.0}},
            "RSS per node, 100k routes",
            False,
        ),
        ({}, {"cpu_idle": {"A": [0.4, 0.5, 0.6], "B": [0.5]}}, "idle CPU per node", True),
        ({}, {"cpu_idle": {"A": [0.5], "B": [0.6, 0.7]}}, "idle CPU per node", False),
        (
            {},
            {"cpu_loaded": {"A": [0.3], "B": [0.5]}, "loaded_routes": 100_000},
            "idle CPU, largest table held",
            True,
        ),
    ],
)
def test_each_headline_metric_is_judged_against_its_target(bird, ours, label, met):
    rows = report.propagation_rows(pair(**bird) if bird else None, pair(**ours))
    assert line(rows, label).met is met


def test_a_ratio_target_without_birds_figure_is_undecided_not_met():
    rows = report.propagation_rows(None, pair(bulk_add={1000: [0.01]}))
    got = line(rows, "bulk add 1k")
    assert (got.bird, got.ratio, got.met) == (None, None, None)


def test_one_node_without_a_figure_leaves_the_metric_undecided():
    rows = report.propagation_rows(None, pair(rss_idle={"A": 10.0}))
    assert line(rows, "RSS per node, idle").met is None


def test_the_headline_shows_the_worse_row_and_the_ratio_to_bird():
    rows = report.propagation_rows(pair(rss_idle={"A": 2.0, "B": 4.0}), pair(rss_idle={"A": 40.0, "B": 48.0}))
    got = line(rows, "RSS per node, idle")
    assert (got.ours, got.bird, got.ratio) == (48.0, 4.0, 12.0)


def mesh_run(n: int, converged: float | None) -> MeshRun:
    return MeshRun(n, converged_s=converged, error="" if converged else "not converged within 400 s")


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ({10: [19.0], 25: [19.0], 50: [19.9, 20.5, 19.0], 100: [90.0]}, {50: True, 100: True}),
        ({50: [21.0, 20.5, 19.0]}, {50: False}),
        ({50: [10.0, 12.0, None]}, {50: False}),  # a run that did not converge misses the target
        ({50: [15.0], 100: [None]}, {50: True, 100: False}),
        ({5: [3.0], 10: [5.0]}, {10: True}),  # --quick: the largest mesh must converge
    ],
)
def test_mesh_convergence_targets(runs, expected):
    rows = report.mesh_rows({n: [mesh_run(n, c) for c in conv] for n, conv in runs.items()})
    lines, missing = targets.headline(rows)
    got = {int(x.label.split("-")[0]): x.met for x in lines}
    assert got == expected
    assert missing == [label for label, _ in targets.TARGETS.values()] + [
        f"{n}-node mesh" for n in (50, 100) if n not in runs
    ]


def full_run_rows():
    sizes = (1000, 10_000, 100_000)
    side = dict(
        bulk_add={n: [0.4] for n in sizes},
        bulk_del={n: [1.0] for n in sizes},
        fill_rate={n: [1.0] for n in sizes},
        latency_ms=[1.0],
        latency_loaded_ms=[1.0],
        rss_idle={"A": 1.0, "B": 1.0},
        rss_held={f"{x} {n}": 1.0 for x in "AB" for n in sizes},
        cpu_idle={"A": [0.1], "B": [0.1]},
        cpu_loaded={"A": [0.1], "B": [0.1]},
        loaded_routes=100_000,
    )
    runs = {n: [mesh_run(n, 10.0)] for n in (10, 25, 50, 100)}
    return report.propagation_rows(pair(**side), pair(**side)) + report.mesh_rows(runs)


def test_the_regression_guard_of_a_full_run_fits_in_15_lines_and_names_every_metric():
    text = targets.render_text(full_run_rows())
    lines = text.splitlines()
    assert len(lines) <= 15
    for label, _ in targets.TARGETS.values():
        assert sum(1 for x in lines if x.startswith(label + " ")) == 1, label
    assert lines[-1] == "13 of 13 met, 0 missed"


def test_a_quick_run_names_what_it_did_not_measure():
    rows = report.propagation_rows(None, pair(bulk_add={1000: [0.1], 10_000: [0.4]}))
    last = targets.render_text(rows).splitlines()[-1]
    assert last == (
        "1 of 2 met, 0 missed, 1 without a verdict; not measured: bulk add 100k, bulk delete 100k, "
        "one route A→B p50, one route A→B p95, "
        "RSS per node, idle, RSS per node, 10k routes, RSS per node, 100k routes, idle CPU per node, "
        "idle CPU, largest table held, 50-node mesh, 100-node mesh"
    )
    assert "**no**" not in targets.render_markdown(rows)


@pytest.mark.parametrize(
    ("line_", "phase"),
    [
        ("etcd: started http://127.0.0.1:2379 (pid 7)", "etcd"),
        ("etcd: wrote 104 Calico resources", "resources"),
        ("switch: cbgp-x-lan bridge br0", "switch"),
        ("node node7: cbgp-x-node7 eth0 10.0.0.17/24", "namespaces"),
        ("neighbours: 9900 static entries between nodes", "neighbours"),
        ("proxy: etcd at http://127.0.0.1:2379 in every node namespace (pid 8)", "proxy"),
        ("daemon node100: pid 9, log /x", "daemons"),
        ("sessions: all Established after 3.0 s", "sessions"),
        ("sessions: waiting up to 60 s", None),
        ("--- node1 (10.0.0.11/24) ---", None),
    ],
)
def test_lab_up_lines_close_phases(line_, phase):
    assert phase_of(line_) == phase


def test_machine_watch_reports_the_peak_and_stops_under_the_floor():
    available = iter([8000.0, 3000.0, 900.0, 5000.0])
    cpu = iter([(100.0, 400.0), (160.0, 480.0)])
    watch = MachineWatch(1024, memory=lambda: (16384.0, next(available)), cpu=lambda: next(cpu)).start()
    assert watch.sample() is True
    assert watch.sample() is False  # 900 MiB left
    assert watch.sample() is True
    watch.stop()
    assert watch.peak_used_mib == 16384.0 - 900.0
    assert watch.busy_pct == pytest.approx(75.0)  # 60 busy of 80 CPU seconds


def test_mesh_runs_saved_before_new_fields_still_load():
    old = {
        "nodes": 50,
        "converged_s": 39.6,
        "up_s": 53.6,
        "up_ok": True,
        "cpu_s_per_node": [1.1],
        "rss_mib_per_node": [106.0],
        "idle_cpu_per_node": [1.0],
        "error": "",
        "gone_field": 1,
    }
    run = mesh.run_from_json(old)
    assert (run.converged_s, run.phases, run.limit) == (39.6, {}, "")


def test_mesh_rows_and_notes_say_where_the_time_and_the_cpu_went():
    run = MeshRun(
        100,
        converged_s=130.0,
        up_s=131.0,
        phases={"namespaces": 1.2, "daemons": 18.0, "sessions": 131.0},
        node_converged_s=[110.0, 130.0],
        machine_busy_pct=99.5,
        memory_peak_gib=6.5,
        cpu_split_s={"daemon": 1.2, "exabgp": 1.1},
        idle_split_pct={"daemon": 0.4, "exabgp": 1.4, "socat": 0.0},
    )
    stopped = MeshRun(100, error="stopped: memory", limit="memory: 900 MiB of 23.5 GiB left")
    rows = {r.metric: r for r in report.mesh_rows({100: [run, stopped]})}
    assert rows["100-node mesh: lab up start → last daemon started"].ours == [18.0]
    assert rows["100-node mesh: lab up start → first node converged"].ours == [110.0]
    assert rows["100-node mesh: machine CPU busy, start → converged (all cores)"].ours == [99.5]
    converged = rows["100-node mesh: lab up start → every block in every kernel"]
    assert (converged.ours, converged.failures, converged.met()) == ([130.0], 1, False)
    notes = report.mesh_notes({100: [run, stopped]})
    assert notes == [
        "(e) 100-node mesh, end of each lab up phase after its start (median): namespaces 1.20 s, "
        "daemons 18.0 s, sessions 131 s; convergence monitor used at most 0.00 s CPU per run",
        "(e) 100-node mesh run 1, CPU start → converged by process, median node: daemon 1.20 s, "
        "exabgp 1.10 s",
        "(e) 100-node mesh run 1, idle CPU after convergence by process: daemon 0.40 %, exabgp 1.40 %",
        "(e) 100-node mesh run 2 stopped by the machine: memory: 900 MiB of 23.5 GiB left",
    ]
