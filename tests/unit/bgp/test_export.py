"""local_exports and ExportRules: Calico's export policy for locally originated prefixes, as a table and
against a reference on random cases."""

from __future__ import annotations

import random

import pytest

from bgp.export import ExportRules, local_exports
from routes.pools import KernelPool, network


def inside(net, outer) -> bool:
    """The reference's containment test, on ipaddress networks (what the rules once used)."""
    return net.version == outer.version and net.subnet_of(outer)

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


def reference_exports(workloads, blocks, pools):
    """The policy written as directly as docs/calico-model.md states it, with ``ipaddress`` containment."""
    suppressed = [p.network for p in pools if p.disable_bgp_export]
    exportable = [p.network for p in pools if not p.disable_bgp_export]
    block_nets = {network(b) for b in blocks}
    out = {b for b in block_nets if not any(inside(b, s) for s in suppressed)}
    for prefix in workloads:
        net = network(prefix)
        if any(inside(net, b) for b in block_nets) or any(inside(net, s) for s in suppressed):
            continue
        if any(inside(net, e) for e in exportable):
            out.add(net)
    return {n.with_prefixlen for n in out}


def random_case(rng: random.Random):
    """Prefixes drawn from a small space so that blocks, pools and workloads overlap in every way."""

    def v4(length):
        return str(network(f"10.{rng.randrange(4)}.{rng.randrange(4)}.{rng.randrange(8)}/{length}"))

    def v6(length):
        return str(network(f"fd00:{rng.randrange(4)}::{rng.randrange(4)}:{rng.randrange(8)}/{length}"))

    pools = [
        KernelPool(v4(rng.choice((8, 12, 16, 24))), disable_bgp_export=rng.random() < 0.3) for _ in range(3)
    ] + [KernelPool(v6(rng.choice((32, 64, 112))), disable_bgp_export=rng.random() < 0.3) for _ in range(2)]
    blocks = [v4(rng.choice((24, 26, 30, 32))) for _ in range(3)] + [v6(rng.choice((112, 122, 128)))]
    workloads = [v4(32) for _ in range(40)] + [v6(128) for _ in range(20)] + blocks[:1]
    return workloads, blocks, pools


@pytest.mark.parametrize("seed", range(40))
def test_export_rules_agree_with_the_reference_policy(seed):
    workloads, blocks, pools = random_case(random.Random(seed))
    expected = reference_exports(workloads, blocks, pools)
    rules = ExportRules(blocks, pools)
    announced = {p for p in workloads if rules.announces(p)}
    assert rules.blocks | announced == expected
    assert rules.blocks == reference_exports([], blocks, pools)
    assert set(local_exports(workloads, blocks, pools)) == expected
    assert rules.select(workloads) == local_exports(workloads, blocks, pools)


def test_random_cases_cover_every_rule():
    """The randomized cases reach each branch of the policy, so the agreement above means something."""
    seen = set()
    for seed in range(40):
        workloads, blocks, pools = random_case(random.Random(seed))
        rules = ExportRules(blocks, pools)
        for p in workloads:
            net = network(p)
            if any(inside(net, pool.network) for pool in pools if pool.disable_bgp_export):
                seen.add("suppressed")
            elif any(inside(net, network(b)) for b in blocks):
                seen.add("in a block")
            seen.add(("announced", rules.announces(p)))
        for b in blocks:
            if any(inside(network(b), pool.network) for pool in pools if pool.disable_bgp_export):
                seen.add("block suppressed")
    assert seen >= {"suppressed", "in a block", ("announced", True), ("announced", False), "block suppressed"}
