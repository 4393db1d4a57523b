"""What the campaign's 3-node mesh lab (``lab up mesh``) should look like, and how far a running one is off.

Stage: test support for tests/fault: the expected sessions and routes, from the topology and the blocks the
test itself assigned in etcd (never from the daemons' own view), and a comparison against each node's
kernel and RIB.

Complicating factors: a node's own block is in its kernel as a blackhole (``proto bird``) and in its RIB as a
local route; another node's block is a learned route via that node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fault import probe
from labs import topology

TOPO = topology.build_mesh(3)
NODES = {n.name: n.address for n in TOPO.nodes}
BLOCKS = {n.name: n.block for n in TOPO.nodes}
PEERS = {n.name: TOPO.expected_peers(n.name) for n in TOPO.nodes}


def sessions_report(lab: str, expected: Mapping[str, Iterable[str]] = PEERS) -> str:
    """For failure messages: each node's sessions that are not Established, with their status info."""
    parts = []
    for node, peers in expected.items():
        report = probe.status(lab, node)
        if report is None:
            parts.append(f"{node}: no status answer")
            continue
        info = {p["address"]: p.get("info", "") for p in report.get("peers", [])}
        down = [f"{a} ({info.get(a, 'missing')})" for a in peers
                if not str(info.get(a, "")).startswith("Established")]
        if down:
            parts.append(f"{node}: {', '.join(down)}")
    return "; ".join(parts) or "all Established"


def route_mismatch(
    lab: str, blocks: Mapping[str, Iterable[str]], nodes: Mapping[str, str] = NODES, direct: bool = True
) -> dict[str, dict[str, list[str]]]:
    """node -> {"kernel_missing", "kernel_extra", "rib_missing", "rib_extra", "learned_wrong_peer"} where
    non-empty, comparing each node's kernel and RIB against the blocks every node holds (node -> blocks).
    ``direct``: every block is learned from its owner (a mesh; not through reflectors)."""
    off: dict[str, dict[str, list[str]]] = {}
    for node in nodes:
        want = {b for other, bs in blocks.items() for b in bs}
        found: dict[str, list[str]] = {}
        kernel = probe.kernel(lab, node)
        found["kernel_missing"] = sorted(want - kernel)
        found["kernel_extra"] = sorted(kernel - want)
        table = probe.rib(lab, node)
        if table is None:
            found["rib_missing"] = ["(no answer)"]
        else:
            found["rib_missing"] = sorted(want - set(table))
            found["rib_extra"] = sorted(set(table) - want)
            found["learned_wrong_peer"] = sorted(
                prefix
                for other, bs in blocks.items()
                if direct and other != node
                for prefix in bs
                if prefix in table and (table[prefix].get("best") or {}).get("learned_from") != nodes[other]
            )
        found = {k: v for k, v in found.items() if v}
        if found:
            off[node] = found
    return off


def count(off: Mapping[str, Mapping[str, list[str]]], *kinds: str) -> int:
    return sum(len(v) for per in off.values() for k, v in per.items() if not kinds or k in kinds)


def base_blocks() -> dict[str, set[str]]:
    return {node: {block} for node, block in BLOCKS.items()}
