"""`calico-bgp lab show -o dot`: a lab's topology and BGP sessions as a Graphviz graph.

Stage: presentation of a running lab (``labs.cli`` prints it; ``labs.sessions_view`` gathers the inputs).
Pure: no I/O, so the drawing is tested on tables.

Owns: the mapping from ``lab show``'s description and every member's view of its sessions to DOT: one
vertex per node (route reflectors drawn apart), per router (ToRs, FRR) and per peer address that is no
member of the lab, and one edge per BGP session, coloured by its state.

Complicating factors:
- A session is seen from both ends, and the ends may disagree for a moment (one side Established, the
  other already Idle). One edge per session: it is green only when every end that reports it says
  Established, else it carries the worst state seen (a daemon that cannot be asked reports nothing).
- Peers are reported by address. Addresses are mapped back to members (nodes: their IPv4/IPv6; routers: every
  address of every port); a session to an address of no member is drawn to a vertex of that address.
- Names and states come from the lab (and from FRR): every string is quoted and escaped for DOT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ESTABLISHED = "Established"
COLOURS = {ESTABLISHED: "darkgreen"}
DOWN_COLOUR = "red"
REFLECTOR_LABEL = "route-reflector"
# The order in which states are "worse" when the two ends disagree: the earlier, the further from up.
_PROGRESS = ("Idle", "Connect", "Active", "Passive", "OpenSent", "OpenConfirm", ESTABLISHED)


@dataclass(frozen=True)
class Session:
    a: str  # vertex ids, a < b
    b: str
    state: str
    seen_by: tuple[str, ...]  # the members whose reports it comes from

    @property
    def up(self) -> bool:
        return self.state == ESTABLISHED


def quote(text: object) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _address(cidr: str) -> str:
    return cidr.split("/", 1)[0]


def _worse(a: str, b: str) -> str:
    rank = {state: i for i, state in enumerate(_PROGRESS)}
    return a if rank.get(a, -1) <= rank.get(b, -1) else b


def owners(info: Mapping, router_addresses: Mapping[str, list[str]]) -> dict[str, str]:
    """address -> the member (node or router name) it belongs to."""
    found = {}
    for node in info["nodes"]:
        for key in ("ipv4", "ipv6"):
            if node.get(key):
                found[_address(node[key])] = node["name"]
    for router, addresses in router_addresses.items():
        for address in addresses:
            found[_address(address)] = router
    return found


def sessions(
    info: Mapping, reports: Mapping[str, Mapping[str, str]], router_addresses: Mapping[str, list[str]]
) -> list[Session]:
    """One Session per pair of ends; ``reports``: member -> {peer address: BGP state}, as it sees them."""
    owner = owners(info, router_addresses)
    merged: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
    for member, peers in reports.items():
        for address, state in peers.items():
            other = owner.get(address, address)
            key = (min(member, other), max(member, other))
            if key in merged:
                old, seen = merged[key]
                merged[key] = (_worse(old, state), tuple(sorted({*seen, member})))
            else:
                merged[key] = (state, (member,))
    return [Session(a, b, state, seen) for (a, b), (state, seen) in sorted(merged.items())]


def render(
    info: Mapping, reports: Mapping[str, Mapping[str, str]], router_addresses: Mapping[str, list[str]]
) -> str:
    """The DOT text: ``info`` is ``lab show``'s description, ``reports`` every member's sessions (members
    whose daemon could not be asked are left out), ``router_addresses`` every router's addresses."""
    lines = [f"graph {quote(info['name'])} {{", "  graph [overlap=false, splines=true, fontname=Helvetica];"]
    lines.append("  node [fontname=Helvetica, fontsize=10]; edge [fontname=Helvetica, fontsize=8];")
    members = set()
    for node in info["nodes"]:
        members.add(node["name"])
        reflector = REFLECTOR_LABEL in node.get("labels", {})
        kind = "reflector" if reflector else "node"
        label = f"{node['name']}\n{_address(node['ipv4'])}\nAS {node['asn']}" + (
            "\nroute reflector" * reflector
        )
        asked = node["name"] in reports
        attrs = {
            "kind": kind,
            "label": label if asked else f"{label}\n(daemon not answering)",
            "shape": "doubleoctagon" if reflector else "box",
            "style": "filled" if asked else "filled,dashed",
            "fillcolor": ("lightyellow" if reflector else "lightblue") if asked else "mistyrose",
            "asn": node["asn"],
            "reporting": "yes" if asked else "no",
        }
        lines.append(f"  {quote(node['name'])} [{_attrs(attrs)}];")
    for router in info.get("routers", []):
        members.add(router["name"])
        attrs = {
            "kind": "router",
            "label": f"{router['name']}\n{router['kind']}\nAS {router['asn']}",
            "shape": "hexagon",
            "style": "filled",
            "fillcolor": "lightgrey",
            "asn": router["asn"],
            "reporting": "yes" if router["name"] in reports else "no",
        }
        lines.append(f"  {quote(router['name'])} [{_attrs(attrs)}];")
    found = sessions(info, reports, router_addresses)
    for outside in sorted({end for s in found for end in (s.a, s.b)} - members):
        attrs = {
            "kind": "external",
            "label": outside,
            "shape": "ellipse",
            "style": "dashed",
            "reporting": "no",
        }
        lines.append(f"  {quote(outside)} [{_attrs(attrs)}];")
    for session in found:
        colour = COLOURS.get(session.state, DOWN_COLOUR)
        attrs = {
            "state": session.state,
            "color": colour,
            "fontcolor": colour,
            "penwidth": 2 if session.up else 1,
            "style": "solid" if session.up else "dashed",
            "label": "" if session.up else session.state,
            "seen_by": ",".join(session.seen_by),
        }
        lines.append(f"  {quote(session.a)} -- {quote(session.b)} [{_attrs(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _attrs(attrs: Mapping[str, object]) -> str:
    return ", ".join(f"{key}={quote(value)}" for key, value in attrs.items())
