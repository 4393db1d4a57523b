"""Per-route state of the kernel dataplane stays compact: ``routes.compact`` and the maps built on it.

The maps are checked against a plain dict-of-dicts model under random operations, and the structures that
hold 100k routes are checked for their shape (a ``One`` per destination, shared strings and next hops), so
that a change which silently went back to a dict or a copy per route fails here rather than in a benchmark.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from routes.compact import One, pop, put
from routes.kernel_view import KernelView
from routes.model import ADD, LINK_DOWN, RTPROT_BIRD, RTPROT_BOOT, LinkEvent, Nexthop, Route, RouteEvent
from routes.monitor import WorkloadRouteWatcher
from routes.recursive import NexthopResolver
from routes.resolve import bgp_metric
from routes.testing import FakeNetlink

OPS = st.lists(st.tuples(st.booleans(), st.sampled_from("abc"), st.integers(0, 2), st.integers(0, 3)))


@given(OPS)
def test_put_and_pop_behave_as_a_dict_of_dicts_and_a_single_entry_is_a_one(ops):
    compact: dict[str, object] = {}
    model: dict[str, dict[int, int]] = {}
    for is_put, dst, key, value in ops:
        if is_put:
            new = key not in model.get(dst, {})
            assert put(compact, dst, key, value) is new
            model.setdefault(dst, {})[key] = value
        else:
            expected = model.get(dst, {}).pop(key, None)
            if dst in model and not model[dst]:
                del model[dst]
            assert pop(compact, dst, key) == expected
        assert {d: dict(m) for d, m in compact.items()} == model
        assert all(isinstance(m, One) == (len(m) == 1) for m in compact.values())


def test_one_answers_as_a_mapping():
    one = One(5, "x")
    assert (one[5], one.get(5), one.get(6), one.get(6, "d")) == ("x", "x", None, "d")
    assert (5 in one, 6 in one) == (True, False)
    assert (list(one), list(one.items()), list(one.values()), len(one)) == ([5], [(5, "x")], ["x"], 1)
    expected = {5: "x"}
    assert one == expected and expected == one and one != {5: "y"}  # the monitor compares both ways


def fresh(text: str) -> str:
    """A new string object equal to ``text``, as a decoder makes one per message."""
    return "".join(list(text))


def felix(ip: str, dev: str, metric: int = 0) -> Route:
    # Each route decoded from its own message: nothing shared with its neighbours to begin with.
    return Route(f"{ip}/32", nexthops=(Nexthop("", fresh(dev)),), proto=RTPROT_BOOT, priority=metric)


def ours(ip: str, metric: int = 0) -> Route:
    return Route(f"{ip}/32", nexthops=(Nexthop("10.0.0.12"),), proto=RTPROT_BIRD, priority=metric)


def test_kernel_view_holds_a_one_per_destination_and_shares_foreign_descriptions():
    view = KernelView()
    dump = [felix(f"10.1.0.{i}", "cali1") for i in range(20)] + [ours(f"10.2.0.{i}") for i in range(20)]
    view.load(dump, 254, lambda r: r.proto == RTPROT_BIRD)
    view.record(ours("10.2.0.99"))
    view.add_foreign("10.1.0.99/32", 0, fresh("unicast proto 3 metric 0 dev cali1"))
    assert all(type(m) is One for m in (*view.programmed.values(), *view.foreign.values()))
    assert len({id(m[0]) for m in view.foreign.values()}) == 1  # one description string for them all
    view.record(ours("10.2.0.99", metric=7))  # a second metric: a dict, back to a One when it goes
    assert dict(view.programmed["10.2.0.99/32"]) == {0: ours("10.2.0.99"), 7: ours("10.2.0.99", 7)}
    view.forget(ours("10.2.0.99"))
    assert type(view.programmed["10.2.0.99/32"]) is One and view.installed == 21


def test_the_resolver_keeps_one_route_per_destination_and_shares_equal_next_hops():
    resolver = NexthopResolver()
    resolver.load([felix(f"10.1.0.{i}", "cali1") for i in range(10)])
    resolver.observe(RouteEvent(ADD, felix("10.1.0.50", "cali1"), "cali1"))
    held = [r for bucket in resolver._index.values() for r in bucket.values()]
    assert all(type(r) is Route for r in held) and len({id(r.nexthops) for r in held}) == 1
    resolver.observe(RouteEvent(ADD, felix("10.1.0.50", "cali1", metric=5), "cali1"))
    assert [r.priority for r in resolver._index[(4, 32)][0x0A010032]] == [0, 5]
    assert resolver.lookup("10.1.0.50") == felix("10.1.0.50", "cali1")


async def test_the_watcher_keeps_a_one_per_prefix_and_its_device_index_follows_every_metric():
    watcher = WorkloadRouteWatcher(FakeNetlink(), lambda changes: None)
    for event in (
        RouteEvent(ADD, felix("10.1.0.1", "cali1"), "cali1"),
        RouteEvent(ADD, felix("10.1.0.2", "cali1"), "cali1"),
        RouteEvent(ADD, felix("10.1.0.2", "cali2", metric=9), "cali2"),  # a pod recreated elsewhere
        RouteEvent(ADD, felix("10.1.0.3", "cali2"), "cali2"),
        RouteEvent(ADD, felix("10.1.0.3", "cali2", metric=4), "cali2"),  # two metrics, one device
    ):
        watcher.feed(event)
    assert type(watcher._routes["10.1.0.1/32"]) is One
    assert watcher._on_device == {
        "cali1": {"10.1.0.1/32", "10.1.0.2/32"}, "cali2": {"10.1.0.2/32", "10.1.0.3/32"}
    }
    watcher.feed(LinkEvent(LINK_DOWN, 7, "cali1"))
    assert watcher.devices == {"10.1.0.2/32": "cali2", "10.1.0.3/32": "cali2"}
    assert type(watcher._routes["10.1.0.2/32"]) is One
    watcher.feed(LinkEvent(LINK_DOWN, 8, "cali2"))
    assert (watcher.devices, watcher._on_device) == ({}, {})
    if watcher._flush is not None:
        watcher._flush.cancel()


def test_routes_with_the_same_local_preference_share_their_metric():
    assert bgp_metric(100) is bgp_metric(100) and bgp_metric(None) == bgp_metric(100)
    assert bgp_metric(200) == 2**31 - 1 - 200
