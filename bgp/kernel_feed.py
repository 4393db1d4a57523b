"""The kernel feed: the Loc-RIB's selected paths as desired kernel routes, handed to the route table.

Stage: between the route distributor's Loc-RIB (``bgp.speaker``) and ``routes.table.RouteTable``; the kernel
programming policy itself is ``routes.resolve.kernel_routes``'s.

Owns: the intent's kernel settings, worked out once per intent (the pools as ``KernelPool`` values, local
blocks, the node's subnet, the service ranges rejected), and what the table is owed at the next flush: a
rebuild of every desired route, an update of the prefixes selection touched, or only an ``apply()``.

Complicating factors:
- Kernel-side events need no BGP work. A route of ours removed or overwritten by someone else, a device
  back up, deletes released after the start-up hold: the table already holds the desired routes, so
  ``repair`` owes only an ``apply()`` (a refused write due again does not even come here: the table retries
  it itself, ``RouteTable.retry_due``). A change in how next hops resolve (``routes.recursive``) changes the
  desired routes but not the selection: ``rebuild`` recomputes them from the Loc-RIB as it stands. Neither
  re-runs best-path selection or any peer's Adj-RIB-Out diff.
- ``routes.recursive`` forgets the next hops it was asked about whenever it expects a full recomputation
  (a dump, a relevant change): a rebuild must follow each of those, or later changes could go unnoticed.
- Between rebuilds the feed is incremental: only the prefixes selection touched are recomputed, so a burst
  of 100k routes costs one pass, not one per change.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Protocol

from bgp.rib import Path, Selected, best_of
from confgen.intent import NodeIntent
from routes.model import Route
from routes.resolve import KernelPool, Learned, Resolve, kernel_routes

LocRib = Mapping[str, Selected]  # prefix -> the best path, or the multipath set (``bgp.rib.Selected``)

# What a flush asked of the table, for FlushWork: nothing, apply() only, an update of some prefixes, or a
# rebuild of every desired route.
IDLE, APPLIED, UPDATED, REBUILT = "", "applied", "updated", "rebuilt"


class DesiredRoutes(Protocol):
    """The part of ``routes.table.RouteTable`` the feed drives (``routes.testing.FakeRouteTable`` too)."""

    def set_desired(self, routes: Iterable[Route]) -> None: ...

    def update(self, upserts: Mapping[str, Route], removes: Iterable[str]) -> None: ...

    async def apply(self) -> object: ...


def kernel_pools(intent: NodeIntent) -> tuple[KernelPool, ...]:
    return tuple(
        KernelPool(
            cidr=p.cidr,
            ipip_mode=p.ipip_mode,
            vxlan_mode=p.vxlan_mode,
            disable_bgp_export=p.disable_bgp_export,
        )
        for p in intent.pools
    )


def learned(loc: LocRib, prefixes: Iterable[str]) -> dict[str, Learned]:
    """The kernel's view of a selection: the multipath set's next hops and the best path's local-pref.
    Prefixes with the same next hop and local-pref share one ``Learned`` (a burst has a handful of them)."""
    out = {}
    shared: dict[tuple[str, int | None], Learned] = {}  # for the common single-path selection
    for prefix in prefixes:
        selected = loc.get(prefix)
        if selected is None:
            continue
        best = best_of(selected)
        pref = best.attributes.local_pref  # local-pref -> metric
        if isinstance(selected, Path) or len(selected) == 1:
            key = (best.nexthop, pref)
            view = shared.get(key)
            if view is None:
                view = shared[key] = Learned((key[0],), pref)
            out[prefix] = view
        else:
            out[prefix] = Learned(tuple(sorted({p.nexthop for p in selected})), pref)
    return out


class KernelFeed:
    def __init__(self, table: DesiredRoutes, resolve: Resolve | None = None) -> None:
        self.table = table
        self._resolve = resolve
        self._intent: NodeIntent | None = None
        self._pools: tuple[KernelPool, ...] = ()
        self._rejects: tuple[str, ...] = ()
        self._rebuild = True
        self._apply = False
        self.acked: tuple[Route, ...] = ()  # what the kernel acknowledged at the last flush

    def set_intent(self, intent: NodeIntent, pools: Sequence[KernelPool], rejects: Sequence[str]) -> None:
        """The intent's settings (``pools`` from ``kernel_pools``; ``rejects``: the service ranges)."""
        self._intent = intent
        self._pools = tuple(pools)
        self._rejects = tuple(rejects)
        self._rebuild = True

    def rebuild(self) -> None:
        """The desired routes may differ for reasons outside the selection: compute them all again."""
        self._rebuild = True

    def repair(self) -> None:
        """The table has work the desired routes already describe: apply() at the next flush."""
        self._apply = True

    async def flush(self, loc: LocRib, changed: Collection[str]) -> str:
        """Bring the table up to date with ``loc``, whose ``changed`` prefixes were just selected again.
        Returns what the table was asked for (IDLE, APPLIED, UPDATED, REBUILT)."""
        self.acked = ()
        if self._intent is None:
            return IDLE
        rebuild, repair = self._rebuild, self._apply
        self._rebuild = self._apply = False
        if rebuild:
            self.table.set_desired(self._routes(learned(loc, loc)))
            done = REBUILT
        elif changed:
            routes = {r.dst: r for r in self._routes(learned(loc, changed))}
            self.table.update(routes, (p for p in changed if p not in routes))
            done = UPDATED
        elif repair:
            done = APPLIED
        else:
            return IDLE
        result = await self.table.apply()
        # routes.table.ApplyResult.acked; a table that reports nothing (a fake) acknowledges nothing.
        self.acked = getattr(result, "acked", ())
        return done

    def acked_prefixes(self) -> set[str]:
        """The destinations the kernel acknowledged writing or deleting at the last flush."""
        return {route.dst for route in self.acked}

    def _routes(self, selected: Mapping[str, Learned]) -> list[Route]:
        intent = self._intent
        assert intent is not None
        return kernel_routes(
            selected,
            intent.local_blocks,
            self._pools,
            intent.ipv4_network or "",
            reject_cidrs=self._rejects,
            program_cluster_routes=intent.program_cluster_routes,
            resolve=self._resolve,
        )
