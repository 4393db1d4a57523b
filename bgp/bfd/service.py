"""The BFD engine: every configured session of the node, their timers and their packets, on asyncio.

Stage: implements ``bgp.bfd.api.BfdService`` for the daemon. ``configure`` says which sessions are wanted,
``run`` serves them over ``bgp.bfd.transport.UdpTransport`` until cancelled, ``status`` reports them, and
the ``OnChange`` callback hears of every state change as it happens.

Owns: the sessions (``bgp.bfd.session.Session``) keyed by (peer, local), the allocation of unique local
discriminators, demultiplexing received packets (by Your Discriminator, or by (source, destination) while
that is 0; RFC 5880 section 6.8.6), the timer loop, and the retirement of removed sessions.

Complicating factors:
- A session that is removed tells the peer AdminDown (diagnostic 7) before it goes, so the peer does not
  read our leaving as a failure (RFC 5882 section 3.2); it is kept, retiring, for ``RETIRE_PACKETS`` more
  packets and then dropped. The callback is not called for sessions that were removed or added.
- Demultiplexing by discriminator also checks the source address: on a shared link a packet naming one
  session's discriminator from another neighbour is refused rather than trusted.
- Everything is bounded: at most ``max_sessions`` sessions (the rest are reported with an error and stay
  Down), the retiring set likewise, and the transport reads a bounded burst per wake-up.
- Time for the protocol comes from the injected clock; only the wait between wake-ups uses asyncio's. The
  loop never sleeps longer than ``MAX_WAIT`` so a clock that jumps is caught up promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from bgp.bfd.api import DOWN, BfdPeerConfig, BfdStatus, OnChange
from bgp.bfd.packet import BfdPacketError, decode, encode
from bgp.bfd.session import Output, Session
from bgp.bfd.transport import BFD_PORT, Deliver, UdpTransport

log = logging.getLogger(__name__)

DEFAULT_MAX_SESSIONS = 256
RETIRE_PACKETS = 3  # AdminDown packets a removed session still sends
MAX_WAIT = 1.0  # seconds: the longest the loop sleeps without looking at the clock again


class Transport(Protocol):
    """What the engine needs from its sockets (``UdpTransport``; tests pass a fake link)."""

    def sync(self, configs: Mapping[tuple[str, str], BfdPeerConfig]) -> float: ...

    def send(self, key: tuple[str, str], data: bytes) -> bool: ...

    def error(self, config: BfdPeerConfig) -> str: ...

    def close(self) -> None: ...


class BfdEngine:
    """``BfdService`` over UDP. Call ``configure`` and ``status`` from the event loop's thread."""

    def __init__(
        self,
        on_change: OnChange | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        port: int = BFD_PORT,
        transport: Callable[[Deliver], Transport] | None = None,
    ) -> None:
        self.on_change = on_change
        self._clock = clock
        self._rng = rng or random.Random()
        self._max_sessions = max_sessions
        factory = transport or (lambda deliver: UdpTransport(deliver, port=port, clock=clock, rng=self._rng))
        self._transport = factory(self._datagram)
        self._sessions: dict[tuple[str, str], Session] = {}
        self._retiring: dict[tuple[str, str], tuple[Session, int]] = {}  # key -> (session, packets left)
        self._by_discriminator: dict[int, Session] = {}
        self._over_cap: dict[tuple[str, str], BfdPeerConfig] = {}
        self._wake: asyncio.Event | None = None
        self._transport_synced = False
        self.dropped: Counter[str] = Counter()  # packets refused, by reason
        self.packets_sent = 0

    # ------------------------------------------------------------------ BfdService

    def configure(self, peers: Mapping[tuple[str, str], BfdPeerConfig]) -> None:
        now = self._clock()
        for key in [k for k in self._sessions if k not in peers]:
            session = self._sessions.pop(key)
            session.admin_down(now)
            self._retire(key, session, self._send(session, session.advance(now)))
        self._over_cap = {}
        for key, config in sorted(peers.items()):
            if key != config.key:
                raise ValueError(f"BFD session keyed {key} has the config of {config.key}")
            current = self._sessions.get(key)
            if current is not None:
                if current.config != config:
                    current.reconfigure(config, now)
            elif len(self._sessions) >= self._max_sessions:
                self._over_cap[key] = config
            else:
                self._forget_retiring(key)
                fresh = Session(config, self._discriminator(), now, self._rng)
                self._sessions[key] = fresh
                self._by_discriminator[fresh.local_discriminator] = fresh
        if self._over_cap:
            capped, cap = len(self._over_cap), self._max_sessions
            log.warning("BFD: %d sessions over the cap of %d stay Down", capped, cap)
        self._transport_synced = False
        self._poke()

    def status(self) -> list[BfdStatus]:
        found = [s.status(self._transport.error(s.config)) for s in self._sessions.values()]
        for config in self._over_cap.values():
            found.append(self._capped_status(config))
        return sorted(found, key=lambda s: (s.peer, s.local))

    def dropped_packets(self) -> dict[str, int]:
        """Received packets refused so far, by reason (the transport's TTL check and ours together)."""
        found = Counter(self.dropped)
        found.update(getattr(self._transport, "dropped", {}))
        return dict(found)

    async def run(self) -> None:
        self._wake = asyncio.Event()
        retry_at = float("inf")
        try:
            while True:
                now = self._clock()
                if not self._transport_synced or now >= retry_at:
                    retry_at = self._transport.sync(self._wanted())
                    self._transport_synced = True
                due = min(self.tick(now), retry_at, now + MAX_WAIT)
                self._wake.clear()
                # asyncio.timeout rather than wait_for: 3.11's wait_for can swallow a cancellation that
                # arrives as the event is set, and run() must always end when cancelled.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due - self._clock())):
                        await self._wake.wait()
        finally:
            self._wake = None
            self._transport.close()

    # ------------------------------------------------------------------ timers and packets

    def tick(self, now: float) -> float:
        """Run every timer due by now; returns the clock reading of the next one."""
        due = now + MAX_WAIT
        for session in list(self._sessions.values()):
            if session.next_due() <= now:
                self._handle(session, session.advance(now))
            due = min(due, session.next_due())
        for key, (session, left) in list(self._retiring.items()):
            if session.next_due() <= now:
                sent = self._send(session, session.advance(now))
                left -= sent
                if left <= 0:
                    self._forget_retiring(key)
                    continue
                self._retiring[key] = (session, left)
            due = min(due, session.next_due())
        return due

    def _datagram(self, data: bytes, source: str, destination: str) -> None:
        """A datagram that passed the transport's TTL check."""
        try:
            packet = decode(data)
        except BfdPacketError as exc:
            self.dropped[str(exc)] += 1
            return
        if packet.your_discriminator:
            session = self._by_discriminator.get(packet.your_discriminator)
            if session is None:
                self.dropped["unknown Your Discriminator"] += 1
                return
            if session.config.peer != source:
                self.dropped["Your Discriminator from another source"] += 1
                return
        else:
            session = self._sessions.get((source, destination))
            if session is None:
                self.dropped["no session for the source and destination"] += 1
                return
        now = self._clock()
        out = session.receive(packet, now)
        extra = session.advance(now)  # the Final answering a Poll, and a packet after a state change
        out.packets.extend(extra.packets)
        out.changed = out.changed or extra.changed
        self._handle(session, out)
        self._poke()  # the session's next timer moved

    def _handle(self, session: Session, out: Output) -> None:
        self._send(session, out)
        if out.changed and self._sessions.get(session.config.key) is session:
            status = session.status(self._transport.error(session.config))
            log.info(
                "BFD %s from %s: %s (%s)", status.peer, status.local, status.state, status.local_diagnostic
            )
            if self.on_change is not None:
                try:
                    self.on_change(status)
                except Exception:  # the engine must keep every other session's timers running
                    log.exception("BFD: the state change callback failed for %s", status.peer)

    def _send(self, session: Session, out: Output) -> int:
        for packet in out.packets:
            if self._transport.send(session.config.key, encode(packet)):
                self.packets_sent += 1
        return len(out.packets)

    # ------------------------------------------------------------------ bookkeeping

    def _wanted(self) -> dict[tuple[str, str], BfdPeerConfig]:
        wanted = {k: entry[0].config for k, entry in self._retiring.items()}
        wanted.update((k, s.config) for k, s in self._sessions.items())
        return wanted

    def _retire(self, key: tuple[str, str], session: Session, sent: int) -> None:
        self._forget_retiring(key)
        while len(self._retiring) >= self._max_sessions:
            self._forget_retiring(next(iter(self._retiring)))
        self._retiring[key] = (session, RETIRE_PACKETS - sent)

    def _forget_retiring(self, key: tuple[str, str]) -> None:
        entry = self._retiring.pop(key, None)
        if entry is not None:
            self._by_discriminator.pop(entry[0].local_discriminator, None)
            self._transport_synced = False

    def _discriminator(self) -> int:
        while True:
            candidate = self._rng.randint(1, 0xFFFFFFFF)
            if candidate not in self._by_discriminator:
                return candidate

    def _capped_status(self, config: BfdPeerConfig) -> BfdStatus:
        return BfdStatus(
            peer=config.peer,
            local=config.local,
            state=DOWN,
            local_discriminator=0,
            remote_discriminator=0,
            tx_interval_us=0,
            detection_time_us=0,
            remote_multiplier=0,
            local_diagnostic="No Diagnostic",
            remote_diagnostic="No Diagnostic",
            downs=0,
            since=0.0,
            error=f"over the cap of {self._max_sessions} BFD sessions",
        )

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()
