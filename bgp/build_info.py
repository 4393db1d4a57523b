"""``calico_bgp_build_info``: what is running, for dashboards and bug reports.

Stage: observability (set once at the daemon's start).

Owns: the metric ``calico_bgp_build_info{version, exabgp_version, python_version, exabgp_adjustments}``
(value 1), the one-off look-up of which ``bgp.exabgp.tuning`` adjustments fit the installed ExaBGP, and the
one INFO line at start that says which applied and which did not (an adjustment that no longer fits a new
ExaBGP leaves it slower or quieter, never wrong, so nothing else would show it).

Complicating factors: the adjustments are applied inside the ExaBGP child, never in the daemon, and
importing ExaBGP into the daemon to find out would keep its modules in the daemon's memory for good. So a
short-lived child (this module run with ``-m``) applies them exactly as the ExaBGP child does, with the same
interpreter and packages, and prints what applied; the metric says ``off`` when tuning is switched off
(``CALICO_BGP_EXABGP_TUNING=off``) and ``unknown`` until, or if never, that child answers. Labels are sorted
comma lists of fixed patch names, so a label's values are few and known.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge

from bgp.exabgp.tuning import PATCHES, TUNING_ENV

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 30.0


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
        return "ExaBGP adjustments: unknown (the look-up did not answer)"
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

    async def look_up(self, timeout: float = LOOKUP_TIMEOUT) -> None:
        """Find the adjustments that apply (in a child process), relabel the metric and log them once."""
        if self._environ.get(TUNING_ENV, "on") == "off":
            log.info("%s", adjustments_summary(None, self._environ))
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            log.warning("could not find which ExaBGP adjustments apply: %s", exc)
            return
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            applied = json.loads(out)
            if not isinstance(applied, list) or not all(isinstance(name, str) for name in applied):
                raise ValueError(f"not a list of names: {out[:200]!r}")
        except (TimeoutError, ValueError) as exc:
            log.warning("could not find which ExaBGP adjustments apply: %s", exc)
            return
        finally:
            # Also on cancellation (the daemon stopping first): no child and no transport outlive the loop.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.set(applied)
        log.info("%s", adjustments_summary(applied, self._environ))


def _print_adjustments() -> None:
    from bgp.exabgp import tuning

    print(json.dumps(tuning.apply()))


if __name__ == "__main__":
    _print_adjustments()
