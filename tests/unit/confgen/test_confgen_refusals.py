"""SinkRefusals: every refusal counted per sink, each message logged once, the memory of them bounded."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from confgen.refusals import EXABGP_API, EXABGP_CONFIG, NFT, SinkRefusals


def _count(registry, sink):
    return registry.get_sample_value("calico_bgp_refused_sink_values_total", {"sink": sink})


def test_counted_every_time_logged_once(caplog):
    registry = CollectorRegistry()
    refusals = SinkRefusals(registry, remembered=2)
    assert [_count(registry, s) for s in (EXABGP_API, EXABGP_CONFIG, NFT)] == [0, 0, 0]
    report = refusals.reporter(EXABGP_API)
    with caplog.at_level(logging.WARNING, logger="confgen.refusals"):
        for message in ("a", "a", "b", "a", "c", "b", "b"):
            report(message)
        refusals.refuse(NFT, "a")  # another sink's "a" is another message
        refusals.count(EXABGP_CONFIG, 3)  # reported (and logged) by the caller
    assert _count(registry, EXABGP_API) == 7 and _count(registry, NFT) == 1
    assert _count(registry, EXABGP_CONFIG) == 3
    # "b" was forgotten once "a" and "c" were more recent (two remembered), so it is logged again
    assert [r.getMessage() for r in caplog.records] == ["a", "b", "c", "b", "a"]
