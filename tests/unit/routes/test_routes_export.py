"""local_exports: Calico's export policy for locally originated prefixes, as a table."""

from __future__ import annotations

import pytest

from routes.export import local_exports
from routes.pools import KernelPool

POOL = KernelPool("10.244.0.0/16")
POOL6 = KernelPool("fd00:244::/48")
NOEXPORT = KernelPool("10.99.0.0/16", disable_bgp_export=True)
NESTED_NOEXPORT = KernelPool("10.244.200.0/24", disable_bgp_export=True)
BLOCK = "10.244.1.0/26"

CASES = [
    ("empty block is still announced", [], [BLOCK], [POOL], (BLOCK,)),
    ("workload inside a local block is covered by the block", ["10.244.1.5/32"], [BLOCK], [POOL], (BLOCK,)),
    (
        "borrowed IP outside the local blocks is announced",
        ["10.244.7.9/32", "10.244.1.5/32"],
        [BLOCK],
        [POOL],
        (BLOCK, "10.244.7.9/32"),
    ),
    ("workload outside every pool is not announced", ["192.168.0.5/32"], [], [POOL], ()),
    ("workload in a disableBGPExport pool is not announced", ["10.99.0.5/32"], [], [POOL, NOEXPORT], ()),
    ("block in a disableBGPExport pool is not announced", [], ["10.99.3.0/26"], [NOEXPORT], ()),
    (
        "disableBGPExport wins over an enclosing exportable pool",
        ["10.244.200.7/32", "10.244.201.7/32"],
        [],
        [POOL, NESTED_NOEXPORT],
        ("10.244.201.7/32",),
    ),
    (
        "block outside every pool is announced (BIRD's calico_aggr runs before the pool rules)",
        [],
        ["172.20.0.0/26"],
        [POOL],
        ("172.20.0.0/26",),
    ),
    (
        "numeric order, IPv4 before IPv6, duplicates collapse",
        ["10.244.9.10/32", "10.244.9.9/32", "fd00:244::a/128", "10.244.9.9/32"],
        [],
        [POOL, POOL6],
        ("10.244.9.9/32", "10.244.9.10/32", "fd00:244::a/128"),
    ),
    (
        "IPv6 borrowed /128 outside the local v6 block",
        ["fd00:244::1:5/128", "fd00:244::5/128"],
        ["fd00:244::/122"],
        [POOL6],
        ("fd00:244::/122", "fd00:244::1:5/128"),
    ),
    ("no pools: only blocks", ["10.244.7.9/32"], [BLOCK], [], (BLOCK,)),
]


@pytest.mark.parametrize(
    ("workloads", "blocks", "pools", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_local_exports(workloads, blocks, pools, expected):
    assert local_exports(workloads, blocks, pools) == expected


def test_same_input_in_any_order_gives_the_same_tuple():
    workloads = [f"10.244.{i % 7}.{i}/32" for i in range(1, 200)]
    forward = local_exports(workloads, [BLOCK], [POOL])
    assert local_exports(reversed(workloads), [BLOCK], [POOL]) == forward
    assert "10.244.1.1/32" not in forward and "10.244.2.2/32" in forward
