"""NexthopResolver's memory is bounded: the next hops asked about start over at every full recomputation,
stop growing at ``limit`` (counted), and a bounded resolver never misses a change that matters."""

from __future__ import annotations

import logging

from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from routes.bounds import BoundHits
from routes.model import ADD, DEL, LINK_DOWN, LinkEvent, Nexthop, Route, RouteEvent
from routes.recursive import NexthopResolver

CONNECTED = Route("192.0.2.0/24", nexthops=(Nexthop("", "eth0"),), proto=2)


def via(dst: str, gateway: str = "192.0.2.1", device: str = "eth0") -> Route:
    return Route(dst, nexthops=(Nexthop(gateway, device),), proto=4)


def hits(registry: CollectorRegistry, what: str) -> float:
    return registry.get_sample_value("calico_bgp_bound_hits_total", {"what": what}) or 0.0


def resolver_with(registry: CollectorRegistry | None = None, **limit: int) -> NexthopResolver:
    bounds = {"bounds": BoundHits(registry)} if registry is not None else {}
    resolver = NexthopResolver(**limit, **bounds)
    resolver.load([CONNECTED, via("10.0.0.0/8")])
    return resolver


def test_a_next_hop_no_longer_asked_about_stops_making_changes_relevant():
    resolver = resolver_with()
    resolver.resolve("10.1.2.3")  # a peer's next hop, in use
    assert resolver.observe(RouteEvent(ADD, via("10.1.0.0/16", "192.0.2.2"), "eth0"))
    # True: the caller recomputes every route, and that pass asks about the next hops still in use. The
    # peer left, so nobody asks about 10.1.2.3 again, and changes near it cost nothing from now on.
    assert not resolver.observe(RouteEvent(ADD, via("10.1.2.0/24", "192.0.2.3"), "eth0"))
    resolver.resolve("10.1.2.3")  # asked again (the peer is back): changes near it matter again
    assert resolver.observe(RouteEvent(DEL, via("10.1.2.0/24", "192.0.2.3"), "eth0"))


def test_a_full_dump_starts_the_next_hops_over():
    resolver = resolver_with()
    resolver.resolve("10.1.2.3")
    resolver.load([CONNECTED, via("10.0.0.0/8")])  # the caller recomputes everything after a dump
    assert not resolver.observe(RouteEvent(ADD, via("10.1.0.0/16", "192.0.2.2"), "eth0"))


def test_past_its_limit_the_resolver_counts_once_and_treats_every_change_as_relevant():
    registry = CollectorRegistry()
    resolver = resolver_with(registry, limit=3)
    assert hits(registry, "nexthop_queries") == 0  # exported before the first hit
    for n in range(1, 6):
        resolver.resolve(f"10.9.0.{n}")
    assert len(resolver._queried) == 3
    assert hits(registry, "nexthop_queries") == 1
    # 10.7.0.0/16 covers none of the remembered three, but a forgotten one might be behind it.
    assert resolver.observe(RouteEvent(ADD, via("10.7.0.0/16", "192.0.2.2"), "eth0"))
    resolver.resolve("10.9.0.1")  # the full pass that follows: only one next hop is in use now
    assert not resolver.observe(RouteEvent(ADD, via("10.8.0.0/16", "192.0.2.2"), "eth0"))
    assert hits(registry, "nexthop_queries") == 1


def test_unreachable_next_hops_are_logged_once_each_within_the_limit(caplog):
    registry = CollectorRegistry()
    resolver = NexthopResolver(limit=2, bounds=BoundHits(registry))
    resolver.load([CONNECTED])
    with caplog.at_level(logging.WARNING, logger="routes.recursive"):
        for _ in range(3):
            for n in range(1, 6):
                assert resolver.resolve(f"198.51.100.{n}") == ()
    unreachable = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(resolver.unresolved) <= 2 and len(unreachable) == 2
    assert hits(registry, "nexthop_unresolved") >= 1


GATEWAYS = ["10.1.2.3", "10.1.2.4", "10.1.5.5", "10.2.0.1", "10.3.0.1", "192.0.2.9"]
ROUTES = [
    via("10.0.0.0/8"),
    via("10.1.0.0/16", "192.0.2.2"),
    via("10.1.2.0/24", "192.0.2.3", "eth1"),
    via("10.1.2.3/32", "192.0.2.4"),
    via("10.2.0.0/16", "192.0.2.5", "eth1"),
    Route("10.3.0.0/16", nexthops=(Nexthop("", "eth1"),), proto=2),
]
STEPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(("add", "del")), st.sampled_from(ROUTES)),
        st.tuples(st.sampled_from(("use", "drop")), st.sampled_from(GATEWAYS)),
        st.tuples(st.just("link_down"), st.sampled_from(("eth0", "eth1"))),
    ),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(steps=STEPS, limit=st.integers(1, 4))
@example(steps=[("use", "10.2.0.1"), ("use", "10.1.5.5"), ("add", ROUTES[1])], limit=1)  # past the limit
def test_a_bounded_resolver_never_misses_a_change_to_a_next_hop_in_use(steps, limit):
    """The daemon's contract: a True from observe() (or a dump) is followed by a pass that resolves every
    next hop in use; a new next hop is resolved when it appears. Whatever the limit, an observe() that
    says False left the resolution of every next hop in use as it was."""
    resolver = NexthopResolver(limit=limit)
    resolver.load([CONNECTED])
    in_use: set[str] = set()
    for step, arg in steps:
        if step == "use":
            in_use.add(arg)
            resolver.resolve(arg)
            continue
        if step == "drop":
            in_use.discard(arg)
            continue
        before = {g: resolver.lookup(g) for g in in_use}
        if step == "link_down":
            event: RouteEvent | LinkEvent = LinkEvent(LINK_DOWN, 2 if arg == "eth0" else 3, arg)
        else:
            event = RouteEvent(ADD if step == "add" else DEL, arg, arg.nexthops[0].ifname)
        if resolver.observe(event):
            for gateway in in_use:  # the full recomputation
                resolver.resolve(gateway)
        else:
            assert {g: resolver.lookup(g) for g in in_use} == before
        assert len(resolver._queried) <= limit
