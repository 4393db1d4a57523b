"""Lab lifecycle: bring a topology up in network namespaces with real etcd and real daemons, tear it down.

Stage: the top of the lab tooling (``labs.cli`` and the lab tests call it). It builds, from a
``labs.topology.Topology``: an etcd (``labs.etcd``), a switch namespace with a bridge, one namespace per node
cabled to it, the Calico resources in etcd, the etcd forwarder (``labs.proxy``), the pods (``labs.pods``) and
one ``calico-bgp node run`` per node; then waits for the BGP sessions and checks pod-to-pod reachability.
A node also gets its IPv6 address and forwarding when the topology is dual-stack (``labs.ipv6``), its static
routes, and ``tunl0`` when a pool uses IPIP (``labs.tunnel``, as Felix would create it).

Owns: the order of those steps and the state file (``labs.state``) that records each resource before it is
created. Runtime operations on a running lab (exec, pods, affinities, ping) live in ``labs.ops``. It stays
one module past ~400 lines: ``up`` and ``down`` (and the node stop/start/crash helpers the fault tests use)
are the two directions through the same recorded resources, and they stay in step by sitting side by side.

Complicating factors:
- ``down`` must clean up after anything: a finished ``up``, a failed one, an interrupted one (state file
  with resources that may or may not exist), or none at all (no state file). It therefore works from the
  union of the state file and what it finds: namespaces by name prefix, processes inside them by
  ``ip netns pids``, host-side helpers (etcd, proxy) by a marker in their command line.
- Daemons, etcd and the proxy must outlive the ``lab up`` command: they run in their own sessions and their
  PIDs are recorded; PIDs are only signalled while their command line still carries the lab's marker.
- Nothing of the lab lives in the host namespace except etcd and the proxy on loopback.
- With the user's etcd (``--etcd-endpoints``) the lab's keys are recorded and deleted again by ``down``;
  a lab-owned etcd just goes away with its data directory.
- A lab-owned etcd of several members (``etcd_members``), or one serving TLS (``etcd_tls``), is reached
  by the nodes through one proxy listener per member (``labs.etcd_cluster``), so failover between members
  happens in the nodes' client and TLS runs end to end between node and member.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labs import bfd as lab_bfd
from labs import (
    catalog,
    certs,
    etcd,
    etcd_cluster,
    netns,
    ops,
    pods,
    process,
    report,
    routers,
    topology,
    tunnel,
)
from labs import ipv6 as dual_stack
from labs import prometheus as lab_prometheus
from labs.ops import LabError
from labs.state import (
    EtcdMemberState,
    LabState,
    NodeState,
    RouterState,
    check_name,
    lab_dir,
    marker,
    netns_name,
    netns_prefix,
)

BRIDGE = topology.SWITCH_BRIDGE
NODE_IFNAME = "eth0"
SESSION_TIMEOUT = 60.0
# Open files the lab's helpers need (inherited from this process): the etcd proxy holds a listener per node
# and two sockets per daemon connection, a benchmark watching the lab two netlink sockets per node.
FDS_BASE = 256
FDS_PER_MEMBER = 16
DAEMON_STOP_TIMEOUT = 10.0
NODE_PACKAGES = ("calico_bgp", "bgp", "confgen", "routes", "labs")  # what the daemons and the proxy import

Echo = Callable[[str], None]
# What a failed build step can raise; each carries its own message (command, stderr, endpoint).
BUILD_ERRORS = (
    LabError,
    netns.NetnsError,
    routers.RouterError,
    etcd.EtcdUnavailable,
    etcd_cluster.EtcdClusterError,
    certs.CertError,
    OSError,
    ValueError,
    subprocess.SubprocessError,
)


def _quiet(_: str) -> None:
    pass


def resolve(topology_name: str, nodes: int | None = None) -> topology.Topology:
    try:
        builder = catalog.TOPOLOGIES[topology_name]
    except KeyError:
        raise LabError(
            f"unknown topology {topology_name!r} (known: {', '.join(catalog.TOPOLOGIES)})"
        ) from None
    return builder() if nodes is None else builder(nodes=nodes)


def up(
    topo: topology.Topology | str,
    nodes: int | None = None,
    *,
    name: str | None = None,
    etcd_endpoints: list[str] | None = None,
    ipv6: bool = False,
    timeout: float = SESSION_TIMEOUT,
    etcd_timeout: float = 10.0,
    etcd_members: int = 1,
    etcd_tls: bool = False,
    bfd: bool = False,
    prometheus: bool = False,
    echo: Echo = _quiet,
) -> bool:
    """Build the lab, wait for its sessions, check reachability. Returns False if any check failed; raises
    LabError if the lab could not be built (``down`` cleans up either way). ``etcd_members`` > 1 starts
    the lab's etcd as a cluster of that many members; ``etcd_tls`` makes it serve https only, to clients
    (and peers) with a certificate from the lab's CA. ``bfd`` runs BFD on every router-node session
    (``labs.bfd``). ``prometheus`` starts a Prometheus scraping every node (``labs.prometheus``)."""
    if not 1 <= etcd_members <= etcd_cluster.MAX_MEMBERS:
        raise LabError(f"etcd members: {etcd_members} (a lab runs 1 to {etcd_cluster.MAX_MEMBERS})")
    if etcd_endpoints and (etcd_members != 1 or etcd_tls):
        raise LabError("--etcd-members and --etcd-tls shape the lab's own etcd: drop --etcd-endpoints")
    if isinstance(topo, str):
        topo = resolve(topo, nodes)
    try:
        topo = dual_stack.with_ipv6(topo) if ipv6 else topo
        topo = lab_bfd.with_bfd(topo) if bfd else topo
    except ValueError as exc:
        raise LabError(str(exc)) from exc
    lab = check_name(name or topo.name)
    members = len(topo.nodes) + len(topo.routers) + len(topo.pods)
    wanted = FDS_BASE + FDS_PER_MEMBER * members
    if (limit := process.raise_fd_limit(wanted)) < wanted:
        echo(f"open files: limit {limit} (ulimit -n), {wanted} wanted for {members} nodes, routers and pods")
    if LabState.load(lab) is not None or netns.list_netns(netns_prefix(lab)):
        raise LabError(f"lab {lab!r} already exists; run `calico-bgp lab down {lab}` first")
    state = LabState(name=lab, topology=topo.name)
    state.save()
    try:
        _build(state, topo, etcd_endpoints, etcd_timeout, echo, etcd_members, etcd_tls)
        if prometheus:  # before the wait for sessions, so that it records them coming up
            lab_prometheus.start(state, echo)
    except BUILD_ERRORS as exc:
        raise LabError(f"lab {lab}: {exc}\n(clean up with `calico-bgp lab down {lab}`)") from exc
    return check(lab, topo, timeout=timeout, echo=echo)


def _build(
    state: LabState,
    topo: topology.Topology,
    endpoints: list[str] | None,
    etcd_timeout: float,
    echo: Echo,
    members: int = 1,
    tls: bool = False,
) -> None:
    logs = state.dir / "logs"
    if endpoints:
        state.etcd_endpoints = list(endpoints)
        echo(f"etcd: using {','.join(endpoints)}")
        state.save()
        _build_network(state, topo, echo)
    elif members > 1 or tls:
        _start_etcd_cluster(state, members, tls, echo)
        state.save()
        _build_network(state, topo, echo)
    else:
        # etcd's start (a process, then reads until it serves: ~0.5 s) runs while the namespaces are built.
        with ThreadPoolExecutor(1, thread_name_prefix="etcd-start") as pool:
            starting = pool.submit(etcd.start, state.dir, logs / "etcd.log")
            try:
                _build_network(state, topo, echo)
            finally:  # also after a failed build: down finds etcd through the state file
                server = starting.result()
                state.etcd_endpoints = [server.client_url]
                state.etcd_pid, state.etcd_data_dir = server.pid, server.data_dir
                state.save()
                echo(f"etcd: started {server.client_url} (pid {server.pid})")

    items = topology.calico_resources(topo)
    security = etcd_cluster.security(state)
    etcd.wait_healthy(state.etcd_endpoints, timeout=etcd_timeout, security=security)
    state.etcd_keys = [key for key, _ in items]
    state.save()
    etcd.put_all(state.etcd_endpoints, items, security=security)
    echo(f"etcd: wrote {len(items)} Calico resources")

    process.ensure_bytecode(NODE_PACKAGES)  # before the first of many interpreters that import them
    _start_proxy(state, logs / "proxy.log")
    node_etcd = ",".join(etcd_cluster.node_endpoints(state))
    echo(f"proxy: etcd at {node_etcd} in every node namespace (pid {state.proxy_pid})")

    for pod in topo.pods:
        ops.add_pod(state.name, pod.node, pod.name, pod.ipv4, state=state, ipv6=pod.ipv6)
        echo(f"pod {pod.name}: {pod.ipv4} on {pod.node} ({pods.cali_ifname(pod.name)})")

    # Routers before the nodes' daemons: a node's first connect then finds its ToR listening.
    for router in topo.routers:
        _add_router(state, router)
        echo(f"router {router.name} ({router.kind}, AS {router.asn}): {netns_name(state.name, router.name)}")

    for node in state.nodes:
        _start_daemon(state, node)
        echo(f"daemon {node.name}: pid {node.pid}, log {node.log}")


def _build_network(state: LabState, topo: topology.Topology, echo: Echo) -> None:
    """The switch, every node's namespace and cable, and the pinned neighbours of a large lab."""
    lan = netns_name(state.name, topology.SWITCH)
    _record_netns(state, lan)
    netns.add_netns(lan)
    netns.add_bridge(lan, BRIDGE)
    echo(f"switch: {lan} bridge {BRIDGE}")
    for segment in topo.segments:
        netns.add_bridge(lan, segment)
        echo(f"switch: {lan} bridge {segment}")

    # A process per `ip` command was most of a large lab's build (~4 ms each, ten per node): the switch
    # side of every node's cable goes in one `ip -batch`, each node's own side in one more.
    for node in topo.nodes:
        _add_node_netns(state, topo, node)
    netns.ip_batch(lan, [line for i, node in enumerate(topo.nodes) for line in _switch_port(state, node, i)])
    pins = _pin_node_neighbours(state, topo)
    for node in topo.nodes:
        _configure_node(state, topo, node, pins.get(node.name, []))
        echo(f"node {node.name}: {netns_name(state.name, node.name)} {NODE_IFNAME} {node.ipv4}")
    if pinned := sum(len(lines) for lines in pins.values()):
        echo(f"neighbours: {pinned} static entries between nodes (large lab; see _pin_node_neighbours)")


# The kernel's ARP and NDP caches are one table each for ALL namespaces of the host, and dynamic entries
# beyond net.ipv4.neigh.default.gc_thresh3 (1024 by default) are refused: a 50-node mesh needs 50 x 49
# entries, and its sessions then fail with unanswered SYNs ("neighbor table overflow" in dmesg), which no
# real cluster sees (every node has its own kernel). Permanent entries are exempt from that limit (Linux
# 4.20+), so large labs pin node-to-node neighbours instead of changing the host's sysctls. Small labs keep
# ARP, as real nodes do.
PIN_NEIGHBOURS_ABOVE = 256  # node-to-node entries of a lab (n x (n - 1)); 17+ nodes


def node_mac(index: int) -> str:
    """The MAC of the index-th node's eth0 (locally administered), fixed so that neighbours can be pinned
    without reading them back: a lab's nodes share one L2 segment per lab, never with another lab."""
    return f"02:cb:00:00:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}"


def _pin_node_neighbours(state: LabState, topo: topology.Topology) -> dict[str, list[str]]:
    """node -> the `ip` commands that pin its node-to-node neighbours; none for small labs."""
    nodes = list(topo.nodes)
    if len(nodes) * (len(nodes) - 1) <= PIN_NEIGHBOURS_ABOVE:
        return {}
    macs = {n.name: node_mac(i) for i, n in enumerate(nodes)}
    pins: dict[str, list[str]] = {}
    for node in nodes:
        lines = pins.setdefault(node.name, [])
        for other in nodes:
            if other is node or other.segment != node.segment:
                continue
            for address in (other.address, other.address6):
                if address:
                    mac = macs[other.name]
                    lines.append(f"neighbour replace {address} lladdr {mac} dev {NODE_IFNAME} nud permanent")
    return pins


def _record_netns(state: LabState, ns: str) -> None:
    if ns not in state.namespaces:
        state.namespaces.append(ns)
    state.save()


def _add_node_netns(state: LabState, topo: topology.Topology, node: topology.LabNode) -> None:
    ns = netns_name(state.name, node.name)
    run_dir = state.dir / "run" / node.name
    state.nodes.append(
        NodeState(
            name=node.name,
            netns=ns,
            ipv4=node.ipv4,
            asn=topo.node_asn(node.name),
            run_dir=str(run_dir),
            log=str(state.dir / "logs" / f"{node.name}.log"),
            labels=dict(node.labels),
            ipv6=node.ipv6,
        )
    )
    _record_netns(state, ns)
    netns.add_netns(ns, loopback_up=False)  # lo comes up in _configure_node's batch


def _switch_port(state: LabState, node: topology.LabNode, index: int) -> list[str]:
    """The switch side of the node's cable: its port (named after the node, <= 15 chars, checked by
    topology.validate) on its segment's bridge, and the node's end moved into the node's namespace."""
    ns = netns_name(state.name, node.name)
    return [
        f"link add {node.name} type veth peer name {NODE_IFNAME} address {node_mac(index)} netns {ns}",
        f"link set {node.name} master {node.segment or BRIDGE}",
        f"link set {node.name} up",
    ]


def _configure_node(
    state: LabState, topo: topology.Topology, node: topology.LabNode, pins: list[str]
) -> None:
    ns = netns_name(state.name, node.name)
    lines = ["link set lo up", f"address add {node.ipv4} dev {NODE_IFNAME}", f"link set {NODE_IFNAME} up"]
    if node.ipv6:
        lines.append(f"address add {node.ipv6} dev {NODE_IFNAME} nodad")
    # e.g. the other subnet behind a router (crosssubnet)
    lines += [f"route replace {spec} proto static" for spec in node.routes]
    netns.ip_batch(ns, lines + pins)
    netns.set_sysctl(ns, "net.ipv4.ip_forward", 1)
    if node.ipv6:
        netns.set_sysctl(ns, "net.ipv6.conf.all.forwarding", 1)
    if any(p.ipip_mode != "Never" for p in topo.pools):  # Felix creates tunl0 wherever IPIP is used
        state.node(node.name).tunnel = tunnel.ensure_tunl0(ns, node.block)
        state.save()
    (state.dir / "run" / node.name).mkdir(parents=True, exist_ok=True)


def _add_router(state: LabState, router: topology.LabRouter) -> None:
    """The router's namespace, one port per segment (eth<i>, forwarding on), and FRR for kind "frr"."""
    ns = netns_name(state.name, router.name)
    run_dir = state.dir / "run" / router.name
    record = RouterState(router.name, ns, router.kind, router.asn, router.ports[0].ipv4, str(run_dir))
    state.routers.append(record)
    _record_netns(state, ns)
    netns.add_netns(ns)
    lan = netns_name(state.name, topology.SWITCH)
    for index, port in enumerate(router.ports):
        switch_port, ifname = router.port_ifname(index), f"eth{index}"
        netns.add_veth(lan, switch_port, ns, ifname)
        netns.set_master(lan, switch_port, port.segment or BRIDGE)
        netns.link_up(lan, switch_port)
        netns.add_address(ns, ifname, port.ipv4)
        if port.ipv6:
            netns.ip(ns, "address", "add", port.ipv6, "dev", ifname, "nodad")
        netns.link_up(ns, ifname)
    netns.set_sysctl(ns, "net.ipv4.ip_forward", 1)
    netns.set_sysctl(ns, "net.ipv6.conf.all.forwarding", 1)
    for spec in router.routes:  # a fabric that knows the pod blocks (crosssubnet)
        netns.replace_route(ns, *spec.split(), "proto", "static")
    run_dir.mkdir(parents=True, exist_ok=True)
    if router.kind == "frr":
        record.pathspace = ns
        state.save()
        config = routers.frr_config(router, log_file=str(run_dir / "frr.log"))
        record.pids = routers.start_frr(ns, run_dir, config).pids
    state.save()


def _start_etcd_cluster(state: LabState, members: int, tls: bool, echo: Echo) -> None:
    logs = [state.dir / "logs" / f"etcd{i + 1}.log" for i in range(members)]
    server_tls = etcd_cluster.make_tls(state) if tls else None
    if tls:
        echo(f"etcd: TLS with client certificates (CA {state.etcd_ca_file})")
    servers = etcd.start_cluster(state.dir, logs, tls=server_tls, security=etcd_cluster.security(state))
    scheme = "https" if tls else "http"
    state.etcd_members = [
        EtcdMemberState(
            s.name, s.pid, s.client_url, etcd_cluster.node_url(i, scheme), s.data_dir, str(log), list(s.argv)
        )
        for i, (s, log) in enumerate(zip(servers, logs, strict=True))
    ]
    state.etcd_endpoints = [s.client_url for s in servers]
    state.save()
    for s in servers:
        echo(f"etcd: started member {s.name} {s.client_url} (pid {s.pid})")


def _start_proxy(state: LabState, log: Path) -> None:
    ready = state.dir / "proxy.ready"
    ready.unlink(missing_ok=True)
    state.proxy_ready = str(ready)
    argv = [sys.executable, "-m", "labs.proxy", "--ready-file", str(ready)]
    argv += [arg for n in state.nodes for arg in ("--netns", n.netns)]
    if state.etcd_members:  # one listener per member, each reaching that member only
        argv += [arg for m in state.etcd_members for arg in ("--forward", f"{m.node_url}={m.client_url}")]
    else:
        argv += [arg for e in state.etcd_endpoints for arg in ("--target", e)]
    state.proxy_pid = process.spawn(argv, log)
    state.save()
    deadline = time.monotonic() + 10.0
    while not ready.exists():
        if not process.alive(state.proxy_pid) or time.monotonic() > deadline:
            raise LabError(f"etcd proxy did not come up:\n{process.tail(log)}")
        time.sleep(0.05)


def _start_daemon(state: LabState, node: NodeState) -> None:
    argv = [ops.venv_tool("calico-bgp"), "node", "run", "--node", node.name]
    etcd_env = etcd_cluster.node_env(state)  # ETCD_ENDPOINTS, and the TLS files under --etcd-tls
    argv += ["--etcd-endpoints", etcd_env["ETCD_ENDPOINTS"], "--run-dir", node.run_dir]
    env = ops.node_env(node) | {"NODENAME": node.name} | etcd_env
    # BGP passwords (BGPPeer secretKeyRef) are read from files, one directory per secret (ops.set_secret).
    env["CALICO_BGP_SECRETS_DIR"] = str(ops.secrets_dir(state))
    node.pid = process.spawn(netns.exec_argv(node.netns, argv), Path(node.log), env=env)
    state.save()


def check(
    lab: str, topo: topology.Topology, *, timeout: float = SESSION_TIMEOUT, echo: Echo = _quiet
) -> bool:
    """Wait for the sessions, print every node's status and the pod reachability grid; True if all good."""
    state = ops.load(lab)
    echo(f"sessions: waiting up to {timeout:.0f} s for every node's peers to be Established")
    started = time.monotonic()
    ready, reasons = ops.wait_sessions(
        state, {n.name: topo.expected_peers(n.name) for n in state.nodes}, timeout
    )
    if ready:
        echo(f"sessions: all Established after {time.monotonic() - started:.1f} s")
    else:
        for node, reason in sorted(reasons.items()):
            echo(f"sessions: {node}: {reason}")
    for router in (r for r in state.routers if r.kind == "frr"):
        left = max(timeout - (time.monotonic() - started), 1.0)
        up_, reason = ops.wait_router_sessions(router, left)
        echo(f"router {router.name}: {reason}")
        ready = ready and up_
    for node in state.nodes:
        echo(f"--- {node.name} ({node.ipv4}) ---")
        echo(ops.status_text(node))
    reachable = ops.ping_matrix(state)
    dual = any(p.ipv6 for p in state.pods)
    echo(("IPv4\n" if dual else "") + report.render_matrix([(p.name, p.ipv4) for p in state.pods], reachable))
    if dual:
        echo("IPv6\n" + report.render_matrix([(p.name, p.ipv6) for p in state.pods if p.ipv6], reachable))
    unprovable = sum(1 for ok in reachable.values() if ok is None)
    failed = sum(1 for ok in reachable.values() if ok is False)
    provable = len(reachable) - unprovable
    echo(f"reachability: {provable - failed}/{provable} pod pairs reached"
         + (f", {unprovable} not provable here (through a stand-in tunl0)" if unprovable else ""))
    return ready and failed == 0


def down(lab: str, echo: Echo = _quiet) -> None:
    """Remove everything of the lab, whatever state it is in; idempotent."""
    state = LabState.load(lab) or LabState(name=check_name(lab))
    lab_prometheus.stop(state)
    daemons = [(n.pid, n.run_dir) for n in state.nodes if n.pid]
    for pid in process.stop_all(daemons, DAEMON_STOP_TIMEOUT):
        echo(f"daemon pid {pid}: did not stop within {DAEMON_STOP_TIMEOUT:.0f} s, killed")
    if state.proxy_pid:
        process.stop(state.proxy_pid, state.proxy_ready)
    if state.etcd_pid:
        etcd.stop(state.etcd_pid, state.etcd_data_dir)
    elif state.etcd_members:
        process.stop_all([(m.pid, m.data_dir) for m in state.etcd_members])
    elif state.etcd_keys:
        # The user's etcd outlives the lab: take our resources out so the next lab starts clean.
        try:
            etcd.delete_all(state.etcd_endpoints, state.etcd_keys)
        except etcd.EtcdUnavailable as exc:
            echo(f"etcd: could not remove the lab's keys ({exc}); continuing")
    # Helpers whose PID never reached the state file (interrupted up), recognised by the lab's marker in
    # their arguments; the program check spares anything else that merely names a lab file (a `tail -f`).
    mark = marker(lab)
    leftovers = [(pid, mark) for pid in process.find(mark) if _lab_program(process.argv(pid))]
    process.stop_all(leftovers, timeout=5.0)

    found = set(netns.list_netns(netns_prefix(lab)))
    # Pods first, then nodes, then the switch: the reverse of creation, unknown leftovers before all.
    order = sorted(found - set(state.namespaces)) + [n for n in reversed(state.namespaces) if n in found]
    for ns in order:
        for pid in netns.pids(ns):
            process.kill(pid)
    errors = []
    for ns in order:
        try:
            netns.delete_netns(ns)
        except netns.NetnsError as exc:
            errors.append(str(exc))
    routers.remove_pathspaces(netns_prefix(lab))
    if errors:
        raise LabError(f"lab {lab}: could not delete namespaces: {'; '.join(errors)}")
    shutil.rmtree(lab_dir(lab), ignore_errors=True)
    echo(f"lab {lab}: down ({len(order)} namespaces removed)")


def _lab_program(argv: list[str]) -> bool:
    programs = {os.path.basename(arg) for arg in argv[:2]}
    known = {os.path.basename(etcd.ETCD_BIN), "calico-bgp", lab_prometheus.BINARY}
    return bool(programs & known) or "labs.proxy" in argv or "labs.metrics_proxy" in argv


def show(lab: str) -> dict[str, object]:
    state = ops.load(lab)
    return {
        "name": state.name,
        "etcd_endpoints": state.etcd_endpoints,
        "etcd_members": [
            {"name": m.name, "client_url": m.client_url, "node_url": m.node_url, "pid": m.pid}
            for m in state.etcd_members
        ],
        "nodes": [
            {"name": n.name, "netns": n.netns, "ipv4": n.ipv4, "ipv6": n.ipv6, "asn": n.asn,
             "labels": n.labels, "tunnel": n.tunnel}
            for n in state.nodes
        ],
        "pods": [
            {"name": p.name, "node": p.node, "netns": p.netns, "ipv4": p.ipv4, "ipv6": p.ipv6}
            for p in state.pods
        ],
        "routers": [{"name": r.name, "netns": r.netns, "kind": r.kind, "asn": r.asn} for r in state.routers],
        "prometheus": state.prometheus_url or None,  # lab up --prometheus
    }


def stop_node(lab: str, node: str, timeout: float = DAEMON_STOP_TIMEOUT) -> None:
    """Stop one node's daemon the way a restart would (SIGTERM); its kernel routes stay, as with BIRD."""
    state = ops.load(lab)
    target = ops.node_state(state, node)
    if target.pid:
        process.stop(target.pid, target.run_dir, timeout)
    target.pid = 0
    state.save()


def start_node(lab: str, node: str) -> int:
    """Start one node's daemon again (after ``stop_node``); returns its PID."""
    state = ops.load(lab)
    target = ops.node_state(state, node)
    if target.pid and process.alive(target.pid):
        raise LabError(f"lab {lab}: the daemon of {node} still runs (pid {target.pid})")
    _start_daemon(state, target)
    return target.pid


def crash_node(lab: str, node: str, timeout: float = DAEMON_STOP_TIMEOUT) -> None:
    """SIGKILL one node's daemon, as a crash or an OOM kill would, and wait until its ExaBGP and API process
    followed it (they die with it: PDEATHSIG, closed pipes), so ``start_node`` finds port 179 free. The
    kernel routes stay: nothing gets a chance to clean up, which is the point."""
    state = ops.load(lab)
    target = ops.node_state(state, node)
    if target.pid and process.owned(target.pid, target.run_dir):
        process.kill(target.pid)
    deadline = time.monotonic() + timeout
    while netns.pids(target.netns):
        if time.monotonic() > deadline:
            left = {pid: process.cmdline(pid) for pid in netns.pids(target.netns)}
            raise LabError(f"lab {lab}: {node}'s processes outlived its daemon: {left}")
        time.sleep(0.02)
    target.pid = 0
    state.save()


def restart_node(lab: str, node: str, *, crash: bool = False) -> int:
    """Restart one node's daemon: SIGTERM (or a SIGKILL crash), then start it the way ``up`` does."""
    if crash:
        crash_node(lab, node)
    else:
        stop_node(lab, node)
    return start_node(lab, node)


# Re-exported so callers need one module for a running lab (`exec` is the lab verb, as on the command line).
exec = ops.exec
add_pod = ops.add_pod
delete_pod = ops.delete_pod
set_affinity = ops.set_affinity
delete_affinity = ops.delete_affinity
ping = ops.ping
