"""Fixtures of the fault campaign: the result recorder, the repetition counts, and labs torn down always.

Each fault test asks ``fault_row(...)`` for its row, records figures on it while it runs, and asserts as
usual; the makereport hook adds the outcome and the session end merges the rows of the tests that ran into
``results.json`` and ``RESULTS.md``. They go to ``$CALICO_BGP_FAULT_RESULTS`` (``make fault`` points it at
tests/fault, whose files are committed) or else to ``.cache/fault``, so the quick subset that ``make test``
runs never overwrites the campaign's figures. ``CALICO_BGP_FAULT_FRESH=1`` starts the files afresh.

Repetition counts and durations are parameters with environment overrides (``CALICO_BGP_FAULT_<NAME>``):
the defaults are small, for the quick subset and for development; ``make fault`` sets the campaign's.
The campaign state lives in the pytest config's stash, not in a module global.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fault import recorder
from labs import lab as labs_lab
from labs import netns, state

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = REPO / ".cache" / "fault"


@dataclass
class Campaign:
    results_dir: Path
    fresh: bool
    commit: str
    counts: dict[str, int] = field(default_factory=dict)
    rows: list[recorder.FaultRow] = field(default_factory=list)

    def count(self, name: str, default: int) -> int:
        """CALICO_BGP_FAULT_<NAME> if set (a positive integer), else default; remembered for the header."""
        key = f"CALICO_BGP_FAULT_{name.upper()}"
        raw = os.environ.get(key, "").strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                raise pytest.UsageError(f"{key}={raw!r}: not an integer") from None
            if value < 1:
                raise pytest.UsageError(f"{key}={raw!r}: must be at least 1")
        else:
            value = default
        self.counts[name] = value
        return value


CAMPAIGN = pytest.StashKey[Campaign]()
BUILDER = pytest.StashKey[recorder.RowBuilder]()
OUTCOME = pytest.StashKey[tuple[str, str]]()
STARTED = pytest.StashKey[float]()


def _commit() -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def pytest_configure(config):
    results = os.environ.get("CALICO_BGP_FAULT_RESULTS", "").strip()
    config.stash[CAMPAIGN] = Campaign(
        results_dir=Path(results) if results else DEFAULT_RESULTS,
        fresh=os.environ.get("CALICO_BGP_FAULT_FRESH", "") == "1",
        commit=_commit(),
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if BUILDER not in item.stash:
        return
    if report.when == "call" or (report.when == "setup" and report.failed):
        word = "passed" if report.passed else "failed" if report.when == "call" else "error"
        if report.skipped:
            return
        item.stash[OUTCOME] = (word, "" if report.passed else _failure_text(report))
    if report.when == "teardown" and OUTCOME in item.stash:
        word, failure = item.stash[OUTCOME]
        if report.failed and word == "passed":  # cleanup failed: the fault left something behind
            word, failure = "error", "teardown: " + _failure_text(report)
        campaign = item.config.stash[CAMPAIGN]
        campaign.rows.append(
            item.stash[BUILDER].row(
                word,
                failure,
                test=item.nodeid,
                commit=campaign.commit,
                date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                duration_s=time.monotonic() - item.stash[STARTED],
            )
        )


def _failure_text(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    return crash.message if crash is not None else str(report.longrepr)


def pytest_sessionfinish(session):
    campaign = session.config.stash.get(CAMPAIGN, None)
    if campaign is None or not campaign.rows:
        return
    merged = recorder.write(campaign.results_dir, campaign.rows, campaign.counts, campaign.fresh)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"fault campaign: {len(campaign.rows)} rows recorded, {len(merged)} in "
            f"{campaign.results_dir / 'RESULTS.md'}"
        )


@pytest.fixture(scope="session")
def campaign(request) -> Campaign:
    return request.config.stash[CAMPAIGN]


@pytest.fixture
def fault_row(request):
    """fault_row(fault=, injected=, times=, must_hold=) -> the test's RowBuilder (one per test)."""

    def make(**fields) -> recorder.RowBuilder:
        builder = recorder.RowBuilder(**fields)
        request.node.stash[BUILDER] = builder
        request.node.stash[STARTED] = time.monotonic()
        return builder

    return make


@contextlib.contextmanager
def running_lab(topology, *, nodes: int | None = None, **up_args):
    """A lab under a fresh name, up and checked; removed (and verified gone) in every outcome."""
    name = f"f{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        ok = labs_lab.up(topology, nodes, name=name, echo=lines.append, **up_args)
        assert ok, "lab did not come up:\n" + "\n".join(lines[-30:])
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name)), f"lab {name} left namespaces behind"


@pytest.fixture(scope="module")
def mesh_lab():
    """A 3-node full mesh (two pods per node) shared by the tests of a module."""
    with running_lab("mesh", nodes=3) as name:
        yield name
