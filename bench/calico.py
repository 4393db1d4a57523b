"""calico-bgp on two lab nodes: the speaker pair under test, built with the lab API.

Stage: one of the two speaker pairs of the propagation workloads (the other is ``bench.bird16``).

Owns: the two-node topology the benchmark needs and the lab built from it (``labs.lab.up``/``down``,
uniquely named, always taken down), and the process trees of its nodes (the daemon pid the lab recorded,
plus ExaBGP and the API bridge under it).

Complicating factors:
- 100k borrowed /32s do not fit in Calico's usual 192.168.0.0/16 pool next to the nodes' blocks, so the
  topology adds a second, unencapsulated pool (``BENCH_POOL``) in which no node holds a block: every /32
  Felix writes there is a borrowed IP, which Calico's export policy announces one by one (the worst case,
  and what docs/kernel-contract.md records for BIRD).
- No pods: the lab's pod-to-pod ping check would only add start-up time; the workloads write their own
  Felix-style routes on a ``cali`` veth (``bench.felix``).
- Daemons inherit this process's environment (``labs.ops.node_env``), which is how a settings experiment
  reaches ExaBGP (``CALICO_BGP_EXABGP_SPEED``).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from labs import lab as labs_lab
from labs import ops, topology
from labs.state import netns_name

LOG_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bench" / "logs"
BENCH_POOL = "172.16.0.0/12"
DEFAULT_POOL = "192.168.0.0/16"


def pair_topology() -> topology.Topology:
    nodes = tuple(
        topology.LabNode(
            f"node{i}",
            f"10.0.0.{10 + i}/24",
            labels={"kubernetes.io/hostname": f"node{i}"},
            block=f"192.168.{i}.0/26",
        )
        for i in (1, 2)
    )
    return topology.validate(
        topology.Topology(
            name="benchpair",
            nodes=nodes,
            pools=(
                topology.LabPool("default-ipv4-ippool", DEFAULT_POOL),
                topology.LabPool("bench-ipv4-ippool", BENCH_POOL),
            ),
            bgp_config={
                "logSeverityScreen": "Info",
                "nodeToNodeMeshEnabled": True,
                "asNumber": topology.DEFAULT_ASN,
            },
        )
    )


@dataclass
class CalicoPair:
    """The lab of ``pair_topology``, A = node1 and B = node2; a context manager."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    output: list[str] = field(default_factory=list)

    name = "calico-bgp"

    @property
    def lab(self) -> str:
        return f"bench{self.tag}"

    @property
    def ns_a(self) -> str:
        return netns_name(self.lab, "node1")

    @property
    def ns_b(self) -> str:
        return netns_name(self.lab, "node2")

    def roots(self, node: int) -> list[int]:
        """The daemon of node 0 (A) or 1 (B); ExaBGP and the bridge are found under it."""
        return [ops.load(self.lab).nodes[node].pid]

    def logs(self) -> list[str]:
        return [n.log for n in ops.load(self.lab).nodes]

    def __enter__(self) -> CalicoPair:
        try:
            ok = labs_lab.up(pair_topology(), name=self.lab, echo=self.output.append)
            if not ok:
                raise RuntimeError("calico-bgp lab did not come up:\n" + "\n".join(self.output))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Keep the daemons' logs (the lab's directory goes with the lab): they explain a slow figure.
        with contextlib.suppress(Exception):
            keep = LOG_DIR / self.lab
            keep.mkdir(parents=True, exist_ok=True)
            for node in ops.load(self.lab).nodes:
                for path in (Path(node.log), Path(node.run_dir) / "exabgp.log"):
                    if path.exists():
                        shutil.copy(path, keep / f"{node.name}-{path.name}")
        labs_lab.down(self.lab)
