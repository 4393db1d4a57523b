"""parent_pid: a pid's parent (the supervisor kills a bridge only when its parent is our ExaBGP)."""

from __future__ import annotations

import os
import subprocess
import sys

from bgp.exabgp.supervisor import parent_pid


def test_a_running_child_names_its_parent():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert parent_pid(child.pid) == os.getpid()
        assert parent_pid(os.getpid()) == os.getppid()
    finally:
        child.communicate(b"")


def test_a_process_that_is_gone_has_no_parent():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names nothing now
    assert parent_pid(child.pid) is None
