"""The node daemon's settings: what `calico-bgp node run` was told, checked, in one immutable value.

Stage: the daemon's input (``bgp.node_cli`` builds it from the flags and the environment, ``bgp.daemon``
wires the pipeline from it).

Owns: ``NodeConfig`` and the defaults of the settings that have Calico counterparts (each noted where it is).

Complicating factors: the flags are checked before this is built (``bgp.node_cli``), so a value here is one
that can work; the etcd TLS files are only named, and read at every reconnect so renewed certificates need
no restart. A BGPConfiguration may override ``log_level`` live (``logSeverityScreen``); nothing else here
changes while the daemon runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bgp.bfd.gate import BfdTimers
from bgp.exabgp.privileges import ExaBGPUser
from bgp.limits import DEFAULT_MAX_AS_PATH_LENGTH, DEFAULT_MAX_PREFIXES
from confgen.datastore.etcd_security import EtcdSecurity


@dataclass(frozen=True)
class NodeConfig:
    node: str
    etcd_endpoints: tuple[str, ...]
    run_dir: Path
    metrics_port: int = 9094
    metrics_address: str = "0.0.0.0"
    resync_interval: float = 90.0  # Felix's RouteRefreshInterval
    sweep_hold: float = 120.0  # BIRD's default graceful-restart time; counted from ExaBGP's start
    secrets_dir: Path | None = None  # BGP passwords' secretKeyRef, laid out like a Kubernetes secret volume
    router_id: str | None = None  # CALICO_ROUTER_ID: an IPv4 literal or "hash"
    max_prefixes: int = DEFAULT_MAX_PREFIXES  # per peer; 0 = unlimited (bgp.limits says why this default)
    max_as_path_length: int = DEFAULT_MAX_AS_PATH_LENGTH  # longer AS_PATHs are treated as withdraws
    log_level: int = logging.INFO  # --log-level; a BGPConfiguration logSeverityScreen overrides it live
    exabgp_user: ExaBGPUser | None = None  # ExaBGP drops to this user (bgp.exabgp.privileges); None: root
    etcd_security: EtcdSecurity = EtcdSecurity()  # TLS files and username/password, as calico-node reads them
    bfd: BfdTimers = BfdTimers()  # daemon-wide BFD intervals and multiplier (docs/bfd.md says why)
