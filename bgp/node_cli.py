"""`calico-bgp node run`: the daemon's flags, checked before the daemon starts.

Stage: user interface. ``bgp.cli`` loads this group only when ``calico-bgp node ...`` runs; the daemon
itself (``bgp.daemon``) is imported only once the flags passed their checks.

Owns: the daemon's flag names, their calico-node environment names and defaults, and the usage errors for
settings that can never work (an empty endpoint list, a bad router id, an ExaBGP user that cannot be used).

Complicating factors: an unreadable etcd TLS file is only a warning here, because a mounted secret may
appear after the daemon started and the datastore syncer retries it; a missing key for a given certificate
is an error at once.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import click

from bgp.bfd.api import DEFAULT_MIN_RX_MS, DEFAULT_MIN_TX_MS, DEFAULT_MULTIPLIER
from bgp.cli_options import run_dir_option
from bgp.etcd_options import check_or_usage_error, etcd_security_options
from bgp.limits import DEFAULT_MAX_AS_PATH_LENGTH, DEFAULT_MAX_PREFIXES
from confgen.datastore.etcd_security import EtcdSecurity

# BFD intervals (ms): below 50 ms the daemon's event loop, which also serves BGP and the kernel, could miss
# its own deadlines under load; above a minute BFD detects nothing the hold timer would not.
MIN_BFD_INTERVAL_MS = 50
MAX_BFD_INTERVAL_MS = 60_000


@click.group()
def node() -> None:
    """The node daemon."""


@node.command("run")
@click.option(
    "--node",
    "node_name",
    envvar="NODENAME",
    default=socket.gethostname,
    show_default="hostname",
    help="This node's name, as in its Calico Node resource (env NODENAME).",
)
@click.option(
    "--etcd-endpoints",
    envvar="ETCD_ENDPOINTS",
    default="http://127.0.0.1:2379",
    show_default=True,
    help="Comma-separated etcd v3 endpoints (env ETCD_ENDPOINTS).",
)
@run_dir_option
@click.option(
    "--metrics-port",
    envvar="CALICO_BGP_METRICS_PORT",
    default=9094,
    show_default=True,
    type=int,
    help="Prometheus endpoint port; 0 disables it.",
)
@click.option(
    "--metrics-address",
    envvar="CALICO_BGP_METRICS_ADDRESS",
    default="0.0.0.0",
    show_default=True,
    help="Address the metrics port (/metrics, /readyz, /livez) listens on; an IPv6 address listens on IPv6 "
    "(env CALICO_BGP_METRICS_ADDRESS).",
)
@click.option(
    "--log-level",
    "run_log_level",
    envvar="CALICO_BGP_LOG_LEVEL",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="The daemon's log level (env CALICO_BGP_LOG_LEVEL; default: the global --log-level). A "
    "logSeverityScreen in the BGPConfiguration node.<name>, else default, wins over it while it is set.",
)
@click.option(
    "--secrets-dir",
    envvar="CALICO_BGP_SECRETS_DIR",
    default=None,
    type=click.Path(path_type=Path),
    help="Where BGP passwords' secretKeyRef {name, key} resolve, as <dir>/<name>/<key> "
    "(env CALICO_BGP_SECRETS_DIR).",
)
@click.option(
    "--router-id",
    envvar="CALICO_ROUTER_ID",
    default=None,
    help="Router id: an IPv4 address or 'hash' (env CALICO_ROUTER_ID); default the node's IPv4.",
)
@click.option(
    "--route-refresh-interval",
    envvar="CALICO_BGP_ROUTE_REFRESH_INTERVAL",
    default=90.0,
    show_default=True,
    type=click.FloatRange(min=0.5),
    help="Seconds between full read-backs of our kernel routes, repairing any drift (Felix's "
    "RouteRefreshInterval; env CALICO_BGP_ROUTE_REFRESH_INTERVAL).",
)
@click.option(
    "--max-prefixes",
    envvar="CALICO_BGP_MAX_PREFIXES",
    default=DEFAULT_MAX_PREFIXES,
    show_default=True,
    type=click.IntRange(min=0),
    help="Prefixes one peer may send (both families); crossing it tears the session down and holds the "
    "peer idle (30 s, doubling to 10 min). 0 = unlimited (env CALICO_BGP_MAX_PREFIXES).",
)
@click.option(
    "--max-as-path-length",
    envvar="CALICO_BGP_MAX_AS_PATH_LENGTH",
    default=DEFAULT_MAX_AS_PATH_LENGTH,
    show_default=True,
    type=click.IntRange(min=0),
    help="A path with a longer AS_PATH is treated as a withdraw. 0 = unlimited "
    "(env CALICO_BGP_MAX_AS_PATH_LENGTH).",
)
@click.option(
    "--exabgp-user",
    envvar="CALICO_BGP_EXABGP_USER",
    default=None,
    help="The user ExaBGP runs as, with only CAP_NET_BIND_SERVICE; 'root' or '' keeps it root "
    "(env CALICO_BGP_EXABGP_USER; default: nobody, when it exists).",
)
@click.option(
    "--bfd-min-tx",
    envvar="CALICO_BGP_BFD_MIN_TX",
    default=DEFAULT_MIN_TX_MS,
    show_default=True,
    type=click.IntRange(MIN_BFD_INTERVAL_MS, MAX_BFD_INTERVAL_MS),
    help="BFD: the interval (ms) we want to send at once a session is Up (env CALICO_BGP_BFD_MIN_TX).",
)
@click.option(
    "--bfd-min-rx",
    envvar="CALICO_BGP_BFD_MIN_RX",
    default=DEFAULT_MIN_RX_MS,
    show_default=True,
    type=click.IntRange(MIN_BFD_INTERVAL_MS, MAX_BFD_INTERVAL_MS),
    help="BFD: the shortest interval (ms) we accept between the peer's packets (env CALICO_BGP_BFD_MIN_RX).",
)
@click.option(
    "--bfd-multiplier",
    envvar="CALICO_BGP_BFD_MULTIPLIER",
    default=DEFAULT_MULTIPLIER,
    show_default=True,
    type=click.IntRange(1, 255),
    help="BFD: packets missed before a session is declared Down; detection takes about this times the "
    "negotiated interval (env CALICO_BGP_BFD_MULTIPLIER).",
)
@etcd_security_options(pass_as="etcd_security")
def node_run(
    node_name: str,
    etcd_endpoints: str,
    run_dir: Path,
    metrics_port: int,
    metrics_address: str,
    secrets_dir: Path | None,
    router_id: str | None,
    route_refresh_interval: float,
    max_prefixes: int,
    max_as_path_length: int,
    run_log_level: str | None,
    exabgp_user: str | None,
    bfd_min_tx: int,
    bfd_min_rx: int,
    bfd_multiplier: int,
    etcd_security: EtcdSecurity,
) -> None:
    """Run the node daemon: etcd watch, config rendering, ExaBGP, route programming."""
    from bgp.bfd.gate import BfdTimers
    from bgp.daemon import run_node
    from bgp.node_config import NodeConfig

    endpoints = tuple(e.strip() for e in etcd_endpoints.split(",") if e.strip())
    if not endpoints:
        raise click.UsageError("--etcd-endpoints is empty")
    # Settings that can never work stop us here; an unreadable file is only a warning, the syncer
    # retries it (a mounted secret may appear later).
    check_or_usage_error(etcd_security, endpoints, read_files=False)
    try:
        etcd_security.load_tls()
    except ValueError as exc:
        click.echo(f"warning: {exc}; retrying until it can be read", err=True)
    if os.geteuid() != 0:
        raise click.ClickException("calico-bgp node run must run as root (it programs kernel routes)")
    from confgen.calc import router_id_setting

    try:
        router_id_setting(router_id, node_name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--router-id") from exc
    from bgp.exabgp.privileges import PrivilegeError, choose_exabgp_user

    try:
        run_as = choose_exabgp_user(exabgp_user, run_dir)
    except PrivilegeError as exc:
        raise click.BadParameter(str(exc), param_hint="--exabgp-user") from exc
    # Non-zero when a component failed (after a clean stop), so that a supervisor restarts the daemon.
    status = run_node(
        NodeConfig(
            node=node_name,
            etcd_endpoints=endpoints,
            run_dir=run_dir,
            metrics_port=metrics_port,
            metrics_address=metrics_address,
            secrets_dir=secrets_dir,
            router_id=router_id,
            resync_interval=route_refresh_interval,
            max_prefixes=max_prefixes,
            max_as_path_length=max_as_path_length,
            log_level=getattr(logging, run_log_level.upper()) if run_log_level else logging.getLogger().level,
            exabgp_user=run_as,
            etcd_security=etcd_security,
            bfd=BfdTimers(bfd_min_tx, bfd_min_rx, bfd_multiplier),
        )
    )
    sys.exit(status)
