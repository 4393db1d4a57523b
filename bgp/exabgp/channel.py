"""The daemon's end of the ExaBGP API bridge: a unix socket carrying JSON lines in and commands out.

Stage: transport for the announcements dataplane (the only I/O module of ``bgp.exabgp``).

Owns: the listening socket and the one live bridge connection. A newer connection replaces an older one
(ExaBGP respawned its API process). Incoming lines are handed to ``on_line``; ``send`` writes commands to the
current connection, or queues them until a bridge connects (ExaBGP not started yet, or restarting).

Complicating factors:
- Commands written while no bridge is connected must not be lost silently, but they must not be replayed
  blindly either: the speaker re-sends full state on session up, so the backlog is bounded and dropped when
  it overflows (counted), never grown without limit.
- Backpressure: ``send`` awaits the writer's drain, so a slow ExaBGP slows the speaker instead of growing
  buffers in the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

BACKLOG_LINES = 100_000


class ApiChannel:
    def __init__(
        self,
        path: Path,
        on_line: Callable[[str], None],
        on_connect: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        self._path = Path(path)
        self._on_line = on_line
        self._on_connect = on_connect
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._backlog: list[str] = []
        self.dropped = 0
        self.connected = asyncio.Event()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self._path), limit=1 << 24)
        os.chmod(self._path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            log.info("ExaBGP API process reconnected; dropping the previous connection")
            self._writer.close()
        self._writer = writer
        self.connected.set()
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            await self._write(backlog)
        if self._on_connect is not None:
            result = self._on_connect()
            if asyncio.iscoroutine(result):
                await result
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                try:
                    self._on_line(raw.decode("utf-8", "replace"))
                except Exception:  # a handler bug must not kill the transport
                    log.exception("error handling ExaBGP line")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self.connected.clear()
            writer.close()

    async def send(self, lines: list[str]) -> None:
        if not lines:
            return
        if self._writer is None:
            room = BACKLOG_LINES - len(self._backlog)
            if room < len(lines):
                self.dropped += len(lines) - max(room, 0)
                lines = lines[: max(room, 0)]
            self._backlog.extend(lines)
            return
        await self._write(lines)

    async def _write(self, lines: list[str]) -> None:
        writer = self._writer
        if writer is None:
            return
        try:
            writer.write(("\n".join(lines) + "\n").encode())
            await writer.drain()
        except ConnectionError:
            log.warning("ExaBGP API connection lost while sending %d lines", len(lines))
