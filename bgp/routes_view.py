"""The text of `calico-bgp routes`: the Loc-RIB as a table.

Stage: observability of the route distributor. Pure: renders the report the daemon serves.
"""

from __future__ import annotations

from bgp.status import render_table


def render_routes(report: dict) -> str:
    rows = []
    for route in report.get("routes", []):
        best = route.get("best") or {}
        if route["origin"] == "local":
            via, source, as_path = "local", "-", ""
        else:
            via = ", ".join(route.get("multipath") or [best.get("nexthop", "")])
            source = best.get("learned_from", "")
            as_path = " ".join(str(a) for a in best.get("as_path", []))
            if best.get("stale"):
                source += " (stale)"
        kernel = route.get("kernel", {})
        state = "installed" if kernel.get("installed") else f"not installed: {kernel.get('why', '')}"
        rows.append([route["prefix"], via, source, as_path or "-", state])
    if not rows:
        return f"No routes on {report.get('node', 'this node')}.\n"
    return render_table(["Prefix", "Next hop", "Learned from", "AS path", "Kernel"], rows) + "\n"
