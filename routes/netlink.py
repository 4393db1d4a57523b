"""KernelNetlink: the real implementation of the ``routes.model.Netlink`` protocol (the kernel adapter).

Stage: below ``routes.table`` (which programs routes) and ``routes.monitor`` (which watches Felix's
workload routes). Everything above talks to the ``Netlink`` protocol from ``routes.model``; unit tests use
``routes.testing.FakeNetlink`` instead, and ``tests/netns/test_netlink_contract.py`` holds the two to the
same answers. Only the adapter's modules (this one, ``routes.nlsocket``, ``routes.netlink_watch``) open
sockets, and only ``routes.nlsocket`` imports pyroute2; an import-linter contract keeps the rest out.

Owns: the request socket of one network namespace (the current one, or ``netns=`` which opens the
sockets inside a named namespace without moving this process) and batching. The adapter is split along
its two kinds of socket: this module sends requests (apply, dumps); ``routes.netlink_watch`` iterates
subscribed sockets; ``routes.nlsocket`` opens both and holds the ifindex <-> name cache they share.

Design:
- ``apply`` is the hot path. Requests are packed by ``routes.rtnetlink`` and sent in 256 KiB datagrams on
  ONE raw socket, each message with its own sequence number; the kernel handles a datagram synchronously
  inside sendmsg, so its answers are queued by the time ``send`` returns and are read per chunk, matched
  back to routes by sequence number. Only a chunk's last message asks for an ack (NLM_F_ACK): the kernel
  answers a failed request whether or not it asked, in order, so that ack closes the chunk and every
  request without an error before it succeeded; 100k acks would cost 100k reads and kernel buffers.
  NETLINK_CAP_ACK keeps answers small and NETLINK_EXT_ACK adds the kernel's reason to errors. The chunk
  is capped so that its answers fit the receive buffer (a dropped one would leave outcomes unknown). A
  large batch runs in a worker thread, so the event loop keeps serving BGP while 100k routes go in; a
  small one (``INLINE_REQUESTS``) is sent from the loop itself, where the thread hop would cost more
  than the few microseconds the kernel takes (it is most of a single route's time in the daemon).
- Dumps use the same raw socket with NETLINK_GET_STRICT_CHK, so the kernel filters by table and protocol,
  and are decoded by ``routes.rtnetlink``: pyroute2's decoder costs ~100x more per route, which would
  turn a 100k-route read-back into half a minute. A dump interrupted by a concurrent change
  (NLM_F_DUMP_INTR) is retried. Links are dumped by ``routes.nlsocket``; pyroute2 only opens netns sockets.
- ``watch`` subscribes at call time (before the caller's initial dump, so nothing falls in between) to
  RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE and RTNLGRP_LINK. Link events matter because the kernel removes
  IPv4 routes of a deleted or downed device WITHOUT sending RTM_DELROUTE. An optional BPF filter drops
  the RTM_NEWROUTE notifications of our own protocol in the kernel, and the RTM_DELROUTE ones that our
  own request socket asked for (the kernel stamps them with its port id); deletions by anyone else pass.
  If the socket overflows anyway (ENOBUFS), iteration raises ``WatchOverflow`` once; the caller re-dumps
  and keeps iterating the same watch.
- Interface addresses (``dump_addresses``, ``watch_addresses``: RTNLGRP_IPV4_IFADDR / RTNLGRP_IPV6_IFADDR)
  have a socket of their own: they change rarely, and the route monitor's consumers need not know them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Iterable, Sequence

from routes import rtnetlink as rt
from routes.model import RT_TABLE_MAIN, InterfaceAddress, NetlinkError, Route
from routes.netlink_watch import KernelAddressWatch, KernelRouteWatch
from routes.nlsocket import LinkNames, attach_filter, open_socket

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
ACK_TRUESIZE = 1024  # upper bound of the receive-buffer cost of one ack skb (truesize, not payload)
INLINE_REQUESTS = 64  # a batch up to this size is sent from the event loop, not a worker thread
_FLAGS = struct.Struct("=H")  # nlmsg_flags, at offset 6 of the header (host byte order)


class KernelNetlink:
    """``Netlink`` for the current network namespace, or for the named one (``ip netns`` name)."""

    def __init__(self, *, netns: str | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._netns = netns
        self._chunk_bytes = chunk_bytes
        self._sock: socket.socket | None = None
        self._max_msgs = 0
        self._chunk_limit = chunk_bytes
        self._lock = asyncio.Lock()  # one request socket: applies and dumps take turns
        self._seq = 0
        self._links = LinkNames(netns)  # shared with the watches this object opens
        # For the answers to a chunk (one small datagram each: an error or the closing ack); under _lock only.
        self._buf = bytearray(1 << 16)

    # -- sockets -----------------------------------------------------------------------------------

    def _open(self, groups: int = 0) -> socket.socket:
        return open_socket(self._netns, 2 * self._chunk_bytes, groups)

    def _request_socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = self._open()
            self._sock.settimeout(30.0)
            # getsockopt reports the doubled (bookkeeping-inclusive) size; half of it is the usable budget
            rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            self._max_msgs = max(16, rcvbuf // ACK_TRUESIZE)
            # netlink_sendmsg refuses a datagram longer than sk_sndbuf - 32 (EMSGSIZE); a chunk may
            # overshoot its limit by one message, hence the margin.
            sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self._chunk_limit = max(4096, min(self._chunk_bytes, sndbuf - 4096))
        return self._sock

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- links -------------------------------------------------------------------------------------

    async def link_names(self) -> dict[int, str]:
        await self._links.refresh()
        return dict(self._links.names)

    async def link_index(self, name: str) -> int | None:
        if name not in self._links.indices:
            await self._links.refresh()
        return self._links.indices.get(name)

    # -- routes ------------------------------------------------------------------------------------

    async def apply(
        self, replaces: Sequence[Route], deletes: Sequence[Route], creates: Sequence[Route] = ()
    ) -> list[tuple[Route, str]]:
        new = rt.NLM_F_REQUEST | rt.NLM_F_ACK | rt.NLM_F_CREATE
        requests = (
            [(rt.RTM_NEWROUTE, new | rt.NLM_F_REPLACE, r) for r in replaces]
            + [(rt.RTM_NEWROUTE, new | rt.NLM_F_EXCL, r) for r in creates]
            + [(rt.RTM_DELROUTE, rt.NLM_F_REQUEST | rt.NLM_F_ACK, r) for r in deletes]
        )
        if not requests:
            return []
        if _devices(r for _, _, r in requests) - self._links.indices.keys():
            await self._links.refresh()
        used = dict(self._links.indices)
        errors = await self._transact(requests)
        # A device recreated under the same name (tunl0 after a module reload) has a new index: the
        # kernel answers our cached one with ENODEV. Refresh once and retry the routes whose index moved.
        if any(text.startswith("ENODEV") for _, text in errors):
            await self._links.refresh()
            moved = {name for name, index in used.items() if self._links.indices.get(name) != index}
            again = {id(r) for r, text in errors if text.startswith("ENODEV") and _devices([r]) & moved}
            if again:
                errors = [e for e in errors if id(e[0]) not in again]
                errors += await self._transact([req for req in requests if id(req[2]) in again])
        return errors

    async def _transact(self, requests: list[tuple[int, int, Route]]) -> list[tuple[Route, str]]:
        async with self._lock:
            sock = self._request_socket()
            indices = dict(self._links.indices)
            if len(requests) <= INLINE_REQUESTS:
                return self._send_batches(sock, requests, indices)
            return await asyncio.to_thread(self._send_batches, sock, requests, indices)

    def _send_batches(
        self, sock: socket.socket, requests: list[tuple[int, int, Route]], indices: dict[str, int]
    ) -> list[tuple[Route, str]]:
        errors: list[tuple[Route, str]] = []
        chunk: list[bytes] = []
        pending: dict[int, Route] = {}
        size = 0
        buf = self._buf
        encode = rt.RouteEncoder(indices.get).encode
        for kind, flags, route in requests:
            seq = self._next_seq()
            try:
                msg = encode(kind, flags & ~rt.NLM_F_ACK, seq, route)
            except rt.EncodeError as exc:
                errors.append((route, str(exc)))
                continue
            chunk.append(msg)
            pending[seq] = route
            size += len(msg)
            if size >= self._chunk_limit or len(pending) >= self._max_msgs:
                self._flush(sock, chunk, pending, errors, buf)
                chunk, pending, size = [], {}, 0
        if chunk:
            self._flush(sock, chunk, pending, errors, buf)
        return errors

    @staticmethod
    def _flush(
        sock: socket.socket, chunk: list[bytes], pending: dict[int, Route],
        errors: list[tuple[Route, str]], buf: bytearray,
    ) -> None:
        last_seq = next(reversed(pending))
        data = bytearray(b"".join(chunk))
        offset = len(data) - len(chunk[-1])
        (flags,) = _FLAGS.unpack_from(data, offset + 6)
        _FLAGS.pack_into(data, offset + 6, flags | rt.NLM_F_ACK)  # the chunk's closing ack
        sock.send(data)
        view = memoryview(buf)
        while pending:
            try:
                n = sock.recv_into(buf)
            except OSError as exc:  # ENOBUFS: answers were dropped; the outcome of the rest is unknown
                code = exc.errno or errno.ETIMEDOUT
                errors.extend((r, rt.errno_text(code, "ack lost")) for r in pending.values())
                return
            for kind, _, seq, offset in rt.iter_messages(view[:n]):
                if kind != rt.NLMSG_ERROR:
                    continue
                route = pending.pop(seq, None)  # late answers to an earlier, failed chunk are ignored
                if route is None:
                    continue
                code, detail = rt.decode_error(view, offset)
                if code:
                    errors.append((route, rt.errno_text(code, detail)))
                if seq == last_seq:
                    pending.clear()  # in order: every request before it without an error succeeded

    async def dump_routes(
        self, proto: int | None = None, table: int = RT_TABLE_MAIN, *, exclude_proto: int | None = None
    ) -> list[Route]:
        for _ in range(2):
            async with self._lock:
                sock = self._request_socket()
                routes, missing = await asyncio.to_thread(
                    self._dump, sock, proto, table, dict(self._links.names), exclude_proto
                )
            if not missing:
                break
            await self._links.refresh()  # a device we have not seen yet: name it and decode again
        return routes

    def _dump(
        self, sock: socket.socket, proto: int | None, table: int, names: dict[int, str],
        exclude_proto: int | None = None,
    ) -> tuple[list[Route], set[int]]:
        routes: list[Route] = []
        missing: set[int] = set()
        for family in (rt.AF_INET, rt.AF_INET6):
            for attempt in range(5):
                batch, interrupted = self._dump_family(
                    sock, family, proto, table, names, missing, exclude_proto
                )
                if not interrupted:
                    break
                log.debug("route dump interrupted by a concurrent change, retry %d", attempt + 1)
            routes.extend(batch)
        return routes, missing

    def _dump_family(
        self, sock: socket.socket, family: int, proto: int | None, table: int, names: dict[int, str],
        missing: set[int], exclude_proto: int | None = None,
    ) -> tuple[list[Route], bool]:
        seq = self._next_seq()
        sock.send(rt.encode_route_dump(family, seq, table, proto))
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        routes: list[Route] = []
        interrupted = False
        while True:
            n = sock.recv_into(buf)
            for kind, flags, mseq, offset in rt.iter_messages(view[:n]):
                if mseq != seq:
                    continue
                if flags & rt.NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == rt.NLMSG_DONE:
                    return routes, interrupted
                if kind == rt.NLMSG_ERROR:
                    code, detail = rt.decode_error(view, offset)
                    raise NetlinkError(code, rt.errno_text(code, f"route dump: {detail}"))
                if kind != rt.RTM_NEWROUTE:
                    continue
                if exclude_proto is not None and rt.route_proto(view, offset) == exclude_proto:
                    continue
                route = rt.decode_route(view, offset, names, missing)
                # The kernel filters already (strict checking); filtering again keeps the contract even
                # on kernels that ignore the request's filter fields.
                if route is not None and route.table == table and (proto is None or route.proto == proto):
                    routes.append(route)

    # -- addresses ---------------------------------------------------------------------------------

    async def dump_addresses(self) -> list[InterfaceAddress]:
        async with self._lock:
            sock = self._request_socket()
            return await asyncio.to_thread(self._dump_addresses, sock)

    def _dump_addresses(self, sock: socket.socket) -> list[InterfaceAddress]:
        found: list[InterfaceAddress] = []
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        for family in (rt.AF_INET, rt.AF_INET6):
            seq = self._next_seq()
            sock.send(rt.encode_address_dump(family, seq))
            done = False
            while not done:
                n = sock.recv_into(buf)
                for kind, _, mseq, offset in rt.iter_messages(view[:n]):
                    if mseq != seq:
                        continue
                    if kind == rt.NLMSG_DONE:
                        done = True
                    elif kind == rt.NLMSG_ERROR:
                        code, detail = rt.decode_error(view, offset)
                        raise NetlinkError(code, rt.errno_text(code, f"address dump: {detail}"))
                    elif kind == rt.RTM_NEWADDR:
                        decoded = rt.decode_address(view, offset)
                        if decoded is not None:
                            found.append(InterfaceAddress(*decoded))
        return found

    def watch_addresses(self) -> KernelAddressWatch:
        sock = self._open(rt.RTMGRP_IPV4_IFADDR | rt.RTMGRP_IPV6_IFADDR)
        sock.setblocking(False)
        return KernelAddressWatch(sock, self._links)

    # -- notifications -----------------------------------------------------------------------------

    def watch(self, *, exclude_proto: int | None = None) -> KernelRouteWatch:
        sock = self._open(rt.RTMGRP_LINK | rt.RTMGRP_IPV4_ROUTE | rt.RTMGRP_IPV6_ROUTE)
        sock.setblocking(False)
        if exclude_proto is not None:
            # Our request socket's port id: the echoes of our own deletions are dropped in the kernel too.
            # It stays open until close(), so the id names no other socket while this watch lives.
            own_port = self._request_socket().getsockname()[0]
            attach_filter(sock, rt.exclude_proto_filter(exclude_proto, own_port))
        return KernelRouteWatch(sock, self._links)


def _devices(routes: Iterable[Route]) -> set[str]:
    return {h.ifname for r in routes for h in r.nexthops if h.ifname}
