"""FakeBfdService: the ``bgp.bfd.api.BfdService`` contract in memory, driven by the test.

Stage: test seam for the BGP side of BFD (``bgp.sessions``, status, metrics, the daemon's wiring), so those
tests need no sockets, no peer and no timers.

Owns: the configured sessions and their status; tests move a session with ``set_up`` / ``set_down`` (and a
diagnostic), and the fake calls the ``OnChange`` it was given, as the real service does.

Complicating factors (where the fake must behave as the real service does, and the contract test in
``tests/unit/bfd`` holds both to it):
- ``configure`` replaces the whole set: a new key starts Down with no diagnostic and no remote discriminator;
  a key that left is dropped without a callback; a key whose intervals changed keeps its state and counters.
- The callback fires only on a change of state, after the status is updated, and never from ``configure``.
- ``downs`` counts transitions out of Up, as the real service does; ``since`` is the clock at the change.
- ``run`` only waits to be cancelled: the fake has nothing to serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from bgp.bfd.api import (
    ADMIN_DOWN,
    DIAGNOSTICS,
    DOWN,
    STATES,
    UP,
    BfdPeerConfig,
    BfdStatus,
    OnChange,
)

SLOW_TX_US = 1_000_000  # RFC 5880 section 6.8.3: at least 1 s between packets while not Up
NO_DIAGNOSTIC = DIAGNOSTICS[0]
DETECTION_EXPIRED = DIAGNOSTICS[1]


class FakeBfdService:
    """Keeps ``BfdService``; ``configured`` holds the latest ``configure`` argument, ``configure_calls``
    counts the calls, and ``status()`` reports what the test set."""

    def __init__(
        self,
        on_change: OnChange | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        first_discriminator: int = 1,
    ) -> None:
        self.on_change = on_change
        self._clock = clock
        self._next_discriminator = first_discriminator
        self.configured: dict[tuple[str, str], BfdPeerConfig] = {}
        self.configure_calls = 0
        self._status: dict[tuple[str, str], BfdStatus] = {}
        self.running = False

    # ------------------------------------------------------------------ BfdService

    def configure(self, peers: Mapping[tuple[str, str], BfdPeerConfig]) -> None:
        self.configure_calls += 1
        for key in list(self._status):
            if key not in peers:
                del self._status[key]
        for key, config in peers.items():
            if key != config.key:
                raise ValueError(f"BFD session {config.peer} from {config.local} is keyed {key}")
            if key not in self._status:
                self._status[key] = self._fresh(config)
        self.configured = dict(peers)

    def status(self) -> list[BfdStatus]:
        return [self._status[key] for key in sorted(self._status)]

    async def run(self) -> None:
        self.running = True
        try:
            await asyncio.Event().wait()  # cancelled by the caller; nothing to serve
        finally:
            self.running = False

    # ------------------------------------------------------------------ driven by tests

    def set_up(
        self,
        peer: str,
        local: str | None = None,
        *,
        remote_discriminator: int = 0,
        control_independent: bool = False,
    ) -> BfdStatus:
        """The session to ``peer`` (from ``local``; the only one to ``peer`` when None) comes Up; the peer's
        packets carry the C bit when ``control_independent``."""
        key = self._key(peer, local)
        config = self.configured[key]
        current = self._status[key]
        remote = remote_discriminator or current.remote_discriminator or 0x1000 + current.local_discriminator
        updated = replace(
            current,
            remote_discriminator=remote,
            remote_multiplier=config.multiplier,
            tx_interval_us=config.min_tx_us,
            detection_time_us=config.multiplier * config.min_rx_us,
            remote_control_independent=control_independent,
        )
        return self._move(key, updated, UP, NO_DIAGNOSTIC)

    def set_down(
        self,
        peer: str,
        local: str | None = None,
        *,
        diagnostic: str = DETECTION_EXPIRED,
        remote_diagnostic: str | None = None,
    ) -> BfdStatus:
        """The session goes Down with ``diagnostic`` (ours) and, when given, the peer's."""
        return self._set_not_up(peer, local, DOWN, diagnostic, remote_diagnostic)

    def set_admin_down(self, peer: str, local: str | None = None) -> BfdStatus:
        """The peer said AdminDown: seen from here the session is Down, Neighbor Signaled Session Down."""
        return self._set_not_up(peer, local, DOWN, DIAGNOSTICS[3], DIAGNOSTICS[7])

    def set_state(
        self, peer: str, local: str | None, state: str, diagnostic: str = NO_DIAGNOSTIC
    ) -> BfdStatus:
        """Any state (Init, AdminDown included), for tests of how the BGP side reads states it seldom sees."""
        if state not in STATES:
            raise ValueError(f"not a BFD state: {state!r}")
        return (
            self._set_not_up(peer, local, state, diagnostic, None)
            if state != UP
            else self.set_up(peer, local)
        )

    # ------------------------------------------------------------------ internals

    def _set_not_up(
        self, peer: str, local: str | None, state: str, diagnostic: str, remote_diagnostic: str | None
    ) -> BfdStatus:
        if diagnostic not in DIAGNOSTICS or (
            remote_diagnostic is not None and remote_diagnostic not in DIAGNOSTICS
        ):
            raise ValueError(f"not a BFD diagnostic: {diagnostic!r} / {remote_diagnostic!r}")
        key = self._key(peer, local)
        current = self._status[key]
        remote = current.remote_diagnostic if remote_diagnostic is None else remote_diagnostic
        detection = 0 if state == ADMIN_DOWN else current.detection_time_us
        updated = replace(
            current, tx_interval_us=SLOW_TX_US, remote_diagnostic=remote, detection_time_us=detection
        )
        return self._move(key, updated, state, diagnostic)

    def _move(self, key: tuple[str, str], updated: BfdStatus, state: str, diagnostic: str) -> BfdStatus:
        """Store ``updated`` in ``state`` with ``diagnostic``; count a Down and call back on a change."""
        current = self._status[key]
        changed = state != current.state
        updated = replace(
            updated,
            state=state,
            local_diagnostic=diagnostic,
            downs=current.downs + (1 if current.state == UP and state != UP else 0),
            since=self._clock() if changed else current.since,
        )
        self._status[key] = updated
        if changed and self.on_change is not None:
            self.on_change(updated)
        return updated

    def _key(self, peer: str, local: str | None) -> tuple[str, str]:
        if local is not None:
            key = (peer, local)
            if key not in self._status:
                raise KeyError(f"no BFD session to {peer} from {local}")
            return key
        keys = [key for key in self._status if key[0] == peer]
        if len(keys) != 1:
            raise KeyError(f"{len(keys)} BFD sessions to {peer}: name the local address")
        return keys[0]

    def _fresh(self, config: BfdPeerConfig) -> BfdStatus:
        discriminator = self._next_discriminator
        self._next_discriminator += 1
        return BfdStatus(
            peer=config.peer,
            local=config.local,
            state=DOWN,
            local_discriminator=discriminator,
            remote_discriminator=0,
            tx_interval_us=SLOW_TX_US,
            detection_time_us=0,
            remote_multiplier=0,
            local_diagnostic=NO_DIAGNOSTIC,
            remote_diagnostic=NO_DIAGNOSTIC,
            downs=0,
            since=self._clock(),
        )
