"""The ExaBGP API process: a byte relay between ExaBGP's pipes and the node daemon, and the choice of it.

Where ExaBGP's ``api_direct`` adjustment applies (``bgp.exabgp.tuning_channel``), ExaBGP recognises the
line written here and connects to the socket itself: neither relay runs, and the rules below are kept by
that connection instead. The relay is what runs when the adjustment does not fit or is turned off.

Stage: transport between the BGP engine and the announcements dataplane.

Owns: nothing but two copies — ExaBGP's stdout-to-us (JSON events) goes to the daemon's unix socket, and the
daemon's commands come back and are written to our stdout (ExaBGP's command input) — and the command line
ExaBGP runs for them (``run_line``). Where ``socat`` is installed that is socat (``SOCAT_OPTIONS``): a C
process with under 1 MB of its own (4.5 MB RSS, shared libraries included) instead of an interpreter of
10 MB, and a tenth of the CPU per (re)spawn; this module's ``main`` is the fallback where it is not,
decided once per daemon (``installed_socat``, logged). Both keep the rules below.

Why a bridge and not the speaker itself: ExaBGP respawns its API process with no state
(docs/exabgp-notes.md), may restart it on SIGUSR2, and kills it when it stops. Keeping the RIB, the
kernel table and the status in the
long-lived daemon means none of those events loses routes or state; this process can die at any moment and
the daemon simply sees a reconnect. It is run as ``python -I -S bridge.py SOCKET`` and imports nothing
heavy so that a respawn is quick.

Complicating factors:
- ExaBGP blocks when nobody reads its output, so we read stdin for as long as we are connected. We never
  run without the daemon: until we first reach it (at most ``RECONNECT_FOR`` seconds) nothing is read,
  and once it is gone we exit (next item) and ExaBGP respawns its API process. What ExaBGP says in between
  is lost; the daemon resynchronises from session state when the new bridge connects.
- When the daemon closes our connection we exit at once, even while ExaBGP has nothing to say (the main
  thread may sit in a read of stdin for as long as ExaBGP is quiet): the daemon closes on a bridge it will
  not use (one left by an earlier ExaBGP) or on an ExaBGP it is about to restart, and a bridge that lingered
  would keep ExaBGP's output pipe, which it inherits as stderr, open. If the daemon itself is gone, ExaBGP's
  respawn limit then stops ExaBGP, which is what we want (the daemon also makes ExaBGP die with it via
  PDEATHSIG).
- socat keeps those rules with ``-t0``: the first end-of-file, from either side, ends it at once. It does
  not retry its connect: its retry options need commas, which ExaBGP's config tokenizer splits into words
  of their own (and confgen refuses quotes). None is needed: the daemon listens before it starts ExaBGP and
  until ExaBGP has stopped, so a failed connect means the daemon is gone; socat then exits 1 and ExaBGP's
  respawn limit (or the daemon's no-API deadline) takes over, as it does for this bridge after
  ``RECONNECT_FOR``.
- The daemon accepts only the running ExaBGP's own child (``SO_PEERCRED`` pid, then its parent). ExaBGP
  runs the line without a shell, so socat is that child and itself makes the connection, as this bridge
  does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping

RECONNECT_FOR = 10.0  # seconds we keep trying to reach the daemon before giving up
RELAY_ENV = "CALICO_BGP_API_RELAY"  # "python": run this bridge even where socat is installed
INSTALLED = "installed"  # run_line's socat argument: look socat up on PATH
# -t0: exit at the first end-of-file from either side (see the module docstring); -b: copy up to 64 KiB per
# read, as the bridge does (socat's default, 8 KiB, costs four times the system calls at 100k routes).
SOCAT_OPTIONS = ("-t0", "-b65536")
# What socat's address syntax reads literally: anything else (":", ",", "!", quotes, spaces) in the socket's
# path would be parsed as socat syntax, so such a path gets the Python bridge.
_PLAIN_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@%=")


def installed_socat(environ: Mapping[str, str] = os.environ) -> str | None:
    """socat's absolute path, or None for the Python bridge (not installed, or ``RELAY_ENV=python``)."""
    import shutil  # daemon-side only: the bridge process itself never needs it

    if environ.get(RELAY_ENV, "") == "python":
        return None
    return shutil.which("socat", path=environ.get("PATH"))


def run_line(socket_path: object, *, socat: str | None, python: str, script: str) -> str:
    """The command ExaBGP runs as its API process: ``socat`` relaying to ``socket_path`` when given, else
    ``python`` running the bridge ``script``. ExaBGP splits the line on spaces and confgen refuses quotes,
    so paths are used as they are; the renderer rejects a path it cannot place safely."""
    path = str(socket_path)
    if socat and set(path) <= _PLAIN_PATH:
        return " ".join((socat, *SOCAT_OPTIONS, "STDIO", f"UNIX-CONNECT:{path}"))
    # -I -S: the bridge needs only the standard library; skipping site and the venv's .pth files saves
    # ~1.5 MB of RSS and some start-up time on every (re)spawn.
    return f"{python} -I -S {script} {path}"


def _connect(path: str, deadline: float) -> socket.socket | None:
    # Its own doubling rather than calico_bgp.backoff: run with -I -S, the bridge can import only the
    # standard library, and it waits for one local socket, so there is no herd to spread with jitter.
    delay = 0.05
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    return None


def _pump_commands(sock: socket.socket, out, stop: threading.Event) -> None:
    """Daemon -> ExaBGP: copy whole lines to stdout, flushing after each read."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out.write(data)
            out.flush()
    except OSError:
        pass
    finally:
        stop.set()
        os._exit(0)  # see the module docstring: the main thread may be blocked reading stdin


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: bridge.py SOCKET", file=sys.stderr)
        return 2
    path = args[0]
    sock = _connect(path, time.monotonic() + RECONNECT_FOR)
    if sock is None:
        print(f"calico-bgp bridge: cannot reach the daemon at {path}", file=sys.stderr)
        return 1
    stop = threading.Event()
    threading.Thread(target=_pump_commands, args=(sock, sys.stdout.buffer, stop), daemon=True).start()
    stdin = sys.stdin.buffer
    fd = stdin.fileno()
    while not stop.is_set():
        data = os.read(fd, 65536)
        if not data:  # ExaBGP closed our stdin: it is stopping
            break
        try:
            sock.sendall(data)
        except OSError:
            break
    with contextlib.suppress(OSError):
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
