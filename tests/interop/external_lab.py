"""Shared parts of the interop tests that run one lab node against one real daemon in the lab's "peer"
namespace: the topology, the lab with that BGPPeer written to its etcd, and the node's own view."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator

from labs import etcd, netns, ops, state, topology
from labs import lab as labs_lab
from labs.topologies import build_external

TOPO = build_external(1)
NODE = TOPO.nodes[0]
PEER_ADDRESS = "10.0.0.2"
PEER_AS = 65000


@contextlib.contextmanager
def node_with_peer(prefix: str, peer_name: str, spec: dict) -> Iterator[str]:
    """A one-node lab (named ``prefix`` + random hex) whose etcd holds BGPPeer ``peer_name`` with ``spec``;
    yields the lab's name and tears the lab down in every outcome."""
    name = f"{prefix}{secrets.token_hex(4)}"
    try:
        labs_lab.up(TOPO, name=name, timeout=5)  # no peers yet: nothing to wait for
        lab_state = ops.load(name)
        key, value = topology.bgppeer_resource(topology.LabPeer(peer_name, spec))
        lab_state.etcd_keys.append(key)  # so that `lab down` removes it with the rest
        lab_state.save()
        etcd.put_all(lab_state.etcd_endpoints, [(key, value)])
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))


def node_view(lab: str, what: str) -> dict:
    """``calico-bgp <what> -o json`` run on the lab's node (``status``, ``routes``)."""
    node = ops.load(lab).node(NODE.name)
    out = netns.run_in(node.netns, ["calico-bgp", what, "-o", "json"], env=ops.node_env(node), timeout=10)
    return json.loads(out.stdout)
