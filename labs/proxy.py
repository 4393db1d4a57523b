"""Per-lab TCP forwarder: etcd at 127.0.0.1:2379 on every node namespace's own loopback.

Stage: lab plumbing, run as ``python -m labs.proxy`` in the host namespace, one process per lab.

Owns: one listening socket per node namespace, and a byte-for-byte copy of every accepted connection to
the etcd endpoint in the host namespace. A real node reaches etcd at a local address the same way (an etcd
gateway or proxy on the node), so the daemons under test need no lab-specific settings. For an etcd
cluster each member gets its own listener (``--forward``) that reaches that member only: the nodes then
list every member in ETCD_ENDPOINTS and fail over in their own client, as against a real cluster.

Complicating factors:
- Loopback is per namespace, so the node daemons cannot dial the host's 127.0.0.1. A socket belongs to the
  namespace it was created in, for its whole life, so this process enters each node namespace just long
  enough to create, bind and listen (``setns(2)`` through libc: Python 3.11 has no ``os.setns``), then
  returns. The listener keeps working from the host namespace; connections to etcd are opened from the
  host namespace.
- ``setns`` moves only the calling thread. The switch happens on the main thread before the event loop
  and before any other thread exists, and the original namespace is restored in ``finally``: a thread left
  in a node namespace would open the etcd connections from the wrong place.
- etcd speaks gRPC over HTTP/2: long-lived, multiplexed, half-closes. The copy is opaque bytes in both
  directions, EOF is passed on as a half-close, and a reset on either side closes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import click

CLONE_NEWNET = 0x40000000
CHUNK = 65536
log = logging.getLogger("labs.proxy")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """The calling thread inside the named namespace (/run/netns/<netns>) for the block, then back in its
    own, whatever the block raises. Sockets created inside keep the namespace they were created in."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def listen_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port inside the named namespace (/run/netns/<netns>)."""
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


def address(text: str) -> tuple[str, int]:
    """(host, port) of an endpoint URL or host:port; the scheme does not matter to a byte copy (TLS passes
    through, end to end between the node's client and etcd)."""
    parts = urlsplit(text if "//" in text else f"tcp://{text}")
    if not parts.hostname:
        raise click.BadParameter(f"no host in {text!r}")
    return parts.hostname, parts.port or 2379


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


class Forwarder:
    """Accepts on the node-side listeners and splices each connection to the first reachable target."""

    def __init__(self, targets: list[tuple[str, int]]):
        self.targets = targets

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        error: OSError | None = None
        for host, port in self.targets:
            try:
                return await asyncio.open_connection(host, port)
            except OSError as exc:
                error = exc
        raise ConnectionError(f"no etcd target reachable: {error}")

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await self._connect()
        except ConnectionError as exc:
            log.warning("%s", exc)
            client_w.close()
            return
        tasks = [asyncio.ensure_future(_copy(client_r, up_w)), asyncio.ensure_future(_copy(up_r, client_w))]
        try:
            # Both directions run until EOF; an error in one (reset) tears the pair down.
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            for task in done:
                if task.exception() is not None:
                    log.debug("connection closed: %r", task.exception())
        finally:
            for writer in (client_w, up_w):
                writer.close()


async def serve(listeners: list[tuple[socket.socket, Forwarder]], ready: Path | None) -> None:
    servers = [await asyncio.start_server(forwarder.handle, sock=sock) for sock, forwarder in listeners]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.rename(ready)
    log.info("forwarding: %s", ", ".join(f"{s.getsockname()} -> {f.targets}" for s, f in listeners))
    await stop.wait()
    for server in servers:
        server.close()
    log.info("stopped")


@click.command()
@click.option("--netns", "namespaces", multiple=True, required=True, help="node namespace to serve (repeat)")
@click.option("--target", "targets", multiple=True, help="etcd URL in the host netns (repeat: in order)")
@click.option("--listen", default="127.0.0.1:2379", show_default=True, help="address inside each namespace")
@click.option(
    "--forward",
    "forwards",
    multiple=True,
    metavar="LISTEN=URL",
    help="one more listener in each namespace, to this one endpoint only (repeat: one per member)",
)
@click.option("--ready-file", type=click.Path(path_type=Path), help="written once every listener is bound")
def main(
    namespaces: tuple[str, ...],
    targets: tuple[str, ...],
    listen: str,
    forwards: tuple[str, ...],
    ready_file: Path | None,
) -> None:
    """Expose etcd TARGET at LISTEN (and each --forward) inside every --netns."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    routes = [(listen, list(targets))] if targets else []
    for spec in forwards:
        listen_at, sep, url = spec.partition("=")
        if not sep or not url:
            raise click.BadParameter(f"{spec!r} is not LISTEN=URL", param_hint="--forward")
        routes.append((listen_at, [url]))
    if not routes:
        raise click.UsageError("give at least one --target or --forward")
    # Bound here, synchronously, before the event loop exists: see the module docstring on setns.
    listeners = []
    for listen_at, urls in routes:
        host, port = address(listen_at)
        forwarder = Forwarder([address(u) for u in urls])
        listeners += [(listen_in_netns(ns, host, port), forwarder) for ns in namespaces]
    asyncio.run(serve(listeners, ready_file))


if __name__ == "__main__":
    main()
