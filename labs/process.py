"""Background processes of a lab: start them detached, find them again, stop them.

Stage: lab lifecycle support (used by ``labs.lab`` and ``labs.etcd``).

Owns: spawning detached children with their output in a log file, and stopping a recorded PID safely.

Complicating factors:
- The lab command exits while etcd, the proxy and the daemons keep running, so children get their own
  session (a Ctrl-C in the terminal must not reach them) and outlive us; when we stop one of them that
  is still our child (tests run up and down in one process), it must be reaped or it lingers as a zombie
  that looks alive to ``kill(pid, 0)``.
- PIDs are recycled. A PID from a state file is only signalled while its command line still contains a
  marker only our process carries (a path inside the lab's state directory).
"""

from __future__ import annotations

import compileall
import contextlib
import importlib.util
import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import psutil


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start argv detached (own session, stdin closed, stdout+stderr appended to log); returns its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    # The Popen is dropped on purpose: the process outlives this one. If it dies while we still run, alive()
    # or subprocess's own cleanup of dropped children reaps it.
    return proc.pid


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files to ``wanted`` (within the hard limit) and return the
    limit now in force. Lab processes inherit it: the etcd proxy holds a listener and two sockets per
    daemon connection, so a 100-node lab needs more than the usual 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def ensure_bytecode(packages: Iterable[str]) -> None:
    """Compile the packages' modules to ``__pycache__`` where they are missing or out of date.

    A node's image is installed with its bytecode; a checkout run with PYTHONDONTWRITEBYTECODE (as CI and
    sandboxes often set it) has none, and then every daemon a lab starts compiles the same ~100 modules from
    source: 0.1 s of CPU per node, 5 s for a 50-node mesh on 2 cores. Up-to-date files are only stat'ed."""
    for name in packages:
        spec = importlib.util.find_spec(name)
        for path in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(path, quiet=2)  # an unwritable tree stays as it is: imports still work


def argv(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:  # gone, a zombie, or not ours to read
        return []


def cmdline(pid: int) -> str:
    return " ".join(argv(pid))


def alive(pid: int) -> bool:
    """True while pid runs; a zombie counts as dead (and is reaped if it is our child)."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def owned(pid: int, marker: str) -> bool:
    return pid > 0 and pid != os.getpid() and alive(pid) and marker in cmdline(pid)


def stop(pid: int, marker: str, timeout: float = 10.0) -> bool:
    """SIGTERM pid if it is still ours, SIGKILL after timeout; returns whether it had to be killed."""
    return bool(stop_all([(pid, marker)], timeout))


def stop_all(targets: Iterable[tuple[int, str]], timeout: float = 10.0) -> list[int]:
    """SIGTERM every (pid, marker) still ours at once, SIGKILL those left after timeout; returns those."""
    pids = [pid for pid, marker in targets if owned(pid, marker)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid for pid in pids if alive(pid)]
        if not pids:
            return []
        time.sleep(0.05)
    for pid in pids:
        kill(pid)
    return pids


def kill(pid: int) -> None:
    """SIGKILL a process found inside one of our namespaces (anything left there is ours by construction)."""
    if pid != os.getpid():
        _signal(pid, signal.SIGKILL)
        for _ in range(100):
            if not alive(pid):
                return
            time.sleep(0.02)


def find(marker: str) -> list[int]:
    """PIDs whose command line contains marker: the fallback when a state file never got a PID written."""
    return sorted(pid for pid in psutil.pids() if pid != os.getpid() and marker in cmdline(pid))


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def tail(log: str | Path, lines: int = 20) -> str:
    """The end of a log file, for error messages."""
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {log})"
