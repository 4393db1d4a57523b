"""ExaBGP's ``idle`` adjustment on a live lab: with the reactor sleeping between its peers' timers, sessions
with the shortest hold time (3 s, a keepalive every second) stay up through a quiet spell many hold times
long, and a reload is still served.

Three nodes with the mesh turned off and one BGPPeer per node pair at ``keepaliveTime: 1s``, so a keepalive
late by more than two seconds on any of the six session ends resets that session (its ``since`` changes).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from explicit_peers import apply, sessions, up_with_explicit_peers, wait

from labs import lab as labs_lab
from labs import netns, ops, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

QUIET = 20.0  # seconds of idling: more than six hold times of 3 s


def _reloads(node) -> int:
    return (Path(node.run_dir) / "exabgp.log").read_text(errors="replace").count("performing reload")


def test_short_hold_times_survive_an_idle_reactor_and_reloads_are_served():
    name = f"i{secrets.token_hex(4)}"
    try:
        endpoints = up_with_explicit_peers(name, keepalive="1s")
        for node in ops.load(name).nodes:
            log = (Path(node.run_dir) / "exabgp.log").read_text(errors="replace")
            assert '"idle"' in log.split("ExaBGP adjustments applied:", 1)[1].splitlines()[0], node.name
        before = sessions(name)
        time.sleep(QUIET)
        after = sessions(name)
        for key, entry in before.items():
            assert after[key]["info"] == "Established", f"{key}: {after[key]}"
            assert after[key]["since"] == entry["since"], f"{key} reset while idle: {entry} -> {after[key]}"

        # A change that reloads ExaBGP (a global peer, a new neighbour on every node; nobody answers there) is
        # served by every ExaBGP, however long its reactor was sleeping (the signal wakes it), and leaves the
        # other sessions alone.
        reloads = {node.name: _reloads(node) for node in ops.load(name).nodes}
        apply(
            endpoints,
            [
                {
                    "apiVersion": "projectcalico.org/v3",
                    "kind": "BGPPeer",
                    "metadata": {"name": "idle-reload"},
                    "spec": {"peerIP": "10.0.0.99", "asNumber": 64512},
                }
            ],
        )

        def reloaded_everywhere():
            """every node's ExaBGP logged one more reload"""
            return all(_reloads(node) > reloads[node.name] for node in ops.load(name).nodes)

        wait(reloaded_everywhere, timeout=30)
        final = sessions(name)
        assert all(final[key]["since"] == entry["since"] for key, entry in before.items())
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))
