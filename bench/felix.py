"""Felix, as far as the benchmark needs it: workload routes written into node A's kernel the way Felix does.

Stage: the load generator of the propagation workloads. Felix writes ``<ip>/32 dev cali<id> scope link
proto boot`` for every local workload; both speakers learn those routes from the kernel and export them.

Owns: a workload veth in A's namespace (``cali`` end plus a peer, both in A: a pod namespace would add
nothing the speakers can see), the address plan of the benchmark's /32s, ``ip -batch`` files, and a
long-lived ``ip -batch -`` process for single routes.

Complicating factors:
- Bulk timing starts when ``ip -batch`` is started (docs/kernel-contract.md), so the kernel's own
  insertion time is part of every figure, for both speakers alike.
- For single routes the process start of ``ip`` (milliseconds) would swamp a sub-millisecond figure: one
  ``ip -force -batch -`` reads routes from a pipe, and the clock starts just before the line is written.
- Addresses are generated from the bench pool's base address upwards; each workload uses its own range
  so a route left behind by a failed run cannot satisfy the next run's wait.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

from labs import netns

DEVICE = "calibench0"
PEER = "benchpod0"


def add_workload_device(ns: str, device: str = DEVICE, peer: str = PEER) -> str:
    netns.add_veth(ns, device, ns, peer)
    netns.link_up(ns, device)
    netns.link_up(ns, peer)
    return device


def addresses(pool: str, count: int, *, offset: int = 1) -> list[str]:
    """``count`` consecutive IPv4 addresses of ``pool`` starting ``offset`` after its base."""
    net = ipaddress.IPv4Network(pool)
    base = int(net.network_address) + offset
    if offset < 0 or base + count - 1 > int(net.broadcast_address):
        raise ValueError(f"{count} addresses from offset {offset} do not fit in {pool}")
    return [str(ipaddress.IPv4Address(base + i)) for i in range(count)]


def batch_lines(addrs: list[str], action: str, device: str = DEVICE) -> str:
    if action == "add":
        return "".join(f"route add {a}/32 dev {device} scope link proto boot\n" for a in addrs)
    if action == "del":
        return "".join(f"route del {a}/32 dev {device} proto boot\n" for a in addrs)
    raise ValueError(f"unknown action {action!r}")


def write_batch(path: Path, addrs: list[str], action: str, device: str = DEVICE) -> Path:
    path.write_text(batch_lines(addrs, action, device))
    return path


def run_batch(ns: str, path: Path) -> float:
    """Run ``ip -n ns -batch path``; its wall time. Raises if any line failed."""
    start = time.perf_counter()
    proc = subprocess.run(["ip", "-n", ns, "-batch", str(path)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {ns} -batch {path}: {proc.stderr.strip()[:500]}")
    return elapsed


class RouteWriter:
    """A long-lived ``ip -n ns -force -batch -``: one route per written line, no process start per route."""

    def __init__(self, ns: str, device: str = DEVICE) -> None:
        self._device = device
        self._proc = subprocess.Popen(
            ["ip", "-n", ns, "-force", "-batch", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def add(self, address: str) -> float:
        """Write the add; returns the perf_counter stamp taken just before the write."""
        return self._write(batch_lines([address], "add", self._device))

    def delete(self, address: str) -> float:
        return self._write(batch_lines([address], "del", self._device))

    def _write(self, line: str) -> float:
        assert self._proc.stdin is not None
        stamp = time.perf_counter()
        self._proc.stdin.write(line)
        self._proc.stdin.flush()
        return stamp

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> RouteWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
