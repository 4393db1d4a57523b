"""Where a lab lives on disk and what it has created so far.

Stage: lab lifecycle bookkeeping, shared by ``labs.lab`` (writes it) and ``down`` (reads it to clean up).

Owns: the lab naming scheme (namespaces ``cbgp-<lab>-<node|pod|lan>``), the state directory
``/run/calico-bgp-lab/<lab>/`` and its ``state.json``. The file is rewritten atomically before each resource
is created, so an interrupted ``up`` leaves a record of everything that may exist.

Complicating factors:
- ``down`` must also work with no state file at all: it then finds namespaces by the name prefix. Lab
  names therefore may not contain "-", or lab "a" would claim the namespaces of lab "a-b".
- /run is a tmpfs: a reboot wipes the state together with the namespaces it describes, which is right.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_ROOT = Path("/run/calico-bgp-lab")
NETNS_PREFIX = "cbgp"
_LAB_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")


def check_name(lab: str) -> str:
    if not _LAB_NAME.fullmatch(lab):
        raise ValueError(f"lab name {lab!r}: use 1-32 of [a-z0-9_] (no '-': it separates namespace names)")
    return lab


def lab_dir(lab: str) -> Path:
    return STATE_ROOT / check_name(lab)


def marker(lab: str) -> str:
    """A string only command lines of this lab's processes contain (trailing '/': lab "a" vs "ab")."""
    return f"{lab_dir(lab)}/"


def netns_prefix(lab: str) -> str:
    return f"{NETNS_PREFIX}-{check_name(lab)}-"


def netns_name(lab: str, member: str) -> str:
    return netns_prefix(lab) + member


@dataclass
class NodeState:
    name: str
    netns: str
    ipv4: str  # CIDR
    asn: int
    run_dir: str
    log: str
    pid: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    ipv6: str = ""  # CIDR, "" for an IPv4-only node
    tunnel: str = ""  # its tunl0: "ipip" (a real one), "stand-in" (a veth: no traffic), "" (none)


@dataclass
class RouterState:
    name: str
    netns: str
    kind: str  # "frr" (the lab runs it) | "external" (a test or user runs a daemon in the namespace)
    asn: int
    ipv4: str  # CIDR of its first port
    run_dir: str
    pathspace: str = ""  # FRR's -N, for `vtysh -N`; "" unless kind "frr"
    pids: list[int] = field(default_factory=list)


@dataclass
class PodState:
    name: str
    node: str
    netns: str
    ipv4: str
    ifname: str  # the cali end in the node namespace
    ipv6: str = ""


@dataclass
class EtcdMemberState:
    """One member of a lab-owned etcd started as a cluster (``--etcd-members`` > 1, or ``--etcd-tls``)."""

    name: str
    pid: int
    client_url: str  # on the host's loopback
    node_url: str  # the same member as every node sees it, through the proxy
    data_dir: str
    log: str
    argv: list[str] = field(default_factory=list)  # to start it again the same way after a kill


@dataclass
class LabState:
    name: str
    topology: str = ""
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_pid: int = 0  # non-zero only when the lab started etcd itself
    etcd_data_dir: str = ""
    etcd_keys: list[str] = field(default_factory=list)  # what the lab wrote; removed from a user's etcd
    etcd_members: list[EtcdMemberState] = field(default_factory=list)  # see EtcdMemberState; else empty
    # --etcd-tls: the CA that signed the members' certificates and the client pair the lab and nodes use
    etcd_ca_file: str = ""
    etcd_cert_file: str = ""
    etcd_key_file: str = ""
    proxy_pid: int = 0
    proxy_ready: str = ""
    namespaces: list[str] = field(default_factory=list)  # creation order; deleted in reverse
    nodes: list[NodeState] = field(default_factory=list)
    pods: list[PodState] = field(default_factory=list)
    routers: list[RouterState] = field(default_factory=list)
    # --prometheus (labs.prometheus): its API on the host's loopback, and the forwarder it scrapes through
    prometheus_url: str = ""
    prometheus_pid: int = 0
    metrics_proxy_pid: int = 0

    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"lab {self.name!r} has no node {name!r} (nodes: {[n.name for n in self.nodes]})")

    def router(self, name: str) -> RouterState:
        for router in self.routers:
            if router.name == name:
                return router
        known = [r.name for r in self.routers]
        raise KeyError(f"lab {self.name!r} has no router {name!r} (routers: {known})")

    def pod(self, name: str) -> PodState:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(f"lab {self.name!r} has no pod {name!r}")

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, lab: str) -> LabState | None:
        try:
            raw = json.loads((lab_dir(lab) / "state.json").read_text())
        except FileNotFoundError:
            return None
        raw["nodes"] = [NodeState(**n) for n in raw.get("nodes", [])]
        raw["pods"] = [PodState(**p) for p in raw.get("pods", [])]
        raw["routers"] = [RouterState(**r) for r in raw.get("routers", [])]
        raw["etcd_members"] = [EtcdMemberState(**m) for m in raw.get("etcd_members", [])]
        return cls(**raw)
