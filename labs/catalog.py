"""The catalog of lab topologies: every name ``calico-bgp lab up`` accepts, and the builder behind it.

Stage: pure input of the lab tooling. ``labs.lab``, ``labs.cli``, ``labs.containerlab`` and the lab tests
look a topology up here by name.

Owns: ``TOPOLOGIES``, name -> builder (each builder takes an optional ``nodes`` count and returns a
validated ``Topology``). No I/O.

Complicating factors: the builders live in three modules that all build on the model in ``labs.topology``
(the plain mesh there, the router topologies in ``labs.topologies``, the IPIP ones in ``labs.encap``). The
catalog sits above all three, so the model module never imports the modules built on it and the import
graph of ``labs`` stays acyclic (an import-linter contract holds it so). The order of the entries is the
order users see in error messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from labs import encap, topologies
from labs.topology import Topology, build_mesh

TOPOLOGIES: Mapping[str, Callable[..., Topology]] = MappingProxyType(
    {
        "mesh": build_mesh,
        "tor": topologies.build_tor,
        "rr": topologies.build_rr,
        "external": topologies.build_external,
        "ipip": encap.build_ipip,
        "crosssubnet": encap.build_crosssubnet,
    }
)
