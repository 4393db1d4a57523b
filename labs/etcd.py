"""The lab's datastore: a private Debian etcd on loopback, and the writes the lab makes into it.

Stage: lab lifecycle support. ``labs.lab`` starts one etcd per lab (unless the user brings endpoints), fills
it with the topology's Calico resources, and edits affinities while the lab runs. ``--etcd-members N``
makes that etcd a cluster of N members, each its own process.

Owns: the etcd server processes (data in a temporary directory inside the lab's state directory, client and
peer URLs on 127.0.0.1 ports picked free, so two labs coexist) and short-lived client sessions through
confgen's ``EtcdClient``, the same client the daemons use.

Complicating factors:
- A free port is only free until someone binds it; etcd is restarted on fresh ports if it dies on start.
- "Healthy" means an ``EtcdClient`` read works, not that the process exists: etcd accepts TCP before its
  raft member has elected itself. The members of a cluster must all be started before any can answer
  (no quorum before), so they are started together and then waited for one by one.
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
from confgen.datastore.etcd_client import EtcdClient
from confgen.datastore.etcd_security import EtcdSecurity
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
    name: str = "lab"
    argv: tuple[str, ...] = ()


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
    return start_cluster(state_dir, [log], timeout=timeout, attempts=attempts)[0]


@dataclass(frozen=True)
class ServerTls:
    """Files of an etcd member that serves https and asks every client (and peer) for a certificate."""

    ca_file: str
    cert_file: str
    key_file: str


def member_argv(
    name: str, data_dir: str, client_url: str, peer_url: str, cluster: dict[str, str], tls: ServerTls | None
) -> list[str]:
    """The command line of one member of a new cluster; ``cluster`` maps every member's name to its peer
    URL (all members start together with the same list)."""
    argv = [
        ETCD_BIN,
        "--name", name,
        "--data-dir", data_dir,
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", ",".join(f"{n}={url}" for n, url in cluster.items()),
        "--initial-cluster-state", "new",
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip
    if tls is not None:
        for side in ("", "peer-"):  # members verify each other with the same CA as clients
            argv += [
                f"--{side}cert-file", tls.cert_file,
                f"--{side}key-file", tls.key_file,
                f"--{side}trusted-ca-file", tls.ca_file,
                f"--{side}client-cert-auth",
            ]  # fmt: skip
    return argv


def start_cluster(
    state_dir: Path,
    logs: Sequence[Path],
    *,
    tls: ServerTls | None = None,
    security: EtcdSecurity | None = None,
    timeout: float = 30.0,
    attempts: int = 3,
) -> list[EtcdServer]:
    """Start one etcd member per log file, as one cluster, and wait until every member serves reads.

    Members are named etcd1.. (a single member keeps the name "lab"); all listen on loopback ports picked
    free, https when ``tls`` is given (``security`` is then how the health check connects). Any failure
    stops every member started so far and tries fresh ports.
    """
    count = len(logs)
    scheme = "https" if tls is not None else "http"
    last = ""
    for _ in range(attempts):
        ports = free_ports(2 * count)
        names = ["lab"] if count == 1 else [f"etcd{i + 1}" for i in range(count)]
        client_urls = [f"{scheme}://{HOST}:{port}" for port in ports[:count]]
        peer_urls = [f"{scheme}://{HOST}:{port}" for port in ports[count:]]
        cluster = dict(zip(names, peer_urls, strict=True))
        servers: list[EtcdServer] = []
        try:
            for name, client_url, peer_url, log in zip(names, client_urls, peer_urls, logs, strict=True):
                data_dir = tempfile.mkdtemp(prefix="etcd-", dir=state_dir)
                argv = member_argv(name, data_dir, client_url, peer_url, cluster, tls)
                if count == 1:
                    # A lone member has no one to lose an election to: it serves after its first election
                    # timeout (1 s by default, randomised; 0.2-0.9 s measured), which short timers cut to
                    # ~0.2 s. Members of a cluster keep the defaults, which hold on a loaded machine.
                    argv += ["--heartbeat-interval", "10", "--election-timeout", "50"]
                pid = process.spawn(argv, log)
                servers.append(EtcdServer(pid, client_url, peer_url, data_dir, name, tuple(argv)))
            # A member of a cluster only serves once a quorum has formed: all were started above.
            for server in servers:
                wait_healthy([server.client_url], timeout, pid=server.pid, security=security)
            return servers
        except EtcdUnavailable as exc:
            last = str(exc)
            for server in servers:
                process.stop(server.pid, server.data_dir)
    where = ", ".join(str(log) for log in logs)
    raise EtcdUnavailable(f"etcd did not start after {attempts} attempts: {last} (log: {where})")


def stop(server_pid: int, data_dir: str) -> None:
    process.stop(server_pid, data_dir)


def wait_healthy(
    endpoints: Sequence[str], timeout: float, pid: int | None = None, security: EtcdSecurity | None = None
) -> None:
    """Return once a read through EtcdClient succeeds; raise EtcdUnavailable at timeout or if pid dies."""
    deadline = time.monotonic() + timeout
    error = "no attempt made"
    while time.monotonic() < deadline:
        if pid is not None and not process.alive(pid):
            raise EtcdUnavailable(f"etcd (pid {pid}) exited during start-up")
        try:
            left = min(RPC_TIMEOUT, max(deadline - time.monotonic(), 0.5))
            get_prefix(endpoints, "/calico/", timeout=left, security=security)
            return
        except EtcdUnavailable as exc:
            error = str(exc)
        time.sleep(0.2)
    raise EtcdUnavailable(f"etcd at {','.join(endpoints)} not healthy after {timeout:.0f} s: {error}")


def put_all(
    endpoints: Sequence[str],
    items: Iterable[tuple[str, str]],
    timeout: float = RPC_TIMEOUT,
    security: EtcdSecurity | None = None,
) -> None:
    items = list(items)

    async def body(client: EtcdClient) -> None:
        for key, value in items:
            await asyncio.wait_for(client.put(key, value), timeout)

    _session(endpoints, body, timeout, security)


def delete_all(
    endpoints: Sequence[str],
    keys: Iterable[str],
    timeout: float = RPC_TIMEOUT,
    security: EtcdSecurity | None = None,
) -> None:
    keys = list(keys)

    async def body(client: EtcdClient) -> None:
        for key in keys:
            await asyncio.wait_for(client.delete(key), timeout)

    _session(endpoints, body, timeout, security)


def delete(
    endpoints: Sequence[str], key: str, timeout: float = RPC_TIMEOUT, security: EtcdSecurity | None = None
) -> bool:
    async def body(client: EtcdClient) -> bool:
        return await asyncio.wait_for(client.delete(key), timeout)

    return _session(endpoints, body, timeout, security)


def get_prefix(
    endpoints: Sequence[str], prefix: str, timeout: float = RPC_TIMEOUT, security: EtcdSecurity | None = None
) -> dict[str, bytes]:
    async def body(client: EtcdClient) -> dict[str, bytes]:
        _revision, values = await asyncio.wait_for(client.get_prefix(prefix), timeout)
        return values

    return _session(endpoints, body, timeout, security)


def _session(
    endpoints: Sequence[str],
    body: Callable[[EtcdClient], Awaitable[T]],
    timeout: float,
    security: EtcdSecurity | None = None,
) -> T:
    async def main() -> T:
        if security is None:
            client = EtcdClient(list(endpoints), timeout=timeout)
        else:
            client = EtcdClient(list(endpoints), timeout=timeout, security=security)
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
