"""Established peers with nothing to do are left out of ExaBGP's reactor turns until something is due: the
wrappers behind the ``idle`` adjustment of ``bgp.exabgp.tuning``.

Stage: the BGP engine's process (runs inside the ExaBGP child, never in the daemon).

Owns: the choice of which peers get a turn in a reactor loop. Upstream's loop gives every peer a turn on
every pass, and a pass happens at least every tick (100 ms with our settings) and on every socket event: an
established, quiet peer steps its generator (a non-blocking read attempt with its own ``poll``, both
keepalive timers, its queues) only to say "later". That is a fixed cost per peer per pass, which made an
idle node's CPU grow with its peers (1.4 % of a core at 49 peers, 2.3 % at 99) and a 100-node mesh's
idle cost larger than the machine. We remember, after each turn that ended in "later", when that peer
next needs one: its keepalive due (``SendTimer``: at ``last_sent + keepalive``), its hold timer expiring
(``ReceiveTimer``: once ``int(now) - last_read > holdtime``), at the latest ``MAX_IDLE`` from then. Until
that moment the peer gets a turn only when its socket had an event in the last poll, when work was queued
for it (routes in its Adj-RIB-Out, an End-of-RIB, refresh or operational message, a teardown) or when
ExaBGP lost its API process; every other peer is run as upstream runs it. A new definition from a reload
(``Peer._neighbor``) is not work for a turn: upstream's session loop adopts it only after the next complete
message from the peer, which arrives as a socket event.

Complicating factors:
- A peer's socket stays registered with the reactor's poll while it is skipped (upstream registers it at
  each "later" and never unregisters it), so I/O still wakes the loop; we wrap that poll to keep the fds
  its last call reported (any event: data, hang-up, error), which upstream's loop reads and then discards.
- Some of a session's work lives in the locals of upstream's ``Peer._main`` generator (End-of-RIB not yet
  sent, an UPDATE or refresh half written, a keepalive half written inside ``KA``): we keep a reference to
  that generator and read its frame's locals after each "later" turn, only then, and a peer with any of
  that work is not skipped. The local names are checked against the installed ExaBGP before patching.
- When no peer needs a pass the reactor's wait lasts until the earliest deadline (``ReadyPoll``, at most
  ``MAX_IDLE``) instead of the tick. Two things upstream only noticed on the tick must then wake it: a
  connection on a listening socket (upstream tries ``accept`` each pass; those sockets are not in its poll)
  and a signal (a reload, a stop: Python retries an interrupted poll with the time left), so both are
  watched for that wait and hidden from the reactor, whose next pass acts on them as before.
- Timers keep their deadlines: upstream notices one at its first tick past it, we wake at the deadline
  itself, so a keepalive goes out at most a tick earlier than before, never later
  (tests/unit/bgp/test_exabgp_tuning_idle.py drives both loops with ExaBGP's own ``Peer._main`` and timers).
"""

from __future__ import annotations

import contextlib
import math
import select
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

MAX_IDLE = 5.0  # seconds a quiet peer may go without a turn even with no timer due (a safety net)
MAX_SLEEP_MS = int(MAX_IDLE * 1000)  # the longest wait of the reactor with every peer idle
# Locals of upstream's Peer._main that hold work in progress, and the one that holds its keepalive timer.
BUSY_LOCALS = ("send_eor", "new_routes", "refresh", "operational", "command_eor")
KA_LOCAL = "send_ka"
MAIN_ATTR = "_calico_main"  # on a Peer: its current _main generator
IDLE_ATTR = "_calico_idle"  # on a Peer: (skip until, socket fd) after a "later" turn, or None
PEER_ATTRS = ("_teardown", "recv_timer", "proto", "neighbor", "fsm")  # read by needs_turn


class ReadyPoll:
    """The reactor's ``select.poll``, which keeps the fds its last ``poll`` reported (any event) and, when
    ``deadline()`` gives a time for this wait (every peer idle), sleeps until then instead of the tick, woken
    as well by the listening sockets it names and by signals (``signal.set_wakeup_fd``); those wake-ups
    are not reported to the reactor, whose next pass accepts the connection or handles the signal."""

    __slots__ = ("_poll", "_clock", "_wake", "ready", "deadline")

    def __init__(
        self, poll: Any, clock: Callable[[], float], wake: tuple[socket.socket, socket.socket] | None
    ):
        self._poll = poll
        self._clock = clock
        self._wake = wake  # (read end, write end) of the signal wake-up pair; None: never sleep past the tick
        self.ready: frozenset[int] | set[int] = frozenset()
        # (sleep until, listening fds) when nothing needs the reactor before then, else None; asked only for
        # a wait that would be the tick (after the pass, so peers that just ran count with their new timers)
        self.deadline: Callable[[], tuple[float, tuple[int, ...]] | None] = _no_deadline

    def register(self, fd: Any, *mask: int) -> None:
        self._poll.register(fd, *mask)

    def modify(self, fd: Any, mask: int) -> None:
        self._poll.modify(fd, mask)

    def unregister(self, fd: Any) -> None:
        self._poll.unregister(fd)

    def poll(self, timeout: Any = None) -> list[tuple[int, int]]:
        if self._wake is not None and timeout and (due := self.deadline()) is not None:  # 0: work waits
            until, listening = due
            wait = min(math.ceil((until - self._clock()) * 1000), MAX_SLEEP_MS)
            if wait > timeout:
                return self._long_poll(wait, self._wake[0], listening)
        events = self._poll.poll(timeout)
        self.ready = {fd for fd, _ in events}
        return events

    def _long_poll(self, wait: int, wake: socket.socket, listening: tuple[int, ...]) -> list[tuple[int, int]]:
        extra = (wake.fileno(), *listening)  # never registered by the reactor itself
        for fd in extra:
            self._poll.register(fd, select.POLLIN)
        try:
            events = self._poll.poll(wait)
        finally:
            for fd in extra:
                self._poll.unregister(fd)
        if any(fd == extra[0] for fd, _ in events):
            with contextlib.suppress(OSError):
                while wake.recv(512):  # the signal numbers: the handlers already ran
                    pass
        events = [(fd, event) for fd, event in events if fd not in extra]
        self.ready = {fd for fd, _ in events}
        return events


def signal_wakeup() -> tuple[socket.socket, socket.socket] | None:
    """A socket pair whose write end receives a byte per signal (``signal.set_wakeup_fd``); None when the
    wake-up fd is taken by someone else or cannot be set here (not the main thread)."""
    read, write = socket.socketpair()
    read.setblocking(False)
    write.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    except ValueError:
        previous = None
    if previous != -1:
        if previous is not None:
            signal.set_wakeup_fd(previous)
        read.close()
        write.close()
        return None
    return read, write


def _generator_local(generator: Any, name: str) -> Any:
    frame = getattr(generator, "gi_frame", None)
    return None if frame is None else frame.f_locals.get(name)


def idle_until(peer: Any, action: int, later: int, established: int, now: float) -> tuple[float, int] | None:
    """When ``peer``, whose turn just returned ``action``, next needs a turn on its own (its timers), and its
    socket fd; None when it must be given every turn, as upstream gives it."""
    proto = peer.proto
    if action != later or peer.fsm.state != established or proto is None:
        return None
    frame = getattr(getattr(peer, MAIN_ATTR, None), "gi_frame", None)
    if frame is None:
        return None
    local = frame.f_locals
    if any(local.get(name) for name in BUSY_LOCALS):
        return None
    keepalive = local.get(KA_LOCAL)
    sender = getattr(keepalive, "send_timer", None)
    if sender is None or _generator_local(getattr(keepalive, "_generator", None), "generator") is not None:
        return None  # no keepalive timer yet, or a keepalive half written
    until = now + MAX_IDLE
    if sender.keepalive:
        until = min(until, sender.last_sent + sender.keepalive)
    receiver = peer.recv_timer
    if receiver is not None and receiver.holdtime:
        until = min(until, receiver.last_read + receiver.holdtime + 1)
    fd = proto.fd()
    return None if fd < 0 else (until, fd)


def needs_turn(
    peer: Any, ready: Iterable[int], now: float, established: int, broken: Callable[[Any], bool]
) -> bool:
    """Whether ``peer`` must run in this reactor pass (see the module docstring)."""
    idle = getattr(peer, IDLE_ATTR, None)
    if idle is None:
        return True
    until, fd = idle
    if now >= until or fd in ready or peer.fsm.state != established:
        return True
    if peer._teardown is not None:
        return True
    neighbor = peer.neighbor
    rib = neighbor.rib
    if rib is None or rib.outgoing.pending() or neighbor.messages or neighbor.eor or neighbor.refresh:
        return True
    return broken(neighbor)


def wrap_main(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``Peer._main`` that leaves a reference to its generator on the peer (its locals are read later)."""

    def _main(self):
        inner = original(self)
        setattr(self, MAIN_ATTR, inner)
        return (yield from inner)

    return _main


def wrap_run(original: Callable[[Any], Any], later: int, established: int, clock: Callable[[], float]):
    """``Peer.run`` that notes, after each turn, until when the peer may be skipped."""

    def run(self):
        action = original(self)
        setattr(self, IDLE_ATTR, idle_until(self, action, later, established, clock()))
        return action

    return run


def wrap_active_peers(
    original: Callable[[Any], set],
    established: int,
    clock: Callable[[], float],
    wakeup: Callable[[], tuple[socket.socket, socket.socket] | None] = signal_wakeup,
):
    """``Reactor.active_peers`` keeping only the peers that need this pass; installs ``ReadyPoll``, whose
    waits last until the earliest peer's deadline while no peer needs a pass."""

    def active_peers(self):
        keys = original(self)
        poller = self._poller
        if type(poller) is not ReadyPoll:
            # First pass: nothing has been polled through us yet, so every peer runs.
            self._poller = poller = ReadyPoll(poller, clock, wakeup())
            poller.deadline = lambda: _deadline(self, established, clock())
            return keys
        ready, now, peers = poller.ready, clock(), self._peers
        broken = self.processes.broken if self.processes is not None else _never
        return {key for key in keys if needs_turn(peers[key], ready, now, established, broken)}

    return active_peers


def _deadline(reactor: Any, established: int, now: float) -> tuple[float, tuple[int, ...]] | None:
    """Until when ``reactor`` may wait with no peer's turn due, and its listening fds; None: the tick."""
    listener = reactor.listener
    if listener is None or listener._accepted or not reactor.asynchronous.ready():
        return None
    broken = reactor.processes.broken if reactor.processes is not None else _never
    until = now + MAX_IDLE
    for peer in reactor._peers.values():
        if needs_turn(peer, (), now, established, broken):
            return None  # not idle (connecting, work queued, a timer due): upstream's tick
        until = min(until, getattr(peer, IDLE_ATTR)[0])
    return until, tuple(sock.fileno() for sock in listener._sockets)


def _no_deadline() -> None:
    return None


def _never(_neighbor: Any) -> bool:
    return False


def idle_peers(original: Callable[[Any], set]) -> Callable[[Any], set]:
    """The ``idle`` adjustment: wraps ``Reactor.active_peers`` (returned) and patches ``Peer.run`` and
    ``Peer._main`` (all three or none: raises AttributeError before patching if anything does not fit)."""
    from exabgp.bgp.fsm import FSM
    from exabgp.reactor import loop
    from exabgp.reactor.keepalive import KA
    from exabgp.reactor.peer import ACTION, Peer

    missing = [name for name in (*BUSY_LOCALS, KA_LOCAL) if name not in Peer._main.__code__.co_varnames]
    missing += [name for name in PEER_ATTRS if name not in Peer.__init__.__code__.co_names]
    if not {"send_timer", "_generator"} <= set(KA.__init__.__code__.co_names) or (
        "generator" not in KA._keepalive.__code__.co_varnames
    ):
        missing.append("KA.send_timer")
    if "state" not in FSM.__init__.__code__.co_names:
        missing.append("FSM.state")
    from exabgp.reactor.asynchronous import ASYNC
    from exabgp.reactor.listener import Listener

    if not {"_sockets", "_accepted"} <= set(Listener.__init__.__code__.co_names) or not hasattr(
        ASYNC, "ready"
    ):
        missing.append("Listener._sockets")
    if not {"listener", "asynchronous", "processes"} <= set(loop.Reactor.__init__.__code__.co_names):
        missing.append("Reactor.listener")
    if "_poller" not in loop.Reactor.__init__.__code__.co_names or not hasattr(select, "poll"):
        missing.append("Reactor._poller")
    if missing:
        raise AttributeError(f"no longer as expected: {', '.join(missing)}")
    clock = time.time  # upstream's timers read time.time(), so their deadlines are on its scale
    Peer._main = wrap_main(Peer._main)
    Peer.run = wrap_run(Peer.run, ACTION.LATER, FSM.ESTABLISHED, clock)
    return wrap_active_peers(original, FSM.ESTABLISHED, clock)
