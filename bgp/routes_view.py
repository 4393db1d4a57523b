"""`calico-bgp routes`: the Loc-RIB as a report (built in the daemon) and as a table (printed by the CLI).

Stage: observability of the route distributor. Pure: reads the speaker's tables and the route table's
verdicts, changes nothing.

Complicating factors: "not in the kernel" has several honest answers (a foreign route holds the
destination, the kernel refused it, Felix or kube-proxy own it, we originate it, the import guard refused
it), and the report says which. A route the import guard refused is in no Loc-RIB, but it is listed, with
the path it would have had, so that the refusal is visible where the route is looked for.
"""

from __future__ import annotations

from bgp.llgr import is_llgr_stale
from bgp.policy import net, within
from bgp.rib import best_of, multipath_of, select
from bgp.status import render_table


def loc_rib_report(
    *, loc, local, sent, rib, table, intent, policy, unknown, guard_refused=None
) -> list[dict]:
    desired = getattr(table, "desired", {})
    conflicts = getattr(table, "conflicts", {})
    refused = getattr(table, "refused", {})
    failures = getattr(table, "failures", {})
    guard_refused = guard_refused or {}  # prefix -> bgp.import_guard.Refusal
    rows = []
    for prefix in sorted(set(loc) | set(local) | set(guard_refused)):
        row: dict = {"prefix": prefix}
        row["announced_to"] = sorted(a for a, out in sent.items() if prefix in out and out[prefix] != unknown)
        if prefix in local:
            row.update(origin="local", best=None, multipath=[])
        else:
            entry = loc.get(prefix)
            best, multipath = (
                select(rib.paths(prefix)) if entry is None else (best_of(entry), multipath_of(entry))
            )
            if best is None:
                continue  # refused, then withdrawn since the last selection
            a = best.attributes
            row.update(
                origin="bgp",
                best={
                    "nexthop": best.nexthop,
                    "learned_from": best.peer,
                    "as_path": list(a.as_path),
                    "local_pref": a.local_pref,
                    "communities": [":".join(map(str, c)) for c in (*a.communities, *a.large_communities)],
                    "stale": rib.is_stale(best.peer, prefix),
                    "llgr_stale": is_llgr_stale(a.communities),
                },
                multipath=[p.nexthop for p in multipath],
            )
        if prefix in guard_refused and prefix not in local:
            refusal = guard_refused[prefix]
            row["refused"] = refusal.reason
            row["kernel"] = {"installed": False, "why": f"refused by the import guard: {refusal.detail}"}
        elif prefix in desired:
            why = conflicts.get(prefix) or failures.get(prefix, "")
            row["kernel"] = {"installed": not why, "why": why}
        else:
            why = refused.get(prefix) or _not_installed(prefix, local, intent, policy)
            row["kernel"] = {"installed": False, "why": why}
        rows.append(row)
    return rows


def _not_installed(prefix: str, local, intent, policy) -> str:
    if prefix in local:
        return "originated here (workload route or service range)"
    if intent is None:
        return "no configuration"
    if prefix in policy.service_ranges():
        return "service range: kube-proxy handles it"
    for pool in intent.pools:
        if pool.vxlan_mode != "Never" and within(net(prefix), net(pool.cidr)):
            return "VXLAN pool: Felix programs it"
    return "not programmed by policy"


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
            if best.get("llgr_stale"):
                source += " (LLGR-stale)"
            elif best.get("stale"):
                source += " (stale)"
        kernel = route.get("kernel", {})
        state = "installed" if kernel.get("installed") else f"not installed: {kernel.get('why', '')}"
        rows.append([route["prefix"], via, source, as_path or "-", state])
    if not rows:
        return f"No routes on {report.get('node', 'this node')}.\n"
    return render_table(["Prefix", "Next hop", "Learned from", "AS path", "Kernel"], rows) + "\n"
