"""Route programming benchmark: KernelNetlink.apply and RouteTable.apply against ``ip -batch``.

Stage: a tool, not part of the pipeline. ``python -m routes.bench --routes 100000`` (root) creates a
throwaway network namespace with a veth, then for each round installs and deletes N /32 routes via one
gateway three ways: ``KernelNetlink.apply`` (the raw batched encoder), ``RouteTable`` (planning + the
same encoder, i.e. what the daemon pays) and ``ip -batch`` (iproute2, one acked request per route: the
reference from docs/kernel-contract.md).
It prints one table: seconds, routes/s and the ratio to ``ip -batch`` per
method for add and delete, the read-back (dump) time, and whether the target (docs/performance.md#targets:
RouteTable at least half of ``ip -batch``'s add rate) is met; the namespace is removed in all outcomes.
The machines are noisy: compare figures from one run only; medians of ``--rounds`` (default 3) are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from routes.model import Nexthop, Route
from routes.netlink import KernelNetlink
from routes.table import RouteTable

GATEWAY = "10.9.0.2"


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def _count(ns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "route", "show", "proto", "12"], check=True, capture_output=True, text=True
    ).stdout
    return out.count("\n")


def _routes(n: int) -> list[Route]:
    return [
        Route(f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32", nexthops=(Nexthop(GATEWAY),))
        for i in range(n)
    ]


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def _round(ns: str, routes: list[Route], batch_add: str, batch_del: str) -> dict[str, float]:
    n = len(routes)
    out: dict[str, float] = {}
    netlink = KernelNetlink(netns=ns)
    try:
        out["netlink add"] = await _timed(lambda: _checked(netlink.apply(routes, []), n))
        assert _count(ns) == n
        start = time.perf_counter()
        dumped = await netlink.dump_routes(12)
        out["dump (read-back)"] = time.perf_counter() - start
        assert len(dumped) == n
        out["netlink del"] = await _timed(lambda: _checked(netlink.apply([], routes), n))
        assert _count(ns) == 0

        table = RouteTable(netlink, hold_deletes=False)
        await table.apply()  # the initial read-back of an empty table is not part of the figure
        table.set_desired(routes)
        out["RouteTable add"] = await _timed(table.apply)
        assert _count(ns) == n
        table.set_desired([])
        out["RouteTable del"] = await _timed(table.apply)
        assert _count(ns) == 0
    finally:
        netlink.close()

    for label, path in (("ip -batch add", batch_add), ("ip -batch del", batch_del)):
        start = time.perf_counter()
        _ip(ns, "-batch", path)
        out[label] = time.perf_counter() - start
        assert _count(ns) == (n if label.endswith("add") else 0)
    return out


async def _checked(call: Awaitable[list[tuple[Route, str]]], n: int) -> None:
    errors = await call
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} routes failed, first: {errors[0]}")


TARGET = 0.5  # RouteTable must install at least half as fast as ip -batch (docs/performance.md)
METHODS = (("ip -batch (iproute2)", "ip -batch"), ("KernelNetlink.apply", "netlink"),
           ("RouteTable.apply", "RouteTable"))


def render(n: int, rounds: int, median: dict[str, float], ns: str = "") -> str:
    """The result table: seconds, routes/s and the ratio to ``ip -batch`` per method and operation."""
    where = f" (namespace {ns})" if ns else ""
    lines = [
        f"route programming: {n:,} IPv4 /32 routes via one gateway, median of {rounds} round(s){where}",
        "",
        f"{'':<22}{'add':^28}{'delete':^28}",
        f"{'method':<22}" + f"{'seconds':>9}{'routes/s':>11}{'vs ip':>8}" * 2,
    ]
    for label, key in METHODS:
        row = f"{label:<22}"
        for op in ("add", "del"):
            seconds = median[f"{key} {op}"]
            ratio = median[f"ip -batch {op}"] / seconds
            row += f"{seconds:>9.3f}{n / seconds:>11,.0f}{ratio:>8.2f}"
        lines.append(row)
    dump = median["dump (read-back)"]
    ratio = median["ip -batch add"] / median["RouteTable add"]
    lines += [
        "",
        f"read-back (one dump of {n:,} routes): {dump:.3f} s, {n / dump:,.0f} routes/s",
        f"target: RouteTable add >= {TARGET:.1f} x ip -batch: {'met' if ratio >= TARGET else 'NOT met'} "
        f"({ratio:.2f})",
        "(shared, noisy machines: compare figures from one run only)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m routes.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    ns = f"rtbench-{secrets.token_hex(4)}"
    routes = _routes(args.routes)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in ("link set lo up", "link add v0 type veth peer name v1", "addr add 10.9.0.1/24 dev v0",
                    "link set v0 up", "link set v1 up"):
            _ip(ns, *cmd.split())
        with tempfile.TemporaryDirectory() as tmp:
            batch_add, batch_del = os.path.join(tmp, "add"), os.path.join(tmp, "del")
            with open(batch_add, "w") as f:
                f.writelines(f"route add {r.dst} via {GATEWAY} proto 12\n" for r in routes)
            with open(batch_del, "w") as f:
                f.writelines(f"route del {r.dst} proto 12\n" for r in routes)
            rounds = [asyncio.run(_round(ns, routes, batch_add, batch_del)) for _ in range(args.rounds)]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(render(args.routes, args.rounds, median, ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
