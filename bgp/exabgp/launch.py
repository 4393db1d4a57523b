"""Starts ExaBGP as a child that dies with the node daemon.

Stage: the BGP engine's process lifecycle (used by ``bgp.exabgp.supervisor``).

Owns: the parent-death signal. The daemon's etcd client runs gRPC threads, and forking a threaded process
to run Python in the child (``preexec_fn``) can crash the child (gRPC's fork handlers; seen as ExaBGP
exiting with SIGSEGV right after a restart). So the daemon spawns this module with a plain fork+exec, and the
child sets PR_SET_PDEATHSIG itself before handing over to ExaBGP's own entry point, in the same process.
If the daemon is already gone by then, we exit instead of running an orphan that would hold port 179.
It is also where the child becomes the unprivileged ExaBGP user (``bgp.exabgp.privileges``), and where
``bgp.exabgp.tuning`` adjusts ExaBGP's scheduling before ExaBGP starts.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from bgp.exabgp.privileges import DROP_ENV, drop_privileges, parse_drop_setting

PR_SET_PDEATHSIG = 1
PARENT_ENV = "CALICO_BGP_PARENT_PID"


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
        tuning.apply()

    sys.argv = ["exabgp", *sys.argv[1:]]
    return exabgp_main()


if __name__ == "__main__":
    sys.exit(main())
