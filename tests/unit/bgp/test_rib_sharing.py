"""Per-route state of the BGP side stays compact: one object per distinct value, no container per path.

A node holds every path it learned and every advertisement it sent to every peer; each UPDATE decodes its
own attribute objects and the export policy builds a new advertisement per prefix. These tests fail if
equal values stop being shared (a copy per route) or a prefix with one path gets a container again.
"""

from __future__ import annotations

import json

from bgp.adj_rib_out import INTERNED, AdjRibOut
from bgp.exabgp.commands import Advertisement
from bgp.exabgp.events import PathAttributes
from bgp.rib import AdjRibIn, Path
from bgp.speaker import Speaker
from confgen.intent import NodeIntent, PeerIntent, PoolIntent
from routes.testing import FakeRouteTable

ME, PEER, OTHER = "10.0.0.11", "10.0.0.12", "10.0.0.13"


def peer(address: str) -> PeerIntent:
    return PeerIntent(name=f"p{address}", address=address, family="ipv4", peer_as=64512, local_as=64512,
                      local_address=ME, passive=True)


def intent() -> NodeIntent:
    return NodeIntent(node="node1", router_id=ME, local_as=64512, ipv4_address=ME, ipv4_network="10.0.0.0/24",
                      peers=(peer(PEER),), pools=(PoolIntent("192.168.0.0/16"),),
                      local_blocks=("192.168.1.0/26",))


def line(kind: str, body: dict) -> str:
    return json.dumps({"type": kind, "neighbor": {"address": {"local": ME, "peer": PEER}, **body}})


def announce(prefix: str) -> str:
    update = {
        "attribute": {"origin": "igp", "local-preference": 100, "as-path": [64513, 64514]},
        "announce": {"ipv4 unicast": {PEER: [{"nlri": prefix}]}},
    }
    return line("update", {"message": {"update": update}})


def test_paths_from_separate_updates_share_their_attributes_peer_and_next_hop():
    speaker = Speaker(send=None, route_table=FakeRouteTable())  # type: ignore[arg-type]
    speaker.set_intent(intent())
    speaker.handle_line(line("state", {"asn": {"local": 64512, "peer": 64512}, "state": "up"}))
    for i in range(3):  # one route per UPDATE: the decoder's objects are new each time
        speaker.handle_line(announce(f"192.168.{100 + i}.0/24"))
    paths = [p for prefix in speaker._rib.prefixes() for p in speaker._rib.paths(prefix)]
    assert len(paths) == 3
    for field in ("attributes", "nexthop", "peer"):
        assert len({id(getattr(p, field)) for p in paths}) == 1, field


def test_a_prefix_with_one_path_holds_the_path_itself_and_several_a_tuple():
    rib = AdjRibIn()
    one = Path("10.9.0.0/24", PEER, PEER, rib.shared(PathAttributes()))
    rib.add(one)
    assert rib._by_prefix["10.9.0.0/24"] is one
    other = Path("10.9.0.0/24", OTHER, OTHER, one.attributes)
    rib.add(other)
    assert rib._by_prefix["10.9.0.0/24"] == (one, other) and rib.count() == 2
    rib.remove(PEER, "10.9.0.0/24")
    assert rib._by_prefix["10.9.0.0/24"] is other and rib.paths("10.9.0.0/24") == [other]
    assert rib.drop_peer(OTHER) == {"10.9.0.0/24"} and rib.prefixes() == []


def test_equal_advertisements_are_stored_once_for_every_prefix_and_peer():
    out = AdjRibOut(refused=lambda message: None)
    peers = {PEER: peer(PEER), OTHER: peer(OTHER)}
    prefixes = [f"10.{i}.0.0/24" for i in range(5)]
    out.session_up(PEER), out.session_up(OTHER)
    # A new but equal advertisement per decision, as the export policy builds them.
    out.lines(prefixes, peers, lambda a: True, lambda p, prefix: Advertisement(nexthop=ME),
              lambda: set(prefixes), eor_allowed=False)
    stored = [adv for sent in out.sent.values() for adv in sent.values()]
    assert len(stored) == 10 and len({id(adv) for adv in stored}) == 1


def test_sharing_is_bounded():
    out = AdjRibOut(refused=lambda message: None)
    out.session_up(PEER)
    index = {f"10.{i // 256}.{i % 256}.0/24": i for i in range(INTERNED + 10)}  # a distinct MED each
    prefixes = list(index)
    out.lines(prefixes, {PEER: peer(PEER)}, lambda a: True,
              lambda p, prefix: Advertisement(nexthop=ME, med=index[prefix]),
              lambda: set(prefixes), eor_allowed=False)
    assert len(out._interned) <= INTERNED and len(out.sent[PEER]) == len(prefixes)
