"""Observing a lab under faults: status and RIB over the control socket, kernel routes, a netlink watch of
route deletions, steady pings, metrics, RSS and CPU time.

Stage: test support for tests/fault (the measuring half; ``inject`` is the breaking half).

Owns: the probes every fault test reads its figures from, each bounded by a timeout so a hung daemon is a
measured "no answer", never a hung test.

Complicating factors:
- Deletions are watched, not sampled: ``RouteWatch`` runs ``ip monitor route`` inside the namespace, so a
  route deleted and re-added between two samples still counts.
- A status query to a daemon whose event loop is stuck times out; that counts as "not Established"
  (nothing is shown), which is the truthful answer.
- ``ping`` prints its totals when interrupted (SIGINT), so a ping runs for exactly as long as the fault.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import psutil

from bgp.status import DaemonNotRunning, query
from labs import netns, ops

T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float, interval: float = 0.2) -> tuple[T | None, float]:
    """Poll fn until it returns something truthy; (that value, seconds waited) or (None, timeout)."""
    started = time.monotonic()
    while True:
        value = fn()
        elapsed = time.monotonic() - started
        if value:
            return value, elapsed
        if elapsed >= timeout:
            return None, elapsed
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- daemon view


def _ctl(lab: str, node: str, request: str, timeout: float) -> dict | None:
    try:
        return query(Path(ops.load(lab).node(node).run_dir) / "ctl.sock", request, timeout=timeout)
    except (DaemonNotRunning, OSError, ValueError):
        return None


def status(lab: str, node: str, timeout: float = 2.0) -> dict | None:
    return _ctl(lab, node, "status", timeout)


def established(lab: str, node: str, timeout: float = 2.0) -> set[str]:
    """Peer addresses the node's status shows Established (empty when it does not answer)."""
    report = status(lab, node, timeout) or {}
    return {p["address"] for p in report.get("peers", []) if str(p.get("info", "")).startswith("Established")}


def all_established(lab: str, expected: dict[str, Iterable[str]]) -> bool:
    return all(set(peers) <= established(lab, node) for node, peers in expected.items())


def warnings(lab: str, node: str) -> list[str]:
    return list((status(lab, node) or {}).get("warnings", []))


def rib(lab: str, node: str) -> dict[str, dict] | None:
    """prefix -> row of ``calico-bgp routes`` (learned and local), or None when the daemon does not answer."""
    report = _ctl(lab, node, "routes", 5.0)
    return None if report is None else {r["prefix"]: r for r in report.get("routes", [])}


def learned(lab: str, node: str, peer: str | None = None) -> set[str] | None:
    table = rib(lab, node)
    if table is None:
        return None
    return {
        prefix for prefix, row in table.items()
        if row.get("origin") == "bgp"
        and (peer is None or (row.get("best") or {}).get("learned_from") == peer)
    }


def kernel(lab: str, node: str, via: str | None = None) -> set[str]:
    """Destinations of the node's protocol-bird routes (only those through via, when given)."""
    routes = netns.routes(ops.load(lab).node(node).netns, "proto", "bird")
    return {
        r["dst"] for r in routes
        if via is None
        or r.get("gateway") == via
        or any(n.get("gateway") == via for n in r.get("nexthops", []))
    }


def metric_series(lab: str, node: str, port: int = 9094, timeout: float = 5.0) -> list[str]:
    """The node's Prometheus exposition, sample lines only (fetched from inside its namespace)."""
    code = (
        "import sys, urllib.request\n"
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout={timeout})"
        ".read().decode())"
    )
    proc = netns.run_in(ops.load(lab).node(node).netns, ["python3", "-I", "-c", code], timeout=timeout + 5)
    if proc.returncode != 0:
        raise AssertionError(f"{node}: metrics not served: {proc.stderr.strip()[-300:]}")
    return [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------- processes


def rss_mib(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / 1024 / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of pid so far (its own threads, not its children)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# ---------------------------------------------------------------------------------------------- watchers


class RouteWatch:
    """``ip monitor route`` inside a namespace for the block's duration: every route message, kept."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.lines: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> RouteWatch:
        self._proc = subprocess.Popen(["ip", "-n", self.ns, "monitor", "route"], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # `ip monitor` subscribes before it prints anything; a probe route proves it is listening.
        probe = "198.51.100.254/32"
        netns.ip(self.ns, "route", "replace", "blackhole", probe, "proto", "static")
        netns.delete_route(self.ns, "blackhole", probe, "proto", "static")
        deadline = time.monotonic() + 5
        while not any(probe.split("/")[0] in line for line in list(self.lines)):
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise AssertionError(f"ip monitor in {self.ns} saw nothing within 5 s")
            time.sleep(0.02)
        self.lines.clear()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def deleted(self, proto: str = "bird") -> list[str]:
        return [line for line in self.lines if line.startswith("Deleted ") and f"proto {proto}" in line]

    def touching(self, destinations: Iterable[str], proto: str = "bird") -> list[str]:
        """Messages about our routes whose destination is not among destinations."""
        skip = set(destinations)
        return [line for line in self.lines if f"proto {proto}" in line and route_dst(line) not in skip]


ROUTE_TYPES = {"unicast", "blackhole", "unreachable", "prohibit", "local", "broadcast", "multicast", "throw"}


def route_dst(line: str) -> str:
    """The destination of one `ip monitor route` line ("Deleted blackhole 192.168.1.0/26 proto bird")."""
    words = line.split()
    if words and words[0] == "Deleted":
        words = words[1:]
    if words and words[0] in ROUTE_TYPES:
        words = words[1:]
    return words[0] if words else ""


class Pinger:
    """A steady ping from a pod's namespace for the block's duration; ``sent`` and ``lost`` afterwards."""

    def __init__(self, lab: str, pod: str, target: str, interval: float = 0.05) -> None:
        self.ns = ops.load(lab).pod(pod).netns
        self.argv = ["ping", "-q", "-n", "-i", str(interval), "-W", "1", target]
        self.sent = self.lost = 0
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Pinger:
        self._proc = subprocess.Popen(netns.exec_argv(self.ns, self.argv), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        return self

    def __exit__(self, *exc) -> None:
        assert self._proc is not None
        time.sleep(1.5)  # replies to the last requests (-W 1) still count
        self._proc.send_signal(signal.SIGINT)
        try:
            out, _ = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        found = re.search(r"(\d+) packets transmitted, (\d+) received", out or "")
        if found:
            self.sent, received = int(found[1]), int(found[2])
            self.lost = self.sent - received
        else:
            self.sent, self.lost = 0, -1  # no summary: reported as unknown, never as "no loss"

    def summary(self) -> str:
        return f"{self.lost}/{self.sent}"


def json_dump(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)
