"""Summaries of py-spy's collapsed stacks: where each process spent its samples. Pure.

Stage: the reading end of ``bench.profile``. ``py-spy record -f raw`` writes one line per distinct stack,
``frame;frame;...;frame count``, root first; with ``--subprocesses`` the leading frames name the
process, its parent first.

Owns: parsing those lines and reducing them to per-process tables of self time (the innermost frame) and
inclusive time (any frame of the stack), by function with line numbers dropped.

Complicating factors: recursion would count a function twice in one stack for inclusive time, so each
stack counts a function once; frames look like ``name (path/file.py:123)`` and the path is shortened to
the part after ``site-packages/`` or the repository root.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass
class ProcessProfile:
    name: str
    samples: int = 0
    self_time: Counter = field(default_factory=Counter)
    inclusive: Counter = field(default_factory=Counter)


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('name')} ({path})"


def parse(text: str) -> dict[str, ProcessProfile]:
    profiles: dict[str, ProcessProfile] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        process = "main"
        while frames and frames[0].startswith("process "):  # parent first, the sampled process last
            process = _process_name(frames[0])
            frames = frames[1:]
        if not frames:
            continue
        n = int(count)
        prof = profiles.setdefault(process, ProcessProfile(process))
        prof.samples += n
        short = [_short(f) for f in frames]
        prof.self_time[short[-1]] += n
        for name in set(short):
            prof.inclusive[name] += n
    return profiles


def _process_name(frame: str) -> str:
    # 'process 1234:"/venv/bin/python /venv/bin/exabgp server x.conf"'
    pid, _, cmd = frame.removeprefix("process ").partition(":")
    cmd = cmd.strip('"')
    for role, marker in (("bridge", "exabgp/bridge.py"), ("exabgp", "exabgp"), ("daemon", "calico-bgp")):
        if marker in cmd:
            return f"{role} ({pid})"
    return f"{cmd[:40]} ({pid})"


# Frames every stack of a process runs through (event loops, entry points): useless in an inclusive table.
_PLUMBING = (
    "(asyncio/",
    "(click/",
    "(threading.py)",
    "(<frozen runpy>)",
    "(exabgp/application/",
    "(bgp/cli.py)",
    "(bgp/daemon.py)",
    "<module> (",
    "(exabgp/reactor/asynchronous.py)",
    "Reactor.run (exabgp/reactor/loop.py)",
    "(concurrent/futures/thread.py)",
)


def _interesting(name: str) -> bool:
    return not any(marker in name for marker in _PLUMBING)


def render(profiles: dict[str, ProcessProfile], rate: int, top: int = 15) -> str:
    """Markdown: per process, the top functions by self and by inclusive time, in seconds and %."""
    out = []
    for prof in sorted(profiles.values(), key=lambda p: -p.samples):
        if not prof.samples:
            continue
        out.append(f"#### {prof.name}: {prof.samples} samples ≈ {prof.samples / rate:.1f} s on CPU\n")
        for title, counter in (("self", prof.self_time), ("inclusive", prof.inclusive)):
            out.append(f"| {title} s | % | function |\n|---|---|---|")
            ranked = (
                counter.most_common()
                if title == "self"
                else [(name, n) for name, n in counter.most_common() if _interesting(name)]
            )
            for name, n in ranked[:top]:
                out.append(f"| {n / rate:.2f} | {100 * n / prof.samples:.0f} | `{name}` |")
            out.append("")
    return "\n".join(out)
