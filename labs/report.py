"""Judging and printing a running lab: are the sessions up, can every pod reach every other pod.

Stage: pure helpers at the end of ``labs.lab.up`` (and of tests that wait on a lab).

Owns: reading ``calico-bgp status -o json`` output against the peers a node should have, and rendering the
pod-to-pod reachability grid. No I/O: callers run the commands and pings.

Complicating factors:
- A daemon that has not loaded its config yet reports no peers at all; "every reported peer Established"
  would be vacuously true, so readiness also requires every expected peer to be present.
- Status may be half-written or not JSON while a daemon starts; that counts as not ready, with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def sessions_ready(status_output: str, expected: Sequence[str]) -> tuple[bool, str]:
    """(ready, reason) for one node: every expected peer address present and every peer Established."""
    try:
        peers = json.loads(status_output)["peers"]
    except (ValueError, KeyError, TypeError) as exc:
        return False, f"no status yet ({type(exc).__name__})"
    established = {p["address"] for p in peers if str(p.get("info", "")).startswith("Established")}
    missing = sorted(set(expected) - {p["address"] for p in peers})
    if missing:
        return False, f"peers missing: {', '.join(missing)}"
    down = sorted({p["address"] for p in peers} - established)
    if down:
        return False, "not Established: " + ", ".join(
            f"{p['address']} ({p.get('info', '')})" for p in peers if p["address"] in down
        )
    return True, f"{len(established)} Established"


def render_matrix(
    pods: Sequence[tuple[str, str]], reachable: Mapping[tuple[str, str], bool | None]
) -> str:
    """Grid of pods (name, ip): rows ping from, columns ping to; ✓ reached, ✗ not (or no result), · itself,
    - not provable here (the path crosses a stand-in tunl0, ``labs.tunnel``)."""
    names = [name for name, _ in pods]
    width = max([len("from \\ to"), *(len(n) for n in names)])
    lines = ["from \\ to".ljust(width) + "  " + "  ".join(names)]
    for src, _ in pods:
        cells = []
        for dst, dst_ip in pods:
            result = reachable.get((src, dst_ip), False)
            mark = "·" if src == dst else "✓" if result else "-" if result is None else "✗"
            cells.append(mark.center(len(dst)))
        lines.append(src.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)
