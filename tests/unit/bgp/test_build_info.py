"""bgp.build_info: the start-up line that says which ExaBGP adjustments applied, as a table, and that the
look-up logs it once, at INFO, in the daemon."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from bgp.build_info import BuildInfo, adjustments_summary
from bgp.exabgp.tuning import PATCHES, TUNING_ENV

ALL = [name for name, *_ in PATCHES]


@pytest.mark.parametrize(
    ("applied", "environ", "summary"),
    [
        (ALL, {}, f"ExaBGP adjustments applied: {', '.join(ALL)}"),
        (
            [n for n in ALL if n != "nlri_sort"],
            {},
            f"ExaBGP adjustments applied: {', '.join(n for n in ALL if n != 'nlri_sort')}; "
            "not applied (no longer fit this ExaBGP): nlri_sort",
        ),
        (
            [],
            {},
            f"ExaBGP adjustments applied: none; not applied (no longer fit this ExaBGP): {', '.join(ALL)}",
        ),
        (None, {}, "ExaBGP adjustments: unknown (the look-up did not answer)"),
        (ALL, {TUNING_ENV: "off"}, f"ExaBGP adjustments: off ({TUNING_ENV}=off), ExaBGP runs as shipped"),
    ],
    ids=["all", "one-missing", "none", "unknown", "off"],
)
def test_adjustments_summary(applied, environ, summary):
    assert adjustments_summary(applied, environ) == summary


@pytest.mark.parametrize("environ", [{}, {TUNING_ENV: "off"}], ids=["on", "off"])
def test_look_up_logs_what_applied_once_at_info(caplog, environ):
    info = BuildInfo(CollectorRegistry(), environ=environ)
    with caplog.at_level(logging.INFO, logger="bgp.build_info"):
        asyncio.run(info.look_up())
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "ExaBGP adjustments" in r.getMessage()]
    # The pinned ExaBGP takes every adjustment (tests/unit/bgp/test_exabgp_tuning.py).
    expected = ALL if not environ else None
    assert lines == [(logging.INFO, adjustments_summary(expected, environ))]
