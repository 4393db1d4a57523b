"""Network namespace plumbing for the labs, through iproute2's `ip` command.

Stage: the lab's kernel dataplane (below ``labs.lab`` and ``labs.pods``).

Owns: creating and deleting namespaces, veth pairs, bridges, addresses, neighbours, routes and sysctls, and
running commands inside a namespace. Every call names its namespace explicitly (``ip -n NS``), so nothing
here depends on the namespace of the calling thread.

Complicating factors:
- Nothing of a lab may appear in the host namespace: veth pairs are created inside one namespace with the
  peer placed straight into the other (``peer ... netns``), so no end ever exists in the host.
- Deleting a namespace only unmounts its name; the namespace lives on while a process or socket still
  holds it. Callers kill ``pids`` first.
- iproute2 rather than pyroute2: every step of a lab is one inspectable command in the error message, and
  the lab is nowhere near a hot path.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence

NETNS_DIR = "/run/netns"


class NetnsError(RuntimeError):
    """A plumbing command failed; the message carries the command and its stderr."""


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip(netns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", *(["-n", netns] if netns else []), *args], check=check)


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs argv inside netns (for Popen callers that need their own options)."""
    return ["ip", "netns", "exec", netns, *argv]


def run_in(
    netns: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv inside netns and return the finished process; never raises on a non-zero exit."""
    return subprocess.run(
        exec_argv(netns, argv),
        env=dict(env) if env is not None else None,
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
    )


def exists(netns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, netns))


def list_netns(prefix: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def add_netns(netns: str, *, loopback_up: bool = True) -> None:
    """Create netns with its loopback up (daemons and the etcd proxy listen on 127.0.0.1 inside it), or
    down for a caller that brings it up in its own ``ip -batch``."""
    ip(None, "netns", "add", netns)
    if loopback_up:
        ip(netns, "link", "set", "lo", "up")


def delete_netns(netns: str) -> None:
    if exists(netns):
        ip(None, "netns", "delete", netns)


def pids(netns: str) -> list[int]:
    if not exists(netns):
        return []
    out = ip(None, "netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split()]


def add_veth(netns: str, ifname: str, peer_netns: str, peer_ifname: str) -> None:
    """A veth pair with ifname in netns and peer_ifname in peer_netns, never touching the host namespace."""
    ip(netns, "link", "add", ifname, "type", "veth", "peer", "name", peer_ifname, "netns", peer_netns)


def add_bridge(netns: str, ifname: str) -> None:
    # STP off (the default) so ports forward at once; a lab segment has no loops.
    ip(netns, "link", "add", ifname, "type", "bridge")
    link_up(netns, ifname)


def set_master(netns: str, ifname: str, master: str) -> None:
    ip(netns, "link", "set", ifname, "master", master)


def link_up(netns: str, ifname: str) -> None:
    ip(netns, "link", "set", ifname, "up")


def delete_link(netns: str, ifname: str) -> None:
    ip(netns, "link", "delete", ifname, check=False)


def link_exists(netns: str, ifname: str) -> bool:
    return ip(netns, "link", "show", "dev", ifname, check=False).returncode == 0


def link_mac(netns: str, ifname: str) -> str:
    links = json.loads(ip(netns, "-j", "link", "show", "dev", ifname).stdout)
    return links[0]["address"]


def add_address(netns: str, ifname: str, cidr: str) -> None:
    ip(netns, "address", "add", cidr, "dev", ifname)


def replace_route(netns: str, *spec: str) -> None:
    ip(netns, "route", "replace", *spec)


def delete_route(netns: str, *spec: str) -> None:
    ip(netns, "route", "delete", *spec, check=False)


def routes(netns: str, *selector: str) -> list[dict[str, object]]:
    """`ip -j route show` in netns, e.g. routes(ns, "proto", "bird") or routes(ns, "192.168.2.0/26")."""
    return json.loads(ip(netns, "-j", "route", "show", *selector).stdout or "[]")


def replace_neighbour(netns: str, address: str, mac: str, ifname: str) -> None:
    """A permanent neighbour entry: answers for address without ARP (Felix's static ARP, CNI's gateway)."""
    ip(netns, "neighbour", "replace", address, "lladdr", mac, "dev", ifname, "nud", "permanent")


def ip_batch(netns: str, commands: Sequence[str]) -> None:
    """Run many ``ip`` commands in one process (``ip -batch``): thousands of neighbours in one call."""
    run(["ip", "-n", netns, "-batch", "-"], input="".join(f"{c}\n" for c in commands), timeout=60)


def set_sysctl(netns: str, key: str, value: str | int) -> None:
    """Write a net.* sysctl as seen from inside netns (per-namespace values under /proc/sys/net)."""
    proc = run_in(netns, ["sysctl", "-q", "-w", f"{key}={value}"])
    if proc.returncode != 0:
        raise NetnsError(f"sysctl {key}={value} in {netns} failed: {proc.stderr.strip()}")
