"""BFD's UDP transport for single-hop sessions (RFC 5881): receive on port 3784, send from a port per session.

Stage: under ``bgp.bfd.service``, which tells it which sessions exist (``sync``) and what to send; it hands
every datagram that passed the hop-limit check up through ``deliver(data, source, destination)``.

Owns: one receive socket per address family, bound to the wildcard address on port 3784, that reads the
IPv4 TTL / IPv6 hop limit and the destination address of each datagram from ancillary data; one send
socket per session, bound to the session's local address and a source port in 49152-65535, sending with
TTL / hop limit 255; the retry of sockets that fail to open, with a doubling backoff; per-reason counters
of what was dropped.

Complicating factors:
- RFC 5881 section 5: a packet whose TTL / hop limit is not 255 may come from beyond the link (or be
  spoofed from there) and is dropped before it is even parsed; no ancillary data means no TTL, also dropped.
- A wildcard receive socket sees datagrams for any address of the namespace; the destination address from
  IP_PKTINFO / IPV6_PKTINFO lets the service match (peer, local) while Your Discriminator is still 0, so one
  socket serves every local address, including ones added after the socket opened.
- The source port must stay the same for the life of a session (section 4), so the send socket lives as
  long as the session; a collision with another socket on the randomly chosen port is retried with another.
- Link-local IPv6 needs the interface both to bind and to send; received addresses lose their ``%scope``.
- A readiness callback reads at most ``BURST`` datagrams so a flood cannot starve the timers.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bgp.bfd.api import BfdPeerConfig

log = logging.getLogger(__name__)

BFD_PORT = 3784
SOURCE_PORTS = (49152, 65535)
TTL = 255
TOS_INTERNET_CONTROL = 0xC0  # IP precedence 6, as routing protocols mark their packets
RECV_BUFFER = 64 * 1024  # the kernel's receive queue per socket: a few hundred packets at most
BURST = 64  # datagrams per readiness callback
DATAGRAM_MAX = 512  # larger than any Control packet; longer datagrams are truncated and refused
RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between attempts to open a socket that failed (cheap to try)

# Linux values CPython does not export (linux/in.h).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)

Deliver = Callable[[bytes, str, str], None]  # (datagram, source address, destination address)


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def bare(address: str) -> str:
    """An address without its ``%scope`` suffix."""
    return address.split("%", 1)[0]


def parse_ancillary(family: int, ancdata: list[tuple[int, int, bytes]]) -> tuple[int | None, str]:
    """(TTL or hop limit, destination address) from ``recvmsg`` ancillary data; None / "" when absent."""
    ttl: int | None = None
    destination = ""
    for level, kind, data in ancdata:
        if family == socket.AF_INET and level == socket.IPPROTO_IP:
            if kind == socket.IP_TTL and len(data) >= 4:
                ttl = struct.unpack("=i", data[:4])[0]
            elif kind == IP_PKTINFO and len(data) >= 12:  # struct in_pktinfo: ifindex, spec_dst, addr
                destination = socket.inet_ntop(socket.AF_INET, data[8:12])
        elif family == socket.AF_INET6 and level == socket.IPPROTO_IPV6:
            if kind == socket.IPV6_HOPLIMIT and len(data) >= 4:
                ttl = struct.unpack("=i", data[:4])[0]
            elif kind == socket.IPV6_PKTINFO and len(data) >= 16:  # struct in6_pktinfo: addr, ifindex
                destination = socket.inet_ntop(socket.AF_INET6, data[:16])
    return ttl, destination


@dataclass
class _Retry:
    """A socket that failed to open: the error, when to try again, and the next wait."""

    error: str
    at: float
    wait: float


class UdpTransport:
    """The sockets of one ``BfdEngine``. Use from the event loop thread only."""

    def __init__(
        self,
        deliver: Deliver,
        *,
        port: int = BFD_PORT,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._deliver = deliver
        self._port = port
        self._clock = clock
        self._rng = rng or random.Random()
        self._receivers: dict[int, socket.socket] = {}
        self._senders: dict[tuple[str, str], tuple[BfdPeerConfig, socket.socket]] = {}
        self._retries: dict[object, _Retry] = {}  # family or session key -> retry state
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped: Counter[str] = Counter()
        self.send_errors = 0

    # ------------------------------------------------------------------ lifecycle

    def sync(self, configs: Mapping[tuple[str, str], BfdPeerConfig]) -> float:
        """Open what the sessions need and close what they no longer use; returns when to call again for
        the next retry (``inf`` when nothing is waiting). Never raises for a socket that will not open."""
        self._loop = self._loop or asyncio.get_running_loop()
        now = self._clock()
        families = {family_of(c.peer) for c in configs.values()}
        for family in set(self._receivers) - families:
            self._close_receiver(family)
        for family in families - set(self._receivers):
            self._attempt(family, now, self._open_receiver, family)
        for key in list(self._senders):
            config, sock = self._senders[key]
            if configs.get(key) is None or (configs[key].interface != config.interface):
                del self._senders[key]
                sock.close()
        for key, config in configs.items():
            if key not in self._senders:
                self._attempt(key, now, self._open_sender, config)
        wanted: set[object] = {*families, *configs}
        for stale in [k for k in self._retries if k not in wanted]:
            del self._retries[stale]
        return min((r.at for r in self._retries.values()), default=float("inf"))

    def _attempt(self, key: object, now: float, open_socket: Callable[[Any], None], arg: Any) -> None:
        retry = self._retries.get(key)
        if retry is not None and now < retry.at:
            return
        try:
            open_socket(arg)
        except OSError as exc:
            wait = RETRY_FIRST if retry is None else min(retry.wait * 2, RETRY_MAX)
            self._retries[key] = _Retry(f"{exc.strerror or exc}", now + wait, wait)
        else:
            self._retries.pop(key, None)

    def error(self, config: BfdPeerConfig) -> str:
        """Why this session's packets cannot flow now ("" when they can)."""
        family = family_of(config.peer)
        if family in self._retries:
            name = "IPv6" if family == socket.AF_INET6 else "IPv4"
            return f"{name} receive socket on port {self._port}: {self._retries[family].error} (retrying)"
        if config.key in self._retries:
            return f"send socket from {config.local}: {self._retries[config.key].error} (retrying)"
        return ""

    def close(self) -> None:
        for family in list(self._receivers):
            self._close_receiver(family)
        for _, sock in self._senders.values():
            sock.close()
        self._senders.clear()
        self._retries.clear()

    # ------------------------------------------------------------------ sockets

    def _open_receiver(self, family: int) -> None:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                sock.bind(("::", self._port))
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                sock.bind(("0.0.0.0", self._port))
            sock.setblocking(False)
            assert self._loop is not None
            self._loop.add_reader(sock.fileno(), self._readable, family, sock)
        except BaseException:
            sock.close()
            raise
        self._receivers[family] = sock

    def _close_receiver(self, family: int) -> None:
        sock = self._receivers.pop(family)
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()

    def _open_sender(self, config: BfdPeerConfig) -> None:
        family = family_of(config.peer)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_INTERNET_CONTROL)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_INTERNET_CONTROL)
            if config.interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, config.interface.encode())
            self._bind_source_port(sock, family, config)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._senders[config.key] = (config, sock)

    def _bind_source_port(self, sock: socket.socket, family: int, config: BfdPeerConfig) -> None:
        low, high = SOURCE_PORTS
        for _ in range(16):
            port = self._rng.randint(low, high)
            try:
                sock.bind(self._address(family, config.local, port, config.interface))
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free source port in {low}-{high} after 16 tries")

    @staticmethod
    def _address(family: int, address: str, port: int, interface: str) -> tuple:
        if family == socket.AF_INET6:
            scope = socket.if_nametoindex(interface) if interface else 0
            return (bare(address), port, 0, scope)
        return (address, port)

    # ------------------------------------------------------------------ traffic

    def send(self, key: tuple[str, str], data: bytes) -> bool:
        """Send one packet of the session; False when it could not go (no socket yet, or the kernel
        refused it). Loss is what BFD is built to tolerate, so the caller only counts it."""
        entry = self._senders.get(key)
        if entry is None:
            return False
        config, sock = entry
        family = family_of(config.peer)
        try:
            sock.sendto(data, self._address(family, config.peer, self._port, config.interface))
        except OSError:
            self.send_errors += 1
            return False
        return True

    def _readable(self, family: int, sock: socket.socket) -> None:
        for _ in range(BURST):
            try:
                data, ancdata, flags, source = sock.recvmsg(DATAGRAM_MAX, socket.CMSG_SPACE(64))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.dropped["receive error"] += 1
                return
            ttl, destination = parse_ancillary(family, ancdata)
            if flags & socket.MSG_TRUNC:
                self.dropped["oversized"] += 1
            elif ttl != TTL:
                self.dropped["ttl"] += 1  # RFC 5881 section 5: not from a direct neighbour
            elif not destination:
                self.dropped["no destination"] += 1
            else:
                try:
                    self._deliver(data, bare(source[0]), destination)
                except Exception:  # one packet's bug must not stop the reader for every session
                    self.dropped["handler error"] += 1
                    log.exception("BFD: handling a packet from %s failed", source[0])
