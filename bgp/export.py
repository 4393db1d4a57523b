"""ExportRules and local_exports: which locally originated prefixes this node announces (pure).

Stage: BGP export policy, between ``routes.monitor`` (Felix's workload /32s and /128s seen in the kernel)
plus the node's intent (confirmed local blocks, pools), and the announcer (``bgp.speaker``), which diffs the
result against what it has announced. It decides what BGP says, not what the kernel holds, so it lives in
``bgp``; it reads pools in the routes package's own type (``routes.pools.KernelPool``).

Owns: Calico's export policy for local routes (docs/calico-model.md), evaluated in BIRD's order:
1. a prefix inside any ``disable_bgp_export`` pool is never announced, not even a block;
2. each confirmed local block is announced, even with no workload in it (BIRD's static blackhole), and the
   workload host routes inside it are suppressed (``calico_aggr``);
3. a workload host route outside every local block (an IP borrowed from another node's block) is
   announced when it lies inside an exportable pool; anything outside every pool is not.

Complicating factors:
- The speaker asks about one workload prefix at a time (a pod came or went next to 100k others), so the
  rules are prepared once per intent (``ExportRules``) and answer per prefix; ``local_exports`` is the
  whole-set answer built on the same rules.
- CIDRs arrive as strings from two sources (kernel and datastore) and are compared as ``ipaddress``
  networks; blocks and pools are parsed once, into integer ranges, because ``subnet_of`` on ``ipaddress``
  objects costs microseconds per pair. The output is sorted numerically (family, address, length), not as
  text, so equal inputs always give the same tuple and the announcer's diff stays quiet.
"""

from __future__ import annotations

from collections.abc import Iterable

from routes.pools import KernelPool, Span, network, parse_prefix, sort_key, span, within_any


class ExportRules:
    """The export policy for one (local blocks, pools) pair, asked one workload prefix at a time."""

    def __init__(self, local_blocks: Iterable[str], pools: Iterable[KernelPool]) -> None:
        pools = tuple(pools)
        self._suppressed = tuple(span(p.network) for p in pools if p.disable_bgp_export)
        exportable = tuple(span(p.network) for p in pools if not p.disable_bgp_export)
        blocks = {network(b) for b in local_blocks}
        # Rules 1-3 as one ordered pass: the first span that holds a prefix decides it (suppressed pools,
        # then local blocks, which are announced whole, then the exportable pools).
        self._verdicts = tuple(
            [(*s, False) for s in self._suppressed]
            + [(*span(b), False) for b in blocks]
            + [(*s, True) for s in exportable]
        )
        announced = [b for b in blocks if not within_any(span(b), self._suppressed)]
        self._announced_blocks = tuple(announced)
        # The local blocks announced (rule 1 and 2), as canonical CIDR strings.
        self.blocks: frozenset[str] = frozenset(b.with_prefixlen for b in announced)

    def announces(self, prefix: str) -> bool:
        """Whether the workload host route ``prefix`` is announced on its own (rules 1 and 3; a prefix
        inside a local block is not: the block is)."""
        _, version, first, _, last = parse_prefix(prefix)
        return self._announces((version, first, last))

    def _announces(self, s: Span) -> bool:
        version, first, last = s
        for v, lo, hi, verdict in self._verdicts:  # noqa: SIM110 (one pass per route, 100k in a burst)
            if v == version and lo <= first and last <= hi:
                return verdict
        return False

    def select(self, workload_prefixes: Iterable[str]) -> tuple[str, ...]:
        """Everything announced for these workloads: the blocks and the workloads announced on their own."""
        out = set(self._announced_blocks)
        for prefix in workload_prefixes:
            net = network(prefix)
            if self._announces(span(net)):
                out.add(net)
        return tuple(n.with_prefixlen for n in sorted(out, key=sort_key))


def local_exports(
    workload_prefixes: Iterable[str], local_blocks: Iterable[str], pools: Iterable[KernelPool]
) -> tuple[str, ...]:
    return ExportRules(local_blocks, pools).select(workload_prefixes)
