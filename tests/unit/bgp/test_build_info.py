"""bgp.build_info and the report it is built from: the start-up line as a table; the launcher's report line,
parsed as a table; the real ExaBGP child's report, read by the supervisor, relabelling the metric and logged
once at INFO; and ``unknown`` when no report comes in time."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

from bgp.build_info import BuildInfo, adjustments_summary, package_version
from bgp.exabgp.launch import ADJUSTMENTS_MARK, adjustments_line, parse_adjustments
from bgp.exabgp.supervisor import ExaBGPSupervisor
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
        (None, {}, "ExaBGP adjustments: unknown (ExaBGP did not report them)"),
        (ALL, {TUNING_ENV: "off"}, f"ExaBGP adjustments: off ({TUNING_ENV}=off), ExaBGP runs as shipped"),
    ],
    ids=["all", "one-missing", "none", "unknown", "off"],
)
def test_adjustments_summary(applied, environ, summary):
    assert adjustments_summary(applied, environ) == summary


@pytest.mark.parametrize(
    ("line", "names"),
    [
        (adjustments_line(["poll", "async"]), ["poll", "async"]),
        (adjustments_line([]), []),
        (ADJUSTMENTS_MARK + b'["poll"]', ["poll"]),  # the last line, cut off before its newline
        (b"2026-12-03 05:00:00 12 reactor  performing reload of exabgp\n", None),
        (b"x" + adjustments_line(["poll"]), None),  # the mark only counts at the start of a line
        (ADJUSTMENTS_MARK + b'["poll"\n', None),  # garbled
        (ADJUSTMENTS_MARK + b'{"poll": 1}\n', None),
        (ADJUSTMENTS_MARK + b'["poll", 3]\n', None),
    ],
    ids=["names", "none", "no-newline", "other-line", "not-at-start", "garbled", "not-a-list", "not-names"],
)
def test_the_launchers_report_line(line, names):
    assert parse_adjustments(line) == names


def _adjustments_label(registry: CollectorRegistry) -> list[str]:
    return [
        s.labels["exabgp_adjustments"]
        for m in registry.collect()
        if m.name == "calico_bgp_build_info"
        for s in m.samples
    ]


def _summaries(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "ExaBGP adjustments" in r.getMessage()]


async def test_the_exabgp_childs_report_relabels_and_is_logged_once(tmp_path, monkeypatch, caplog):
    """The real launcher (``bgp.exabgp.launch`` with the installed ExaBGP), started by the supervisor as in
    production: it reports before ExaBGP gives up on the missing config, and BuildInfo takes the report."""
    monkeypatch.delenv(TUNING_ENV, raising=False)
    registry = CollectorRegistry()
    info = BuildInfo(registry, environ={})
    supervisor = ExaBGPSupervisor(
        tmp_path / "missing.conf",
        tmp_path / "exabgp.log",
        on_adjustments=info.report,
        on_start=info.exabgp_started,
    )
    deadline = asyncio.create_task(info.run(timeout=30))
    with caplog.at_level(logging.INFO, logger="bgp.build_info"):
        assert await asyncio.wait_for(supervisor._run_once(), 30) != 0  # ExaBGP finds no config and exits
        await asyncio.wait_for(deadline, 5)  # the report ended the wait: no "unknown" line
        await asyncio.wait_for(supervisor._run_once(), 30)  # a restart reports the same: no second line
    # The pinned ExaBGP takes every adjustment (tests/unit/bgp/test_exabgp_tuning.py pins why).
    assert _adjustments_label(registry) == [",".join(sorted(ALL))]
    assert _summaries(caplog) == [(logging.INFO, adjustments_summary(ALL, {}))]
    assert ADJUSTMENTS_MARK.decode() in (tmp_path / "exabgp.log").read_text()  # and kept in ExaBGP's log


async def test_no_report_in_time_is_logged_as_unknown_and_a_late_one_still_counts(caplog):
    registry = CollectorRegistry()
    info = BuildInfo(registry, environ={})
    with caplog.at_level(logging.INFO, logger="bgp.build_info"):
        waiting = asyncio.create_task(info.run(timeout=0.05))
        await asyncio.sleep(0.2)
        assert not waiting.done() and _summaries(caplog) == []  # the deadline counts from ExaBGP's start
        info.exabgp_started()
        await asyncio.wait_for(waiting, 5)
        assert _summaries(caplog) == [(logging.WARNING, adjustments_summary(None, {}))]
        assert _adjustments_label(registry) == ["unknown"]
        info.report(["poll", "not-a-patch", "async"])  # names it does not know never become label values
    assert _adjustments_label(registry) == ["async,poll"]
    in_patch_order = [name for name in ALL if name in ("async", "poll")]
    assert _summaries(caplog)[1:] == [(logging.INFO, adjustments_summary(in_patch_order, {}))]


async def test_with_tuning_off_the_line_says_so_at_once(caplog):
    registry = CollectorRegistry()
    info = BuildInfo(registry, environ={TUNING_ENV: "off"})
    with caplog.at_level(logging.INFO, logger="bgp.build_info"):
        await asyncio.wait_for(info.run(timeout=30), 5)  # ExaBGP never started: nothing to wait for
    assert _summaries(caplog) == [(logging.INFO, adjustments_summary(None, {TUNING_ENV: "off"}))]
    assert _adjustments_label(registry) == ["off"]


def test_package_versions_are_read_from_dist_info_directories_as_importlib_metadata_reads_them(tmp_path):
    import importlib.metadata

    for name in ("calico-bgp", "exabgp", "prometheus_client"):
        assert package_version(name) == importlib.metadata.version(name)
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "My_Pkg-1.2.3.dist-info").mkdir(parents=True)
    (second / "my_pkg-9.9.dist-info").mkdir(parents=True)
    assert package_version("my-pkg", [str(tmp_path / "missing"), str(first), str(second)]) == "1.2.3"
    assert package_version("my.pkg", [str(second)]) == "9.9"
    assert package_version("no-such-distribution-here", [str(first)]) == "unknown"


def test_the_daemon_imports_no_importlib_metadata():
    code = "import sys, bgp.daemon, bgp.build_info; bgp.build_info.package_version('exabgp'); " \
           "print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
