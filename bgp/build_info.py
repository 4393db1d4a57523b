"""``calico_bgp_build_info``: what is running, for dashboards and bug reports.

Stage: observability (labelled at the daemon's start, and again once ExaBGP has reported).

Owns: the metric ``calico_bgp_build_info{version, exabgp_version, python_version, exabgp_adjustments}``
(value 1) and the one INFO line per daemon run that says which ``bgp.exabgp.tuning`` adjustments applied and
which did not (an adjustment that no longer fits a new ExaBGP leaves it slower or quieter, never wrong, so
nothing else would show it).

Complicating factors: the adjustments are applied inside the ExaBGP child, never in the daemon (importing
ExaBGP here would keep its modules in the daemon's memory for good), so only that child knows which applied.
It says so in one line of its output (``bgp.exabgp.launch``), which the supervisor passes to ``report``.
Until then the label is ``unknown``; if no report has come ``REPORT_TIMEOUT`` after ExaBGP started, the line
says ``unknown`` and a later report still relabels the metric and logs what applied. With tuning switched
off (``CALICO_BGP_EXABGP_TUNING=off``) the child says nothing and the label is ``off``. Labels are sorted
comma lists of the fixed patch names (a reported name that is not one is dropped), so a label's values are
few and known.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Gauge

from bgp.exabgp.tuning import PATCHES, TUNING_ENV

log = logging.getLogger(__name__)

# ExaBGP's child reports within a second of its start (it writes the line before ExaBGP loads its config).
REPORT_TIMEOUT = 30.0


def package_version(name: str, path: Iterable[str] | None = None) -> str:
    """The installed version of distribution ``name``: read from the name of its
    ``<name>-<version>.dist-info`` directory on ``path`` (``sys.path``), the first found, as
    ``importlib.metadata`` would. Importing
    ``importlib.metadata`` for two strings would keep email, zipfile and csv in the daemon (2.6 MiB, nothing
    else loads them), so it is consulted only where no such directory is found (an egg, a zip)."""
    wanted = _normalised(name)
    for entry in sys.path if path is None else path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip file, a directory gone
            continue
        for found in names:
            if found.endswith(".dist-info"):
                dist, _, version = found[: -len(".dist-info")].partition("-")
                if version and _normalised(dist) == wanted:
                    return version
    import importlib.metadata  # noqa: PLC0415 (see above: only when the directory scan found nothing)

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def adjustments_label(applied: list[str] | None, environ: Mapping[str, str] = os.environ) -> str:
    if environ.get(TUNING_ENV, "on") == "off":
        return "off"
    if applied is None:
        return "unknown"
    return ",".join(sorted(applied))


def adjustments_summary(applied: list[str] | None, environ: Mapping[str, str] = os.environ) -> str:
    """The start-up log line: what applied, and by name what did not (``applied`` None: unknown)."""
    if environ.get(TUNING_ENV, "on") == "off":
        return f"ExaBGP adjustments: off ({TUNING_ENV}=off), ExaBGP runs as shipped"
    if applied is None:
        return "ExaBGP adjustments: unknown (ExaBGP did not report them)"
    known = [name for name, *_ in PATCHES]
    missing = [name for name in known if name not in applied]
    summary = f"ExaBGP adjustments applied: {', '.join(applied) or 'none'}"
    if missing:
        summary += f"; not applied (no longer fit this ExaBGP): {', '.join(missing)}"
    return summary


class BuildInfo:
    def __init__(self, registry: CollectorRegistry, environ: Mapping[str, str] = os.environ) -> None:
        self._environ = environ
        self._gauge = Gauge(
            "calico_bgp_build_info",
            "1, labelled with this build, the ExaBGP it runs and which ExaBGP adjustments (bgp.exabgp.tuning)"
            " apply to it",
            ["version", "exabgp_version", "python_version", "exabgp_adjustments"],
            registry=registry,
        )
        self._labels: tuple[str, ...] | None = None
        self._started = asyncio.Event()  # ExaBGP has been started at least once
        self._reported = asyncio.Event()  # ... and its child has reported what applied
        self._logged: list[str] | None = None  # what the last summary line said applied
        self.set(None)

    def set(self, applied: list[str] | None) -> None:
        labels = (
            package_version("calico-bgp"),
            package_version("exabgp"),
            platform.python_version(),
            adjustments_label(applied, self._environ),
        )
        if self._labels is not None and self._labels != labels:
            self._gauge.remove(*self._labels)
        self._gauge.labels(*labels).set(1)
        self._labels = labels

    def exabgp_started(self) -> None:
        """ExaBGP was (re)started: its report is due within the deadline of ``run``."""
        self._started.set()

    def report(self, applied: list[str]) -> None:
        """The ExaBGP child's report of what applied: relabel, and log what applied unless already logged."""
        known = [name for name, *_ in PATCHES]
        applied = [name for name in known if name in applied]  # in PATCHES order, only known names
        self._reported.set()
        if applied == self._logged:
            return
        self._logged = applied
        self.set(applied)
        log.info("%s", adjustments_summary(applied, self._environ))

    async def run(self, timeout: float = REPORT_TIMEOUT) -> None:
        """Log ``off`` at once when tuning is off; otherwise log ``unknown`` if ExaBGP, once started, has
        not reported within ``timeout`` (the report itself is logged by ``report``). Returns when done."""
        if self._environ.get(TUNING_ENV, "on") == "off":
            log.info("%s", adjustments_summary(None, self._environ))
            return
        # No deadline on ExaBGP's start: it waits for the first render, which a datastore outage may hold
        # back indefinitely; the report's deadline counts from the start.
        await self._started.wait()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, leaving this task running through the daemon's shutdown.
            async with asyncio.timeout(timeout):
                await self._reported.wait()
        except TimeoutError:
            log.warning("%s", adjustments_summary(None, self._environ))
