"""Stopwatch on a node's kernel: when did the routes we wait for appear in (or leave) its table.

Stage: the measuring instrument of the propagation workloads (``bench.propagation``) and the mesh
workload (``bench.mesh``). It only reads the kernel; nothing here talks to a BGP daemon.

Owns: one netlink socket per watched namespace, subscribed to IPv4 route notifications, read by a thread
that keeps the set of proto-``proto`` /32s inside a watched range and stamps each change with
``time.perf_counter()`` at the moment its datagram was read.

Complicating factors:
- The watcher must not be what is measured. Reading notifications costs a few microseconds of Python per
  route and happens while the routes arrive, not afterwards; ``cpu_seconds`` reports the thread's own CPU
  so a run can show it stayed small next to the daemons'. Polling ``ip -j route`` instead would cost a
  whole table dump per poll and add the poll interval to every figure.
- The socket subscribes before the caller starts anything (``start`` returns once subscribed and
  seeded from a dump), so no route can slip in between.
- Notifications can be lost when the socket overflows (ENOBUFS). Then the thread re-reads the table with a
  dump and stamps the result at the dump's end (a late, never an early, figure) and counts the overflow.
- ``wait_*`` return the stamp of the change that satisfied them, not the time the waiting thread woke up.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable

from routes import rtnetlink as rt
from routes.model import RT_TABLE_MAIN

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
RCVBUF = 256 * 1024 * 1024
_SO_RCVBUFFORCE = 33


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def open_route_socket(netns: str, groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket living in ``netns``. Only the calling thread enters the namespace, for the
    ``socket()`` call; a socket keeps the namespace it was created in. (pyroute2's ``create_socket`` forks
    a helper instead, which can crash when other threads of this process are inside gRPC.)"""
    target = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RCVBUF)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(rt.SOL_NETLINK, rt.NETLINK_GET_STRICT_CHK, 1)
    sock.bind((0, groups))
    return sock


def host_routes(data: bytes | memoryview, proto: int, want: Callable[[int], bool]):
    """Yield (added, address-as-int) for every IPv4 /32 RTM_NEW/DELROUTE of ``proto`` that ``want`` keeps."""
    for kind, _flags, _seq, offset in rt.iter_messages(data):
        if kind not in (rt.RTM_NEWROUTE, rt.RTM_DELROUTE):
            continue
        family, dst_len, _, _, _, protocol, _, _, _ = rt.RTMSG.unpack_from(data, offset + rt.HDR_LEN)
        if family != socket.AF_INET or dst_len != 32 or protocol != proto:
            continue
        size = rt.NLMSGHDR.unpack_from(data, offset)[0]
        pos, end = offset + rt.HDR_LEN + rt.RTMSG_LEN, offset + size
        while pos + 4 <= end:
            alen, atype = rt.RTATTR.unpack_from(data, pos)
            if alen < 4:
                break
            if atype == rt.RTA_DST:
                address = int.from_bytes(data[pos + 4 : pos + 8], "big")
                if want(address):
                    yield kind == rt.RTM_NEWROUTE, address
                break
            pos += (alen + 3) & ~3


class RouteWatch:
    """Follows the proto-``proto`` IPv4 /32s inside ``cidr`` in one namespace's main table."""

    def __init__(self, netns: str, cidr: str, proto: int = 12) -> None:
        net = ipaddress.IPv4Network(cidr)
        self._low, self._high = int(net.network_address), int(net.broadcast_address)
        self.netns = netns
        self.proto = proto
        self._present: set[int] = set()
        self._stamp: dict[int, float] = {}  # address -> perf_counter of its last change
        self._last_change = 0.0
        self._first_since_mark: float | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.overflows = 0
        self.cpu_seconds = 0.0

    def _want(self, address: int) -> bool:
        return self._low <= address <= self._high

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> RouteWatch:
        self._sock = open_route_socket(self.netns, rt.RTMGRP_IPV4_ROUTE)
        self._sock.settimeout(0.2)
        self._resync()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.netns}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RouteWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------------

    def _run(self) -> None:
        buf = bytearray(1 << 21)
        view = memoryview(buf)
        started = time.thread_time()
        try:
            while not self._stop.is_set():
                try:
                    n = self._sock.recv_into(buf)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.overflows += 1
                    self._resync()
                    continue
                now = time.perf_counter()
                changes = list(host_routes(view[:n], self.proto, self._want))
                if changes:
                    self._apply(changes, now)
        finally:
            self.cpu_seconds = time.thread_time() - started

    def _apply(self, changes: list[tuple[bool, int]], now: float) -> None:
        with self._cond:
            for added, address in changes:
                if added:
                    self._present.add(address)
                else:
                    self._present.discard(address)
                self._stamp[address] = now
            self._last_change = now
            if self._first_since_mark is None:
                self._first_since_mark = now
            self._cond.notify_all()

    def _resync(self) -> None:
        """Rebuild the set from a dump (at start, and after lost notifications)."""
        sock = open_route_socket(self.netns)
        try:
            sock.settimeout(30)
            sock.send(rt.encode_route_dump(socket.AF_INET, 1, RT_TABLE_MAIN, self.proto))
            present: set[int] = set()
            buf = bytearray(1 << 21)
            done = False
            while not done:
                n = sock.recv_into(buf)
                view = memoryview(buf)[:n]
                for kind, _, _, _ in rt.iter_messages(view):
                    if kind in (rt.NLMSG_DONE, rt.NLMSG_ERROR):
                        done = True
                present.update(a for added, a in host_routes(view, self.proto, self._want) if added)
        finally:
            sock.close()
        now = time.perf_counter()
        with self._cond:
            changed = present ^ self._present
            for address in changed:
                self._stamp[address] = now
            if changed and self._first_since_mark is None:
                self._first_since_mark = now
            self._present = present
            self._last_change = now
            self._cond.notify_all()

    # -- waiting --------------------------------------------------------------------------------

    def mark(self) -> None:
        """Forget the first change seen so far; ``first_change`` then reports the next one."""
        with self._cond:
            self._first_since_mark = None

    @property
    def first_change(self) -> float | None:
        """perf_counter stamp of the first change since ``mark`` (None if none yet)."""
        with self._cond:
            return self._first_since_mark

    @property
    def count(self) -> int:
        with self._cond:
            return len(self._present)

    def present(self, address: str) -> bool:
        with self._cond:
            return int(ipaddress.IPv4Address(address)) in self._present

    def wait_count(self, target: int, timeout: float) -> float | None:
        """Block until exactly ``target`` routes are present; the perf_counter stamp of the change that
        got there (None on timeout)."""
        return self._wait(lambda: len(self._present) == target, lambda: self._last_change, timeout)

    def wait_route(self, address: str, present: bool, timeout: float) -> float | None:
        """Block until ``address`` is (or is no longer) present; the stamp of that change."""
        key = int(ipaddress.IPv4Address(address))
        return self._wait(
            lambda: (key in self._present) == present, lambda: self._stamp.get(key, 0.0), timeout
        )

    def _wait(self, done: Callable[[], bool], stamp: Callable[[], float], timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0 or (self._thread is not None and not self._thread.is_alive()):
                    return None
                self._cond.wait(min(left, 0.5))
            return stamp()


def dump_prefixes(sock: socket.socket, proto: int, seq: int = 1) -> set[str]:
    """IPv4 prefixes of ``proto`` in the main table, dumped through ``sock`` (from ``open_route_socket``)."""
    sock.send(rt.encode_route_dump(socket.AF_INET, seq, RT_TABLE_MAIN, proto))
    found: set[str] = set()
    buf = bytearray(1 << 20)
    while True:
        n = sock.recv_into(buf)
        view = memoryview(buf)[:n]
        for kind, _flags, mseq, offset in rt.iter_messages(view):
            if mseq != seq:
                continue
            if kind in (rt.NLMSG_DONE, rt.NLMSG_ERROR):
                return found
            if kind != rt.RTM_NEWROUTE:
                continue
            family, dst_len, _, _, _, protocol, _, _, _ = rt.RTMSG.unpack_from(view, offset + rt.HDR_LEN)
            if family != socket.AF_INET or protocol != proto:
                continue
            size = rt.NLMSGHDR.unpack_from(view, offset)[0]
            pos, end = offset + rt.HDR_LEN + rt.RTMSG_LEN, offset + size
            dst = "0.0.0.0"
            while pos + 4 <= end:
                alen, atype = rt.RTATTR.unpack_from(view, pos)
                if alen < 4:
                    break
                if atype == rt.RTA_DST:
                    dst = socket.inet_ntop(socket.AF_INET, bytes(view[pos + 4 : pos + 8]))
                    break
                pos += (alen + 3) & ~3
            found.add(f"{dst}/{dst_len}")
