"""A scripted BGP peer for tests: just enough of RFC 4271 over a plain TCP socket to bring a session up with
a real node, then put exactly the bytes a test chooses on the wire, malformed ones included.

Stage: test support for ``tests/netns/test_malformed_peer.py``. No BGP library is involved on purpose: a
library refuses to encode what this module exists to send.

Owns: the wire encoding (pure functions, hand-packed with ``struct``: messages, path attributes, NLRI) and
``Session``, one TCP connection opened from inside a network namespace, with a reader thread that keeps
the session alive and records how it ended.

Complicating factors:
- The socket must belong to the peer's namespace while the test process stays in the host's. A socket keeps
  the namespace it was created in, so the creating thread enters the namespace (``setns(2)`` through libc;
  Python 3.11 has no ``os.setns``) only for the ``socket()`` call and leaves it at once.
- A peer that goes quiet is dropped when the hold timer runs out, and a test must be able to tell that
  apart from a reset it provoked: the reader thread answers the node's OPEN with a KEEPALIVE and sends one
  every third of the hold time, and the end of a session (a NOTIFICATION, an EOF, a reset) is recorded with
  what ended it.
- The main thread sends while the reader thread sends keepalives: every write takes one lock, so two
  messages never interleave on the wire.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence

MARKER = b"\xff" * 16
HEADER_LEN = 19
OPEN, UPDATE, NOTIFICATION, KEEPALIVE = 1, 2, 3, 4

# Path attribute flags and type codes (RFC 4271 4.3, RFC 4760).
OPTIONAL, TRANSITIVE, PARTIAL, EXTENDED_LENGTH = 0x80, 0x40, 0x20, 0x10
ORIGIN, AS_PATH, NEXT_HOP = 1, 2, 3
MP_UNREACH_NLRI = 15
AS_SEQUENCE = 2
IGP = 0

CLONE_NEWNET = 0x40000000


# ---------------------------------------------------------------------------------------------- encoding


def message(kind: int, body: bytes = b"", *, marker: bytes = MARKER, length: int | None = None) -> bytes:
    """One BGP message; ``length`` overrides the header's length field (which is otherwise exact)."""
    return marker + struct.pack("!HB", HEADER_LEN + len(body) if length is None else length, kind) + body


def keepalive() -> bytes:
    return message(KEEPALIVE)


def notification(code: int, subcode: int, data: bytes = b"") -> bytes:
    return message(NOTIFICATION, struct.pack("!BB", code, subcode) + data)


def _capability(code: int, value: bytes) -> bytes:
    return struct.pack("!BB", code, len(value)) + value


def open_message(asn: int, hold_time: int, router_id: str) -> bytes:
    """An OPEN offering IPv4 unicast (RFC 4760), four-octet AS numbers (RFC 6793) and route refresh."""
    capabilities = (
        _capability(1, struct.pack("!HBB", 1, 0, 1))
        + _capability(65, struct.pack("!I", asn))
        + _capability(2, b"")
    )
    parameters = struct.pack("!BB", 2, len(capabilities)) + capabilities
    two_octet_as = asn if asn <= 0xFFFF else 23456  # AS_TRANS
    body = struct.pack("!BHH4sB", 4, two_octet_as, hold_time, _ipv4(router_id), len(parameters))
    return message(OPEN, body + parameters)


def attribute(code: int, value: bytes, *, flags: int = TRANSITIVE, length: int | None = None) -> bytes:
    """One path attribute; ``length`` overrides the length field, which is one octet unless the value (or
    the override) needs two (the extended-length flag is then set)."""
    declared = len(value) if length is None else length
    if declared > 0xFF or flags & EXTENDED_LENGTH:
        return struct.pack("!BBH", flags | EXTENDED_LENGTH, code, declared) + value
    return struct.pack("!BBB", flags, code, declared) + value


def origin(value: int = IGP) -> bytes:
    return attribute(ORIGIN, bytes([value]))


def as_path(*asns: int, count: int | None = None) -> bytes:
    """One AS_SEQUENCE of four-octet AS numbers; ``count`` overrides the segment's length octet."""
    if not asns and count is None:
        return attribute(AS_PATH, b"")
    segment = struct.pack("!BB", AS_SEQUENCE, len(asns) if count is None else count)
    return attribute(AS_PATH, segment + b"".join(struct.pack("!I", a) for a in asns))


def next_hop(address: str, *, length: int | None = None) -> bytes:
    return attribute(NEXT_HOP, _ipv4(address), length=length)


def mp_unreach_ipv4(*prefixes: str) -> bytes:
    return attribute(MP_UNREACH_NLRI, struct.pack("!HB", 1, 1) + nlri(*prefixes), flags=OPTIONAL)


def nlri(*prefixes: str) -> bytes:
    """IPv4 prefixes as (length, the significant octets) pairs."""
    out = b""
    for prefix in prefixes:
        network = ipaddress.IPv4Network(prefix)
        out += bytes([network.prefixlen]) + network.network_address.packed[: (network.prefixlen + 7) // 8]
    return out


def update(*, attributes: bytes = b"", nlri_field: bytes = b"", withdrawn: bytes = b"") -> bytes:
    """An UPDATE from its three fields, each length field exact."""
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attributes)) + attributes
    return message(UPDATE, body + nlri_field)


def announce(prefixes: Sequence[str], nexthop: str, asn: int) -> bytes:
    """A well-formed eBGP announcement: ORIGIN IGP, AS_PATH (asn), NEXT_HOP."""
    return update(attributes=origin() + as_path(asn) + next_hop(nexthop), nlri_field=nlri(*prefixes))


def _ipv4(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


# ---------------------------------------------------------------------------------------------- a session


class SessionError(RuntimeError):
    """The session did not come up; the message says how far it got."""


@contextlib.contextmanager
def _in_netns(netns: str) -> Iterator[None]:
    """Run the block with the calling thread in netns (only that thread moves), and always move it back."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
        try:
            yield
        finally:
            # A thread left in the peer's namespace would open every later socket there: fail loudly.
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to our own namespace failed")
    finally:
        os.close(target)
        os.close(own)


class Session:
    """One BGP session from ``local`` (inside ``netns``) to ``remote``:179, as the connecting side."""

    def __init__(self, netns: str, local: str, remote: str, asn: int, *, hold_time: int = 30) -> None:
        self.local, self.remote, self.asn, self.hold_time = local, remote, asn, hold_time
        with _in_netns(netns):
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._send_lock = threading.Lock()
        self._opened = threading.Event()  # the node's OPEN arrived
        self.established = threading.Event()  # ... and its KEEPALIVE after it
        self.ended = threading.Event()
        self.end_reason = ""
        self.notification: tuple[int, int] | None = None  # (code, subcode) the node sent, if any
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"bgp-peer-{local}", daemon=True)

    @classmethod
    def connect(
        cls, netns: str, local: str, remote: str, asn: int, *, hold_time: int = 30, timeout: float = 20.0
    ) -> Session:
        """An Established session, retrying while the node still refuses (it may be tearing the previous
        session down, or not listening yet)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            session = cls(netns, local, remote, asn, hold_time=hold_time)
            try:
                session._open(min(5.0, max(deadline - time.monotonic(), 0.1)))
                return session
            except (OSError, SessionError) as exc:
                last = str(exc)
                session.close(notify=False)
                time.sleep(0.3)
        raise SessionError(f"{local} -> {remote}: no session within {timeout} s; last attempt: {last}")

    def _open(self, timeout: float) -> None:
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.local, 0))
        self._sock.settimeout(timeout)
        self._sock.connect((self.remote, 179))
        self._sock.settimeout(0.2)  # the reader's tick: keepalives go out between reads
        self.send(open_message(self.asn, self.hold_time, self.local))
        self._reader.start()
        if not self.established.wait(timeout):
            raise SessionError(f"not Established within {timeout:.1f} s ({self.end_reason or 'no answer'})")

    # ------------------------------------------------------------------ what tests call

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def announce(self, prefixes: Sequence[str], nexthop: str | None = None) -> None:
        self.send(announce(prefixes, nexthop or self.local, self.asn))

    def withdraw(self, prefixes: Sequence[str]) -> None:
        self.send(update(withdrawn=nlri(*prefixes)))

    def end_of_rib(self) -> None:
        """IPv4 unicast End-of-RIB (RFC 4724 2: an UPDATE with nothing in it), sent after the initial
        table as any real speaker does; a node holds back some work until every peer has sent it."""
        self.send(update())

    def wait_ended(self, timeout: float) -> bool:
        return self.ended.wait(timeout)

    def close(self, *, notify: bool = True) -> None:
        """End the session (with a Cease/Administrative Shutdown when it is up) and stop the reader."""
        if notify and self.established.is_set() and not self.ended.is_set():
            with contextlib.suppress(OSError):
                self.send(notification(6, 2))
        self._stop.set()
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._end("closed by the test")

    # ------------------------------------------------------------------ the reader thread

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    def _read_loop(self) -> None:
        buffer = b""
        next_keepalive = time.monotonic() + self.hold_time / 3
        try:
            while not self._stop.is_set() and not self.ended.is_set():
                if self.established.is_set() and time.monotonic() >= next_keepalive:
                    self.send(keepalive())
                    next_keepalive = time.monotonic() + self.hold_time / 3
                try:
                    chunk = self._sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    self._end("EOF from the node")
                    return
                buffer += chunk
                while len(buffer) >= HEADER_LEN:
                    length, kind = struct.unpack("!HB", buffer[16:19])
                    if length < HEADER_LEN:
                        self._end(f"unreadable message from the node (length {length})")
                        return
                    if len(buffer) < length:
                        break
                    body, buffer = buffer[HEADER_LEN:length], buffer[length:]
                    self._handle(kind, body)
        except OSError as exc:
            self._end(f"socket error: {exc}")

    def _handle(self, kind: int, body: bytes) -> None:
        if kind == OPEN:
            self._opened.set()
            self.send(keepalive())
        elif kind == KEEPALIVE and self._opened.is_set():
            self.established.set()
        elif kind == NOTIFICATION:
            self.notification = (body[0], body[1]) if len(body) >= 2 else (0, 0)
            self._end(f"NOTIFICATION {self.notification[0]}/{self.notification[1]}: {body[2:]!r}")
