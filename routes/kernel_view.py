"""KernelView and plan_writes: what one kernel table holds, and what to write to make it what we want.

Stage: the two halves of ``routes.table.RouteTable`` that do not need its event loop, its metrics or its
retry policy. The table keeps the desired side (admission, hold of deletes, back-off) and drives these.

Owns:
- ``KernelView``: our routes in the table by destination and metric (``programmed``), the foreign routes
  sitting on the same destinations (``foreign``, described for the conflict report), and the count of
  ours kept as it changes (a gauge is set from it on every apply, and 100k routes are too many to count
  each time). It is rebuilt from a dump (``load``) and kept up to date from acks and notifications.
- ``plan_writes``: for each destination touched since the last apply, the kernel writes that bring the
  view to the desired route. Pure but for the held and adopted sets it is given, which it updates.

Complicating factors:
- The kernel keys a route by (table, dst, tos, metric), so one destination can hold several routes of
  ours (an old metric left behind by a change); the plan deletes every metric but the wanted one.
- ``plan_writes`` is the hot path of a 100k-route apply: plain local lookups, no per-route allocations.
- Memory: 100k destinations on each side (ours on a node that learns, Felix's on one that exports) are
  held as ``routes.compact.One`` per destination, not a dict, and a foreign route is kept as its interned
  description (a node's workload routes share a few), not as the route. A dump that agrees with the view
  leaves the view's own objects in place (``load``), so a read-back after a burst allocates nothing lasting.
- Destination exclusivity: a destination that holds any foreign route is yielded (ours there is deleted,
  nothing is written); see the ownership rules in ``routes.table``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from routes.compact import One, pop, put
from routes.model import Route
from routes.ownership import describe, same_route


class KernelView:
    def __init__(self) -> None:
        # dst -> metric -> route: a ``One`` per destination with one metric (nearly all), else a dict.
        self.programmed: dict[str, Mapping[int, Route]] = {}
        # dst -> metric -> description, the same way; equal descriptions share one string (interned).
        self.foreign: dict[str, Mapping[int, str]] = {}
        self.installed = 0  # routes in programmed

    def load(
        self, routes: Iterable[Route], table: int, ours: Callable[[Route], bool], *, compare: bool = True
    ) -> int:
        """Replace the view with a dump of ``table``; returns how many routes of ours differ from the
        view it replaces (added, removed or changed behind our back), 0 without ``compare``."""
        programmed: dict[str, Mapping[int, Route]] = {}
        foreign: dict[str, Mapping[int, str]] = {}
        previous = self.programmed
        for route in routes:
            if route.table != table:
                continue
            if ours(route):
                held = previous.get(route.dst)
                kept = held.get(route.priority) if held is not None else None
                if kept is not None and same_route(kept, route):
                    # What we hold already says this: keep our objects and let the dump's go. Replacing
                    # 100k of them scatters new ones among the freed, and CPython cannot return that memory.
                    if type(held) is One and route.dst not in programmed:
                        programmed[kept.dst] = held
                        continue
                    route = kept
                put(programmed, route.dst, route.priority, route)
            else:
                put(foreign, route.dst, route.priority, sys.intern(describe(route)))
        drift = self._drift(programmed) if compare else 0
        self.programmed, self.foreign = programmed, foreign
        self.installed = sum(len(v) for v in programmed.values())
        return drift

    def _drift(self, programmed: Mapping[str, Mapping[int, Route]]) -> int:
        drift = 0
        for dst in programmed.keys() | self.programmed.keys():
            mine, kernel = self.programmed.get(dst, {}), programmed.get(dst, {})
            for prio in mine.keys() | kernel.keys():
                a, b = mine.get(prio), kernel.get(prio)
                if a is None or b is None or not same_route(a, b):
                    drift += 1
        return drift

    def record(self, route: Route) -> None:
        """A write of ours went through."""
        programmed = self.programmed
        if route.dst not in programmed:  # the common case, one route per destination, without put()
            programmed[route.dst] = One(route.priority, route)
            self.installed += 1
        else:
            self.installed += put(programmed, route.dst, route.priority, route)

    def forget(self, route: Route) -> None:
        """Ours at ``route``'s key is gone (deleted, or overwritten by someone else)."""
        if pop(self.programmed, route.dst, route.priority) is not None:
            self.installed -= 1

    def add_foreign(self, dst: str, priority: int, what: str) -> None:
        put(self.foreign, dst, priority, sys.intern(what))

    def remove_foreign(self, dst: str, priority: int) -> None:
        pop(self.foreign, dst, priority)

    def conflicts(self, desired: Mapping[str, Route]) -> dict[str, str]:
        """Desired destinations a foreign route holds -> what holds them."""
        # Iterate the foreign side: a few hundred workload and connected routes, against up to 100k ours.
        return {
            dst: "; ".join(held[p] for p in sorted(held))
            for dst, held in self.foreign.items()
            if dst in desired
        }


@dataclass
class WritePlan:
    creates: list[Route] = field(default_factory=list)  # new to us: created exclusively (EEXIST if taken)
    replaces: list[Route] = field(default_factory=list)  # held by us: replaced in place
    deletes: list[Route] = field(default_factory=list)
    waiting: set[str] = field(default_factory=set)  # back-off not over: stay dirty
    settled: list[str] = field(default_factory=list)  # failed before, and nothing is left to do for them


def plan_writes(
    dirty: Iterable[str],
    now: float,
    desired: Mapping[str, Route],
    view: KernelView,
    retries: Mapping[str, tuple[float, float]],
    failures: Mapping[str, str],
    hold: bool,
    held: set[str],
    adopted: set[str],
) -> WritePlan:
    """The writes for the ``dirty`` destinations. An undesired destination of ours whose route was
    adopted at start is not deleted while ``hold`` is on: it goes into ``held``. A desired destination
    leaves ``held`` and ``adopted`` (BGP has spoken about it in this run)."""
    plan = WritePlan()
    creates, replaces, deletes, waiting, settled = (
        plan.creates, plan.replaces, plan.deletes, plan.waiting, plan.settled
    )
    programmed, foreign = view.programmed, view.foreign
    for dst in dirty:
        retry = retries.get(dst)
        if retry is not None and retry[0] > now:
            waiting.add(dst)
            continue
        want = desired.get(dst)
        ours = programmed.get(dst)
        if want is None or dst in foreign:  # undesired, or yielded to the foreign owner
            if ours and not (hold and dst in adopted):
                deletes.extend(ours.values())
                continue
            if ours:
                held.add(dst)
            if dst in failures or retry is not None:
                settled.append(dst)
            continue
        if held:
            held.discard(dst)
        if adopted:
            adopted.discard(dst)
        if not ours:
            creates.append(want)
            continue
        have = ours.get(want.priority)
        if have is None:
            creates.append(want)
        elif not same_route(want, have):
            replaces.append(want)
        elif len(ours) == 1 and (dst in failures or retry is not None):
            settled.append(dst)  # the kernel holds what we want after all (a change reverted)
        if len(ours) > 1 or have is None:
            deletes.extend(r for p, r in ours.items() if p != want.priority)  # the metric moved
    return plan
