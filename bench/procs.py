"""What a node's speaker costs the machine: resident memory and CPU time of its processes (psutil).

Stage: measuring instrument of the resource workloads (``bench.propagation`` idle/RSS, ``bench.mesh``).

Owns: finding a process tree (a daemon and everything it started: for calico-bgp the node daemon, ExaBGP
and the API bridge; for BIRD the one ``bird`` process), and reading the resident set and user+system CPU
time of each member.

Complicating factors:
- Children come and go (ExaBGP respawns its API process): the tree is re-read at every sample, and CPU
  over a window is only counted for processes present at both ends of it. A process that ends between
  being listed and being read is left out of that sample; a zombie counts as gone.
- The kernel keeps CPU time in clock ticks (usually 100 per second), so a 10 s window resolves 0.1 % of
  a core whatever unit psutil hands it back in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Sample:
    pid: int
    name: str
    rss_kib: int
    cpu_seconds: float  # user + system, its own and that of the children it has waited for
    reaped_cpu_seconds: float = 0.0  # the part of cpu_seconds its finished children used


def parents() -> dict[int, int]:
    """pid -> ppid for every process."""
    out = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            out[proc.pid] = ppid
    return out


def tree(root: int, ppid: dict[int, int] | None = None) -> list[int]:
    """root and all its descendants that are alive now."""
    ppid = parents() if ppid is None else ppid
    if root not in ppid:
        return []
    children: dict[int, list[int]] = {}
    for pid, parent in ppid.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(found)


def sample(pid: int) -> Sample | None:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return None
            name, cmdline = proc.name(), proc.cmdline()
            rss = proc.memory_info().rss // 1024
            times = proc.cpu_times()
    except psutil.Error:  # gone since it was listed
        return None
    # Children it has reaped count too: a daemon's short-lived helpers (a config check, a version probe)
    # are part of what it costs, and are gone by the time anyone samples the tree.
    reaped = times.children_user + times.children_system
    return Sample(pid, _role(name, cmdline), rss, times.user + times.system + reaped, reaped)


def _role(name: str, argv: list[str]) -> str:
    """A readable name: python processes are told apart by their command line."""
    text = " ".join(argv)
    if "bgp/exabgp/bridge.py" in text:
        return "bridge"
    if "exabgp" in text and "server" in text:
        return "exabgp"
    if "calico-bgp" in text and "node" in text:
        return "daemon"
    return name


def samples(roots: Iterable[int]) -> list[Sample]:
    ppid = parents()
    found = []
    for root in roots:
        for pid in tree(root, ppid):
            s = sample(pid)
            if s is not None:
                found.append(s)
    return found


def rss_mib(roots: Iterable[int]) -> tuple[float, dict[str, float]]:
    """Total resident set of the trees in MiB, and the split by process role."""
    split: dict[str, float] = {}
    for s in samples(roots):
        split[s.name] = split.get(s.name, 0.0) + s.rss_kib / 1024
    return sum(split.values()), split


def cpu_window(before: Iterable[Sample], after: Iterable[Sample]) -> float:
    """CPU seconds used between two samplings, by the processes present in both."""
    start = {s.pid: s.cpu_seconds for s in before}
    return sum(s.cpu_seconds - start[s.pid] for s in after if s.pid in start)


def cpu_percent(roots: Iterable[int], seconds: float, sleep=time.sleep) -> float:
    """CPU used by the trees over ``seconds``, in percent of one core."""
    roots = list(roots)
    before = samples(roots)
    start = time.monotonic()
    sleep(seconds)
    elapsed = time.monotonic() - start
    return 100.0 * cpu_window(before, samples(roots)) / elapsed


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds the trees' live processes have used since they started."""
    return sum(s.cpu_seconds for s in samples(roots))


def _by_root(roots: Iterable[int], value: Callable[[Sample], float]) -> dict[int, float]:
    """``value`` summed over each root's tree, from one listing of all processes (a 100-node mesh would
    otherwise list every process of the machine 100 times per reading)."""
    ppid = parents()
    out = {}
    for root in roots:
        found = [s for pid in tree(root, ppid) if (s := sample(pid)) is not None]
        if found:
            out[root] = sum(value(s) for s in found)
    return out


def rss_by_root(roots: Iterable[int]) -> dict[int, float]:
    """Resident set of each root's tree in MiB; roots no longer running are left out."""
    return _by_root(roots, lambda s: s.rss_kib / 1024)


def cpu_by_root(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds each root's tree has used (its live processes); roots no longer running are left out."""
    return _by_root(roots, lambda s: s.cpu_seconds)


def cpu_split(roots: Iterable[int]) -> dict[int, dict[str, float]]:
    """CPU seconds of each root's tree by process role ("daemon", "exabgp", ...), with what each role's
    finished children used under "<role>'s finished children"."""
    ppid = parents()
    out: dict[int, dict[str, float]] = {}
    for root in roots:
        split: dict[str, float] = {}
        for pid in tree(root, ppid):
            if (s := sample(pid)) is None:
                continue
            split[s.name] = split.get(s.name, 0.0) + s.cpu_seconds - s.reaped_cpu_seconds
            if s.reaped_cpu_seconds:
                key = f"{s.name}'s finished children"
                split[key] = split.get(key, 0.0) + s.reaped_cpu_seconds
        if split:
            out[root] = split
    return out


def settle(roots: Iterable[int], *, below: float = 3.0, window: float = 0.5, timeout: float = 30.0) -> float:
    """Wait until the trees use less than ``below`` % of a core over ``window``; seconds waited."""
    roots = list(roots)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cpu_percent(roots, window) < below:
            break
    return time.monotonic() - start
