"""The interop harness: one class per real BGP daemon, all with the same verbs (GoBGP's test/lib shape).

Stage: test support for tests/interop. A harness runs its daemon inside a network namespace the lab made
(a ``labs`` router of kind "external"), from a config it generates, and reads the daemon's *own* view back
(birdc, ``vtysh ... json``, ``gobgp -j``): an assertion on what the peer believes, never on what we think
we sent.

Owns: the verbs (``start``, ``add_peer``, ``configure``, ``neighbor_state``, ``received_routes``,
``advertise``, ``graceful_restart_active``, ``stop``), the value types they exchange (``Peer``, ``Path``),
and ``wait_until``, the poll-until-it-matches helper of FRR's topotests (``run_and_expect``).

Complicating factors:
- The daemons disagree on names for the same thing: session states are normalised to RFC 4271's
  ("Established", "Active", ...), and a path is reduced to (prefix, next hop, AS path, stale).
- Their default retry timers are minutes long (BIRD's error wait is 60-300 s): each harness sets
  seconds-long timers, or a test would wait for a daemon that sulks after our daemon restarted.
- Every daemon process the harness starts is recorded by PID and stopped by that PID only.
"""

from __future__ import annotations

import abc
import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, ClassVar

from labs import netns, process

ESTABLISHED = "Established"
ORIGINATED = {"ipv4": "203.0.113.0/24", "ipv6": "2001:db8:203::/48"}  # what every daemon announces


@dataclass(frozen=True)
class Peer:
    """One session the daemon holds, from the daemon's side."""

    address: str
    asn: int
    password: str = ""
    rr_client: bool = False  # the daemon reflects to this peer
    graceful_restart: bool = True  # helper mode: keep this peer's routes while it restarts

    @property
    def family(self) -> str:
        return "ipv6" if ipaddress.ip_address(self.address).version == 6 else "ipv4"

    @property
    def name(self) -> str:
        """A protocol name every daemon accepts (BIRD wants an identifier)."""
        return "peer_" + self.address.replace(".", "_").replace(":", "_")


@dataclass(frozen=True)
class Path:
    """One route as the daemon holds it."""

    prefix: str
    nexthop: str
    as_path: tuple[int, ...] = ()
    stale: bool = False


@dataclass
class Daemon(abc.ABC):
    """A BGP daemon in a namespace. Subclasses render configs and speak their daemon's CLI."""

    netns: str
    workdir: FsPath
    asn: int
    router_id: str
    local_addresses: dict[str, str]  # family -> our source address for sessions of that family
    peers: list[Peer] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)  # prefixes the daemon originates
    pids: list[int] = field(default_factory=list)

    kind: ClassVar[str] = ""  # "bird16" | "bird2" | "frr" | "gobgp"

    # ------------------------------------------------------------------ verbs

    @classmethod
    @abc.abstractmethod
    def missing(cls) -> str:
        """Why this daemon cannot run here ("" when it can): the reason a test is skipped with."""

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start()

    def add_peer(self, peer: Peer) -> None:
        self.peers = [p for p in self.peers if p.address != peer.address] + [peer]
        if self.pids:
            self.configure()

    def advertise(self, prefix: str) -> None:
        """Originate prefix (in addition to the configured networks)."""
        if prefix not in self.networks:
            self.networks.append(prefix)
        if self.pids:
            self.configure()

    @abc.abstractmethod
    def configure(self) -> None:
        """Apply the current peers and networks to the running daemon."""

    @abc.abstractmethod
    def neighbor_state(self, address: str) -> str:
        """The session's state in RFC 4271 words ("Established", "Active", "Connect", "Idle", ...)."""

    @abc.abstractmethod
    def received_routes(self, address: str, family: str) -> dict[str, Path]:
        """prefix -> path, for what the daemon holds from that neighbour."""

    @abc.abstractmethod
    def graceful_restart_active(self, address: str) -> bool:
        """Whether the daemon is keeping that neighbour's routes while it restarts (helper mode)."""

    def stop(self) -> None:
        marker = str(self.workdir)
        process.stop_all([(pid, marker) for pid in self.pids], timeout=5.0)
        self.pids = []

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{process.tail(p, 15)}" for p in sorted(self.workdir.glob("*.log")))

    # ------------------------------------------------------------------ helpers for subclasses

    @abc.abstractmethod
    def _start(self) -> None: ...

    def _spawn(self, argv: Sequence[str], log_name: str) -> int:
        """Start argv in the daemon's namespace, recorded for ``stop``; argv must name the workdir."""
        assert any(str(self.workdir) in arg for arg in argv), "the stop marker must be on the command line"
        pid = process.spawn(netns.exec_argv(self.netns, argv), self.workdir / log_name)
        self.pids.append(pid)
        return pid

    def _run(self, argv: Sequence[str], timeout: float = 10.0) -> str:
        proc = subprocess.run(
            netns.exec_argv(self.netns, argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise DaemonError(
                f"{self.kind}: `{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc.stdout

    def _signal(self, sig: signal.Signals) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [pid for pid in self.pids if not process.alive(pid)]
            if dead or time.monotonic() > deadline:
                raise DaemonError(f"{self.kind}: {what} not ready (dead pids {dead}):\n{self.log_tail()}")
            time.sleep(0.05)


class DaemonError(RuntimeError):
    """The daemon could not be started, configured or queried; the message carries its output."""


def wait_until(
    fn: Callable[[], Any],
    expect: Any | Callable[[Any], bool],
    timeout: float = 30.0,
    interval: float = 0.25,
    what: str | Callable[[], str] = "",
) -> Any:
    """Poll fn() until its result equals expect (or expect(result) is true); return that result, or raise
    AssertionError with the last result after timeout (``what`` names the wait; a callable is only
    called then, so it can collect logs). Exceptions from fn count as "not yet" (a daemon
    still starting refuses its control socket) and are reported if they persist."""
    check = expect if callable(expect) else (lambda value: value == expect)
    deadline = time.monotonic() + timeout
    while True:
        try:
            value, error = fn(), None
            if check(value):
                return value
        except (DaemonError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            value, error = None, exc
        if time.monotonic() > deadline:
            wanted = (getattr(expect, "__doc__", None) or "a match") if callable(expect) else repr(expect)
            label = what() if callable(what) else what
            raise AssertionError(
                f"{label or fn}: not within {timeout} s; wanted {wanted}, last value {value!r}"
                + (f", last error {error}" if error else "")
            )
        time.sleep(interval)
