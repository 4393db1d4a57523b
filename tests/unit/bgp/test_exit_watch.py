"""bgp.exabgp.exit_watch: the future completes when the child ends, and only then; no pidfd, no future."""

from __future__ import annotations

import asyncio
import os
import sys

from bgp.exabgp.exit_watch import exit_watch


async def _child(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE)


async def test_the_future_completes_when_the_child_ends_and_not_before():
    proc = await _child("import sys; sys.stdin.read()")  # runs until its stdin closes
    try:
        async with exit_watch(proc.pid) as ended:
            assert ended is not None
            done, _ = await asyncio.wait({ended}, timeout=0.3)
            assert not done and proc.returncode is None  # still running: no completion
            assert proc.stdin is not None
            proc.stdin.close()
            await asyncio.wait_for(ended, 10)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_pidfd_is_closed_and_unregistered_after_the_block():
    proc = await _child("pass")
    await proc.wait()
    before = set(os.listdir("/proc/self/fd"))
    async with exit_watch(os.getpid()) as ended:  # ourselves: alive throughout
        assert ended is not None and not ended.done()
        assert len(set(os.listdir("/proc/self/fd")) - before) >= 1
    assert ended.cancelled()
    assert set(os.listdir("/proc/self/fd")) <= before


async def test_no_such_process_gives_no_future():
    proc = await _child("pass")
    await proc.wait()  # reaped: the pid names nothing now
    async with exit_watch(proc.pid) as ended:
        assert ended is None
