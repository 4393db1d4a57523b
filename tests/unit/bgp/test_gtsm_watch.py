"""bgp.gtsm's watch over its nftables table, with a stand-in nft that keeps one table in a file: a script
that creates the table stores it, one that only deletes it removes the file, `list` prints the file (or
fails like nft when the table does not exist). "Someone else" edits or deletes the file."""

from __future__ import annotations

import logging
import sys

import pytest
from prometheus_client import CollectorRegistry

from bgp.gtsm import CHECK_INTERVAL, Gtsm, GtsmError
from confgen.intent import NodeIntent, PeerIntent

FAKE_NFT = r"""
import pathlib, sys
table = pathlib.Path(sys.argv[1])
runs = table.with_suffix(".runs")
if table.with_suffix(".broken").exists():
    print("Error: nft is broken", file=sys.stderr)
    sys.exit(2)
if "list" in sys.argv:
    if not table.exists():
        print("Error: No such file or directory; did you mean table 't' in family inet?", file=sys.stderr)
        sys.exit(1)
    print(table.read_text(), end="")
    sys.exit(0)
script = sys.stdin.read()
runs.open("a").write("run\n")
if "table inet t {" in script:
    table.write_text(script)
else:
    table.unlink(missing_ok=True)
"""


def intent(*peers):
    sessions = tuple(
        PeerIntent(f"Node_{i}", address, "ipv4", 65000, 64512, "10.0.0.1", ttl_security=1)
        for i, address in enumerate(peers)
    )
    return NodeIntent(node="n1", router_id="10.0.0.1", local_as=64512, listen_port=179, peers=sessions)


def make(tmp_path, **kwargs):
    registry = CollectorRegistry()
    table = tmp_path / "table.nft"
    gtsm = Gtsm(nft=(sys.executable, "-c", FAKE_NFT, str(table)), table="t", registry=registry, **kwargs)
    return gtsm, table, registry


def nft_runs(table) -> int:
    runs = table.with_suffix(".runs")
    return len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.mark.parametrize(
    "tamper, what",
    [
        (lambda table: table.unlink(), "deleted"),  # nft flush ruleset / delete table
        (lambda table: table.write_text("table inet t {\n}\n"), "changed"),  # rules emptied
        (lambda table: table.write_text(table.read_text().replace("< 255 drop", "< 2 drop")), "changed"),
    ],
)
async def test_a_table_changed_by_someone_else_is_restored_counted_and_logged_once(
    tmp_path, caplog, tamper, what
):
    gtsm, table, registry = make(tmp_path)
    assert await gtsm.apply(intent("10.0.0.2")) is True
    ours = table.read_text()
    assert await gtsm.check() is False  # untouched: nothing to do, no nft script run
    assert nft_runs(table) == 1
    tamper(table)
    with caplog.at_level(logging.WARNING, logger="bgp.gtsm"):
        assert await gtsm.check() is True
    assert table.read_text() == ours
    assert registry.get_sample_value("calico_bgp_gtsm_restores_total") == 1
    restores = [r.getMessage() for r in caplog.records if "restoring" in r.getMessage()]
    assert restores == [f"TTL security: nftables table t was {what} by someone else; restoring it"]
    assert await gtsm.check() is False  # the restored table is the new reference
    assert registry.get_sample_value("calico_bgp_gtsm_restores_total") == 1


async def test_no_table_wanted_means_nothing_to_watch(tmp_path):
    gtsm, table, registry = make(tmp_path)
    assert await gtsm.check() is False  # nothing applied yet
    await gtsm.apply(intent())  # no session with ttlSecurity: the script only deletes
    assert not table.exists()
    table.write_text("table inet t {\n}\n")  # someone else's table of that name is not ours to police
    assert await gtsm.check() is False
    await gtsm.apply(intent("10.0.0.2"))
    await gtsm.remove()
    assert await gtsm.check() is False and not table.exists()
    assert registry.get_sample_value("calico_bgp_gtsm_restores_total") == 0


async def test_an_apply_takes_a_new_reference(tmp_path):
    gtsm, table, registry = make(tmp_path)
    await gtsm.apply(intent("10.0.0.2"))
    await gtsm.apply(intent("10.0.0.2", "10.0.0.3"))
    assert await gtsm.check() is False
    assert "10.0.0.3" in table.read_text()


class Rounds:
    """An injected sleep: records each wait and ends the watch after ``limit`` of them."""

    class Done(Exception):
        pass

    def __init__(self, limit, between=None):
        self.waits: list[float] = []
        self.limit = limit
        self.between = between

    async def __call__(self, seconds):
        self.waits.append(seconds)
        if self.between is not None:
            self.between(len(self.waits))
        if len(self.waits) > self.limit:
            raise self.Done


async def test_watch_checks_every_interval_and_survives_nft_failures(tmp_path, caplog):
    table_file = tmp_path / "table.nft"

    def someone_else(round_number):
        if round_number in (2, 4):
            table_file.unlink(missing_ok=True)

    rounds = Rounds(limit=5, between=someone_else)
    gtsm, table, registry = make(tmp_path, sleep=rounds)
    await gtsm.apply(intent("10.0.0.2"))
    with pytest.raises(Rounds.Done):
        await gtsm.watch()
    assert rounds.waits == [CHECK_INTERVAL] * 6
    assert registry.get_sample_value("calico_bgp_gtsm_restores_total") == 2
    assert table.exists()

    # nft itself failing is logged and retried, never raised out of the watch (it would stop the daemon)
    table.with_suffix(".broken").write_text("")
    with pytest.raises(GtsmError, match="could not list table t .rc 2.: Error: nft is broken"):
        await gtsm.check()
    rounds.waits, rounds.limit, rounds.between = [], 2, None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bgp.gtsm"), pytest.raises(Rounds.Done):
        await gtsm.watch()
    assert sum("could not check or restore" in r.getMessage() for r in caplog.records) == 2
    assert not any("was deleted" in r.getMessage() for r in caplog.records)  # a failed listing is no deletion
    table.with_suffix(".broken").unlink()
    assert await gtsm.check() is False  # nft works again, and the table was there all along
    table.unlink()
    assert await gtsm.check() is True
