"""One BFD session's state machine (RFC 5880 asynchronous mode), driven by packets and a clock it is given.

Stage: the protocol core between ``bgp.bfd.packet`` (decoded packets in, packets to send out) and
``bgp.bfd.service`` (which owns sockets, discriminator allocation and timers). Pure: no I/O, no sleeps;
time is the ``now`` passed to each call, so tests drive it with a number.

Owns: the session variables of section 6.8.1 (states, discriminators, diagnostics, the peer's intervals),
the transitions of sections 6.2 and 6.8.6, the transmit interval with jitter (6.8.7), the detection time
(6.8.4), the slow rate while not Up and the Poll/Final sequence on interval changes (6.8.3), and the
count of downs.

Complicating factors:
- Two interval sets exist while a Poll sequence runs: the one we advertise and the one last acknowledged
  with a Final. Until the Final we transmit at the smaller TX of the two (a peer that already read a lower
  value in a Poll may time us out otherwise; a raised value must wait, 6.8.3) and detect with the larger
  RX of the two (the peer keeps its old, faster pace until it has answered).
- While not Up we advertise at least 1 s as Desired Min TX (6.8.3); reaching Up is itself an interval
  change and starts a Poll to the configured rate, as FRR and BIRD do.
- A state change or the start of a Poll sends a packet at once instead of waiting for the timer, so the
  three-way handshake and a rate change take one round trip rather than one slow interval.
- A Final answers a Poll as soon as possible, outside the periodic schedule (6.8.7).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bgp.bfd.api import DIAGNOSTICS, STATES, BfdPeerConfig, BfdStatus
from bgp.bfd.packet import ControlPacket

ADMIN_DOWN, DOWN, INIT, UP = range(4)  # wire values, = index into api.STATES
DIAG_NONE, DIAG_DETECTION_EXPIRED, DIAG_NEIGHBOR_DOWN, DIAG_ADMIN_DOWN = 0, 1, 3, 7
SLOW_TX_US = 1_000_000  # section 6.8.3: not faster than one packet a second while not Up
US = 1e-6  # seconds per microsecond


@dataclass
class Output:
    """What a call asks of the transport: packets to send now, and whether the state changed."""

    packets: list[ControlPacket] = field(default_factory=list)
    changed: bool = False


class Session:
    """One asynchronous-mode session to one peer. ``receive`` and ``advance`` return an ``Output``;
    ``next_due`` says when ``advance`` must next be called."""

    def __init__(
        self, config: BfdPeerConfig, local_discriminator: int, now: float, rng: random.Random | None = None
    ) -> None:
        if not 0 < local_discriminator <= 0xFFFFFFFF:
            raise ValueError(f"local discriminator {local_discriminator} is outside 1..2^32-1")
        if not 1 <= config.multiplier <= 255:
            raise ValueError(f"detect multiplier {config.multiplier} is outside 1..255")
        self.config = config
        self.local_discriminator = local_discriminator
        self._rng = rng or random.Random()
        self.state = DOWN
        self.local_diag = DIAG_NONE
        self.since = now
        self.downs = 0
        self.remote_discriminator = 0
        self.remote_state = DOWN
        self.remote_diag = DIAG_NONE
        self.remote_detect_mult = 0
        self.remote_min_rx_us = 1  # section 6.8.1's initial value: until heard, our own rate rules
        self.remote_desired_min_tx_us = 0
        self.remote_control_independent = False
        self._advertised = self._target()  # (desired min TX, required min RX) in our packets
        self._acknowledged = self._advertised  # the pair the peer confirmed with a Final
        self.polling = False
        self._final_due: float | None = None  # when a Poll was received that still needs its Final
        self._last_rx: float | None = None
        self._next_tx = now  # the first packet goes out at once
        self._scheduled_with_us = SLOW_TX_US  # the interval _next_tx was computed from

    # ------------------------------------------------------------------ intervals

    def _target(self) -> tuple[int, int]:
        tx = self.config.min_tx_us if self.state == UP else max(self.config.min_tx_us, SLOW_TX_US)
        return (tx, self.config.min_rx_us)

    @property
    def desired_min_tx_us(self) -> int:
        """The Desired Min TX our packets carry now."""
        return self._advertised[0]

    @property
    def required_min_rx_us(self) -> int:
        """The Required Min RX our packets carry now."""
        return self._advertised[1]

    @property
    def tx_interval_us(self) -> int:
        """The transmit interval before jitter: the slower of our TX and the peer's RX (section 6.8.7)."""
        ours = min(self._advertised[0], self._acknowledged[0]) if self.polling else self._advertised[0]
        return max(ours, self.remote_min_rx_us)

    @property
    def detection_time_us(self) -> int:
        """The peer's Detect Mult times the agreed receive interval (section 6.8.4); 0 before it is heard."""
        ours = max(self._advertised[1], self._acknowledged[1]) if self.polling else self._advertised[1]
        return self.remote_detect_mult * max(ours, self.remote_desired_min_tx_us)

    def _jittered(self, interval_us: int) -> float:
        """Seconds to the next packet: 75-100 % of the interval, 75-90 % with Detect Mult 1 (6.8.7)."""
        top = 0.9 if self.config.multiplier == 1 else 1.0
        return interval_us * US * self._rng.uniform(0.75, top)

    def _schedule(self, now: float) -> None:
        self._scheduled_with_us = self.tx_interval_us
        self._next_tx = now + self._jittered(self._scheduled_with_us)

    def _apply_intervals(self, now: float) -> None:
        target = self._target()
        if target == self._advertised:
            return
        if self.state == UP:
            if not self.polling:  # a Poll already running keeps the last acknowledged pair
                self._acknowledged = self._advertised
            self.polling = True
            self._next_tx = now
        else:  # nothing is being detected by either side at a fast rate: no Poll needed
            self._acknowledged = target
            self.polling = False
        self._advertised = target

    def reconfigure(self, config: BfdPeerConfig, now: float) -> Output:
        """New intervals or multiplier for the same (peer, local); interval changes go through a Poll."""
        if config.key != self.config.key:
            raise ValueError(f"reconfigure {self.config.key} with the config of {config.key}")
        if not 1 <= config.multiplier <= 255:
            raise ValueError(f"detect multiplier {config.multiplier} is outside 1..255")
        self.config = config
        self._apply_intervals(now)
        return Output()

    # ------------------------------------------------------------------ events

    def _change(self, state: int, diag: int, now: float) -> None:
        if self.state == UP:
            self.downs += 1
        self.state = state
        self.local_diag = diag
        self.since = now
        self._next_tx = now
        self._apply_intervals(now)

    def admin_down(self, now: float) -> Output:
        """Stop the session on our side: AdminDown with diagnostic 7, still sent to the peer (6.8.16)."""
        if self.state == ADMIN_DOWN:
            return Output()
        self._change(ADMIN_DOWN, DIAG_ADMIN_DOWN, now)
        self.polling = False
        self._final_due = None
        return Output(changed=True)

    def receive(self, packet: ControlPacket, now: float) -> Output:
        """A packet that passed ``packet.decode`` and was demultiplexed to this session (6.8.6)."""
        self.remote_discriminator = packet.my_discriminator
        self.remote_state = packet.state
        self.remote_diag = packet.diagnostic
        self.remote_detect_mult = packet.detect_mult
        self.remote_min_rx_us = packet.required_min_rx_us
        self.remote_desired_min_tx_us = packet.desired_min_tx_us
        self.remote_control_independent = packet.control_plane_independent
        if packet.final and self.polling:
            self.polling = False
            self._acknowledged = self._advertised
        self._last_rx = now
        # A slower peer RX takes effect from the next packet; a faster one must not wait a whole old interval.
        if self.tx_interval_us < self._scheduled_with_us:
            self._schedule(now)
        if self.state == ADMIN_DOWN:
            return Output()
        before = self.state
        if packet.state == ADMIN_DOWN:
            if self.state != DOWN:
                self._change(DOWN, DIAG_NEIGHBOR_DOWN, now)
        elif self.state == DOWN:
            if packet.state == DOWN:
                self._change(INIT, DIAG_NONE, now)
            elif packet.state == INIT:
                self._change(UP, DIAG_NONE, now)
        elif self.state == INIT:
            if packet.state in (INIT, UP):
                self._change(UP, DIAG_NONE, now)
        elif packet.state == DOWN:  # we are Up
            self._change(DOWN, DIAG_NEIGHBOR_DOWN, now)
        if packet.poll:
            self._final_due = now
        return Output(changed=self.state != before)

    def advance(self, now: float) -> Output:
        """Run the timers due by now: detection expiry, then a pending Final, then the periodic packet."""
        out = Output()
        if self._last_rx is not None and now >= self._last_rx + self.detection_time_us * US:
            self._last_rx = None
            self.remote_discriminator = 0  # section 6.8.1: forget the peer once it has gone quiet
            if self.state in (INIT, UP):
                self._change(DOWN, DIAG_DETECTION_EXPIRED, now)
                out.changed = True
        if self._final_due is not None:
            self._final_due = None
            out.packets.append(self.packet(final=True))
        if now >= self._next_tx:
            if self.remote_min_rx_us == 0:  # the peer asked for no packets at all (6.8.7)
                self._next_tx = now + SLOW_TX_US * US
            else:
                out.packets.append(self.packet(poll=self.polling))
                self._schedule(now)
        return out

    def next_due(self) -> float:
        """The clock reading at which ``advance`` has work to do."""
        due = self._next_tx
        if self._last_rx is not None:
            due = min(due, self._last_rx + self.detection_time_us * US)
        if self._final_due is not None:
            due = min(due, self._final_due)
        return due

    # ------------------------------------------------------------------ views

    def packet(self, *, poll: bool = False, final: bool = False) -> ControlPacket:
        return ControlPacket(
            state=self.state,
            diagnostic=self.local_diag,
            detect_mult=self.config.multiplier,
            my_discriminator=self.local_discriminator,
            your_discriminator=self.remote_discriminator,
            desired_min_tx_us=self._advertised[0],
            required_min_rx_us=self._advertised[1],
            poll=poll,
            final=final,
        )

    def status(self, error: str = "") -> BfdStatus:
        running = self.state in (INIT, UP) and self._last_rx is not None
        return BfdStatus(
            peer=self.config.peer,
            local=self.config.local,
            state=STATES[self.state],
            local_discriminator=self.local_discriminator,
            remote_discriminator=self.remote_discriminator,
            tx_interval_us=self.tx_interval_us,
            detection_time_us=self.detection_time_us if running else 0,
            remote_multiplier=self.remote_detect_mult,
            local_diagnostic=DIAGNOSTICS[self.local_diag],
            remote_diagnostic=_diag_name(self.remote_diag),
            downs=self.downs,
            since=self.since,
            remote_control_independent=self.remote_control_independent,
            error=error,
        )


def _diag_name(code: int) -> str:
    return DIAGNOSTICS[code] if code < len(DIAGNOSTICS) else f"Reserved ({code})"
