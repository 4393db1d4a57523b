"""Is ExaBGP still working? A request/answer probe over its API, judged against a deadline. Pure: no I/O.

Stage: liveness of the BGP engine (used by ``bgp.exabgp.channel``, which sends the probes and reports what
it hears; the verdict makes ``bgp.exabgp.supervisor`` kill and restart ExaBGP).

Owns: the probe bookkeeping: when the next probe is due, which probes are still owed an answer, when ExaBGP
last showed it was working, and the verdict.

The probe is ExaBGP's ``version`` command. ExaBGP answers it with one plain-text line (``exabgp 5.0.15``)
as soon as its reactor reads it, acks on or off, and commands from one API process are read in order, so
answers match probes first-in first-out and an answer proves that everything we wrote before the probe has
been read. JSON events start with ``{``, so the answer cannot be mistaken for one.

Complicating factors:
- A busy ExaBGP is not a hung one. Behind a 100k-route batch the probe waits until ExaBGP has read the
  megabytes before it (16 KiB per reactor loop), which can take longer than any deadline we would like.
  So the deadline runs from the later of the oldest unanswered probe and the last *progress*: an answer,
  bytes of ours that the bridge accepted, or any line ExaBGP wrote to us. A stopped or deadlocked ExaBGP
  makes none of these (the pipe and socket buffers between us fill within milliseconds), a busy one keeps
  making them.
- The verdict is a bound, stated: a hang is declared at most ``interval + deadline`` after ExaBGP stopped
  (the next probe is sent at most ``interval`` later and owed an answer within ``deadline``), plus the
  caller's check period and the pause in which it confirms the verdict (the daemon's own loop may have been
  what was slow, with the answer waiting unread). With the defaults (5 s, 10 s, checks every 1 s, 0.5 s to
  confirm) that is 16.5 s at most and 10 s at least, well inside the 90 s BGP hold time Calico uses.
- Probes are bounded (``MAX_OUTSTANDING``): a hung ExaBGP is not sent an ever-growing queue of them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

PROBE = "version"
MAX_OUTSTANDING = 3


def is_answer(line: str) -> bool:
    """ExaBGP's answer to ``version``: ``exabgp <version>`` on a line of its own."""
    return line.startswith("exabgp ") and "{" not in line


@dataclass(frozen=True)
class LivenessSettings:
    interval: float = 5.0  # seconds between probes
    deadline: float = 10.0  # seconds an owed answer may take with no progress at all
    check_every: float = 1.0  # how often the caller asks for the verdict
    confirm: float = 0.5  # the caller asks again after this pause before it acts on a verdict

    @property
    def bound(self) -> float:
        """The longest time from a hang to its verdict."""
        return self.interval + self.deadline + self.check_every + self.confirm


class Liveness:
    def __init__(self, settings: LivenessSettings | None = None) -> None:
        self.settings = settings or LivenessSettings()
        self._connected = False
        self._owed: deque[float] = deque()  # when each unanswered probe was sent, oldest first
        self._last_probe = 0.0
        self._progress = 0.0
        self.last_rtt: float | None = None  # the last probe's round trip, seconds

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def owed(self) -> int:
        return len(self._owed)

    def connected_at(self, now: float) -> None:
        """A new API connection: nothing is owed, and the first probe goes out at once."""
        self._connected = True
        self._owed.clear()
        self._last_probe = now - self.settings.interval
        self._progress = now

    def disconnected(self) -> None:
        self._connected = False
        self._owed.clear()

    def due(self, now: float) -> bool:
        return (
            self._connected
            and len(self._owed) < MAX_OUTSTANDING
            and now - self._last_probe >= self.settings.interval
        )

    def sent(self, now: float) -> None:
        self._owed.append(now)
        self._last_probe = now

    def answered(self, now: float) -> None:
        if self._owed:
            self.last_rtt = now - self._owed.popleft()
        self._progress = max(self._progress, now)

    def progressed(self, now: float) -> None:
        """ExaBGP took bytes from us or wrote a line to us: it is working, if slowly."""
        self._progress = max(self._progress, now)

    def waiting(self, now: float) -> float:
        """Seconds an answer has been owed with no progress at all (0 while nothing is owed): what the
        verdict is judged on, for readers who want to know before the verdict."""
        if not self._connected or not self._owed:
            return 0.0
        return max(0.0, now - max(self._owed[0], self._progress))

    def verdict(self, now: float) -> str | None:
        """Why ExaBGP is considered hung, or None while it is not."""
        if not self._connected or not self._owed:
            return None
        since = max(self._owed[0], self._progress)
        if now - since < self.settings.deadline:
            return None
        return f"ExaBGP not responding: no answer to its API probe and no progress for {now - since:.0f}s"
