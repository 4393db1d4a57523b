"""Suite-wide capability checks: tests that need root, network namespaces or etcd skip with a reason
when the machine cannot run them (CI runs everything as root with the packages `make test` installs)."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    reasons = {}
    if os.geteuid() != 0:
        reasons["netns"] = "needs root for network namespaces"
        reasons["lab"] = "needs root for network namespaces"
    if not shutil.which("etcd"):
        reasons["etcd"] = "needs Debian's etcd-server (make deps)"
    for item in items:
        for marker, reason in reasons.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
