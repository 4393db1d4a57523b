"""The daemon's end of the ExaBGP API bridge: a unix socket carrying JSON lines in and commands out.

Stage: transport for the announcements dataplane (the I/O of ``bgp.exabgp``'s API side), and the place
where ExaBGP's liveness is measured (``bgp.exabgp.liveness`` judges; this module probes and listens).

Owns: the listening socket, the one live bridge connection, the probes sent over it and the verdict on it.
Incoming lines are handed to ``on_line`` (probe answers are consumed here); ``send`` writes commands to the
current connection. ``on_connect(pid)`` may refuse a connection (the daemon accepts one bridge per ExaBGP
run); ``on_disconnect`` and ``on_hung(reason)`` tell the daemon that what ExaBGP holds is now in doubt.

Complicating factors:
- Nothing is replayed. Commands sent while no bridge is connected are dropped and counted, never queued:
  they were written against the state of an ExaBGP that is gone or in doubt, and a backlog replayed into a
  fresh one would announce to sessions that are not up and resurrect prefixes withdrawn meanwhile. The
  speaker rebuilds each peer's Adj-RIB-Out from its own tables when the peer is Established again.
- Every write has a deadline. A stopped or deadlocked ExaBGP stops reading; the bridge then blocks on the
  pipe and the socket fills, so an unbounded ``drain()`` would stall the speaker (announcements, kernel
  programming, graceful-restart timers) for good. Writes go out in chunks that end on a line boundary
  (``CHUNK_BYTES``; a probe written between two chunks never lands inside a command), each drained with
  the liveness deadline: a drain that makes no progress for that long ends the connection as hung. So the
  bytes held for ExaBGP are bounded by one chunk plus the transport's high-water mark, not by a line count.
- A busy ExaBGP is not hung: progress (bytes taken, lines written to us, answers) extends the deadline;
  see ``bgp.exabgp.liveness`` for the bound this gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from bgp.exabgp.liveness import PROBE, Liveness, LivenessSettings, is_answer

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024  # the most we hand the transport before waiting for it to drain


def _chunks(data: bytes, size: int) -> list[bytes]:
    """``data`` (newline-terminated lines) in pieces of about ``size`` bytes, each ending with a newline."""
    pieces, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + size)
        end = data.find(b"\n", start + size) if end < 0 else end  # a line longer than size stays whole
        end = len(data) - 1 if end < 0 else end
        pieces.append(data[start : end + 1])
        start = end + 1
    return pieces


def _peer_pid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return struct.unpack("3i", creds)[0]


class ApiChannel:
    def __init__(
        self,
        path: Path,
        on_line: Callable[[str], None],
        on_connect: Callable[[int | None], bool | None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_hung: Callable[[str], None] | None = None,
        *,
        liveness: LivenessSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
        group: int | None = None,  # the unprivileged ExaBGP's group, which its bridge connects as
    ) -> None:
        self._path = Path(path)
        self._group = group
        self._on_line = on_line
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_hung = on_hung
        self._clock = clock
        self.liveness = Liveness(liveness)
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._handlers: set[asyncio.Task] = set()
        self._send_lock = asyncio.Lock()
        self.dropped = 0  # command lines dropped: no working connection to ExaBGP
        self.hangs = 0
        self.connected = asyncio.Event()
        registry = registry if registry is not None else CollectorRegistry()
        self._up = Gauge(
            "calico_bgp_exabgp_up",
            "1 while ExaBGP's API is connected and answering its probes within the deadline",
            registry=registry,
        )
        self._rtt = Gauge(
            "calico_bgp_exabgp_probe_rtt_seconds",
            "Round trip of the last API probe (ExaBGP's `version`) through the bridge",
            registry=registry,
        )
        self._dropped = Counter(
            "calico_bgp_exabgp_commands_dropped",
            "API command lines dropped because ExaBGP had no working API connection (never replayed: the "
            "speaker rebuilds each peer's announcements once it is Established again)",
            registry=registry,
        )

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self._path), limit=1 << 24)
        if self._group is None:
            os.chmod(self._path, 0o600)
        else:
            os.chown(self._path, -1, self._group)
            os.chmod(self._path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    # ------------------------------------------------------------------ connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs each connection's handler as a task
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid = _peer_pid(writer)
        if self._on_connect is not None and self._on_connect(pid) is False:
            log.warning("refusing an API connection (pid %s): not the first bridge of this ExaBGP", pid)
            writer.close()
            return
        if self._writer is not None:
            log.info("ExaBGP API process reconnected; dropping the previous connection")
            self._writer.close()
        self._writer = writer
        self.liveness.connected_at(self._clock())
        self._up.set(1)
        self.connected.set()
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode("utf-8", "replace")
                now = self._clock()
                if is_answer(line):
                    self.liveness.answered(now)
                    if self.liveness.last_rtt is not None:
                        self._rtt.set(self.liveness.last_rtt)
                    continue
                self.liveness.progressed(now)
                try:
                    self._on_line(line)
                except Exception:  # a handler bug must not kill the transport
                    log.exception("error handling ExaBGP line")
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):  # ValueError: a line over limit
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self.connected.clear()
                self.liveness.disconnected()
                self._up.set(0)
                if self._on_disconnect is not None:
                    self._on_disconnect()
            writer.close()

    def _hung(self, writer: asyncio.StreamWriter, reason: str) -> None:
        if self._writer is not writer:
            return  # that connection already ended
        self.hangs += 1
        log.error("%s; ending the API connection", reason)
        self._up.set(0)
        if self._on_hung is not None:
            self._on_hung(reason)
        writer.transport.abort()  # the reader sees the end and reports the disconnect

    # ------------------------------------------------------------------ probes

    async def run(self) -> None:
        """Probe ExaBGP and act on the verdict, forever."""
        while True:
            await asyncio.sleep(self.liveness.settings.check_every)
            await self.check()

    async def check(self) -> None:
        """One round: send a probe if one is due, and end the connection if ExaBGP is judged hung (asked
        again after a short pause, in case it was our own loop that was late reading the answer)."""
        writer = self._writer
        if writer is None:
            return
        now = self._clock()
        if self.liveness.due(now):
            writer.write(f"{PROBE}\n".encode())  # a few bytes; at most MAX_OUTSTANDING unanswered
            self.liveness.sent(now)
        if self.liveness.verdict(now) is None:
            return
        await asyncio.sleep(self.liveness.settings.confirm)
        verdict = self.liveness.verdict(self._clock())
        if verdict is not None:
            self._hung(writer, verdict)

    # ------------------------------------------------------------------ commands

    def _drop(self, count: int) -> None:
        if count:
            self.dropped += count
            self._dropped.inc(count)

    async def send(self, lines: list[str]) -> bool:
        """Write commands to ExaBGP, or drop them (counted) when it has no working connection. True when
        every line was handed to the connection and drained."""
        if not lines:
            return True
        async with self._send_lock:
            writer = self._writer
            if writer is None:
                self._drop(len(lines))
                return False
            pieces = _chunks(("\n".join(lines) + "\n").encode(), CHUNK_BYTES)
            for n, piece in enumerate(pieces):
                if self._writer is not writer or not await self._write(writer, piece):
                    self._drop(sum(p.count(b"\n") for p in pieces[n:]))
                    log.warning("ExaBGP API connection lost while sending %d lines", len(lines))
                    return False
        return True

    async def _write(self, writer: asyncio.StreamWriter, piece: bytes) -> bool:
        """Write one chunk and wait for the transport to take it, with the liveness deadline."""
        transport = writer.transport
        settings = self.liveness.settings
        try:
            writer.write(piece)
            if not transport.get_write_buffer_size() and not transport.is_closing():
                # The socket took every byte (a route's command, most bursts): nothing to wait for.
                self.liveness.progressed(self._clock())
                return True
            stalled_since = self._clock()
            while True:
                before = transport.get_write_buffer_size()
                try:
                    async with asyncio.timeout(settings.check_every):  # no task per drain, as wait_for makes
                        await writer.drain()
                    self.liveness.progressed(self._clock())
                    return True
                except TimeoutError:
                    now = self._clock()
                    if transport.get_write_buffer_size() < before:
                        self.liveness.progressed(now)
                        stalled_since = now
                    elif now - stalled_since >= settings.deadline:
                        self._hung(writer, f"ExaBGP not reading its API input for {now - stalled_since:.0f}s")
                        return False
        except (ConnectionError, RuntimeError):
            return False
