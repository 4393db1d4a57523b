"""One harness class per real BGP daemon (GoBGP test/lib shape); ``DAEMONS`` maps a kind to its class."""

from __future__ import annotations

from interop.daemons.base import Daemon
from interop.daemons.bird import Bird2, Bird16
from interop.daemons.frr import Frr
from interop.daemons.gobgp import GoBgp

DAEMONS: dict[str, type[Daemon]] = {"bird16": Bird16, "bird2": Bird2, "frr": Frr, "gobgp": GoBgp}
