"""The lab's reachability grid waits for convergence: a pair that fails is retried until the settle window
ends, so a check that runs right after the sessions come up does not report routes still in flight."""

from __future__ import annotations

import pytest

from labs import ops
from labs.state import LabState, NodeState, PodState


def _state() -> LabState:
    nodes = [NodeState(f"node{i}", f"ns-node{i}", f"10.0.0.{i}/24", 64512, "/run", "/log") for i in (1, 2)]
    pods = [PodState(f"pod{i}", f"node{i}", f"ns-pod{i}", f"192.168.{i}.2", f"cali{i}") for i in (1, 2)]
    return LabState(name="lab", nodes=nodes, pods=pods)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("answers_after_s", "settle", "expected"),
    [
        (0.0, 15.0, {("pod1", "192.168.2.2"): True, ("pod2", "192.168.1.2"): True}),
        (3.0, 15.0, {("pod1", "192.168.2.2"): True, ("pod2", "192.168.1.2"): True}),  # converges late
        (30.0, 15.0, {("pod1", "192.168.2.2"): False, ("pod2", "192.168.1.2"): False}),  # never in time
        (3.0, 0.0, {("pod1", "192.168.2.2"): False, ("pod2", "192.168.1.2"): False}),  # no settling asked
    ],
)
def test_failing_pairs_are_retried_until_the_settle_window_ends(answers_after_s, settle, expected):
    clock = Clock()
    calls: list[tuple[str, str]] = []

    def ping(lab: str, pod: str, ip: str) -> bool:
        calls.append((pod, ip))
        return clock.now >= answers_after_s

    result = ops.ping_matrix(_state(), settle=settle, ping_pair=ping, clock=clock, sleep=clock.sleep)
    assert result == expected
    assert clock.now <= max(settle, 0.0) + ops.PING_RETRY


def test_pairs_that_answered_are_not_pinged_again():
    clock = Clock()
    calls: list[tuple[str, str]] = []

    def ping(lab: str, pod: str, ip: str) -> bool:
        calls.append((pod, ip))
        return pod == "pod1" or clock.now >= 2.0

    ops.ping_matrix(_state(), settle=15.0, ping_pair=ping, clock=clock, sleep=clock.sleep)
    assert calls.count(("pod1", "192.168.2.2")) == 1
    assert calls.count(("pod2", "192.168.1.2")) == 1 + int(2.0 / ops.PING_RETRY)
