"""TTL security (GTSM, RFC 5082) for BGP sessions, enforced by the daemon with nftables.

Stage: a small dataplane of the intent, next to the ExaBGP config: ``bgp.daemon`` hands every new intent
to ``Gtsm.apply`` and calls ``Gtsm.remove`` on shutdown.

Owns: one nftables table (``inet calico_bgp_gtsm``) and nothing else in the ruleset. For each session
with ``ttlSecurity N`` it drops the peer's BGP packets whose TTL (hop limit) is below ``256 - N`` and
sends ours to that peer with TTL 255.

Complicating factors (docs/exabgp-notes.md):
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
- The script is built from checked tokens only (``confgen.tokens``: canonical addresses, ints in range, a
  fixed table-name grammar), however they were validated upstream. A session whose values fail is left out
  of the rules and reported (``calico_bgp_refused_sink_values_total{sink="nft"}``), never the whole
  ruleset; the renderer runs the same checks on those values and leaves that session out of the ExaBGP
  config, so no session runs unprotected because its rules were refused. A last check refuses a script
  with any character outside the few nft's grammar needs here.
- Someone else may change or delete the table (an ``nft flush ruleset``, a firewall reload), and nothing
  tells us: sessions would then run without TTL security while status says they have it. ``watch``
  lists the table every ``CHECK_INTERVAL`` seconds and compares it with the listing nft gave right after
  our last apply; any difference re-runs our last script (the same atomic transaction), logged once and
  counted in ``calico_bgp_gtsm_restores_total``. A table we do not want is not watched: removal is only
  ours to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from confgen import tokens
from confgen.intent import NodeIntent, PeerIntent
from confgen.refusals import NFT, SinkRefusals
from confgen.tokens import TokenError, shown

log = logging.getLogger(__name__)

TABLE = "calico_bgp_gtsm"
# Before the usual filter (0) so a later "accept" elsewhere cannot let a spoofed far-away packet in, and
# in the output path before anything else sees the packet's TTL.
PRIORITY = -150
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# Every character a script of ours can hold: names, numbers, addresses, "{ } ; < -" and spaces.
_SCRIPT_LINE = re.compile(r"[A-Za-z0-9_ .:;{}<-]*")
# How often the table is compared with what we applied: a flushed ruleset leaves TTL security off for at
# most this long (plus one nft run). One `nft list table` costs a few ms of CPU.
CHECK_INTERVAL = 10.0


class GtsmError(Exception):
    """nft refused or failed to apply the ruleset; the message carries its output."""


def _table_reset(table: str) -> list[str]:
    # "add" first so "delete" always has something to delete: one transaction, whether or not it existed.
    return [f"add table inet {table}", f"delete table inet {table}"]


def _checked_session(peer: PeerIntent) -> tuple[str, int, int, int]:
    """(address, IP version, hops, port) of a session, or ``TokenError`` naming the bad field."""
    fields = (
        ("family", tokens.family_version, peer.family),
        ("ttlSecurity", tokens.integer, peer.ttl_security, 1, 255),
        ("port", tokens.integer, peer.port, 1, 65535),
    )
    checked = []
    for what, check, value, *args in fields:
        try:
            checked.append(check(value, *args))
        except TokenError as exc:
            raise TokenError(f"{what} {shown(value)} {exc}") from None
    version, hops, port = checked
    try:
        address = tokens.address(peer.address, version)
    except TokenError as exc:
        raise TokenError(f"peer address {shown(peer.address)} {exc}") from None
    return address, version, hops, port


def _session_label(peer: object) -> str:
    name = getattr(peer, "name", None)
    resource = getattr(peer, "resource", "")
    owner = f"BGPPeer {shown(resource)} " if resource else ""
    return f"{owner}session {shown(name)}"


def _log_refusal(message: str) -> None:
    log.warning("%s", message)


def ruleset(intent: NodeIntent, table: str = TABLE, *, refused: Callable[[str], None] = _log_refusal) -> str:
    """The nft script that makes the table hold exactly the GTSM rules ``intent`` needs.

    With no session asking for TTL security the script only removes the table. A session whose values
    fail the checks is reported through ``refused`` and gets no rules; a bad table name or listen port
    (the whole table's, not one session's) raises ``GtsmError``.
    """
    if type(table) is not str or not _TABLE_NAME.fullmatch(table):
        raise GtsmError(f"TTL security: {shown(table)} is not an nftables table name")
    try:
        listen_port = tokens.integer(intent.listen_port, 1, 65535)
    except TokenError as exc:
        raise GtsmError(f"TTL security: listen port {shown(intent.listen_port)} {exc}") from None
    lines = _table_reset(table)
    input_rules: list[str] = []
    output_rules: list[str] = []
    sessions = []
    for peer in intent.gtsm_peers:
        try:
            sessions.append(_checked_session(peer))
        except TokenError as exc:
            refused(f"TTL security: no nftables rules for {_session_label(peer)}: {exc}")
    for address, version, hops, port in sorted(sessions, key=lambda s: (s[1], s[0])):
        ip, ttl = ("ip", "ip ttl") if version == 4 else ("ip6", "ip6 hoplimit")
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
    for line in lines:
        if not _SCRIPT_LINE.fullmatch(line):
            raise GtsmError(f"TTL security: refusing an nft script line outside its grammar: {shown(line)}")
    return "\n".join(lines) + "\n"


class Gtsm:
    def __init__(
        self,
        *,
        nft: Sequence[str] = ("nft",),
        table: str = TABLE,
        registry: CollectorRegistry | None = None,
        timeout: float = 10.0,
        refusals: SinkRefusals | None = None,  # counts and logs the sessions left out of the rules
        check_interval: float = CHECK_INTERVAL,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"{shown(table)} is not an nftables table name")
        self._nft = tuple(nft)  # the command, e.g. ("ip", "netns", "exec", "ns1", "nft") in tests
        self.table = table
        self._timeout = timeout
        self._applied: str | None = None  # the script nft last accepted
        self._expect_table = False  # that script leaves a table in place
        self._listing: str | None = None  # nft's listing of the table right after that script
        self._check_interval = check_interval
        self._sleep = sleep
        self._lock = asyncio.Lock()  # apply, remove and check each see the table they leave behind
        self._refused = (refusals if refusals is not None else SinkRefusals()).reporter(NFT)
        registry = registry if registry is not None else CollectorRegistry()
        self._m_sessions = Gauge(
            "calico_bgp_gtsm_sessions",
            "Sessions whose TTL security is enforced by nftables.",
            registry=registry,
        )
        self._m_errors = Counter(
            "calico_bgp_gtsm_errors", "Failures to apply the TTL-security nftables rules.", registry=registry
        )
        self._m_restores = Counter(
            "calico_bgp_gtsm_restores",
            "Times the TTL-security nftables table was found changed or deleted by someone else and "
            "restored.",
            registry=registry,
        )
        self.restores = 0

    async def apply(self, intent: NodeIntent, *, force: bool = False) -> bool:
        """Make the table match ``intent``; True when nft ran. Raises ``GtsmError`` if nft fails (the
        previous rules then stay in place: the transaction is all or nothing)."""
        refused: list[str] = []
        try:
            script = ruleset(intent, self.table, refused=refused.append)
        except GtsmError:
            self._m_errors.inc()
            raise
        for message in refused:
            self._refused(message)
        async with self._lock:
            if script == self._applied and not force:
                return False
            await self._install(script)
        self._m_sessions.set(len(intent.gtsm_peers) - len(refused))
        return True

    async def remove(self) -> None:
        """Delete the table (shutdown). Safe to call when it does not exist."""
        async with self._lock:
            await self._run("\n".join(_table_reset(self.table)) + "\n")
            self._applied, self._expect_table, self._listing = None, False, None
        self._m_sessions.set(0)

    async def check(self) -> bool:
        """Restore our table if someone else changed or deleted it; True when it was restored. Raises
        ``GtsmError`` when nft fails (the next check tries again)."""
        async with self._lock:
            if self._applied is None or not self._expect_table:
                return False
            now = await self._list()
            if now is not None and now == self._listing:
                return False
            what = "deleted" if now is None else "changed"
            log.warning(
                "TTL security: nftables table %s was %s by someone else; restoring it", self.table, what
            )
            await self._install(self._applied)
            self.restores += 1
            self._m_restores.inc()
            return True

    async def watch(self) -> None:
        """Run ``check`` every ``check_interval`` seconds, forever; failures are logged, never raised (the
        daemon would stop for them), and the next round tries again."""
        while True:
            await self._sleep(self._check_interval)
            try:
                await self.check()
            except GtsmError as exc:
                log.warning("TTL security: could not check or restore the nftables table: %s", exc)

    async def _install(self, script: str) -> None:
        await self._run(script)
        self._applied = script
        self._expect_table = f"table inet {self.table} {{" in script
        self._listing = await self._list() if self._expect_table else None

    async def _list(self) -> str | None:
        """nft's listing of our table; None when it does not exist. ``GtsmError`` when nft fails otherwise."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._nft,
                "list",
                "table",
                "inet",
                self.table,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise GtsmError(f"cannot run {self._nft[0]}: {exc}") from exc
        try:
            output, errors = await asyncio.wait_for(proc.communicate(), self._timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode == 0:
            return output.decode(errors="replace")
        text = errors.decode(errors="replace").strip()
        if "No such file or directory" in text:  # nft's words for a table that does not exist
            return None
        raise GtsmError(f"nft could not list table {self.table} (rc {proc.returncode}): {text}")

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
