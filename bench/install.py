"""Workload (c): how fast learned routes go into the kernel, next to ``ip -batch`` — by running routes.bench.

Stage: the benchmark's workloads. The routes engineer owns ``routes.bench`` (a throwaway namespace, N
/32s via one gateway installed and deleted by ``KernelNetlink.apply``, by ``RouteTable.apply`` and by
``ip -batch``); this module runs it once per repeat in a subprocess and reads its table.

Owns: parsing routes.bench's output into samples (routes/s per method and operation).

Complicating factors: routes.bench prints medians over its own rounds only, so each repeat is a separate
run with ``--rounds 1``, which also gives each repeat a fresh namespace.
"""

from __future__ import annotations

import re
import subprocess
import sys

from bench.stats import Row
from bench.targets import INSTALL
from routes import bench as routes_bench

# Older routes.bench: one line per method and operation, "  RouteTable add   1.234 s   81,000 routes/s".
_LINE = re.compile(
    r"^\s+(?P<label>[A-Za-z][\w ()-]*?)\s+(?P<seconds>[\d.]+) s\s+(?P<rate>[\d,]+) routes/s\s*$"
)
# Current routes.bench: one row per method, "<method>  <s> <routes/s> <vs ip>" for add, then for delete.
_FIELDS = ("add_s", "add_rate", "add_vs", "del_s", "del_rate", "del_vs")
_ROW = re.compile(r"^(?P<label>\S.*?)\s+" + r"\s+".join(rf"(?P<{f}>[\d.,]+)" for f in _FIELDS) + r"\s*$")


def parse(output: str) -> dict[str, float]:
    """routes.bench's table -> {"<method> add"|"<method> del": routes/s}, methods named as routes.bench
    names them internally ("ip -batch", "netlink", "RouteTable")."""
    names = {label: key for label, key in getattr(routes_bench, "METHODS", ())}
    rates = {}
    for line in output.splitlines():
        if m := _LINE.match(line):
            rates[m.group("label").strip()] = float(m.group("rate").replace(",", ""))
        elif (m := _ROW.match(line)) and m.group("label").strip() in names:
            key = names[m.group("label").strip()]
            rates[f"{key} add"] = float(m.group("add_rate").replace(",", ""))
            rates[f"{key} del"] = float(m.group("del_rate").replace(",", ""))
    return rates


def run(routes: int, repeats: int) -> list[dict[str, float]]:
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, "-m", "routes.bench", "--routes", str(routes), "--rounds", "1"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"routes.bench --routes {routes} failed: {proc.stderr.strip()[-800:]}")
        rates = parse(proc.stdout)
        if not rates:
            raise RuntimeError(f"routes.bench printed no rates:\n{proc.stdout}")
        runs.append(rates)
    return runs


def rows(sizes: list[int], runs: dict[int, list[dict[str, float]]]) -> list[Row]:
    out = []
    for n in sizes:
        samples = runs.get(n, [])

        def pick(label: str, samples=samples) -> list[float]:
            return [r[label] for r in samples if label in r]

        for op, verb in (("add", "install"), ("del", "delete")):
            out.append(
                Row(
                    "c",
                    f"{n // 1000}k learned routes, {verb} rate (RouteTable.apply)",
                    "routes/s",
                    ours=pick(f"RouteTable {op}"),
                    reference=pick(f"ip -batch {op}"),
                    target=INSTALL if op == "add" else None,
                    note="reference: ip -batch, one acked request per route",
                )
            )
        out.append(
            Row(
                "c",
                f"{n // 1000}k routes, ip -batch add rate (reference)",
                "routes/s",
                ours=pick("ip -batch add"),
                note="the kernel's limit for one request per route",
            )
        )
    return out
