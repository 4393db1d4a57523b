"""A lab-owned etcd cluster: where each member is seen from the nodes, TLS, which member leads, kill and
restart.

Stage: lab lifecycle support for ``lab up --etcd-members N`` and ``--etcd-tls`` (``labs.lab`` starts the
members through ``labs.etcd.start_cluster`` and records them in the state file); the member operations
serve the lab tests that take members away while the nodes run.

Owns: the node-side endpoint of each member (member i at 127.0.0.1:2379 + 10000 i inside every node
namespace, through ``labs.proxy``, so a node's ETCD_ENDPOINTS lists every member as on a real cluster),
the TLS settings of a lab (its certificates from ``labs.certs``: one CA, one server certificate for every
member, one client pair shared by the lab's own writes and the nodes, as calico-node's DaemonSet shares one
etcd secret), the leader lookup (``etcdctl endpoint status``), and stopping/starting one member by its
recorded PID and command line.

Complicating factors:
- The proxy keeps accepting on a dead member's node-side port and closes each connection at once: the
  nodes see a refused or reset etcd connection, as they would from a dead member, and move on to the next
  endpoint in their own client.
- A restarted member finds its data directory and rejoins with the same identity; the ``--initial-*``
  flags of its recorded command line are then ignored by etcd, so the same argv serves both starts.
- Leader lookup asks every live member: a member that is down or has no leader yet is simply not counted.
- TLS passes through the proxy untouched, so the server certificate must be valid for the address the
  nodes dial (127.0.0.1, their own loopback) as well as the host-side one (also 127.0.0.1).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from confgen.datastore.etcd_security import ENV_CA, ENV_CERT, ENV_KEY, EtcdSecurity
from labs import certs, etcd, process
from labs.state import EtcdMemberState, LabState

NODE_HOST = "127.0.0.1"
NODE_PORT = 2379
PORT_STEP = 10000  # members at 2379, 12379, 22379, ... on each node's loopback
MAX_MEMBERS = 7  # 2379 + 6 x 10000 is the last port below 65536
ETCDCTL = "/usr/bin/etcdctl"


class EtcdClusterError(RuntimeError):
    """A member operation failed; the message names the member and the reason."""


TLS_CLIENT = "calico"  # CN of the client certificate the lab and its nodes present


def make_tls(state: LabState) -> etcd.ServerTls:
    """Generate the lab's certificates under its state directory and record the client side in ``state``;
    returns the members' side."""
    made = certs.generate(state.dir / "etcd-tls", [etcd.HOST], client_names=(TLS_CLIENT,))
    cert, key = made.client(TLS_CLIENT)
    state.etcd_ca_file, state.etcd_cert_file, state.etcd_key_file = str(made.ca), str(cert), str(key)
    state.save()
    return etcd.ServerTls(str(made.ca), str(made.server_cert), str(made.server_key))


def security(state: LabState) -> EtcdSecurity | None:
    """How the lab's own client reaches its etcd: None for plain http."""
    if not state.etcd_ca_file:
        return None
    files = (state.etcd_ca_file, state.etcd_cert_file, state.etcd_key_file)
    ca, cert, key = (Path(f) for f in files)
    return EtcdSecurity(ca_file=ca, cert_file=cert, key_file=key)


def node_env(state: LabState) -> dict[str, str]:
    """calico-node's etcd variables for a node of this lab (its endpoints through the proxy, TLS files)."""
    env = {"ETCD_ENDPOINTS": ",".join(node_endpoints(state))}
    if state.etcd_ca_file:
        env |= {ENV_CA: state.etcd_ca_file, ENV_CERT: state.etcd_cert_file, ENV_KEY: state.etcd_key_file}
    return env


def node_url(index: int, scheme: str = "http") -> str:
    """The URL by which every node reaches member ``index`` (0-based) through the lab's proxy."""
    if not 0 <= index < MAX_MEMBERS:
        raise ValueError(f"etcd member index {index} out of range (a lab has 1 to {MAX_MEMBERS} members)")
    return f"{scheme}://{NODE_HOST}:{NODE_PORT + PORT_STEP * index}"


def node_endpoints(state: LabState) -> list[str]:
    """The ETCD_ENDPOINTS a node of this lab gets: every member's node-side URL, or the single proxied one."""
    if state.etcd_members:  # node_url carries the scheme: https:// under --etcd-tls
        return [m.node_url for m in state.etcd_members]
    return [f"http://{NODE_HOST}:{NODE_PORT}"]


def member(state: LabState, name: str) -> EtcdMemberState:
    for m in state.etcd_members:
        if m.name == name:
            return m
    raise EtcdClusterError(
        f"lab {state.name} has no etcd member {name!r} (members: {[m.name for m in state.etcd_members]})"
    )


def etcdctl_tls_args(state: LabState) -> list[str]:
    if not state.etcd_ca_file:
        return []
    return ["--cacert", state.etcd_ca_file, "--cert", state.etcd_cert_file, "--key", state.etcd_key_file]


def leader(state: LabState, timeout: float = 5.0) -> EtcdMemberState:
    """The member that leads right now, as the live members report it."""
    live = [m for m in state.etcd_members if process.alive(m.pid)]
    if not live:
        raise EtcdClusterError(f"lab {state.name}: no etcd member runs")
    argv = [ETCDCTL, "--endpoints", ",".join(m.client_url for m in live), *etcdctl_tls_args(state)]
    argv += ["--command-timeout", f"{timeout:g}s", "endpoint", "status", "-w", "json"]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout + 5, env={"ETCDCTL_API": "3"}, check=False
    )
    try:
        statuses = json.loads(result.stdout or "[]")
    except ValueError:
        statuses = []
    by_id = {}
    leaders = set()
    for entry in statuses:
        status = entry.get("Status", {})
        by_id[status.get("header", {}).get("member_id")] = entry.get("Endpoint")
        if status.get("leader"):
            leaders.add(status["leader"])
    if len(leaders) != 1 or next(iter(leaders)) not in by_id:
        raise EtcdClusterError(
            f"lab {state.name}: no single leader among the live members ({result.stderr.strip()[-300:]})"
        )
    url = by_id[next(iter(leaders))]
    return next(m for m in live if m.client_url == url)


def kill_member(state: LabState, name: str, timeout: float = 10.0) -> None:
    """SIGKILL one member, as a crash would, and wait until it is gone."""
    target = member(state, name)
    if not process.owned(target.pid, target.data_dir):
        raise EtcdClusterError(f"lab {state.name}: etcd member {name} (pid {target.pid}) does not run")
    process.kill(target.pid)
    deadline = time.monotonic() + timeout
    while process.alive(target.pid):
        if time.monotonic() > deadline:
            raise EtcdClusterError(f"lab {state.name}: etcd member {name} ({target.pid}) outlived SIGKILL")
        time.sleep(0.02)


def start_member(state: LabState, name: str, timeout: float = 30.0) -> float:
    """Start a killed member again with its recorded command line; seconds until it serves reads."""
    target = member(state, name)
    if process.alive(target.pid):
        raise EtcdClusterError(f"lab {state.name}: etcd member {name} still runs (pid {target.pid})")
    started = time.monotonic()
    target.pid = process.spawn(target.argv, Path(target.log))
    state.save()
    etcd.wait_healthy([target.client_url], timeout, pid=target.pid, security=security(state))
    return time.monotonic() - started
