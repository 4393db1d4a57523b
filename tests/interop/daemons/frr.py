"""FRR harness: zebra + bgpd in the peer namespace, read through ``vtysh -N <pathspace> ... json``.

Stage: test support (tests/interop), one of the daemon classes behind ``daemons.base.Daemon``.

Owns: mapping the harness's peers onto a ``labs.topology.LabRouter`` so the config comes from the same
renderer the lab's ToRs use (``labs.routers.frr_config``), and FRR's JSON views.

Complicating factors:
- Several FRR instances on one machine are kept apart by pathspaces (``labs.routers``); the pathspace is
  the harness's namespace name plus its kind, so a leftover directory is recognisable.
- Reconfiguration goes through ``frr-reload.py --reload``, which diffs the running config against the file
  and applies only the difference (sessions whose settings did not change stay up).
- A stale path (graceful restart, helper side) carries ``"stale": true`` in FRR's JSON.
"""

from __future__ import annotations

import subprocess

from interop.daemons.base import ESTABLISHED, Daemon, DaemonError, Path, Peer
from labs import routers
from labs.topology import LabRouter, RouterNeighbor, RouterPort

FRR_RELOAD = routers.FRR_DIR / "frr-reload.py"
STATES = {"Established": ESTABLISHED}


class Frr(Daemon):
    kind = "frr"

    @classmethod
    def missing(cls) -> str:
        return routers.frr_available()

    @property
    def pathspace(self) -> str:
        return f"{self.netns}-frr"

    def _router(self) -> LabRouter:
        neighbors = tuple(
            RouterNeighbor(p.address, p.asn, description=p.name, password=p.password, rr_client=p.rr_client)
            for p in self.peers
        )
        port = RouterPort("", f"{self.router_id}/32")  # only the router id is read from it
        return LabRouter("peer", self.asn, (port,), neighbors=neighbors, networks=tuple(self.networks))

    def _config(self) -> str:
        return routers.frr_config(self._router(), log_file=str(self.workdir / "frr.log"))

    def _start(self) -> None:
        try:
            instance = routers.start_frr(self.netns, self.workdir, self._config(), pathspace=self.pathspace)
        except routers.RouterError as exc:
            raise DaemonError(str(exc)) from exc
        self.pids.extend(instance.pids)

    def stop(self) -> None:
        routers.stop_frr(routers.FrrInstance(self.pathspace, self.netns, self.workdir, list(self.pids)))
        self.pids = []

    def configure(self) -> None:
        config = self.workdir / "frr.conf"
        config.write_text(self._config())
        argv = [str(FRR_RELOAD), "--reload", "--stdout", "-N", self.pathspace, "--rundir", str(self.workdir)]
        proc = subprocess.run([*argv, str(config)], capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise DaemonError(f"frr-reload failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def _json(self, command: str) -> dict:
        try:
            return routers.vtysh_json(self.pathspace, command)
        except routers.RouterError as exc:
            raise DaemonError(str(exc)) from exc

    def neighbor_state(self, address: str) -> str:
        info = self._json(f"show bgp neighbors {address} json").get(address, {})
        state = str(info.get("bgpState", ""))
        return STATES.get(state, state)

    def received_routes(self, address: str, family: str) -> dict[str, Path]:
        routes = self._json(f"show bgp {family} unicast json").get("routes", {})
        found = {}
        for prefix, paths in routes.items():
            for path in paths:
                if path.get("peerId") != address:
                    continue
                nexthops = [n.get("ip", "") for n in path.get("nexthops", []) if n.get("afi") == family]
                as_path = tuple(int(a) for a in str(path.get("path", "")).split() if a.isdigit())
                stale = bool(path.get("stale"))
                found[prefix] = Path(prefix, nexthops[0] if nexthops else "", as_path, stale)
        return found

    def graceful_restart_active(self, address: str) -> bool:
        """FRR marks the kept paths stale while the neighbour restarts."""
        return any(
            p.stale for family in ("ipv4", "ipv6") for p in self.received_routes(address, family).values()
        )

    def peer(self, address: str) -> Peer:
        return next(p for p in self.peers if p.address == address)
