"""The benchmark's result table (the measurement itself runs under tests/netns, untimed)."""

from __future__ import annotations

from routes.bench import render

MEDIAN = {
    "ip -batch add": 1.0, "ip -batch del": 1.0,
    "netlink add": 1.25, "netlink del": 0.8,
    "RouteTable add": 2.5, "RouteTable del": 1.0,
    "dump (read-back)": 0.5,
}


def test_table_rows_carry_seconds_rate_and_ratio_to_ip_batch():
    lines = render(100_000, 3, MEDIAN, "rtbench-x").splitlines()
    assert lines[0] == "route programming: 100,000 IPv4 /32 routes via one gateway, median of 3 round(s) " \
                       "(namespace rtbench-x)"
    methods = ("ip", "Kernel", "Route")
    rows = {line[:22].strip(): line[22:].split() for line in lines if line.startswith(methods)}
    assert rows["ip -batch (iproute2)"] == ["1.000", "100,000", "1.00", "1.000", "100,000", "1.00"]
    assert rows["KernelNetlink.apply"] == ["1.250", "80,000", "0.80", "0.800", "125,000", "1.25"]
    assert rows["RouteTable.apply"] == ["2.500", "40,000", "0.40", "1.000", "100,000", "1.00"]
    assert "read-back (one dump of 100,000 routes): 0.500 s, 200,000 routes/s" in lines
    assert "target: RouteTable add >= 0.5 x ip -batch: NOT met (0.40)" in lines


def test_target_met():
    table = render(10, 1, MEDIAN | {"RouteTable add": 1.25})
    assert "target: RouteTable add >= 0.5 x ip -batch: met (0.80)" in table
