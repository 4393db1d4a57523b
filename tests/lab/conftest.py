"""Fixtures for lab tests: a unique lab name per test, torn down whatever happens."""

from __future__ import annotations

import secrets

import pytest

from labs import lab as labs_lab
from labs import netns, state


@pytest.fixture
def lab_name():
    """A fresh lab name; `down` runs after the test in every outcome (it is idempotent)."""
    name = f"t{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        labs_lab.down(name)
        assert not netns.list_netns(state.netns_prefix(name))
