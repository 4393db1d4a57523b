"""Per-peer limits: prefix-limit hold-down with back-off, AS_PATH length, and the warning budget."""

from __future__ import annotations

import logging

import pytest
from speaker_rig import Clock

from bgp.limits import LimitSettings, LogBudget, PeerLimits, teardown_command

PEER = "10.0.0.12"


@pytest.mark.parametrize(
    ("limit", "count", "exceeded"),
    [(50, 49, False), (50, 50, False), (50, 51, True), (0, 10**9, False), (1, 2, True)],
)
def test_exceeded_means_more_than_the_limit(limit, count, exceeded):
    assert PeerLimits(LimitSettings(max_prefixes=limit)).exceeded(count) is exceeded


def test_teardown_command_carries_the_cease_subcode_for_maximum_prefixes():
    assert teardown_command(PEER) == f"neighbor {PEER} teardown 1"
    assert teardown_command("fd00::2") == "neighbor fd00::2 teardown 1"


@pytest.mark.parametrize("peer", ["10.0.0.1\nshutdown", "fe80::1%eth0", "10.0.0.01", "", "FD00::2"])
def test_teardown_command_refuses_anything_but_a_canonical_address(peer, caplog):
    assert teardown_command(peer) is None
    assert "not sending a teardown" in caplog.text


def test_hold_backs_off_doubling_to_the_cap_and_resets_after_a_stable_period():
    clock = Clock()
    limits = PeerLimits(LimitSettings(max_prefixes=10), clock=clock)
    durations = []
    for _ in range(7):
        durations.append(limits.trip(PEER, 11))
        clock.now += durations[-1] + 1  # the peer comes back just after each hold and crosses again
    assert durations == [30, 60, 120, 240, 480, 600, 600]
    clock.now += 600  # stayed within its limit for the stable period after the last hold
    assert limits.trip(PEER, 11) == 30
    assert limits.prefix_limit_trips == {PEER: 8}


def test_held_until_the_hold_ends_and_the_note_counts_down():
    clock = Clock()
    limits = PeerLimits(LimitSettings(max_prefixes=50), clock=clock)
    assert not limits.held(PEER) and limits.hold_note(PEER) is None
    limits.trip(PEER, 60)
    clock.now += 4.5
    assert limits.held(PEER)
    assert limits.hold_note(PEER) == "Prefix limit: 50 exceeded (60 prefixes), retry in 26s"
    assert limits.tick(clock.now) == []
    clock.now += 25.5
    assert not limits.held(PEER) and limits.hold_note(PEER) is None
    assert limits.tick(clock.now) == [PEER]
    assert limits.tick(clock.now + 1) == []  # reported once


def test_as_path_length_limit_counts_prefixes_treated_as_withdrawn():
    limits = PeerLimits(LimitSettings(max_as_path_length=3))
    assert not limits.as_path_too_long(PEER, 3, 5)
    assert limits.as_path_too_long(PEER, 4, 5)
    assert limits.as_path_withdraws == {PEER: 5}
    assert not PeerLimits(LimitSettings(max_as_path_length=0)).as_path_too_long(PEER, 10_000, 1)


def test_forget_drops_hold_and_counts():
    limits = PeerLimits(LimitSettings(max_prefixes=1, max_as_path_length=1))
    limits.trip(PEER, 2)
    limits.as_path_too_long(PEER, 2, 1)
    limits.forget(PEER)
    assert not limits.held(PEER)
    assert limits.prefix_limit_trips == {} and limits.as_path_withdraws == {}


@pytest.mark.parametrize(
    "settings",
    [
        {"max_prefixes": -1},
        {"max_as_path_length": -1},
        {"hold_initial": 0},
        {"hold_initial": 700, "hold_max": 600},
    ],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        LimitSettings(**settings)


def test_log_budget_drops_beyond_the_burst_and_says_how_many(caplog):
    clock = Clock(0.0)
    budget = LogBudget(logging.getLogger("test.budget"), burst=2, period=10.0, clock=clock)
    for i in range(5):
        budget.warning("event %d", i)
    assert [r.getMessage() for r in caplog.records] == ["event 0", "event 1"]
    clock.now = 10.0
    budget.warning("event %d", 5)
    assert caplog.records[-1].getMessage() == "event 5 (3 similar warnings suppressed)"
