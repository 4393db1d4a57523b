"""Workload (e): an N-node full-mesh lab, from ``lab up`` to every node holding every other node's block.

Stage: the benchmark's workloads (calico-bgp only: the issue does not ask for a BIRD mesh).

Owns: one uniquely named mesh lab per run (always taken down), a convergence monitor on every node's
kernel, the per-node cost figures, where ``lab up``'s wall time went (its phases) and what the machine had
left while the mesh came up (memory at the peak, how busy the cores were).

Figures per run: seconds from the start of ``labs.lab.up`` to full convergence (and to ``up``
returning, which also waits for every session in ``calico-bgp status``), when each node converged, the
end of each phase of ``up`` (etcd, namespaces, neighbours, resources, proxy, daemons started), CPU seconds
each node's processes used up to convergence (start-up included: that is what a node pays to join), RSS
per node after convergence, idle CPU per node over a short window after it, and machine memory and CPU
use over the run.

Complicating factors:
- Namespaces appear one by one while ``up`` builds the lab; the monitor subscribes to a node's route
  notifications once its namespace exists and dumps (through one socket per namespace) only nodes that
  had a change since, at most every ``interval``: polling every node would cost the bench process a
  share of the 2 cores the daemons are being timed on (a dump of ~N routes per node per poll at N = 100).
- ``up``'s own session check asks each node's control socket for its status: that load is part of the
  time to ``up`` returning, but the convergence stamp does not wait for it.
- A mesh too large for the machine must end in a report, not a crash or a swapping host: the run is
  stopped when the machine's available memory falls under ``MEMORY_FLOOR_MIB`` and the error says how
  much the lab held and how many daemons were running; a run that does not converge in time says how
  many nodes had and how busy the cores were (a CPU-bound start-up shows as ~100 %).
- Tearing down under a build still in progress would race it (namespaces being created while deleted):
  ``down`` waits for the build to end, but not for ``up``'s session check, which ends by itself once the
  daemons are gone. Out of memory it does not wait: the lab goes at once and again after the build ended
  (``down`` finds late daemons by their lab marker).
- The lab's pods are dropped from the topology: a ping matrix of 2N pods is N^2 pings, not convergence.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import secrets
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import psutil

from bench import procs
from bench.kernelwatch import dump_prefixes, open_route_socket
from labs import lab as labs_lab
from labs import netns, ops, topology
from labs.state import netns_name
from routes import rtnetlink as rt

log = logging.getLogger(__name__)

MEMORY_FLOOR_MIB = 1024  # stop a mesh run when the machine has less than this available
SAMPLE_EVERY = 0.5  # seconds between machine samples while waiting for convergence

# What ``labs.lab.up`` echoes at the end of each build step, by line prefix (the first match wins), and
# the phase it closes. ``phases`` keeps the stamp of the last line of each phase.
PHASES = (
    ("etcd: wrote", "resources"),
    ("etcd:", "etcd"),
    ("switch:", "switch"),
    ("node ", "namespaces"),
    ("neighbours:", "neighbours"),
    ("proxy:", "proxy"),
    ("daemon ", "daemons"),
    ("sessions: all", "sessions"),
)


def phase_of(line: str) -> str | None:
    return next((phase for prefix, phase in PHASES if line.startswith(prefix)), None)


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
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds from start to its end
    node_converged_s: list[float] = field(default_factory=list)  # when each node held every block, sorted
    machine_busy_pct: float | None = None  # all cores, start -> converged (or -> stopped)
    memory_peak_gib: float | None = None  # the machine's memory in use at its peak during the run
    memory_total_gib: float | None = None
    monitor_cpu_s: float = 0.0  # the convergence monitor's own CPU
    limit: str = ""  # for a run that could not finish: what the machine ran out of, measured
    cpu_split_s: dict[str, float] = field(default_factory=dict)  # process role -> median node's CPU seconds
    idle_split_pct: dict[str, float] = field(default_factory=dict)  # process role -> median node's idle CPU


def run_from_json(data: dict) -> MeshRun:
    known = set(MeshRun.__dataclass_fields__)
    return MeshRun(**{k: v for k, v in data.items() if k in known})


class ConvergenceMonitor(threading.Thread):
    """Follows every node's kernel until each holds all other nodes' blocks with proto 12."""

    def __init__(self, lab: str, topo: topology.Topology, interval: float = 0.1) -> None:
        super().__init__(name=f"converge-{lab}", daemon=True)
        self.lab = lab
        self.interval = interval
        blocks = {n.name: n.block for n in topo.nodes}
        self.expected = {n: {b for m, b in blocks.items() if m != n} for n in blocks}
        self.node_converged: dict[str, float] = {}  # node -> perf_counter stamp
        self.converged_at: float | None = None
        self.cpu_s: dict[str, float] = {}
        self.cpu_split: dict[str, float] = {}
        self.cpu_seconds = 0.0
        self.stop = threading.Event()
        self.error = ""

    def run(self) -> None:
        started = time.thread_time()
        try:
            self._watch()
        except Exception as exc:  # reported by run_mesh instead of a silent "not converged"
            self.error = f"convergence monitor failed: {type(exc).__name__}: {exc}"
        finally:
            self.cpu_seconds = time.thread_time() - started

    def _open(self, node: str) -> tuple[socket.socket, socket.socket] | None:
        ns = netns_name(self.lab, node)
        if not netns.exists(ns):
            return None
        try:  # subscribed before the first dump, so no change can fall between the two
            notify = open_route_socket(ns, rt.RTMGRP_IPV4_ROUTE)
        except OSError:
            return None
        try:
            dump = open_route_socket(ns)
        except OSError:
            notify.close()
            return None
        notify.setblocking(False)
        return notify, dump

    def _watch(self) -> None:
        socks: dict[str, tuple[socket.socket, socket.socket]] = {}
        pending, dirty = set(self.expected), set()
        chooser = selectors.DefaultSelector()
        buf = bytearray(1 << 16)
        try:
            while pending and not self.stop.is_set():
                for node in sorted(pending - socks.keys()):
                    if (pair := self._open(node)) is not None:
                        socks[node] = pair
                        chooser.register(pair[0], selectors.EVENT_READ, node)
                        dirty.add(node)
                round_start = time.perf_counter()
                for key, _ in chooser.select(timeout=self.interval):
                    _drain(key.fileobj, buf)  # type: ignore[arg-type]
                    dirty.add(key.data)
                seen = time.perf_counter()  # every change dumped below was notified before this
                for node in sorted(dirty & pending):
                    if self.expected[node] <= dump_prefixes(socks[node][1], 12):
                        pending.discard(node)
                        self.node_converged[node] = seen
                        chooser.unregister(socks[node][0])
                dirty.clear()
                # At most one dump round per interval, however often notifications arrive.
                self.stop.wait(max(0.0, self.interval - (time.perf_counter() - round_start)))
            if not pending:
                self.converged_at = max(self.node_converged.values())
                self._sample_cpu()
        finally:
            chooser.close()
            for pair in socks.values():
                for sock in pair:
                    sock.close()

    def _sample_cpu(self) -> None:
        with contextlib.suppress(Exception):
            nodes = ops.load(self.lab).nodes
            split = procs.cpu_split([node.pid for node in nodes])
            self.cpu_s = {node.name: sum(split.get(node.pid, {}).values()) for node in nodes}
            roles = {role for parts in split.values() for role in parts}
            self.cpu_split = {
                role: statistics.median([parts.get(role, 0.0) for parts in split.values()])
                for role in sorted(roles)
            }


def _drain(sock: socket.socket, buf: bytearray) -> None:
    """Read every queued notification; only the fact that something changed matters."""
    while True:
        try:
            if not sock.recv_into(buf):
                return
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:  # overflowed: something changed, which is all we wanted
                raise


class MachineWatch:
    """Memory and CPU of the whole machine during a run: the peak memory in use, the busy share of all
    cores between ``start`` and ``stop``, and whether available memory fell under the floor."""

    def __init__(
        self,
        floor_mib: float = MEMORY_FLOOR_MIB,
        memory: Callable[[], tuple[float, float]] | None = None,
        cpu: Callable[[], tuple[float, float]] | None = None,
    ) -> None:
        self.floor_mib = floor_mib
        self._memory = memory or _memory_mib
        self._cpu = cpu or _cpu_busy_total
        self.total_mib = 0.0
        self.min_available_mib = float("inf")
        self._cpu_start = (0.0, 0.0)
        self.busy_pct: float | None = None

    def start(self) -> MachineWatch:
        self._cpu_start = self._cpu()
        self.sample()
        return self

    def sample(self) -> bool:
        """Take one memory sample; False when available memory is under the floor."""
        total, available = self._memory()
        self.total_mib = total
        self.min_available_mib = min(self.min_available_mib, available)
        return available >= self.floor_mib

    def stop(self) -> None:
        busy, total = self._cpu()
        spent = total - self._cpu_start[1]
        self.busy_pct = 100.0 * (busy - self._cpu_start[0]) / spent if spent > 0 else None

    @property
    def peak_used_mib(self) -> float:
        return self.total_mib - self.min_available_mib


def _memory_mib() -> tuple[float, float]:
    vm = psutil.virtual_memory()
    return vm.total / 2**20, vm.available / 2**20


def _cpu_busy_total() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot; idle and iowait are not busy."""
    t = psutil.cpu_times()
    total = sum(t)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def _lab_memory(lab: str) -> tuple[int, float, float]:
    """(daemons running, their trees' RSS in MiB, median node's RSS) for a lab being built."""
    try:
        pids = [node.pid for node in ops.load(lab).nodes if node.pid]
    except Exception:  # the state file of a lab in its first steps: nothing to count yet
        return 0, 0.0, 0.0
    rss = sorted(procs.rss_by_root(pids).values())
    return len(rss), sum(rss), rss[len(rss) // 2] if rss else 0.0


def run_mesh(
    n: int, *, timeout: float = 600.0, idle_seconds: float = 10.0, floor_mib: float = MEMORY_FLOOR_MIB
) -> MeshRun:
    """One N-node mesh lab: ``up`` runs in a thread (its session check is not what we time); the
    convergence monitor decides, the machine watch stops a run the memory cannot hold."""
    topo = replace(topology.build_mesh(n), pods=())
    lab = f"benchm{secrets.token_hex(3)}"
    result = MeshRun(n)
    monitor = ConvergenceMonitor(lab, topo)
    machine = MachineWatch(floor_mib)
    outcome: dict[str, object] = {}
    stamps: dict[str, float] = {}
    daemons_started = threading.Event()

    def echo(line: str) -> None:
        if (phase := phase_of(line)) is not None:
            stamps[phase] = time.perf_counter() - start
            if phase == "daemons" and line.startswith(f"daemon node{n}:"):
                daemons_started.set()

    def bring_up() -> None:
        try:
            outcome["ok"] = labs_lab.up(topo, name=lab, timeout=timeout, echo=echo)
            outcome["seconds"] = time.perf_counter() - start
        except Exception as exc:  # LabError and whatever the build raised: reported, not lost in a thread
            outcome["error"] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            daemons_started.set()  # the build is over either way

    upper = threading.Thread(target=bring_up, name=f"up-{lab}", daemon=True)
    start = time.perf_counter()
    machine.start()
    monitor.start()
    upper.start()
    try:
        deadline = start + timeout
        while monitor.is_alive() and "error" not in outcome and time.perf_counter() < deadline:
            monitor.join(SAMPLE_EVERY)
            if not machine.sample():
                running, held, median = _lab_memory(lab)
                result.limit = (
                    f"memory: {machine.min_available_mib:.0f} MiB of {machine.total_mib / 1024:.1f} GiB "
                    f"left after {time.perf_counter() - start:.0f} s with {running}/{n} daemons running; "
                    f"the lab's processes held {held / 1024:.1f} GiB ({median:.0f} MiB per node)"
                )
                result.error = f"stopped: {result.limit}"
                return result
        if "error" in outcome:
            result.error = str(outcome["error"])
            return result
        if monitor.converged_at is None:
            result.error = monitor.error or (
                f"not converged within {timeout:.0f} s ({len(monitor.node_converged)}/{n} nodes had "
                f"every block)"
            )
            return result
        result.converged_s = monitor.converged_at - start
        result.node_converged_s = sorted(t - start for t in monitor.node_converged.values())
        result.cpu_s_per_node = sorted(monitor.cpu_s.values())
        result.cpu_split_s = monitor.cpu_split
        machine.stop()
        upper.join(max(0.0, timeout - (time.perf_counter() - start)))  # let up's polling end first
        if "seconds" in outcome:
            result.up_ok, result.up_s = bool(outcome["ok"]), float(outcome["seconds"])
        pids = [node.pid for node in ops.load(lab).nodes]
        result.rss_mib_per_node = sorted(procs.rss_by_root(pids).values())
        before = procs.cpu_split(pids)
        began = time.monotonic()
        time.sleep(idle_seconds)
        elapsed = time.monotonic() - began
        after = procs.cpu_split(pids)
        both = [pid for pid in pids if pid in after and pid in before]
        result.idle_cpu_per_node = sorted(
            100.0 * (sum(after[pid].values()) - sum(before[pid].values())) / elapsed for pid in both
        )
        roles = sorted({role for pid in both for role in after[pid]})
        result.idle_split_pct = {
            role: statistics.median(
                [100.0 * (after[pid].get(role, 0.0) - before[pid].get(role, 0.0)) / elapsed for pid in both]
            )
            for role in roles
        }
        return result
    finally:
        if machine.busy_pct is None:
            machine.stop()
        monitor.stop.set()
        monitor.join(5)
        result.phases = dict(sorted(stamps.items(), key=lambda kv: kv[1]))
        result.machine_busy_pct = machine.busy_pct
        result.memory_peak_gib = round(machine.peak_used_mib / 1024, 2)
        result.memory_total_gib = round(machine.total_mib / 1024, 2)
        result.monitor_cpu_s = monitor.cpu_seconds
        if result.limit:
            # Out of memory: the daemons go now, even under a build still starting more of them; a second
            # down below removes whatever that build created after the first.
            labs_lab.down(lab)
        else:  # otherwise never tear down under a build still in progress
            daemons_started.wait(120)
        labs_lab.down(lab)  # up's session check ends by itself once the daemons are gone
        upper.join(60)
        if result.limit:
            labs_lab.down(lab)
