"""bgp.exabgp.tuning_json: the fast NLRI JSON of a received UPDATE is upstream's, byte for byte, on a corpus
(announces, withdrawals, both at once, several next hops, path ids, IPv6, communities, End-of-RIB, compact
mode, NLRI that are not plain unicast), including UPDATEs decoded from ExaBGP's own wire encoding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from exabgp.bgp.message import Action
from exabgp.bgp.message.direction import Direction
from exabgp.bgp.message.open.capability.negotiated import Negotiated
from exabgp.bgp.message.update import EOR, Update
from exabgp.bgp.message.update.attribute import Attributes
from exabgp.bgp.message.update.nlri import CIDR, INET, Label
from exabgp.bgp.message.update.nlri.qualifier import PathInfo
from exabgp.logger.option import option as exabgp_log_option
from exabgp.protocol.family import AFI, SAFI
from exabgp.protocol.ip import IP
from exabgp.reactor.api import API
from exabgp.reactor.api.response.json import JSON

from bgp.exabgp import tuning_json


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """ExaBGP's logger needs its environment loaded; these tests only need the calls to go somewhere."""
    monkeypatch.setattr(exabgp_log_option, "logger", SimpleNamespace(**dict.fromkeys(
        ("debug", "info", "warning", "error", "critical", "fatal"), lambda *args, **kwargs: None
    )))


def _attributes(text: str) -> Attributes:
    """An attribute set as ExaBGP's own parser makes it from an API command."""
    command = f"announce attributes {text} nlri 10.1.0.0/26 10.2.0.0/26"
    return API(SimpleNamespace()).api_attributes(command, ["neighbor 10.0.0.12"])[0].attributes


def _nlri(prefix: str, action=Action.ANNOUNCE, nexthop: object = None, path: bytes = b"", cls=INET) -> INET:
    address, length = prefix.split("/")
    nlri = cls(IP.toafi(address), IP.tosafi(address), action)
    nlri.cidr = CIDR(IP.pton(address), int(length))
    if nexthop is not None:
        nlri.nexthop = nexthop
    if path:
        nlri.path_info = PathInfo(path)
    return nlri


HOP4, HOP4B, HOP6 = IP.create("10.0.0.11"), IP.create("10.0.0.13"), IP.create("fd00::11")
PLAIN = "next-hop 10.0.0.11 origin igp local-preference 100"
RICH = (
    "next-hop 10.0.0.11 origin egp as-path [ 64512 64513 ] med 5 community [ 64512:100 65535:65281 ] "
    "large-community [ 64512:1:2 ] originator-id 10.0.0.9 cluster-list [ 10.0.0.1 ]"
)
CASES = {
    "announce": ([_nlri(f"10.64.0.{n}/32", nexthop=HOP4) for n in range(50)], PLAIN),
    "communities": ([_nlri("10.1.0.0/26", nexthop=HOP4)], RICH),
    "two next hops": ([_nlri("10.1.0.0/26", nexthop=HOP4), _nlri("10.2.0.0/26", nexthop=HOP4B),
                       _nlri("10.3.0.0/26", nexthop=HOP4)], PLAIN),
    "withdraw": ([_nlri(f"10.64.0.{n}/32", Action.WITHDRAW) for n in range(50)], ""),
    "both": ([_nlri("10.1.0.0/26", nexthop=HOP4), _nlri("10.9.0.0/26", Action.WITHDRAW)], PLAIN),
    "path ids": ([_nlri("10.1.0.0/26", nexthop=HOP4, path=b"\0\0\0\1"),
                  _nlri("10.1.0.0/26", nexthop=HOP4, path=b"\1\2\3\4"),
                  _nlri("10.9.0.0/26", Action.WITHDRAW, path=b"\0\0\0\7")], PLAIN),
    "ipv6": ([_nlri("fd00:10::/64", nexthop=HOP6), _nlri("fd00:11::/64", nexthop=HOP6),
              _nlri("fd00:12::/64", Action.WITHDRAW)], "next-hop fd00::11 origin igp"),
    "two families": ([_nlri("10.1.0.0/26", nexthop=HOP4), _nlri("fd00:10::/64", nexthop=HOP6),
                      _nlri("224.0.0.0/4", nexthop=HOP4)], PLAIN),
    "no next hop": ([_nlri("10.1.0.0/26"), _nlri("10.2.0.0/26")], PLAIN),
    "unset action": ([_nlri("10.1.0.0/26", Action.UNSET, nexthop=HOP4)], PLAIN),
    "labels": ([_nlri("10.1.0.0/26", nexthop=HOP4), _nlri("10.2.0.0/26", nexthop=HOP4, cls=Label)], PLAIN),
    "no attributes": ([_nlri("10.9.0.0/26", Action.WITHDRAW)], None),
}


def _updates() -> list[tuple[str, Update]]:
    out = []
    for name, (nlris, text) in CASES.items():
        out.append((name, Update(nlris, _attributes(text) if text else Attributes())))
    out += [("end of rib", EOR(AFI.ipv4, SAFI.unicast)), ("empty", Update([], _attributes(PLAIN)))]
    return out


def _wire_updates() -> list[tuple[str, Update]]:
    """UPDATEs as the receiving ExaBGP decodes them from what the sending one encodes."""
    negotiated = Negotiated({"capability": {"aigp": False}})
    negotiated.asn4, negotiated.families = True, [(AFI.ipv4, SAFI.unicast)]
    out = []
    for action in (Action.ANNOUNCE, Action.WITHDRAW):
        nlris = [_nlri(f"10.64.{n // 256}.{n % 256}/32", action, HOP4) for n in range(3000)]
        for message in Update(nlris, _attributes(RICH)).messages(negotiated):
            out.append((f"wire {action}", Update.unpack_message(message[19:], Direction.IN, negotiated)))
    return out


def _same(update, compact: bool) -> None:
    encoder = JSON("5.0.15")
    encoder.compact = compact
    upstream = JSON._update(encoder, update)
    assert tuning_json.fast_update(JSON._update)(encoder, update) == upstream


NAMES = [*CASES, "end of rib", "empty"]


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_fast_json_is_upstreams_bytes(name, compact):
    _same(dict(_updates())[name], compact)


@pytest.mark.parametrize("compact", [False, True])
def test_fast_json_of_decoded_wire_updates_is_upstreams_bytes(compact):
    updates = _wire_updates()
    assert len(updates) > 2  # several UPDATEs each way
    for _, update in updates:
        _same(update, compact)


def test_only_plain_unicast_nlri_take_the_fast_path():
    calls = []

    def upstream(self, update):
        calls.append(update)
        return JSON._update(self, update)

    fast = tuning_json.fast_update(upstream)
    updates = dict(_updates())
    for name in ("announce", "withdraw", "both", "ipv6", "path ids"):
        fast(JSON("5.0.15"), updates[name])
    assert calls == []
    for name in ("labels", "end of rib", "empty", "unset action"):
        fast(JSON("5.0.15"), updates[name])
    assert len(calls) == 4
