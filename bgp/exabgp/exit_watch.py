"""A future that completes when a child process ends, without polling: for the ExaBGP supervisor.

Stage: the BGP engine's process lifecycle (used by ``bgp.exabgp.supervisor``).

Owns: a Linux pidfd registered with the event loop. asyncio's ``Process.wait`` completes only once every
pipe of the child is closed, and ExaBGP's API relay inherits its output pipe, so the supervisor cannot wait
on it; it looked at ``returncode`` every 0.2 s instead, five wake-ups a second of an otherwise idle daemon
for the life of the node. A pidfd becomes readable when the process ends.

Complicating factors: the pidfd says the process ended; asyncio's child watcher sets ``returncode`` a moment
later, once it has reaped it, so the caller still reads ``returncode`` and may wait a short while after the
future completed. Where there is no pidfd (an old kernel, another OS, the pid already reaped) ``exit_watch``
yields None and the caller polls as before. The fd is closed and unregistered in all outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def exit_watch(pid: int) -> AsyncIterator[asyncio.Future[None] | None]:
    """Within the block: a future done once process ``pid`` has ended, or None if that cannot be watched."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd_open here, or no such process any more
        yield None
        return
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(fd)
        if not ended.done():
            ended.set_result(None)

    try:
        loop.add_reader(fd, readable)
        try:
            yield ended
        finally:
            loop.remove_reader(fd)
            ended.cancel()
    finally:
        os.close(fd)
