"""Router namespaces of a lab: FRR ToRs and spines beside the Calico nodes, and bare namespaces for tests.

Stage: lab dataplane next to ``labs.pods`` (``labs.lab`` builds routers, ``labs.containerlab`` reuses the
config renderer so a containerlab ToR runs exactly what a netns ToR runs).

Owns: the FRR configuration of a ``labs.topology.LabRouter`` (pure: ``frr_config``), starting zebra and bgpd
inside the router's namespace, and reading FRR's own view back through ``vtysh ... json``.

Complicating factors:
- Several FRR instances on one machine: each gets a pathspace (``-N``), so its vty sockets, pid files and
  zserv socket live under ``/run/frr/<pathspace>/`` and ``vtysh -N <pathspace>`` talks to that instance only.
  The pathspace is the router's namespace name, so ``down`` finds leftovers by the lab's prefix.
- zebra and bgpd drop privileges to the ``frr`` user: the config, the log and every directory above them
  must be readable (traversable) by that user, and the pathspace directory must belong to it.
- FRR starts before the nodes' daemons: with ``frr defaults datacenter`` its connect retry is 10 s, so a
  node that comes up a moment later still gets its session within seconds (the nodes connect too).
- ``no bgp network import-check``: a ToR originates its prefixes without a matching kernel route, and
  ``no bgp ebgp-requires-policy`` (FRR 8 refuses to exchange eBGP routes without policy by default).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from labs import netns, process
from labs.topology import LabRouter

FRR_DIR = Path("/usr/lib/frr")
FRR_RUN = Path("/run/frr")
FRR_USER = "frr"
VTYSH = "vtysh"
START_TIMEOUT = 15.0


class RouterError(RuntimeError):
    """A router could not be started or queried; the message names the router and the log."""


def frr_config(router: LabRouter, *, log_file: str | None = None) -> str:
    """FRR's integrated config (frr.conf) for a lab router: its BGP sessions and originated prefixes.

    Deterministic (the containerlab files are compared byte for byte with a fresh render)."""
    lines = ["frr defaults datacenter", f"hostname {router.name}"]
    lines.append(f"log file {log_file} informational" if log_file else "log stdout informational")
    lines += ["!", f"router bgp {router.asn}", f" bgp router-id {router.router_id}"]
    lines += [" no bgp ebgp-requires-policy", " no bgp network import-check"]
    # ECMP over paths from different neighbour ASes (two ToRs, or a ToR pair in front of a spine).
    lines.append(" bgp bestpath as-path multipath-relax")
    for n in router.neighbors:
        lines.append(f" neighbor {n.address} remote-as {n.asn}")
        if n.description:
            lines.append(f" neighbor {n.address} description {n.description}")
        if n.password:
            lines.append(f" neighbor {n.address} password {n.password}")
        # Lab peers come and go (daemon restarts): retry every 2 s, not the datacenter profile's 10 s.
        lines.append(f" neighbor {n.address} timers connect 2")
        if n.bfd:
            lines.append(f" neighbor {n.address} bfd")
    for family, version in (("ipv4", 4), ("ipv6", 6)):
        neighbors = [n for n in router.neighbors if _version(n.address) == version]
        networks = [p for p in router.networks if _version(p.split("/")[0]) == version]
        if not neighbors and not networks:
            continue
        lines.append(f" address-family {family} unicast")
        lines += [f"  network {prefix}" for prefix in networks]
        for n in neighbors:
            lines.append(f"  neighbor {n.address} activate")
            # Adj-RIB-In as received, so tests can see exactly what a node sent (also what was rejected).
            lines.append(f"  neighbor {n.address} soft-reconfiguration inbound")
            if n.default_originate:
                lines.append(f"  neighbor {n.address} default-originate")
            if n.rr_client:
                lines.append(f"  neighbor {n.address} route-reflector-client")
        lines.append(" exit-address-family")
    lines += ["exit", "!", ""]
    return "\n".join(lines)


def _version(address: str) -> int:
    return 6 if ":" in address else 4


# ------------------------------------------------------------------------------------------- processes


@dataclass
class FrrInstance:
    """One running FRR: where its files are and which processes belong to it."""

    pathspace: str
    netns: str
    run_dir: Path
    pids: list[int]

    @property
    def config(self) -> Path:
        return self.run_dir / "frr.conf"

    @property
    def log(self) -> Path:
        return self.run_dir / "frr.log"


def frr_available() -> str:
    """Empty when FRR is installed, else why not (for skips and error messages)."""
    missing = [d for d in ("zebra", "bgpd") if not os.access(FRR_DIR / d, os.X_OK)]
    if missing or not shutil.which(VTYSH):
        return "needs Debian's frr package (make interop-deps): no " + ", ".join(missing or [VTYSH])
    try:
        pwd.getpwnam(FRR_USER)
    except KeyError:
        return f"needs the {FRR_USER!r} user that Debian's frr package creates"
    return ""


def start_frr(ns: str, run_dir: Path, config: str, *, pathspace: str | None = None) -> FrrInstance:
    """Write config into run_dir and start zebra + bgpd (and bfdd when a session runs BFD) inside ns;
    returns once bgpd answers vtysh."""
    reason = frr_available()
    if reason:
        raise RouterError(reason)
    pathspace = pathspace or ns
    user = pwd.getpwnam(FRR_USER)
    run_dir.mkdir(parents=True, exist_ok=True)
    _make_traversable(run_dir)
    instance = FrrInstance(pathspace, ns, run_dir, [])
    instance.config.write_text(config)
    sockets = FRR_RUN / pathspace
    sockets.mkdir(parents=True, exist_ok=True)
    for path in (FRR_RUN, sockets, run_dir, instance.config):
        os.chown(path, user.pw_uid, user.pw_gid)
    instance.log.touch()
    os.chown(instance.log, user.pw_uid, user.pw_gid)
    # bfdd before bgpd: bgpd registers its BFD sessions with bfdd (through zebra) as the config is read.
    daemons = ("zebra", "bfdd", "bgpd") if _uses_bfd(config) else ("zebra", "bgpd")
    for daemon in daemons:
        argv = [str(FRR_DIR / daemon), "-N", pathspace, "-f", str(instance.config)]
        argv += ["-i", str(sockets / f"{daemon}.pid"), "-u", FRR_USER, "-g", FRR_USER, "-P", "0"]
        instance.pids.append(process.spawn(netns.exec_argv(ns, argv), run_dir / f"{daemon}.out"))
        _wait_socket(instance, sockets / f"{daemon}.vty", daemon)
    return instance


def _uses_bfd(config: str) -> bool:
    return any(line.startswith(" neighbor ") and line.endswith(" bfd") for line in config.splitlines())


def bfd_peers(pathspace: str) -> dict[str, dict]:
    """FRR's BFD sessions, by peer address: its ``show bfd peers json`` entries."""
    out = vtysh(pathspace, "show bfd peers json")
    return {peer["peer"]: peer for peer in (json.loads(out) if out.strip() else [])}


def _make_traversable(path: Path) -> None:
    """o+x on path and every parent: the frr user must reach its config and log."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)


def _wait_socket(instance: FrrInstance, socket_path: Path, daemon: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not socket_path.exists():
        if not all(process.alive(pid) for pid in instance.pids) or time.monotonic() > deadline:
            out = process.tail(instance.run_dir / f"{daemon}.out")
            raise RouterError(f"FRR {daemon} in {instance.netns} did not come up:\n{out}")
        time.sleep(0.05)


def stop_frr(instance: FrrInstance, timeout: float = 5.0) -> None:
    marker = instance.pathspace
    process.stop_all([(pid, marker) for pid in reversed(instance.pids)], timeout)
    shutil.rmtree(FRR_RUN / instance.pathspace, ignore_errors=True)


def remove_pathspaces(prefix: str) -> None:
    """Leftover FRR socket directories of a lab (its routers' pathspaces start with its netns prefix)."""
    if FRR_RUN.is_dir():
        for entry in FRR_RUN.iterdir():
            if entry.name.startswith(prefix):
                shutil.rmtree(entry, ignore_errors=True)


def vtysh(pathspace: str, *commands: str, timeout: float = 10.0) -> str:
    argv = [VTYSH, "-N", pathspace]
    for command in commands:
        argv += ["-c", command]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RouterError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def vtysh_json(pathspace: str, command: str) -> dict:
    """FRR's JSON answer to one show command ({} when FRR has nothing to say)."""
    out = vtysh(pathspace, command)
    return json.loads(out) if out.strip() else {}


def bgp_sessions(pathspace: str) -> dict[str, str]:
    """Neighbour address -> BGP state, over every address family (``show bgp summary json``)."""
    summary = vtysh_json(pathspace, "show bgp summary json")
    states: dict[str, str] = {}
    for family in summary.values():
        if isinstance(family, dict):
            for address, peer in family.get("peers", {}).items():
                states[address] = peer.get("state", "")
    return states


def bgp_routes(pathspace: str, family: str = "ipv4") -> dict[str, list[dict]]:
    """Prefix -> FRR's paths for it (``show bgp <family> unicast json``)."""
    return vtysh_json(pathspace, f"show bgp {family} unicast json").get("routes", {})


def received_routes(pathspace: str, neighbor: str, family: str = "ipv4") -> set[str]:
    """What a neighbour sent, before any policy or loop check (soft-reconfiguration inbound)."""
    command = f"show bgp {family} unicast neighbors {neighbor} received-routes json"
    return set(vtysh_json(pathspace, command).get("receivedRoutes", {}))
