"""The kernel seam of the routes package: the ``Netlink`` protocol and its real implementation.

Stage: below ``routes.table`` (which programs routes) and ``routes.monitor`` (which watches Felix's
workload routes). Everything above talks to the ``Netlink`` protocol; unit tests use
``routes.testing.FakeNetlink`` instead. This is the only module that imports pyroute2.

Owns: netlink sockets of one network namespace (the current one, or ``netns=`` which opens the sockets
inside a named namespace without moving this process), the ifindex <-> name cache, and batching.

Design:
- ``apply`` is the hot path. Requests are packed by ``routes.rtnetlink`` and sent in 256 KiB datagrams on
  ONE raw socket, each message with NLM_F_ACK and its own sequence number; the kernel handles a datagram
  synchronously inside sendmsg, so its acks are queued by the time ``send`` returns and are read per
  chunk, matched back to routes by sequence number. NETLINK_CAP_ACK keeps acks small and NETLINK_EXT_ACK
  adds the kernel's reason to errors. The chunk is capped so that its acks fit the receive buffer
  (a dropped ack would leave a route's outcome unknown). The blocking socket work runs in a worker
  thread, so the event loop keeps serving BGP while 100k routes go in.
- Dumps use the same raw socket with NETLINK_GET_STRICT_CHK, so the kernel filters by table and protocol,
  and are decoded by ``routes.rtnetlink``: pyroute2's decoder costs ~100x more per route, which would
  turn a 100k-route read-back into half a minute. A dump interrupted by a concurrent change
  (NLM_F_DUMP_INTR) is retried. pyroute2 serves link lookups (``AsyncIPRoute``) and netns sockets.
- ``watch`` subscribes at call time (before the caller's initial dump, so nothing falls in between) to
  RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE and RTNLGRP_LINK. Link events matter because the kernel removes
  IPv4 routes of a deleted or downed device WITHOUT sending RTM_DELROUTE. An optional BPF filter drops
  the RTM_NEWROUTE notifications of our own protocol in the kernel (deletions still pass). If the socket
  overflows anyway (ENOBUFS), iteration raises ``WatchOverflow`` once; the caller re-dumps and keeps
  iterating the same watch.
- Interface addresses (``dump_addresses``, ``watch_addresses``: RTNLGRP_IPV4_IFADDR / RTNLGRP_IPV6_IFADDR)
  have a socket of their own: they change rarely, and the route monitor's consumers need not know them.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import errno
import logging
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pyroute2 import AsyncIPRoute
from pyroute2 import netns as pyroute2_netns

from routes import rtnetlink as rt
from routes.model import RT_TABLE_MAIN, Route

log = logging.getLogger(__name__)

ADD = "add"
DEL = "del"
LINK_UP = "up"
LINK_DOWN = "down"
LINK_DEL = "del"

CHUNK_BYTES = 256 * 1024
RCVBUF_BYTES = 32 * 1024 * 1024
DRAIN_BYTES = 4 * 1024 * 1024  # notifications decoded per read of a watch socket (about 40k routes)
ACK_TRUESIZE = 1024  # upper bound of the receive-buffer cost of one ack skb (truesize, not payload)
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_SO_ATTACH_FILTER = 26


@dataclass(frozen=True, slots=True)
class RouteEvent:
    action: str  # ADD (also a replace) | DEL
    route: Route
    ifname: str  # device of the first next hop; "" for blackholes and devices already gone


@dataclass(frozen=True, slots=True)
class LinkEvent:
    action: str  # LINK_UP | LINK_DOWN | LINK_DEL
    ifindex: int
    ifname: str


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    ifindex: int
    address: str  # interface form: "10.0.0.11/24", "fd00::11/64"


@dataclass(frozen=True, slots=True)
class AddressEvent:
    action: str  # ADD (also a change of flags or lifetimes) | DEL
    address: InterfaceAddress


class WatchOverflow(Exception):
    """Notifications were lost (ENOBUFS). Re-read the state, then continue iterating the same watch."""


class NetlinkError(OSError):
    """A request as a whole failed (a dump refused, the socket broken); per-route errors are returned."""


class RouteWatch(Protocol):
    def __aiter__(self) -> RouteWatch: ...

    async def __anext__(self) -> RouteEvent | LinkEvent: ...

    def close(self) -> None: ...


class Netlink(Protocol):
    async def dump_routes(
        self, proto: int | None = None, table: int = RT_TABLE_MAIN, *, exclude_proto: int | None = None
    ) -> list[Route]:
        """Routes of ``table`` (all protocols when ``proto`` is None, less ``exclude_proto``'s), devices
        named. Excluded routes are skipped before they are decoded: a periodic dump that only wants the
        workload routes does not pay for 100k BGP routes."""

    async def apply(
        self, replaces: Sequence[Route], deletes: Sequence[Route], creates: Sequence[Route] = ()
    ) -> list[tuple[Route, str]]:
        """Replace (create or overwrite), exclusively create (EEXIST if the kernel key is taken) and delete
        (only routes of the route's protocol). Returns the failures as (route, "ENAME: text")."""

    async def link_index(self, name: str) -> int | None: ...

    async def link_names(self) -> dict[int, str]: ...

    def watch(self, *, exclude_proto: int | None = None) -> RouteWatch:
        """Subscribe now; iterate for RouteEvent / LinkEvent. Additions of ``exclude_proto`` routes are
        dropped (in the kernel); their deletions are delivered."""

    async def dump_addresses(self) -> list[InterfaceAddress]:
        """Every IPv4 and IPv6 address on every interface."""

    def watch_addresses(self) -> RouteWatch:
        """Subscribe now; iterate for AddressEvent (``WatchOverflow`` when some were lost)."""

    def close(self) -> None: ...


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
        self._names: dict[int, str] = {}
        self._indices: dict[str, int] = {}

    # -- sockets -----------------------------------------------------------------------------------

    def _open(self, groups: int = 0) -> socket.socket:
        if self._netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        else:
            sock = pyroute2_netns.create_socket(
                self._netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, flags=0
            )
        _set_buffer(sock, _SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF_BYTES)
        _set_buffer(sock, _SO_SNDBUFFORCE, socket.SO_SNDBUF, 2 * self._chunk_bytes)
        for option in (rt.NETLINK_CAP_ACK, rt.NETLINK_EXT_ACK, rt.NETLINK_GET_STRICT_CHK):
            sock.setsockopt(rt.SOL_NETLINK, option, 1)
        sock.bind((0, groups))
        return sock

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

    async def _refresh_links(self) -> None:
        # A short-lived pyroute2 socket: refreshes are rare (unknown device, ENODEV), and not holding one
        # keeps this object free of any event-loop binding.
        names = {}
        async with AsyncIPRoute(netns=self._netns, flags=0, groups=0) as ipr:
            async for link in await ipr.link("dump"):
                names[link["index"]] = link.get("ifname")
        self._names = names
        self._indices = {name: index for index, name in names.items()}

    async def link_names(self) -> dict[int, str]:
        await self._refresh_links()
        return dict(self._names)

    async def link_index(self, name: str) -> int | None:
        if name not in self._indices:
            await self._refresh_links()
        return self._indices.get(name)

    def _learn_link(self, index: int, name: str, deleted: bool) -> None:
        old = self._names.pop(index, None)
        if old is not None and self._indices.get(old) == index:
            del self._indices[old]
        if not deleted and name:
            self._names[index] = name
            self._indices[name] = index

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
        if _devices(r for _, _, r in requests) - self._indices.keys():
            await self._refresh_links()
        used = dict(self._indices)
        errors = await self._transact(requests)
        # A device recreated under the same name (tunl0 after a module reload) has a new index: the
        # kernel answers our cached one with ENODEV. Refresh once and retry the routes whose index moved.
        if any(text.startswith("ENODEV") for _, text in errors):
            await self._refresh_links()
            moved = {name for name, index in used.items() if self._indices.get(name) != index}
            again = {id(r) for r, text in errors if text.startswith("ENODEV") and _devices([r]) & moved}
            if again:
                errors = [e for e in errors if id(e[0]) not in again]
                errors += await self._transact([req for req in requests if id(req[2]) in again])
        return errors

    async def _transact(self, requests: list[tuple[int, int, Route]]) -> list[tuple[Route, str]]:
        async with self._lock:
            sock = self._request_socket()
            indices = dict(self._indices)
            return await asyncio.to_thread(self._send_batches, sock, requests, indices)

    def _send_batches(
        self, sock: socket.socket, requests: list[tuple[int, int, Route]], indices: dict[str, int]
    ) -> list[tuple[Route, str]]:
        errors: list[tuple[Route, str]] = []
        chunk: list[bytes] = []
        pending: dict[int, Route] = {}
        size = 0
        buf = bytearray(1 << 20)
        for kind, flags, route in requests:
            seq = self._next_seq()
            try:
                msg = rt.encode_route(kind, flags, seq, route, indices.get)
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
        sock.send(b"".join(chunk))
        view = memoryview(buf)
        while pending:
            try:
                n = sock.recv_into(buf)
            except OSError as exc:  # ENOBUFS: acks were dropped; the outcome of the rest is unknown
                code = exc.errno or errno.ETIMEDOUT
                errors.extend((r, rt.errno_text(code, "ack lost")) for r in pending.values())
                return
            for kind, _, seq, offset in rt.iter_messages(view[:n]):
                if kind != rt.NLMSG_ERROR:
                    continue
                route = pending.pop(seq, None)  # late acks of an earlier, failed chunk are ignored
                if route is None:
                    continue
                code, detail = rt.decode_error(view, offset)
                if code:
                    errors.append((route, rt.errno_text(code, detail)))

    async def dump_routes(
        self, proto: int | None = None, table: int = RT_TABLE_MAIN, *, exclude_proto: int | None = None
    ) -> list[Route]:
        for _ in range(2):
            async with self._lock:
                sock = self._request_socket()
                routes, missing = await asyncio.to_thread(
                    self._dump, sock, proto, table, dict(self._names), exclude_proto
                )
            if not missing:
                break
            await self._refresh_links()  # a device we have not seen yet: name it and decode again
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
        return KernelAddressWatch(self, sock)

    # -- notifications -----------------------------------------------------------------------------

    def watch(self, *, exclude_proto: int | None = None) -> KernelRouteWatch:
        sock = self._open(rt.RTMGRP_LINK | rt.RTMGRP_IPV4_ROUTE | rt.RTMGRP_IPV6_ROUTE)
        sock.setblocking(False)
        if exclude_proto is not None:
            _attach_filter(sock, rt.exclude_proto_filter(exclude_proto))
        return KernelRouteWatch(self, sock)


class KernelRouteWatch:
    """Async iterator over one subscribed monitor socket (see ``Netlink.watch``)."""

    def __init__(self, owner: KernelNetlink, sock: socket.socket) -> None:
        self._owner = owner
        self._sock: socket.socket | None = sock
        self._queue: collections.deque[RouteEvent | LinkEvent] = collections.deque()
        self._buf = bytearray(1 << 20)

    def __aiter__(self) -> KernelRouteWatch:
        return self

    async def __anext__(self) -> RouteEvent | LinkEvent:
        while not self._queue:
            if self._sock is None:
                raise StopAsyncIteration
            await self._readable()
            await self._drain()
        return self._queue.popleft()

    async def _readable(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._sock.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def _drain(self) -> None:
        messages: list[bytes] = []
        overflow = False
        read = 0
        # Bounded per drain: what is left stays in the socket (readable at once, so the next drain follows
        # as soon as these events are consumed), and the decoded queue never holds more than this much.
        while self._sock is not None and read < DRAIN_BYTES:
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                overflow = True
                continue  # the socket stays subscribed; keep what is still queued after the loss
            read += n
            data = bytes(self._buf[:n])
            messages.extend(data[off:] for _, _, _, off in rt.iter_messages(data))
        events, missing = self._decode(messages)
        if missing:
            await self._owner._refresh_links()
            events, _ = self._decode(messages)
        self._queue.extend(events)
        if overflow:
            raise WatchOverflow("netlink notifications dropped (ENOBUFS)")

    def _decode(self, messages: list[bytes]) -> tuple[list[RouteEvent | LinkEvent], set[int]]:
        owner = self._owner
        events: list[RouteEvent | LinkEvent] = []
        missing: set[int] = set()
        for data in messages:
            kind = rt.NLMSGHDR.unpack_from(data)[1]
            if kind in (rt.RTM_NEWROUTE, rt.RTM_DELROUTE):
                route = rt.decode_route(data, 0, owner._names, missing)
                if route is not None:
                    ifname = route.nexthops[0].ifname if route.nexthops else ""
                    events.append(RouteEvent(ADD if kind == rt.RTM_NEWROUTE else DEL, route, ifname))
            elif kind in (rt.RTM_NEWLINK, rt.RTM_DELLINK):
                index, name, up = rt.decode_link(data, 0)
                gone = kind == rt.RTM_DELLINK
                owner._learn_link(index, name, gone)
                events.append(LinkEvent(LINK_DEL if gone else LINK_UP if up else LINK_DOWN, index, name))
        return events, missing

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class KernelAddressWatch(KernelRouteWatch):
    """Async iterator over an address monitor socket (see ``Netlink.watch_addresses``)."""

    def _decode(self, messages: list[bytes]) -> tuple[list[AddressEvent], set[int]]:  # type: ignore[override]
        events: list[AddressEvent] = []
        for data in messages:
            kind = rt.NLMSGHDR.unpack_from(data)[1]
            if kind in (rt.RTM_NEWADDR, rt.RTM_DELADDR):
                decoded = rt.decode_address(data, 0)
                if decoded is not None:
                    action = ADD if kind == rt.RTM_NEWADDR else DEL
                    events.append(AddressEvent(action, InterfaceAddress(*decoded)))
        return events, set()


def _devices(routes: Iterable[Route]) -> set[str]:
    return {h.ifname for r in routes for h in r.nexthops if h.ifname}


def _set_buffer(sock: socket.socket, forced: int, plain: int, size: int) -> None:
    # The FORCE variants ignore net.core.[rw]mem_max but need CAP_NET_ADMIN.
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel copies the
    # program during setsockopt, so the buffer only has to live until the call returns.
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.warning("route filter not attached (%s); our own notifications will reach the watch", exc)
