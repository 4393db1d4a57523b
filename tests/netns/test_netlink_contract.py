"""The ``Netlink`` contract, held against both implementations: ``FakeNetlink`` and the real kernel.

Every unit test of ``routes.table``, ``routes.monitor`` and ``routes.recursive`` trusts the fake to behave
as the kernel does, so each test here runs twice with the same body: once against ``FakeNetlink`` and once
against ``KernelNetlink`` in a throwaway network namespace (root only; the fake half runs anywhere). A
behaviour the kernel has and the fake lacks fails the fake's half: fix the fake, not the test.

The namespace (``nc-<random>``) holds ``v0`` (10.9.0.1/24, fd00:9::1/64, peer ``v1``) for gateway-only
next hops, and ``d1`` (10.8.0.1/24, fd00:8::1/64, peer ``d1p``), the device the tests take down and
delete. The fake gets devices of the same names, ``v0`` as the device a gateway resolves to.

Notifications arrive asynchronously from the kernel, so a test that asserts what did NOT arrive writes a
marker route afterwards and reads up to it: a netlink socket delivers in order, so whatever the action
caused is in front of the marker.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from routes.model import (
    ADD,
    BLACKHOLE,
    DEL,
    LINK_DEL,
    LINK_DOWN,
    LINK_UP,
    RTPROT_BIRD,
    RTPROT_BOOT,
    LinkEvent,
    Netlink,
    Nexthop,
    Route,
    RouteEvent,
    RouteWatch,
)
from routes.netlink import KernelNetlink
from routes.testing import FakeNetlink

DEVICES = ("lo", "v0", "v1", "d1", "d1p")


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


class FakeBackend:
    """The test's hands on the fake: what another writer or an admin would do to the kernel."""

    def __init__(self) -> None:
        self.fake = FakeNetlink(links=DEVICES, default_device="v0")
        self.nl: Netlink = self.fake

    def foreign(self, route: Route) -> None:
        self.fake.add_foreign(route)

    def remove(self, route: Route) -> None:
        self.fake.remove(route)

    def add_link(self, name: str) -> None:
        self.fake.add_link(name)

    def set_link(self, name: str, up: bool) -> None:
        self.fake.set_link(name, up)

    def delete_link(self, name: str) -> None:
        self.fake.delete_link(name)

    def close(self) -> None:
        self.fake.close()


class KernelBackend:
    """The same hands on a real namespace, through iproute2 (a writer independent of our code)."""

    def __init__(self) -> None:
        self.ns = f"nc-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        try:
            for cmd in (
                "link set lo up",
                "link add v0 type veth peer name v1",
                "link add d1 type veth peer name d1p",
                "addr add 10.9.0.1/24 dev v0",
                "-6 addr add fd00:9::1/64 dev v0 nodad",
                "addr add 10.8.0.1/24 dev d1",
                "-6 addr add fd00:8::1/64 dev d1 nodad",
                "link set v0 up", "link set v1 up", "link set d1 up", "link set d1p up",
            ):
                ip(self.ns, *cmd.split())
        except BaseException:
            subprocess.run(["ip", "netns", "del", self.ns], check=False)
            raise
        self.nl = KernelNetlink(netns=self.ns)

    def foreign(self, route: Route) -> None:
        hop = route.nexthops[0]
        family = "-6" if ":" in route.dst else "-4"
        ip(self.ns, family, "route", "replace", route.dst, "via", hop.gateway, "dev", hop.ifname,
           "proto", str(route.proto), "metric", str(route.priority))

    def remove(self, route: Route) -> None:
        family = "-6" if ":" in route.dst else "-4"
        ip(self.ns, family, "route", "del", route.dst, "proto", str(route.proto),
           "metric", str(route.priority))  # fmt: skip

    def add_link(self, name: str) -> None:
        ip(self.ns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")

    def set_link(self, name: str, up: bool) -> None:
        ip(self.ns, "link", "set", name, "up" if up else "down")

    def delete_link(self, name: str) -> None:
        ip(self.ns, "link", "del", name)

    def close(self) -> None:
        try:
            self.nl.close()
        finally:
            subprocess.run(["ip", "netns", "del", self.ns], check=False)


Backend = FakeBackend | KernelBackend


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.netns)])
def backend(request) -> Iterator[Backend]:
    made = FakeBackend() if request.param == "fake" else KernelBackend()
    try:
        yield made
    finally:
        made.close()


_markers = itertools.count(1)


async def events_until_marker(backend: Backend, watch: RouteWatch) -> list[RouteEvent | LinkEvent]:
    """Everything ``watch`` delivers before a marker route written now (see the module docstring)."""
    marker = Route(f"10.99.{next(_markers)}.0/24", nexthops=(Nexthop("10.9.0.2", "v0"),), proto=RTPROT_BOOT)
    backend.foreign(marker)
    seen: list[RouteEvent | LinkEvent] = []
    async with asyncio.timeout(5):
        async for event in watch:
            if isinstance(event, RouteEvent) and event.route.dst == marker.dst:
                return seen
            seen.append(event)
    raise AssertionError(f"the watch ended before the marker; saw {seen}")


def via(gateway: str, dev: str = "v0") -> tuple[Nexthop, ...]:
    return (Nexthop(gateway, dev),)


def at(routes: list[Route], *dsts: str) -> set[tuple[str, int, int]]:
    return {(r.dst, r.proto, r.priority) for r in routes if r.dst in dsts}


async def test_an_exclusive_create_of_a_taken_key_is_eexist(backend):
    ours = Route("10.70.0.0/24", nexthops=via("10.9.0.2"))
    assert await backend.nl.apply([], [], [ours]) == []
    [(_, text)] = await backend.nl.apply([], [], [ours])
    assert text.startswith("EEXIST")
    backend.foreign(Route("10.71.0.0/24", nexthops=via("10.9.0.3"), proto=RTPROT_BOOT))
    [(_, text)] = await backend.nl.apply([], [], [Route("10.71.0.0/24", nexthops=via("10.9.0.2"))])
    assert text.startswith("EEXIST")
    assert at(await backend.nl.dump_routes(None), "10.71.0.0/24") == {("10.71.0.0/24", RTPROT_BOOT, 0)}


@pytest.mark.parametrize("dst, gateway, metric", [("10.72.0.0/24", "10.9.0.2", 0),
                                                  ("fd72::/64", "fd00:9::2", 1024)])
async def test_a_replace_overwrites_a_foreign_route_at_its_key(backend, dst, gateway, metric):
    backend.foreign(Route(dst, nexthops=via(gateway), proto=RTPROT_BOOT, priority=metric))
    assert await backend.nl.apply([Route(dst, nexthops=via(gateway))], []) == []
    assert at(await backend.nl.dump_routes(None), dst) == {(dst, RTPROT_BIRD, metric)}


@pytest.mark.parametrize("dst, gateway", [("10.73.0.0/24", "10.9.0.2"), ("fd73::/64", "fd00:9::2")])
async def test_a_delete_only_removes_a_route_of_its_own_protocol(backend, dst, gateway):
    foreign = Route(dst, nexthops=via(gateway), proto=RTPROT_BOOT, priority=1024)
    backend.foreign(foreign)
    ours = Route(dst, nexthops=via(gateway), priority=1024)
    [(_, text)] = await backend.nl.apply([], [ours])
    assert text.startswith("ESRCH")
    assert at(await backend.nl.dump_routes(None), dst) == {(dst, RTPROT_BOOT, 1024)}
    assert await backend.nl.apply([ours], []) == []  # the replace takes the key over ...
    assert await backend.nl.apply([], [ours]) == []  # ... and now the delete matches
    assert at(await backend.nl.dump_routes(None), dst) == set()
    [(_, text)] = await backend.nl.apply([], [ours])  # gone already
    assert text.startswith("ESRCH")


async def test_ipv6_metric_zero_reads_back_as_1024_and_ipv4_keeps_it(backend):
    routes = [Route("fd74::/64", nexthops=via("fd00:9::2")), Route("10.74.0.0/24", nexthops=via("10.9.0.2"))]
    assert await backend.nl.apply(routes, []) == []
    read = {r.dst: r for r in await backend.nl.dump_routes(RTPROT_BIRD)}
    assert (read["fd74::/64"].priority, read["10.74.0.0/24"].priority) == (1024, 0)
    assert read["fd74::/64"].nexthops == via("fd00:9::2")  # the device the kernel resolved is named


async def test_a_device_going_down_drops_ipv4_routes_silently_and_ipv6_ones_with_notice(backend):
    v4 = Route("10.75.0.0/24", nexthops=via("10.8.0.2", "d1"))
    v6 = Route("fd75::/64", nexthops=via("fd00:8::2", "d1"))
    assert await backend.nl.apply([v4, v6], []) == []
    watch = backend.nl.watch()
    try:
        backend.set_link("d1", False)
        events = await events_until_marker(backend, watch)
    finally:
        watch.close()
    deleted = {e.route.dst for e in events if isinstance(e, RouteEvent) and e.action == DEL}
    assert "10.75.0.0/24" not in deleted and "fd75::/64" in deleted
    assert (LINK_DOWN, "d1") in {(e.action, e.ifname) for e in events if isinstance(e, LinkEvent)}
    assert at(await backend.nl.dump_routes(None), v4.dst, v6.dst) == set()


async def test_a_deleted_device_takes_its_ipv4_routes_without_a_notification(backend):
    v4 = Route("10.76.0.0/24", nexthops=via("10.8.0.2", "d1"))
    assert await backend.nl.apply([v4], []) == []
    watch = backend.nl.watch()
    try:
        backend.delete_link("d1")
        events = await events_until_marker(backend, watch)
    finally:
        watch.close()
    assert not [e for e in events if isinstance(e, RouteEvent) and e.route.dst == v4.dst]
    assert (LINK_DEL, "d1") in {(e.action, e.ifname) for e in events if isinstance(e, LinkEvent)}
    assert at(await backend.nl.dump_routes(None), v4.dst) == set()


@pytest.mark.parametrize(
    "dsts, gateway",
    [
        (("10.77.0.0/24", "10.77.1.0/24", "10.78.0.0/24"), "10.9.0.2"),
        (("fd77::/64", "fd77:1::/64", "fd78::/64"), "fd00:9::2"),
    ],
    ids=["ipv4", "ipv6"],
)
async def test_a_watch_drops_our_additions_and_deletions_of_the_excluded_protocol_but_not_others(
    backend, dsts, gateway
):
    """The excluded protocol's additions, and its deletions made through this adapter, are not delivered;
    someone else's deletion of such a route is (the route table repairs it), as is every other protocol's."""
    mine, theirs, foreign = dsts
    watch = backend.nl.watch(exclude_proto=RTPROT_BIRD)
    try:
        ours = [Route(mine, nexthops=via(gateway)), Route(theirs, nexthops=via(gateway))]
        assert await backend.nl.apply(ours, []) == []
        other = Route(foreign, nexthops=via(gateway), proto=RTPROT_BOOT)
        backend.foreign(other)
        assert await backend.nl.apply([], ours[:1]) == []
        backend.remove(ours[1])  # another writer
        backend.remove(other)
        events = await events_until_marker(backend, watch)
    finally:
        watch.close()
    seen = [(e.action, e.route.dst, e.route.proto, e.ifname) for e in events if isinstance(e, RouteEvent)]
    assert seen == [(ADD, foreign, RTPROT_BOOT, "v0"), (DEL, theirs, RTPROT_BIRD, "v0"),
                    (DEL, foreign, RTPROT_BOOT, "v0")]  # fmt: skip


async def test_a_watch_without_exclusion_sees_our_own_writes(backend):
    watch = backend.nl.watch()
    try:
        assert await backend.nl.apply([Route("10.79.0.0/24", nexthops=via("10.9.0.2"))], []) == []
        events = await events_until_marker(backend, watch)
    finally:
        watch.close()
    assert [(e.action, e.route.dst) for e in events if isinstance(e, RouteEvent)] == [(ADD, "10.79.0.0/24")]


@pytest.mark.parametrize("exclude", [None, RTPROT_BIRD, 80])
async def test_a_dump_leaves_the_excluded_protocol_out(backend, exclude):
    shapes = {"10.80.0.0/24": RTPROT_BIRD, "10.81.0.0/24": 80, "10.82.0.0/24": RTPROT_BOOT}
    for dst, proto in shapes.items():
        backend.foreign(Route(dst, nexthops=via("10.9.0.2"), proto=proto))
    dumped = at(await backend.nl.dump_routes(None, exclude_proto=exclude), *shapes)
    assert dumped == {(d, p, 0) for d, p in shapes.items() if p != exclude}
    assert at(await backend.nl.dump_routes(RTPROT_BIRD), *shapes) == {("10.80.0.0/24", RTPROT_BIRD, 0)}


async def test_link_events_follow_a_device_from_creation_to_deletion(backend):
    watch = backend.nl.watch()
    try:
        backend.add_link("d9")
        created = await events_until_marker(backend, watch)
        backend.set_link("d9", True)
        raised = await events_until_marker(backend, watch)
        backend.delete_link("d9")
        deleted = await events_until_marker(backend, watch)
    finally:
        watch.close()

    def of_d9(events: list[RouteEvent | LinkEvent]) -> list[str]:
        return [e.action for e in events if isinstance(e, LinkEvent) and e.ifname == "d9"]

    assert of_d9(created) and set(of_d9(created)) == {LINK_DOWN}  # a new device starts down
    assert of_d9(raised)[-1:] == [LINK_UP]
    assert of_d9(deleted)[-1:] == [LINK_DEL]
    assert await backend.nl.link_index("d9") is None


@pytest.mark.parametrize("dst, gateway, survives", [("10.83.0.0/24", "10.9.0.2", True),
                                                    ("fd83::/64", "fd00:9::2", False)])
async def test_a_delete_names_the_type_for_ipv4_only(backend, dst, gateway, survives):
    """IPv4 matches the route type of a delete (fib_table_delete); IPv6 ignores it (ip6_route_del)."""
    assert await backend.nl.apply([Route(dst, BLACKHOLE)], []) == []
    failed = await backend.nl.apply([], [Route(dst, nexthops=via(gateway))])
    assert [text.split(":")[0] for _, text in failed] == (["ESRCH"] if survives else [])
    assert bool(at(await backend.nl.dump_routes(RTPROT_BIRD), dst)) == survives
