import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.exabgp.commands import COMMAND, Advertisement, eor_command, peer_commands, well_formed

NH = "10.0.0.11"


def test_one_line_per_attribute_set_and_one_command_per_prefix():
    changes = {
        "192.168.1.0/26": Advertisement(NH),
        "192.168.1.64/26": Advertisement(NH),
        "192.168.9.9/32": None,
        "192.168.7.0/26": Advertisement(NH, communities=((64512, 100),)),
    }
    lines = peer_commands("10.0.0.12", changes)
    assert lines == [
        "neighbor 10.0.0.12 withdraw attributes next-hop 10.0.0.11 nlri 192.168.9.9/32",
        "neighbor 10.0.0.12 announce attributes next-hop 10.0.0.11 origin igp "
        "nlri 192.168.1.0/26 192.168.1.64/26",
        "neighbor 10.0.0.12 announce attributes next-hop 10.0.0.11 origin igp community [ 64512:100 ] "
        "nlri 192.168.7.0/26",
    ]
    mentioned = [p for line in lines for p in line.split(" nlri ")[1].split()]
    assert sorted(mentioned) == sorted(changes)


def test_chunking():
    changes = {f"10.1.{i // 256}.{i % 256}/32": Advertisement(NH) for i in range(2500)}
    lines = peer_commands("10.0.0.12", changes, per_line=1000)
    assert [len(line.split(" nlri ")[1].split()) for line in lines] == [1000, 1000, 500]


def test_families_are_not_mixed():
    changes = {
        "2001:db8::/64": Advertisement("fd00::11"),
        "10.0.0.0/24": Advertisement(NH),
        "2001:db8:1::/64": None,
    }
    lines = peer_commands("fd00::12", changes)
    assert lines[0] == "neighbor fd00::12 withdraw attributes next-hop fd00::11 nlri 2001:db8:1::/64"
    assert len(lines) == 3


def test_attributes_rendering():
    adv = Advertisement(
        NH,
        as_path=(65001,),
        local_pref=200,
        med=5,
        large_communities=((1, 2, 3),),
        originator_id="10.0.0.13",
        cluster_list=("1.1.1.1",),
    )
    assert adv.attribute_text() == (
        "next-hop 10.0.0.11 origin igp as-path [ 65001 ] local-preference 200 med 5 "
        "large-community [ 1:2:3 ] originator-id 10.0.0.13 cluster-list [ 1.1.1.1 ]"
    )


SCOPE_ID_ATTACK = "fd00:96::%x\nshutdown\n/112"


class Refusals(list):
    """Collects what a sink reports through its ``refused`` callback."""

    def __call__(self, message: str) -> None:
        assert "\n" not in message and "\r" not in message  # one log line per refusal
        self.append(message)


GOOD = {
    "192.168.1.0/26": Advertisement(NH),
    "192.168.1.64/26": Advertisement(NH, communities=((64512, 100),)),
    "192.168.9.9/32": None,
}


def _by_prefix(lines):
    """{prefix: its command without the NLRI} of a batch."""
    out = {}
    for line in lines:
        command, nlri = line.split(" nlri ")
        for prefix in nlri.split():
            assert prefix not in out  # one command per prefix per batch
            out[prefix] = command
    return out


def _assert_grammar(lines):
    for line in lines:
        assert COMMAND.fullmatch(line), line
        assert "shutdown" not in line


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        (SCOPE_ID_ATTACK, "scope id"),
        ("fd00::%eth0/112", "scope id"),
        ("10.0.0.0/24\nshutdown", "whitespace or a control character"),
        ("10.0.0.0/24 10.9.0.0/16", "whitespace"),
        ("10.0.0.1/24", "host bits"),
        ("10.0.0.0", "no prefix length"),
        ("010.0.0.0/24", "not an IP prefix"),
        ("FD00::/64", "canonical form (fd00::/64)"),
        ("fd00:0::/64", "canonical form (fd00::/64)"),
        ("10.0.0.0/255.255.255.0", "canonical form (10.0.0.0/24)"),
        ("::ffff:10.0.0.0/120", "IPv4-mapped"),
        ("1" * 100_000, "characters long"),
        (None, "not text"),
    ],
)
def test_a_bad_prefix_costs_that_prefix_only(prefix, reason):
    refused = Refusals()
    for adv in (Advertisement(NH), None):
        lines = peer_commands("10.0.0.12", {**GOOD, prefix: adv}, refused=refused)
        assert lines == peer_commands("10.0.0.12", GOOD)  # byte-identical for everything else
    assert len(refused) == 2 and all(reason in message for message in refused)
    assert all("prefix" in message and "10.0.0.12" in message for message in refused)


BAD_ATTRIBUTES = [
    ({"nexthop": "10.0.0.11 nlri 0.0.0.0/0"}, "next hop"),
    ({"nexthop": "fd00::11%x\nshutdown"}, "scope id"),
    ({"nexthop": "::ffff:10.0.0.11"}, "IPv4-mapped"),
    ({"nexthop": "10.0.0.011"}, "not an IP address"),
    ({"origin": "igp\nshutdown"}, "origin"),
    ({"origin": "IGP"}, "origin"),
    ({"as_path": (0,)}, "AS path"),
    ({"as_path": (2**32,)}, "out of range"),
    ({"as_path": ("65001 ] med [ 1",)}, "not an integer"),
    ({"as_path": "65001"}, "not a sequence"),
    ({"local_pref": -1}, "local preference"),
    ({"local_pref": True}, "not an integer"),
    ({"med": 2**64}, "MED"),
    ({"med": "5\nshutdown"}, "not an integer"),
    ({"communities": ((65536, 1),)}, "community"),
    ({"communities": ((1, 2, 3),)}, "not 2 numbers"),
    ({"large_communities": ((1, 2),)}, "not 3 numbers"),
    ({"large_communities": ((1, 2, -3),)}, "out of range"),
    ({"originator_id": "fd00::1"}, "not an IPv4 address"),
    ({"originator_id": None}, "originator id"),
    ({"cluster_list": ("1.1.1.1 ]",)}, "cluster id"),
    ({"cluster_list": ["1.1.1.1"]}, "not hashable"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_ATTRIBUTES, ids=[str(c) for c, _ in BAD_ATTRIBUTES])
def test_bad_attributes_cost_the_prefixes_that_carry_them(change, reason):
    bad = dataclasses.replace(Advertisement(NH), **change)
    refused = Refusals()
    changes = {**GOOD, "10.99.0.0/26": bad, "10.99.0.64/26": bad}
    lines = peer_commands("10.0.0.12", changes, refused=refused)
    assert lines == peer_commands("10.0.0.12", GOOD)
    if reason == "not hashable":  # refused before its fields are looked at: once per prefix
        assert len(refused) == 2 and "10.99.0.64/26" in refused[1]
    else:
        assert len(refused) == 1 and reason in refused[0]
    assert "10.99.0.0/26" in refused[0] and "10.0.0.12" in refused[0]


@pytest.mark.parametrize(
    "peer", ["10.0.0.12; shutdown", "fe80::1%eth0", "10.0.0.12\n", "::ffff:10.0.0.12", "FD00::12", 12]
)
def test_a_bad_peer_gets_nothing_and_is_reported_once(peer):
    refused = Refusals()
    assert peer_commands(peer, GOOD, refused=refused) == []
    assert len(refused) == 1 and "peer address" in refused[0] and "3 route changes" in refused[0]
    assert eor_command(peer, "ipv4", refused=refused) is None
    assert len(refused) == 2


def test_end_of_rib():
    assert eor_command("fd00::12", "ipv6") == "neighbor fd00::12 announce eor ipv6 unicast"
    refused = Refusals()
    assert eor_command("10.0.0.12", "ipv4 unicast\nshutdown", refused=refused) is None
    assert "address family" in refused[0]


def test_an_absent_local_preference_sorts_before_a_value():
    # Advertisements differing only in an absent vs a set local preference (or MED) must not stop the batch:
    # the dataclass order cannot compare None with an int.
    changes = {
        "10.1.0.0/26": Advertisement(NH, local_pref=100),
        "10.2.0.0/26": Advertisement(NH),
        "10.3.0.0/26": Advertisement(NH, med=5),
    }
    lines = peer_commands("10.0.0.12", changes)
    assert [line.split(" nlri ")[1] for line in lines] == ["10.2.0.0/26", "10.3.0.0/26", "10.1.0.0/26"]


def test_the_last_guard_drops_lines_outside_the_grammar():
    refused = Refusals()
    good = "neighbor 10.0.0.12 announce eor ipv4 unicast"
    bad = [
        "neighbor 10.0.0.12 announce eor ipv4 unicast\nshutdown",
        "neighbor 10.0.0.12  announce eor ipv4 unicast",
        "neighbor 10.0.0.12 withdraw attributes next-hop 10.0.0.11 nlri",
        "shutdown",
    ]
    assert well_formed([good, *bad, good], refused) == [good, good]
    assert len(refused) == len(bad) and all("outside the command grammar" in m for m in refused)


def test_every_line_of_a_full_advertisement_is_in_the_grammar():
    adv = Advertisement(
        "fd00::11",
        origin="incomplete",
        as_path=(65001, 4200000000),
        local_pref=0,
        med=2**32 - 1,
        communities=((0, 65535),),
        large_communities=((2**32 - 1, 0, 1),),
        originator_id="10.0.0.13",
        cluster_list=("1.1.1.1", "2.2.2.2"),
    )
    lines = peer_commands("fd00::12", {"2001:db8::/64": adv, "2001:db8:1::/64": None, "::/0": adv})
    assert len(lines) == 2
    _assert_grammar(lines)


TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from([SCOPE_ID_ATTACK, "10.0.0.1", "fd00::1", "::ffff:10.0.0.1", "10.0.0.0/24", " 10.0.0.1"]),
)
NUMBER = st.one_of(st.integers(min_value=-(2**33), max_value=2**33), st.none(), st.booleans(), TEXT)


@st.composite
def advertisements(draw):
    return Advertisement(
        nexthop=draw(TEXT),
        origin=draw(st.one_of(TEXT, st.sampled_from(["igp", "egp", "incomplete"]))),
        as_path=tuple(draw(st.lists(NUMBER, max_size=3))),
        local_pref=draw(NUMBER),
        med=draw(NUMBER),
        communities=tuple(tuple(c) for c in draw(st.lists(st.lists(NUMBER, max_size=3), max_size=2))),
        large_communities=tuple(tuple(c) for c in draw(st.lists(st.lists(NUMBER, max_size=4), max_size=2))),
        originator_id=draw(TEXT),
        cluster_list=tuple(draw(st.lists(TEXT, max_size=2))),
    )


@settings(max_examples=300, deadline=None)
@given(
    peer=TEXT,
    prefixes=st.dictionaries(TEXT, st.one_of(st.none(), advertisements()), max_size=4),
)
def test_arbitrary_values_never_escape_and_never_break_the_grammar(peer, prefixes):
    refused = Refusals()
    changes = {**GOOD, **prefixes}
    lines = peer_commands(peer, changes, refused=refused)
    _assert_grammar(lines)
    sent = _by_prefix(lines)
    # The good prefixes that the arbitrary ones did not replace go out exactly as they do alone.
    alone = _by_prefix(peer_commands(peer, {p: a for p, a in GOOD.items() if p not in prefixes}))
    assert {p: c for p, c in sent.items() if p in alone} == alone
    if not refused:  # nothing is left out silently
        assert sent.keys() == changes.keys()
