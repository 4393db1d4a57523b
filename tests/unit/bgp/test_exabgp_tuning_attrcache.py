"""bgp.exabgp.tuning_attrcache: a command whose attribute text was parsed before gets the routes ExaBGP's own
parser builds, from the kept attribute set; a different text never shares it; what ExaBGP later mutates is
never kept; the cache is bounded. All against ExaBGP's real API parser, Adj-RIB-Out and UPDATE encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from exabgp.bgp.message import Action
from exabgp.bgp.message.open.capability.negotiated import Negotiated
from exabgp.logger.option import option as exabgp_log_option
from exabgp.protocol.family import AFI, SAFI
from exabgp.reactor.api import API
from exabgp.rib.outgoing import OutgoingRIB

from bgp.exabgp import tuning, tuning_api, tuning_attrcache

PEERS = ["neighbor 10.0.0.12 local-ip 10.0.0.11"]
TEXTS = [
    "announce attributes next-hop 10.0.0.11 origin igp",
    "announce attributes next-hop 10.0.0.11 origin igp local-preference 100",
    "announce attributes next-hop 10.0.0.11 origin igp as-path [ 64512 64513 ] local-preference 100 med 5",
    "announce attributes next-hop 10.0.0.11 origin egp community [ 64512:100 65535:65281 ] "
    "large-community [ 64512:1:2 ]",
    "announce attributes next-hop 10.0.0.11 origin incomplete originator-id 10.0.0.9 "
    "cluster-list [ 10.0.0.1 ]",
    "announce attributes next-hop 10.0.0.12 origin igp",
    "withdraw attributes next-hop 10.0.0.11",
    "announce attributes next-hop fd00::11 origin igp",
    "announce attributes origin igp",  # no next hop: upstream's route, which the RIB then refuses
]
TAILS = {  # per family of the text's next hop: one prefix, then another prefix, then several
    "v4": ["10.65.0.1/32", "10.65.0.2/32", "10.66.0.0/26 10.66.0.64/26 10.67.0.0/24"],
    "v6": ["fd00:10::1/128", "fd00:10::2/128", "fd00:10::/64 fd00:10:0:1::/64"],
}


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """ExaBGP's logger needs its environment loaded; these tests only need the calls to go somewhere."""
    monkeypatch.setattr(
        exabgp_log_option,
        "logger",
        SimpleNamespace(
            **dict.fromkeys(
                ("debug", "info", "warning", "error", "critical", "fatal"), lambda *args, **kwargs: None
            )
        ),
    )


def _api():
    return API(SimpleNamespace())


def _route(change) -> tuple:
    nlri = change.nlri
    return (
        type(nlri),
        nlri.afi,
        nlri.safi,
        nlri.action,
        nlri.cidr.pack_nlri(),
        nlri.cidr.mask,
        type(nlri.nexthop),
        str(nlri.nexthop),
        nlri.path_info,
        sorted(vars(nlri)),
        change.index(),
        change.extensive(),
        change.attributes.index(),
        sorted(change.attributes),
    )


def _commands(text: str) -> list[str]:
    tails = TAILS["v6" if "fd00" in text else "v4"]
    return [f"{text} nlri {tail}" for tail in tails]


def _layered():
    """The stack as ``tuning.apply`` builds it: the cache around the bulk fast path around upstream."""
    return tuning_attrcache.cached_attributes(tuning_api.bulk_attributes(API.api_attributes))


@pytest.mark.parametrize("text", TEXTS)
def test_a_text_seen_before_gives_upstreams_routes_with_the_kept_attributes(text):
    parse = _layered()
    api = _api()
    first, *later = _commands(text)
    kept = parse(api, first, PEERS)
    assert len(parse.cache) == 1
    for command in later:
        ours = parse(api, command, PEERS)
        assert [_route(c) for c in ours] == [_route(c) for c in API.api_attributes(_api(), command, PEERS)]
        assert all(c.attributes is kept[0].attributes for c in ours)  # the parser did not run again
        assert all(c.nlri.nexthop is kept[0].nlri.nexthop for c in ours)
    assert len(parse.cache) == 1


def test_a_hit_does_not_run_the_parser_and_a_miss_does():
    seen = []

    def upstream(self, command, peers):
        seen.append(command)
        return API.api_attributes(self, command, peers)

    parse = tuning_attrcache.cached_attributes(upstream)
    api = _api()
    for command in _commands(TEXTS[1]):
        parse(api, command, PEERS)
    assert seen == [_commands(TEXTS[1])[0]]
    parse(api, f"{TEXTS[2]} nlri 10.65.0.1/32", PEERS)
    assert len(seen) == 2


def test_different_texts_never_share_an_attribute_set():
    parse = _layered()
    api = _api()
    routes = [parse(api, f"{text} nlri {TAILS['v4'][0]}", PEERS)[0] for text in TEXTS if "fd00" not in text]
    assert len({id(route.attributes) for route in routes}) == len(routes)
    assert len({route.attributes.index() for route in routes}) == len(routes)
    for text, route in zip([t for t in TEXTS if "fd00" not in t], routes, strict=True):
        assert _route(route) == _route(API.api_attributes(_api(), f"{text} nlri {TAILS['v4'][0]}", PEERS)[0])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("10.1.0.0/24", "224.1.0.0/24"),  # upstream takes the family from the last prefix: multicast
        ("10.1.0.0/26 224.1.0.0/24", "10.1.0.0/26 10.2.0.0/24"),
        ("224.1.0.0/24", "10.1.0.0/24"),
    ],
)
def test_the_family_upstream_takes_from_the_last_prefix_is_part_of_the_key(first, second):
    parse = _layered()
    api = _api()
    text = TEXTS[0]
    for tail in (first, second):
        command = f"{text} nlri {tail}"
        assert [_route(c) for c in parse(api, command, PEERS)] == [
            _route(c) for c in API.api_attributes(_api(), command, PEERS)
        ]
    assert len(parse.cache) == 2


@pytest.mark.parametrize(
    "text",
    [
        "announce attributes next-hop self origin igp",  # remove_self rewrites it on a copy: never kept
        "announce attributes next-hop 10.0.0.11 origin igp watchdog dog1",  # the Adj-RIB-Out pops these
        "announce attributes next-hop 10.0.0.11 origin igp withdraw",
        "announce attributes next-hop 10.0.0.11 origin igp name route-one",
        "announce attributes next-hop 10.0.0.11 origin igp split /27",
        "announce attributes next-hop 10.0.0.11 origin igp path-information 1.2.3.4",
        "announce attributes next-hop 10.0.0.11 label 100",
        "announce attributes next-hop 10.0.0.11 origin bogus",  # refused by upstream
    ],
)
def test_what_exabgp_would_mutate_or_refuses_is_never_kept(text):
    parse = _layered()
    api = _api()
    for command in (f"{text} nlri 10.1.0.0/26", f"{text} nlri 10.2.0.0/26 10.3.0.0/26"):
        try:
            expected = [_route(c) for c in API.api_attributes(_api(), command, PEERS)]
        except Exception as exc:  # upstream's own refusal must come out unchanged
            with pytest.raises(type(exc)):
                parse(api, command, PEERS)
        else:
            assert [_route(c) for c in parse(api, command, PEERS)] == expected
    assert len(parse.cache) == 0


@pytest.mark.parametrize(
    "tail",
    [
        "10.1.0.1/24",
        "10.1.0.0/33",
        "10.1.0.999/32",
        "10.1.0.0",
        "10.1.0.0/26  10.2.0.0/24",
        "fd00::/64",
        "10.1.0.0/26 fd00::/64",
    ],
)
def test_a_tail_upstream_would_refuse_or_treat_otherwise_goes_to_it_whole_on_a_hit_too(tail):
    seen = []

    def upstream(self, command, peers):
        seen.append(command)
        return API.api_attributes(self, command, peers)

    parse = tuning_attrcache.cached_attributes(upstream)
    api = _api()
    parse(api, f"{TEXTS[0]} nlri 10.9.0.0/24", PEERS)
    command = f"{TEXTS[0]} nlri {tail}"
    try:
        expected = [_route(c) for c in API.api_attributes(_api(), command, PEERS)]
    except Exception as exc:
        with pytest.raises(type(exc)):
            parse(api, command, PEERS)
    else:
        assert [_route(c) for c in parse(api, command, PEERS)] == expected
    assert seen[-1] == command


def test_the_cache_is_bounded_and_an_evicted_text_is_parsed_again():
    seen = []

    def upstream(self, command, peers):
        seen.append(command)
        return API.api_attributes(self, command, peers)

    parse = tuning_attrcache.cached_attributes(upstream, size=3)
    api = _api()
    texts = [f"announce attributes next-hop 10.0.0.11 origin igp med {n}" for n in range(5)]
    for text in texts:
        parse(api, f"{text} nlri 10.1.0.0/26", PEERS)
    assert len(parse.cache) == 3
    parse(api, f"{texts[-1]} nlri 10.2.0.0/26", PEERS)  # kept: no parse
    assert len(seen) == 5
    parse(api, f"{texts[0]} nlri 10.2.0.0/26", PEERS)  # dropped first: parsed again, still bounded
    assert len(seen) == 6 and len(parse.cache) == 3


@pytest.mark.parametrize(("size", "keys"), [(1, 5), (3, 3), (3, 10), (4096, 100)])
def test_text_cache_keeps_at_most_its_size_and_the_newest(size, keys):
    cache = tuning_attrcache.TextCache(size)
    for n in range(keys):
        cache.put(n, str(n))
        cache.put(n, str(n))  # a key put again is not a new entry
    assert len(cache) == min(size, keys)
    assert cache.get(keys - 1) == str(keys - 1)
    assert cache.get(keys - 1 - size) is None if keys > size else cache.get(0) == "0"


def test_a_kept_set_is_left_unchanged_by_the_adj_rib_out_and_the_encoder():
    negotiated = Negotiated({"capability": {"aigp": False}})
    negotiated.asn4, negotiated.families = True, [(AFI.ipv4, SAFI.unicast)]
    negotiated.local_as = negotiated.peer_as = 64512
    parse = _layered()
    api = _api()
    text = TEXTS[3]
    routes = [c for command in _commands(text) for c in parse(api, command, PEERS)]
    attributes = routes[0].attributes
    before = (dict(attributes), attributes.index(), str(attributes))
    rib = OutgoingRIB(True, [(AFI.ipv4, SAFI.unicast)])
    for change in routes:
        change.nlri.action = Action.ANNOUNCE
        rib.add_to_rib_watchdog(change)  # what inject_change calls for an announce
    wire = [m for update in rib.updates(False) for m in update.messages(negotiated)]
    for change in routes:
        rib.del_from_rib(change)
    wire += [m for update in rib.updates(False) for m in update.messages(negotiated)]
    assert wire
    assert (dict(attributes), attributes.index(), str(attributes)) == before
    again = parse(api, f"{text} nlri 10.70.0.0/24", PEERS)
    assert again[0].attributes is attributes


def test_the_adjustment_fits_the_installed_exabgp_and_can_be_left_out():
    script = "import json; from bgp.exabgp import tuning; print(json.dumps(tuning.apply()))"
    for setting, expected in (("", True), ("skip:api_cache", False)):
        env = {**os.environ, tuning.TUNING_ENV: setting}
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
        )
        applied = json.loads(out.stdout)
        assert ("api_cache" in applied) is expected and out.stderr == ""
        # Wrapped after the bulk fast path, so a miss still goes through it.
        if expected:
            assert applied.index("api_cache") > applied.index("api_bulk")
