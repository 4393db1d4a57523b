"""confgen: calico/node's confd, rebuilt for ExaBGP.

Pipeline: ``datastore`` (etcd syncer or in-memory fake) -> ``model`` (typed, validated resources:
``bgpconfig``, ``bgppeer``, ``bgpfilter``, Node/IPPool in ``model``, field rules in ``validate``,
``selector``) + ``calc`` / ``peering`` (pure: snapshot + node name + secrets -> ``intent.NodeIntent``) ->
``render`` (ExaBGP config text) -> ``apply`` (validate, atomic install), driven by ``loop.Confgen``, which
also reads BGP passwords through ``secrets``. ``resources`` holds calicoctl's document rules for the
resource CLI. Must not import ``bgp``, ``routes`` or ``labs``: the daemon wires it.
"""
