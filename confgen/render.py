"""Render a ``NodeIntent`` into ExaBGP 5 configuration text.

Stage: first dataplane of the intent. ``confgen.apply.ConfigWriter`` validates the text with
``exabgp validate`` and installs it; the daemon then asks ExaBGP to reload (SIGUSR1).

Owns: the template (``confgen/templates/exabgp.conf.j2``, package data) and the rules that make its
output safe and stable.

Complicating factors:
- Determinism is a feature: ExaBGP resets only neighbours whose settings changed, and the writer skips
  identical bytes, so the same intent must always give the same text. Neighbours are sorted by
  (family, address, port); nothing time- or order-dependent is rendered.
- The file is a sessions-only config. Routes go through the API process (static routes in the config
  are withdrawn late on reload, see the ExaBGP reference), so there are no ``static`` blocks.
- ExaBGP's tokenizer treats quotes, braces, semicolons, brackets, commas, ``#`` and backslashes as syntax
  even in places a value is expected. The model already canonicalises what it parses, but the renderer
  does not trust its input: *every* interpolated string passes ``_checked`` (jinja's ``finalize``), and
  anything that could change the structure of the file raises ``RenderError`` instead of being escaped.
- ExaBGP 5 needs ``local-as`` and ``peer-as`` explicitly, treats a bare ``passive;`` as true, and accepts
  a config with no neighbour at all as long as it has some section: the process block is always there.
- Passwords are rendered base64-encoded (``md5-base64 true``): a TCP-MD5 key may legitimately contain
  quotes, braces or semicolons, and in base64 no password can reach the tokenizer as syntax.
- Hitless reloads: a neighbour block is a function of that session and the router id only, so editing
  one BGPPeer changes one block and ExaBGP (SIGUSR1) resets only that neighbour. Settings that only
  the speaker or the RIB use (filters, next-hop mode, route reflection) are not rendered at all.
- sourceAddress None cannot be rendered as ``local-address auto``: ExaBGP 5.0.15 then fails on every
  incoming connection from that peer ("'NoneType' object has no attribute 'address'" in its listener)
  and the session never comes up when the peer is the active side. Every session is pinned to the node
  address; ``PeerIntent.source_address`` still says what the user asked for.
- TTL security: ``incoming-ttl`` is broken in ExaBGP 5.0.15 (between two ExaBGPs and on the global
  listener), so GTSM is enforced by ``bgp.gtsm`` with nftables; ``outgoing-ttl 255`` is rendered as a
  second line of defence for the packets ExaBGP sends itself.
"""

from __future__ import annotations

import base64
import ipaddress
import re

import jinja2

from confgen.intent import NEXT_HOP_AUTO, NEXT_HOP_KEEP, NEXT_HOP_SELF, NodeIntent, PeerIntent
from confgen.validate import password_problem

TEMPLATE = "exabgp.conf.j2"
MAX_AS_NUMBER = 2**32 - 1

# Structure characters of ExaBGP's config tokenizer, plus every control character (newline included).
_UNSAFE = re.compile(r"[\"'{};#\\\[\],\x00-\x1f\x7f]")
_PROCESS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SESSION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
MAX_RESTART_TIME = 4095


class RenderError(ValueError):
    """The intent cannot be rendered into a config that means what it says."""


def _checked(value: object) -> object:
    if isinstance(value, str) and _UNSAFE.search(value):
        raise RenderError(
            f"refusing to render {value!r}: it contains a quote, brace, semicolon or control character"
        )
    return value


def _base64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("confgen", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # not HTML: safety comes from _checked refusing, not from escaping
        finalize=_checked,
    )
    environment.filters["base64"] = _base64
    return environment


def _check_ip(what: str, value: str, version: int | None = None) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise RenderError(f"{what} {value!r} is not an IP address") from None
    if version is not None and address.version != version:
        raise RenderError(f"{what} {value!r} is not an IPv{version} address")


def _check_peer(peer: PeerIntent) -> None:
    version = {"ipv4": 4, "ipv6": 6}.get(peer.family)
    if version is None:
        raise RenderError(f"peer {peer.name!r}: unknown family {peer.family!r}")
    _check_ip(f"peer {peer.name!r} address", peer.address, version)
    _check_ip(f"peer {peer.name!r} local address", peer.local_address, version)
    for what, asn in (("peer AS", peer.peer_as), ("local AS", peer.local_as)):
        if not 1 <= asn <= MAX_AS_NUMBER:
            raise RenderError(f"peer {peer.name!r}: {what} {asn} is out of range")
    if not 1 <= peer.port <= 65535:
        raise RenderError(f"peer {peer.name!r}: port {peer.port} is out of range")
    if peer.hold_time != 0 and not 3 <= peer.hold_time <= 65535:
        raise RenderError(f"peer {peer.name!r}: hold time {peer.hold_time} must be 0 or 3-65535")
    if peer.password and password_problem(peer.password):
        raise RenderError(f"peer {peer.name!r}: the password {password_problem(peer.password)}")
    if not _SESSION_NAME.fullmatch(peer.name):
        raise RenderError(f"peer name {peer.name!r} is not a Calico session name")
    if peer.source_address not in ("UseNodeIP", "None"):
        raise RenderError(f"peer {peer.name!r}: unknown source address mode {peer.source_address!r}")
    if not 0 <= peer.restart_time <= MAX_RESTART_TIME:
        raise RenderError(f"peer {peer.name!r}: graceful-restart time {peer.restart_time} is out of range")
    if not 0 <= peer.ttl_security <= 255:
        raise RenderError(f"peer {peer.name!r}: TTL security hop count {peer.ttl_security} is out of range")
    if peer.next_hop_mode not in (NEXT_HOP_AUTO, NEXT_HOP_SELF, NEXT_HOP_KEEP):
        raise RenderError(f"peer {peer.name!r}: unknown next-hop mode {peer.next_hop_mode!r}")


def _sort_key(peer: PeerIntent) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    return (peer.family, ipaddress.ip_address(peer.address), peer.port)


def render(intent: NodeIntent, *, api_run: str, api_process: str = "calico-bgp-api") -> str:
    """The ExaBGP config for ``intent``. ``api_run`` is the command line of the API process."""
    if not _PROCESS_NAME.fullmatch(api_process):
        raise RenderError(f"invalid API process name {api_process!r}")
    if not api_run.strip():
        raise RenderError("the API process needs a command to run")
    for peer in intent.peers:
        _check_peer(peer)
    if intent.peers:
        _check_ip("router id", intent.router_id, 4)
    addresses = [p.address for p in intent.peers]
    if len(set(addresses)) != len(addresses):
        raise RenderError("two sessions with one address: ExaBGP holds one neighbour per address")
    peers = sorted(intent.peers, key=_sort_key)
    template = _environment().get_template(TEMPLATE)
    return template.render(intent=intent, peers=peers, api_run=api_run.strip(), api_process=api_process)
