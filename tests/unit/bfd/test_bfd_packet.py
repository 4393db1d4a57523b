"""BFD Control packet encode/decode and the reception checks of RFC 5880 section 6.8.6 (bgp.bfd.packet)."""

from __future__ import annotations

import contextlib
import re
import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp.bfd.packet import LENGTH, BfdPacketError, ControlPacket, decode, encode

UP, DOWN, ADMIN_DOWN, INIT = 3, 1, 0, 2

GOOD = ControlPacket(
    state=UP,
    diagnostic=0,
    detect_mult=3,
    my_discriminator=0x11223344,
    your_discriminator=0x55667788,
    desired_min_tx_us=300_000,
    required_min_rx_us=200_000,
)


def test_layout_matches_section_4_1():
    wire = encode(replace(GOOD, poll=True, diagnostic=3, control_plane_independent=True))
    assert wire == bytes(
        [
            (1 << 5) | 3,  # version 1, diag 3
            (UP << 6) | 0x20 | 0x08,  # state Up, P, C
            3,
            24,
            *struct.pack("!IIIII", 0x11223344, 0x55667788, 300_000, 200_000, 0),
        ]
    )
    assert decode(wire) == replace(GOOD, poll=True, diagnostic=3, control_plane_independent=True)


def _wire(packet: ControlPacket, *, length: int | None = None, version: int | None = None) -> bytes:
    data = bytearray(encode(packet))
    if length is not None:
        data[3] = length
    if version is not None:
        data[0] = (version << 5) | (data[0] & 0x1F)
    return bytes(data)


@pytest.mark.parametrize(
    "wire, reason",
    [
        (b"", "shorter than the 24-byte"),
        (b"\x20\xc0\x03", "shorter than the 24-byte"),
        (_wire(GOOD, version=0), "version 0"),
        (_wire(GOOD, version=2), "version 2"),
        (_wire(GOOD, length=23), "below the minimum of 24"),
        (_wire(GOOD, length=25), "exceeds the 24-byte payload"),
        (_wire(GOOD, length=25) + b"\0", "without authentication (expected 24)"),
        (_wire(replace(GOOD, detect_mult=0)), "Detect Mult is 0"),
        (_wire(replace(GOOD, multipoint=True)), "Multipoint bit is set"),
        (_wire(replace(GOOD, my_discriminator=0)), "My Discriminator is 0"),
        (_wire(replace(GOOD, your_discriminator=0)), "Your Discriminator is 0 in state Up"),
        (_wire(replace(GOOD, state=INIT, your_discriminator=0)), "Your Discriminator is 0 in state Init"),
        (_wire(replace(GOOD, authentication=True), length=24), "below the minimum of 26"),
        (_wire(replace(GOOD, authentication=True), length=26) + b"\1\2", "authentication is not supported"),
        (_wire(replace(GOOD, poll=True, final=True)), "Poll and Final bits are both set"),
    ],
)
def test_refusals_name_the_rule(wire, reason):
    with pytest.raises(BfdPacketError, match=re.escape(reason)):
        decode(wire)


@pytest.mark.parametrize("state", [DOWN, ADMIN_DOWN])
def test_your_discriminator_0_is_fine_while_down(state):
    packet = replace(GOOD, state=state, your_discriminator=0)
    assert decode(encode(packet)) == packet


def test_trailing_bytes_past_the_length_are_ignored():
    assert decode(encode(GOOD) + b"\xff" * 8) == GOOD


@pytest.mark.parametrize(
    "field, value",
    [("diagnostic", 32), ("state", 4), ("detect_mult", 256), ("my_discriminator", 2**32)],
)
def test_encode_refuses_values_that_do_not_fit(field, value):
    with pytest.raises(ValueError, match=field):
        encode(replace(GOOD, **{field: value}))


valid_packets = st.builds(
    ControlPacket,
    state=st.integers(0, 3),
    diagnostic=st.integers(0, 31),
    detect_mult=st.integers(1, 255),
    my_discriminator=st.integers(1, 2**32 - 1),
    your_discriminator=st.integers(1, 2**32 - 1),
    desired_min_tx_us=st.integers(0, 2**32 - 1),
    required_min_rx_us=st.integers(0, 2**32 - 1),
    required_min_echo_rx_us=st.integers(0, 2**32 - 1),
    poll=st.booleans(),
    final=st.just(False),
    control_plane_independent=st.booleans(),
    demand=st.booleans(),
)


@given(valid_packets)
def test_round_trip(packet):
    wire = encode(packet)
    assert len(wire) == LENGTH
    assert decode(wire) == packet


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_our_error(data):
    try:
        packet = decode(data)
    except BfdPacketError:
        return
    assert encode(packet) == data[:LENGTH]  # whatever is accepted is exactly what it says


@given(valid_packets, st.integers(0, LENGTH - 1), st.integers(0, 255))
def test_one_corrupted_byte_never_raises_anything_else(packet, index, value):
    data = bytearray(encode(packet))
    data[index] = value
    with contextlib.suppress(BfdPacketError):
        decode(bytes(data))
