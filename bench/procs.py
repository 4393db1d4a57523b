"""What a node's speaker costs the machine: resident memory and CPU time of its processes, from /proc.

Stage: measuring instrument of the resource workloads (``bench.propagation`` idle/RSS, ``bench.mesh``).

Owns: finding a process tree (a daemon and everything it started: for calico-bgp the node daemon, ExaBGP
and the API bridge; for BIRD the one ``bird`` process), and reading VmRSS and utime+stime of each member.

Complicating factors:
- Children come and go (ExaBGP respawns its API process): the tree is re-read at every sample, and CPU
  over a window is only counted for processes present at both ends of it.
- /proc/<pid>/stat's second field is the command name in parentheses and may itself contain spaces or
  parentheses; fields are counted from the last ')'.
- Times are in clock ticks (usually 100 per second), so a 10 s window resolves 0.1 % of a core.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    pid: int
    name: str
    rss_kib: int
    cpu_ticks: int  # utime + stime


def _stat_fields(pid: int) -> tuple[str, list[str]] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    return name, raw[raw.rindex(")") + 2 :].split()


def parents() -> dict[int, int]:
    """pid -> ppid for every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                out[int(entry)] = int(fields[1][1])
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
    fields = _stat_fields(pid)
    if fields is None:
        return None
    name, rest = fields
    if rest[0] in "ZX":
        return None
    rss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    except (FileNotFoundError, ProcessLookupError):
        return None
    # rest[0] is field 3 (state): utime and stime are fields 14 and 15.
    return Sample(pid, _role(pid, name), rss, int(rest[11]) + int(rest[12]))


def _role(pid: int, name: str) -> str:
    """A readable name: python processes are told apart by their command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return name
    text = b" ".join(argv).decode(errors="replace")
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
    """Total VmRSS of the trees in MiB, and the split by process role."""
    split: dict[str, float] = {}
    for s in samples(roots):
        split[s.name] = split.get(s.name, 0.0) + s.rss_kib / 1024
    return sum(split.values()), split


def cpu_percent(roots: Iterable[int], seconds: float, sleep=time.sleep) -> float:
    """CPU used by the trees over ``seconds``, in percent of one core."""
    roots = list(roots)
    before = {s.pid: s.cpu_ticks for s in samples(roots)}
    start = time.monotonic()
    sleep(seconds)
    elapsed = time.monotonic() - start
    after = {s.pid: s.cpu_ticks for s in samples(roots)}
    ticks = sum(after[p] - before[p] for p in after.keys() & before.keys())
    return 100.0 * ticks / TICKS / elapsed


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds the trees' live processes have used since they started."""
    return sum(s.cpu_ticks for s in samples(roots)) / TICKS


def settle(roots: Iterable[int], *, below: float = 3.0, window: float = 0.5, timeout: float = 30.0) -> float:
    """Wait until the trees use less than ``below`` % of a core over ``window``; seconds waited."""
    roots = list(roots)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cpu_percent(roots, window) < below:
            break
    return time.monotonic() - start
