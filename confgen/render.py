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
  does not trust its input: every value of a session is checked against the grammar of its token
  (``confgen.tokens``: canonical addresses without scope ids, ints in range, fixed keywords, the session
  name pattern) and nothing is escaped.
- A bad value costs its own session only: a session that fails a check, or that repeats an address
  already taken (ExaBGP holds one neighbour per address; the first in sort order keeps it), is left out
  and named in ``Rendered.refused``; the text is then byte-identical to the config of an intent without
  that session. Only what belongs to the whole file (the API process, the router id, the node name in the
  header) raises ``RenderError``. As the last guard, every interpolated string also passes ``_checked``
  (jinja's ``finalize``), which raises ``RenderError`` rather than let structure through.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import jinja2

from confgen import tokens
from confgen.intent import NEXT_HOP_AUTO, NEXT_HOP_KEEP, NEXT_HOP_SELF, NodeIntent, PeerIntent
from confgen.tokens import TokenError, shown
from confgen.validate import password_problem

TEMPLATE = "exabgp.conf.j2"
MAX_AS_NUMBER = 2**32 - 1

# Structure characters of ExaBGP's config tokenizer, plus every control character (newline included).
_UNSAFE = re.compile(r"[\"'{};#\\\[\],\x00-\x1f\x7f]")
_PROCESS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SESSION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
MAX_RESTART_TIME = 4095
SOURCE_ADDRESSES = ("UseNodeIP", "None")
NEXT_HOP_MODES = (NEXT_HOP_AUTO, NEXT_HOP_SELF, NEXT_HOP_KEEP)


class RenderError(ValueError):
    """The intent cannot be rendered into a config that means what it says."""


@dataclass(frozen=True)
class Rendered:
    """A rendered config and the sessions left out of it (one message each, naming it and the field)."""

    text: str
    refused: tuple[str, ...] = ()


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


_T = TypeVar("_T")


def _field(what: str, check: Callable[..., _T], value: object, *args: object) -> _T:
    try:
        return check(value, *args)
    except TokenError as exc:
        raise RenderError(f"{what} {shown(value)} {exc}") from None


def _check_peer(peer: PeerIntent) -> None:
    """Nothing when every value the template renders for ``peer`` is in its grammar; otherwise
    ``RenderError`` naming the field and the problem."""
    version = _field("family", tokens.family_version, peer.family)
    _field("peer address", tokens.address, peer.address, version)
    _field("local address", tokens.address, peer.local_address, version)
    if type(peer.name) is not str or not _SESSION_NAME.fullmatch(peer.name):
        raise RenderError(f"session name {shown(peer.name)} is not a Calico session name")
    _field("peer AS", tokens.integer, peer.peer_as, 1, MAX_AS_NUMBER)
    _field("local AS", tokens.integer, peer.local_as, 1, MAX_AS_NUMBER)
    _field("port", tokens.integer, peer.port, 1, 65535)
    if _field("hold time", tokens.integer, peer.hold_time, 0, 65535) in (1, 2):
        raise RenderError(f"hold time {peer.hold_time} must be 0 or 3-65535")
    if peer.password != "":
        problem = password_problem(peer.password) if type(peer.password) is str else "is not text"
        if problem:
            raise RenderError(f"the password {problem}")  # never shown: it is a secret
    _field("source address mode", tokens.keyword, peer.source_address, SOURCE_ADDRESSES)
    _field("graceful-restart time", tokens.integer, peer.restart_time, 0, MAX_RESTART_TIME)
    _field("TTL security hop count", tokens.integer, peer.ttl_security, 0, 255)
    _field("next-hop mode", tokens.keyword, peer.next_hop_mode, NEXT_HOP_MODES)


def _label(peer: object) -> str:
    name, resource = getattr(peer, "name", None), getattr(peer, "resource", "")
    owner = f"BGPPeer {shown(resource)} " if resource else ""
    return f"{owner}session {shown(name)}"


def _sort_key(peer: PeerIntent) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int, str]:
    # Only for checked sessions; the name settles two sessions on one address and port.
    return (peer.family, ipaddress.ip_address(peer.address), peer.port, peer.name)


def render_config(intent: NodeIntent, *, api_run: str, api_process: str = "calico-bgp-api") -> Rendered:
    """The ExaBGP config for ``intent`` and the sessions left out of it. ``api_run`` is the command line
    of the API process. ``RenderError`` only for what belongs to the whole file."""
    if type(api_process) is not str or not _PROCESS_NAME.fullmatch(api_process):
        raise RenderError(f"invalid API process name {shown(api_process)}")
    if not api_run.strip():
        raise RenderError("the API process needs a command to run")
    refused: list[str] = []
    checked: list[PeerIntent] = []
    for peer in intent.peers:
        try:
            _check_peer(peer)
        except RenderError as exc:
            refused.append(f"{_label(peer)}: left out of the ExaBGP config: {exc}")
        else:
            checked.append(peer)
    peers: list[PeerIntent] = []
    holders: dict[str, PeerIntent] = {}
    for peer in sorted(checked, key=_sort_key):
        holder = holders.setdefault(peer.address, peer)
        if holder is not peer:
            refused.append(
                f"{_label(peer)}: left out of the ExaBGP config: peer address {peer.address} is taken by "
                f"session {shown(holder.name)} (ExaBGP holds one neighbour per address)"
            )
        else:
            peers.append(peer)
    if peers:
        try:
            tokens.address(intent.router_id, 4)
        except TokenError as exc:
            raise RenderError(f"router id {shown(intent.router_id)} {exc}") from None
    template = _environment().get_template(TEMPLATE)
    text = template.render(intent=intent, peers=peers, api_run=api_run.strip(), api_process=api_process)
    return Rendered(text, tuple(refused))


def render(intent: NodeIntent, *, api_run: str, api_process: str = "calico-bgp-api") -> str:
    """The text of ``render_config``, for callers that report refused sessions from the intent's
    warnings or not at all (goldens, dry runs)."""
    return render_config(intent, api_run=api_run, api_process=api_process).text
