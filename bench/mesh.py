"""Workload (e): an N-node full-mesh lab, from ``lab up`` to every node holding every other node's block.

Stage: the benchmark's workloads (calico-bgp only: the issue does not ask for a BIRD mesh).

Owns: one uniquely named mesh lab per run (always taken down), a convergence monitor that dumps each
node's proto-12 routes through one netlink socket per namespace, and the per-node cost figures.

Figures per run: seconds from the start of ``labs.lab.up`` to full convergence (and to ``up``
returning, which also waits for every session in ``calico-bgp status``), CPU seconds each node's
processes used up to convergence (start-up included: that is what a node pays to join), RSS per node
after convergence, and idle CPU per node over a short window after it.

Complicating factors:
- Namespaces appear one by one while ``up`` builds the lab; the monitor opens a node's socket once its
  namespace exists and re-dumps only nodes that have not converged yet (a dump of ~N routes is cheap, a
  subprocess per node and poll would not be at N = 50).
- ``up``'s own session check polls ``calico-bgp status`` per node (a Python process each): that load is
  part of the time to ``up`` returning but the convergence stamp does not wait for it.
- The lab's pods are dropped from the topology: a ping matrix of 2N pods is N^2 pings, not convergence.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, replace

from bench import procs
from bench.kernelwatch import dump_prefixes, open_route_socket
from labs import lab as labs_lab
from labs import netns, ops, topology
from labs.state import netns_name

log = logging.getLogger(__name__)


@dataclass
class MeshRun:
    nodes: int
    converged_s: float | None = None
    up_s: float | None = None
    up_ok: bool = False
    cpu_s_per_node: list[float] = field(default_factory=list)
    rss_mib_per_node: list[float] = field(default_factory=list)
    idle_cpu_per_node: list[float] = field(default_factory=list)
    error: str = ""


def run_from_json(data: dict) -> MeshRun:
    return MeshRun(**data)


class ConvergenceMonitor(threading.Thread):
    """Polls every node's kernel until each holds all other nodes' blocks with proto 12."""

    def __init__(self, lab: str, topo: topology.Topology, interval: float = 0.2) -> None:
        super().__init__(name=f"converge-{lab}", daemon=True)
        self.lab = lab
        self.interval = interval
        blocks = {n.name: n.block for n in topo.nodes}
        self.expected = {n: {b for m, b in blocks.items() if m != n} for n in blocks}
        self.converged_at: float | None = None
        self.cpu_s: dict[str, float] = {}
        self.stop = threading.Event()
        self.error = ""

    def run(self) -> None:
        try:
            self._watch()
        except Exception as exc:  # reported by run_mesh instead of a silent "not converged"
            self.error = f"convergence monitor failed: {type(exc).__name__}: {exc}"

    def _watch(self) -> None:
        socks = {}
        pending = set(self.expected)
        try:
            while pending and not self.stop.is_set():
                for node in sorted(pending):
                    ns = netns_name(self.lab, node)
                    if node not in socks:
                        if not netns.exists(ns):
                            continue
                        try:
                            socks[node] = open_route_socket(ns)
                        except OSError:
                            continue
                    if self.expected[node] <= dump_prefixes(socks[node], 12):
                        pending.discard(node)
                if pending:
                    time.sleep(self.interval)
            if not pending:
                self.converged_at = time.perf_counter()
                self._sample_cpu()
        finally:
            for sock in socks.values():
                sock.close()

    def _sample_cpu(self) -> None:
        with contextlib.suppress(Exception):
            for node in ops.load(self.lab).nodes:
                self.cpu_s[node.name] = procs.cpu_seconds([node.pid])


def run_mesh(n: int, *, timeout: float = 600.0, idle_seconds: float = 10.0) -> MeshRun:
    """One N-node mesh lab: ``up`` runs in a thread (its session check polls every node's status, which
    takes minutes on a loaded machine and is not what we time); the convergence monitor decides."""
    topo = replace(topology.build_mesh(n), pods=())
    lab = f"benchm{secrets.token_hex(3)}"
    result = MeshRun(n)
    monitor = ConvergenceMonitor(lab, topo)
    outcome: dict[str, object] = {}

    def bring_up() -> None:
        try:
            outcome["ok"] = labs_lab.up(topo, name=lab, timeout=timeout)
            outcome["seconds"] = time.perf_counter() - start
        except Exception as exc:  # LabError and whatever the build raised: reported, not lost in a thread
            outcome["error"] = f"{type(exc).__name__}: {exc}"[:500]

    upper = threading.Thread(target=bring_up, name=f"up-{lab}", daemon=True)
    start = time.perf_counter()
    monitor.start()
    upper.start()
    try:
        deadline = start + timeout
        while monitor.is_alive() and "error" not in outcome and time.perf_counter() < deadline:
            monitor.join(1.0)
        if "error" in outcome:
            result.error = str(outcome["error"])
            return result
        if monitor.converged_at is None:
            result.error = monitor.error or f"not converged within {timeout:.0f} s"
            return result
        result.converged_s = monitor.converged_at - start
        result.cpu_s_per_node = sorted(monitor.cpu_s.values())
        upper.join(max(0.0, timeout - (time.perf_counter() - start)))  # let up's polling end first
        if "seconds" in outcome:
            result.up_ok, result.up_s = bool(outcome["ok"]), float(outcome["seconds"])
        nodes = ops.load(lab).nodes
        result.rss_mib_per_node = sorted(procs.rss_mib([node.pid])[0] for node in nodes)
        before = {node.name: procs.cpu_seconds([node.pid]) for node in nodes}
        began = time.monotonic()
        time.sleep(idle_seconds)
        elapsed = time.monotonic() - began
        result.idle_cpu_per_node = sorted(
            100.0 * (procs.cpu_seconds([node.pid]) - before[node.name]) / elapsed for node in nodes
        )
        return result
    finally:
        monitor.stop.set()
        monitor.join(5)
        upper.join(120)  # never tear down under a build still in progress
        labs_lab.down(lab)
