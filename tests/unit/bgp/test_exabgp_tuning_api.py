"""bgp.exabgp.tuning_api: the bulk ``announce|withdraw attributes`` fast path builds the very routes ExaBGP's
own parser builds, and the route handlers write the same log lines; compared with upstream on a corpus."""

from __future__ import annotations

import types
from types import SimpleNamespace

import pytest
from exabgp.logger import log as exabgp_log
from exabgp.logger.option import option as exabgp_log_option
from exabgp.reactor.api import API
from exabgp.reactor.api.command import Command

from bgp.exabgp import tuning, tuning_api

PEERS = ["neighbor 10.0.0.12 local-ip 10.0.0.11"]
V4 = " ".join(f"10.65.{n // 256}.{n % 256}/32" for n in range(300))
ATTRIBUTES = [
    "next-hop 10.0.0.11 origin igp",
    "next-hop 10.0.0.11 origin igp as-path [ 64512 64513 ] local-preference 100 med 5",
    "next-hop 10.0.0.11 origin egp community [ 64512:100 65535:65281 ] large-community [ 64512:1:2 ]",
    "next-hop 10.0.0.11 origin incomplete originator-id 10.0.0.9 cluster-list [ 10.0.0.1 10.0.0.2 ]",
]
FAST = [  # commands the fast path takes
    *(f"announce attributes {a} nlri {V4}" for a in ATTRIBUTES),
    f"withdraw attributes next-hop 10.0.0.11 nlri {V4}",
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.0/26 10.2.0.0/24 0.0.0.0/0 10.3.0.0/16",
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.0/26 224.0.0.0/4",  # family: the last
    "announce attributes next-hop fd00::11 origin igp nlri fd00:10::/64 fd00:10:0:1::/64 fd00::1/128 ::/0",
    "withdraw attributes next-hop :: nlri fd00:10::/64 fd00:10:0:1::/64",
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.0/26 10.1.0.64/26 10.1.0.0/26",  # twice
    "announce attributes origin igp nlri 10.1.0.0/26 10.2.0.0/24",  # no next hop: the handler refuses it
]
UPSTREAM = [  # commands it leaves to upstream, whole: the results must still be upstream's
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.0/26",  # one prefix: nothing to gain
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.1/24 10.2.0.0/24",  # host bits
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.0/33 10.2.0.0/24",  # mask too long
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.999/32 10.2.0.0/24",
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.0 10.2.0.0/24",  # no length
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.0/26  10.2.0.0/24",  # two spaces
    "announce attributes next-hop 10.0.0.11 origin igp nlri 10.1.0.0/26 fd00:10::/64",  # two families
    "announce attributes next-hop 10.0.0.11 origin igp nlri fd00:10::/64 10.1.0.0/26",
    "announce attributes next-hop 10.0.0.11 origin igp path-information 1.2.3.4 nlri 10.1.0.0/26 10.2.0.0/24",
    "announce attributes next-hop 10.0.0.11 origin igp split /27 nlri 10.1.0.0/26 10.2.0.0/24",
    "announce attributes next-hop 10.0.0.11 label 100 nlri 10.1.0.0/26 10.2.0.0/24",
    "announce attributes next-hop 10.0.0.11 rd 1:1 label 100 nlri 10.1.0.0/26 10.2.0.0/24",
    "announce attributes next-hop 10.0.0.11 origin bogus nlri 10.1.0.0/26 10.2.0.0/24",
    "announce attributes next-hop 10.0.0.11 origin igp",
]


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """ExaBGP's logger needs its environment loaded; here its lines are recorded as (level, text)."""
    lines = []
    monkeypatch.setattr(exabgp_log_option, "logger", SimpleNamespace(**{
        level: (lambda name: lambda line: lines.append((name.upper(), line)))(level)
        for level in ("debug", "info", "warning", "error", "critical", "fatal")
    }))
    monkeypatch.setattr(exabgp_log_option, "formater", lambda line, source, level, timestamp: line)
    monkeypatch.setattr(exabgp_log_option, "logit", {})
    monkeypatch.setattr(exabgp_log_option, "enabled", {**exabgp_log_option.enabled, "processes": True})
    monkeypatch.setattr("exabgp.logger.log", exabgp_log)
    exabgp_log_option._set_level("INFO")
    return lines


def _api():
    return API(SimpleNamespace())


def _route(change) -> tuple:
    nlri = change.nlri
    return (
        type(nlri), nlri.afi, nlri.safi, nlri.action, nlri.cidr.pack_nlri(), nlri.cidr.mask,
        getattr(nlri.cidr.mask, "maximum", None),
        type(nlri.nexthop), str(nlri.nexthop), nlri.path_info, sorted(vars(nlri)), change.index(),
        change.extensive(), change.attributes.index(),
    )


def _outcome(parse, command) -> tuple:
    try:
        changes = parse(_api(), command, PEERS)
    except Exception as exc:  # upstream's own refusal must come out unchanged
        return ("raised", type(exc), str(exc))
    shared = len({id(change.attributes) for change in changes}) <= 1
    return ("routes", [_route(change) for change in changes], shared)


@pytest.mark.parametrize("command", FAST + UPSTREAM)
def test_bulk_routes_are_upstreams_routes(command):
    upstream = _outcome(API.api_attributes, command)
    assert _outcome(tuning_api.bulk_attributes(API.api_attributes), command) == upstream


@pytest.mark.parametrize("command", FAST)
def test_the_fast_path_parses_the_attributes_once_with_the_last_prefix(command):
    seen = []

    def upstream(self, text, peers):
        seen.append(text)
        return API.api_attributes(self, text, peers)

    out = tuning_api.bulk_attributes(upstream)(_api(), command, PEERS)
    assert seen == [command.rsplit(" nlri ", 1)[0] + " nlri " + command.rsplit(" ", 1)[1]]
    assert len(out) == len(command.split(" nlri ")[1].split())


@pytest.mark.parametrize("command", UPSTREAM)
def test_what_the_fast_path_is_unsure_of_goes_to_upstream_whole(command):
    seen = []

    def upstream(self, text, peers):
        seen.append(text)
        return API.api_attributes(self, text, peers)

    tuning_api.bulk_attributes(upstream)(_api(), command, PEERS)
    assert seen[-1] == command


def _through_handler(handlers, commands, *, tuned_log, describe=_route):
    """Each command through a route handler; returns (action, route) of every route injected."""
    scheduled, injected = [], []
    reactor = SimpleNamespace(
        peers=lambda service: PEERS,
        asynchronous=SimpleNamespace(schedule=lambda service, line, callback: scheduled.append(callback)),
        processes=SimpleNamespace(answer_done=lambda service: None, answer_error=lambda service: None),
        configuration=SimpleNamespace(
            inject_change=lambda peers, change: injected.append((change.nlri.action, describe(change)))
            or "10.9." not in str(change.nlri)  # "not found" for these, as a withdraw of an unknown route
        ),
    )
    api = API(reactor)
    if tuned_log:  # on the instance: the class stays as shipped for the rest of this process
        api.log_message = types.MethodType(tuning._replace_log_message(API.log_message), api)
        api.log_failure = types.MethodType(tuning._failure_level(API.log_failure), api)
    for command in commands:
        name = "announce attributes" if command.startswith("announce") else "withdraw attributes"
        handlers[name](api, reactor, "calico-bgp", f"neighbor 10.0.0.12 {command}", False)
        for _ in scheduled.pop():
            pass
    return injected


HANDLED = [
    FAST[1], FAST[4], "withdraw attributes next-hop 10.0.0.11 nlri 10.9.0.0/26 10.1.0.0/26",
    "announce attributes next-hop 10.0.0.11 origin bogus nlri 10.1.0.0/26",
    "announce attributes nlri 10.1.0.0/26",
]


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
@pytest.mark.parametrize("tuned_log", [True, False])
def test_route_handlers_inject_and_log_as_upstreams(quiet, level, tuned_log):
    exabgp_log_option._set_level(level)
    upstream = _through_handler(Command.callback["text"], HANDLED, tuned_log=tuned_log)
    upstream_lines, quiet[:] = list(quiet), []
    ours = {name: tuning_api.route_handler(announce, tuning._debug_only)
            for name, announce in tuning.ROUTE_HANDLERS.items()}
    assert _through_handler(ours, HANDLED, tuned_log=tuned_log) == upstream
    assert quiet == upstream_lines
    if tuned_log:  # upstream's own level name for refusals is one its logger drops (patch api_errors)
        assert any("route not found" in line for _, line in quiet)


def test_a_routine_line_at_debug_is_not_built_while_debug_is_off(monkeypatch):
    built = []
    monkeypatch.setattr("exabgp.rib.change.Change.extensive", lambda self: built.append(1) or "x")
    ours = {name: tuning_api.route_handler(announce, tuning._debug_only)
            for name, announce in tuning.ROUTE_HANDLERS.items()}
    assert len(_through_handler(ours, [FAST[0]], tuned_log=True, describe=type)) == 300
    assert built == []
    _through_handler(ours, [FAST[0]], tuned_log=False, describe=type)  # at INFO, upstream's: built
    assert len(built) == 300


def test_handlers_that_changed_shape_are_refused():
    def stranger(self, reactor, service, line, use_json):
        return reactor.asynchronous.schedule(service, line, iter(()))

    assert all(tuning_api.fits(Command.callback["text"][name]) for name in tuning.ROUTE_HANDLERS)
    assert not tuning_api.fits(stranger)
    with pytest.raises(AttributeError, match="announce attributes"):
        tuning._lazy_route_log({"text": {**Command.callback["text"], "announce attributes": stranger}})


def test_netmask_widths_shared_across_families_are_left_as_upstream_leaves_them():
    # ExaBGP's NetMask values are cached and shared by both families; each prefix parsed sets its width.
    v6 = "announce attributes next-hop fd00::11 origin igp nlri fd00::/32 fd01::/32 fd02::/48"
    widths = []
    for parse in (API.api_attributes, tuning_api.bulk_attributes(API.api_attributes)):
        for _ in range(2):  # the second time with whatever the parser may have kept from the first
            parse(_api(), FAST[0], PEERS)  # IPv4 /32s: width 32
            routes = parse(_api(), v6, PEERS)
        widths.append([route.nlri.cidr.mask.maximum for route in routes])
    assert widths[0] == widths[1] == [128, 128, 128]
