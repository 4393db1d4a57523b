"""ExaBGP API commands for a batch of per-peer route changes.

Stage: the send side of the announcements dataplane. The speaker computes, per peer, the final state of each
prefix that changed (announce with attributes, or withdraw); this module turns that into API lines.

Owns: the command grammar only. Pure (refusals go to an injected ``refused`` callback).

Complicating factors:
- ExaBGP 5.0.15 reorders an announce and a withdraw of the same prefix within one burst
  (docs/exabgp-notes.md), so the input is a mapping prefix -> final state: one command per prefix per
  batch, by construction.
- Each line costs ExaBGP a parse of its attributes (~120 µs of CPU), so prefixes sharing an attribute set go
  out as one bulk ``announce attributes ... nlri ...`` line, chunked to keep each line a reasonable size;
  ExaBGP (``bgp.exabgp.tuning_api``) then parses the attributes once and the prefixes at ~6 µs each.
- An API line is a command: a newline inside a value is a second command (``shutdown`` included), so every
  token is checked against its grammar (``confgen.tokens``: canonical addresses and prefixes, ints in
  range, fixed keywords) however it was validated upstream. A refused value costs only what carries it:
  the one prefix, the prefixes sharing one attribute set, or the one peer; never the batch, never a part
  of a command. Each refusal is reported through ``refused``.
- As a last guard every line must match the whole command grammar (``COMMAND``: single spaces, nothing
  but the characters of addresses, numbers and keywords); a line that does not is dropped and reported.
- The checks run for every prefix of a 100k-route burst, so the common token (a canonical IPv4 /32) costs
  one precompiled regex match, not an ``ipaddress`` object.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from confgen import tokens
from confgen.tokens import MAX_UINT16, MAX_UINT32, TokenError, shown

log = logging.getLogger(__name__)

NLRI_PER_LINE = 1000

# The grammar of every line this module emits. Tokens are only shaped here (their values were checked one
# by one); what matters is that nothing but those shapes, separated by single spaces, can be in a line.
_ADDR = r"[0-9a-f.:]+"
_PREFIX = rf"{_ADDR}/[0-9]{{1,3}}"
_INT = r"[0-9]{1,10}"
_ATTRIBUTES = (
    rf"next-hop {_ADDR} origin (?:igp|egp|incomplete)"
    rf"(?: as-path \[(?: {_INT})+ \])?"
    rf"(?: local-preference {_INT})?"
    rf"(?: med {_INT})?"
    rf"(?: community \[(?: {_INT}:{_INT})+ \])?"
    rf"(?: large-community \[(?: {_INT}:{_INT}:{_INT})+ \])?"
    rf"(?: originator-id {_ADDR})?"
    rf"(?: cluster-list \[(?: {_ADDR})+ \])?"
)
COMMAND = re.compile(
    rf"neighbor {_ADDR} (?:"
    rf"announce attributes {_ATTRIBUTES} nlri {_PREFIX}(?: {_PREFIX})*"
    rf"|withdraw attributes next-hop {_ADDR} nlri {_PREFIX}(?: {_PREFIX})*"
    r"|announce eor ipv[46] unicast)"
)

Refused = Callable[[str], None]


def _log_refusal(message: str) -> None:
    log.warning("%s", message)


_T = TypeVar("_T")


def _token(what: str, check: Callable[..., _T], value: object, *args: object) -> _T:
    try:
        return check(value, *args)
    except TokenError as exc:
        raise TokenError(f"{what} {shown(value)} {exc}") from None


def _numbers(what: str, value: object, width: int, high: int, low: int = 0) -> tuple[int, ...]:
    """A tuple of ``width`` ints (``width`` 1: a bare int) for a community or an AS."""
    items = value if width > 1 else (value,)
    if type(items) is not tuple or len(items) != width:
        raise TokenError(f"{what} {shown(value)} is not {width} numbers")
    return tuple(_token(what, tokens.integer, item, low, high) for item in items)


def _sequence(what: str, value: object) -> tuple:
    if type(value) is not tuple:
        raise TokenError(f"{what} {shown(value)} is not a sequence")
    return value


@dataclass(frozen=True, order=True, slots=True)
class Advertisement:
    """The attributes we send with one prefix to one peer."""

    nexthop: str
    origin: str = "igp"
    as_path: tuple[int, ...] = ()
    local_pref: int | None = None
    med: int | None = None
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    originator_id: str = ""
    cluster_list: tuple[str, ...] = ()

    def attribute_text(self) -> str:
        """The attributes in the command grammar; ``TokenError`` naming the attribute for a bad value."""
        parts = [
            f"next-hop {_token('next hop', tokens.address, self.nexthop)}",
            f"origin {_token('origin', tokens.keyword, self.origin, tokens.ORIGINS)}",
        ]
        if _sequence("AS path", self.as_path):
            path = " ".join(str(_numbers("AS path", a, 1, MAX_UINT32, 1)[0]) for a in self.as_path)
            parts.append(f"as-path [ {path} ]")
        if self.local_pref is not None:
            local_pref = _token("local preference", tokens.integer, self.local_pref, 0, MAX_UINT32)
            parts.append(f"local-preference {local_pref}")
        if self.med is not None:
            parts.append(f"med {_token('MED', tokens.integer, self.med, 0, MAX_UINT32)}")
        if _sequence("communities", self.communities):
            std = (_numbers("community", c, 2, MAX_UINT16) for c in self.communities)
            parts.append("community [ " + " ".join(f"{a}:{b}" for a, b in std) + " ]")
        if _sequence("large communities", self.large_communities):
            large = (_numbers("large community", c, 3, MAX_UINT32) for c in self.large_communities)
            parts.append("large-community [ " + " ".join(f"{a}:{b}:{c}" for a, b, c in large) + " ]")
        if self.originator_id != "":
            parts.append(f"originator-id {_token('originator id', tokens.address, self.originator_id, 4)}")
        if _sequence("cluster list", self.cluster_list):
            ids = " ".join(_token("cluster id", tokens.address, c, 4) for c in self.cluster_list)
            parts.append(f"cluster-list [ {ids} ]")
        return " ".join(parts)

    def sort_key(self) -> tuple:
        """The dataclass order, except that an absent local preference or MED sorts before any value
        instead of failing to compare with it. Only for advertisements whose ``attribute_text`` passed."""
        return (
            self.nexthop,
            self.origin,
            self.as_path,
            (self.local_pref is not None, self.local_pref or 0),
            (self.med is not None, self.med or 0),
            self.communities,
            self.large_communities,
            self.originator_id,
            self.cluster_list,
        )


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def peer_commands(
    peer: str,
    changes: Mapping[str, Advertisement | None],
    *,
    per_line: int = NLRI_PER_LINE,
    refused: Refused = _log_refusal,
) -> list[str]:
    """Lines that move ``peer`` to the final state in ``changes`` (None = withdraw).

    A refused peer address, prefix or attribute set is reported through ``refused`` and left out.

    >>> peer_commands("10.0.0.12", {"192.168.1.0/26": Advertisement("10.0.0.11"), "192.168.9.9/32": None})
    ['neighbor 10.0.0.12 withdraw attributes next-hop 10.0.0.11 nlri 192.168.9.9/32', \
'neighbor 10.0.0.12 announce attributes next-hop 10.0.0.11 origin igp nlri 192.168.1.0/26']
    """
    try:
        peer = _token("peer address", tokens.address, peer)
    except TokenError as exc:
        refused(f"ExaBGP API: not sending {len(changes)} route changes: {exc}")
        return []
    announce: dict[tuple[int, Advertisement], list[str]] = defaultdict(list)
    withdraw: dict[int, list[str]] = defaultdict(list)
    # Grouped first by the advertisement object (most prefixes of a batch share a few objects), so that an
    # attribute set is hashed once per object rather than once per prefix.
    by_object: dict[tuple[int, int], tuple[Advertisement, list[str]]] = {}
    check = tokens.prefix
    for prefix, adv in changes.items():
        try:
            net = check(prefix)
        except TokenError as exc:
            refused(f"ExaBGP API: not sending to peer {peer}: prefix {shown(prefix)} {exc}")
            continue
        family = 6 if ":" in net else 4
        if adv is None:
            withdraw[family].append(net)
            continue
        group = by_object.get((family, id(adv)))
        if group is None:
            group = by_object[(family, id(adv))] = (adv, [])
        group[1].append(net)
    for (family, _), (adv, nets) in by_object.items():
        try:
            announce[(family, adv)].extend(nets)
        except TypeError:  # attributes that cannot even be hashed: no attribute set to group them in
            for net in nets:
                refused(f"ExaBGP API: not announcing {net} to peer {peer}: its attributes are not values")
    texts: dict[tuple[int, Advertisement], str] = {}
    for key, prefixes in announce.items():
        try:
            texts[key] = key[1].attribute_text()
        except (TokenError, AttributeError) as exc:  # AttributeError: not an Advertisement at all
            count, first = len(prefixes), min(prefixes)
            refused(f"ExaBGP API: not announcing {count} prefixes ({first}, ...) to peer {peer}: {exc}")
    lines: list[str] = []
    # Withdraws first: a prefix never appears in both groups, so the order is only about making room.
    withdraw_nexthop = _withdraw_nexthops(texts)
    for fam in sorted(withdraw):
        for chunk in _chunks(sorted(withdraw[fam]), per_line):
            nexthop = withdraw_nexthop.get(fam, "0.0.0.0" if fam == 4 else "::")
            lines.append(f"neighbor {peer} withdraw attributes next-hop {nexthop} nlri {' '.join(chunk)}")
    for fam, adv in sorted(texts, key=lambda k: (k[0], k[1].sort_key())):
        text = texts[(fam, adv)]
        for chunk in _chunks(sorted(announce[(fam, adv)]), per_line):
            lines.append(f"neighbor {peer} announce attributes {text} nlri {' '.join(chunk)}")
    return well_formed(lines, refused)


def eor_command(peer: str, family: str, *, refused: Refused = _log_refusal) -> str | None:
    """The End-of-RIB line for ``peer``'s ``family`` ("ipv4" / "ipv6"), or None when refused."""
    try:
        peer = _token("peer address", tokens.address, peer)
        afi = _token("address family", tokens.keyword, family, tokens.FAMILIES)
    except TokenError as exc:
        refused(f"ExaBGP API: not sending End-of-RIB: {exc}")
        return None
    lines = well_formed([f"neighbor {peer} announce eor {afi} unicast"], refused)
    return lines[0] if lines else None


def well_formed(lines: list[str], refused: Refused = _log_refusal) -> list[str]:
    """``lines`` without any that does not match ``COMMAND`` (each reported): the last guard."""
    good = [line for line in lines if COMMAND.fullmatch(line)]
    if len(good) != len(lines):
        for line in lines:
            if not COMMAND.fullmatch(line):
                refused(f"ExaBGP API: dropping a line outside the command grammar: {shown(line)}")
    return good


def _withdraw_nexthops(texts: Mapping[tuple[int, Advertisement], str]) -> dict[int, str]:
    # The withdraw grammar wants a next hop although a withdraw carries none on the wire; any address of
    # the family parses. Reuse one we announce with (checked), which keeps the lines readable in logs.
    found: dict[int, str] = {}
    for fam, adv in texts:
        found.setdefault(fam, adv.nexthop)
    return found
