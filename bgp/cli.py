"""The `calico-bgp` command line.

Stage: user interface. Thin: every command parses its flags (or calico-node's environment names) and calls
into the package that does the work.

Owns: flag names, environment fallbacks, exit codes and user-facing error messages.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

import click

from bgp.etcd_options import check_or_usage_error, etcd_security_options
from bgp.limits import DEFAULT_MAX_AS_PATH_LENGTH, DEFAULT_MAX_PREFIXES
from confgen.datastore.etcd_security import EtcdSecurity

DEFAULT_RUN_DIR = "/var/run/calico-bgp"


def _run_dir_option(f):
    return click.option(
        "--run-dir",
        envvar="CALICO_BGP_RUN_DIR",
        default=DEFAULT_RUN_DIR,
        show_default=True,
        type=click.Path(path_type=Path),
        help="Directory holding the daemon's control socket and ExaBGP files (env CALICO_BGP_RUN_DIR).",
    )(f)


@click.group()
@click.option(
    "--log-level",
    default="info",
    envvar="CALICO_BGP_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def cli(log_level: str) -> None:
    """calico-bgp: Calico's BGP layer (confd + BIRD) rebuilt on ExaBGP."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.group()
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
@_run_dir_option
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
    etcd_security: EtcdSecurity,
) -> None:
    """Run the node daemon: etcd watch, config rendering, ExaBGP, route programming."""
    from bgp.daemon import NodeConfig, run_node

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
        )
    )
    sys.exit(status)


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_run_dir_option
def status(output: str, run_dir: Path) -> None:
    """Show BGP sessions, in the shape of `calicoctl node status`."""
    from bgp.status import DaemonNotRunning, query, render_status

    try:
        report = query(run_dir / "ctl.sock", "status")
    except DaemonNotRunning as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        for peer in report.get("peers", []):
            peer.pop("since_ts", None)
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_status(report), nl=False)


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_run_dir_option
def routes(output: str, run_dir: Path) -> None:
    """Show the node's Loc-RIB: best paths, multipath, who announced them, and their kernel state."""
    from bgp.routes_view import render_routes
    from bgp.status import DaemonNotRunning, query

    try:
        report = query(run_dir / "ctl.sock", "routes")
    except DaemonNotRunning as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_routes(report), nl=False)


@cli.command()
@click.option("--ready", is_flag=True, help="Readiness, as calico-node -bird-ready: one line, exit 0 or 1.")
@click.option("--live", is_flag=True, help="Liveness, as calico-node -bird-live: one line, exit 0 or 1.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for the answer.")
@_run_dir_option
def health(ready: bool, live: bool, timeout: float, run_dir: Path) -> None:
    """Liveness for a supervisor: each component's state and last sign of life, and the event loop's lag.

    Exits 0 when healthy, 1 when a component is down or stale, 2 when the daemon does not answer in time
    (its event loop is blocked) or is not running.

    With --ready and/or --live: one line per check saying why, exit 0 when every check passes, else 1 (a
    daemon that does not answer fails them). The rules are in the README (Health checks)."""
    from bgp.status import DaemonNotRunning, query

    if ready or live:
        from bgp.readiness import Verdict

        passed = True
        for what in [name for name, wanted in (("ready", ready), ("live", live)) if wanted]:
            try:
                answer = query(run_dir / "ctl.sock", what, timeout=timeout)
                verdict = Verdict(answer.get("ok") is True, str(answer.get("reason") or answer.get("error")))
            except (DaemonNotRunning, OSError, ValueError) as exc:
                verdict = Verdict(False, f"calico-bgp is not answering: {exc or 'timed out'}")
            click.echo(verdict.line(what))
            passed = passed and verdict.ok
        sys.exit(0 if passed else 1)
    try:
        report = query(run_dir / "ctl.sock", "health", timeout=timeout)
    except (DaemonNotRunning, OSError, ValueError) as exc:  # a timeout is an OSError: the loop is stuck
        click.echo(f"calico-bgp is not answering: {exc}", err=True)
        sys.exit(2)
    click.echo(json.dumps(report, indent=2))
    sys.exit(0 if report.get("healthy") else 1)


def _add_optional_groups() -> None:
    from bgp import resources_cli
    from labs.cli import lab

    for command in (resources_cli.apply, resources_cli.get, resources_cli.delete, resources_cli.confgen, lab):
        cli.add_command(command)


_add_optional_groups()


def main() -> None:
    cli(prog_name="calico-bgp")


if __name__ == "__main__":
    main()
