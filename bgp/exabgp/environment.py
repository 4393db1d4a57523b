"""ExaBGP's settings: the environment the supervisor starts ExaBGP with.

Stage: the BGP engine's configuration, beside the rendered file (``confgen``): what ExaBGP reads from its
environment rather than from its config file — where it listens, how it logs, its API behaviour and its
reactor speed.

Owns: the settings the daemon depends on (bind addresses and port, no daemonising or privilege drop by
ExaBGP itself, acks off, the API process respawned, logs to stdout, long log lines) and the two overrides
an operator or a benchmark may give through our own environment.

Complicating factors:
- Overrides never win over the settings the daemon depends on: a stray ``exabgp.api.ack=true`` would make
  every command answer with a line the speaker does not expect.
- ExaBGP reads its settings as strings; numbers are formatted here, and a malformed override is logged and
  ignored rather than passed on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from bgp.exabgp.tuning import IDLE_TICK_SPEED

log = logging.getLogger(__name__)

SPEED_ENV = "CALICO_BGP_EXABGP_SPEED"  # overrides exabgp.reactor.speed (tuning, benchmarks)
EXTRA_ENV = "CALICO_BGP_EXABGP_ENV"  # "exabgp.cache.attributes=false ...": extra settings (experiments)


def exabgp_environment(
    bind: list[str], port: int, reactor_speed: float | None = None, overrides: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """ExaBGP's settings. ``overrides`` (our environment) may set the reactor speed (``SPEED_ENV``) and
    add ``exabgp.*`` settings (``EXTRA_ENV``); the ones the daemon depends on (bind, user, acks) win."""
    if reactor_speed is None:
        try:
            reactor_speed = float(overrides.get(SPEED_ENV, str(IDLE_TICK_SPEED)))
        except ValueError:
            log.warning("ignoring %s=%r: not a number", SPEED_ENV, overrides.get(SPEED_ENV))
            reactor_speed = IDLE_TICK_SPEED
    extra = dict(
        item.partition("=")[::2]
        for item in overrides.get(EXTRA_ENV, "").split()
        if item.startswith("exabgp.")
    )
    return extra | {
        "exabgp.tcp.bind": " ".join(bind),
        "exabgp.tcp.port": str(port),
        "exabgp.daemon.user": "root",
        "exabgp.daemon.drop": "false",
        "exabgp.daemon.daemonize": "false",
        "exabgp.api.ack": "false",
        "exabgp.api.cli": "false",
        "exabgp.api.respawn": "true",
        "exabgp.log.destination": "stdout",
        "exabgp.log.short": "false",
        # A line per message counter that changed (every UPDATE and keepalive): nearly all of exabgp.log, and
        # each one an ExaBGP write and a daemon read and write, some between an UPDATE and its kernel write.
        "exabgp.log.statistics": "false",
        "exabgp.reactor.speed": str(reactor_speed),
    }
