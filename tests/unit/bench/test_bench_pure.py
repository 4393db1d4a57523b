"""The benchmark's pure parts: statistics and targets, parsers of other tools' output, generated inputs."""

from __future__ import annotations

import statistics
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import felix, flame, install, stats
from bench.bird16 import BIRD_DIR, BirdNode, render_config


@pytest.mark.parametrize(
    ("samples", "q", "expected"),
    [
        ([1, 2, 3, 4, 5], 50, 3.0),
        ([1, 2, 3, 4], 50, 2.5),
        ([10, 20], 95, 19.5),
        (list(range(1, 51)), 95, 47.55),  # rank 46.55 between 47 and 48
        ([7], 95, 7.0),
        ([], 50, None),
    ],
    ids=["odd", "even", "two", "fifty", "one", "empty"],
)
def test_percentile_interpolates_between_ranks(samples, q, expected):
    got = stats.percentile(samples, q)
    assert got == pytest.approx(expected) if expected is not None else got is None


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60))
def test_percentiles_run_from_the_smallest_sample_to_the_largest_without_going_back(samples):
    cuts = [stats.percentile(samples, q) for q in range(101)]
    assert cuts[0] == min(samples) and cuts[100] == max(samples)
    assert all(a <= b + 1e-9 * max(1.0, abs(b)) for a, b in zip(cuts, cuts[1:], strict=False))
    assert stats.percentile(samples, 50) == pytest.approx(statistics.median(samples), abs=1e-6)


@pytest.mark.parametrize("q", [-1, 101, 95.5])
def test_a_percentile_outside_the_whole_numbers_0_to_100_is_refused(q):
    with pytest.raises(ValueError, match=f"percentile {q} is not a whole number in 0..100"):
        stats.percentile([1.0, 2.0], q)


def test_summary_ignores_missing_and_infinite_samples():
    s = stats.summarize([3.0, None, float("inf"), 1.0, 2.0])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert stats.summarize([None]) is None


@pytest.mark.parametrize(
    ("row", "ratio", "met"),
    [
        (
            stats.Row("a", "m", "s", ours=[2, 4, 6], bird=[1, 2, 3], target=stats.Target("x", max_ratio=3)),
            2.0,
            True,
        ),
        (stats.Row("a", "m", "s", ours=[9], bird=[3], target=stats.Target("x", max_ratio=1)), 3.0, False),
        (stats.Row("a", "m", "s", ours=[], bird=[3], target=stats.Target("x", max_ratio=1)), None, None),
        (stats.Row("b", "m", "ms", ours=[4, 6, 5], target=stats.Target("x", max_value=5)), None, True),
        (
            stats.Row("c", "m", "r/s", ours=[40], reference=[100], target=stats.Target("x", min_share=0.5)),
            None,
            False,
        ),
        (stats.Row("d", "m", "MiB", ours=[1], bird=[2]), 0.5, None),
    ],
    ids=["ratio-met", "ratio-missed", "no-samples", "absolute", "share-missed", "no-target"],
)
def test_row_ratio_and_target(row, ratio, met):
    assert row.ratio() == (pytest.approx(ratio) if ratio is not None else None)
    assert row.met() is met


def test_routes_bench_table_is_parsed():
    # The exact layout routes.bench prints (its f-string, reproduced with its own format spec).
    out = (
        "100000 routes, 1 round(s), median seconds and routes/s\n"
        + "".join(
            f"  {label:<18} {seconds:8.3f} s  {100000 / seconds:10,.0f} routes/s\n"
            for label, seconds in (("netlink add", 2.0), ("RouteTable add", 2.5), ("ip -batch add", 1.25))
        )
        + "  add: netlink/ip-batch 0.62, RouteTable/ip-batch 0.50\n"
    )
    assert install.parse(out) == {"netlink add": 50000.0, "RouteTable add": 40000.0, "ip -batch add": 80000.0}


def test_py_spy_stacks_are_split_by_innermost_process():
    raw = (
        'process 1:"python calico-bgp node run";process 2:"python exabgp server x.conf";'
        "run (exabgp/reactor/loop.py:10);callback (exabgp/reactor/api/command/rib.py:93) 30\n"
        'process 1:"python calico-bgp node run";flush (bgp/speaker.py:5);apply (routes/table.py:9) 10\n'
        'process 1:"python calico-bgp node run";flush (bgp/speaker.py:5) 5\n'
    )
    profiles = flame.parse(raw)
    assert {p.name: p.samples for p in profiles.values()} == {"exabgp (2)": 30, "daemon (1)": 15}
    daemon = profiles["daemon (1)"]
    assert daemon.inclusive["flush (bgp/speaker.py)"] == 15
    assert daemon.self_time["apply (routes/table.py)"] == 10
    assert daemon.self_time["flush (bgp/speaker.py)"] == 5


def test_felix_batch_lines_and_addresses():
    addrs = felix.addresses("172.16.0.0/12", 3, offset=255)
    assert addrs == ["172.16.0.255", "172.16.1.0", "172.16.1.1"]
    assert (
        felix.batch_lines(addrs[:1], "add")
        == "route add 172.16.0.255/32 dev calibench0 scope link proto boot\n"
    )
    assert felix.batch_lines(addrs[:1], "del") == "route del 172.16.0.255/32 dev calibench0 proto boot\n"
    with pytest.raises(ValueError):
        felix.addresses("10.0.0.0/30", 4)


def test_bird_config_follows_calicos_mesh_rules():
    a = BirdNode("node1", "10.0.0.11", 24, "192.168.1.0/26")
    b = BirdNode("node2", "10.0.0.12", 24, "192.168.2.0/26")
    cfg_a = render_config(a, [b], ["192.168.0.0/16", "172.16.0.0/12"])
    cfg_b = render_config(b, [a], ["192.168.0.0/16", "172.16.0.0/12"])
    # The side whose address is the smaller string is passive; the other one connects.
    assert "passive on" in cfg_a and "passive on" not in cfg_b
    for text in (
        "learn;",
        "persist;",
        "scan time 2;",
        "merge paths on;",
        "graceful restart;",
        "export filter calico_kernel_programming;",
        "route 192.168.1.0/26 blackhole;",
        "if ( net ~ 172.16.0.0/12 ) then { accept; }",
    ):
        assert text in cfg_a
    bird = BIRD_DIR / "usr/sbin/bird"
    if not bird.exists():
        pytest.skip("BIRD 1.6 not unpacked (make interop-deps or python -m bench)")
    for cfg in (cfg_a, cfg_b):
        proc = subprocess.run(
            [str(bird), "-p", "-c", "/dev/stdin"], input=cfg, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr


def test_current_routes_bench_table_is_parsed():
    from routes import bench as routes_bench

    median = {
        f"{key} {op}": s
        for key, s in (("ip -batch", 1.25), ("netlink", 2.0), ("RouteTable", 2.5))
        for op in ("add", "del")
    }
    median["dump (read-back)"] = 1.0
    rates = install.parse(routes_bench.render(100_000, 3, median, "ns"))
    assert rates["RouteTable add"] == 40000.0 and rates["ip -batch del"] == 80000.0
    assert rates["netlink add"] == 50000.0
