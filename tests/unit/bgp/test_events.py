import json
from pathlib import Path

import pytest

from bgp.exabgp import events as ev

DATA = Path(__file__).parents[2] / "data" / "exabgp"


def test_recorded_session_stream():
    parsed = [e for line in (DATA / "session.jsonl").read_text().splitlines() for e in ev.parse_line(line)]
    kinds = [type(e).__name__ for e in parsed]
    assert kinds == [
        "PeerState",
        "PeerState",
        "RoutesLearned",
        "EndOfRib",
        "RoutesLearned",
        "RoutesWithdrawn",
        "Notification",
        "PeerState",
    ]
    assert parsed[0] == ev.PeerState("10.0.0.12", "connected", local="10.0.0.11", peer_as=64512)
    learned = parsed[2]
    assert learned.nexthop == "10.0.0.12"
    assert learned.prefixes == ("192.168.2.0/26", "192.168.1.7/32")
    assert learned.attributes.local_pref == 100
    assert parsed[3] == ev.EndOfRib("10.0.0.12", "ipv4 unicast")
    v6 = parsed[4]
    assert v6.family == "ipv6 unicast" and v6.path_ids == ("0.0.0.1",)
    assert v6.attributes.as_path == (65001, 64999)
    assert v6.attributes.communities == ((65001, 100),)
    assert v6.attributes.large_communities == ((65001, 1, 2),)
    assert parsed[5] == ev.RoutesWithdrawn("10.0.0.12", "ipv4 unicast", ("192.168.1.7/32",))
    assert parsed[6].code == 6 and parsed[6].direction == "receive"
    assert parsed[7].state == "down" and parsed[7].reason == "notification received (6,2)"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"0": {"element": "as-sequence", "value": [1, 2, 3]}}, (1, 2, 3)),
        (
            {"0": {"element": "as-sequence", "value": [1]}, "1": {"element": "as-set", "value": [7, 8]}},
            (1, 7),
        ),
        ([65001, 65002], (65001, 65002)),  # ExaBGP 4.x flat list
        ({}, ()),
        ("garbage", ()),
    ],
    ids=["sequence", "set-counts-once", "4x-list", "empty", "garbage"],
)
def test_as_path_shapes(raw, expected):
    assert ev._as_path(raw) == expected


@pytest.mark.parametrize(
    "line, expected",
    [
        ("", []),
        ("done", []),
        ("error", []),
        ("hello world", [ev.Unparsed("hello world", "not JSON")]),
    ],
    ids=["blank", "ack-done", "ack-error", "text"],
)
def test_non_json_lines(line, expected):
    assert ev.parse_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "{not json",
        '{"type": "update", "neighbor": {"address": {"peer": "1.1.1.1"}, "message": {"update": '
        '{"announce": {"ipv4 unicast": {"1.1.1.1": [{"no-nlri": 1}]}}}}}}',
        '{"type": "notification", "neighbor": {"notification": {"code": "x"}}}',
        '{"type": "update", "neighbor": "oops"}',
    ],
    ids=["truncated", "missing-nlri", "bad-code", "wrong-shape"],
)
def test_garbage_never_raises(line):
    (event,) = ev.parse_line(line)
    assert isinstance(event, ev.Unparsed)


def test_unknown_types_are_ignored():
    assert ev.parse_line('{"type": "keepalive", "neighbor": {"address": {"peer": "1.1.1.1"}}}') == []


def test_open_with_graceful_restart():
    line = json.dumps({
        "exabgp": "5.0.0", "type": "open",
        "neighbor": {
            "address": {"local": "10.9.0.1", "peer": "10.9.0.2"}, "direction": "receive",
            "open": {"version": 4, "asn": 65001, "hold_time": 90, "router_id": "10.9.0.2", "capabilities": {
                "1": {"name": "multiprotocol", "families": ["ipv4/unicast"]},
                "64": {"name": "graceful restart", "time": 120,
                       "address-family-flags": {"ipv4/unicast": ["restart"]}},
            }},
        },
    })  # fmt: skip
    (event,) = ev.parse_line(line)
    assert event == ev.Open("10.9.0.2", "receive", "10.9.0.2", 65001, 90, 120, ("ipv4 unicast",))


def test_a_reply_without_the_event_envelope_is_unparsed_not_an_event():
    (event,) = ev.parse_line(
        '{"10.9.0.2": {"routes": [{"prefix": "192.168.1.0/26", "family": "ipv4 unicast"}]}}'
    )
    assert isinstance(event, ev.Unparsed) and "envelope" in event.reason
    assert [type(e) for e in ev.parse_line("{}")] == [ev.Unparsed]


def test_global_ipv6_next_hop_wins_over_link_local():
    line = json.dumps({"exabgp": "5.0.0", "type": "update", "neighbor": {
        "address": {"local": "fd00::11", "peer": "fd00::1"}, "message": {"update": {
            "attribute": {"origin": "igp"},
            "announce": {"ipv6 unicast": {
                "fd00::1": [{"nlri": "fd00:20::/64"}],
                "fe80::1": [{"nlri": "fd00:20::/64"}, {"nlri": "fd00:30::/64"}],
            }}}}}})  # fmt: skip
    learned = ev.parse_line(line)
    assert [(e.nexthop, e.prefixes) for e in learned] == [
        ("fd00::1", ("fd00:20::/64",)),
        ("fe80::1", ("fd00:30::/64",)),  # only a link-local next hop: kept (unnumbered peering)
    ]


def _announce(attribute, nexthop="10.0.0.12", family="ipv4 unicast", prefixes=("198.51.100.0/24",)):
    update = {"attribute": attribute, "announce": {family: {nexthop: [{"nlri": p} for p in prefixes]}}}
    return _update_line(update)


def _update_line(update):
    neighbor = {"address": {"peer": "10.0.0.12"}, "message": {"update": update}}
    return json.dumps({"type": "update", "neighbor": neighbor})


@pytest.mark.parametrize(
    "attribute, nexthop, family, problem",
    [
        ({"origin": "igp"}, "no-nexthop", "ipv4 unicast", "missing or invalid NEXT_HOP 'no-nexthop'"),
        ({"origin": "igp"}, "fd00::12", "ipv4 unicast", "missing or invalid NEXT_HOP 'fd00::12'"),
        ({"origin": "igp"}, "10.0.0.12", "ipv6 unicast", "missing or invalid NEXT_HOP '10.0.0.12'"),
        ({"origin": "igp"}, "fe80::1%eth0", "ipv6 unicast", "missing or invalid NEXT_HOP 'fe80::1%eth0'"),
        ({"origin": "invalid"}, "10.0.0.12", "ipv4 unicast", "undefined ORIGIN 'invalid'"),
        ({"origin": ["igp"]}, "10.0.0.12", "ipv4 unicast", "undefined ORIGIN ['igp']"),
        (
            {"origin": "igp", "attribute-0xF0-0x40": "0x0102"},
            "10.0.0.12",
            "ipv4 unicast",
            "unrecognised well-known attribute 240",
        ),
    ],
)
def test_malformed_announcements_are_treated_as_withdraw(attribute, nexthop, family, problem):
    prefixes = ("198.51.100.0/24",) if family.startswith("ipv4") else ("2001:db8::/32",)
    events = ev.parse_line(_announce(attribute, nexthop, family, prefixes))
    assert events == [ev.RoutesWithdrawn("10.0.0.12", family, prefixes, malformed=problem)]


@pytest.mark.parametrize(
    "attribute",
    [
        {"origin": "egp"},
        {"origin": "incomplete", "attribute-0xF0-0xC0": "0x01"},  # unknown *optional* transitive: passed on
        {"origin": "igp", "attribute-0x21-0x80": "0x01"},  # unknown optional non-transitive
    ],
)
def test_well_formed_announcements_with_optional_unknowns_are_learned(attribute):
    (event,) = ev.parse_line(_announce(attribute))
    assert isinstance(event, ev.RoutesLearned) and event.prefixes == ("198.51.100.0/24",)


def test_only_the_malformed_next_hop_group_is_withdrawn():
    update = {
        "attribute": {"origin": "igp"},
        "announce": {
            "ipv4 unicast": {"no-nexthop": [{"nlri": "198.51.100.0/24"}], "10.0.0.12": ["10.9.0.0/16"]}
        },
    }
    withdrawn, learned = ev.parse_line(_update_line(update))
    assert withdrawn.prefixes == ("198.51.100.0/24",) and withdrawn.malformed
    assert learned.prefixes == ("10.9.0.0/16",) and learned.nexthop == "10.0.0.12"
