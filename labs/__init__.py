"""Runnable multi-node labs: calico-bgp daemons in network namespaces with a real etcd and Calico-style pods.

``topology`` describes a lab (pure), ``lab`` builds and removes it, ``ops`` acts on a running one, ``cli``
is ``calico-bgp lab``. Plumbing: ``netns``, ``pods``, ``etcd``, ``proxy`` (etcd on every node's loopback),
``process``, ``state``, ``report``. Routers beside the nodes (FRR ToRs, bare namespaces for interop
daemons): ``routers``; the topologies that use them (``tor``, ``rr``, ``external``): ``topologies``; the
same topologies for containerlab: ``containerlab``.
"""
