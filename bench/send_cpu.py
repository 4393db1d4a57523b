"""The sending daemon's CPU for a bulk add and delete of Felix's /32s, in one process, over a real kernel.

Stage: a measurement tool beside the benchmark (``python -m bench.send_cpu --routes 100000 --repeats 2``);
root, no lab: it creates one uniquely named network namespace and always removes it.

What it measures: node A's side of workload (a) without ExaBGP, node B or etcd. The kernel watch, the
workload watcher, the route table's and the next-hop resolver's observers and the speaker with one
established iBGP peer are wired as ``bgp.daemon`` wires them, over ``routes.netlink.KernelNetlink`` in the
namespace; ``ip -batch`` writes N ``/32 dev cali… scope link proto boot`` routes (then deletes them) and the
process's own CPU seconds (user + system) are read from the batch's start until the speaker has handed
command lines for all N prefixes to its ``send``. The ``ip`` process's CPU and the kernel's insertion are
not counted; the notifications' delivery to our socket mostly is not either (it happens in ``ip``'s
context). So the figure is the daemon's own per-route work on the send path, which the end-to-end bulk
figures cannot separate from the three other processes sharing the two cores.

Complicating factors: the CPU figure is steadier than wall time on a shared machine, but it is still a
timing: run it under ``flock /tmp/bench.lock`` and compare builds paired and alternating (the same script
runs an older tree's code with ``PYTHONPATH=<tree>``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from bgp.speaker import Speaker
from confgen.intent import NodeIntent, PeerIntent, PoolIntent
from routes.model import RTPROT_BIRD
from routes.monitor import WorkloadRouteWatcher
from routes.netlink import KernelNetlink
from routes.recursive import NexthopResolver
from routes.table import RouteTable

A, B = "10.0.0.11", "10.0.0.12"
DEVICE = "calibench0"
POOL = "172.16.0.0/12"  # as the benchmark's: no local block in it, so every /32 is exported on its own
DEADLINE = 300.0  # seconds for one burst to be sent completely


def _intent() -> NodeIntent:
    peer = PeerIntent(name="Mesh_10_0_0_12", address=B, family="ipv4", peer_as=64512, local_as=64512,
                      local_address=A)  # fmt: skip
    return NodeIntent(
        node="node1", router_id=A, local_as=64512, ipv4_address=A, ipv4_network="10.0.0.0/24", peers=(peer,),
        pools=(PoolIntent("192.168.0.0/16"), PoolIntent(POOL)), local_blocks=("192.168.1.0/26",),
    )  # fmt: skip


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _batches(directory: Path, count: int) -> dict[str, Path]:
    base = int(ipaddress.IPv4Network(POOL).network_address) + 1
    addrs = [str(ipaddress.IPv4Address(base + i)) for i in range(count)]
    files = {"add": directory / "add", "delete": directory / "delete"}
    files["add"].write_text("".join(f"route add {a}/32 dev {DEVICE} scope link proto boot\n" for a in addrs))
    files["delete"].write_text("".join(f"route del {a}/32 dev {DEVICE} proto boot\n" for a in addrs))
    return files


async def _measure(ns: str, count: int, repeats: int, directory: Path) -> list[dict[str, float | str]]:
    netlink = KernelNetlink(netns=ns)
    table = RouteTable(netlink)
    resolver = NexthopResolver(proto=RTPROT_BIRD)
    sent = [0]

    async def send(lines: list[str]) -> bool:
        sent[0] += sum(line.count("/") for line in lines)
        return True

    speaker = Speaker(send=send, route_table=table, resolve=resolver.resolve)
    speaker.set_intent(_intent())

    def kernel_event(event) -> None:  # as bgp.daemon's
        repair = table.observe(event)
        if resolver.observe(event):
            speaker.nexthops_changed()
        elif repair:
            speaker.kernel_changed()

    def kernel_dump(routes) -> None:
        resolver.load(routes)
        table.invalidate()
        speaker.nexthops_changed()

    def changed(changes) -> None:
        speaker.update_workload_routes(changes, read_at=watcher.burst_read_at)

    watcher = WorkloadRouteWatcher(netlink, changed, debounce=0.0, observers=[kernel_event],
                                   dump_observers=[kernel_dump])  # fmt: skip
    tasks = [asyncio.ensure_future(watcher.run()), asyncio.ensure_future(speaker.run())]
    up = {"type": "state", "neighbor": {"address": {"local": A, "peer": B},
                                        "asn": {"local": 64512, "peer": 64512}, "state": "up"}}  # fmt: skip
    results: list[dict[str, float | str]] = []
    try:
        async with asyncio.timeout(30):
            await watcher.ready.wait()
        speaker.handle_line(json.dumps(up))
        await asyncio.sleep(0.3)
        batches = _batches(directory, count)
        for _ in range(repeats):
            for action in ("add", "delete"):
                sent[0] = 0
                cpu, wall = _cpu(), time.perf_counter()
                proc = await asyncio.create_subprocess_exec("ip", "-n", ns, "-batch", str(batches[action]))
                async with asyncio.timeout(DEADLINE):
                    while sent[0] < count:
                        await asyncio.sleep(0.005)
                results.append(
                    {"action": action, "cpu_s": _cpu() - cpu, "wall_s": time.perf_counter() - wall}
                )
                await proc.wait()
                await asyncio.sleep(0.5)  # the last flush's stragglers, outside the next figure
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        netlink.close()
    return results


def measure(count: int, repeats: int) -> list[dict[str, float | str]]:
    ns = f"sendcpu{os.getpid()}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
        _ip("-n", ns, "addr", "add", f"{A}/24", "dev", "eth0")
        _ip("-n", ns, "link", "add", DEVICE, "type", "veth", "peer", "name", "benchpod0")
        for link in ("eth0", "eth0peer", DEVICE, "benchpod0"):
            _ip("-n", ns, "link", "set", link, "up")
        with tempfile.TemporaryDirectory(prefix="sendcpu") as directory:
            return asyncio.run(_measure(ns, count, repeats, Path(directory)))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for row in measure(args.routes, args.repeats):
        print(
            f"{row['action']:6} {args.routes}: CPU {row['cpu_s']:.2f} s, wall {row['wall_s']:.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
