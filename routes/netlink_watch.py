"""Kernel notifications as async iterators: the subscription side of the kernel adapter.

Stage: the bottom of the kernel dataplane. ``routes.netlink.KernelNetlink.watch`` and ``watch_addresses``
open a subscribed socket (``routes.nlsocket``) and hand it here; ``routes.monitor``, ``routes.table``,
``routes.recursive`` and ``routes.addresses`` consume the ``routes.model`` events through the
``RouteWatch`` / ``AddressWatch`` protocols.

Owns: one non-blocking monitor socket per watch and a bounded queue of decoded events. The device names
come from the ``LinkNames`` it is given (shared with the request side): a route naming an index it does
not know yet triggers one refresh, and link notifications update it.

Complicating factors:
- Cost per notification (100k in a workload burst): the kernel sends each in a datagram of its own, which
  is taken whole without splitting; a datagram of several messages (a dump's) is split as usual.
- Bounded reads: one drain decodes at most ``DRAIN_BYTES``; the rest stays in the socket (readable at
  once), so a burst of 100k notifications never becomes 100k queued objects.
- ENOBUFS means notifications were lost; the socket stays subscribed, so iteration raises
  ``WatchOverflow`` once and the caller re-dumps and keeps iterating the same watch.
- ``read_at`` is when the events being iterated were read: one clock reading per drain, not per event
  (the export side of ``bgp.latency`` starts there). A drain happens only once the queue is empty, so
  every queued event comes from the latest one.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import Generic, Self, TypeVar

from routes import rtnetlink as rt
from routes.model import (
    ADD,
    DEL,
    LINK_DEL,
    LINK_DOWN,
    LINK_UP,
    AddressEvent,
    InterfaceAddress,
    LinkEvent,
    RouteEvent,
    WatchOverflow,
)
from routes.nlsocket import LinkNames

_KIND = struct.Struct("=4xH")  # nlmsg_type, read alone
DRAIN_BYTES = 4 * 1024 * 1024  # notifications decoded per read of a watch socket (about 40k routes)

Event = TypeVar("Event")


class _Watch(Generic[Event]):
    """Async iterator over one subscribed socket; subclasses decode the messages into ``Event``s."""

    def __init__(
        self, sock: socket.socket, links: LinkNames, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._links = links
        self._clock = clock
        self.read_at: float | None = None  # when the queued events were read from the socket
        self._sock: socket.socket | None = sock
        self._queue: collections.deque[Event] = collections.deque()
        self._buf = bytearray(1 << 20)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
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

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def _drain(self) -> None:
        messages: list[bytes] = []
        overflow = False
        read = 0
        self.read_at = self._clock()
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
            size = rt.U32.unpack_from(data)[0] if n >= rt.HDR_LEN else 0
            if size >= rt.HDR_LEN and (size + 3) & ~3 >= n:
                messages.append(data)  # one message per datagram, as the kernel sends notifications
            else:
                messages.extend(data[off:] for _, _, _, off in rt.iter_messages(data))
        events, missing = self._decode(messages)
        if missing:
            await self._links.refresh()
            events, _ = self._decode(messages)
        self._queue.extend(events)
        if overflow:
            raise WatchOverflow("netlink notifications dropped (ENOBUFS)")

    def _decode(self, messages: list[bytes]) -> tuple[list[Event], set[int]]:
        """The events in ``messages``, and the ifindexes they named that ``LinkNames`` does not know."""
        raise NotImplementedError

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class KernelRouteWatch(_Watch[RouteEvent | LinkEvent]):
    """Async iterator over a route and link monitor socket (see ``Netlink.watch``)."""

    def _decode(self, messages: list[bytes]) -> tuple[list[RouteEvent | LinkEvent], set[int]]:
        links = self._links
        events: list[RouteEvent | LinkEvent] = []
        missing: set[int] = set()
        names, decode, kind_of = links.names, rt.decode_route, _KIND.unpack_from
        for data in messages:
            kind = kind_of(data)[0]
            if kind in (rt.RTM_NEWROUTE, rt.RTM_DELROUTE):
                route = decode(data, 0, names, missing)
                if route is not None:
                    ifname = route.nexthops[0].ifname if route.nexthops else ""
                    events.append(RouteEvent(ADD if kind == rt.RTM_NEWROUTE else DEL, route, ifname))
            elif kind in (rt.RTM_NEWLINK, rt.RTM_DELLINK):
                index, name, up = rt.decode_link(data, 0)
                gone = kind == rt.RTM_DELLINK
                links.learn(index, name, gone)
                events.append(LinkEvent(LINK_DEL if gone else LINK_UP if up else LINK_DOWN, index, name))
        return events, missing


class KernelAddressWatch(_Watch[AddressEvent]):
    """Async iterator over an address monitor socket (see ``Netlink.watch_addresses``)."""

    def _decode(self, messages: list[bytes]) -> tuple[list[AddressEvent], set[int]]:
        events: list[AddressEvent] = []
        for data in messages:
            kind = rt.NLMSGHDR.unpack_from(data)[1]
            if kind in (rt.RTM_NEWADDR, rt.RTM_DELADDR):
                decoded = rt.decode_address(data, 0)
                if decoded is not None:
                    action = ADD if kind == rt.RTM_NEWADDR else DEL
                    events.append(AddressEvent(action, InterfaceAddress(*decoded)))
        return events, set()
