"""GoBGP harness: gobgpd with a TOML config, reloaded with SIGHUP, read through ``gobgp -j``.

Stage: test support (tests/interop), one of the daemon classes behind ``daemons.base.Daemon``.

Owns: GoBGP's TOML config, its gRPC endpoint (127.0.0.1:50051 inside the peer namespace: loopback is per
namespace, so instances never collide) and parsing its JSON.

Complicating factors:
- Originated routes are not part of the config: they go into the global RIB through ``gobgp global rib
  add`` once the daemon answers, and again after each restart.
- ``session_state`` is the FSM enum (6 = established); path attributes are a list of typed objects where
  the next hop sits in attribute 3 (IPv4) or 14 (MP_REACH, IPv6).
- gobgpd applies a changed config on SIGHUP, peer by peer (neighbours whose settings changed restart).
"""

from __future__ import annotations

import json
import shutil
import signal

from interop.daemons.base import ESTABLISHED, Daemon, DaemonError, Path, Peer

STATES = {1: "Idle", 2: "Connect", 3: "Active", 4: "OpenSent", 5: "OpenConfirm", 6: ESTABLISHED}
AFI_SAFI = {"ipv4": "ipv4-unicast", "ipv6": "ipv6-unicast"}


class GoBgp(Daemon):
    kind = "gobgp"

    @classmethod
    def missing(cls) -> str:
        if shutil.which("gobgpd") and shutil.which("gobgp"):
            return ""
        return "needs Debian's gobgpd (make interop-deps)"

    @property
    def config_path(self):
        return self.workdir / "gobgpd.toml"

    def render(self) -> str:
        lines = ["[global.config]", f"  as = {self.asn}", f'  router-id = "{self.router_id}"']
        for peer in self.peers:
            lines += self._neighbor(peer)
        return "\n".join(lines) + "\n"

    def _neighbor(self, peer: Peer) -> list[str]:
        lines = ["", "[[neighbors]]", "  [neighbors.config]"]
        lines += [f'    neighbor-address = "{peer.address}"', f"    peer-as = {peer.asn}"]
        if peer.password:
            lines.append(f'    auth-password = "{peer.password}"')
        lines += ["  [neighbors.timers.config]", "    connect-retry = 2"]
        lines += [
            "  [neighbors.transport.config]",
            f'    local-address = "{self.local_addresses[peer.family]}"',
        ]
        if peer.graceful_restart:
            lines += ["  [neighbors.graceful-restart.config]", "    enabled = true", "    restart-time = 120"]
        if peer.rr_client:
            lines += ["  [neighbors.route-reflector.config]", "    route-reflector-client = true"]
            lines.append(f'    route-reflector-cluster-id = "{self.router_id}"')
        lines += ["  [[neighbors.afi-safis]]", "    [neighbors.afi-safis.config]"]
        lines.append(f'      afi-safi-name = "{AFI_SAFI[peer.family]}"')
        if peer.graceful_restart:
            lines += ["    [neighbors.afi-safis.mp-graceful-restart.config]", "      enabled = true"]
        return lines

    def _start(self) -> None:
        self.config_path.write_text(self.render())
        argv = ["gobgpd", "-f", str(self.config_path), "-p", "--pprof-disable", "--api-hosts=127.0.0.1:50051"]
        self._spawn(argv, "gobgpd.log")
        self._wait_for(self._answers, "gobgpd's API")
        for prefix in self.networks:
            self._originate(prefix)

    def _answers(self) -> bool:
        try:
            self._gobgp("global")
        except DaemonError:
            return False
        return True

    def _originate(self, prefix: str) -> None:
        family = "ipv6" if ":" in prefix else "ipv4"
        self._gobgp("global", "rib", "add", "-a", family, prefix)

    def _gobgp(self, *args: str) -> str:
        return self._run(["gobgp", *args])

    def configure(self) -> None:
        self.config_path.write_text(self.render())
        self._signal(signal.SIGHUP)
        held = set(json.loads(self._gobgp("-j", "global", "rib", "-a", "ipv4") or "{}"))
        held |= set(json.loads(self._gobgp("-j", "global", "rib", "-a", "ipv6") or "{}"))
        for prefix in self.networks:
            if prefix not in held:
                self._originate(prefix)

    def _neighbors(self) -> dict[str, dict]:
        return {n["state"]["neighbor_address"]: n for n in json.loads(self._gobgp("-j", "neighbor") or "[]")}

    def neighbor_state(self, address: str) -> str:
        state = self._neighbors().get(address, {}).get("state", {}).get("session_state", 0)
        return STATES.get(state, str(state))

    def received_routes(self, address: str, family: str) -> dict[str, Path]:
        """From the global RIB (not adj-in): it keeps a restarting neighbour's paths, flagged stale."""
        raw = json.loads(self._gobgp("-j", "global", "rib", "-a", family) or "{}")
        return {
            prefix: _path(prefix, path)
            for prefix, paths in raw.items()
            for path in paths
            if path.get("neighbor-ip") == address
        }

    def graceful_restart_active(self, address: str) -> bool:
        """GoBGP keeps the paths of a restarting neighbour and flags them stale."""
        return any(p.stale for f in ("ipv4", "ipv6") for p in self.received_routes(address, f).values())


def _path(prefix: str, path: dict) -> Path:
    nexthop, as_path = "", ()
    for attr in path.get("attrs", []):
        if attr.get("type") == 3:
            nexthop = attr.get("nexthop", "")
        elif attr.get("type") == 14:
            nexthop = attr.get("nexthop", "") or (attr.get("nexthops") or [""])[0]
        elif attr.get("type") == 2:
            as_path = tuple(a for segment in attr.get("as_paths", []) for a in segment.get("asns", []))
    return Path(prefix, nexthop, as_path, bool(path.get("stale")))
