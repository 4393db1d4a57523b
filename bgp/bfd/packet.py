"""BFD Control packets (RFC 5880 section 4.1): bytes to ``ControlPacket`` and back, with the reception checks.

Stage: the wire edge of the BFD engine; ``bgp.bfd.transport`` hands received datagrams here and sends what
``encode`` makes, ``bgp.bfd.session`` works only on decoded packets. Pure: no I/O.

Owns: the 24-byte mandatory section's layout, and the checks of section 6.8.6 that need no session state
(version, length, detect multiplier, multipoint bit, discriminators, authentication). Each refusal raises
``BfdPacketError`` with a reason a log line can carry; nothing else ever escapes ``decode``.

Complicating factors:
- Authentication is not implemented (single-hop BFD between a node and its ToR rides on the GTSM-style TTL
  255 check of RFC 5881 instead), so a packet with the A bit set is refused rather than accepted unchecked:
  a peer that insists on authentication must see the session stay Down, not come Up unauthenticated.
- The Length field may be shorter than the UDP payload (trailing bytes are ignored, as the RFC allows) but
  never longer, and without authentication it must be exactly 24.
- Your Discriminator may be 0 only while the sender has not heard from us, i.e. in Down or AdminDown; the
  session-selection half of that rule (an unknown non-zero discriminator) is the service's, which holds
  the sessions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bgp.bfd.api import DIAGNOSTICS, STATES

VERSION = 1
LENGTH = 24  # the mandatory section; no authentication section is ever sent or accepted
MAX_DISCRIMINATOR = 0xFFFFFFFF
MAX_INTERVAL_US = 0xFFFFFFFF
_LAYOUT = struct.Struct("!BBBBIIIII")

# Byte 1 flag bits, after the two state bits.
_POLL, _FINAL, _CPI, _AUTH, _DEMAND, _MULTIPOINT = 0x20, 0x10, 0x08, 0x04, 0x02, 0x01

_DOWN_STATES = (STATES.index("AdminDown"), STATES.index("Down"))


class BfdPacketError(ValueError):
    """A received packet was refused; the message says why (RFC 5880 section 6.8.6)."""


@dataclass(frozen=True)
class ControlPacket:
    """The mandatory section of a Control packet; intervals in microseconds, as on the wire."""

    state: int  # index into api.STATES
    diagnostic: int  # index into api.DIAGNOSTICS (0..31 on the wire)
    detect_mult: int
    my_discriminator: int
    your_discriminator: int
    desired_min_tx_us: int
    required_min_rx_us: int
    required_min_echo_rx_us: int = 0  # we never run the Echo function, so we always send 0
    poll: bool = False
    final: bool = False
    control_plane_independent: bool = False
    demand: bool = False
    multipoint: bool = False  # must be 0 on the wire; kept so tests can build the refused case
    authentication: bool = False  # likewise: we never set it and refuse it when received
    version: int = VERSION

    @property
    def state_name(self) -> str:
        return STATES[self.state]

    @property
    def diagnostic_name(self) -> str:
        if self.diagnostic < len(DIAGNOSTICS):
            return DIAGNOSTICS[self.diagnostic]
        return f"Reserved ({self.diagnostic})"


def encode(packet: ControlPacket) -> bytes:
    """The packet's 24 bytes. Field ranges are checked: a bug must not reach the wire as a wrapped value."""
    _check_range("version", packet.version, 7)
    _check_range("diagnostic", packet.diagnostic, 31)
    _check_range("state", packet.state, 3)
    _check_range("detect_mult", packet.detect_mult, 255)
    for name in ("my_discriminator", "your_discriminator"):
        _check_range(name, getattr(packet, name), MAX_DISCRIMINATOR)
    for name in ("desired_min_tx_us", "required_min_rx_us", "required_min_echo_rx_us"):
        _check_range(name, getattr(packet, name), MAX_INTERVAL_US)
    flags = packet.state << 6
    for bit, on in (
        (_POLL, packet.poll),
        (_FINAL, packet.final),
        (_CPI, packet.control_plane_independent),
        (_AUTH, packet.authentication),
        (_DEMAND, packet.demand),
        (_MULTIPOINT, packet.multipoint),
    ):
        if on:
            flags |= bit
    return _LAYOUT.pack(
        (packet.version << 5) | packet.diagnostic,
        flags,
        packet.detect_mult,
        LENGTH,
        packet.my_discriminator,
        packet.your_discriminator,
        packet.desired_min_tx_us,
        packet.required_min_rx_us,
        packet.required_min_echo_rx_us,
    )


def decode(data: bytes) -> ControlPacket:
    """Parse and check one received datagram; raises ``BfdPacketError`` (and only that) when it is refused.

    The checks run in the order of RFC 5880 section 6.8.6, so the reason given is the first rule broken."""
    if len(data) < 4:
        raise BfdPacketError(f"{len(data)} bytes: shorter than the {LENGTH}-byte mandatory section")
    version = data[0] >> 5
    if version != VERSION:
        raise BfdPacketError(f"version {version}: only version {VERSION} is spoken")
    length = data[3]
    authentication = bool(data[1] & _AUTH)
    minimum = LENGTH + 2 if authentication else LENGTH
    if length < minimum:
        raise BfdPacketError(f"Length field {length} is below the minimum of {minimum}")
    if length > len(data):
        raise BfdPacketError(f"Length field {length} exceeds the {len(data)}-byte payload")
    (first, flags, detect_mult, _, mine, yours, tx, rx, echo) = _LAYOUT.unpack_from(data)
    packet = ControlPacket(
        state=flags >> 6,
        diagnostic=first & 0x1F,
        detect_mult=detect_mult,
        my_discriminator=mine,
        your_discriminator=yours,
        desired_min_tx_us=tx,
        required_min_rx_us=rx,
        required_min_echo_rx_us=echo,
        poll=bool(flags & _POLL),
        final=bool(flags & _FINAL),
        control_plane_independent=bool(flags & _CPI),
        demand=bool(flags & _DEMAND),
        multipoint=bool(flags & _MULTIPOINT),
        authentication=authentication,
        version=version,
    )
    if detect_mult == 0:
        raise BfdPacketError("Detect Mult is 0")
    if packet.multipoint:
        raise BfdPacketError("Multipoint bit is set")
    if mine == 0:
        raise BfdPacketError("My Discriminator is 0")
    if yours == 0 and packet.state not in _DOWN_STATES:
        raise BfdPacketError(f"Your Discriminator is 0 in state {packet.state_name}")
    if authentication:
        raise BfdPacketError("Authentication bit is set: authentication is not supported")
    if length != LENGTH:
        raise BfdPacketError(f"Length field {length} without authentication (expected {LENGTH})")
    if packet.poll and packet.final:
        # Section 6.5: a system must never send both; answering such a packet could loop forever.
        raise BfdPacketError("Poll and Final bits are both set")
    return packet


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} {value} is outside 0..{maximum}")
