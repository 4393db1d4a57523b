"""The Adj-RIB-Out: what we told ExaBGP per peer, and the API commands that bring it up to date.

Stage: the announcement side of the route distributor (``bgp.speaker`` drives it). Inputs: the prefixes
whose export may have changed, each established peer, and the export decision for a (peer, prefix)
(``bgp.policy`` behind the speaker). Output: API command lines, returned to the speaker, which sends them.

Owns: ``sent`` (peer -> prefix -> the advertisement ExaBGP holds from us), the peers owed a full resend
(their session just came up), and the peers owed an End-of-RIB.

Complicating factors:
- Only established peers get commands: ExaBGP 5.0.15 ignores a reload while any neighbour has updates
  queued, and a neighbour that is down would keep them queued (docs/exabgp-notes.md). A peer that comes up
  gets the whole table instead.
- A resend announces everything we want without comparing (ExaBGP drops what it already holds) and
  withdraws everything we may have sent before: a neighbour recreated by a reload holds nothing, and the
  withdraws are then harmless.
- End-of-RIB (the config sets ``manual-eor``) waits until the workloads are known: a peer that kept our
  routes through our restart sweeps what the End-of-RIB does not cover, so it must follow a complete table.
- Commands are built per peer as one bulk command per attribute set, with one final command per prefix per
  batch (``bgp.exabgp.commands``); a value the builder refuses costs that route, not the batch.
- ``sent`` is the largest per-route state on an exporting node (every prefix for every peer): equal
  advertisements are stored as one shared object (bounded by ``INTERNED``).
- Propagation timing asks which of the prefixes it follows (``track``) some command carried (``carried``):
  found per peer by walking the smaller of the two sets, and usually all at the first peer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Set

from bgp.exabgp.commands import Advertisement, Refused, eor_command, peer_commands
from confgen.intent import PeerIntent

Export = Callable[[PeerIntent, str], Advertisement | None]

# Distinct advertisements remembered for sharing: a node's exports have a few (one per next hop and policy
# outcome); past this many, sharing starts over (what is stored stays valid, only new copies go unshared).
INTERNED = 4096


class AdjRibOut:
    def __init__(self, *, refused: Refused) -> None:
        self._refused = refused
        self._sent: dict[str, dict[str, Advertisement]] = {}
        self._resend: set[str] = set()
        self._eor_due: set[str] = set()
        # One object per distinct advertisement: ``sent`` holds (peers x prefixes) of them, and the export
        # decision builds a new, equal one per prefix (about 100 bytes each).
        self._interned: dict[Advertisement, Advertisement] = {}
        self._last: Advertisement | None = None  # the last one interned as itself: found without hashing
        # (peer, prefix) export decisions taken so far: the work a flush cost on this side.
        self.compared = 0
        # The prefixes of the last lines()'s ``track`` that a command carried to some peer (bgp.latency).
        self.carried: Set[str] = frozenset()

    # ------------------------------------------------------------------ what sessions tell us

    def session_up(self, peer: str) -> None:
        """A new session: it gets our whole table, then End-of-RIB."""
        self._resend.add(peer)
        self._eor_due.add(peer)

    def session_down(self, peer: str) -> None:
        self._eor_due.discard(peer)

    def forget(self, peer: str) -> None:
        """The peer left the configuration."""
        self._sent.pop(peer, None)
        self._eor_due.discard(peer)  # due while we waited for the workloads, then removed
        self._resend.discard(peer)

    def exabgp_lost(self) -> None:
        """ExaBGP holds nothing we sent: each peer gets everything again when its session comes up."""
        self._sent.clear()
        self._resend.clear()

    # ------------------------------------------------------------------ the diff

    def lines(
        self,
        changed: Collection[str],
        peers: Mapping[str, PeerIntent],
        established: Callable[[str], bool],
        export: Export,
        everything: Callable[[], set[str]],
        eor_allowed: bool,
        track: Collection[str] = (),
    ) -> list[str]:
        """The commands that make each established peer's Adj-RIB-Out match ``export`` for ``changed``
        (for a peer owed a resend: for ``everything()``, our whole table), End-of-RIB where due. Which of
        ``track`` some command carries is left in ``carried``."""
        lines: list[str] = []
        wanted = None
        untracked = set(track)
        carried: set[str] = set()
        for address, peer in peers.items():
            if not established(address):
                continue  # nothing queued for a neighbour that is down; it gets the full table when up
            sent = self._sent.setdefault(address, {})
            prefixes: Collection[str] = changed
            compare: Mapping[str, Advertisement] = sent
            if address in self._resend:
                if wanted is None:
                    wanted = everything()
                prefixes, compare = wanted | sent.keys(), {}
            self.compared += len(prefixes)
            changes: dict[str, Advertisement | None] = {}
            for prefix in prefixes:
                adv = export(peer, prefix)
                if adv is None:
                    if prefix in sent:
                        changes[prefix] = None
                        del sent[prefix]
                else:
                    held = compare.get(prefix)
                    if held is not adv and held != adv:
                        changes[prefix] = sent[prefix] = self._intern(adv)
            if changes:
                lines.extend(peer_commands(address, changes, refused=self._refused))
                if untracked:  # usually all found at the first peer: at most one pass over each side
                    if len(untracked) <= len(changes):
                        found = {prefix for prefix in untracked if prefix in changes}
                    else:
                        found = {prefix for prefix in changes if prefix in untracked}
                    carried |= found
                    untracked -= found
            if address in self._eor_due and eor_allowed:
                self._eor_due.discard(address)
                afi = "ipv6" if peer.family == "ipv6" else "ipv4"
                eor = eor_command(address, afi, refused=self._refused)
                if eor is not None:
                    lines.append(eor)
        self._resend.clear()
        self.carried = carried
        return lines

    def _intern(self, adv: Advertisement) -> Advertisement:
        if adv is self._last:  # the policy hands out one object per attribute set of our own routes
            return adv
        interned = self._interned.get(adv)
        if interned is None:
            if len(self._interned) >= INTERNED:
                self._interned.clear()
            interned = self._interned[adv] = adv
        if interned is adv:
            self._last = adv
        return interned

    # ------------------------------------------------------------------ views

    @property
    def sent(self) -> Mapping[str, Mapping[str, Advertisement]]:
        return self._sent

    def prefixes(self) -> set[str]:
        """Every prefix some peer holds from us."""
        out: set[str] = set()
        for sent in self._sent.values():
            out |= sent.keys()
        return out

    def announced_count(self, peer: str) -> int:
        return len(self._sent.get(peer, {}))
