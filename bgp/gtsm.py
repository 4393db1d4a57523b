"""TTL security (GTSM, RFC 5082) for BGP sessions, enforced by the daemon with nftables.

Stage: a small dataplane of the intent, next to the ExaBGP config: ``bgp.daemon`` hands every new intent
to ``Gtsm.apply`` and calls ``Gtsm.remove`` on shutdown.

Owns: one nftables table (``inet calico_bgp_gtsm``) and nothing else in the ruleset. For each session
with ``ttlSecurity N`` it drops the peer's BGP packets whose TTL (hop limit) is below ``256 - N`` and
sends ours to that peer with TTL 255.

Complicating factors (reference exabgp.md §3.4):
- ExaBGP 5.0.15's ``incoming-ttl`` cannot be used: between two ExaBGPs the passive side's SYN-ACK leaves
  with TTL 64 (the sending TTL is set on the accepted socket only after the handshake) and the active
  side's IP_MINTTL drops it; on the global ``exabgp.tcp.bind`` listener no minimum TTL is set at all.
  The kernel does both halves for us instead: an input rule with the minimum and an output rule that sets
  TTL 255 on every packet to the peer, the listener's SYN-ACK included.
- Both directions of a session are covered: the peer connecting to our listen port (``tcp dport``) and
  the replies on a session we opened to the peer's port (``tcp sport``).
- Updates are one ``nft -f`` transaction that creates, deletes and recreates the table: atomic (no moment
  without rules), idempotent, and it never touches tables owned by anyone else. Removal is the same
  transaction without the recreation. An unchanged ruleset is not re-applied.
- The script is built from validated values only (``ipaddress``-normalised addresses, ints), so nothing
  from the datastore reaches nft's parser as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from confgen.intent import NodeIntent

log = logging.getLogger(__name__)

TABLE = "calico_bgp_gtsm"
# Before the usual filter (0) so a later "accept" elsewhere cannot let a spoofed far-away packet in, and
# in the output path before anything else sees the packet's TTL.
PRIORITY = -150


class GtsmError(Exception):
    """nft refused or failed to apply the ruleset; the message carries its output."""


def _table_reset(table: str) -> list[str]:
    # "add" first so "delete" always has something to delete: one transaction, whether or not it existed.
    return [f"add table inet {table}", f"delete table inet {table}"]


def ruleset(intent: NodeIntent, table: str = TABLE) -> str:
    """The nft script that makes the table hold exactly the GTSM rules ``intent`` needs.

    With no session asking for TTL security the script only removes the table.
    """
    lines = _table_reset(table)
    input_rules: list[str] = []
    output_rules: list[str] = []
    listen_port = int(intent.listen_port)
    for peer in sorted(intent.gtsm_peers, key=lambda p: (p.family, p.address)):
        address = ipaddress.ip_address(peer.address)  # ValueError on anything that is not an address
        hops, port = int(peer.ttl_security), int(peer.port)
        if not 1 <= hops <= 255 or not 1 <= port <= 65535:
            raise ValueError(f"session {peer.name}: ttl security {hops} / port {port} out of range")
        ip, ttl = ("ip", "ip ttl") if address.version == 4 else ("ip6", "ip6 hoplimit")
        minimum = 256 - hops
        for match in (f"tcp dport {listen_port}", f"tcp sport {port}"):
            if minimum > 1:
                input_rules.append(f"{ip} saddr {address} {match} {ttl} < {minimum} drop")
        for match in (f"tcp dport {port}", f"tcp sport {listen_port}"):
            output_rules.append(f"{ip} daddr {address} {match} {ttl} set 255")
    if output_rules:
        lines.append(f"table inet {table} {{")
        lines.append("    chain input {")
        lines.append(f"        type filter hook input priority {PRIORITY}; policy accept;")
        lines.extend(f"        {rule}" for rule in input_rules)
        lines.append("    }")
        lines.append("    chain output {")
        lines.append(f"        type filter hook output priority {PRIORITY}; policy accept;")
        lines.extend(f"        {rule}" for rule in output_rules)
        lines.append("    }")
        lines.append("}")
    return "\n".join(lines) + "\n"


class Gtsm:
    def __init__(
        self,
        *,
        nft: Sequence[str] = ("nft",),
        table: str = TABLE,
        registry: CollectorRegistry | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._nft = tuple(nft)  # the command, e.g. ("ip", "netns", "exec", "ns1", "nft") in tests
        self.table = table
        self._timeout = timeout
        self._applied: str | None = None  # the script nft last accepted
        registry = registry if registry is not None else CollectorRegistry()
        self._m_sessions = Gauge(
            "calico_bgp_gtsm_sessions",
            "Sessions whose TTL security is enforced by nftables.",
            registry=registry,
        )
        self._m_errors = Counter(
            "calico_bgp_gtsm_errors", "Failures to apply the TTL-security nftables rules.", registry=registry
        )

    async def apply(self, intent: NodeIntent, *, force: bool = False) -> bool:
        """Make the table match ``intent``; True when nft ran. Raises ``GtsmError`` if nft fails (the
        previous rules then stay in place: the transaction is all or nothing)."""
        script = ruleset(intent, self.table)
        if script == self._applied and not force:
            return False
        await self._run(script)
        self._applied = script
        self._m_sessions.set(len(intent.gtsm_peers))
        return True

    async def remove(self) -> None:
        """Delete the table (shutdown). Safe to call when it does not exist."""
        await self._run("\n".join(_table_reset(self.table)) + "\n")
        self._applied = None
        self._m_sessions.set(0)

    async def _run(self, script: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._nft,
                "-f",
                "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            self._m_errors.inc()
            raise GtsmError(f"cannot run {self._nft[0]}: {exc}") from exc
        try:
            output, _ = await asyncio.wait_for(proc.communicate(script.encode()), self._timeout)
        except BaseException:  # timeout or cancellation: do not leave nft behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self._m_errors.inc()
            raise
        if proc.returncode != 0:
            self._m_errors.inc()
            text = output.decode(errors="replace").strip()
            raise GtsmError(f"nft rejected the TTL-security rules (rc {proc.returncode}): {text}")
