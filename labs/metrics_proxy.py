"""Per-lab TCP forwarder for Prometheus: each node's metrics endpoint at a port on the host's loopback.

Stage: lab plumbing for ``lab up --prometheus`` (``labs.prometheus`` starts it as ``python -m
labs.metrics_proxy`` in the host namespace, one process per lab): the reverse of ``labs.proxy``, which
brings the host's etcd into the nodes.

Owns: one listener per node on 127.0.0.1 (a free port each, chosen by the kernel and written next to the
ready file, ``<ready>.ports``, as JSON node -> port) and, per accepted connection, a connection to the
daemon's metrics endpoint (127.0.0.1:9094 by default) made from inside that node's namespace.

Complicating factors:
- The daemons' endpoints live in the node namespaces, where the host cannot route (their addresses are on
  the lab's bridge, which is in a namespace of its own). Prometheus runs in the host namespace, so that its
  HTTP API is on the host's loopback for the user and the tests, and reaches the nodes through this.
- A socket belongs to the namespace it was created in. The outgoing socket is created inside the node's
  namespace (``setns(2)`` on the event loop's thread, synchronously, restored before anything else runs:
  no await in between) and connected from the host namespace afterwards. Other threads (the loop's
  resolver) are not moved by ``setns``.
- Nothing is listened on beyond loopback: the lab adds nothing reachable from outside the machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import click

from labs.proxy import Forwarder, in_netns, serve

DEFAULT_TARGET = ("127.0.0.1", 9094)
log = logging.getLogger("labs.metrics_proxy")


def socket_in_netns(netns: str) -> socket.socket:
    """An unconnected, non-blocking TCP socket that belongs to the named namespace (/run/netns/<netns>)."""
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


class NetnsForwarder(Forwarder):
    """Splices each accepted connection to ``target`` as seen from inside ``netns``."""

    def __init__(self, netns: str, target: tuple[str, int], connect_timeout: float = 5.0):
        super().__init__([target])
        self.netns = netns
        self.connect_timeout = connect_timeout

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            sock = socket_in_netns(self.netns)
        except OSError as exc:
            raise ConnectionError(f"{self.netns}: {exc}") from exc
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, self.targets[0]), self.connect_timeout)
            return await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise ConnectionError(f"{self.netns} {self.targets[0]}: {exc!r}") from exc


def listen_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


@click.command()
@click.option("--node", "nodes", multiple=True, required=True, metavar="NAME=NETNS",
              help="a node and its namespace (repeat)")  # fmt: skip
@click.option("--target", default="127.0.0.1:9094", show_default=True,
              help="the metrics endpoint inside each namespace")  # fmt: skip
@click.option("--ready-file", type=click.Path(path_type=Path), required=True,
              help="written once serving; the ports (JSON node: port) go to <ready>.ports")  # fmt: skip
def main(nodes: tuple[str, ...], target: str, ready_file: Path) -> None:
    """Expose each node's metrics endpoint on a port of the host's loopback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, _, port = target.rpartition(":")
    listeners, ports = [], {}
    for spec in nodes:
        name, sep, ns = spec.partition("=")
        if not sep or not name or not ns:
            raise click.BadParameter(f"{spec!r} is not NAME=NETNS", param_hint="--node")
        sock = listen_loopback()
        ports[name] = sock.getsockname()[1]
        listeners.append((sock, NetnsForwarder(ns, (host, int(port)))))
    # serve() writes the ready file (its PID) once serving: the ports are in place before it.
    ports_file = ready_file.with_suffix(".ports")
    ports_file.write_text(json.dumps(ports) + "\n")
    asyncio.run(serve(listeners, ready_file))


if __name__ == "__main__":
    main()
