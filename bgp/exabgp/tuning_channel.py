"""ExaBGP's API process for our daemon as a direct connection: ExaBGP itself connects to the daemon's socket.

Stage: the BGP engine's process (runs inside the ExaBGP child, applied by ``bgp.exabgp.tuning`` as the
``api_direct`` adjustment); the daemon's end is ``bgp.exabgp.channel``.

Owns: the recognition of our relay's command line (``relay_socket``: socat or the Python bridge, as
``bgp.exabgp.bridge.run_line`` writes them), and ``DirectProcess``, which stands in for the relay's
``Popen`` object: its ``stdout`` and ``stdin`` are one connected unix socket. ExaBGP's ``Processes`` keeps
running its own code (start, read, write, respawn, terminate); only the ``subprocess.Popen`` it calls
(the name in its module) is ours, and it starts a real process for every other command line.

Why: the relay is a process that wakes for every line in each direction. One route from the daemon to the
wire, and one from the wire to the other daemon, went daemon -> relay -> ExaBGP -> TCP -> ExaBGP -> relay
-> daemon: six processes waking one another, most of the single-route latency (docs/performance.md).

Complicating factors:
- The relay's life is ExaBGP's way of knowing the daemon is gone: socat (``-t0``) exits at the first
  end-of-file, ExaBGP sees its pipe close and respawns it, and a respawn is a new connection, which the
  daemon answers by restarting ExaBGP. So the daemon closing its side must look like the relay's exit:
  ``poll()`` reports an exit once the socket is at end-of-file (checked with a non-blocking peek, the
  connection's equivalent of ``waitpid(WNOHANG)``); a connect that fails is a process that exited at once
  (socat's exit 1), which ExaBGP's respawn limit counts as it counts socat's.
- ExaBGP makes its read side non-blocking (``O_NONBLOCK`` on the ``stdout`` fd), and a socket has one
  file status for both directions, so our ``stdin.write`` meets ``EAGAIN`` where a pipe write would have
  blocked. It waits for the socket to take the bytes, as the pipe write waits for the relay: back-pressure
  is the same (ExaBGP stops while the daemon does not read), with a deadline (``WRITE_STALL``) past the
  daemon's own hang verdict and the hold time, after which the write fails as a write to a dead relay
  fails (``EPIPE``, which ExaBGP reports as a process problem). Every other failure is reported as
  ``EPIPE`` too: ExaBGP's write loop retries any other errno forever, and would repeat a partial line.
- ExaBGP reads its processes with ``os.read`` on the fd and polls them with ``select.poll``: both work on a
  socket as on a pipe. A pipe's end-of-file is POLLHUP alone, a socket's POLLIN with POLLHUP; ExaBGP then
  reads, gets nothing, asks ``poll()``, and handles the end exactly as a dead process.
- ``terminate`` shuts the socket down (the daemon sees the end at once, as when the relay is killed); the
  fd is closed by ``wait``, which ExaBGP's terminating thread calls next, so a number still registered in
  the reactor's poller is not reused under it any sooner than a relay's pipe would be.
- The fit check (``check_fits``) reads the names ExaBGP's ``Processes`` methods use: a release that stops
  using ``subprocess.Popen``, ``stdout.fileno()``, ``stdin.write/flush`` or ``poll/terminate/wait/kill``
  the way this class provides them gets the relay, as shipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from bgp.exabgp import bridge

CONNECT_TIMEOUT = 5.0  # the daemon listens before ExaBGP starts: a connect that takes this long has failed
# Longer than the daemon's hang verdict (bgp.exabgp.liveness: 16.5 s at most) and Calico's 90 s hold time:
# a daemon that takes nothing for this long is gone, and ExaBGP is told so as a dead relay tells it.
WRITE_STALL = 120.0
POLL_SLICE_MS = 1000  # one wait for the socket to take bytes, between deadline checks
EXITED_EOF = 0  # socat's status when the daemon closed: -t0, a clean end
EXITED_CONNECT = 1  # socat's status when it could not connect
TERMINATED = -15  # Popen's returncode after terminate() (SIGTERM)

# Names each ExaBGP method must use for DirectProcess to stand where it uses a Popen object.
REQUIRED_NAMES: dict[str, frozenset[str]] = {
    "_start": frozenset({"subprocess", "Popen", "stdout", "fileno", "PIPE"}),
    "received": frozenset({"poll", "stdout", "fileno", "read"}),
    "write": frozenset({"stdin", "write", "flush", "EPIPE"}),
    "_terminate_run": frozenset({"terminate", "wait", "kill"}),
}


def relay_socket(argv: object, bridge_script: str = bridge.__file__) -> str | None:
    """The daemon's socket path when ``argv`` (ExaBGP's parsed ``run`` line) is our relay to it, exactly as
    ``bridge.run_line`` writes it; None for any other command."""
    if not isinstance(argv, (list, tuple)) or not all(isinstance(arg, str) for arg in argv):
        return None
    args = list(argv)
    socat_tail = [*bridge.SOCAT_OPTIONS, "STDIO"]
    if len(args) == len(socat_tail) + 2 and os.path.basename(args[0]) == "socat":
        if args[1:-1] == socat_tail and args[-1].startswith("UNIX-CONNECT:"):
            path = args[-1][len("UNIX-CONNECT:") :]
            return path or None
        return None
    if len(args) == 5 and args[1:3] == ["-I", "-S"] and _same_file(args[3], bridge_script):
        return args[4] or None
    return None


def _same_file(one: str, other: str) -> bool:
    same_name = os.path.basename(one) == os.path.basename(other)
    return same_name and os.path.realpath(one) == os.path.realpath(other)


class _Reader:
    """What ExaBGP uses of the relay's stdout: its fd (read with os.read, watched with poll)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


class _Writer:
    """What ExaBGP uses of the relay's stdin: ``write`` that takes every byte or fails with EPIPE, and
    ``flush``, which has nothing to do (nothing is buffered here)."""

    def __init__(self, sock: socket.socket, clock: Callable[[], float] = time.monotonic) -> None:
        self._sock = sock
        self._clock = clock

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        stalled_since = self._clock()
        while view:
            try:
                sent = self._sock.send(view, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except BlockingIOError:
                if self._clock() - stalled_since >= WRITE_STALL:
                    raise BrokenPipeError(errno.EPIPE, "the daemon took nothing for too long") from None
                self._wait_writable()
                continue
            except OSError as exc:  # reset, closed, shut down: the relay is dead as far as ExaBGP can tell
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)) from exc
            view = view[sent:]
            stalled_since = self._clock()
        return len(data)

    def _wait_writable(self) -> None:
        fd = self._sock.fileno()
        if fd < 0:  # closed under us by wait()
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.poll(POLL_SLICE_MS)

    def flush(self) -> None:
        return None


class DirectProcess:
    """A connection to the daemon's socket in the shape of the relay's ``Popen`` object (see the module
    docstring for how each part keeps the relay's meaning)."""

    def __init__(self, args: Sequence[str], path: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.args = list(args)
        self.pid = os.getpid()  # the peer the daemon sees (SO_PEERCRED): this ExaBGP
        self.returncode: int | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(path)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            _log_warning(f"API connection to {path} failed: {exc}")
            # A process that exited at once: its end already at end-of-file, as socat's pipe would be.
            sock, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            other.close()
            self.returncode = EXITED_CONNECT
        self._sock = sock
        self.stdout = _Reader(sock.fileno())
        self.stdin = _Writer(sock)

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            pending = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            pending = b""
        if not pending:
            self.returncode = EXITED_EOF
        return self.returncode

    def terminate(self) -> None:
        if self.returncode is None:
            self.returncode = TERMINATED
        with contextlib.suppress(OSError):  # already closed, or never connected
            self._sock.shutdown(socket.SHUT_RDWR)

    kill = terminate

    def wait(self, timeout: float | None = None) -> int | None:
        self.terminate()
        self._sock.close()
        return self.returncode


def _log_warning(message: str) -> None:
    from exabgp.logger import log

    log.warning(lambda: message, "process")


class _Subprocess:
    """The ``subprocess`` ExaBGP's processes module sees: the standard module with our ``Popen`` in front."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Popen(self, args: Any, *rest: Any, **kwargs: Any) -> Any:  # noqa: N802 (the name ExaBGP calls)
        path = relay_socket(args)
        piped = kwargs.get("stdin") == subprocess.PIPE and kwargs.get("stdout") == subprocess.PIPE
        if path is None or rest or not piped:
            return self._real.Popen(args, *rest, **kwargs)
        return DirectProcess(args, path)


def check_fits(processes_class: type, module: ModuleType) -> None:
    """Raise AttributeError naming what no longer fits, when ExaBGP's ``Processes`` does not use a process
    object the way ``DirectProcess`` provides it."""
    current = getattr(module, "subprocess", None)
    if current is not subprocess and not isinstance(current, _Subprocess):
        raise AttributeError(f"{module.__name__} does not call the standard subprocess module")
    for method, names in REQUIRED_NAMES.items():
        function = getattr(processes_class, method, None)
        code = getattr(function, "__code__", None)
        if code is None:
            raise AttributeError(f"Processes.{method} is missing")
        missing = names - set(code.co_names)
        if missing:
            raise AttributeError(f"Processes.{method} no longer uses {', '.join(sorted(missing))}")


def direct_relay(original: Callable[..., Any]) -> Callable[..., Any]:
    """``tuning.PATCHES`` factory for ``Processes._start``: upstream's method stays, and the ``Popen`` of
    its module becomes ours (a relay line gets a direct connection, any other line a real process)."""
    module = sys.modules[original.__module__]
    check_fits(module.Processes, module)
    if not isinstance(module.subprocess, _Subprocess):
        vars(module)["subprocess"] = _Subprocess(module.subprocess)
    return original
