"""Per-session limits on what a peer can make us hold: a prefix limit and an AS_PATH length limit.

Stage: the receive side of the route distributor. The speaker asks these before it stores a peer's paths;
the limits decide, count and log, the speaker acts (drops paths, sends the teardown).

Owns: the settings and their defaults, each peer's hold-down (the idle time after it crossed its prefix
limit, with back-off), the per-peer counts of limit events the metrics export, and ``LogBudget``, the rate
limit for warnings a peer can trigger at will.

Complicating factors:
- The teardown goes through ExaBGP's API, ``neighbor <ip> teardown 1``: ExaBGP 5.0.15 ends an Established
  session with a Cease NOTIFICATION whose subcode is the number given (1 = Maximum Number of Prefixes
  Reached, RFC 4486). But when graceful restart was negotiated, which every Calico session does, it closes
  the connection WITHOUT a notification, and the peer takes it for our restart (keeps our routes as stale
  and reconnects). ExaBGP also reconnects by itself, and has no API to keep a configured neighbour down.
  So the hold-down is enforced here: while it runs, a session that comes up is torn down at once and
  nothing the peer sends is stored.
- A limit violation is not a restart: the peer's paths are dropped at once, never kept stale.
- Back-off, as FRR's ``maximum-prefix ... restart``: the first hold is 30 s, each further one doubles up to
  10 min; a peer that stayed within its limit for 10 min after its last hold starts at 30 s again.
- An over-long AS_PATH is treated as a withdraw (RFC 7606's treat-as-withdraw): the path is not stored and
  the peer's previous path for the prefix goes; the session stays up.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from confgen import tokens
from confgen.tokens import TokenError

log = logging.getLogger(__name__)

# The default never trips a 1,000-node cluster with /26 blocks, even on a route reflector or ToR that
# carries the whole cluster from one session: Kubernetes supports at most 150,000 pods per cluster, so even
# if every pod's IP were a borrowed /32 the table holds 150,000 /32s plus the blocks (about 2,400 full /26s
# for 150,000 pods, plus at most one partly used block per node), ~154,000 prefixes in all. 200,000 leaves
# 30 % headroom and still bounds what one session can cost: ~2 KB per route in the daemon and ~0.6 KB in
# ExaBGP, about 520 MB at the limit.
DEFAULT_MAX_PREFIXES = 200_000
# Calico's paths carry a handful of ASes (node, ToR, spine, a few prepends); 50 is a common operator limit
# for Internet paths, whose real lengths stay below ~15. Longer ones are a leak or an attack.
DEFAULT_MAX_AS_PATH_LENGTH = 50
HOLD_INITIAL = 30.0
HOLD_MAX = 600.0
STABLE_AFTER = 600.0

CEASE_MAX_PREFIXES = 1  # RFC 4486 Cease subcode: Maximum Number of Prefixes Reached
CEASE_BFD_DOWN = 10  # RFC 9384 Cease subcode: BFD Down


@dataclass(frozen=True)
class LimitSettings:
    max_prefixes: int = DEFAULT_MAX_PREFIXES  # per peer, both families; 0 = unlimited
    max_as_path_length: int = DEFAULT_MAX_AS_PATH_LENGTH  # 0 = unlimited
    hold_initial: float = HOLD_INITIAL
    hold_max: float = HOLD_MAX
    stable_after: float = STABLE_AFTER

    def __post_init__(self) -> None:
        if self.max_prefixes < 0:
            raise ValueError(f"max prefixes must be 0 (unlimited) or more, not {self.max_prefixes}")
        if self.max_as_path_length < 0:
            length = self.max_as_path_length
            raise ValueError(f"max AS_PATH length must be 0 (unlimited) or more, not {length}")
        if not 0 < self.hold_initial <= self.hold_max:
            raise ValueError("hold-down times must satisfy 0 < initial <= max")


def teardown_command(peer: str, subcode: int = CEASE_MAX_PREFIXES) -> str | None:
    """The ExaBGP API command that ends ``peer``'s session with a Cease of ``subcode`` (crossing its prefix
    limit by default); None (logged) when ``peer`` is not a canonical address, which no line of ours may
    carry whatever checked it before."""
    try:
        address = tokens.address(peer)
    except TokenError as exc:
        log.error("ExaBGP API: not sending a teardown: peer address %s %s", tokens.shown(peer), exc)
        return None
    return f"neighbor {address} teardown {int(subcode)}"


class LogBudget:
    """Warnings that a peer (or a datastore value) can trigger at will, at most ``burst`` per ``period``
    seconds; the ones dropped are counted in the next line that goes out."""

    def __init__(
        self, logger: logging.Logger, *, burst: int = 10, period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._burst = burst
        self._period = period
        self._clock = clock
        self._window_end = -math.inf
        self._used = 0
        self.suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now >= self._window_end:
            self._window_end = now + self._period
            self._used = 0
        if self._used >= self._burst:
            self.suppressed += 1
            return
        self._used += 1
        if self.suppressed:
            message += " (%d similar warnings suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self._log.warning(message, *args)


@dataclass
class _Hold:
    until: float
    duration: float
    count: int  # prefixes held when the limit was crossed
    over: bool = False  # its end has been logged


class PeerLimits:
    def __init__(self, settings: LimitSettings | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.settings = settings or LimitSettings()
        self._clock = clock
        self._holds: dict[str, _Hold] = {}  # kept after a hold ends: the back-off needs the last one
        self._as_path_log = LogBudget(log, clock=clock)
        # per peer, since the peer was configured: what the metrics export
        self.prefix_limit_trips: dict[str, int] = {}
        self.as_path_withdraws: dict[str, int] = {}

    # ------------------------------------------------------------------ prefix limit

    def exceeded(self, count: int) -> bool:
        limit = self.settings.max_prefixes
        return bool(limit) and count > limit

    def trip(self, peer: str, count: int) -> float:
        """``peer`` holds ``count`` prefixes, over its limit: start its hold-down; returns its length (s)."""
        s = self.settings
        now = self._clock()
        last = self._holds.get(peer)
        if last is None or now - last.until >= s.stable_after:
            duration = s.hold_initial
        else:
            duration = min(last.duration * 2, s.hold_max)
        self._holds[peer] = _Hold(now + duration, duration, count)
        self.prefix_limit_trips[peer] = self.prefix_limit_trips.get(peer, 0) + 1
        log.warning(
            "peer %s sent %d prefixes, over its limit of %d: session torn down (Cease, maximum number of "
            "prefixes reached), its routes dropped, held idle for %ds",
            peer, count, s.max_prefixes, duration,
        )
        return duration

    def held(self, peer: str) -> bool:
        hold = self._holds.get(peer)
        return hold is not None and self._clock() < hold.until

    def hold_note(self, peer: str) -> str | None:
        """What `calico-bgp status` says about a held peer, None when it is not held."""
        hold = self._holds.get(peer)
        now = self._clock()
        if hold is None or now >= hold.until:
            return None
        return (
            f"Prefix limit: {self.settings.max_prefixes} exceeded ({hold.count} prefixes), "
            f"retry in {math.ceil(hold.until - now)}s"
        )

    def tick(self, now: float) -> list[str]:
        """Peers whose hold ended since the last call (each reported once)."""
        ended = []
        for peer, hold in self._holds.items():
            if not hold.over and now >= hold.until:
                hold.over = True
                ended.append(peer)
                log.info("peer %s: prefix-limit hold over, its session may come up again", peer)
        return ended

    # ------------------------------------------------------------------ AS_PATH length

    def as_path_too_long(self, peer: str, length: int, prefixes: int) -> bool:
        """True when a path of ``length`` ASes must be treated as a withdraw of its ``prefixes`` (counted)."""
        limit = self.settings.max_as_path_length
        if not limit or length <= limit:
            return False
        self.as_path_withdraws[peer] = self.as_path_withdraws.get(peer, 0) + prefixes
        self._as_path_log.warning(
            "peer %s sent an AS_PATH of %d ASes (limit %d): %d prefixes treated as withdrawn",
            peer, length, limit, prefixes,
        )
        return True

    # ------------------------------------------------------------------ peers

    def forget(self, peer: str) -> None:
        """``peer`` is no longer configured: its hold and its counts go (and with them its metric series)."""
        self._holds.pop(peer, None)
        self.prefix_limit_trips.pop(peer, None)
        self.as_path_withdraws.pop(peer, None)
