"""The daemon's log level: the ``--log-level`` flag, overridden live by BGPConfiguration logSeverityScreen.

Stage: operations, fed by the intent (``confgen.calc`` resolves ``node.<name>`` over ``default``).

Owns: the mapping from Calico's severities to Python's levels and the one place that changes the level of
the root logger and of our packages' loggers while the daemon runs.

Complicating factors:
- The datastore wins when it says something: a ``logSeverityScreen`` in the node's own BGPConfiguration,
  else in ``default``. When neither sets it the flag's level stays (Calico's API would default it to Info,
  but an operator who started the daemon with ``--log-level debug`` and never wrote the field means debug).
  Removing the field goes back to the flag's level.
- Calico's words: Trace and Debug are Python's DEBUG, Info INFO, Warning WARNING, Error ERROR, Fatal
  CRITICAL, and None turns our log off (above CRITICAL). ExaBGP's own log (its file in the run directory)
  is not changed: its level is fixed when it starts, and a restart only for a log level would cost the
  sessions a reset.
- Our loggers normally inherit the root's level; they are set too, so a level someone set on one of them
  cannot hide a change.
"""

from __future__ import annotations

import logging

OFF = logging.CRITICAL + 10
SEVERITIES = {
    "Trace": logging.DEBUG,
    "Debug": logging.DEBUG,
    "Info": logging.INFO,
    "Warning": logging.WARNING,
    "Error": logging.ERROR,
    "Fatal": logging.CRITICAL,
    "None": OFF,
}
FLAG_LEVELS = ("debug", "info", "warning", "error")
OUR_LOGGERS = ("bgp", "confgen", "routes")

log = logging.getLogger(__name__)


def level_name(level: int) -> str:
    return "none" if level >= OFF else logging.getLevelName(level).lower()


class LogLevel:
    """Applies ``base`` (the flag) or the datastore's severity to the root logger and ours."""

    def __init__(self, base: int, loggers: tuple[str, ...] = OUR_LOGGERS) -> None:
        self.base = base
        self._loggers = [logging.getLogger(), *(logging.getLogger(name) for name in loggers)]
        self.level: int | None = None
        self.source = ""
        self.apply(None)

    def apply(self, severity: str | None) -> int:
        """``severity``: the BGPConfiguration value in force for this node, None when none sets one.
        Returns the level now in force; a change is logged (at WARNING, so that it shows at any level
        but None)."""
        if severity is None:
            level, source = self.base, "the --log-level flag"
        else:
            level, source = SEVERITIES[severity], f"BGPConfiguration logSeverityScreen {severity}"
        if level != self.level:
            previous = self.level
            for logger in self._loggers:
                logger.setLevel(level)
            self.level, self.source = level, source
            if previous is not None:
                log.warning("log level %s (from %s)", level_name(level), source)
        return level
