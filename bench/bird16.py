"""BIRD 1.6, configured the way Calico configures it, on two node namespaces: the bar we measure against.

Stage: one of the two speaker pairs of the propagation workloads (the other is ``bench.calico``).

Owns: the BIRD 1.6.8 binaries (unpacked from Debian's ``bird`` package into ``.cache/bird16``, the same
place ``make interop-deps`` uses, because Debian's bird and bird2 conflict), the rendered ``bird.cfg`` of
each node, two node namespaces on a switch namespace (the lab's own plumbing, ``labs.netns``, with the
lab's addressing), and the two ``bird`` processes, which it stops and removes in every outcome.

The config is Calico's classic (v3.31) ``bird.cfg`` + ``bird_aggr.cfg`` + ``bird_ipam.cfg`` for a full
mesh (docs/calico-model.md), with one change: upstream BIRD has no ``krt_tunnel`` (a Calico fork
patch), which only matters for IPIP pools, and the pools here are unencapsulated. So: the kernel protocol
``learn; persist; scan time 2; import all; export filter calico_kernel_programming; graceful restart;
merge paths on``, the device and direct protocols, the node's block as a static blackhole with
``calico_aggr``, and one ``Mesh_<ip>`` iBGP session exporting ``calico_export_to_bgp_peers(true)``,
passive on the side whose address is the smaller string.

Complicating factors:
- BIRD writes its routes with proto bird (12) as we do, so the same stopwatch (``bench.kernelwatch``)
  times both pairs.
- BIRD learns Felix's proto-boot routes from netlink notifications; its socket overflows in bursts and
  it catches up at the next 2 s scan ("Kernel dropped some netlink messages"): that is BIRD's behaviour
  under test, not something to tune away.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labs import netns

REPO = Path(__file__).resolve().parent.parent
BIRD_DIR = REPO / ".cache" / "bird16"
BIRD_VERSION = "1.6.8"
AS_NUMBER = 64512
NODE_IFNAME = "eth0"


class BirdError(RuntimeError):
    pass


def ensure_binaries(target: Path = BIRD_DIR) -> Path:
    """``target`` with usr/sbin/bird and birdc of BIRD 1.6, unpacking Debian's .deb if needed (idempotent)."""
    if (target / "usr/sbin/bird").exists() and (target / "usr/sbin/birdc").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(2):
            proc = subprocess.run(
                ["apt-get", "download", "-qq", f"bird={BIRD_VERSION}*"],
                cwd=tmp,
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                break
            if attempt == 0:
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        else:
            raise BirdError(f"apt-get download bird={BIRD_VERSION}: {proc.stderr.strip()}")
        debs = glob.glob(os.path.join(tmp, "bird_*.deb"))
        if not debs:
            raise BirdError("apt-get download left no bird_*.deb")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", debs[0], str(target)], check=True, capture_output=True)
    return target


def version(binaries: Path = BIRD_DIR) -> str:
    proc = subprocess.run([str(binaries / "usr/sbin/bird"), "--version"], capture_output=True, text=True)
    return (proc.stdout + proc.stderr).strip().removeprefix("BIRD version ").strip()


@dataclass(frozen=True)
class BirdNode:
    name: str  # also the protocol-free part of its namespace name
    address: str  # bare IPv4
    prefixlen: int
    block: str  # its confirmed IPAM block


def render_config(me: BirdNode, peers: Sequence[BirdNode], pools: Sequence[str]) -> str:
    """bird.cfg of ``me`` in a full mesh with ``peers`` (Calico classic, see the module docstring)."""
    pool_accepts = "\n".join(f"  if ( net ~ {p} ) then {{ accept; }}" for p in pools)
    sessions = []
    for peer in peers:
        passive = (
            "\n  passive on; # Mesh is unidirectional, peer will connect to us."
            if (peer.address > me.address)
            else ""
        )
        sessions.append(
            f"""protocol bgp Mesh_{peer.address.replace(".", "_")} from bgp_template {{
  neighbor {peer.address} as {AS_NUMBER};
  source address {me.address};  # The local address we use for the TCP connection{passive}
}}"""
        )
    return f"""# bird.cfg of {me.name}: Calico's classic mesh config (bird.cfg, bird_aggr.cfg, bird_ipam.cfg).
router id {me.address};
log stderr all;

# ---- bird_aggr.cfg: this host's blocks
protocol static {{
  route {me.block} blackhole;
}}
function calico_aggr ()
{{
  # Block {me.block} is confirmed
  if ( net = {me.block} ) then {{ accept; }}
  if ( net ~ {me.block} ) then {{ reject; }}
}}

# ---- bird_ipam.cfg: export policy and kernel programming filter
function apply_communities ()
{{
}}
function reject_local_routes () {{
  if (defined(ifname)) then {{
    if (ifname ~ "bpf*.cali") then {{ reject; }}
  }}
}}
function calico_export_to_bgp_peers(bool internal_peer) {{
  if (internal_peer) then {{
    if (defined(ifname)) then {{
      if ((ifname ~ "*.cali") || (ifname ~ "*.calico")) then {{ reject; }}
    }}
  }}
  reject_local_routes();
  apply_communities();
  calico_aggr();
{pool_accepts}
}}
filter calico_kernel_programming {{
{pool_accepts}
  accept;
}}

# ---- bird.cfg
protocol kernel {{
  learn;             # Learn all alien routes from the kernel
  persist;           # Don't remove routes on bird shutdown
  scan time 2;       # Scan kernel routing table every 2 seconds
  import all;
  export filter calico_kernel_programming; # Default is export none
  graceful restart;  # Turn on graceful restart to reduce potential flaps in routes
  merge paths on;    # Allow export multipath routes (ECMP)
}}
protocol device {{
  debug {{ states }};
  scan time 2;    # Scan interfaces every 2 seconds
}}
protocol direct {{
  debug {{ states }};
  interface -"cali*", -"kube-ipvs*", "*";
}}
template bgp bgp_template {{
  debug {{ states }};
  description "Connection to BGP peer";
  local as {AS_NUMBER};
  multihop;
  gateway recursive; # This should be the default, but just in case.
  import all;        # Import all routes, since we don't know what the upstream topology is
  export filter {{ calico_export_to_bgp_peers(true); reject; }};  # Only want to export routes for workloads.
  add paths on;
  graceful restart;  # See comment in kernel section about graceful restart.
  connect delay time 2;
  connect retry time 5;
  error wait time 5,30;
}}

# ------------- Node-to-node mesh -------------
{chr(10).join(sessions)}
"""


@dataclass
class BirdPair:
    """Two BIRD 1.6 nodes (A = ``nodes[0]``, B = ``nodes[1]``) on one switch namespace; a context manager."""

    nodes: tuple[BirdNode, BirdNode]
    pools: tuple[str, ...]
    binaries: Path = BIRD_DIR
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    workdir: Path | None = None

    name = "bird"

    def ns(self, node: BirdNode) -> str:
        return f"bench{self.tag}-{node.name}"

    @property
    def ns_a(self) -> str:
        return self.ns(self.nodes[0])

    @property
    def ns_b(self) -> str:
        return self.ns(self.nodes[1])

    def roots(self, node: int) -> list[int]:
        """The processes of node 0 (A) or 1 (B): one bird each."""
        return [self.pids[self.nodes[node].name]]

    def __enter__(self) -> BirdPair:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-bird-{self.tag}-"))
        lan = f"bench{self.tag}-lan"
        self.namespaces.append(lan)
        netns.add_netns(lan)
        netns.add_bridge(lan, "br0")
        for node in self.nodes:
            ns = self.ns(node)
            self.namespaces.append(ns)
            netns.add_netns(ns)
            netns.add_veth(lan, node.name, ns, NODE_IFNAME)
            netns.set_master(lan, node.name, "br0")
            netns.link_up(lan, node.name)
            netns.add_address(ns, NODE_IFNAME, f"{node.address}/{node.prefixlen}")
            netns.link_up(ns, NODE_IFNAME)
            netns.set_sysctl(ns, "net.ipv4.ip_forward", 1)
        for node in self.nodes:
            self._start(node)
        self.wait_established()

    def _start(self, node: BirdNode) -> None:
        assert self.workdir is not None
        peers = [n for n in self.nodes if n is not node]
        cfg = self.workdir / f"{node.name}.cfg"
        cfg.write_text(render_config(node, peers, self.pools))
        bird = str(self.binaries / "usr/sbin/bird")
        check = subprocess.run([bird, "-p", "-c", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise BirdError(f"bird -p {cfg}: {(check.stdout + check.stderr).strip()}")
        log = open(self.workdir / f"{node.name}.log", "ab")  # noqa: SIM115 - handed to the child
        argv = netns.exec_argv(self.ns(node), [bird, "-f", "-c", str(cfg), "-s", self.ctl(node)])
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.procs[node.name] = proc
        self.pids[node.name] = proc.pid  # `ip netns exec` execs bird in place: same pid

    def ctl(self, node: BirdNode) -> str:
        assert self.workdir is not None
        return str(self.workdir / f"{node.name}.ctl")

    def birdc(self, node: BirdNode, *command: str) -> str:
        birdc = str(self.binaries / "usr/sbin/birdc")
        proc = subprocess.run(
            [birdc, "-s", self.ctl(node), *command], capture_output=True, text=True, timeout=10
        )
        return proc.stdout

    def wait_established(self, timeout: float = 60.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            for node in self.nodes:
                proc = self.procs[node.name]
                if proc.poll() is not None:
                    raise BirdError(f"bird on {node.name} exited {proc.returncode}: {self.log_tail(node)}")
            if all("Established" in self.birdc(n, "show", "protocols") for n in self.nodes):
                return time.monotonic() - start
            time.sleep(0.2)
        raise BirdError(f"BIRD sessions not Established within {timeout:.0f} s")

    def log_tail(self, node: BirdNode, lines: int = 15) -> str:
        assert self.workdir is not None
        path = self.workdir / f"{node.name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.namespaces):
            for pid in netns.pids(ns):  # anything left in a namespace we made is ours
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            with contextlib.suppress(netns.NetnsError):
                netns.delete_netns(ns)
        self.namespaces.clear()
        if self.workdir is not None:
            for path in self.workdir.iterdir():
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.workdir.rmdir()
