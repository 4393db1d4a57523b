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
- Refreshes dump the links on a short-lived socket of their own, in a thread, with our codec: they are rare
  (an unknown device, ENODEV), and not holding one keeps this object free of any event-loop binding.
- pyroute2 is imported only to open a socket in a named namespace (tests, benchmarks): its package
  ``__init__`` loads all of pyroute2 (IPDB, NDB, conntrack, ...), about 11 MB of RSS that a node's daemon,
  which runs in its own namespace, has no use for.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct

from routes import rtnetlink as rt
from routes.model import NetlinkError, errno_text

log = logging.getLogger(__name__)

RCVBUF_BYTES = 32 * 1024 * 1024
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_SO_ATTACH_FILTER = 26
LINK_DUMP_TIMEOUT = 5.0  # seconds a link dump may wait for the kernel's next message
LINK_DUMP_ATTEMPTS = 5  # dumps interrupted by a concurrent link change (NLM_F_DUMP_INTR) are retried


def open_socket(netns: str | None, sndbuf: int, groups: int = 0) -> socket.socket:
    """A bound NETLINK_ROUTE socket with extended acks and strict dump checking, subscribed to
    ``groups``."""
    sock = _raw_socket(netns)
    _set_buffer(sock, _SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF_BYTES)
    _set_buffer(sock, _SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
    for option in (rt.NETLINK_CAP_ACK, rt.NETLINK_EXT_ACK, rt.NETLINK_GET_STRICT_CHK):
        sock.setsockopt(rt.SOL_NETLINK, option, 1)
    sock.bind((0, groups))
    return sock


def _raw_socket(netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    from pyroute2 import netns as pyroute2_netns  # see the module docstring: only for a named namespace

    sock: socket.socket = pyroute2_netns.create_socket(
        netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, flags=0
    )
    return sock


def dump_links(netns: str | None, timeout: float = LINK_DUMP_TIMEOUT) -> dict[int, str]:
    """Device names by ifindex, read from the kernel (blocking: run it in a thread)."""
    for _ in range(LINK_DUMP_ATTEMPTS):
        with _raw_socket(netns) as sock:
            sock.settimeout(timeout)
            sock.bind((0, 0))
            names, interrupted = _dump_links_once(sock)
        if not interrupted:
            return names
    raise NetlinkError(errno.EINTR, f"link dump interrupted {LINK_DUMP_ATTEMPTS} times by concurrent changes")


def _dump_links_once(sock: socket.socket) -> tuple[dict[int, str], bool]:
    seq = 1
    sock.send(rt.encode_link_dump(seq))
    names: dict[int, str] = {}
    interrupted = False
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    while True:
        n = sock.recv_into(buf)
        for kind, flags, mseq, offset in rt.iter_messages(view[:n]):
            if mseq != seq:
                continue
            interrupted |= bool(flags & rt.NLM_F_DUMP_INTR)
            if kind == rt.NLMSG_DONE:
                return names, interrupted
            if kind == rt.NLMSG_ERROR:
                code, detail = rt.decode_error(view, offset)
                raise NetlinkError(code, errno_text(code, f"link dump: {detail}"))
            if kind == rt.RTM_NEWLINK:
                index, name, _ = rt.decode_link(view, offset)
                names[index] = name


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
        names = await asyncio.to_thread(dump_links, self._netns)
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
