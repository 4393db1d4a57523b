"""A test stand-in for containerlab: deploys a topology of ``kind: linux`` nodes with podman.

Stage: test harness only (tests/container), not a product feature. containerlab needs Docker, which the
machines that run this suite do not have; this does the part of ``containerlab deploy`` that the generated
topologies (``containerlab/*.clab.yml``) rely on, so the files and the node image are exercised the way an
operator runs them.

Owns: reading a topology file (``load``, pure) and one deployment's lifetime (``Deployment``): its
management network, one container per node, one veth pair per link, the nodes' ``exec`` commands, and the
removal of all of it.

What a deployment does, in containerlab's order:
- management network: every container gets eth0 on one bridge, at its ``mgmt-ipv4`` or else the lowest
  free host address of ``mgmt.ipv4-subnet`` (the gateway, the first host, is the bridge's own address);
- one container per node from ``image``, named ``<prefix>-<node>``, hostname the node's name, privileged
  (containerlab's default for ``linux``), with ``binds`` (sources relative to the topology file), ``env``
  and ``cmd`` (split as a shell would; it replaces the image's command);
- once every container runs: a veth pair per ``links`` entry, each end created inside its container's
  network namespace under the endpoint's interface name, both up, MTU 9500 (containerlab's default);
- then each node's ``exec`` entries, in file order; one that fails fails the deployment.
Node settings are inherited as containerlab does: ``defaults``, then ``kinds.<kind>``, then
``groups.<group>``, then the node; ``env`` maps merge, every other key is replaced by the nearer level.

Complicating factors:
- podman on these machines needs ``--runtime runc --cgroup-manager cgroupfs`` and explicit rlimits (crun
  and the default rlimits are refused by the kernel's setup).
- containerlab's management network exists before a container's command starts; ``--network none`` would
  leave eth0 to be added afterwards. So each container joins a network namespace made beforehand (``ip
  netns add``) that already holds its eth0; the bridge sits in one more namespace of its own. Nothing is
  added to the host's network namespace, and no NAT or route leaves the deployment.
- Keys this stand-in does not implement (another kind, ``ports``, ``startup-config``, ...) are refused
  with the node and key named, rather than silently ignored.
- ``destroy`` works on a partial deployment and never raises: containers first, then namespaces (which
  take their veths with them).
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
LINK_MTU = 9500
TEST_LABEL = "calico-bgp-test=clab-deploy"  # finds stragglers: podman ps -a --filter label=...
NODE_KEYS = {"kind", "group", "image", "binds", "env", "cmd", "exec", "mgmt-ipv4"}
INHERITED_KEYS = NODE_KEYS - {"group", "mgmt-ipv4"}


class TopologyError(ValueError):
    """The topology file asks for something this stand-in cannot do, or is malformed."""


@dataclass(frozen=True)
class Node:
    name: str
    image: str
    mgmt_ipv4: str
    binds: tuple[str, ...] = ()  # "<absolute source>:<destination>[:<options>]"
    env: tuple[tuple[str, str], ...] = ()
    cmd: tuple[str, ...] = ()  # empty: the image's own command
    exec: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Link:
    a: tuple[str, str]  # (node, interface)
    b: tuple[str, str]


@dataclass(frozen=True)
class Topology:
    name: str
    mgmt_subnet: ipaddress.IPv4Network
    gateway: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]


def _endpoint(text: object, nodes: set[str]) -> tuple[str, str]:
    node, sep, ifname = str(text).partition(":")
    if not sep or node not in nodes or not ifname or len(ifname) > 15:
        raise TopologyError(f"link endpoint {text!r}: want <node>:<interface> with a known node")
    return node, ifname


def _bind(spec: str, base: Path, node: str) -> str:
    source, sep, rest = spec.partition(":")
    if not sep:
        raise TopologyError(f"node {node}: bind {spec!r} has no destination")
    path = (base / source).resolve()
    if not path.exists():
        raise TopologyError(f"node {node}: bind source {path} does not exist")
    return f"{path}:{rest}"


def load(path: Path) -> Topology:
    """Parse a topology file into what ``Deployment`` needs; refuses what it does not implement."""
    doc = yaml.safe_load(path.read_text())
    topo = doc["topology"]
    subnet = ipaddress.IPv4Network(doc.get("mgmt", {}).get("ipv4-subnet", "172.20.20.0/24"))
    hosts = iter(subnet.hosts())
    gateway = next(hosts)
    levels = [topo.get("defaults", {}), topo.get("kinds", {}), topo.get("groups", {})]
    raw = topo.get("nodes", {})
    reserved = {ipaddress.IPv4Address(n["mgmt-ipv4"]) for n in raw.values() if n and "mgmt-ipv4" in n}
    nodes = []
    for name, own in raw.items():
        own = own or {}
        unknown = set(own) - NODE_KEYS
        if unknown:
            raise TopologyError(f"node {name}: keys {sorted(unknown)} are not handled by this stand-in")
        group = levels[2].get(own["group"], {}) if "group" in own else {}
        kind = own.get("kind", group.get("kind", levels[0].get("kind", "linux")))
        merged: dict = {}
        for level in (levels[0], levels[1].get(kind, {}), group, own):
            for key, value in level.items():
                if key == "env":
                    merged["env"] = {**merged.get("env", {}), **value}
                elif key in INHERITED_KEYS or level is own:
                    merged[key] = value
        if kind != "linux":
            raise TopologyError(f"node {name}: kind {kind!r} is not handled by this stand-in (linux only)")
        if "image" not in merged:
            raise TopologyError(f"node {name}: no image")
        if "mgmt-ipv4" in merged:
            address = ipaddress.IPv4Address(merged["mgmt-ipv4"])
            if address not in subnet or address == gateway:
                raise TopologyError(f"node {name}: mgmt-ipv4 {address} is not a free address of {subnet}")
        else:
            address = next(a for a in hosts if a not in reserved)
        cmd = merged.get("cmd", "")
        nodes.append(
            Node(
                name=name,
                image=merged["image"],
                mgmt_ipv4=str(address),
                binds=tuple(_bind(b, path.parent, name) for b in merged.get("binds", ())),
                env=tuple((str(k), str(v)) for k, v in merged.get("env", {}).items()),
                cmd=tuple(shlex.split(cmd) if isinstance(cmd, str) else map(str, cmd)),
                exec=tuple(tuple(shlex.split(e)) for e in merged.get("exec", ())),
            )
        )
    names = {n.name for n in nodes}
    links = []
    for entry in topo.get("links", ()):
        ends = entry.get("endpoints", ())
        if len(ends) != 2 or set(entry) != {"endpoints"}:
            raise TopologyError(f"link {entry!r}: only the two-endpoint veth form is handled")
        links.append(Link(_endpoint(ends[0], names), _endpoint(ends[1], names)))
    used = [end for link in links for end in (link.a, link.b)]
    if len(used) != len(set(used)) or any(ifname == "eth0" for _, ifname in used):
        raise TopologyError("an interface is cabled twice, or a link uses eth0 (the management interface)")
    return Topology(doc["name"], subnet, str(gateway), tuple(nodes), tuple(links))


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


class DeployError(RuntimeError):
    pass


class Deployment:
    """One deployed topology, every name carrying ``prefix``; use as a context manager."""

    def __init__(self, topology: Topology, prefix: str, runner: Runner = run) -> None:
        self.topology = topology
        self.prefix = prefix
        self._run = runner
        self._containers: list[str] = []
        self._namespaces: list[str] = []

    def container(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def _check(self, argv: Sequence[str]) -> str:
        result = self._run(argv)
        if result.returncode != 0:
            raise DeployError(f"{shlex.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def _add_netns(self, name: str) -> None:
        self._check(("ip", "netns", "add", name))
        self._namespaces.append(name)
        self._check(("ip", "-n", name, "link", "set", "lo", "up"))

    def deploy(self) -> None:
        topo = self.topology
        mgmt = f"{self.prefix}-mgmt"
        self._add_netns(mgmt)
        self._check(("ip", "-n", mgmt, "link", "add", "br0", "type", "bridge"))
        gateway = f"{topo.gateway}/{topo.mgmt_subnet.prefixlen}"
        self._check(("ip", "-n", mgmt, "address", "add", gateway, "dev", "br0"))
        self._check(("ip", "-n", mgmt, "link", "set", "br0", "up"))
        for index, node in enumerate(topo.nodes):
            ns, port = self.netns(node.name), f"m{index}"
            self._add_netns(ns)
            self._check(("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                         "netns", mgmt))
            self._check(("ip", "-n", mgmt, "link", "set", port, "master", "br0", "up"))
            address = f"{node.mgmt_ipv4}/{topo.mgmt_subnet.prefixlen}"
            self._check(("ip", "-n", ns, "address", "add", address, "dev", "eth0"))
            self._check(("ip", "-n", ns, "link", "set", "eth0", "up"))
            self._check(("ip", "-n", ns, "route", "add", "default", "via", topo.gateway))
        for node in topo.nodes:
            self._start(node)
        for link in topo.links:
            (node_a, if_a), (node_b, if_b) = link.a, link.b
            self._check(("ip", "link", "add", if_a, "netns", self.netns(node_a), "mtu", str(LINK_MTU),
                         "type", "veth", "peer", "name", if_b, "netns", self.netns(node_b),
                         "mtu", str(LINK_MTU)))
            for node_name, ifname in link.a, link.b:
                self._check(("ip", "-n", self.netns(node_name), "link", "set", ifname, "up"))
        for node in topo.nodes:
            for argv in node.exec:
                self._check((*PODMAN, "exec", self.container(node.name), *argv))

    def _start(self, node: Node) -> None:
        name = self.container(node.name)
        argv = [*PODMAN, "run", "--detach", "--name", name, "--hostname", node.name, "--label", TEST_LABEL,
                "--privileged", "--network", f"ns:/run/netns/{self.netns(node.name)}", *ULIMITS,
                # as Docker does on the management network: the container's own name in /etc/hosts; and no
                # resolver, since nothing here reaches one (a query would wait out its timeouts)
                "--add-host", f"{node.name}:{node.mgmt_ipv4}", "--dns", "none"]
        for bind in node.binds:
            argv += ["--volume", bind]
        for key, value in node.env:
            argv += ["--env", f"{key}={value}"]
        argv += [node.image, *node.cmd]  # cmd replaces the image's CMD, as Docker's Cmd does
        self._containers.append(name)  # before it runs: a half-created container is still removed
        self._check(argv)

    def exec(self, node: str, *argv: str) -> subprocess.CompletedProcess:
        return self._run((*PODMAN, "exec", self.container(node), *argv))

    def logs(self, node: str, tail: int = 40) -> str:
        result = self._run((*PODMAN, "logs", "--tail", str(tail), self.container(node)))
        return result.stdout + result.stderr

    def destroy(self) -> list[str]:
        """Remove every container and namespace this deployment made; returns what could not be removed."""
        leftovers = []
        for name in reversed(self._containers):
            result = self._run((*PODMAN, "rm", "--force", "--time", "0", name))
            if result.returncode != 0 and "no such container" not in result.stderr.lower():
                leftovers.append(f"container {name}: {result.stderr.strip()}")
        for name in reversed(self._namespaces):
            result = self._run(("ip", "netns", "delete", name))
            if result.returncode != 0:
                leftovers.append(f"netns {name}: {result.stderr.strip()}")
        self._containers.clear()
        self._namespaces.clear()
        return leftovers

    def __enter__(self) -> Deployment:
        try:
            self.deploy()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
