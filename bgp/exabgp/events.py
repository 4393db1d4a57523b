"""ExaBGP's JSON event stream, parsed into typed events.

Stage: the receive side of the announcements dataplane. ExaBGP writes one JSON object per line to its API
process; the bridge forwards the lines to the daemon and this module turns each into events the speaker
understands. Pure: no I/O, no state.

Complicating factors (docs/exabgp-notes.md):
- One UPDATE line can carry announces for several next hops and families, and withdraws, at once.
- End-of-RIB arrives as ``"type": "update"`` with ``message.eor`` instead of ``message.update``.
- ``as-path`` is an object of segments in 5.x (a flat list in 4.x): both shapes are accepted.
- With add-path, each NLRI object also has ``path-information``; a path is keyed by (prefix, path id).
- ExaBGP 5.0 does not know the long-lived graceful-restart capability (RFC 9494, code 71): the peer's OPEN
  carries it as ``"name": "unknown"`` with the value in hex, decoded here (docs/graceful-restart.md).
- Lines that are not JSON (acks ``done``/``error`` when acks are on, blank lines) are skipped, not fatal:
  a garbage line must never take the speaker down.
- ExaBGP 5.0.15 passes on some announcements RFC 7606 calls malformed: no NEXT_HOP (the next hop then
  reads ``"no-nexthop"``), an undefined ORIGIN value (``"invalid"``), an unrecognised *well-known*
  attribute (``"attribute-0xF0-0x40"``: the optional bit 0x80 is clear). Those become treat-as-withdraw
  here (``RoutesWithdrawn.malformed`` says why), so a peer's bad UPDATE costs only its own prefixes and
  no unparseable next hop ever reaches route selection or the kernel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from confgen import tokens

# ExaBGP session states as they appear in "type": "state" events.
STATE_CONNECTED = "connected"
STATE_UP = "up"
STATE_DOWN = "down"

LLGR_CAPABILITY = 71
_LLGR_FAMILIES = {(1, 1): "ipv4 unicast", (2, 1): "ipv6 unicast"}  # (AFI, SAFI)


@dataclass(frozen=True, slots=True)
class PathAttributes:
    origin: str = "igp"
    as_path: tuple[int, ...] = ()
    med: int | None = None
    local_pref: int | None = None
    communities: tuple[tuple[int, ...], ...] = ()
    large_communities: tuple[tuple[int, ...], ...] = ()
    originator_id: str = ""
    cluster_list: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerState:
    peer: str
    state: str  # connected | up | down
    reason: str = ""
    local: str = ""
    peer_as: int | None = None


@dataclass(frozen=True, slots=True)
class RoutesLearned:
    peer: str
    family: str  # "ipv4 unicast" | "ipv6 unicast"
    nexthop: str
    prefixes: tuple[str, ...]
    attributes: PathAttributes = field(default_factory=PathAttributes)
    path_ids: tuple[str, ...] = ()  # parallel to prefixes when add-path is in use, else empty


@dataclass(frozen=True, slots=True)
class RoutesWithdrawn:
    peer: str
    family: str
    prefixes: tuple[str, ...]
    # Why an announcement is handled as this withdraw (RFC 7606 treat-as-withdraw); "" for a real withdraw.
    malformed: str = ""


@dataclass(frozen=True, slots=True)
class EndOfRib:
    peer: str
    family: str


@dataclass(frozen=True, slots=True)
class Notification:
    peer: str
    direction: str
    code: int
    subcode: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class Open:
    """An OPEN message; ``direction`` "receive" is the peer's."""

    peer: str
    direction: str
    router_id: str
    asn: int
    hold_time: int
    restart_time: int | None = None  # graceful-restart capability (RFC 4724), None when not offered
    families: tuple[str, ...] = ()
    # Long-lived graceful-restart capability (RFC 9494, code 71, which ExaBGP passes on as an unknown one):
    # (family, long-lived stale time) per family offered; None when not offered.
    llgr: tuple[tuple[str, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A line we could not use; kept so the caller can count and log it."""

    line: str
    reason: str


Event = (
    PeerState | RoutesLearned | RoutesWithdrawn | EndOfRib | Notification | Open | Unparsed
)


def _as_path(raw: object) -> tuple[int, ...]:
    if isinstance(raw, list):  # ExaBGP 4.x shape
        return tuple(int(a) for a in raw if isinstance(a, int | str) and str(a).isdigit())
    if not isinstance(raw, dict):
        return ()
    path: list[int] = []
    for key in sorted(raw, key=lambda k: int(k) if str(k).isdigit() else 0):
        segment = raw[key]
        values = segment.get("value", []) if isinstance(segment, dict) else []
        if isinstance(segment, dict) and segment.get("element") == "as-set":
            # RFC 4271 9.1.2.2: an AS_SET counts as one AS for path length; keep its first member.
            values = values[:1]
        path.extend(int(v) for v in values)
    return tuple(path)


def _attributes(raw: dict) -> PathAttributes:
    return PathAttributes(
        origin=str(raw.get("origin", "igp")),
        as_path=_as_path(raw.get("as-path", ())),
        med=raw.get("med"),
        local_pref=raw.get("local-preference"),
        communities=tuple(tuple(c) for c in raw.get("community", ()) if isinstance(c, list)),
        large_communities=tuple(tuple(c) for c in raw.get("large-community", ()) if isinstance(c, list)),
        originator_id=str(raw.get("originator-id", "")),
        cluster_list=tuple(str(c) for c in raw.get("cluster-list", ())),
    )


def _nlri(item: object) -> tuple[str, str]:
    if isinstance(item, dict):
        return str(item["nlri"]), str(item.get("path-information", ""))
    return str(item), ""  # exabgp.api.compact=true prints bare strings


def _link_local(nexthop: str) -> bool:
    return nexthop.lower().startswith("fe8")


ORIGINS = frozenset({"igp", "egp", "incomplete"})
_UNKNOWN_ATTRIBUTE = re.compile(r"attribute-0x([0-9A-Fa-f]{2})-0x([0-9A-Fa-f]{2})")
_OPTIONAL = 0x80


def _attribute_problem(raw: dict) -> str:
    """Why the path attributes make every announcement of the UPDATE malformed ("" = they do not)."""
    origin = raw.get("origin", "igp")
    if not isinstance(origin, str) or origin not in ORIGINS:
        return f"undefined ORIGIN {tokens.shown(origin)}"
    for key in raw:
        match = _UNKNOWN_ATTRIBUTE.fullmatch(str(key))
        if match and not int(match[2], 16) & _OPTIONAL:
            return f"unrecognised well-known attribute {int(match[1], 16)}"
    return ""


def _nexthop_problem(family: str, nexthop: str) -> str:
    version = 6 if family.startswith("ipv6") else 4
    if tokens.problem(tokens.address, nexthop, version):
        return f"missing or invalid NEXT_HOP {tokens.shown(nexthop)}"
    return ""


def _update_events(peer: str, update: dict) -> Iterator[Event]:
    raw_attributes = update.get("attribute", {})
    if not isinstance(raw_attributes, dict):
        raw_attributes = {}
    problem = _attribute_problem(raw_attributes)
    attributes = _attributes(raw_attributes)
    for family, by_nexthop in update.get("announce", {}).items():
        if not isinstance(by_nexthop, dict):
            continue
        # An IPv6 next hop may come as global + link-local (RFC 2545); ExaBGP then lists each prefix under
        # both. The global one is routable without knowing the interface, so it wins.
        with_global = {
            _nlri(i)[0] for nexthop, items in by_nexthop.items() if not _link_local(nexthop) for i in items
        }
        for nexthop, items in by_nexthop.items():
            parsed = [_nlri(i) for i in items]
            if _link_local(nexthop):
                parsed = [p for p in parsed if p[0] not in with_global]
                if not parsed:
                    continue
            bad = problem or _nexthop_problem(family, nexthop)
            if bad:
                yield RoutesWithdrawn(peer, family, tuple(n for n, _ in parsed), malformed=bad)
                continue
            path_ids = tuple(p for _, p in parsed)
            yield RoutesLearned(
                peer=peer,
                family=family,
                nexthop=nexthop,
                prefixes=tuple(n for n, _ in parsed),
                attributes=attributes,
                path_ids=path_ids if any(path_ids) else (),
            )
    for family, items in update.get("withdraw", {}).items():
        if isinstance(items, list):
            yield RoutesWithdrawn(peer=peer, family=family, prefixes=tuple(_nlri(i)[0] for i in items))


def parse_line(line: str) -> list[Event]:
    """Parse one line from ExaBGP. Never raises: a bad line becomes ``Unparsed``."""
    text = line.strip()
    if not text or text in ("done", "error"):
        return []
    if not text.startswith("{"):
        return [Unparsed(text, "not JSON")]
    try:
        message = json.loads(text)
        return list(_events(message))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return [Unparsed(text[:200], f"{type(exc).__name__}: {exc}")]


def _open(peer: str, neighbor: dict) -> Open:
    body = neighbor.get("open", {})
    restart_time = None
    families: tuple[str, ...] = ()
    llgr = None
    for capability in body.get("capabilities", {}).values():
        if not isinstance(capability, dict):
            continue
        if capability.get("name") == "graceful restart":
            restart_time = int(capability.get("time", 0))
        elif capability.get("name") == "multiprotocol":
            families = tuple(str(f).replace("/", " ") for f in capability.get("families", ()))
        elif capability.get("value") == LLGR_CAPABILITY:
            llgr = _llgr_families(str(capability.get("raw", "")))
    return Open(
        peer=peer,
        direction=str(neighbor.get("direction", "")),
        router_id=str(body.get("router_id", "")),
        asn=int(body.get("asn", 0)),
        hold_time=int(body.get("hold_time", 0)),
        restart_time=restart_time,
        families=families,
        llgr=llgr,
    )


def _llgr_families(raw: str) -> tuple[tuple[str, int], ...] | None:
    """The (family, stale time) tuples of an LLGR capability's value: 7 bytes each, AFI (2), SAFI (1), flags
    (1), long-lived stale time (3). None when malformed, which counts as not offered."""
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        return None
    if len(data) % 7:
        return None
    offered = []
    for i in range(0, len(data), 7):
        family = _LLGR_FAMILIES.get((int.from_bytes(data[i : i + 2], "big"), data[i + 2]))
        if family is not None:  # a family we never carry does not matter
            offered.append((family, int.from_bytes(data[i + 4 : i + 7], "big")))
    return tuple(offered)


def _events(message: dict) -> Iterator[Event]:
    kind = message.get("type")
    if kind is None and "exabgp" not in message:
        # Replies to `show ...` commands carry no envelope; we send none, so this is nobody's event.
        yield Unparsed(json.dumps(message)[:200], "JSON without ExaBGP's event envelope")
        return
    neighbor = message.get("neighbor", {})
    address = neighbor.get("address", {})
    peer = str(address.get("peer", ""))
    if kind == "state":
        yield PeerState(
            peer=peer,
            state=str(neighbor.get("state", "")),
            reason=str(neighbor.get("reason", "")),
            local=str(address.get("local", "")),
            peer_as=neighbor.get("asn", {}).get("peer"),
        )
    elif kind == "update":
        body = neighbor.get("message", {})
        if "eor" in body:
            eor = body["eor"]
            yield EndOfRib(peer=peer, family=f"{eor.get('afi')} {eor.get('safi')}")
        elif "update" in body:
            yield from _update_events(peer, body["update"])
    elif kind == "notification":
        note = neighbor.get("notification", {})
        yield Notification(
            peer=peer,
            direction=str(neighbor.get("direction", "")),
            code=int(note.get("code", 0)),
            subcode=int(note.get("subcode", 0)),
            message=str(note.get("message", "")),
        )
    elif kind == "open":
        yield _open(peer, neighbor)
    # Other types (keepalive, refresh, signal) carry nothing the speaker acts on.
