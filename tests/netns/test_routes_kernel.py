"""routes against the real kernel, inside a throwaway network namespace.

Every test gets a namespace named ``rt-<random>`` with: ``v0`` (10.9.0.1/24, fd00:9::1/64) whose peer
``v1`` is also inside the namespace, a veth named ``tunl0`` (the kernel here has no ipip module; only
the name matters for onlink routes) and a workload veth ``cali1a2b3c``. The sockets are opened in the
namespace (``KernelNetlink(netns=...)``, through pyroute2's forked helper), so this process never
enters it. Results are checked with ``ip -j``, an independent reader.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess

import pytest

from routes.model import ADD, BLACKHOLE, Nexthop, Route, RouteEvent
from routes.monitor import WorkloadRouteWatcher
from routes.netlink import KernelNetlink
from routes.recursive import NexthopResolver
from routes.resolve import kernel_routes
from routes.table import RouteTable

pytestmark = pytest.mark.netns

CALI = "cali1a2b3c"


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def ip_json(ns: str, *args: str) -> list[dict]:
    out = ip(ns, "-j", *args)
    return json.loads(out) if out.strip() else []


@pytest.fixture
def ns():
    name = f"rt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            "link add v0 type veth peer name v1",
            "link add tunl0 type veth peer name tunl0p",
            f"link add {CALI} type veth peer name wl0",
            "addr add 10.9.0.1/24 dev v0",
            "-6 addr add fd00:9::1/64 dev v0 nodad",
            "link set v0 up", "link set v1 up", "link set tunl0 up", "link set tunl0p up",
            f"link set {CALI} up", "link set wl0 up",
        ):
            ip(name, *cmd.split())
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netlink(ns):
    nl = KernelNetlink(netns=ns)
    try:
        yield nl
    finally:
        nl.close()


def ours(ns: str, family: str = "-4") -> dict[str, dict]:
    return {r["dst"]: r for r in ip_json(ns, family, "route", "show", "proto", "12")}


def all_routes(ns: str) -> list[dict]:
    return ip_json(ns, "route", "show", "table", "all") + ip_json(ns, "-6", "route", "show", "table", "all")


def many(n: int, gw: str = "10.9.0.2") -> list[Route]:
    hop = (Nexthop(gw),)
    return [Route(f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32", nexthops=hop) for i in range(n)]


async def test_ten_thousand_routes_in_one_apply_then_read_back(ns, netlink):
    table = RouteTable(netlink, hold_deletes=False)
    table.set_desired(many(10_000))
    result = await table.apply()
    assert result.replaced == 10_000 and not result.errors
    listed = ours(ns)
    assert len(listed) == 10_000
    assert {r["gateway"] for r in listed.values()} == {"10.9.0.2"}
    assert len(await netlink.dump_routes(12)) == 10_000
    again = await table.resync()  # read back from the kernel: nothing to repair, nothing to write
    assert (again.repaired, again.replaced, again.deleted) == (0, 0, 0)
    table.set_desired(many(10_000, gw="10.9.0.3"))  # every next hop changes: replaces only
    result = await table.apply()
    assert (result.replaced, result.deleted) == (10_000, 0)
    assert {r["gateway"] for r in ours(ns).values()} == {"10.9.0.3"}
    table.set_desired([])
    assert (await table.apply()).deleted == 10_000
    assert ours(ns) == {}


async def test_route_shapes(ns, netlink):
    table = RouteTable(netlink, hold_deletes=False)
    shapes = [
        Route("10.50.0.0/26", nexthops=(Nexthop("10.9.0.2"), Nexthop("10.9.0.3"))),
        Route("10.51.0.0/26", BLACKHOLE),
        Route("10.52.0.0/26", nexthops=(Nexthop("172.16.0.12", "tunl0", onlink=True),)),
        Route("fd10::/64", nexthops=(Nexthop("fd00:9::2"), Nexthop("fd00:9::3"))),
        Route("fd11::/64", BLACKHOLE),
        Route("fd12::/64", nexthops=(Nexthop("fd00:9::2"),)),
    ]
    table.set_desired(shapes)
    result = await table.apply()
    assert not result.errors, result.errors
    v4, v6 = ours(ns), ours(ns, "-6")
    assert sorted(h["gateway"] for h in v4["10.50.0.0/26"]["nexthops"]) == ["10.9.0.2", "10.9.0.3"]
    assert v4["10.51.0.0/26"]["type"] == "blackhole"
    assert (v4["10.52.0.0/26"]["dev"], v4["10.52.0.0/26"]["gateway"]) == ("tunl0", "172.16.0.12")
    assert "onlink" in v4["10.52.0.0/26"]["flags"]
    assert sorted(h["gateway"] for h in v6["fd10::/64"]["nexthops"]) == ["fd00:9::2", "fd00:9::3"]
    assert v6["fd11::/64"]["type"] == "blackhole"
    assert v6["fd12::/64"]["gateway"] == "fd00:9::2" and v6["fd12::/64"]["metric"] == 1024
    read = {r.dst: r for r in await netlink.dump_routes(12)}
    assert read["10.52.0.0/26"].nexthops == (Nexthop("172.16.0.12", "tunl0", True),)
    assert read["fd10::/64"].nexthops == (Nexthop("fd00:9::2", "v0"), Nexthop("fd00:9::3", "v0"))
    again = await table.resync()  # every shape reads back as what we wrote
    assert (again.repaired, again.replaced) == (0, 0)


async def test_foreign_routes_survive(ns, netlink):
    ip(ns, "route", "add", "10.244.5.7/32", "dev", CALI, "proto", "boot", "scope", "link")
    ip(ns, "route", "add", "10.244.6.0/26", "via", "10.9.0.5", "proto", "80")
    ip(ns, "route", "add", "10.244.7.0/26", "via", "10.9.0.5", "table", "100", "proto", "12")
    ip(ns, "route", "add", "10.244.8.8/32", "dev", "v0", "proto", "3")
    ip(ns, "route", "add", "10.244.9.0/26", "dev", CALI, "proto", "12")  # ours by number, Felix's by device
    before = all_routes(ns)
    table = RouteTable(netlink, hold_deletes=False)
    colliding = ["10.244.5.7/32", "10.244.6.0/26", "10.244.7.0/26", "10.244.8.8/32", "10.244.9.0/26"]
    table.set_desired([Route(d, nexthops=(Nexthop("10.9.0.2"),)) for d in colliding] + many(10))
    result = await table.apply()
    assert result.conflicts == ("10.244.5.7/32", "10.244.6.0/26", "10.244.8.8/32", "10.244.9.0/26")
    assert not result.errors
    assert set(ours(ns)) == {r.dst.removesuffix("/32") for r in many(10)} | {"10.244.7.0/26", "10.244.9.0/26"}
    table.set_desired([])
    await table.apply()
    await table.resync()
    assert all_routes(ns) == before


async def test_kernel_filters_our_protocol_off_the_watch(ns, netlink):
    watch = netlink.watch(exclude_proto=12)
    try:
        ip(ns, "route", "add", "10.60.0.0/24", "via", "10.9.0.2", "proto", "12")
        ip(ns, "route", "add", "10.61.0.0/24", "via", "10.9.0.2", "proto", "80")
        event = await asyncio.wait_for(anext(watch), 1)
        assert isinstance(event, RouteEvent) and event.action == ADD
        assert (event.route.dst, event.route.proto, event.ifname) == ("10.61.0.0/24", 80, "v0")
    finally:
        watch.close()


async def test_watcher_follows_workload_routes_within_a_second(ns, netlink):
    changes: asyncio.Queue[dict[str, str | None]] = asyncio.Queue()
    held: dict[str, str] = {}  # what a consumer of the deltas holds
    ip(ns, "route", "add", "10.244.1.1/32", "dev", CALI, "proto", "boot", "scope", "link")
    watcher = WorkloadRouteWatcher(netlink, changes.put_nowait, debounce=0.01)
    task = asyncio.create_task(watcher.run())
    try:
        assert await asyncio.wait_for(changes.get(), 1) == {"10.244.1.1/32": CALI}
        held["10.244.1.1/32"] = CALI
        ip(ns, "route", "add", "10.244.1.2/32", "dev", CALI, "proto", "boot", "scope", "link")
        ip(ns, "-6", "route", "add", "fd00:244::2/128", "dev", CALI, "proto", "boot")
        ip(ns, "route", "add", "10.244.1.3/32", "dev", "v0", "proto", "boot", "scope", "link")  # not cali
        want = {"10.244.1.1/32", "10.244.1.2/32", "fd00:244::2/128"}
        assert await asyncio.wait_for(_until(changes, held, want), 1) == want
        ip(ns, "route", "del", "10.244.1.1/32", "dev", CALI)
        want = {"10.244.1.2/32", "fd00:244::2/128"}
        assert await asyncio.wait_for(_until(changes, held, want), 1) == want
        ip(ns, "link", "del", CALI)  # pod gone: IPv4 routes vanish without RTM_DELROUTE
        assert await asyncio.wait_for(_until(changes, held, set()), 1) == set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until(queue: asyncio.Queue, held: dict[str, str], want: set[str]) -> set[str]:
    while set(held) != want:
        for prefix, device in (await queue.get()).items():
            if device is None:
                held.pop(prefix, None)
            else:
                held[prefix] = device
    return set(held)


async def test_restart_adopts_previous_routes_and_sweeps_only_when_released(ns, netlink):
    for n in range(4):  # left behind by the previous run (persist)
        ip(ns, "route", "add", f"10.70.{n}.0/24", "via", "10.9.0.2", "proto", "12")
    ip(ns, "-6", "route", "add", "fd70::/64", "via", "fd00:9::2", "proto", "12")
    table = RouteTable(netlink)  # deletes held: restart safety
    table.set_desired([Route("10.70.0.0/24", nexthops=(Nexthop("10.9.0.2"),)),
                       Route("10.70.1.0/24", nexthops=(Nexthop("10.9.0.3"),)),
                       Route("fd70::/64", nexthops=(Nexthop("fd00:9::2"),))])
    result = await table.apply()
    assert (result.replaced, result.deleted, result.held) == (1, 0, 2)  # only the changed next hop
    assert len(ours(ns)) == 4 and set(ours(ns, "-6")) == {"fd70::/64"}
    table.hold_deletes(False)
    result = await table.apply()
    assert result.deleted == 2
    gateways = {d: r["gateway"] for d, r in ours(ns).items()}
    assert gateways == {"10.70.0.0/24": "10.9.0.2", "10.70.1.0/24": "10.9.0.3"}


async def test_deletions_of_our_routes_pass_the_kernel_filter_and_are_repaired(ns, netlink):
    table = RouteTable(netlink, hold_deletes=False)
    table.set_desired(many(3))
    await table.apply()
    watch = netlink.watch(exclude_proto=12)
    try:
        ip(ns, "route", "del", "10.100.0.1/32", "proto", "12")  # someone else removes one of ours
        event = await asyncio.wait_for(anext(watch), 1)
        assert (event.action, event.route.dst, event.route.proto) == ("del", "10.100.0.1/32", 12)
        assert table.observe(event) is True
        assert (await table.apply()).replaced == 1
        assert "10.100.0.1" in ours(ns)
        with pytest.raises(TimeoutError):  # our own re-add is filtered out in the kernel
            await asyncio.wait_for(anext(watch), 0.2)
    finally:
        watch.close()


async def test_recursive_next_hops_follow_the_kernels_routes(ns, netlink):
    """BIRD's ``gateway recursive`` against the real table: a BGP next hop behind a router goes in via the
    router, and moves when the kernel's route to it changes (learned through notifications)."""
    ip(ns, "route", "add", "198.51.100.0/24", "via", "10.9.0.254", "proto", "static")
    resolver = NexthopResolver()
    table = RouteTable(netlink, hold_deletes=False)
    changed = asyncio.Event()

    def observe(event):
        if resolver.observe(event):
            changed.set()

    watcher = WorkloadRouteWatcher(netlink, lambda _: None, debounce=0.01, observers=[observe],
                                   dump_observers=[resolver.load])
    task = asyncio.create_task(watcher.run())

    async def program() -> dict:
        table.set_desired(kernel_routes({"10.80.0.0/26": ("198.51.100.7",), "10.81.0.0/26": ("10.9.0.2",)},
                                        [], [], resolve=resolver.resolve))
        assert not (await table.apply()).errors
        return {dst: (r.get("gateway"), r.get("dev")) for dst, r in ours(ns).items()}

    try:
        await asyncio.wait_for(watcher.ready.wait(), 1)
        assert await program() == {"10.80.0.0/26": ("10.9.0.254", "v0"), "10.81.0.0/26": ("10.9.0.2", "v0")}
        ip(ns, "route", "add", "198.51.100.0/25", "via", "10.9.0.253", "proto", "static")
        await asyncio.wait_for(changed.wait(), 1)
        assert (await program())["10.80.0.0/26"] == ("10.9.0.253", "v0")
        changed.clear()
        ip(ns, "route", "del", "198.51.100.0/25")
        ip(ns, "route", "del", "198.51.100.0/24")
        await asyncio.wait_for(changed.wait(), 1)
        assert "10.80.0.0/26" not in await program()  # unreachable next hop: nothing installed
        assert resolver.unresolved == {"198.51.100.7"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class CountingNetlink:
    """The real netlink seam, with a record of every destination written (the test's independent count)."""

    def __init__(self, inner: KernelNetlink) -> None:
        self.inner = inner
        self.writes: list[str] = []

    async def dump_routes(self, proto=None, table=254, *, exclude_proto=None):
        return await self.inner.dump_routes(proto, table, exclude_proto=exclude_proto)

    async def apply(self, replaces, deletes, creates=()):
        self.writes.extend(r.dst for r in (*replaces, *creates))
        return await self.inner.apply(replaces, deletes, creates)


async def test_a_route_the_kernel_refuses_is_retried_alone_with_back_off(ns, netlink):
    """An unreachable gateway (ENETUNREACH) and a foreign route on a destination we want: the first is
    written again once per back-off and nothing else is, the second is never written; both go in once the
    kernel allows. The clock is injected: an hour of the daemon's one-second retry checks, instantly."""
    from routes.table import RETRY_MAX

    now = [1000.0]
    counting = CountingNetlink(netlink)
    table = RouteTable(counting, hold_deletes=False, clock=lambda: now[0])
    ip(ns, "route", "add", "10.244.60.0/26", "via", "10.9.0.5", "proto", "80")  # someone else's
    refused = Route("10.244.50.0/26", nexthops=(Nexthop("10.77.0.1"),))  # no route to 10.77.0.1
    held = Route("10.244.60.0/26", nexthops=(Nexthop("10.9.0.2"),))
    table.set_desired([refused, held, *many(50)])
    first = await table.apply()
    assert [(r.dst, text.split(":")[0]) for r, text in first.errors] == [(refused.dst, "ENETUNREACH")]
    assert first.conflicts == (held.dst,) and len(ours(ns)) == 50
    counting.writes.clear()
    for _ in range(3600):
        now[0] += 1.0
        await table.retry_due()
    assert set(counting.writes) == {refused.dst}
    assert len(counting.writes) <= 5 + 3600 / RETRY_MAX
    ip(ns, "addr", "add", "10.77.0.2/24", "dev", "v0")  # the gateway becomes reachable
    ip(ns, "route", "del", "10.244.60.0/26", "proto", "80")  # and the destination free
    table.invalidate()  # what the daemon's watcher does on the foreign route's deletion, here by hand
    now[0] += RETRY_MAX
    await table.apply()
    assert {"10.244.50.0/26", "10.244.60.0/26"} <= set(ours(ns)) and table.failures == {}
    assert table.next_retry() is None


@pytest.mark.parametrize("count", [3, 200])  # sent from the event loop / from a worker thread
@pytest.mark.parametrize("chunk_bytes", [4096, 256 * 1024])  # many chunks / one
async def test_a_batch_reports_exactly_its_refused_requests(ns, count, chunk_bytes):
    """Only a chunk's last request asks for an ack: a refusal anywhere in a chunk (first, middle, closing
    it) still comes back for its own route, and every other route is in the kernel."""
    netlink = KernelNetlink(netns=ns, chunk_bytes=chunk_bytes)
    try:
        good = many(count)
        unreachable = [Route(f"10.244.{i}.0/26", nexthops=(Nexthop("10.77.0.1"),)) for i in range(count)]
        # a refused request at every third position, the last one included
        batch = [unreachable[i] if i % 3 == 2 or i == count - 1 else good[i] for i in range(count)]
        errors = await netlink.apply(batch, ())
        refused = {r.dst for r in batch if r in unreachable}
        assert sorted(r.dst for r, _ in errors) == sorted(refused)
        assert {text.split(":")[0] for _, text in errors} == {"ENETUNREACH"}
        installed = {dst if "/" in dst else f"{dst}/32" for dst in ours(ns)}  # ip shows a /32 bare
        assert installed == {r.dst for r in batch} - refused
        missing = [r for r in good if r.dst not in installed]
        gone = await netlink.apply((), missing)  # deletes of absent routes are refused, one by one
        assert sorted(r.dst for r, _ in gone) == sorted(r.dst for r in missing)
    finally:
        netlink.close()


async def test_link_names_match_ip_link_across_many_dump_messages(ns, netlink):
    """Our own link dump (no pyroute2): every device by index, 300 of them spanning several datagrams, and a
    rename seen on the next refresh."""
    batch = "".join(f"link add lk{i} type veth peer name lp{i}\n" for i in range(150))
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
    expected = {link["ifindex"]: link["ifname"] for link in ip_json(ns, "link", "show")}
    assert len(expected) > 300
    assert await netlink.link_names() == expected
    ip(ns, "link", "set", "lk7", "name", "renamed7")
    index = next(i for i, name in expected.items() if name == "lk7")
    assert await netlink.link_index("renamed7") == index
    assert (await netlink.link_names())[index] == "renamed7"


def test_benchmark_command_runs_and_cleans_up(capsys):
    """``python -m routes.bench`` end to end on a small count (its figures are not asserted: not a timed
    test); it must leave no namespace behind."""
    from routes import bench

    assert bench.main(["--routes", "300", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "route programming: 300 IPv4 /32 routes" in out and "target: RouteTable add" in out
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                          check=True).stdout.split() if n.startswith("rtbench-")]
