"""Shared parts of the speaker's tests: a node intent for a small IPv4 mesh, ExaBGP's JSON event lines for a
peer, a settable clock and a route table that counts the work handed to it."""

from __future__ import annotations

import json
from collections.abc import Iterable

from confgen.intent import DEFAULT_RESTART_TIME, NodeIntent, PeerIntent, PoolIntent
from routes.table import RouteTable

ME = "10.0.0.11"
PEER = "10.0.0.12"
BLOCK = "192.168.1.0/26"
POOL = PoolIntent("192.168.0.0/16")


class Clock:
    """A clock the test sets: ``now`` is what every reader gets."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingTable(RouteTable):
    """A RouteTable that counts the desired routes handed to it (each is a recomputation) and its applies."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recomputed = 0
        self.applies = 0

    def set_desired(self, routes) -> None:
        self.recomputed += 1
        super().set_desired(routes)

    def update(self, upserts=(), removes=()) -> None:
        self.recomputed += 1
        super().update(upserts, removes)

    async def apply(self):
        self.applies += 1
        return await super().apply()


def mesh_intent(
    peers: Iterable[str] = (PEER,),
    *,
    pools: tuple[PoolIntent, ...] = (POOL,),
    blocks: Iterable[str] = (BLOCK,),
    services: tuple[str, ...] = (),
    restart_time: int = DEFAULT_RESTART_TIME,
) -> NodeIntent:
    """Node ``ME`` in AS 64512 meshed with ``peers`` (the higher address passive, as Calico's mesh has it)."""
    return NodeIntent(
        node="node1",
        router_id=ME,
        local_as=64512,
        ipv4_address=ME,
        ipv4_network="10.0.0.0/24",
        peers=tuple(
            PeerIntent(
                name=f"Mesh_{p.replace('.', '_')}",
                address=p,
                family="ipv4",
                peer_as=64512,
                local_as=64512,
                local_address=ME,
                passive=p > ME,
                restart_time=restart_time,
            )
            for p in peers
        ),
        pools=pools,
        local_blocks=tuple(blocks),
        service_cluster_ips=services,
    )


def event_line(kind: str, body: dict, peer: str = PEER) -> str:
    """One of ExaBGP's JSON event lines about ``peer``."""
    return json.dumps({"type": kind, "neighbor": {"address": {"local": ME, "peer": peer}, **body}})


def up_line(peer: str = PEER) -> str:
    return event_line("state", {"asn": {"local": 64512, "peer": 64512}, "state": "up"}, peer)


def announce_line(prefixes: Iterable[str], peer: str = PEER) -> str:
    update = {
        "attribute": {"origin": "igp", "local-preference": 100},
        "announce": {"ipv4 unicast": {peer: [{"nlri": p} for p in prefixes]}},
    }
    return event_line("update", {"message": {"update": update}}, peer)
