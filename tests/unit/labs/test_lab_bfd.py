"""``lab up --bfd``: which sessions get BFD, on the router side (FRR config) and the node side (BGPPeer)."""

from __future__ import annotations

import pytest

from labs import catalog, routers
from labs.bfd import FAILURE_DETECTION, with_bfd


def test_tor_routers_run_bfd_towards_their_nodes_only():
    plain = catalog.TOPOLOGIES["tor"](nodes=4)
    topo = with_bfd(plain)
    nodes = {n.ipv4.split("/")[0] for n in topo.nodes}
    for router in topo.routers:
        for neighbor in router.neighbors:
            assert neighbor.bfd == (neighbor.address in nodes), (router.name, neighbor)
    assert [n.bfd for r in plain.routers for n in r.neighbors] == [False] * sum(
        len(r.neighbors) for r in plain.routers
    )


def test_tor_bgppeers_ask_for_bfd_and_keep_the_rest_of_their_spec():
    plain = catalog.TOPOLOGIES["tor"](nodes=4)
    topo = with_bfd(plain)
    for before, after in zip(plain.peers, topo.peers, strict=True):
        assert after.spec == {**before.spec, "failureDetectionMode": FAILURE_DETECTION}


def test_frr_config_turns_bfd_on_per_neighbor_and_only_there():
    topo = with_bfd(catalog.TOPOLOGIES["tor"](nodes=2))
    config = routers.frr_config(topo.routers[0])
    bfd_lines = [line for line in config.splitlines() if line.endswith(" bfd")]
    expected = [f" neighbor {n.address} bfd" for n in topo.routers[0].neighbors if n.bfd]
    assert bfd_lines == expected and expected
    assert routers._uses_bfd(config)
    assert not routers._uses_bfd(routers.frr_config(catalog.TOPOLOGIES["tor"](nodes=2).routers[0]))


@pytest.mark.parametrize("name", ["mesh", "external"])
def test_a_topology_without_frr_routers_is_refused(name):
    with pytest.raises(ValueError, match="--bfd needs FRR routers"):
        with_bfd(catalog.TOPOLOGIES[name]())
