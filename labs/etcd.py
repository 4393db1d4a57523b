"""The lab's datastore: a private Debian etcd on loopback, and the writes the lab makes into it.

Stage: lab lifecycle support. ``labs.lab`` starts one etcd per lab (unless the user brings endpoints), fills
it with the topology's Calico resources, and edits affinities while the lab runs.

Owns: the etcd server process (data in a temporary directory inside the lab's state directory, client and
peer URLs on 127.0.0.1 ports picked free, so two labs coexist) and short-lived client sessions through
confgen's ``EtcdClient``, the same client the daemons use.

Complicating factors:
- A free port is only free until someone binds it; etcd is restarted on fresh ports if it dies on start.
- "Healthy" means an ``EtcdClient`` read works, not that the process exists: etcd accepts TCP before its
  raft member has elected itself.
- The lab API is synchronous (CLI and tests); each call runs its own event loop around one client session,
  and every RPC is bounded by a timeout so an unreachable endpoint fails with a message instead of hanging.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from confgen.datastore.base import DatastoreError
from confgen.datastore.etcd import EtcdClient
from labs import process

ETCD_BIN = "/usr/bin/etcd"
HOST = "127.0.0.1"
RPC_TIMEOUT = 5.0

T = TypeVar("T")


class EtcdUnavailable(RuntimeError):
    """etcd could not be started or reached; the message says which endpoints and why."""


@dataclass(frozen=True)
class EtcdServer:
    pid: int
    client_url: str
    peer_url: str
    data_dir: str


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free right now on 127.0.0.1 (all bound at once, so distinct)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start(state_dir: Path, log: Path, timeout: float = 30.0, attempts: int = 3) -> EtcdServer:
    """Start etcd with its data under state_dir and wait until it serves reads."""
    last = ""
    for _ in range(attempts):
        client_port, peer_port = free_ports(2)
        client_url, peer_url = f"http://{HOST}:{client_port}", f"http://{HOST}:{peer_port}"
        data_dir = tempfile.mkdtemp(prefix="etcd-", dir=state_dir)
        argv = [
            ETCD_BIN,
            "--name", "lab",
            "--data-dir", data_dir,
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"lab={peer_url}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        pid = process.spawn(argv, log)
        server = EtcdServer(pid, client_url, peer_url, data_dir)
        try:
            wait_healthy([client_url], timeout, pid=pid)
            return server
        except EtcdUnavailable as exc:
            last = str(exc)
            process.stop(pid, data_dir)
    raise EtcdUnavailable(f"etcd did not start after {attempts} attempts: {last} (log: {log})")


def stop(server_pid: int, data_dir: str) -> None:
    process.stop(server_pid, data_dir)


def wait_healthy(endpoints: Sequence[str], timeout: float, pid: int | None = None) -> None:
    """Return once a read through EtcdClient succeeds; raise EtcdUnavailable at timeout or if pid dies."""
    deadline = time.monotonic() + timeout
    error = "no attempt made"
    while time.monotonic() < deadline:
        if pid is not None and not process.alive(pid):
            raise EtcdUnavailable(f"etcd (pid {pid}) exited during start-up")
        try:
            get_prefix(endpoints, "/calico/", timeout=min(RPC_TIMEOUT, max(deadline - time.monotonic(), 0.5)))
            return
        except EtcdUnavailable as exc:
            error = str(exc)
        time.sleep(0.2)
    raise EtcdUnavailable(f"etcd at {','.join(endpoints)} not healthy after {timeout:.0f} s: {error}")


def put_all(endpoints: Sequence[str], items: Iterable[tuple[str, str]], timeout: float = RPC_TIMEOUT) -> None:
    items = list(items)

    async def body(client: EtcdClient) -> None:
        for key, value in items:
            await asyncio.wait_for(client.put(key, value), timeout)

    _session(endpoints, body, timeout)


def delete_all(endpoints: Sequence[str], keys: Iterable[str], timeout: float = RPC_TIMEOUT) -> None:
    keys = list(keys)

    async def body(client: EtcdClient) -> None:
        for key in keys:
            await asyncio.wait_for(client.delete(key), timeout)

    _session(endpoints, body, timeout)


def delete(endpoints: Sequence[str], key: str, timeout: float = RPC_TIMEOUT) -> bool:
    async def body(client: EtcdClient) -> bool:
        return await asyncio.wait_for(client.delete(key), timeout)

    return _session(endpoints, body, timeout)


def get_prefix(endpoints: Sequence[str], prefix: str, timeout: float = RPC_TIMEOUT) -> dict[str, bytes]:
    async def body(client: EtcdClient) -> dict[str, bytes]:
        _revision, values = await asyncio.wait_for(client.get_prefix(prefix), timeout)
        return values

    return _session(endpoints, body, timeout)


def _session(endpoints: Sequence[str], body: Callable[[EtcdClient], Awaitable[T]], timeout: float) -> T:
    async def main() -> T:
        client = EtcdClient(list(endpoints), timeout=timeout)
        try:
            await asyncio.wait_for(client.connect(), timeout)
            return await body(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except (DatastoreError, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise EtcdUnavailable(f"etcd at {','.join(endpoints)} unreachable: {reason}") from exc
