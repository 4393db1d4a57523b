"""Netlink sockets and the ifindex <-> name cache, shared by the request side of the kernel adapter
(``routes.netlink``) and its subscriptions (``routes.netlink_watch``).

Stage: the bottom of the kernel dataplane, beside the codec (``routes.rtnetlink``).

Owns: opening a NETLINK_ROUTE socket in the current namespace or a named one (``netns=``, without moving
this process), its buffer sizes and options, the classic-BPF filter attachment, and ``LinkNames``: the
device names by index that both sides decode with. The request side reads and refreshes it; a watch
also learns from the link notifications it decodes. Passing one ``LinkNames`` to both is what lets them
share it without reaching into each other.

Complicating factors:
- The FORCE buffer options ignore net.core.[rw]mem_max but need CAP_NET_ADMIN; without it the plain
  ones (capped by the sysctls) are the fallback.
- Refreshes use a short-lived pyroute2 socket: they are rare (an unknown device, ENODEV), and not holding
  one keeps this object free of any event-loop binding.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct

from pyroute2 import AsyncIPRoute
from pyroute2 import netns as pyroute2_netns

from routes import rtnetlink as rt

log = logging.getLogger(__name__)

RCVBUF_BYTES = 32 * 1024 * 1024
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_SO_ATTACH_FILTER = 26


def open_socket(netns: str | None, sndbuf: int, groups: int = 0) -> socket.socket:
    """A bound NETLINK_ROUTE socket with extended acks and strict dump checking, subscribed to
    ``groups``."""
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    else:
        sock = pyroute2_netns.create_socket(
            netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, flags=0
        )
    _set_buffer(sock, _SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF_BYTES)
    _set_buffer(sock, _SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
    for option in (rt.NETLINK_CAP_ACK, rt.NETLINK_EXT_ACK, rt.NETLINK_GET_STRICT_CHK):
        sock.setsockopt(rt.SOL_NETLINK, option, 1)
    sock.bind((0, groups))
    return sock


def _set_buffer(sock: socket.socket, forced: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel copies the
    # program during setsockopt, so the buffer only has to live until the call returns.
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.warning("route filter not attached (%s); our own notifications will reach the watch", exc)


class LinkNames:
    """Device names by ifindex (and back) for one namespace, refreshed on demand."""

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self.names: dict[int, str] = {}
        self.indices: dict[str, int] = {}

    async def refresh(self) -> None:
        names = {}
        async with AsyncIPRoute(netns=self._netns, flags=0, groups=0) as ipr:
            async for link in await ipr.link("dump"):
                names[link["index"]] = link.get("ifname")
        self.names = names
        self.indices = {name: index for index, name in names.items()}

    def learn(self, index: int, name: str, deleted: bool) -> None:
        """Fold a link notification in: a rename or a deletion drops the old name first."""
        old = self.names.pop(index, None)
        if old is not None and self.indices.get(old) == index:
            del self.indices[old]
        if not deleted and name:
            self.names[index] = name
            self.indices[name] = index
