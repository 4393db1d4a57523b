"""Fault injection for the campaign: signals to the lab's own processes, blackholed links, killed sessions.

Stage: test support for tests/fault. The tests decide what to break and when; this module does the
breaking, and undoes it in every outcome (each injector is a context manager or has an explicit undo).

Owns: finding a node's processes (the daemon from the lab's state file, its ExaBGP and API bridge inside
the node's namespace by their command lines), SIGSTOP/SIGCONT/SIGKILL by PID, killing and restarting the
lab's etcd with its own arguments, nftables blackholes inside a namespace, and TCP session resets
(``ss -K``).

Complicating factors:
- Only processes of the lab are ever signalled: PIDs come from the state file or from ``ip netns pids`` of a
  namespace the lab created, and a PID is re-checked against its command line before each signal (PIDs are
  recycled). Nothing is found by name across the host.
- A paused process must be resumed whatever happens to the test, or ``lab down``'s SIGTERM would wait on
  it; ``paused`` resumes in its ``finally`` (a PID that died meanwhile is left alone).
- A blackhole that dropped everything would also drop the RST that ``ss -K`` sends, and the far side
  would only notice at its hold timer: RSTs pass, everything else on the BGP port is dropped.
- etcd is restarted with the very arguments it ran with (same ports, same data directory), so clients
  reconnect to the same endpoint and the state file's record is updated for ``lab down``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from labs import etcd, netns, ops, process, state
from labs import lab as labs_lab

EXABGP = "bgp.exabgp.launch server"  # ExaBGP's command line, as the supervisor starts it
BRIDGE = "/api.sock"  # the API process ExaBGP spawns: socat or the Python bridge, both naming this socket


class InjectError(AssertionError):
    """A fault could not be injected or undone; the message names the process or namespace."""


def node_netns(lab: str, node: str) -> str:
    return state.netns_name(lab, node)


def daemon_pid(lab: str, node: str) -> int:
    return ops.load(lab).node(node).pid


def child_pid(lab: str, node: str, marker: str) -> int | None:
    """The one process inside the node's namespace whose command line carries marker, or None."""
    found = [pid for pid in netns.pids(node_netns(lab, node)) if marker in process.cmdline(pid)]
    if len(found) > 1:
        raise InjectError(f"{node}: {len(found)} processes match {marker!r}: {found}")
    return found[0] if found else None


def node_pids(lab: str, node: str) -> dict[str, int]:
    """role -> PID for the node's daemon, ExaBGP and API bridge (roles not running are left out)."""
    pids = {"daemon": daemon_pid(lab, node)}
    for role, marker in (("exabgp", EXABGP), ("bridge", BRIDGE)):
        pid = child_pid(lab, node, marker)
        if pid:
            pids[role] = pid
    return {role: pid for role, pid in pids.items() if pid and process.alive(pid)}


def wait_new_child(lab: str, node: str, marker: str, old: int, timeout: float) -> tuple[int, float]:
    """Wait until a process with marker other than old runs on the node; (its PID, seconds waited)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        pid = child_pid(lab, node, marker)
        if pid and pid != old and process.alive(pid):
            return pid, time.monotonic() - started
        time.sleep(0.05)
    raise InjectError(f"{node}: no new {marker!r} within {timeout:.0f} s (old pid {old})")


def _ours(lab: str, pid: int) -> bool:
    """pid runs inside one of the lab's namespaces, or carries the lab's marker (etcd, proxy)."""
    if pid <= 0 or pid == os.getpid() or not process.alive(pid):
        return False
    if state.marker(lab) in process.cmdline(pid):
        return True
    prefix = state.netns_prefix(lab)
    return any(pid in netns.pids(ns) for ns in netns.list_netns(prefix))


def send(lab: str, pid: int, sig: signal.Signals) -> bool:
    """Signal a process of the lab; False if it is gone (or no longer ours)."""
    if not _ours(lab, pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False


def kill(lab: str, pid: int, what: str) -> None:
    if not send(lab, pid, signal.SIGKILL):
        raise InjectError(f"{what} (pid {pid}) is not running: nothing to kill")


@contextlib.contextmanager
def paused(lab: str, pid: int, what: str) -> Iterator[int]:
    """SIGSTOP pid for the block; SIGCONT afterwards in every outcome (unless it died meanwhile)."""
    if not send(lab, pid, signal.SIGSTOP):
        raise InjectError(f"{what} (pid {pid}) is not running: nothing to pause")
    try:
        yield pid
    finally:
        if process.alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------------------------------------------- etcd


class LabEtcd:
    """The lab's own etcd: kill it, pause it, start it again with its own command line."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        st = ops.load(lab)
        if not st.etcd_pid:
            raise InjectError(f"lab {lab} does not run its own etcd")
        self.pid = st.etcd_pid
        self.argv = process.argv(self.pid)
        self.endpoints = list(st.etcd_endpoints)
        self.log = st.dir / "logs" / "etcd.log"

    def kill(self) -> None:
        kill(self.lab, self.pid, "etcd")
        deadline = time.monotonic() + 10
        while process.alive(self.pid):
            if time.monotonic() > deadline:
                raise InjectError(f"etcd (pid {self.pid}) outlived SIGKILL")
            time.sleep(0.02)

    def paused(self):
        return paused(self.lab, self.pid, "etcd")

    def start(self, timeout: float = 30.0) -> float:
        """Start etcd again with the same arguments (ports, data directory); seconds until it serves."""
        if process.alive(self.pid):
            raise InjectError(f"etcd (pid {self.pid}) still runs")
        started = time.monotonic()
        self.pid = process.spawn(self.argv, self.log)
        st = ops.load(self.lab)
        st.etcd_pid = self.pid
        st.save()
        etcd.wait_healthy(self.endpoints, timeout, pid=self.pid)
        return time.monotonic() - started

    def ensure_running(self) -> None:
        """Cleanup: whatever happened, leave an etcd running for the next test (or for ``lab down``)."""
        if not process.alive(self.pid):
            self.start()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)


def put(lab: str, items: list[tuple[str, str]]) -> None:
    """Write keys into the lab's etcd and record them, so ``lab down`` removes them from a user's etcd."""
    st = ops.load(lab)
    st.etcd_keys += [key for key, _ in items if key not in st.etcd_keys]
    st.save()
    etcd.put_all(st.etcd_endpoints, items)


def delete(lab: str, keys: list[str]) -> None:
    etcd.delete_all(ops.load(lab).etcd_endpoints, keys)


# ---------------------------------------------------------------------------------------------- links


def nft(ns: str, script: str) -> None:
    proc = subprocess.run(netns.exec_argv(ns, ["nft", "-f", "-"]), input=script, capture_output=True,
                          text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise InjectError(f"nft in {ns} failed: {proc.stderr.strip()}\n{script}")


@contextlib.contextmanager
def blackhole(ns: str, peer: str, port: int = 179) -> Iterator[str]:
    """Inside ns, drop every packet to or from peer on the BGP port, except RSTs; removed afterwards."""
    family = "ip6" if ":" in peer else "ip"
    table = f"cbgp_fault_{secrets.token_hex(3)}"
    match = f"{family} daddr {peer}", f"{family} saddr {peer}"
    rules = []
    for chain, hook, addr in (("out", "output", match[0]), ("in", "input", match[1])):
        rules.append(
            f"  chain {chain} {{\n    type filter hook {hook} priority 0;\n"
            f"    {addr} tcp flags & rst == rst accept\n"
            f"    {addr} tcp dport {port} drop\n    {addr} tcp sport {port} drop\n  }}"
        )
    nft(ns, f"table inet {table} {{\n" + "\n".join(rules) + "\n}\n")
    try:
        yield table
    finally:
        if netns.exists(ns):
            nft(ns, f"delete table inet {table}\n")


def reset_sessions(ns: str, peer: str, port: int = 179) -> int:
    """Abort every TCP connection to peer on the BGP port inside ns (``ss -K``: the kernel sends a RST and
    the owner gets ECONNABORTED); returns how many were found."""
    filt = f"( dport = :{port} or sport = :{port} )"
    argv = ["ss", "-H", "-t", "-K", "dst", peer, *filt.split()]
    proc = subprocess.run(netns.exec_argv(ns, argv), capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise InjectError(f"ss -K in {ns} failed: {proc.stderr.strip()}")
    return len([line for line in proc.stdout.splitlines() if line.strip()])


# ---------------------------------------------------------------------------------------------- nodes


def crash_and_restart_daemon(lab: str, node: str) -> int:
    """SIGKILL the node's daemon (its ExaBGP and bridge follow it), start it again; the new PID."""
    labs_lab.crash_node(lab, node)
    return labs_lab.start_node(lab, node)


def restart_daemon(lab: str, node: str) -> int:
    labs_lab.stop_node(lab, node)
    return labs_lab.start_node(lab, node)


def lab_path(lab: str, *parts: str) -> Path:
    return state.lab_dir(lab).joinpath(*parts)
