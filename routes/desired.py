"""DesiredRoutes: the routes a ``routes.table.RouteTable`` is asked to hold, admitted and in kernel form.

Stage: the front of the kernel reconciler. The daemon's kernel feed hands routes to the table
(``set_desired`` / ``update``); the table passes them through here and marks what changed dirty.

Owns: the desired map (dst -> Route) and the refusals (dst -> why). Admission is where the ownership rules
meet the input (``routes.ownership``): a route for another table, for a table that is Felix's or
reserved, or with a next hop on a Felix device is refused with a reason, logged once per reason, and
never reaches the kernel. An admitted route is stored in the form the kernel reads back
(``routes.model.kernel_form``) with our protocol, so comparing it with a read-back needs no translation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace

from routes.model import Route, kernel_form
from routes.ownership import is_felix_device, table_refusal

log = logging.getLogger(__name__)


class DesiredRoutes:
    def __init__(self, table: int, proto: int) -> None:
        self.table = table
        self.proto = proto
        self.routes: dict[str, Route] = {}
        self.refused: dict[str, str] = {}

    def replace_all(self, routes: Iterable[Route]) -> set[str]:
        """Replace the whole set; returns the destinations whose desired route changed, came or went."""
        new: dict[str, Route] = {}
        refused: dict[str, str] = {}
        for route in routes:
            admitted, reason = self.admit(route)
            if admitted is not None:
                new[admitted.dst] = admitted
            else:
                refused[route.dst] = reason
        self._log_refusals(refused)
        changed = {d for d in new.keys() | self.routes.keys() if new.get(d) != self.routes.get(d)}
        self.routes, self.refused = new, refused
        return changed

    def update(
        self, upserts: Mapping[str, Route] | Iterable[Route], removes: Iterable[str]
    ) -> tuple[list[str], list[str]]:
        """Add or replace routes, remove destinations. Returns (changed, gone): the destinations whose
        desired route is new or different, and those that stopped being desired (removed, or refused now)."""
        desired = self.routes
        changed: list[str] = []
        gone: list[str] = []
        refused: dict[str, str] = {}
        for dst in removes:
            if desired.pop(dst, None) is not None:
                gone.append(dst)
            self.refused.pop(dst, None)
        for route in upserts.values() if isinstance(upserts, Mapping) else upserts:
            admitted, reason = self.admit(route)
            if admitted is None:
                refused[route.dst] = reason
                if desired.pop(route.dst, None) is not None:
                    gone.append(route.dst)
            else:
                self.refused.pop(route.dst, None)
                if desired.get(route.dst) != admitted:
                    desired[route.dst] = admitted
                    changed.append(route.dst)
        self._log_refusals(refused)
        self.refused.update(refused)
        return changed, gone

    def admit(self, route: Route) -> tuple[Route | None, str]:
        """``route`` as the table will hold it, or None and the reason it is refused."""
        reason = table_refusal(route.table) or (
            f"belongs to table {route.table}, not {self.table}" if route.table != self.table else ""
        )
        felix = sorted(h.ifname for h in route.nexthops if is_felix_device(h.ifname))
        if not reason and felix:
            reason = f"next hop on Felix's device {felix[0]}"
        if reason:
            return None, reason
        return kernel_form(route if route.proto == self.proto else replace(route, proto=self.proto)), ""

    def _log_refusals(self, refused: Mapping[str, str]) -> None:
        for dst, reason in refused.items():
            if self.refused.get(dst) != reason:
                log.error("refusing kernel route %s: %s", dst, reason)
