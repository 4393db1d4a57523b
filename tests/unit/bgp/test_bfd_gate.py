"""BFD's hold on BGP as pure tables (``bgp.bfd.gate``): which peers get a BFD session, what a BFD Down does to
the BGP session (RFC 5882's graceful-restart interplay), who is held, and what status shows."""

from __future__ import annotations

import pytest

from bgp.bfd import gate
from bgp.bfd.api import ADMIN_DOWN, DIAGNOSTICS, DOWN, INIT, UP, BfdStatus
from bgp.status import PeerStatus, render_status, status_report
from confgen.intent import PeerIntent

ME = "10.0.0.11"
TOR = "10.0.0.1"
REMOTE = "172.31.0.1"  # two hops away
ME6, TOR6 = "fd00::11", "fd00::1"
ADDRESSES = {"10.0.0.11/24", "fd00::11/64", "127.0.0.1/8", "fe80::1/64", "192.168.9.1/32"}


def peer(address: str, bfd: bool = True, local: str = ME) -> PeerIntent:
    family = "ipv6" if ":" in address else "ipv4"
    return PeerIntent(
        name=f"Global_{address}", address=address, family=family, peer_as=65000, local_as=64512,
        local_address=local, bfd=bfd,
    )  # fmt: skip


def status(
    state: str = UP, diagnostic: int = 0, remote_diagnostic: int = 0, c_bit: bool = False
) -> BfdStatus:
    return BfdStatus(
        peer=TOR, local=ME, state=state, local_discriminator=7, remote_discriminator=9 if state == UP else 0,
        tx_interval_us=300_000 if state == UP else 1_000_000, detection_time_us=900_000, remote_multiplier=3,
        local_diagnostic=DIAGNOSTICS[diagnostic], remote_diagnostic=DIAGNOSTICS[remote_diagnostic], downs=0,
        since=0.0, remote_control_independent=c_bit,
    )  # fmt: skip


# ------------------------------------------------------------------------------ which sessions


def test_only_directly_connected_peers_that_ask_get_a_session_from_the_bgp_source_address():
    peers = [peer(TOR), peer(TOR6, local=ME6), peer(REMOTE), peer("10.0.0.12", bfd=False)]
    wanted = gate.wanted_sessions(
        peers, ADDRESSES, gate.BfdTimers(min_tx_ms=200, min_rx_ms=250, multiplier=5)
    )
    assert set(wanted.configs) == {(TOR, ME), (TOR6, ME6)}
    assert wanted.serving == {TOR: (TOR, ME), TOR6: (TOR6, ME6)}
    config = wanted.configs[(TOR, ME)]
    assert (config.min_tx_us, config.min_rx_us, config.multiplier) == (200_000, 250_000, 5)
    assert list(wanted.notes) == [REMOTE] and wanted.notes[REMOTE].startswith(gate.NOT_DIRECTLY_CONNECTED)


@pytest.mark.parametrize(
    "addresses, connected",
    [
        pytest.param({"10.0.0.11/24"}, True, id="on our subnet"),
        pytest.param({"10.0.0.11/32"}, False, id="a host address makes no subnet"),
        pytest.param({"10.0.1.11/24"}, False, id="another subnet"),
        pytest.param(set(), False, id="interfaces not known yet"),
    ],
)
def test_directly_connected_is_read_from_the_interface_addresses(addresses, connected):
    wanted = gate.wanted_sessions([peer(TOR)], addresses)
    assert bool(wanted.configs) is connected and bool(wanted.notes) is not connected


def test_the_default_timers_are_the_documented_ones_and_bad_ones_are_refused():
    assert gate.BfdTimers() == gate.BfdTimers(300, 300, 3)
    for bad in ({"min_tx_ms": 0}, {"min_rx_ms": -1}, {"multiplier": 0}, {"multiplier": 256}):
        with pytest.raises(ValueError):
            gate.BfdTimers(**bad)


# ------------------------------------------------------------------------------ what a Down does


@pytest.mark.parametrize(
    "established, restarting, c_bit, turned_off, action",
    [
        pytest.param(True, False, False, False, gate.TEARDOWN, id="established, C=0: dead path, flush"),
        pytest.param(
            True, False, True, False, gate.TEARDOWN, id="established, C=1: forwarding failed, flush"
        ),
        pytest.param(
            False, True, False, False, gate.KEEP_STALE, id="restarting, C=0: the restart explains it"
        ),
        pytest.param(False, True, True, False, gate.FLUSH_STALE, id="restarting, C=1: abort the restart"),
        pytest.param(False, False, False, False, gate.HOLD, id="no session: only held"),
        pytest.param(True, False, True, True, gate.IGNORE, id="peer AdminDown: no failure"),
        pytest.param(False, True, True, True, gate.IGNORE, id="peer AdminDown during a restart"),
    ],
)
def test_what_a_bfd_down_does_to_the_bgp_session(established, restarting, c_bit, turned_off, action):
    decided = gate.on_bfd_down(
        established=established, restarting=restarting, control_independent=c_bit, turned_off=turned_off
    )
    assert decided == action


@pytest.mark.parametrize(
    "state, diagnostic, remote, turned_off",
    [
        pytest.param(DOWN, 3, 7, True, id="peer sent AdminDown"),
        pytest.param(DOWN, 3, 1, False, id="peer's detection timer expired"),
        pytest.param(DOWN, 1, 0, False, id="our detection timer expired"),
        pytest.param(UP, 0, 7, False, id="Up again"),
    ],
)
def test_a_peer_turning_bfd_off_is_told_apart_from_a_failure(state, diagnostic, remote, turned_off):
    assert gate.peer_turned_off(status(state, diagnostic, remote)) is turned_off


# ------------------------------------------------------------------------------ holds and status


def configured(*statuses: BfdStatus) -> gate.BfdGate:
    bfd = gate.BfdGate()
    bfd.configure(gate.wanted_sessions([peer(TOR), peer(REMOTE)], ADDRESSES), list(statuses))
    return bfd


@pytest.mark.parametrize(
    "current, held",
    [
        pytest.param(None, True, id="no status yet"),
        pytest.param(status(DOWN), True, id="Down"),
        pytest.param(status(INIT), True, id="Init"),
        pytest.param(status(ADMIN_DOWN), True, id="ours AdminDown"),
        pytest.param(status(UP), False, id="Up"),
        pytest.param(status(DOWN, 3, 7), False, id="the peer turned it off"),
    ],
)
def test_a_peer_is_held_while_its_required_bfd_is_not_up(current, held):
    bfd = configured(*([current] if current else []))
    assert bfd.held(TOR) is held
    assert (bfd.hold_note(TOR) is not None) is held
    assert not bfd.held(REMOTE) and not bfd.held("10.9.9.9")  # no BFD session: never held


def test_updates_for_sessions_that_serve_no_peer_are_ignored():
    bfd = configured()
    stray = BfdStatus(**{**status().__dict__, "peer": "10.0.0.99"})
    assert bfd.update(stray) is None
    assert bfd.update(status(UP)) == (TOR, None)
    assert bfd.update(status(DOWN, 1)) is not None and bfd.held(TOR)
    assert bfd.hold_note(TOR) == "BFD Down (Control Detection Time Expired): session held until BFD is Up"


def test_status_shows_a_bfd_column_and_object_only_when_some_peer_asked():
    bfd = configured(status(UP, c_bit=True))
    peers = [PeerStatus.configured(peer(address), 0.0) for address in (TOR, REMOTE, "10.0.0.12")]
    report = status_report("node1", peers, [], bfd=bfd.report)
    rows = {row["address"]: row for row in report["peers"]}
    assert rows[TOR]["bfd"] == {
        "state": "Up", "local": ME, "local_discriminator": 7, "remote_discriminator": 9,
        "tx_interval_ms": 300.0, "detection_time_ms": 900.0, "remote_multiplier": 3,
        "local_diagnostic": "No Diagnostic", "remote_diagnostic": "No Diagnostic",
        "remote_control_independent": True, "downs": 0, "held": False,
    }  # fmt: skip
    assert rows[REMOTE]["bfd"]["state"] == "Off" and "bfd" not in rows["10.0.0.12"]
    text = render_status(report, now=0.0)
    header = next(line for line in text.splitlines() if "PEER ADDRESS" in line)
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "BFD", "INFO"
    ]  # fmt: skip
    assert "| Up " in text and "off: not directly" in text
    without = render_status(status_report("node1", peers, []), now=0.0)
    assert "BFD" not in without  # calicoctl's five columns


@pytest.mark.parametrize(
    "report, shown",
    [
        pytest.param(None, "", id="no BFD"),
        pytest.param({"state": "Off", "note": "x"}, gate.NOT_DIRECTLY_CONNECTED, id="multi-hop"),
        pytest.param({"state": "Up", "local_diagnostic": "No Diagnostic"}, "Up", id="Up"),
        pytest.param(
            {"state": "Down", "local_diagnostic": "Control Detection Time Expired"},
            "Down (Control Detection Time Expired)",
            id="Down with its diagnostic",
        ),
        pytest.param({"state": "Down", "held": True}, "Down", id="not reported yet"),
    ],
)
def test_the_bfd_cell(report, shown):
    assert gate.cell(report) == shown
