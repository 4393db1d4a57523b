"""bgp.heap: the heap is trimmed once after a burst, on the first quiet second, never per flush."""

from __future__ import annotations

import json
import platform

import pytest

from bgp.heap import HeapTrimmer, libc_trim
from bgp.speaker import Speaker
from confgen.intent import NodeIntent, PeerIntent, PoolIntent
from routes.testing import FakeRouteTable

ME, PEER = "10.0.0.11", "10.0.0.12"


@pytest.mark.parametrize(
    ("steps", "trims"),
    [
        ([("handled", 4), "quiet", ("handled", 5), "quiet"], 0),  # a pod at a time: not yet
        ([("handled", 4), "quiet", ("handled", 6), "quiet", "quiet"], 1),  # counted since the last trim
        ([("handled", 6), ("handled", 6), "quiet", "quiet"], 1),  # a burst, then quiet: once
        ([("handled", 30), "quiet", ("handled", 9), "quiet", ("handled", 1), "quiet"], 2),  # counted afresh
        ([("handled", 10)], 0),  # not while the burst goes on
    ],
)
def test_trims_once_per_burst_on_a_quiet_second(steps, trims):
    done: list[int] = []
    heap = HeapTrimmer(threshold=10, trim=lambda: done.append(1))
    for step in steps:
        if step == "quiet":
            heap.quiet()
        else:
            heap.handled(step[1])
    assert (len(done), heap.trims) == (trims, trims)


def test_without_malloc_trim_it_does_nothing():
    heap = HeapTrimmer(threshold=1, trim=None)
    heap.handled(5)
    assert heap.quiet() is False and heap.trims == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_trim_is_found_and_runs():
    trim = libc_trim()
    assert trim is not None
    trim()


async def test_the_speaker_counts_what_each_flush_handled():
    speaker = Speaker(send=None, route_table=FakeRouteTable())  # type: ignore[arg-type]
    counted = speaker.heap = HeapTrimmer(threshold=10**9, trim=lambda: None)
    speaker.set_intent(NodeIntent(
        node="node1", router_id=ME, local_as=64512, ipv4_address=ME, ipv4_network="10.0.0.0/24",
        peers=(PeerIntent(name="p", address=PEER, family="ipv4", peer_as=64512, local_as=64512,
                          local_address=ME, passive=True),),
        pools=(PoolIntent("192.168.0.0/16"),), local_blocks=("192.168.1.0/26",),
    ))  # fmt: skip
    nlri = [{"nlri": f"192.168.{100 + i // 64}.{(i % 64) * 4}/30"} for i in range(50)]
    update = {"attribute": {"origin": "igp"}, "announce": {"ipv4 unicast": {PEER: nlri}}}
    speaker.handle_line(json.dumps({"type": "update", "neighbor": {
        "address": {"local": ME, "peer": PEER}, "message": {"update": update}}}))
    await speaker.flush()
    assert counted._handled >= 50
