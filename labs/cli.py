"""`calico-bgp lab ...`: one-command multi-node labs in network namespaces.

Stage: user interface of the lab tooling. ``bgp.cli`` names this ``lab`` group by its import path and
loads it only when ``calico-bgp lab ...`` runs (so the daemon's own commands never import ``labs``);
``python -m labs`` runs it on its own.

Owns: argument parsing and turning ``labs.lab`` results into output and exit codes. Progress (one line per
step), status tables and the reachability grid go to stdout; errors to stderr with exit code 1.

Complicating factors:
- ``down`` accepts a topology name or a lab name: by default a lab is named after its topology.
- ``exec`` passes everything after ``--`` through untouched, including options of the inner command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from labs import catalog, containerlab, dot, etcd_cluster, sessions_view
from labs import lab as labs_lab
from labs.ops import LabError


@click.group("lab")
def lab() -> None:
    """Multi-node labs in network namespaces, with real etcd and real calico-bgp daemons (needs root)."""


@lab.command()
@click.argument(
    "topology_name", metavar="[TOPOLOGY]", default="mesh", type=click.Choice(sorted(catalog.TOPOLOGIES))
)
@click.option("--nodes", type=click.IntRange(min=1), help="number of nodes (topology default if omitted)")
@click.option("--name", help="lab name (default: the topology name); [a-z0-9_]")
@click.option(
    "--etcd-endpoints", help="comma-separated URLs of an existing loopback etcd (default: start one)"
)
@click.option("--timeout", type=float, default=labs_lab.SESSION_TIMEOUT, show_default=True,
              help="seconds to wait for BGP sessions")  # fmt: skip
@click.option("--ipv6", is_flag=True, help="dual-stack: IPv6 node addresses, pool, blocks and pods too")
@click.option(
    "--etcd-members", type=click.IntRange(1, etcd_cluster.MAX_MEMBERS), default=1, show_default=True,
    help="run the lab's etcd as a cluster of this many members (one process each); every node's "
    "ETCD_ENDPOINTS lists all of them",
)
@click.option(
    "--etcd-tls", is_flag=True,
    help="the lab's etcd serves https only and requires client certificates (peers too), from a CA made "
    "for the lab; nodes get ETCD_CA_CERT_FILE, ETCD_CERT_FILE and ETCD_KEY_FILE",
)
@click.option(
    "--bfd", is_flag=True,
    help="BFD on every router-node session: the routers run FRR's bfdd, the nodes' BGPPeers get "
    "failureDetectionMode: BFDIfDirectlyConnected",
)
@click.option(
    "--prometheus", is_flag=True,
    help="run Debian's Prometheus on the host's loopback, scraping every node with "
    "monitoring/prometheus-rules.yml loaded; `lab show -o json` gives its URL",
)
def up(
    topology_name: str, nodes: int | None, name: str | None, etcd_endpoints: str | None, timeout: float,
    ipv6: bool, etcd_members: int, etcd_tls: bool, bfd: bool, prometheus: bool,
) -> None:
    """Bring a lab up, wait for BGP sessions, and check pod-to-pod reachability."""
    endpoints = [e.strip() for e in etcd_endpoints.split(",") if e.strip()] if etcd_endpoints else None
    try:
        ok = labs_lab.up(
            topology_name, nodes, name=name, etcd_endpoints=endpoints, timeout=timeout, ipv6=ipv6,
            etcd_members=etcd_members, etcd_tls=etcd_tls, bfd=bfd, prometheus=prometheus, echo=click.echo,
        )
    except (LabError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not ok:
        click.echo("lab is up but not healthy (see above); `calico-bgp lab down` removes it", err=True)
        sys.exit(1)


@lab.command()
@click.argument("name", metavar="[TOPOLOGY|NAME]", default="mesh")
def down(name: str) -> None:
    """Remove a lab: daemons, proxy, etcd (if the lab started it), namespaces, state."""
    try:
        labs_lab.down(name, echo=click.echo)
    except (LabError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@lab.command()
@click.argument("name", default="mesh")
@click.option("-o", "--output", type=click.Choice(["text", "json", "dot"]), default="text", show_default=True)
def show(name: str, output: str) -> None:
    """Show a lab's nodes, pods and routers (dot: its BGP sessions as a Graphviz graph, `| dot -Tsvg`)."""
    try:
        info = labs_lab.show(name)
        if output == "dot":
            reports, addresses = sessions_view.gather(name)
            click.echo(dot.render(info, reports, addresses), nl=False)
            return
    except (LabError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"lab {info['name']}  etcd {','.join(info['etcd_endpoints'])}")
    for m in info.get("etcd_members", []):
        click.echo(f"  etcd {m['name']:<12} {m['client_url']:<26} nodes: {m['node_url']:<26} pid {m['pid']}")
    for n in info["nodes"]:
        click.echo(f"  node {n['name']:<12} {n['ipv4']:<18} AS {n['asn']:<10} netns {n['netns']}"
                   + (f"  {n['ipv6']}" if n.get("ipv6") else ""))
    for p in info["pods"]:
        click.echo(f"  pod  {p['name']:<12} {p['ipv4']:<18} on {p['node']:<10} netns {p['netns']}"
                   + (f"  {p['ipv6']}" if p.get("ipv6") else ""))
    for r in info.get("routers", []):
        click.echo(f"  router {r['name']:<10} {r['kind']:<18} AS {r['asn']:<10} netns {r['netns']}")
    if info.get("prometheus"):
        click.echo(f"  prometheus {info['prometheus']}")


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--lab", "lab_name", default="mesh", show_default=True, help="lab name")
def exec_(node: str, argv: tuple[str, ...], lab_name: str) -> None:
    """Run a command in NODE's namespace, e.g. `calico-bgp lab exec node1 -- calico-bgp status`."""
    try:
        code = labs_lab.exec(lab_name, node, list(argv))
    except (LabError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@lab.command(name="containerlab")
@click.argument("topologies", nargs=-1, type=click.Choice(containerlab.CONTAINERLAB_TOPOLOGIES))
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=containerlab.DEFAULT_DIR,
              show_default=True, help="the containerlab directory")  # fmt: skip
@click.option("--check", is_flag=True, help="only report files that drifted from the definitions (exit 1)")
def containerlab_(topologies: tuple[str, ...], directory: Path, check: bool) -> None:
    """Regenerate containerlab/ (topologies, node scripts, FRR configs) from the lab definitions."""
    files = containerlab.render_all(topologies or containerlab.CONTAINERLAB_TOPOLOGIES)
    if check:
        stale = containerlab.drift(directory, files)
        for path in stale:
            click.echo(f"out of date: {directory / path}", err=True)
        sys.exit(1 if stale else 0)
    for path in containerlab.write(directory, files):
        click.echo(f"wrote {directory / path}")
