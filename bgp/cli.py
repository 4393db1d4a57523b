"""The `calico-bgp` command line.

Stage: user interface, the shell above ``bgp``, ``confgen`` and ``labs``. Thin: every command parses its
flags (or calico-node's environment names) and calls into the package that does the work.

Owns: the root group (global ``--log-level``), the commands that talk to a running daemon over its control
socket (``status``, ``routes``, ``health``), and the table of the other subcommands by import path.

Complicating factors: ``calico-bgp status`` and ``health`` run as probes, often every few seconds, so they
must not pay for what other subcommands need: the lab tooling, the etcd client (grpc), the config renderer.
Those subcommands are listed in ``SUBCOMMANDS`` by import path and imported only when invoked
(``bgp.lazy_group``); nothing at the top of this module imports them, and tests/test_layout.py checks which
modules ``calico-bgp status --help`` loads.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from bgp.cli_options import run_dir_option
from bgp.lazy_group import LazyGroup

# subcommand -> where it lives; imported only when that subcommand runs
SUBCOMMANDS = {
    "node": "bgp.node_cli:node",
    "apply": "bgp.resources_cli:apply",
    "get": "bgp.resources_cli:get",
    "delete": "bgp.resources_cli:delete",
    "confgen": "bgp.resources_cli:confgen",
    "lab": "labs.cli:lab",
}


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS)
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


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@run_dir_option
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
@run_dir_option
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
@run_dir_option
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


def main() -> None:
    cli(prog_name="calico-bgp")


if __name__ == "__main__":
    main()
