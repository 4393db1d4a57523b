"""In-process adjustments to ExaBGP 5.0.x, applied by ``bgp.exabgp.launch`` before ExaBGP's own entry point.

Stage: the BGP engine's process (runs inside the ExaBGP child, never in the daemon).

Owns: ten measured changes to how ExaBGP schedules, copies, parses, encodes and logs work
(bench/results/profile.md, settings.md and changes.md hold the numbers that justify each; 8-11 are in
docs/exabgp-patches.md), and two corrections (6, 7). None touches BGP encoding or
the FSM.

1. Work-conserving reactor loop. ExaBGP's loop sleeps ``reactor.speed``/100 s in ``poll`` whenever no peer
   asked to run again, even while API commands are still being turned into routes (``ASYNC``'s queue). So a
   bulk announcement is paced by the tick, and the only way to go faster, a shorter tick, costs idle CPU
   (speed 0.1: ~6 % of a core per process). We poll with timeout 0 while that queue holds work and with the
   configured tick otherwise, so bulk speed and idle CPU stop trading against each other and the tick can
   be long (``IDLE_TICK_SPEED``). Every socket ExaBGP waits on is registered with that poll, so a longer
   tick delays only timer checks (keepalives, connect retries, accepts), by at most the tick.
2. ``ASYNC`` steps generators synchronously, ``LIMIT`` steps per loop. Upstream wraps each loop's steps in
   ``asyncio.run`` (a new event loop per reactor loop) although every API callback is a generator, and
   stops after 50 NLRI. Coroutine callbacks, which we never send, still go the upstream way.
3. ``Neighbor.remove_self`` deep-copies every route for every peer before looking whether its next hop is
   ``self`` (21 % of the sending ExaBGP's CPU at 100k routes). We always send an explicit next hop, and the
   Adj-RIB-Out copies before it mutates (``del_from_rib``), so the route is shared when nothing changes.
4. Every API command is logged at INFO (``API.log_message``): 9-18 % of the sender's CPU in a bulk
   announcement, and one log line per route. The daemon knows what it sent; we log those at DEBUG. The
   same method carries ExaBGP's "invalid route" report (a parsed route its last check refuses and drops):
   never routine, so that line goes out as a WARNING.
5. ``Update._split_nlris`` sorts the NLRI of an UPDATE with ``NLRI.__lt__``, which builds both sides' index
   bytes on every comparison (n log n index builds; a third of the sender's CPU at 100k routes). We sort by
   the same index once per NLRI first, so upstream's sort meets an ordered list: same order, n comparisons.

8. ``API.api_attributes`` tokenises a bulk ``announce|withdraw attributes ... nlri p1 p2 ...`` one character
   at a time and parses every prefix through several objects; we let it parse the attributes once (the
   command cut to its last prefix) and build the other prefixes' routes as its own loop does
   (``bgp.exabgp.tuning_api``). The API handlers of those commands build each route's log line, its
   full text, even when it goes out at DEBUG and DEBUG is off; ours build it only to write it.
9. ``JSON._update`` writes a received UPDATE's plain unicast NLRI without a ``Family`` object and an
   ``INET.json`` call per prefix, to the same bytes (``bgp.exabgp.tuning_json``).
10. ``log.debug`` checks the level only after resolving the logger's method and a call, for each of the
   few DEBUG lines per NLRI ExaBGP's parser and peer loop emit; we check the level first.
11. ``Family.index`` formats (afi, safi) as hex bytes each time a route's index is built, several times per
   route between the API and the wire; we keep the few answers. ``AFI.create``/``SAFI.create`` build a
   fallback object before looking in their cache, on every call (several per route); we look first.
12. The API process for our daemon is a relay (socat or ``bgp.exabgp.bridge``) that wakes for every line
   both ways; ExaBGP connects to the daemon's socket itself instead (``bgp.exabgp.tuning_channel``).
13. The reactor gives every peer a turn on every pass (each tick and each socket event), so an idle node's CPU
   grew with its peers; an established peer with no work and no timer due is now skipped until its socket
   has an event, work is queued for it or its keepalive or hold timer is due (``bgp.exabgp.tuning_idle``).
14. The Adj-RIB-Out cache keeps three objects per announced route (~460 bytes, 46 MB per 100k); a plain
   unicast route is kept as its index and a template shared with its command's other routes, and rebuilt
   when read (``bgp.exabgp.tuning_ribout``).
15. Every route command's attribute text goes through the configuration parser, though the speaker repeats
   one text per pool; what it made of a text is kept (bounded) and reused (``bgp.exabgp.tuning_attrcache``).

Two corrections, not speed-ups:

6. ``Protocol.read_message`` calls ``Processes.notification`` with one argument too many for errors found
   before a message is parsed (bad marker, bad length) whenever the neighbour's API receives
   notifications, as ours does. The TypeError drops the connection without the NOTIFICATION the peer is
   owed (RFC 4271 6.1); the wrapper skips that one report (of our own error, mislabelled as received), so
   the NOTIFICATION goes out.
7. ``API.log_failure`` reports a command ExaBGP refused (a route it cannot parse, one without a next hop,
   no matching neighbour, a withdraw of a route it does not hold) with the level name ``ERR``, which is not
   one of its logger's level names, so the line is never written: a refused route leaves no trace. We pass
   ``ERROR``, so every refusal reaches ExaBGP's log (the daemon's ``exabgp.log``).

Complicating factors: these are patches to a pinned dependency's internals. Each one checks that what it
replaces still exists and is skipped with a warning on stderr otherwise (ExaBGP then runs unpatched:
slower or quieter, never wrong); the daemon logs at start which applied (``bgp.build_info``).
tests/unit/bgp/test_exabgp_tuning.py pins the behaviour each patch relies on.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from bgp.exabgp import tuning_api, tuning_attrcache, tuning_channel, tuning_idle, tuning_json, tuning_ribout

TUNING_ENV = "CALICO_BGP_EXABGP_TUNING"  # "off": ExaBGP as shipped (benchmarks compare both)
SKIP_PREFIX = "skip:"  # "skip:name,name": all but those (to measure one patch end to end)
ASYNC_LIMIT = 1000  # generator steps (about one NLRI each) per reactor loop before peers get a turn
IDLE_TICK_SPEED = 10.0  # exabgp.reactor.speed: poll timeout when idle = speed/100 s = 100 ms


_applied: list[str] | None = None


def _warn(what: str, why: Exception | str) -> None:
    print(f"calico-bgp: ExaBGP tuning '{what}' not applied: {why}", file=sys.stderr)


def _sync_run(original):
    def run(self):
        queue = self._async
        if not queue:
            return False
        self.worked = True  # the loop gives peers one more turn before it sleeps (see _work_conserving_wait)
        if any(not inspect.isgenerator(callback) for _, callback in queue):
            return original(self)  # coroutines: upstream's event-loop path
        uid, callback = queue.popleft()
        for _ in range(self.LIMIT):
            try:
                next(callback)
            except StopIteration:
                if not queue:
                    return False
                uid, callback = queue.popleft()
            except Exception as exc:  # as upstream: report, tell the service, go on with the next one
                for line in str(exc).split("\n"):
                    _log_error(f"async | {uid} | problem with function: {line}")
                self._notify_error(uid)
                if not queue:
                    return False
                uid, callback = queue.popleft()
        queue.appendleft((uid, callback))
        return True

    return run


def _log_error(message: str) -> None:
    from exabgp.logger import log

    log.error(lambda: message, "reactor")


def _work_conserving_wait(original):
    def _wait_for_io(self, sleeptime):
        jobs = self.asynchronous
        if getattr(jobs, "worked", False) or not jobs.ready():
            # Routes are still being parsed from API commands, or the last of them just went into the
            # Adj-RIB-Out and the peers have not had their turn to send them: do not sleep the tick.
            # (Not "Adj-RIB-Out pending": that stays true while a peer is down, and would spin.)
            jobs.worked = False
            sleeptime = 0
        return original(self, sleeptime)

    return _wait_for_io


def _remove_self_sharing(original):
    def remove_self(self, changes):
        if not changes.nlri.nexthop.SELF:
            return changes
        return original(self, changes)

    return remove_self


def _presorted_split(original):
    def _split_nlris(self, negotiated):
        if isinstance(self.nlris, list) and len(self.nlris) > 1:
            self.nlris.sort(key=_nlri_index)  # stable, by upstream's own key: the order does not change
        return original(self, negotiated)

    return _split_nlris


def _nlri_index(nlri):
    return nlri.index()


INVALID_PREFIX = "invalid "  # ExaBGP's "invalid route for <peers> : <route>", on announce and withdraw


def _log_command_debug(self, message, level="INFO"):
    from exabgp.logger import log

    if message.startswith(INVALID_PREFIX):
        log.warning(lambda: message, "processes")
    else:
        log.debug(lambda: message, "processes")


def _replace_log_message(original):
    return _log_command_debug


def _debug_only(api) -> bool:
    """Whether ``api`` writes routine API lines at DEBUG (the ``api_log`` patch is in place)."""
    return getattr(api.log_message, "__func__", None) is _log_command_debug


ROUTE_HANDLERS = {"announce attributes": True, "withdraw attributes": False, "withdraw attribute": False}


def _lazy_route_log(callbacks):
    # Command.callback: {"text": {command: handler}, ...}. Replaced in place (ExaBGP holds this dict), all
    # three or none.
    text = callbacks["text"]
    misfits = [name for name in ROUTE_HANDLERS if name not in text or not tuning_api.fits(text[name])]
    if misfits:
        raise AttributeError(f"handlers no longer as expected: {', '.join(misfits)}")
    for name, announce in ROUTE_HANDLERS.items():
        handler = tuning_api.route_handler(announce, _debug_only)
        handler.func_name = getattr(text[name], "func_name", name.replace(" ", "_"))  # type: ignore[attr-defined]
        text[name] = handler
    return callbacks


FAMILY_INDEXES = 64  # (afi, safi) pairs kept; ExaBGP knows about twenty


def _family_index_cache(original):
    known: dict[tuple[int, int], bytes] = {}

    def index(self):
        # A pure function of the two numbers (upstream formats them as hex), asked for several times per
        # route on its way through the Adj-RIB-Out and into an UPDATE.
        key = (self.afi, self.safi)  # ints (AFI and SAFI subclass int): hashed and compared as numbers
        found = known.get(key)
        if found is None:
            found = original(self)
            if len(known) < FAMILY_INDEXES:
                known[key] = found
        return found

    return index


def _cached_create(original):
    def create(cls, value):
        # Upstream builds the fallback value for ``cache.get(value, fallback)`` before it looks: a new int
        # object per call, for the family of every route several times over. The answer is the same.
        found = cls.cache.get(value)
        return found if found is not None else original(value)

    return classmethod(create)


def _debug_gate(original):
    from exabgp.logger.option import option

    def debug(cls, message, source="", level="DEBUG"):
        # Upstream writes a warning for a message that is not callable before it checks the level: such a
        # message still goes the upstream way.
        if callable(message) and not option.logit.get(level, False):
            return None
        return original(message, source, level)

    return classmethod(debug)


def _failure_level(original):
    def log_failure(self, message, level="ERR"):
        # ExaBGP's logger knows ERROR, not ERR: with upstream's default the report is silently dropped.
        return original(self, message, "ERROR" if level == "ERR" else level)

    return log_failure


def _notification_arity(original):
    def notification(self, *args):
        # Connection-level errors (a bad marker, a bad length) reach this from Protocol.read_message with
        # one argument too many, and the encoder beneath takes yet another shape: upstream raises
        # TypeError and drops the connection without the NOTIFICATION RFC 4271 6.1 requires. That call
        # reports an error *we* found as if received; the session's "down" event carries it anyway, so
        # it is not reported, and read_message goes on to send the NOTIFICATION the peer is owed.
        if len(args) == 8 and args[5] is None:
            return None
        return original(self, *args)

    return notification


# name, module, class, method, a parameter the method must take ("" for none), attributes the class must
# have for the wrapper, and the wrapper factory (given upstream's method, returns ours).
PATCHES: tuple[tuple[str, str, str, str, str, tuple[str, ...], Callable[[Any], Any]], ...] = (
    ("async", "exabgp.reactor.asynchronous", "ASYNC", "run", "", ("_notify_error", "LIMIT"), _sync_run),
    ("poll", "exabgp.reactor.loop", "Reactor", "_wait_for_io", "sleeptime", (), _work_conserving_wait),
    ("remove_self", "exabgp.bgp.neighbor", "Neighbor", "remove_self", "changes", (), _remove_self_sharing),
    ("api_log", "exabgp.reactor.api", "API", "log_message", "message", (), _replace_log_message),
    ("api_errors", "exabgp.reactor.api", "API", "log_failure", "level", (), _failure_level),
    ("nlri_sort", "exabgp.bgp.message.update", "Update", "_split_nlris", "negotiated", (), _presorted_split),
    ("api_bulk", "exabgp.reactor.api", "API", "api_attributes", "peers", (), tuning_api.bulk_attributes),
    # After api_bulk, so it wraps it: a seen attribute text skips the parser (bgp.exabgp.tuning_attrcache).
    ("api_cache", "exabgp.reactor.api", "API", "api_attributes", "peers", (),
     tuning_attrcache.cached_attributes),
    ("api_lazy_log", "exabgp.reactor.api.command.command", "Command", "callback", "", (), _lazy_route_log),
    ("json_nlri", "exabgp.reactor.api.response.json", "JSON", "_update", "update", ("_json",),
     tuning_json.fast_update),
    ("log_gate", "exabgp.logger", "log", "debug", "message", (), _debug_gate),
    ("family_index", "exabgp.protocol.family", "Family", "index", "", ("afi_safi",), _family_index_cache),
    ("afi_create", "exabgp.protocol.family", "AFI", "create", "value", ("cache",), _cached_create),
    ("safi_create", "exabgp.protocol.family", "SAFI", "create", "value", ("cache",), _cached_create),
    (
        "notify_arity",
        "exabgp.reactor.api.processes",
        "Processes",
        "notification",
        "",  # upstream's method is wrapped by its @silenced (self, *args): no signature to check
        (),
        _notification_arity,
    ),
    # The API process for our daemon as a direct connection, no relay (bgp.exabgp.tuning_channel).
    ("api_direct", "exabgp.reactor.api.processes", "Processes", "_start", "process", (),
     tuning_channel.direct_relay),
    # Quiet established peers skipped until due (bgp.exabgp.tuning_idle); also wraps Peer.run and _main.
    ("idle", "exabgp.reactor.loop", "Reactor", "active_peers", "", (), tuning_idle.idle_peers),
    # The Adj-RIB-Out cache's plain routes as index + shared template (bgp.exabgp.tuning_ribout); also wraps
    # Cache.clear_cache and Cache.update_cache.
    ("ribout_compact", "exabgp.rib.cache", "Cache", "__init__", "cache", (), tuning_ribout.compact_cache),
)


def _patch(
    module: str, cls: str, method: str, parameter: str, requires: tuple[str, ...], wrap: Callable[[Any], Any]
) -> None:
    owner = getattr(importlib.import_module(module), cls)
    original = getattr(owner, method)
    if parameter and parameter not in inspect.signature(original).parameters:
        raise AttributeError(f"{cls}.{method} no longer takes '{parameter}'")
    missing = [name for name in requires if not hasattr(owner, name)]
    if missing:
        raise AttributeError(f"{cls} has no {', '.join(missing)}")
    setattr(owner, method, wrap(original))


def apply() -> list[str]:
    """Apply every patch that fits the installed ExaBGP, once per process; return the names applied."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = []
    setting = os.environ.get(TUNING_ENV, "")
    skipped = set(setting[len(SKIP_PREFIX) :].split(",")) if setting.startswith(SKIP_PREFIX) else set()
    for name, module, cls, method, parameter, requires, wrap in PATCHES:
        if name in skipped:
            continue
        try:
            _patch(module, cls, method, parameter, requires, wrap)
        except Exception as exc:
            _warn(name, exc)
        else:
            _applied.append(name)
    if "async" in _applied:
        from exabgp.reactor.asynchronous import ASYNC

        ASYNC.LIMIT = ASYNC_LIMIT
    return _applied
