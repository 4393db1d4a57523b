"""Our BFD engine as a process of its own, for tests that run it inside a network namespace.

Stage: test support for ``tests/netns/test_bfd_interop.py``, started as
``ip netns exec NS python tests/netns/bfd_driver.py``: a socket belongs to the namespace of the process
that opens it, and the test process stays in the host's.

Owns: a line protocol on stdin/stdout. In: ``{"cmd": "configure", "peers": [BfdPeerConfig fields...]}`` and
``{"cmd": "status"}``. Out, one JSON object a line, each with ``t`` (CLOCK_MONOTONIC, which network
namespaces share with the test): ``ready``, ``configured``, ``change`` (a session's status after each
state change, from the engine's callback) and ``status`` (every session, and the packets refused by
reason).

Complicating factors:
- Timings are taken here, at the callback, so a measurement does not include the pipe to the test.
- stdin closing ends the process: a test that dies leaves no engine behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time

from bgp.bfd.api import BfdPeerConfig, BfdStatus
from bgp.bfd.service import BfdEngine


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def on_change(status: BfdStatus) -> None:
    emit("change", status=dataclasses.asdict(status))


async def main() -> None:
    engine = BfdEngine(on_change)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    served = asyncio.create_task(engine.run())
    emit("ready")
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "configure":
                peers = [BfdPeerConfig(**fields) for fields in command["peers"]]
                engine.configure({p.key: p for p in peers})
                emit("configured")
            elif command["cmd"] == "status":
                sessions = [dataclasses.asdict(s) for s in engine.status()]
                emit("status", sessions=sessions, dropped=engine.dropped_packets())
    finally:
        served.cancel()
        await asyncio.gather(served, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
