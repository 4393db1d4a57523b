"""routes.ownership: the shared conflict descriptions agree with ``describe`` and stay bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from routes import ownership
from routes.model import BLACKHOLE, UNICAST, Nexthop, Route

HOPS = st.builds(
    Nexthop,
    st.sampled_from(["", "10.0.0.1", "fd00::1"]),
    st.sampled_from(["", "eth0", "cali1"]),
    st.booleans(),
)
ROUTES = st.builds(
    Route,
    dst=st.sampled_from(["10.244.1.1/32", "10.0.0.0/24", "fd00::/64"]),
    type=st.sampled_from([UNICAST, BLACKHOLE]),
    nexthops=st.lists(HOPS, max_size=3).map(tuple),
    proto=st.sampled_from([2, 3, 12, 80]),
    priority=st.sampled_from([0, 100, 1024]),
)


@given(st.lists(ROUTES, max_size=30), st.data())
def test_shared_descriptions_are_describe_whatever_the_next_hop_tuples(routes, data):
    """Routes sharing a next-hop tuple (as the decoder hands them out) and routes with equal but distinct
    tuples get ``describe``'s answer either way, also past the bound."""
    described = ownership.SharedDescriptions(limit=3)
    shared: dict[tuple[Nexthop, ...], tuple[Nexthop, ...]] = {}
    for route in routes:
        if data.draw(st.booleans()):
            hops = shared.setdefault(route.nexthops, route.nexthops)
            route = Route(route.dst, route.type, hops, route.table, route.proto, route.priority)
        assert described(route) == ownership.describe(route)
        assert len(described) <= 3


def test_routes_with_one_tuple_share_one_string_and_the_memo_is_bounded():
    described = ownership.SharedDescriptions(limit=4)
    hops = (Nexthop("", "cali1"),)
    first = described(Route("10.244.1.1/32", nexthops=hops, proto=3))
    again = described(Route("10.244.1.2/32", nexthops=hops, proto=3))
    assert first is again and first == "unicast proto 3 metric 0 dev cali1"
    for metric in range(10):
        route = Route("10.244.1.3/32", nexthops=hops, proto=3, priority=metric)
        assert described(route) == ownership.describe(route)
        assert len(described) <= 4


def test_an_equal_tuple_that_is_not_the_held_one_is_described_afresh():
    """The key holds the tuple's identity: a different tuple, even one now at a reused address, is not
    answered with another tuple's line."""
    described = ownership.SharedDescriptions()
    first = described(Route("10.244.1.1/32", nexthops=(Nexthop("", "cali1"),), proto=3))
    other = described(Route("10.244.1.2/32", nexthops=(Nexthop("", "cali2"),), proto=3))
    assert first.endswith("cali1") and other.endswith("cali2")
