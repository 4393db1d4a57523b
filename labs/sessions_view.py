"""Every member's view of its BGP sessions in a running lab, for ``lab show -o dot`` (``labs.dot``).

Stage: runtime reads on a lab (beside ``labs.ops``).

Owns: asking each node's daemon (its control socket, as ``calico-bgp status`` does) and each FRR router
(``show bgp summary json``) for its sessions, and reading every router's addresses from its namespace.

Complicating factors:
- A member that cannot be asked (a stopped daemon, an external router run by a test) reports nothing:
  its sessions are drawn from what the other ends say, and its vertex says it was not asked.
- The daemon's JSON gives BIRD's coarse ``state`` (up/start) and ``info``, which starts with the BGP
  state (Established, Active, OpenSent, ...): the BGP state is what the picture shows.
"""

from __future__ import annotations

import json
from pathlib import Path

from bgp.status import DaemonNotRunning, query
from labs import netns, routers
from labs.ops import load
from labs.state import LabState


def node_reports(state: LabState, timeout: float = 5.0) -> dict[str, dict[str, str]]:
    """node -> {peer address: BGP state}, for every node whose daemon answers."""
    reports = {}
    for node in state.nodes:
        try:
            status = query(Path(node.run_dir) / "ctl.sock", "status", timeout=timeout)
        except (DaemonNotRunning, OSError, ValueError):
            continue
        reports[node.name] = {
            peer["address"]: (peer.get("info") or peer.get("state") or "unknown").split()[0]
            for peer in status.get("peers", [])
        }
    return reports


def router_reports(state: LabState) -> dict[str, dict[str, str]]:
    """router -> {neighbour address: BGP state}, for the routers the lab runs FRR on."""
    reports = {}
    for router in state.routers:
        if router.kind != "frr" or not router.pathspace:
            continue
        try:
            reports[router.name] = routers.bgp_sessions(router.pathspace)
        except (routers.RouterError, OSError, ValueError):
            continue
    return reports


def router_addresses(state: LabState) -> dict[str, list[str]]:
    """router -> every global address of its ports."""
    found = {}
    for router in state.routers:
        out = netns.ip(router.netns, "-j", "address", "show", check=False).stdout or "[]"
        found[router.name] = [
            a["local"]
            for link in json.loads(out)
            for a in link.get("addr_info", [])
            if a.get("scope") == "global" and "local" in a
        ]
    return found


def gather(lab: str) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """(every member's sessions, every router's addresses) of the running lab."""
    state = load(lab)
    return node_reports(state) | router_reports(state), router_addresses(state)
