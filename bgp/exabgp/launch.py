"""Starts ExaBGP as a child that dies with the node daemon.

Stage: the BGP engine's process lifecycle (used by ``bgp.exabgp.supervisor``).

Owns: the parent-death signal. The daemon's etcd client runs gRPC threads, and forking a threaded process
to run Python in the child (``preexec_fn``) can crash the child (gRPC's fork handlers; seen as ExaBGP
exiting with SIGSEGV right after a restart). So the daemon spawns this module with a plain fork+exec, and the
child sets PR_SET_PDEATHSIG itself before handing over to ExaBGP's own entry point, in the same process.
If the daemon is already gone by then, we exit instead of running an orphan that would hold port 179.
It is also where the child becomes the unprivileged ExaBGP user (``bgp.exabgp.privileges``), and where
``bgp.exabgp.tuning`` adjusts ExaBGP's scheduling before ExaBGP starts.

The child reports which adjustments applied in one line on stderr before ExaBGP's own output
(``adjustments_line``): the supervisor reads that stream anyway on its way to ``exabgp.log``, and
``bgp.build_info`` turns the line into the start-up log line and the metric. A file would have to live
where the unprivileged ExaBGP user may write, which the run directory is not.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys

from bgp.exabgp.privileges import DROP_ENV, drop_privileges, parse_drop_setting

PR_SET_PDEATHSIG = 1
PARENT_ENV = "CALICO_BGP_PARENT_PID"
ADJUSTMENTS_MARK = b"calico-bgp launch: ExaBGP adjustments applied: "


def adjustments_line(applied: list[str]) -> bytes:
    """The line the child writes about the adjustments that applied: the mark, then a JSON list of names."""
    return ADJUSTMENTS_MARK + json.dumps(applied).encode() + b"\n"


def parse_adjustments(line: bytes) -> list[str] | None:
    """The names in an ``adjustments_line``; None for any other line, or one that is not a list of names."""
    if not line.startswith(ADJUSTMENTS_MARK):
        return None
    try:
        names = json.loads(line[len(ADJUSTMENTS_MARK) :])
    except ValueError:
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None
    return names


def main() -> int:
    parent = os.environ.pop(PARENT_ENV, "")
    drop = parse_drop_setting(os.environ.pop(DROP_ENV, ""))
    if drop is not None:
        # Before the parent-death signal: the kernel clears that signal when the uid changes.
        drop_privileges(*drop)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent and os.getppid() != int(parent):
        return 0  # the daemon died between our fork and the prctl: nobody would stop us
    # ExaBGP never speaks TLS, but asyncio imports ssl when it can, which maps OpenSSL: ~4 MB of RSS per
    # node for nothing. A None entry makes that optional import fail the way asyncio expects.
    # typeshed types sys.modules without None, the import system's documented "absent" marker.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from exabgp.application.main import main as exabgp_main

    from bgp.exabgp import tuning

    if os.environ.get(tuning.TUNING_ENV, "on") != "off":
        applied = tuning.apply()
        # One write, so the line cannot interleave with anything; a closed stderr must not stop ExaBGP.
        with contextlib.suppress(OSError):
            os.write(2, adjustments_line(applied))

    sys.argv = ["exabgp", *sys.argv[1:]]
    return exabgp_main()


if __name__ == "__main__":
    sys.exit(main())
