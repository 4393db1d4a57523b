"""Where the daemon's per-route memory goes: tracemalloc over the real classes, fed N synthetic routes.

Stage: a measurement tool beside the benchmark (``python -m bench.rib_memory --side A --routes 100000``); it
starts no lab and needs no privileges.

What it measures, in this process: the speaker, route table, next-hop resolver and (side A) workload watcher
wired as the daemon wires them, over ``routes.testing.FakeNetlink``. Side A holds N of Felix's workload /32s
(each seen as a dump, as at start, and exported to one established peer); side B learns N /32s from one peer
(``--per-update`` routes per ExaBGP UPDATE event) and programs them. It prints the bytes held per route
after the burst, in total and by allocating file:line (the top ``--top``).

Complicating factors: the fake kernel's own copies of the routes are left out of the figures (a real kernel
holds them outside the process), and so is this module; the kernel's decoded routes, which a real daemon
builds per notification, are built here once by the fake, so what the daemon keeps of them is counted only
where it keeps its own objects. One run is enough: the figures are allocation counts, not timings.

``--read-back`` (side B) then measures the daemon's periodic full read-back of the table: the fake kernel's
routes become fresh copies, as the real kernel's dump decodes them, the table resyncs, the copies the daemon
did not keep are dropped (a real kernel keeps them out of the process) and the process RSS is read before
and after, with the heap trimmed as the daemon trims it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import ipaddress
import json
import os
import tracemalloc

from bgp.heap import libc_trim
from bgp.speaker import Speaker
from confgen.intent import NodeIntent, PeerIntent, PoolIntent
from routes.model import RTPROT_BIRD, RTPROT_BOOT, Nexthop, Route
from routes.monitor import WorkloadRouteWatcher
from routes.recursive import NexthopResolver
from routes.table import RouteTable
from routes.testing import FakeNetlink

A, B = "10.0.0.11", "10.0.0.12"
CONNECTED = Route("10.0.0.0/24", nexthops=(Nexthop("", "eth0"),), proto=2)
FAKE = "*/routes/testing.py"
LEFT_OUT = ("*/bench/rib_memory.py", "*/tracemalloc.py")


def intent(me: str, peer: str) -> NodeIntent:
    return NodeIntent(
        node="bench", router_id=me, local_as=64512, ipv4_address=me, ipv4_network="10.0.0.0/24",
        peers=(PeerIntent(name="Mesh", address=peer, family="ipv4", peer_as=64512, local_as=64512,
                          local_address=me, passive=me < peer),),
        pools=(PoolIntent("10.128.0.0/9"),), local_blocks=("10.200.0.0/26",),
    )  # fmt: skip


def prefixes(count: int) -> list[str]:
    base = int(ipaddress.IPv4Address("10.130.0.1"))  # in the pool, outside the local block: announced
    return [f"{ipaddress.IPv4Address(base + i)}/32" for i in range(count)]


def event(me: str, peer: str, kind: str, body: dict) -> str:
    return json.dumps({"type": kind, "neighbor": {"address": {"local": me, "peer": peer}, **body}})


def announce(me: str, peer: str, nlri: list[str]) -> str:
    update = {"attribute": {"origin": "igp", "local-preference": 100},
              "announce": {"ipv4 unicast": {peer: [{"nlri": p} for p in nlri]}}}
    return event(me, peer, "update", {"message": {"update": update}})


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def read_back(kernel: FakeNetlink, table: RouteTable) -> str:
    """RSS around one full read-back whose dump agrees with what the table programmed."""
    trim = libc_trim() or (lambda: None)

    def settle() -> float:
        gc.collect()
        trim()
        return rss_mib()

    before = settle()
    # New objects, as each dump decodes them; gateway-only next hops come back with the device resolved.
    for key, route in list(kernel.routes.items()):
        hops = tuple(dataclasses.replace(h, ifname=h.ifname or "eth0") for h in route.nexthops)
        kernel.routes[key] = dataclasses.replace(route, dst=str(route.dst), nexthops=hops)
    result = await table.resync()
    kernel.routes.clear()  # the kernel's copies are not the daemon's memory
    after = settle()
    return (f"read-back: {result.repaired} repaired, RSS {before:.1f} -> {after:.1f} MiB "
            f"({after - before:+.1f} MiB; the fake kernel's copies dropped)")


async def measure(side: str, count: int, per_update: int, top: int, readback: bool = False) -> list[str]:
    kernel = FakeNetlink()
    kernel.add_foreign(CONNECTED)
    table = RouteTable(kernel, hold_deletes=False)
    resolver = NexthopResolver(proto=RTPROT_BIRD)
    lines: list[int] = []

    async def send(batch: list[str]) -> None:
        lines.append(len(batch))

    me, peer = (A, B) if side == "A" else (B, A)
    speaker = Speaker(send=send, route_table=table, resolve=resolver.resolve)
    speaker.set_intent(intent(me, peer))
    up = event(me, peer, "state", {"asn": {"local": 64512, "peer": 64512}, "state": "up"})
    wanted = prefixes(count)
    gc.collect()
    tracemalloc.start(4)  # deep enough to leave out what the fake kernel allocates through dataclasses
    before = tracemalloc.take_snapshot()
    task = None
    if side == "A":
        for dst in wanted:
            kernel.add_foreign(Route(dst, nexthops=(Nexthop("", "calibench0"),), proto=RTPROT_BOOT))
        watcher = WorkloadRouteWatcher(kernel, speaker.update_workload_routes, debounce=0.0,
                                       observers=(table.observe, resolver.observe),
                                       dump_observers=(resolver.load,))
        task = asyncio.ensure_future(watcher.run())
        await watcher.ready.wait()
        speaker.handle_line(up)
        await speaker.flush()
        await table.apply()
    else:
        resolver.load([CONNECTED])
        speaker.set_workload_routes(())
        speaker.handle_line(up)
        for i in range(0, count, per_update):
            speaker.handle_line(announce(me, peer, wanted[i:i + per_update]))
        await speaker.flush()
    del wanted
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    if task is not None:
        task.cancel()
    # Whatever the fake kernel allocated, however deep; this module's own objects where it made them.
    left_out = [tracemalloc.Filter(False, p, all_frames=p == FAKE) for p in (FAKE, *LEFT_OUT)]
    stats = after.filter_traces(left_out).compare_to(before.filter_traces(left_out), "lineno")
    total = sum(s.size_diff for s in stats)
    out = [f"side {side}, {count} routes ({sum(lines)} command lines sent): "
           f"{total / 2**20:.1f} MiB held, {total / count:.0f} B per route"]
    for stat in stats[:top]:
        frame = stat.traceback[0]
        out.append(f"  {stat.size_diff / count:7.1f} B/route {stat.count_diff:>8} objects  "
                   f"{frame.filename}:{frame.lineno}")
    if readback:
        del before, after, stats
        out.append(await read_back(kernel, table))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("A", "B"), required=True)
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--per-update", type=int, default=800, help="routes per UPDATE event (side B)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--read-back", action="store_true", help="then RSS around a full read-back (side B)")
    args = parser.parse_args()
    print("\n".join(asyncio.run(measure(args.side, args.routes, args.per_update, args.top, args.read_back))))


if __name__ == "__main__":
    main()
