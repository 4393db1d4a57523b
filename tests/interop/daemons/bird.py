"""BIRD harnesses: BIRD 1.6 (Calico's own engine; one daemon per family, ``bird`` and ``bird6``) and BIRD 2.

Stage: test support (tests/interop), one of the daemon classes behind ``daemons.base.Daemon``.

Owns: BIRD config rendering for both generations, their control sockets, and parsing ``birdc`` text.

Complicating factors:
- BIRD 1.6 comes from Debian's ``bird`` package, which conflicts with ``bird2``: ``make interop-deps``
  unpacks it under ``.cache/bird16`` (``dpkg -x``), and it runs from there with its own ``birdc``.
- BIRD 1.6 keeps IPv4 and IPv6 in separate daemons (``bird6``/``birdc6``) with separate configs; BIRD 2 has
  one daemon with a channel per family. Config differences are confined to ``_protocol`` and ``_static``.
- ``birdc`` prints text, not JSON: a route is a line starting with its prefix (BIRD 2 puts the gateway on
  the next line) followed by indented ``BGP.*`` attribute lines, which both generations print alike.
- Reconfiguration is ``birdc configure``: BIRD restarts only the protocols whose config changed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path as FsPath
from typing import ClassVar

from interop.daemons.base import Daemon, Path, Peer

REPO = FsPath(__file__).resolve().parents[3]
BIRD16_SBIN = REPO / ".cache" / "bird16" / "usr" / "sbin"
# Fast timers: BIRD's defaults wait 60-300 s after an error before it tries again.
TIMERS = "connect retry time 2; error wait time 1, 5; connect delay time 1;"

_ROUTE = re.compile(r"^(?P<prefix>[0-9a-fA-F.:]+/\d+)\s+(?P<rest>.*)$")
_VIA = re.compile(r"\bvia (?P<gw>[0-9a-fA-F.:]+)")


def parse_routes(text: str) -> dict[str, Path]:
    """``show route ... all`` output (BIRD 1.6 or 2) -> prefix -> path (the first path of each prefix)."""
    routes: dict[str, Path] = {}
    prefix, attrs = "", {}

    def flush() -> None:
        if prefix and prefix not in routes:
            nexthop = attrs.get("BGP.next_hop", attrs.get("via", "")).split(" ")[0]
            path = tuple(int(a) for a in re.findall(r"\d+", attrs.get("BGP.as_path", "")))
            routes[prefix] = Path(prefix, nexthop, path, stale="stale" in attrs.get("flags", ""))

    for line in text.splitlines():
        match = _ROUTE.match(line)
        if match:
            flush()
            prefix, attrs = match["prefix"], {"flags": match["rest"]}
            via = _VIA.search(match["rest"])
            if via:
                attrs["via"] = via["gw"]
            continue
        stripped = line.strip()
        if ":" in stripped and stripped.startswith("BGP."):
            key, _, value = stripped.partition(":")
            attrs.setdefault(key, value.strip())
        elif stripped.startswith("via ") and "via" not in attrs:
            attrs["via"] = stripped.split()[1]
    flush()
    return routes


def parse_bgp_state(text: str) -> str:
    match = re.search(r"BGP state:\s+(\w+)", text)
    return match[1] if match else ""


class _Bird(Daemon):
    """What both BIRD generations share: a control socket per daemon, birdc, text parsing."""

    generation = 2
    timers: ClassVar[str] = TIMERS  # a harness that flaps sessions on purpose sets shorter ones

    def _daemons(self) -> dict[str, tuple[str, str]]:
        """family -> (daemon binary, birdc binary)."""
        raise NotImplementedError

    def _config_path(self, family: str) -> FsPath:
        return self.workdir / f"bird-{family}.conf"

    def _socket(self, family: str) -> FsPath:
        return self.workdir / f"bird-{family}.ctl"

    def _families(self) -> tuple[str, ...]:
        return tuple(self._daemons())

    def _render(self, family: str) -> str:
        lines = [
            f'log "{self.workdir / f"bird-{family}.log"}" all;',
            f"router id {self.router_id};",
            "protocol device { scan time 2; }",
            self._static(family),
        ]
        lines += [self._protocol(p) for p in self.peers if self._handles(p, family)]
        return "\n".join(lines) + "\n"

    def _handles(self, peer: Peer, family: str) -> bool:
        return peer.family == family

    def _static(self, family: str) -> str:
        raise NotImplementedError

    def _protocol(self, peer: Peer) -> str:
        raise NotImplementedError

    def _session_options(self, peer: Peer) -> list[str]:
        options = [
            f"local {self.local_addresses[peer.family]} as {self.asn};",
            f"neighbor {peer.address} as {peer.asn};",
            self.timers,
        ]
        # BIRD's default ("aware") still advertises the capability, so a peer would keep our routes.
        options.append(f"graceful restart {'on' if peer.graceful_restart else 'off'};")
        if peer.password:
            options.append(f'password "{peer.password}";')
        if peer.rr_client:
            options += ["rr client;", f"rr cluster id {self.router_id};"]
        return options

    def _start(self) -> None:
        for family, (binary, _) in self._daemons().items():
            config = self._config_path(family)
            config.write_text(self._render(family))
            socket = self._socket(family)
            argv = [
                binary,
                "-f",
                "-c",
                str(config),
                "-s",
                str(socket),
                "-P",
                str(self.workdir / f"{family}.pid"),
            ]
            self._spawn(argv, f"bird-{family}.out.log")
            self._wait_for(socket.exists, f"control socket {socket}")

    def configure(self) -> None:
        for family in self._families():
            self._config_path(family).write_text(self._render(family))
            out = self._birdc(family, "configure")
            if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
                raise RuntimeError(f"{self.kind}: configure failed: {out}")

    def _birdc(self, family: str, *command: str) -> str:
        return self._run([self._daemons()[family][1], "-s", str(self._socket(family)), *command])

    def _family_of(self, address: str) -> str:
        for peer in self.peers:
            if peer.address == address:
                return self._daemon_family(peer.family)
        raise KeyError(f"{self.kind}: no peer {address}")

    def _daemon_family(self, family: str) -> str:
        return family

    def _peer(self, address: str) -> Peer:
        return next(p for p in self.peers if p.address == address)

    def neighbor_state(self, address: str) -> str:
        out = self._birdc(self._family_of(address), "show", "protocols", "all", self._peer(address).name)
        return parse_bgp_state(out)

    def received_routes(self, address: str, family: str) -> dict[str, Path]:
        out = self._birdc(
            self._family_of(address), "show", "route", "protocol", self._peer(address).name, "all"
        )
        return {p: r for p, r in parse_routes(out).items() if (":" in p) == (family == "ipv6")}

    def graceful_restart_active(self, address: str) -> bool:
        out = self._birdc(self._family_of(address), "show", "protocols", "all", self._peer(address).name)
        return "graceful restart active" in out.lower()


class Bird2(_Bird):
    """BIRD 2: one daemon for both families, a channel per family in each BGP protocol."""

    kind = "bird2"

    @classmethod
    def missing(cls) -> str:
        return (
            ""
            if shutil.which("bird") and shutil.which("birdc")
            else "needs Debian's bird2 (make interop-deps)"
        )

    def _daemons(self) -> dict[str, tuple[str, str]]:
        return {"all": (shutil.which("bird") or "bird", shutil.which("birdc") or "birdc")}

    def _daemon_family(self, family: str) -> str:
        return "all"

    def _handles(self, peer: Peer, family: str) -> bool:
        return True

    def _static(self, family: str) -> str:
        blocks = []
        for fam in ("ipv4", "ipv6"):
            routes = " ".join(f"route {n} blackhole;" for n in self.networks if (":" in n) == (fam == "ipv6"))
            blocks.append(f"protocol static originate_{fam} {{ {fam}; {routes} }}")
        return "\n".join(blocks)

    def _protocol(self, peer: Peer) -> str:
        options = self._session_options(peer)
        options.append(f"{peer.family} {{ import all; export all; }};")
        return f"protocol bgp {peer.name} {{\n  " + "\n  ".join(options) + "\n}"


class Bird16(_Bird):
    """BIRD 1.6 (Calico's engine): ``bird`` for IPv4 and ``bird6`` for IPv6, unpacked privately."""

    kind = "bird16"

    @classmethod
    def missing(cls) -> str:
        needed = [BIRD16_SBIN / b for b in ("bird", "birdc", "bird6", "birdc6")]
        absent = [str(p) for p in needed if not p.exists()]
        return (
            f"needs BIRD 1.6 unpacked by `make interop-deps` (missing {', '.join(absent)})" if absent else ""
        )

    def _daemons(self) -> dict[str, tuple[str, str]]:
        return {
            "ipv4": (str(BIRD16_SBIN / "bird"), str(BIRD16_SBIN / "birdc")),
            "ipv6": (str(BIRD16_SBIN / "bird6"), str(BIRD16_SBIN / "birdc6")),
        }

    def _static(self, family: str) -> str:
        routes = " ".join(f"route {n} blackhole;" for n in self.networks if (":" in n) == (family == "ipv6"))
        return f"protocol static originate {{ {routes} }}"

    def _protocol(self, peer: Peer) -> str:
        options = [*self._session_options(peer), "import all;", "export all;"]
        return f"protocol bgp {peer.name} {{\n  " + "\n  ".join(options) + "\n}"
