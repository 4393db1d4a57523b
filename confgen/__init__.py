"""confgen: calico/node's confd, rebuilt for ExaBGP.

Pipeline: ``datastore`` (etcd syncer or in-memory fake) -> ``model`` + ``calc`` (pure: snapshot + node
name -> ``intent.NodeIntent``) -> ``render`` (ExaBGP config text) -> ``apply`` (validate, atomic install),
driven by ``loop.Confgen``. Must not import ``bgp``, ``routes`` or ``labs``: the daemon wires it.
"""
