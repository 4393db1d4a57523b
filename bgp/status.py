"""Peer session status: the state model, the `calico-bgp status` table, and the daemon's control socket.

Stage: observability of the announcements dataplane.

Owns: ``PeerStatus`` (one immutable value per configured session, replaced on every transition), the
rendering in the shape of ``calicoctl node status`` (docs/kernel-contract.md), and a tiny line protocol
on a unix socket that only root can open (mode 0600 in a 0700 directory).

Complicating factors:
- STATE and INFO use BIRD 1.6's words (``start``/``up``; ``Established``, ``Passive``, ``Active``,
  ``OpenSent``, plus the last error) because that is what users of ``calicoctl node status`` read.
- A status request must never block the daemon: the server answers from an in-memory snapshot.
- The report may carry ``propagation`` (``bgp.latency``: p50/p99 of the last minute), shown as one line.
- A peer with BFD asked for carries a ``bfd`` object (``bgp.bfd.gate.BfdGate.report``), and its family's
  table gets a BFD column; without any, the table keeps ``calicoctl node status``'s five columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bgp.bfd.gate import cell as bfd_cell
from bgp.latency import describe as describe_propagation
from confgen.intent import PeerIntent


@dataclass(frozen=True)
class PeerStatus:
    address: str
    family: str  # "ipv4" | "ipv6"
    type: str  # node-to-node mesh | global | node specific
    name: str
    passive: bool
    ibgp: bool
    state: str  # BIRD protocol state: start | up
    bgp_state: str  # Idle | Connect | Active | Passive | OpenSent | Established
    since: float
    last_error: str = ""

    @classmethod
    def configured(cls, peer: PeerIntent, now: float) -> PeerStatus:
        return cls(
            address=peer.address,
            family=peer.family,
            type=peer.kind,
            name=peer.name,
            passive=peer.passive,
            ibgp=peer.ibgp,
            state="start",
            bgp_state="Passive" if peer.passive else "Active",
            since=now,
        )

    def reconfigured(self, peer: PeerIntent) -> PeerStatus:
        waiting = self.bgp_state in ("Passive", "Active")
        bgp_state = ("Passive" if peer.passive else "Active") if waiting else self.bgp_state
        return replace(
            self, type=peer.kind, name=peer.name, passive=peer.passive, ibgp=peer.ibgp, bgp_state=bgp_state
        )

    @property
    def established(self) -> bool:
        return self.bgp_state == "Established"

    def connected(self, now: float) -> PeerStatus:
        return replace(self, state="start", bgp_state="OpenSent", since=now)

    def up(self, now: float) -> PeerStatus:
        return replace(self, state="up", bgp_state="Established", since=now, last_error="")

    def down(self, reason: str, now: float) -> PeerStatus:
        error = f"Socket: {reason}" if reason else self.last_error
        return replace(
            self,
            state="start",
            bgp_state="Passive" if self.passive else "Active",
            since=now,
            last_error=error,
        )

    def with_error(self, notification, now: float) -> PeerStatus:
        verb = "Received" if notification.direction == "receive" else "BGP Error"
        text = notification.message or f"code {notification.code} subcode {notification.subcode}"
        return replace(self, last_error=f"{verb}: {text}")

    @property
    def info(self) -> str:
        return f"{self.bgp_state} {self.last_error}".strip()

    def as_json(self) -> dict:
        return {
            "address": self.address,
            "family": self.family,
            "type": self.type,
            "name": self.name,
            "state": self.state,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
            "info": self.info,
        }


def bird_since(ts: float, now: float | None = None) -> str:
    """BIRD's default time format: time of day if today, else the date."""
    now = time.time() if now is None else now
    if time.localtime(ts)[:3] == time.localtime(now)[:3]:
        return time.strftime("%H:%M:%S", time.localtime(ts))
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def _wrap(text: str, width: int = 30) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return lines


def _centre(text: str, width: int) -> str:
    # tablewriter's centring: the odd space goes to the right (str.center may put it left).
    gap = width - len(text)
    return " " * (gap // 2) + text + " " * (gap - gap // 2)


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """An ASCII table with centred upper-case headers and cells wrapped at 30 characters."""
    wrapped = [[_wrap(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in wrapped:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], *(len(part) for part in cell))
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    heading = " | ".join(_centre(h.upper(), w) for h, w in zip(headers, widths, strict=True))
    out = [border, f"| {heading} |"]
    out.append(border)
    for row in wrapped:
        height = max(len(cell) for cell in row)
        for n in range(height):
            parts = [(cell[n] if n < len(cell) else "").ljust(w) for cell, w in zip(row, widths, strict=True)]
            out.append("| " + " | ".join(parts) + " |")
    out.append(border)
    return "\n".join(out)


def render_status(report: dict, now: float | None = None) -> str:
    """The text of `calico-bgp status`, from the JSON report the daemon serves."""
    lines = ["calico-bgp process is running.", ""]
    for key, family in (("ipv4", "IPv4"), ("ipv6", "IPv6")):
        peers = [p for p in report.get("peers", []) if p["family"] == key]
        lines.append(f"{family} BGP status")
        if not peers:
            lines.append(f"No {family} peers found.")
        else:
            rows = [
                [p["address"], p["type"], p["state"], bird_since(p["since_ts"], now), p["info"]]
                for p in peers
            ]
            headers = ["Peer address", "Peer type", "State", "Since", "Info"]
            if any("bfd" in p for p in peers):
                headers.insert(4, "BFD")
                for row, p in zip(rows, peers, strict=True):
                    row.insert(4, bfd_cell(p.get("bfd")))
            lines.append(render_table(headers, rows))
        lines.append("")
    if report.get("propagation"):
        lines.append(describe_propagation(report["propagation"]))
        lines.append("")
    for warning in report.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines).rstrip() + "\n"


class ControlServer:
    """Serves the daemon's state on a unix socket; one request line, one JSON reply line."""

    def __init__(self, path: Path, handlers: dict[str, Callable[[], dict]]) -> None:
        self._path = Path(path)
        self._handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self._path.parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self._path))
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
            handler = self._handlers.get(request)
            reply = handler() if handler else {"error": f"unknown request {request!r}"}
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


class DaemonNotRunning(Exception):
    pass


def query(path: Path, request: str = "status", timeout: float = 5.0) -> dict:
    """Client side, blocking (the CLI is synchronous)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except FileNotFoundError as exc:
        raise DaemonNotRunning(f"calico-bgp is not running (no control socket at {path})") from exc
    except ConnectionRefusedError as exc:
        message = f"calico-bgp is not running (control socket {path} refuses connections)"
        raise DaemonNotRunning(message) from exc
    except PermissionError as exc:
        raise DaemonNotRunning(f"permission denied on {path}: calico-bgp status must run as root") from exc
    with sock:
        sock.sendall(request.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def status_report(
    node: str,
    peers: list[PeerStatus],
    warnings: list[str],
    propagation: dict | None = None,
    bfd: Callable[[str], dict | None] | None = None,  # a peer's ``bfd`` object (bgp.bfd.gate), None: none
) -> dict:
    rows = []
    for peer in peers:
        row = {**peer.as_json(), "since_ts": peer.since}
        if bfd is not None and (view := bfd(peer.address)) is not None:
            row["bfd"] = view
        rows.append(row)
    report: dict[str, object] = {"node": node, "peers": rows, "warnings": list(warnings)}
    if propagation is not None:  # bgp.latency.Propagation.report: p50/p99 over the last minute
        report["propagation"] = propagation
    return report
