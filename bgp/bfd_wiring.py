"""BFD in the node daemon: the engine, fed from the intent and the interface addresses, feeding the speaker.

Stage: wiring, the BFD part of ``bgp.daemon`` (kept here so the daemon stays one screen of wiring). Inputs:
each intent (which peers ask for BFD), the kernel's interface addresses (which of them are directly
connected) and the engine's state changes. Outputs: the engine's configuration, the speaker's holds and
teardowns (``bgp.sessions`` through ``Speaker.set_bfd`` / ``bfd_changed``) and the BFD metrics.

Owns: the engine (``bgp.bfd.service.BfdEngine`` unless a factory is given: tests pass
``bgp.bfd.testing.FakeBfdService``), the daemon-wide timers, and the last intent and addresses.

Complicating factors:
- The engine is configured only when the set of sessions changes, so an intent that changes nothing for
  BFD (most do) restarts no session; the speaker is told the view again each time all the same, cheaply.
- The engine calls back on the event loop, in order; a change is handed to the speaker at once and the
  speaker's wake-up does the rest (teardown command, paths out of the RIB and the kernel).
- Until the first interface dump no peer counts as directly connected: BFD sessions (and their holds)
  start once the addresses are known, and the BGP sessions are not held meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from bgp.bfd.api import BfdService, BfdStatus, OnChange
from bgp.bfd.gate import BfdTimers, Wanted, wanted_sessions

if TYPE_CHECKING:
    from bgp.metrics import BfdMetrics
    from bgp.speaker import Speaker
    from confgen.intent import NodeIntent

log = logging.getLogger(__name__)

ServiceFactory = Callable[[OnChange], BfdService]


def engine_factory(on_change: OnChange) -> BfdService:
    """The real engine over UDP (imported here: the sockets are opened by its ``run``)."""
    from bgp.bfd.service import BfdEngine

    return BfdEngine(on_change)


class BfdWiring:
    def __init__(
        self,
        speaker: Speaker,
        timers: BfdTimers | None = None,
        *,
        factory: ServiceFactory = engine_factory,
        metrics: BfdMetrics | None = None,
    ) -> None:
        self._speaker = speaker
        self._timers = timers or BfdTimers()
        self._metrics = metrics
        self.service = factory(self._on_change)
        self._intent: NodeIntent | None = None
        self._addresses: frozenset[str] | None = None  # None until the first dump
        self._wanted: Wanted | None = None

    def set_intent(self, intent: NodeIntent) -> None:
        self._intent = intent
        self._apply()

    def set_interface_addresses(self, addresses: Iterable[str]) -> None:
        """The kernel's interface addresses (``routes.addresses``, ``10.0.0.11/24``)."""
        self._addresses = frozenset(addresses)
        self._apply()

    async def run(self) -> None:
        """Serve BFD until cancelled (the engine's ``run``)."""
        await self.service.run()

    def _apply(self) -> None:
        if self._intent is None or self._addresses is None:
            return
        wanted = wanted_sessions(self._intent.peers, self._addresses, self._timers)
        if self._wanted is None or wanted.configs != self._wanted.configs:
            self.service.configure(wanted.configs)
            log.info("BFD: %d sessions configured", len(wanted.configs))
        if self._wanted is None or wanted.notes != self._wanted.notes:
            for peer, note in sorted(wanted.notes.items()):
                log.warning("peer %s asks for BFD: %s", peer, note)
        self._wanted = wanted
        statuses = self.service.status()
        self._speaker.set_bfd(wanted, statuses)
        if self._metrics is not None:
            self._metrics.observe(statuses)

    def _on_change(self, status: BfdStatus) -> None:
        log.info(
            "BFD %s from %s: %s (%s, peer says %s)",
            status.peer, status.local, status.state, status.local_diagnostic, status.remote_diagnostic,
        )  # fmt: skip
        self._speaker.bfd_changed(status)
        if self._metrics is not None:
            self._metrics.observe(self.service.status())
