import pytest
from speaker_rig import Clock

from bgp.sweep_gate import SweepGate

# Each step: ("start" | "advance" seconds | "ask" all_synced, and the answer expected when asking).
CASES = {
    "closed for ever while ExaBGP never started (etcd down since the daemon started)": [
        ("advance", 150.0), ("ask", False, False), ("advance", 10_000.0), ("ask", False, False),
    ],
    "End-of-RIB from everyone means nothing before ExaBGP started": [
        ("ask", True, False),
    ],
    "the hold counts from ExaBGP's start, not the daemon's": [
        ("advance", 150.0), ("start",), ("advance", 119.0), ("ask", False, False),
        ("advance", 1.0), ("ask", False, True),
    ],
    "every session synchronised opens it at once": [
        ("start",), ("advance", 1.0), ("ask", False, False), ("ask", True, True),
    ],
    "an ExaBGP restart gives the peers the whole hold again": [
        ("start",), ("advance", 100.0), ("start",), ("advance", 100.0), ("ask", False, False),
        ("advance", 20.0), ("ask", False, True),
    ],
    "once open it stays open": [
        ("start",), ("ask", True, True), ("start",), ("ask", False, True),
    ],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_sweep_gate(steps):
    clock = Clock(0.0)
    gate = SweepGate(120.0, clock=clock)
    for step in steps:
        if step[0] == "start":
            gate.exabgp_started()
        elif step[0] == "advance":
            clock.now += step[1]
        else:
            assert gate.ready(all_synced=step[1]) is step[2], step
    assert bool(gate.opened_by) is gate.ready(all_synced=False)
